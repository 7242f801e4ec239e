//! `verify: true`: once a job has committed, its published output is read back through the
//! sink's own store, as a reader would read it, and its figures (row count, row and column
//! checksums; `ferry_engine::verify`) are compared with those of the data that passed to the
//! sink. A mismatch fails the job with both figures and removes a file or blob output (a
//! table is left as loaded, and the report says so).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use ferry_engine::config::JobSettings;
use ferry_engine::report::Verification;
use ferry_engine::verify::Figures;
use ferry_engine::{Error, JobReport, Result};
use futures::StreamExt;
use object_store::ObjectStoreExt;

use crate::azure_blob::AzureBlobSourceSpec;
use crate::file::FileSourceSpec;
use crate::format::{CsvFormat, FormatSpec, JsonlFormat};
use crate::postgres::{PostgresSourceSpec, PostgresWriteMode};
use crate::sqlserver::{SqlServerSourceSpec, SqlServerWriteMode};
use crate::{Connections, JobFile, SinkSpec, SourceSpec};

/// Checks without I/O that the job's output can be verified: a table sink must hold only
/// this job's rows (mode `truncate` or `overwrite`).
pub fn check(spec: &JobFile, settings: &JobSettings) -> Result<()> {
    if !settings.verify {
        return Ok(());
    }
    let appends = match &spec.sink {
        SinkSpec::Postgres(s) => s.mode == PostgresWriteMode::Append,
        SinkSpec::Sqlserver(s) => s.mode == SqlServerWriteMode::Append,
        SinkSpec::File(_) | SinkSpec::AzureBlob(_) => false,
    };
    if appends {
        return Err(Error::config(
            "`verify` reads the whole table back, so it needs a table that holds only this job's rows: set the sink's mode to truncate or overwrite, or turn verify off",
        ));
    }
    Ok(())
}

/// Reads the output of a job that succeeded back and compares; returns the report with the
/// figures of both sides, failed when they differ or the output cannot be read back.
pub async fn verify_output(
    spec: &JobFile,
    connections: &Connections,
    settings: &JobSettings,
    schema: &SchemaRef,
    mut report: JobReport,
) -> JobReport {
    let Some(read) = report.verification.as_ref().map(|v| v.read.clone()) else {
        return report;
    };
    if report.error.is_some() {
        return report;
    }
    let started = std::time::Instant::now();
    let back = read_back(spec, connections, settings, schema, &report.outputs).await;
    let secs = started.elapsed().as_secs_f64();
    let output = match back {
        Ok(figures) => figures,
        Err(e) => {
            return fail(
                report,
                e.context(
                    "verify: the published output could not be read back (it was left in place)",
                ),
            );
        }
    };
    let differences = read.differences(&output);
    report.verification = Some(Verification {
        read,
        output: Some(output),
        secs,
    });
    if differences.is_empty() {
        tracing::info!(job = %report.job, secs, "verified: the output matches what was read");
        return report;
    }
    let fate = match remove_outputs(spec, connections, settings, &report.outputs).await {
        Ok(Some(n)) => format!("its {n} published file(s) were removed"),
        Ok(None) => "the table was left as loaded".to_string(),
        Err(e) => format!("removing it failed ({e}); remove it by hand"),
    };
    fail(
        report,
        Error::data(format!(
            "verify: the published output differs from what was read: {}; {fate}",
            differences.join("; ")
        )),
    )
}

/// The report of a copy that did not verify. The engine counted the job when its copy
/// finished; the failed verification is counted apart, not as a second job.
fn fail(mut report: JobReport, e: Error) -> JobReport {
    let failed = JobReport::failed(&report.job, e);
    report.status = failed.status;
    report.error = failed.error;
    metrics::counter!(ferry_engine::metrics::VERIFY_FAILURES_TOTAL).increment(1);
    report
}

/// The sources that read the published output: each file or blob it named, or the table.
fn read_back_specs(spec: &JobFile, outputs: &[String], schema: &SchemaRef) -> Vec<SourceSpec> {
    match &spec.sink {
        SinkSpec::File(s) => outputs
            .iter()
            .map(|o| {
                SourceSpec::File(FileSourceSpec {
                    connection: None,
                    path: o.clone(),
                    format: typed(&s.format, schema),
                })
            })
            .collect(),
        SinkSpec::AzureBlob(s) => outputs
            .iter()
            .map(|o| {
                SourceSpec::AzureBlob(AzureBlobSourceSpec {
                    connection: s.connection.clone(),
                    container: s.container.clone(),
                    path: o.trim_start_matches('/').to_string(),
                    format: typed(&s.format, schema),
                })
            })
            .collect(),
        SinkSpec::Postgres(s) => vec![SourceSpec::Postgres(PostgresSourceSpec {
            connection: s.connection.clone(),
            table: Some(s.table.clone()),
            query: None,
            partition: None,
            snapshot: true,
        })],
        SinkSpec::Sqlserver(s) => vec![SourceSpec::Sqlserver(SqlServerSourceSpec {
            connection: s.connection.clone(),
            table: Some(s.table.clone()),
            query: None,
            partition: None,
        })],
    }
}

