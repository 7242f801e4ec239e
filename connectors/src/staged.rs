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

use ferry_engine::config::{Connections, JobSettings};
use ferry_engine::{Error, JobReport, Result, RunningJob};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::azure_blob::{AzureBlobConnection, AzureBlobSinkSpec, AzureBlobSourceSpec};
use crate::file::{self, FileConnection, FileSinkSpec, FileSourceSpec, WriteMode};
use crate::format::parquet::ParquetCodec;
use crate::format::{FormatSpec, ParquetFormat};
use crate::registry::{JobFile, SinkSpec, SourceSpec, build_job};

/// The `staging` section of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StagingSpec {
    /// A `file` or `azure_blob` connection; none for a local path.
    #[serde(default)]
    pub connection: Option<String>,
    /// A directory (local or under the `file` connection's root), or `container/prefix` for
    /// an `azure_blob` connection.
    pub path: String,
    /// Compression of the interim Parquet files (default zstd).
    #[serde(default)]
    pub compression: Option<ParquetCodec>,
}

impl StagingSpec {
    /// Parses and checks a job's `staging` value.
    pub fn from_job(spec: &JobFile) -> Result<Option<StagingSpec>> {
        match &spec.staging {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => serde_json::from_value(value.clone())
                .map(Some)
                .map_err(|e| Error::config(format!("job {}: invalid `staging`: {e}", spec.name))),
        }
    }
}

/// Where interim files go, resolved.
enum Interim {
    Local(std::path::PathBuf),
    Blob {
        store: Arc<dyn ObjectStore>,
        connection: String,
        container: String,
        prefix: String,
    },
}

impl Interim {
    fn resolve(staging: &StagingSpec, connections: &Connections, run_dir: &str) -> Result<Interim> {
        let kind = match &staging.connection {
            Some(name) => Some(connections.get(name)?.0.to_string()),
            None => None,
        };
        match (kind.as_deref(), &staging.connection) {
            (Some("azure_blob"), Some(name)) => {
                let (container, prefix) = staging
                    .path
                    .trim_matches('/')
                    .split_once('/')
                    .map(|(c, p)| (c.to_string(), p.to_string()))
                    .unwrap_or((staging.path.trim_matches('/').to_string(), String::new()));
                let store = AzureBlobConnection::from_connections(connections, name)?
                    .store(name, &container)?;
                let prefix = if prefix.is_empty() {
                    run_dir.to_string()
                } else {
                    format!("{prefix}/{run_dir}")
                };
                Ok(Interim::Blob {
                    store,
                    connection: name.clone(),
                    container,
                    prefix,
                })
            }
            (None | Some("file"), _) => {
                if let (Some(name), Some(_)) = (&staging.connection, &kind) {
                    let (_, value) = connections.get(name)?;
                    let _: FileConnection = serde_json::from_value(value.clone())
                        .map_err(|e| Error::config(format!("connection `{name}`: {e}")))?;
                }
                let dir = file::resolve(&staging.path, staging.connection.as_deref(), connections)?;
                Ok(Interim::Local(dir.join(run_dir)))
            }
            (Some(other), _) => Err(Error::config(format!(
                "staging: a `{other}` connection cannot hold interim files; use a `file` or `azure_blob` connection"
            ))),
        }
    }

    fn format(codec: ParquetCodec) -> FormatSpec {
        FormatSpec::Parquet(ParquetFormat {
            compression: codec,
            row_group_rows: None,
            columns: None,
        })
    }

    fn sink(&self, codec: ParquetCodec) -> SinkSpec {
        match self {
            Interim::Local(dir) => SinkSpec::File(FileSinkSpec {
                connection: None,
                path: format!("{}/", dir.display()),
                format: Self::format(codec),
                mode: WriteMode::Overwrite,
            }),
            Interim::Blob {
                connection,
                container,
                prefix,
                ..
            } => SinkSpec::AzureBlob(AzureBlobSinkSpec {
                connection: connection.clone(),
                container: container.clone(),
                path: format!("{prefix}/"),
                format: Self::format(codec),
                mode: WriteMode::Overwrite,
                block_size: None,
                max_concurrency: None,
            }),
        }
    }

