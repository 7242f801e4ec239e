//! Every metric ferry records, in one place. Labels are bounded: source and sink connector
//! kinds, stage, status. Job names and ids are never labels (anyone who can submit a job
//! would otherwise add series without limit); reports carry them.

/// Rows read from sources.
pub const ROWS_READ_TOTAL: &str = "ferry_rows_read_total";
/// Rows written to sinks.
pub const ROWS_WRITTEN_TOTAL: &str = "ferry_rows_written_total";
/// Rows skipped as incompatible.
pub const ROWS_SKIPPED_TOTAL: &str = "ferry_rows_skipped_total";
/// Bytes written to sinks.
pub const BYTES_WRITTEN_TOTAL: &str = "ferry_bytes_written_total";
/// Seconds a stage spent working, one observation per job (a histogram: counters hold whole
/// numbers, and a stage's fraction of a second would be lost).
pub const STAGE_BUSY_SECONDS: &str = "ferry_stage_busy_seconds";
/// Seconds a stage spent waiting for input or for room downstream, one observation per job.
pub const STAGE_WAIT_SECONDS: &str = "ferry_stage_wait_seconds";
/// Retries of partitions or outputs.
pub const RETRIES_TOTAL: &str = "ferry_retries_total";
/// Jobs finished, by status.
pub const JOBS_TOTAL: &str = "ferry_jobs_total";
/// Seconds a job ran.
pub const JOB_DURATION_SECONDS: &str = "ferry_job_duration_seconds";
/// Copies whose published output did not match what was read (`verify: true`), or could not
/// be read back. Such a job was counted in `ferry_jobs_total` when its copy finished.
pub const VERIFY_FAILURES_TOTAL: &str = "ferry_verify_failures_total";

/// Describes every metric to the installed recorder (units and help texts).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(ROWS_READ_TOTAL, Unit::Count, "rows read from sources");
    describe_counter!(ROWS_WRITTEN_TOTAL, Unit::Count, "rows written to sinks");
    describe_counter!(
        ROWS_SKIPPED_TOTAL,
        Unit::Count,
        "rows skipped as incompatible"
    );
    describe_counter!(BYTES_WRITTEN_TOTAL, Unit::Bytes, "bytes written to sinks");
    describe_histogram!(
        STAGE_BUSY_SECONDS,
        Unit::Seconds,
        "time a stage spent working, per job (its sum is the total, in fractional seconds)"
    );
    describe_histogram!(
        STAGE_WAIT_SECONDS,
        Unit::Seconds,
        "time a stage spent waiting, per job (its sum is the total, in fractional seconds)"
    );
    describe_counter!(RETRIES_TOTAL, Unit::Count, "retried partitions and outputs");
    describe_counter!(JOBS_TOTAL, Unit::Count, "jobs finished, by status");
    describe_histogram!(JOB_DURATION_SECONDS, Unit::Seconds, "duration of jobs");
    describe_counter!(
        VERIFY_FAILURES_TOTAL,
        Unit::Count,
        "copies whose output did not verify"
    );
}

/// Records a finished job's metrics (the one place that does): its status and duration, rows
/// and bytes moved, and each stage's busy and waiting time. Labels are bounded (connector
/// kinds, stages, status), never the job's name.
pub fn record_job(report: &crate::JobReport) {
    let label = [
        ("source", report.source.clone()),
        ("sink", report.sink.clone()),
    ];
    metrics::counter!(JOBS_TOTAL, "status" => report.status.name()).increment(1);
    metrics::histogram!(JOB_DURATION_SECONDS, &label).record(report.duration_secs);
    metrics::counter!(ROWS_READ_TOTAL, &label).increment(report.rows_read);
    metrics::counter!(ROWS_WRITTEN_TOTAL, &label).increment(report.rows_written);
    metrics::counter!(ROWS_SKIPPED_TOTAL, &label).increment(report.rows_skipped);
    metrics::counter!(BYTES_WRITTEN_TOTAL, &label).increment(report.bytes_written);
    for s in &report.stages {
        let labels = [
            ("source", report.source.clone()),
            ("sink", report.sink.clone()),
            ("stage", s.stage.name().to_string()),
        ];
        metrics::histogram!(STAGE_BUSY_SECONDS, &labels).record(s.busy_secs);
        metrics::histogram!(STAGE_WAIT_SECONDS, &labels)
            .record(s.wait_input_secs + s.wait_output_secs);
    }
}
