//! ferry's engine: the job model and the actor pipeline that copies data between any source
//! and any sink, with bounded memory.
//!
//! ```text
//! JobSupervisor ── plan(partitions) ──> for each output, <= parallel_copies partitions at once:
//!
//!   SourceReader ──RecordBatch──> ChunkEncoder ──Bytes──> SinkWriter ──finish──> StagedOutput
//!    (async I/O)   bounded chan    (CPU thread)  bounded   (async I/O)
//!        └── byte budget reserved as batches are built ── travels with the data ── released when written
//!
//! all outputs staged ──> row accounting checked ──> PreparedSink::commit (the only publish)
//! any failure        ──> kill switch stops every stage ──> PreparedSink::abort (nothing published)
//! ```
//!
//! The engine names no concrete store: connectors implement [`Source`], [`Sink`] and
//! [`Encoder`], and the binary wires them together from configuration.

pub mod actors;
pub mod channel;
pub mod config;
pub mod encode;
pub mod error;
pub mod job;
pub mod metrics;
pub mod report;
pub mod retry;
pub mod sink;
pub mod source;
pub mod stats;
pub mod task;
#[cfg(feature = "testing")]
pub mod testing;
pub mod verify;

use std::sync::Arc;

use actix::Actor;

pub use actors::{JobSupervisor, RunJob};
pub use encode::Encoder;
pub use error::{Error, ErrorKind, Result};
pub use job::Job;
pub use report::{JobReport, JobStatus};
pub use sink::{
    Committed, OpenOutput, OutputLayout, OutputWriter, PreparedSink, Sink, StagedOutput,
};
pub use source::{
    BatchStream, Charge, Checkpoint, Partition, ReadAhead, SkippedRow, Source, SourceBatch,
    read_ahead,
};
pub use stats::{JobProgress, ProgressSnapshot, Stage};
pub use tokio_util::sync::CancellationToken;

/// A running job's live counters and kill switch: what a node, its status page and a
/// progress bar watch, for a copy through the engine and for a binary copy alike.
#[derive(Debug, Clone)]
pub struct JobControl {
    /// Live counters.
    pub progress: Arc<JobProgress>,
    /// Cancels the job when triggered.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl JobControl {
    /// Fresh counters and an untriggered kill switch.
    pub fn new() -> Self {
        Self {
            progress: JobProgress::new(),
            cancel: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl Default for JobControl {
    fn default() -> Self {
        Self::new()
    }
}

/// A started job: its supervisor's address, live counters and kill switch.
pub struct RunningJob {
    /// The supervisor.
    pub supervisor: actix::Addr<JobSupervisor>,
    /// Live counters.
    pub progress: Arc<JobProgress>,
    /// Cancels the job when triggered.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl RunningJob {
    /// The job's counters and kill switch.
    pub fn control(&self) -> JobControl {
        JobControl {
            progress: self.progress.clone(),
            cancel: self.cancel.clone(),
        }
    }

    /// Waits for the job's report.
    pub async fn report(&self) -> JobReport {
        match self.supervisor.send(RunJob).await {
            Ok(report) => report,
            Err(e) => {
                let mut report = JobReport::failed(
                    "?",
                    Error::internal(format!("the job supervisor stopped: {e}")),
                );
                report.status = JobStatus::Failed;
                report
            }
        }
    }
}

/// Starts a supervisor for `job`. Must be called inside an actix `System`.
pub fn start(job: Job) -> RunningJob {
    let supervisor = JobSupervisor::new(job);
    let progress = supervisor.progress();
    let cancel = supervisor.cancel_token();
    RunningJob {
        supervisor: supervisor.start(),
        progress,
        cancel,
    }
}

/// Runs `job` to its end. Must be called inside an actix `System`.
pub async fn run(job: Job) -> JobReport {
    start(job).report().await
}
