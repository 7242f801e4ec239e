//! Running a job: directly, or staged in two phases through compressed interim files.
//!
//! With `staging: {connection, path, compression}` a job runs as
//! 1. source -> Parquet files (zstd by default) under `<path>/<job>-<run>/` in the staging
//!    store (a local directory, or `container/prefix` of an `azure_blob` connection);
//! 2. those files -> the sink;
//!
//! and the interim files are deleted afterwards, also after a failure. The rows written by
//! phase 2 must equal those written by phase 1. Direct streaming copy is the default and is
//! faster: staging exists for networks where source and sink cannot be reached at once.

use std::sync::Arc;

use ferry_engine::config::{Access, JobSettings, LocalFiles};
use ferry_engine::{Error, JobControl, JobReport, Result};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::azure_blob::{AzureBlobSinkSpec, AzureBlobSourceSpec};
use crate::connection::{ConnectionSpec, Connections};
use crate::file::{self, FileSinkSpec, FileSourceSpec, WriteMode};
use crate::format::parquet::ParquetCodec;
use crate::format::{Compression, CsvFormat, FormatSpec, ParquetFormat};
use crate::job::{InterimFormat, JobFile, SinkSpec, SourceSpec, StagingSpec};
use crate::registry::build_job;

/// A staged run's marker in its directory, rewritten every [`RUN_HEARTBEAT`] while the run
/// lives: a run of the same job whose marker is older than [`DEAD_RUN_AFTER`] died (kill -9,
/// a lost node), and the next run removes its interim files.
const RUN_MARKER: &str = "_ferry_run";
/// How often a staged run rewrites its marker.
const RUN_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(60);
/// A run whose marker is older than this is dead.
pub const DEAD_RUN_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Where interim files go, resolved: this run's directory `<job>-<hex>` under the staging
/// location, through an object store (the local file system or a blob container).
struct Interim {
    store: Arc<dyn ObjectStore>,
    /// The staging location: every run of every job has its directory below it.
    base: object_store::path::Path,
    /// This run's directory name.
    run: String,
    place: Place,
}

/// A staging location, as the housekeeping of dead runs sees it.
#[derive(Clone)]
struct Area {
    store: Arc<dyn ObjectStore>,
    base: object_store::path::Path,
    /// The local directory, when the store is the local file system.
    local: Option<std::path::PathBuf>,
}

impl Area {
    /// A name for the area (to tell areas apart).
    fn key(&self) -> String {
        format!("{}/{}", self.store, self.base)
    }

    /// Removes the interim files of dead runs below the area: of `job` (a run directory
    /// `<job>-<hex>` whose marker, or newest file when it has none, is older than
    /// [`DEAD_RUN_AFTER`]), or, with no job, of any job whose run left a marker that old.
    /// `keep` is a live run's directory. Returns the directory names removed.
    async fn remove_dead_runs(&self, job: Option<&str>, keep: &str) -> Result<Vec<String>> {
        let listed = match self.store.list_with_delimiter(Some(&self.base)).await {
            Ok(listed) => listed.common_prefixes,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(crate::format::io::store_error("list", &self.base, e)),
        };
        let now = crate::control::now_ms() as i64;
        let mut removed = Vec::new();
        for dir in listed {
            let Some(name) = dir.filename().map(str::to_string) else {
                continue;
            };
            let ours = match job {
                Some(job) => is_run_of(&name, job),
                None => is_a_run(&name),
            };
            if name == keep || !ours {
                continue;
            }
            let files: Vec<_> = self
                .store
                .list(Some(&dir))
                .try_collect()
                .await
                .map_err(|e| crate::format::io::store_error("list", &dir, e))?;
            let marker = files
                .iter()
                .find(|m| m.location.filename() == Some(RUN_MARKER));
            // Without a job name only a marker proves the directory is a ferry run.
            let age_of = match (marker, job) {
                (Some(m), _) => Some(m),
                (None, Some(_)) => files.iter().max_by_key(|m| m.last_modified),
                (None, None) => continue,
            };
            let dead = age_of.is_none_or(|m| {
                now.saturating_sub(m.last_modified.timestamp_millis())
                    > DEAD_RUN_AFTER.as_millis() as i64
            });
            if !dead {
                continue;
            }
            crate::format::io::delete_listed(self.store.as_ref(), &files).await?;
            if let Some(base) = &self.local {
                let _ = tokio::fs::remove_dir_all(base.join(&name)).await;
            }
            removed.push(name);
        }
        Ok(removed)
    }
}

/// The staging areas this process has run staged copies in: a worker node sweeps them for
/// dead runs of any job (`sweep_dead_runs`), not only the next run of the same job.
static AREAS: std::sync::Mutex<Vec<Area>> = std::sync::Mutex::new(Vec::new());

