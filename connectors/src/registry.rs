//! The one place where a `type` tag in a job becomes a connector: parse, validate, build.

use std::sync::Arc;

use ferry_engine::config::{Access, Connections, JobSettings, JobSpec};
use ferry_engine::{Error, Job, Result, Sink, Source};
use serde::{Deserialize, Serialize};

use crate::azure_blob::{AzureBlobConnection, AzureBlobSinkSpec, AzureBlobSourceSpec};
use crate::file::{self, FileSink, FileSinkSpec, FileSource, FileSourceSpec, Publish, RollOver};
use crate::postgres::{
    PostgresConnection, PostgresSink, PostgresSinkSpec, PostgresSource, PostgresSourceSpec,
};
use crate::tpch::{TpchSource, TpchSourceSpec};

/// Every source a job can name, by `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceSpec {
    /// Local files.
    File(FileSourceSpec),
    /// Generated TPC-H data.
    Tpch(TpchSourceSpec),
    /// A PostgreSQL table or query.
    Postgres(PostgresSourceSpec),
    /// Blobs in an Azure Storage container.
    AzureBlob(AzureBlobSourceSpec),
}

/// Every sink a job can name, by `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkSpec {
    /// Local files.
    File(FileSinkSpec),
    /// A PostgreSQL table.
    Postgres(PostgresSinkSpec),
    /// Blobs in an Azure Storage container.
    AzureBlob(AzureBlobSinkSpec),
}

/// A job file.
pub type JobFile = JobSpec<SourceSpec, SinkSpec>;

/// The kinds of a job's source and sink, as reports name them (`postgres`, `azure_blob`).
pub fn kinds(spec: &JobFile) -> (&'static str, &'static str) {
    let source = match &spec.source {
        SourceSpec::File(_) => "file",
        SourceSpec::Tpch(_) => "tpch",
        SourceSpec::Postgres(_) => "postgres",
        SourceSpec::AzureBlob(_) => "azure_blob",
    };
    let sink = match &spec.sink {
        SinkSpec::File(_) => "file",
        SinkSpec::Postgres(_) => "postgres",
        SinkSpec::AzureBlob(_) => "azure_blob",
    };
    (source, sink)
}

/// Parses and validates a job file without I/O.
pub fn parse_job(text: &str) -> Result<(JobFile, JobSettings)> {
    let spec = JobFile::from_json(text)?;
    let settings = spec.validate()?;
    let in_job = |e: Error| e.context(format!("job {}", settings.name));
    match &spec.source {
        SourceSpec::File(s) => s.validate(),
        SourceSpec::Tpch(s) => s.validate(),
        SourceSpec::Postgres(s) => s.validate(),
        SourceSpec::AzureBlob(s) => s.validate(),
    }
    .map_err(in_job)?;
    match &spec.sink {
        SinkSpec::File(s) => s.validate(),
        SinkSpec::Postgres(s) => s.validate(),
        SinkSpec::AzureBlob(s) => s.validate(),
    }
    .map_err(in_job)?;
    crate::staged::StagingSpec::from_job(&spec)?;
    if crate::binary::is_binary(&spec) {
        crate::binary::validate(&spec).map_err(in_job)?;
    }
    Ok((spec, settings))
}

/// Checks that the connections a job names exist, have the right type and parse; reads no
/// secret and does no I/O (a submitter may lack the node's secrets).
pub fn check_connections(spec: &JobFile, connections: &Connections) -> Result<()> {
    check_named_connections(spec, connections, false)
}

/// [`check_connections`], and the connections are usable as they stand here: their
/// settings hold and the environment variables of their secrets are set. Reads the
/// environment, never files or the network (`ferry validate`, a node taking a job).
pub fn validate_connections(spec: &JobFile, connections: &Connections) -> Result<()> {
    check_named_connections(spec, connections, true)
}

