//! The copy job: what to read, where to write it, and how hard to push.
//!
//! A job is JSON. The engine owns the settings every job shares (parallelism, memory budget,
//! retry, fault tolerance); the `source` and `sink` sections belong to the connectors, so
//! [`JobSpec`] is generic over them and the connectors crate names the concrete types.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, HumanDuration};
use crate::error::{Error, Result};

/// Default number of partitions copied at once.
pub const DEFAULT_PARALLEL_COPIES: usize = 4;
/// Default byte budget of a job's in-flight data.
pub const DEFAULT_MAX_BUFFER_BYTES: ByteSize = ByteSize::mib(256);
/// Default number of rows in a record batch read from a source.
pub const DEFAULT_BATCH_ROWS: usize = 8192;
/// Default number of attempts of a failing partition, the first one included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default wait before the first retry; it doubles on every further attempt.
pub const DEFAULT_INITIAL_BACKOFF: HumanDuration = HumanDuration::secs(1);
/// Default cap on the wait between attempts.
pub const DEFAULT_MAX_BACKOFF: HumanDuration = HumanDuration::secs(60);
/// Smallest accepted `max_buffer_bytes`: below it a single batch cannot be held.
pub const MIN_MAX_BUFFER_BYTES: ByteSize = ByteSize::mib(1);
/// Largest accepted `batch_rows`, whatever a node's policy says: builders allocate this many
/// rows up front, and a larger value makes batches that no byte budget can pace.
pub const MAX_BATCH_ROWS: usize = 1 << 20;
/// Largest accepted `parallel_copies`, whatever a node's policy says.
pub const MAX_PARALLEL_COPIES: usize = 1024;

/// A copy job as written in a job file. `Src`, `Snk` and `Stg` are the connectors' typed
/// `source`, `sink` and `staging` sections.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec<Src, Snk, Stg> {
    /// Name of the job: used in logs, reports, metrics and temporary file names.
    pub name: String,
    /// Where data is read from; its `type` selects the connector.
    pub source: Src,
    /// Where data is written to; its `type` selects the connector.
    pub sink: Snk,
    /// Staged copy through interim files, as the connectors define it (the engine runs each
    /// phase as an ordinary job).
    #[serde(default = "Option::default")]
    pub staging: Option<Stg>,
    /// How many partitions are copied at once.
    #[serde(default = "default_parallel_copies")]
    pub parallel_copies: usize,
    /// Memory budget of the data in flight between the stages of this job.
    #[serde(default = "default_max_buffer_bytes")]
    pub max_buffer_bytes: ByteSize,
    /// Rows per record batch read from the source.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// What to do with rows that cannot be converted.
    #[serde(default)]
    pub fault_tolerance: FaultTolerance,
    /// Retry of retryable failures.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// After the commit, read the published output back and compare its row count and
    /// checksums with those of the data read (docs/operations.md, "Verifying a copy").
    #[serde(default)]
    pub verify: bool,
}

fn default_parallel_copies() -> usize {
    DEFAULT_PARALLEL_COPIES
}
fn default_max_buffer_bytes() -> ByteSize {
    DEFAULT_MAX_BUFFER_BYTES
}
fn default_batch_rows() -> usize {
    DEFAULT_BATCH_ROWS
}

/// Handling of rows that do not fit the target schema.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultTolerance {
    /// Skip rows that cannot be converted instead of failing the job; each skipped row is
    /// counted in the report and written, with its reason, to `log_path`.
    #[serde(default)]
    pub skip_incompatible_rows: bool,
    /// File (JSON lines) that receives every skipped row with its location and reason.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
}

/// Retry of retryable failures (lost connections, timeouts) with exponential backoff.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts of a failing partition, the first one included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubles on each further attempt, with jitter.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    /// Cap on the wait between attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}
fn default_initial_backoff() -> HumanDuration {
    DEFAULT_INITIAL_BACKOFF
}
fn default_max_backoff() -> HumanDuration {
    DEFAULT_MAX_BACKOFF
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// The validated settings of a job, shared by all its stages.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Name of the job.
    pub name: String,
    /// Partitions copied at once.
    pub parallel_copies: NonZeroUsize,
    /// Byte budget of the data in flight.
    pub max_buffer_bytes: u64,
    /// Rows per batch.
    pub batch_rows: NonZeroUsize,
    /// Fault tolerance.
    pub fault_tolerance: FaultTolerance,
    /// Attempts of a failing partition, the first included.
    pub max_attempts: NonZeroU32,
    /// First retry wait.
    pub initial_backoff: Duration,
    /// Longest retry wait.
    pub max_backoff: Duration,
    /// Asked right before the output is published (none outside a worker node).
    pub commit_gate: Option<CommitGate>,
    /// The node's cap on batches encoded at once, shared with its other jobs (none outside a
    /// worker node, or when the node sets no `encode_threads`).
    pub encode_slots: Option<crate::encode::EncodeSlots>,
    /// The local paths the job may touch, and the mode of the files it creates.
    pub local: std::sync::Arc<super::LocalFiles>,
    /// Whether the job's figures are computed for verification.
    pub verify: bool,
}