/// Remembers `area` for the node's housekeeping.
fn remember(area: Area) {
    if let Ok(mut areas) = AREAS.lock()
        && !areas.iter().any(|a| a.key() == area.key())
    {
        areas.push(area);
    }
}

/// Removes the interim files of dead runs, of any job, in every staging area this process
/// has used (a worker node calls it periodically and after each job); returns the run
/// directories removed. A directory counts as a dead run only when its `_ferry_run` marker is
/// older than [`DEAD_RUN_AFTER`].
pub async fn sweep_dead_runs() -> Vec<String> {
    let areas: Vec<Area> = AREAS.lock().map(|a| a.clone()).unwrap_or_default();
    let mut removed = Vec::new();
    for area in areas {
        match area.remove_dead_runs(None, "").await {
            Ok(runs) => removed.extend(runs),
            Err(e) => {
                tracing::warn!(area = %area.key(), error = %e, "cannot sweep the staging area")
            }
        }
    }
    removed
}

/// What the phases' specs name.
enum Place {
    /// A local staging directory.
    Local(std::path::PathBuf),
    /// A blob container, through a connection.
    Blob {
        connection: String,
        container: String,
    },
}

/// Whether directory `name` looks like a run of some job: `<name>-<hex>`.
fn is_a_run(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(job, hex)| {
        !job.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Whether directory `name` is a run of `job`: `<job>-<hex>`.
fn is_run_of(name: &str, job: &str) -> bool {
    name.strip_prefix(job)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Interim {
    fn resolve(
        staging: &StagingSpec,
        connections: &Connections,
        run_dir: &str,
        local: &LocalFiles,
    ) -> Result<Interim> {
        let connection = match &staging.connection {
            Some(name) => Some((name, connections.get(name)?)),
            None => None,
        };
        match connection {
            Some((name, ConnectionSpec::AzureBlob(conn))) => {
                let (container, prefix) = staging.container_and_prefix();
                let store = conn.store(name, container)?;
                let base = object_store::path::Path::parse(prefix)
                    .map_err(|e| Error::config(format!("staging path `{}`: {e}", staging.path)))?;
                Ok(Interim {
                    store,
                    base,
                    run: run_dir.to_string(),
                    place: Place::Blob {
                        connection: name.clone(),
                        container: container.to_string(),
                    },
                })
            }
            None | Some((_, ConnectionSpec::File(_))) => {
                let root = connections.file_root(&staging.connection)?;
                let dir = file::resolve(
                    &staging.path,
                    root,
                    local,
                    Access::Write,
                    "staging directory",
                )?;
                Ok(Interim {
                    store: file::local_store(),
                    base: file::object_path(&dir)?,
                    run: run_dir.to_string(),
                    place: Place::Local(dir),
                })
            }
            Some((_, other @ (ConnectionSpec::Postgres(_) | ConnectionSpec::Sqlserver(_)))) => {
                Err(Error::config(format!(
                    "staging: a `{}` connection cannot hold interim files; use a `file` or `azure_blob` connection",
                    other.kind()
                )))
            }
        }
    }

    /// Resolves this run's interim location, removes dead runs' leftovers and starts the
    /// run's heartbeat (which stops when the returned task is dropped).
    async fn start(
        staging: &StagingSpec,
        settings: &JobSettings,
        connections: &Connections,
    ) -> Result<(Interim, ferry_engine::task::OwnedTask<()>)> {
        let in_staging = |e: Error| e.context(format!("job {}: staging", settings.name));
        let run_dir = format!(
            "{}-{:x}{:x}",
            settings.name,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default()
        );
        let interim = Interim::resolve(staging, connections, &run_dir, &settings.local)
            .map_err(in_staging)?;
        match interim.remove_dead_runs(&settings.name).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(job = %settings.name, runs = ?removed, "removed the interim files of dead runs");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(job = %settings.name, error = %e, "cannot remove the interim files of dead runs");
            }
        }
        let heartbeat = interim.keep_alive().await.map_err(in_staging)?;
        remember(interim.area());
        Ok((interim, heartbeat))
    }

    /// This run's directory in the store.
    fn dir(&self) -> object_store::path::Path {
        self.base.clone().join(self.run.as_str())
    }

    /// This run's directory as a sink or source path (`container/prefix/` is not included
    /// for blobs: the spec names the container).
    fn path(&self) -> String {
        match &self.place {
            Place::Local(base) => format!("{}/", base.join(&self.run).display()),
            Place::Blob { .. } => format!("{}/", self.dir()),
        }
    }

    fn sink(&self, format: FormatSpec) -> SinkSpec {
        match &self.place {
            Place::Local(_) => SinkSpec::File(FileSinkSpec {
                connection: None,
                path: self.path(),
                format,
                mode: WriteMode::Overwrite,
            }),
            Place::Blob {
                connection,
                container,
            } => SinkSpec::AzureBlob(AzureBlobSinkSpec {
                connection: connection.clone(),
                container: container.clone(),
                path: self.path(),
                format,
                mode: WriteMode::Overwrite,
                block_size: None,
                max_concurrency: None,
                max_rows_per_blob: None,
                max_bytes_per_blob: None,
            }),
        }
    }

    fn source(&self, format: FormatSpec) -> SourceSpec {
        match &self.place {
            Place::Local(_) => SourceSpec::File(FileSourceSpec {
                connection: None,
                path: self.path(),
                format,
            }),
            Place::Blob {
                connection,
                container,
            } => SourceSpec::AzureBlob(AzureBlobSourceSpec {
                connection: connection.clone(),
                container: container.clone(),
                path: self.path(),
                format,
            }),
        }
    }

    /// Writes this run's marker now, then every [`RUN_HEARTBEAT`] until the returned task is
    /// dropped (at the end of the run).
    async fn keep_alive(&self) -> Result<ferry_engine::task::OwnedTask<()>> {
        let (store, marker) = (self.store.clone(), self.dir().join(RUN_MARKER));
        let beat = move || {
            let (store, marker) = (store.clone(), marker.clone());
            async move {
                let now = crate::control::now_ms().to_string();
                store
                    .put(&marker, object_store::PutPayload::from(now.into_bytes()))
                    .await
                    .map(drop)
                    .map_err(|e| crate::format::io::store_error("write", &marker, e))
            }
        };
        beat().await?;
        Ok(ferry_engine::task::spawn(async move {
            loop {
                tokio::time::sleep(RUN_HEARTBEAT).await;
                if let Err(e) = beat().await {
                    tracing::warn!(error = %e, "cannot renew the staged run's marker");
                }
            }
        }))
    }

    /// Removes the interim files of dead runs of `job` (their marker, or newest file when
    /// they have none, older than [`DEAD_RUN_AFTER`]); returns their directory names. Runs
    /// of other jobs, and live runs of this one, are left alone.
    async fn remove_dead_runs(&self, job: &str) -> Result<Vec<String>> {
        self.area().remove_dead_runs(Some(job), &self.run).await
    }

    /// The staging area this run's directory is in.
    fn area(&self) -> Area {
        Area {
            store: self.store.clone(),
            base: self.base.clone(),
            local: match &self.place {
                Place::Local(base) => Some(base.clone()),
                Place::Blob { .. } => None,
            },
        }
    }

    /// Deletes every interim file of this run; nothing to delete is fine.
    async fn clean_up(&self) -> Result<()> {
        if let Place::Local(base) = &self.place {
            let dir = base.join(&self.run);
            return match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(
                    format!("remove interim files in {}", dir.display()),
                    e,
                )),
            };
        }
        crate::format::io::delete_under(self.store.as_ref(), &self.dir()).await
    }
}