    fn source(&self, codec: ParquetCodec) -> SourceSpec {
        match self {
            Interim::Local(dir) => SourceSpec::File(FileSourceSpec {
                connection: None,
                path: format!("{}/", dir.display()),
                format: Self::format(codec),
            }),
            Interim::Blob {
                connection,
                container,
                prefix,
                ..
            } => SourceSpec::AzureBlob(AzureBlobSourceSpec {
                connection: connection.clone(),
                container: container.clone(),
                path: format!("{prefix}/"),
                format: Self::format(codec),
            }),
        }
    }

    /// Deletes every interim file; nothing to delete is fine.
    async fn clean_up(&self) -> Result<()> {
        match self {
            Interim::Local(dir) => match tokio::fs::remove_dir_all(dir).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(
                    format!("remove interim files in {}", dir.display()),
                    e,
                )),
            },
            Interim::Blob { store, prefix, .. } => {
                let path = object_store::path::Path::from(prefix.as_str());
                let listed: Vec<_> = store
                    .list(Some(&path))
                    .try_collect()
                    .await
                    .map_err(|e| crate::format::io::store_error("list", &path, e))?;
                for meta in listed {
                    store
                        .delete(&meta.location)
                        .await
                        .map_err(|e| crate::format::io::store_error("delete", &meta.location, e))?;
                }
                Ok(())
            }
        }
    }
}

/// Runs a built job to its report, showing it to `observe` when it starts.
async fn run_one(
    spec: &JobFile,
    settings: JobSettings,
    connections: &Connections,
    observe: &(dyn Fn(&RunningJob) + Sync),
) -> JobReport {
    let name = settings.name.clone();
    match build_job(spec, settings, connections).await {
        Ok(job) => {
            let running = ferry_engine::start(job);
            observe(&running);
            running.report().await
        }
        Err(e) => JobReport::failed(&name, e),
    }
}

/// Runs a validated job, directly or staged; returns one report per phase (one for a direct
/// copy). The job succeeded if the last report says so.
pub async fn run_job(
    spec: &JobFile,
    settings: JobSettings,
    connections: &Connections,
    observe: &(dyn Fn(&RunningJob) + Sync),
) -> Vec<JobReport> {
    if crate::binary::is_binary(spec) {
        return vec![crate::binary::run(spec, settings, connections).await];
    }
    let staging = match StagingSpec::from_job(spec) {
        Ok(None) => return vec![run_one(spec, settings, connections, observe).await],
        Ok(Some(s)) => s,
        Err(e) => return vec![JobReport::failed(&settings.name, e)],
    };
    let run_dir = format!(
        "{}-{:x}{:x}",
        settings.name,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default()
    );
    let interim = match Interim::resolve(&staging, connections, &run_dir) {
        Ok(i) => i,
        Err(e) => {
            return vec![JobReport::failed(
                &settings.name,
                e.context(format!("job {}: staging", settings.name)),
            )];
        }
    };
    let codec = staging.compression.unwrap_or(ParquetCodec::Zstd);
    let mut first = spec.clone();
    first.staging = None;
    first.name = format!("{}-to-staging", spec.name);
    first.sink = interim.sink(codec);
    let mut second = spec.clone();
    second.staging = None;
    second.name = format!("{}-from-staging", spec.name);
    second.source = interim.source(codec);

    let mut reports = Vec::new();
    let phase = |job: &JobFile| {
        let mut s = settings.clone();
        s.name = job.name.clone();
        s
    };
    let one = run_one(&first, phase(&first), connections, observe).await;
    let first_ok = one.error.is_none();
    let staged_rows = one.rows_written;
    reports.push(one);
    if first_ok {
        let mut two = run_one(&second, phase(&second), connections, observe).await;
        if two.error.is_none() && two.rows_read != staged_rows {
            two = JobReport::failed(
                &second.name,
                Error::internal(format!(
                    "staged copy lost rows: phase 1 wrote {staged_rows}, phase 2 read {}",
                    two.rows_read
                )),
            );
        }
        reports.push(two);
    }
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