/// The answer a job needs right before it publishes: may it still? A worker node answers by
/// renewing the job's lease, so a node that lost the job to another node (it was frozen past
/// the lease timeout) publishes nothing, and one that renewed holds the job for a whole lease
/// timeout more while it commits.
#[derive(Clone)]
pub struct CommitGate(
    std::sync::Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<bool>> + Send + Sync>,
);

impl CommitGate {
    /// A gate that asks `check`.
    pub fn new(
        check: impl Fn() -> futures::future::BoxFuture<'static, Result<bool>> + Send + Sync + 'static,
    ) -> Self {
        CommitGate(std::sync::Arc::new(check))
    }

    /// `Ok` when the job may publish; a cancellation or the gate's error otherwise.
    pub async fn check(&self) -> Result<()> {
        match (self.0)().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::cancelled(
                "this node lost the job's lease (another node runs it now); nothing was published",
            )),
            Err(e) => Err(e.context(
                "cannot confirm the job's lease before publishing; nothing was published",
            )),
        }
    }
}

impl std::fmt::Debug for CommitGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitGate")
    }
}

impl JobSettings {
    /// Settings for tests and embedded use: defaults with the given name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            parallel_copies: NonZeroUsize::new(DEFAULT_PARALLEL_COPIES)
                .unwrap_or(NonZeroUsize::MIN),
            max_buffer_bytes: DEFAULT_MAX_BUFFER_BYTES.bytes(),
            batch_rows: NonZeroUsize::new(DEFAULT_BATCH_ROWS).unwrap_or(NonZeroUsize::MIN),
            fault_tolerance: FaultTolerance::default(),
            max_attempts: NonZeroU32::new(DEFAULT_MAX_ATTEMPTS).unwrap_or(NonZeroU32::MIN),
            initial_backoff: DEFAULT_INITIAL_BACKOFF.0,
            max_backoff: DEFAULT_MAX_BACKOFF.0,
            commit_gate: None,
            encode_slots: None,
            local: Default::default(),
            verify: false,
        }
    }

    /// Input bytes after which a source that can (CSV, JSON lines, Parquet, PostgreSQL, SQL
    /// Server) ends a batch even before `batch_rows`: a sixth of the budget over
    /// `parallel_copies`, between 1 MiB and 16 MiB. Each running partition holds about three batches (being built,
    /// queued, being encoded), so wide rows or a large `batch_rows` still leave half the
    /// budget to the encoders instead of making the partitions take turns for it.
    pub fn batch_bytes(&self) -> usize {
        let share = self.max_buffer_bytes / 6 / self.parallel_copies.get() as u64;
        share.clamp(1 << 20, 16 << 20) as usize
    }
}

/// A deserialization error with the path of the field it is about (`parallel_copies:
/// invalid type: string "four", expected usize at line 1 column 30`).
pub fn path_error(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    if matches!(path.as_str(), "." | "?" | "") {
        e.inner().to_string()
    } else {
        format!("{path}: {}", e.inner())
    }
}

impl<Src, Snk, Stg> JobSpec<Src, Snk, Stg> {
    /// Parses a job from JSON; unknown fields and wrong types are errors naming the field.
    pub fn from_json(text: &str) -> Result<Self>
    where
        Src: serde::de::DeserializeOwned,
        Snk: serde::de::DeserializeOwned,
        Stg: serde::de::DeserializeOwned,
    {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(&mut de)
            .map_err(|e| Error::config(format!("invalid job: {}", path_error(&e))))
    }

