//! The one place where a job's typed sections become connectors: check, validate, build.
//! Every arm is one line into the store's own module.

use std::sync::Arc;

use ferry_engine::config::{Access, JobSettings};
use ferry_engine::{Error, Job, Result, Sink, Source};

use crate::connection::{ConnectionSpec, Connections};
use crate::file;
use crate::job::{JobFile, SinkSpec, SourceSpec};
use crate::tpch::TpchSource;

/// Parses and validates a job file without I/O.
pub fn parse_job(text: &str) -> Result<(JobFile, JobSettings)> {
    let spec = JobFile::from_json(text)?;
    let settings = spec.validate()?;
    let in_job = |e: Error| e.context(format!("job {}", settings.name));
    spec.source.validate().map_err(in_job)?;
    spec.sink.validate().map_err(in_job)?;
    if let Some(staging) = &spec.staging {
        staging.validate().map_err(in_job)?;
    }
    if crate::binary::is_binary(&spec) {
        crate::binary::validate(&spec).map_err(in_job)?;
    }
    crate::verify::check(&spec, &settings).map_err(in_job)?;
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
    let check = |name: &str| {
        let connection = connections.get(name)?;
        if usable {
            connection.validate(name)
        } else {
            Ok(())
        }
    };
    let source = match &spec.source {
        SourceSpec::File(s) => s
            .connection
            .as_deref()
            .map(|c| connections.file(c).map(drop)),
        SourceSpec::Tpch(_) => None,
        SourceSpec::Postgres(s) => Some(connections.postgres(&s.connection).map(drop)),
        SourceSpec::AzureBlob(s) => Some(connections.azure_blob(&s.connection).map(drop)),
        SourceSpec::Sqlserver(s) => Some(connections.sqlserver(&s.connection).map(drop)),
    };
    let sink = match &spec.sink {
        SinkSpec::File(s) => s
            .connection
            .as_deref()
            .map(|c| connections.file(c).map(drop)),
        SinkSpec::Postgres(s) => Some(connections.postgres(&s.connection).map(drop)),
        SinkSpec::AzureBlob(s) => Some(connections.azure_blob(&s.connection).map(drop)),
        SinkSpec::Sqlserver(s) => Some(connections.sqlserver(&s.connection).map(drop)),
    };
    source.transpose().map_err(in_job)?;
    sink.transpose().map_err(in_job)?;
    let staging = spec.staging.as_ref().and_then(|s| s.connection.as_deref());
    if let Some(name) = staging {
        match connections.get(name).map_err(in_job)? {
            ConnectionSpec::File(_) | ConnectionSpec::AzureBlob(_) => {}
            other @ (ConnectionSpec::Postgres(_) | ConnectionSpec::Sqlserver(_)) => {
                return Err(in_job(Error::config(format!(
                    "staging: connection `{name}` is a `{}` connection, which cannot hold interim files; use a `file` or `azure_blob` connection",
                    other.kind()
                ))));
            }
        }
    }
    for name in [spec.source.connection(), spec.sink.connection(), staging]
        .into_iter()
        .flatten()
    {
        check(name).map_err(in_job)?;
    }
    Ok(())
}

/// Builds a job's source (reads metadata, infers schemas).
pub async fn build_source(
    spec: &SourceSpec,
    connections: &Connections,
    settings: &JobSettings,
) -> Result<Arc<dyn Source>> {
    Ok(match spec {
        SourceSpec::File(s) => Arc::new(
            s.build(connections.file_root(&s.connection)?, settings)
                .await?,
        ),
        SourceSpec::Tpch(s) => Arc::new(TpchSource::new(s.clone(), settings.batch_rows.get())),
        SourceSpec::Postgres(s) => Arc::new(
            s.build(connections.postgres(&s.connection)?, settings)
                .await?,
        ),
        SourceSpec::AzureBlob(s) => Arc::new(
            s.build(connections.azure_blob(&s.connection)?, settings)
                .await?,
        ),
        SourceSpec::Sqlserver(s) => Arc::new(
            s.build(connections.sqlserver(&s.connection)?, settings)
                .await?,
        ),
    })
}

/// Builds a job's sink (checks paths; writes nothing).
pub fn build_sink(
    spec: &SinkSpec,
    connections: &Connections,
    settings: &JobSettings,
) -> Result<Arc<dyn Sink>> {
    Ok(match spec {
        SinkSpec::File(s) => Arc::new(s.build(connections.file_root(&s.connection)?, settings)?),
        SinkSpec::Postgres(s) => Arc::new(s.build(connections.postgres(&s.connection)?, settings)?),
        SinkSpec::AzureBlob(s) => {
            Arc::new(s.build(connections.azure_blob(&s.connection)?, settings)?)
        }
        SinkSpec::Sqlserver(s) => Arc::new(s.build(connections.sqlserver(&s.connection)?)?),
    })
}

/// Builds the source and sink of a validated job.
pub async fn build_job(
    spec: &JobFile,
    mut settings: JobSettings,
    connections: &Connections,
) -> Result<Job> {
    let in_job = |e: Error| e.context(format!("job {}", settings.name));
    if let Some(log) = &settings.fault_tolerance.log_path {
        let log = log.to_string_lossy().to_string();
        let checked = file::resolve(&log, None, &settings.local, Access::Write, "fault log")
            .map_err(in_job)?;
        settings.fault_tolerance.log_path = Some(checked);
    }
    let source = build_source(&spec.source, connections, &settings)
        .await
        .map_err(in_job)?;
    let sink = build_sink(&spec.sink, connections, &settings).map_err(in_job)?;
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
    connections.get(name)?.check(name, container).await
}