fn check_named_connections(spec: &JobFile, connections: &Connections, usable: bool) -> Result<()> {
    let in_job = |e: Error| e.context(format!("job {}", spec.name));
    let postgres = |name: &str| {
        let conn = PostgresConnection::from_connections(connections, name)?;
        if usable { conn.validate(name) } else { Ok(()) }
    };
    let azure = |name: &str| {
        let conn = AzureBlobConnection::from_connections(connections, name)?;
        if usable { conn.validate(name) } else { Ok(()) }
    };
    match &spec.source {
        SourceSpec::Postgres(s) => postgres(&s.connection),
        SourceSpec::AzureBlob(s) => azure(&s.connection),
        SourceSpec::File(_) | SourceSpec::Tpch(_) => Ok(()),
    }
    .map_err(in_job)?;
    match &spec.sink {
        SinkSpec::Postgres(s) => postgres(&s.connection),
        SinkSpec::AzureBlob(s) => azure(&s.connection),
        SinkSpec::File(_) => Ok(()),
    }
    .map_err(in_job)?;
    if let Some(staging) = crate::staged::StagingSpec::from_job(spec)?
        && let Some(name) = &staging.connection
    {
        connections.get(name).map_err(in_job)?;
    }
    Ok(())
}

/// A file source over the files that `path` names in `store` (`shown` in messages); local
/// files are checked against the job's allowed paths once listed.
async fn file_source(
    store: Arc<dyn object_store::ObjectStore>,
    path: &std::path::Path,
    shown: &str,
    format: &crate::format::FormatSpec,
    settings: &JobSettings,
    local: bool,
) -> Result<FileSource> {
    let files = file::list_inputs(&store, path, shown).await?;
    if local {
        file::check_inputs(&files, &settings.local)?;
    }
    FileSource::new(
        store,
        files,
        format.clone(),
        settings.batch_rows.get(),
        settings.fault_tolerance.skip_incompatible_rows,
    )
    .await
}

/// Builds the source and sink of a validated job (reads metadata, infers schemas).
pub async fn build_job(
    spec: &JobFile,
    mut settings: JobSettings,
    connections: &Connections,
) -> Result<Job> {
    let in_job = |e: Error| e.context(format!("job {}", settings.name));
    if let Some(log) = &settings.fault_tolerance.log_path {
        let log = log.to_string_lossy().to_string();
        let checked = file::resolve(
            &log,
            None,
            connections,
            &settings.local,
            Access::Write,
            "fault log",
        )
        .map_err(in_job)?;
        settings.fault_tolerance.log_path = Some(checked);
    }
    let source: Arc<dyn Source> = match &spec.source {
        SourceSpec::File(s) => {
            let path = s.local_path(connections, &settings.local).map_err(in_job)?;
            Arc::new(
                file_source(
                    file::local_store(),
                    &path,
                    &s.path,
                    &s.format,
                    &settings,
                    true,
                )
                .await
                .map_err(in_job)?,
            )
        }
        SourceSpec::Tpch(s) => Arc::new(TpchSource::new(s.clone(), settings.batch_rows.get())),
        SourceSpec::Postgres(s) => {
            let connector =
                PostgresConnection::open_connector(connections, &s.connection).map_err(in_job)?;
            Arc::new(
                PostgresSource::new(s, connector, settings.batch_rows.get())
                    .await
                    .map_err(in_job)?,
            )
        }
        SourceSpec::AzureBlob(s) => {
            let store = AzureBlobConnection::open_store(connections, &s.connection, &s.container)
                .map_err(in_job)?;
            let shown = format!("azure_blob {}/{}", s.container, s.path);
            let path = std::path::PathBuf::from(format!("/{}", s.path.trim_start_matches('/')));
            Arc::new(
                file_source(store, &path, &shown, &s.format, &settings, false)
                    .await
                    .map_err(in_job)?
                    .with_connector("azure_blob"),
            )
        }
    };
    let sink: Arc<dyn Sink> = match &spec.sink {
        SinkSpec::File(s) => {
            let is_dir = s.path.ends_with('/');
            let path = s.local_path(connections, &settings.local).map_err(in_job)?;
            let (dir, name) = if is_dir {
                (path.clone(), None)
            } else {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| {
                        in_job(Error::config(format!(
                            "sink path `{}` has no file name",
                            s.path
                        )))
                    })?
                    .to_string();
                (
                    path.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
                    Some(name),
                )
            };
            let format = match &name {
                Some(name) => s.format.for_output_name(name),
                None => s.format.clone(),
            };
            Arc::new(
                FileSink::new(
                    file::local_store(),
                    file::object_path(&dir).map_err(in_job)?,
                    Some(dir),
                    name,
                    format,
                    s.mode,
                    &settings.name,
                    &s.path,
                )
                .with_file_mode(settings.local.output_mode()),
            )
        }
        SinkSpec::Postgres(s) => {
            let connector =
                PostgresConnection::open_connector(connections, &s.connection).map_err(in_job)?;
            Arc::new(PostgresSink::new(s.clone(), connector).map_err(in_job)?)
        }
        SinkSpec::AzureBlob(s) => {
            let store = AzureBlobConnection::open_store(connections, &s.connection, &s.container)
                .map_err(in_job)?;
            let trimmed = s.path.trim_start_matches('/');
            let (dir, name) = match trimmed.strip_suffix('/') {
                Some(dir) => (dir.to_string(), None),
                None => match trimmed.rsplit_once('/') {
                    Some((dir, name)) => (dir.to_string(), Some(name.to_string())),
                    None => (String::new(), Some(trimmed.to_string())),
                },
            };
            let dir = object_store::path::Path::parse(&dir)
                .map_err(|e| in_job(Error::config(format!("sink path `{}`: {e}", s.path))))?;
            let format = match &name {
                Some(name) => s.format.for_output_name(name),
                None => s.format.clone(),
            };
            Arc::new(
                FileSink::new(
                    store,
                    dir,
                    None,
                    name,
                    format,
                    s.mode,
                    &settings.name,
                    &format!("azure_blob {}/{}", s.container, s.path),
                )
                .with_publish(
                    Publish::CompleteUpload {
                        part_size: s.block_bytes(),
                        concurrency: s.concurrency(),
                    },
                    "azure_blob",
                )
                .with_roll_over(RollOver {
                    max_rows: s.max_rows_per_blob,
                    max_bytes: s.max_bytes_per_blob.map(|b| b.bytes()),
                }),
            )
        }
    };
    Ok(Job {
        settings,
        source,
        sink,
    })
}