/// A text format reads back with the source's column types declared where a job file can
/// name them (text otherwise, compared after a cast); typed formats carry their own.
fn typed(format: &FormatSpec, schema: &SchemaRef) -> FormatSpec {
    let declared = || {
        Some(
            schema
                .fields()
                .iter()
                .map(|f| {
                    crate::format::schema::from_field(f).unwrap_or(
                        crate::format::schema::ColumnSpec {
                            name: f.name().clone(),
                            data_type: "utf8".into(),
                            nullable: true,
                        },
                    )
                })
                .collect(),
        )
    };
    match format {
        FormatSpec::Csv(f) => FormatSpec::Csv(CsvFormat {
            schema: declared(),
            ..f.clone()
        }),
        FormatSpec::Jsonl(f) => FormatSpec::Jsonl(JsonlFormat {
            schema: declared(),
            ..f.clone()
        }),
        other => other.clone(),
    }
}

/// Reads every published output back and computes its figures: `parallel_copies`
/// partitions at once, the figures on blocking threads.
async fn read_back(
    spec: &JobFile,
    connections: &Connections,
    settings: &JobSettings,
    schema: &SchemaRef,
    outputs: &[String],
) -> Result<Figures> {
    let parallel = settings.parallel_copies.get();
    // Read back within the job's own budget.
    let budget = ferry_engine::channel::ByteBudget::new(settings.max_buffer_bytes);
    let budget = &budget;
    let mut parts = Vec::new();
    for source_spec in read_back_specs(spec, outputs, schema) {
        let source = crate::registry::build_source(&source_spec, connections, settings).await?;
        for partition in source.plan(parallel).await? {
            parts.push((source.clone(), partition));
        }
    }
    let mut figures = Figures::new(schema);
    let mut read = futures::stream::iter(parts)
        .map(|(source, partition)| async move {
            let mut figures = Figures::new(schema);
            let mut stream = source.open(&partition, None, budget)?;
            while let Some(item) = stream.next().await {
                let item = item?;
                let batch = by_name(&item.batch, schema)?;
                figures = ferry_engine::task::spawn_blocking(move || {
                    figures.add(&batch).map(|()| figures)
                })
                .await
                .map_err(|e| Error::internal(format!("verify task: {e}")))??;
            }
            Ok::<Figures, Error>(figures)
        })
        .buffer_unordered(parallel);
    while let Some(part) = read.next().await {
        figures.merge(&part?);
    }
    Ok(figures)
}

/// The columns of `batch` in `schema`'s order, found by name (a table may order them
/// differently, or fold their case).
fn by_name(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let theirs = batch.schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    let mut fields = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let index = theirs
            .index_of(field.name())
            .ok()
            .or_else(|| {
                theirs
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(field.name()))
            })
            .ok_or_else(|| {
                Error::data(format!(
                    "verify: the output has no column `{}`",
                    field.name()
                ))
            })?;
        let mut column = batch.column(index).clone();
        // Intervals pass through Parquet and text as ISO 8601 text, which arrow cannot cast.
        if matches!(field.data_type(), arrow::datatypes::DataType::Interval(_))
            && matches!(
                column.data_type(),
                arrow::datatypes::DataType::Utf8
                    | arrow::datatypes::DataType::LargeUtf8
                    | arrow::datatypes::DataType::Utf8View
            )
        {
            column = crate::postgres::encode::interval_from_text(&column, field.name())?;
        }
        // And the other way: a source that read such text gets it compared as text.
        if field
            .metadata()
            .contains_key(crate::format::interval::INTERVAL_TEXT_KEY)
            && let Some(intervals) = column
                .as_any()
                .downcast_ref::<arrow::array::IntervalMonthDayNanoArray>()
        {
            column = Arc::new(
                intervals
                    .iter()
                    .map(|v| v.map(crate::format::interval::to_iso8601))
                    .collect::<arrow::array::StringArray>(),
            );
        }
        fields.push(arrow::datatypes::Field::new(
            field.name(),
            column.data_type().clone(),
            true,
        ));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
        .map_err(|e| Error::internal(format!("verify: {e}")))
}

/// Removes the published files or blobs of a job whose output did not verify; `None` for a
/// table (nothing is removed).
async fn remove_outputs(
    spec: &JobFile,
    connections: &Connections,
    settings: &JobSettings,
    outputs: &[String],
) -> Result<Option<usize>> {
    let _ = settings;
    let (store, path) = match &spec.sink {
        SinkSpec::File(s) => (crate::file::local_store(), s.path.as_str()),
        SinkSpec::AzureBlob(s) => (
            connections
                .azure_blob(&s.connection)?
                .store(&s.connection, &s.container)?,
            s.path.as_str(),
        ),
        SinkSpec::Postgres(_) | SinkSpec::Sqlserver(_) => return Ok(None),
    };
    let mut parents = std::collections::BTreeSet::new();
    for output in outputs {
        let path = object_store::path::Path::parse(output.trim_start_matches('/'))
            .map_err(|e| Error::internal(format!("output {output}: {e}")))?;
        store
            .delete(&path)
            .await
            .map_err(|e| crate::format::io::store_error("remove", &path, e))?;
        if let Some((parent, _)) = path.as_ref().rsplit_once('/') {
            parents.insert(parent.to_string());
        }
    }
    // A directory output's manifest would list what is gone.
    if crate::file::is_directory_path(path) {
        for parent in parents {
            let manifest = object_store::path::Path::from(parent).join(crate::file::MANIFEST);
            match store.delete(&manifest).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(crate::format::io::store_error("remove", &manifest, e)),
            }
        }
    }
    Ok(Some(outputs.len()))
}