    /// Checks the engine's part of the job without I/O and returns its typed settings.
    pub fn validate(&self) -> Result<JobSettings> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(Error::config(
                "invalid job: `name` is empty; give the job a name",
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::config(format!(
                "invalid job: name `{name}` may contain only letters, digits, `-`, `_` and `.` (it names temporary files)"
            )));
        }
        let parallel_copies = NonZeroUsize::new(self.parallel_copies).ok_or_else(|| {
            Error::config(format!("job {name}: `parallel_copies` must be at least 1"))
        })?;
        let batch_rows = NonZeroUsize::new(self.batch_rows)
            .ok_or_else(|| Error::config(format!("job {name}: `batch_rows` must be at least 1")))?;
        if self.batch_rows > MAX_BATCH_ROWS {
            return Err(Error::config(format!(
                "job {name}: `batch_rows` is {}, above the largest accepted {MAX_BATCH_ROWS}; the default {DEFAULT_BATCH_ROWS} is best for most jobs",
                self.batch_rows
            )));
        }
        if self.parallel_copies > MAX_PARALLEL_COPIES {
            return Err(Error::config(format!(
                "job {name}: `parallel_copies` is {}, above the largest accepted {MAX_PARALLEL_COPIES}",
                self.parallel_copies
            )));
        }
        if self.max_buffer_bytes < MIN_MAX_BUFFER_BYTES {
            return Err(Error::config(format!(
                "job {name}: `max_buffer_bytes` is {}, below the minimum of {}",
                self.max_buffer_bytes, MIN_MAX_BUFFER_BYTES
            )));
        }
        let max_attempts = NonZeroU32::new(self.retry.max_attempts).ok_or_else(|| {
            Error::config(format!(
                "job {name}: `retry.max_attempts` must be at least 1"
            ))
        })?;
        if self.retry.initial_backoff > self.retry.max_backoff {
            return Err(Error::config(format!(
                "job {name}: `retry.initial_backoff` is longer than `retry.max_backoff`"
            )));
        }
        Ok(JobSettings {
            name: name.to_string(),
            parallel_copies,
            max_buffer_bytes: self.max_buffer_bytes.bytes(),
            batch_rows,
            fault_tolerance: self.fault_tolerance.clone(),
            max_attempts,
            initial_backoff: self.retry.initial_backoff.0,
            max_backoff: self.retry.max_backoff.0,
            commit_gate: None,
            encode_slots: None,
            local: Default::default(),
            verify: self.verify,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bytes_are_a_sixth_of_each_partition_s_share_within_bounds() {
        let mut s = JobSettings::new("j");
        let sized = |s: &JobSettings| s.batch_bytes() as u64;
        s.max_buffer_bytes = 256 << 20;
        s.parallel_copies = 4.try_into().unwrap();
        assert_eq!(sized(&s), (256 << 20) / 24);
        s.max_buffer_bytes = 16 << 20;
        assert_eq!(sized(&s), 1 << 20, "at least 1 MiB");
        s.max_buffer_bytes = 8 << 30;
        assert_eq!(sized(&s), 16 << 20, "at most 16 MiB");
    }

    type Spec = JobSpec<serde_json::Value, serde_json::Value, serde_json::Value>;

    #[test]
    fn defaults_apply_and_validate() {
        let spec = Spec::from_json(r#"{"name":"j","source":{},"sink":{}}"#).unwrap();
        let settings = spec.validate().unwrap();
        assert_eq!(settings.parallel_copies.get(), DEFAULT_PARALLEL_COPIES);
        assert_eq!(settings.max_buffer_bytes, 256 << 20);
        assert_eq!(settings.max_attempts.get(), 5);
        assert_eq!(settings.initial_backoff, Duration::from_secs(1));
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let err = Spec::from_json(r#"{"name":"j","source":{},"sink":{},"paralel_copies":2}"#)
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `paralel_copies`"),
            "{err}"
        );
        // A wrong type names the field it is about.
        let err = Spec::from_json(r#"{"name":"j","source":{},"sink":{},"parallel_copies":"four"}"#)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid job: parallel_copies: invalid type: string \"four\""),
            "{err}"
        );
        let err =
            Spec::from_json(r#"{"name":"j","source":{},"sink":{},"retry":{"max_attempts":-1}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("retry.max_attempts:"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn bad_values_are_rejected() {
        for (json, needle) in [
            (r#"{"name":"","source":{},"sink":{}}"#, "`name` is empty"),
            (
                r#"{"name":"a b","source":{},"sink":{}}"#,
                "may contain only",
            ),
            (
                r#"{"name":"j","source":{},"sink":{},"parallel_copies":0}"#,
                "parallel_copies",
            ),
            (
                r#"{"name":"j","source":{},"sink":{},"batch_rows":1000000000000}"#,
                "above the largest accepted 1048576",
            ),
            (
                r#"{"name":"j","source":{},"sink":{},"parallel_copies":100000}"#,
                "above the largest accepted 1024",
            ),
            (
                r#"{"name":"j","source":{},"sink":{},"max_buffer_bytes":"10KiB"}"#,
                "below the minimum",
            ),
            (
                r#"{"name":"j","source":{},"sink":{},"retry":{"max_attempts":0}}"#,
                "max_attempts",
            ),
        ] {
            let err = Spec::from_json(json)
                .and_then(|s| s.validate())
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{json}: {err}");
        }
    }
}