/// Runs connection `name`'s health check: reach the store, authenticate, read metadata.
/// Returns one line per step that passed; the error says which step failed.
pub async fn check_connection(
    name: &str,
    connections: &Connections,
    container: Option<&str>,
) -> Result<Vec<String>> {
    let (kind, _) = connections.get(name)?;
    let mut steps = Vec::new();
    match kind {
        "postgres" => {
            let connector = PostgresConnection::open_connector(connections, name)?;
            steps.push("configuration: ok".to_string());
            let client = connector.connect().await?;
            steps.push("reach, TLS and authentication: ok".to_string());
            let row = client
                .query_one(
                    "SELECT version(), current_database()::text, current_user::text, \
                     (SELECT count(*) FROM information_schema.tables \
                      WHERE table_schema NOT IN ('pg_catalog', 'information_schema'))",
                    &[],
                )
                .await
                .map_err(|e| crate::postgres::connect::pg_error("cannot read the catalog", e))?;
            let (version, db, user, tables): (String, String, String, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            steps.push(format!(
                "metadata: ok (database {db} as {user}, {tables} tables visible; {})",
                version.split(" on ").next().unwrap_or(&version)
            ));
        }
        "azure_blob" => {
            let container = container.ok_or_else(|| {
                Error::config(
                    "an azure_blob connection is checked against a container: give --container",
                )
            })?;
            let store = AzureBlobConnection::open_store(connections, name, container)?;
            steps.push("configuration: ok".to_string());
            let listed = store.list_with_delimiter(None).await.map_err(|e| {
                crate::format::io::store_error(
                    "list",
                    &object_store::path::Path::from(container),
                    e,
                )
            })?;
            steps.push(format!(
                "reach, authentication and listing of container {container}: ok ({} blobs and {} prefixes at the top)",
                listed.objects.len(),
                listed.common_prefixes.len()
            ));
        }
        "file" => {
            let root = file::resolve(
                ".",
                Some(name),
                connections,
                &ferry_engine::config::LocalFiles::unrestricted(),
                Access::Read,
                "file connection root",
            )?;
            let entries = std::fs::read_dir(&root)
                .map_err(|e| Error::io(format!("cannot read {}", root.display()), e))?
                .count();
            steps.push(format!(
                "directory {} readable: ok ({entries} entries)",
                root.display()
            ));
        }
        other => {
            return Err(Error::config(format!(
                "connection `{name}` has type `{other}`, which ferry does not know"
            )));
        }
    }
    Ok(steps)
}
