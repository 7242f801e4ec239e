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
}