/// The interim format for writing (phase 1) and, given the source's schema, for reading
/// (phase 2).
fn interim_format(
    staging: &StagingSpec,
    schema: Option<&arrow::datatypes::Schema>,
) -> Result<FormatSpec> {
    let codec = staging.compression.unwrap_or(ParquetCodec::Zstd);
    Ok(match staging.format {
        InterimFormat::Parquet => FormatSpec::Parquet(ParquetFormat {
            compression: codec,
            row_group_rows: None,
            columns: None,
        }),
        InterimFormat::Csv => {
            let compression = match codec {
                ParquetCodec::Zstd => Compression::Zstd,
                ParquetCodec::Gzip => Compression::Gzip,
                ParquetCodec::None => Compression::None,
                ParquetCodec::Snappy => {
                    return Err(Error::config(
                        "staging: snappy applies to Parquet interim files; use gzip, zstd or none for csv",
                    ));
                }
            };
            let schema = match schema {
                None => None,
                Some(schema) => Some(
                    schema
                        .fields()
                        .iter()
                        .map(|f| {
                            crate::format::schema::from_field(f).ok_or_else(|| {
                                Error::config(format!(
                                    "staging: column `{}` ({}) has no CSV type; use parquet interim files",
                                    f.name(),
                                    f.data_type()
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>>>()?,
                ),
            };
            FormatSpec::Csv(CsvFormat {
                compression: Some(compression),
                schema,
                ..Default::default()
            })
        }
    })
}

/// Runs a built job to its report, showing it to `observe` when it starts; also returns
/// the source's schema when the job could be built.
async fn run_one(
    spec: &JobFile,
    settings: JobSettings,
    connections: &Connections,
    observe: &(dyn Fn(&JobControl) + Sync),
) -> (JobReport, Option<arrow::datatypes::SchemaRef>) {
    let name = settings.name.clone();
    let preparing = std::time::Instant::now();
    match build_job(spec, settings, connections).await {
        Ok(job) => {
            // Reading metadata, inferring schemas and setting up generators can take seconds:
            // the report counts them.
            let prepared = preparing.elapsed().as_secs_f64();
            let schema = job.source.schema();
            let settings = job.settings.clone();
            let running = ferry_engine::start(job);
            observe(&running.control());
            let report = running.report().await.with_preparation(prepared);
            let report =
                crate::verify::verify_output(spec, connections, &settings, &schema, report).await;
            (report, Some(schema))
        }
        Err(e) => (failed_before_start(spec, &name, e), None),
    }
}

/// The report of a job that failed before the engine ran it. The engine counts the jobs it
/// runs; one that fails while it is built (a wrong password, a missing file, a path the
/// policy refuses, unusable staging) is counted here.
fn failed_before_start(spec: &JobFile, name: &str, e: Error) -> JobReport {
    let report = JobReport::failed(name, e).with_kinds(spec.source.kind(), spec.sink.kind());
    ferry_engine::metrics::record_job(&report);
    report
}

/// Runs a validated job, directly or staged; returns one report per phase (one for a direct
/// copy). The job succeeded if the last report says so.
pub async fn run_job(
    spec: &JobFile,
    settings: JobSettings,
    connections: &Connections,
    observe: &(dyn Fn(&JobControl) + Sync),
) -> Vec<JobReport> {
    if crate::binary::is_binary(spec) {
        let control = JobControl::new();
        observe(&control);
        return vec![crate::binary::run(spec, settings, connections, &control).await];
    }
    let Some(staging) = &spec.staging else {
        return vec![run_one(spec, settings, connections, observe).await.0];
    };
    let (interim, heartbeat) = match Interim::start(staging, &settings, connections).await {
        Ok(started) => started,
        Err(e) => return vec![failed_before_start(spec, &settings.name, e)],
    };
    let mut reports = run_phases(spec, staging, &settings, connections, observe, &interim).await;
    drop(heartbeat);
    if let Err(e) = interim.clean_up().await {
        tracing::warn!(job = %spec.name, error = %e, "could not remove the interim files");
        if let Some(last) = reports.last_mut()
            && last.error.is_none()
        {
            *last = JobReport::failed(
                &last.job,
                e.context("the copy succeeded, but the interim files could not be removed"),
            );
        }
    }
    reports
}

/// Runs phase 1 (source -> interim files) and, when it succeeded, phase 2 (interim files
/// -> sink), whose rows read must equal those phase 1 wrote.
async fn run_phases(
    spec: &JobFile,
    staging: &StagingSpec,
    settings: &JobSettings,
    connections: &Connections,
    observe: &(dyn Fn(&JobControl) + Sync),
    interim: &Interim,
) -> Vec<JobReport> {
    let phase = |name: String, source: Option<SourceSpec>, sink: Option<SinkSpec>| {
        let mut job = spec.clone();
        job.staging = None;
        job.name = name;
        job.source = source.unwrap_or(job.source);
        job.sink = sink.unwrap_or(job.sink);
        let mut s = settings.clone();
        s.name = job.name.clone();
        (job, s)
    };
    let write_format = match interim_format(staging, None) {
        Ok(f) => f,
        Err(e) => return vec![failed_before_start(spec, &settings.name, e)],
    };
    let (first, first_settings) = phase(
        format!("{}-to-staging", spec.name),
        None,
        Some(interim.sink(write_format)),
    );
    let (one, schema) = run_one(&first, first_settings, connections, observe).await;
    let second_name = format!("{}-from-staging", spec.name);
    if one.error.is_some() {
        return vec![one];
    }
    let staged_rows = one.rows_written;
    let read_format = match interim_format(staging, schema.as_deref()) {
        Ok(f) => f,
        Err(e) => return vec![one, JobReport::failed(&second_name, e)],
    };
    let (second, second_settings) =
        phase(second_name.clone(), Some(interim.source(read_format)), None);
    let (mut two, _) = run_one(&second, second_settings, connections, observe).await;
    if two.error.is_none() && two.rows_read != staged_rows {
        two = JobReport::failed(
            &second_name,
            Error::internal(format!(
                "staged copy lost rows: phase 1 wrote {staged_rows}, phase 2 read {}",
                two.rows_read
            )),
        );
    }
    vec![one, two]
}
