//! Control channels: where a worker node takes its jobs from and leaves their reports.
//!
//! - [`local`]: a spool directory shared by the worker processes of one host (the embedded
//!   default);
//! - [`azure_queue`]: an Azure Storage queue for the jobs and a blob container for reports,
//!   node heartbeats and cancellation requests, shared by nodes on any host.
//!
//! Both speak [`ControlChannel`] (what a node needs) and [`ChannelQueries`] (what operators
//! ask); [`registry`] turns a node's `[channel]` table into one. The worker, its admin server
//! and the CLI see only those traits.

pub mod azure_queue;
pub mod local;
pub mod membership;
pub mod registry;
pub mod trust;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ferry_engine::{Error, JobReport, JobStatus, Result};
use serde::{Deserialize, Serialize};

pub use azure_queue::AzureQueueChannel;
pub use local::LocalChannel;
pub use registry::{ChannelConfig, ChannelSpec};

/// A job in the channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The job's id in the channel.
    pub id: String,
    /// Runs started so far (1 while the first run goes).
    #[serde(default)]
    pub attempt: u32,
    /// When it was submitted (ms since the epoch).
    #[serde(default)]
    pub submitted_ms: u64,
    /// Why the last run ended without a report (its node died), if it did.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The node that leased it last, where the channel records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Runs handed back by a draining node: they do not count as attempts.
    #[serde(default)]
    pub released: u32,
    /// The submitter's signature (see [`trust`]), when the runtime signs its jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<trust::JobSignature>,
    /// The job file's JSON.
    pub job: serde_json::Value,
}

/// A finished job as the channel keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishedJob {
    /// The job's id.
    pub id: String,
    /// The node that ran it last.
    pub node: String,
    /// The run that finished (1 = the first).
    pub attempt: u32,
    /// The job's report (one per phase for a staged job).
    pub reports: Vec<JobReport>,
    /// How it ended.
    pub status: JobStatus,
}

/// A node's heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node name.
    pub node: String,
    /// Its concurrent-jobs limit.
    pub max_concurrent_jobs: usize,
    /// The jobs it runs now (id, name, run).
    pub running: Vec<JobState>,
    /// Whether it is draining (no new leases).
    pub draining: bool,
    /// Last heartbeat (ms since the epoch).
    pub heartbeat_ms: u64,
    /// Its admin address, if it serves one.
    #[serde(default)]
    pub admin: Option<String>,
    /// It stopped (drained and exited): its last heartbeat says so, so it is not shown
    /// online until the heartbeat goes stale.
    #[serde(default)]
    pub stopped: bool,
}

/// Where a job stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Waiting to be leased.
    Queued,
    /// Leased by a node.
    Running,
    /// Finished and published.
    Succeeded,
    /// Finished without publishing.
    Failed,
    /// Stopped on request; nothing published.
    Cancelled,
}

impl JobPhase {
    /// The phase as the channel and the CLI spell it.
    pub fn name(self) -> &'static str {
        match self {
            JobPhase::Queued => "queued",
            JobPhase::Running => "running",
            JobPhase::Succeeded => "succeeded",
            JobPhase::Failed => "failed",
            JobPhase::Cancelled => "cancelled",
        }
    }
}

impl From<JobStatus> for JobPhase {
    fn from(status: JobStatus) -> Self {
        match status {
            JobStatus::Succeeded => JobPhase::Succeeded,
            JobStatus::Failed => JobPhase::Failed,
            JobStatus::Cancelled => JobPhase::Cancelled,
        }
    }
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    /// Its id.
    pub id: String,
    /// Queued, running or finished how.
    pub state: JobPhase,
    /// The job's name.
    pub name: String,
    /// The node running or having run it.
    pub node: Option<String>,
    /// Run count.
    pub attempt: u32,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Envelope {
    /// A job submitted now, not run yet.
    pub fn new(id: String, job: serde_json::Value) -> Self {
        Envelope {
            id,
            attempt: 0,
            submitted_ms: now_ms(),
            last_error: None,
            node: None,
            released: 0,
            signature: None,
            job,
        }
    }
}

impl FinishedJob {
    /// A failed job's record, written by the channel itself: its nodes died during each of
    /// its runs.
    pub fn failed(id: &str, node: &str, attempt: u32, message: &str) -> Self {
        FinishedJob {
            id: id.to_string(),
            node: node.to_string(),
            attempt,
            reports: vec![JobReport::failed(id, Error::internal(message))],
            status: JobStatus::Failed,
        }
    }

    /// The record of a run that ended with `reports`: the first report that did not
    /// succeed says how the job ended (the last, when all did).
    pub fn of_run(id: &str, node: &str, attempt: u32, reports: Vec<JobReport>) -> Self {
        let status = reports
            .iter()
            .find(|r| r.status != JobStatus::Succeeded)
            .or(reports.last())
            .map_or(JobStatus::Failed, |r| r.status);
        FinishedJob {
            id: id.to_string(),
            node: node.to_string(),
            attempt,
            reports,
            status,
        }
    }

    /// The job's name, from its first report.
    pub fn name(&self) -> String {
        self.reports
            .first()
            .map_or_else(|| "?".to_string(), |r| r.job.clone())
    }
}

/// The `name` of a job file's JSON, or `?`.
pub fn job_name(job: &serde_json::Value) -> String {
    job.get("name")
        .and_then(|n| n.as_str())
        .unwrap_or("?")
        .to_string()
}

/// A new job id: submission time first, so ids sort in submission order, then a random part
/// and the job's name.
pub fn new_job_id(job: &serde_json::Value) -> String {
    let name = job_name(job)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect::<String>();
    format!("{:013}-{:04x}-{name}", now_ms(), fastrand::u16(..))
}

/// Longest job id accepted.
pub const MAX_JOB_ID_LEN: usize = 200;

/// Whether `id` is a job id every channel can use as a file or blob name: 1 to 200 ASCII
/// letters, digits, `-`, `_` and `.`, not starting with `.` and without `..`. Ids come from
/// users (the admin API's routes, raw messages), so no channel ever joins an unchecked id
/// to a path.
pub fn valid_job_id(id: &str) -> bool {
    (1..=MAX_JOB_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.')
        && !id.contains("..")
}

/// [`valid_job_id`] as an error that says what an id may hold.
pub fn check_job_id(id: &str) -> Result<()> {
    if valid_job_id(id) {
        Ok(())
    } else {
        let shown: String = id.chars().take(60).collect();
        Err(Error::invalid_input(format!(
            "`{}` is not a job id: ids are 1 to {MAX_JOB_ID_LEN} letters, digits, `-`, `_` and `.`",
            shown.escape_default()
        )))
    }
}

/// A job taken from the channel: its envelope, or the id and error of a message that is not
/// one (to be reported, not run).
pub type Leased = std::result::Result<Envelope, (String, Error)>;

/// What a worker node needs of its channel: where it takes its jobs from and leaves their
/// outcomes.
///
/// A job is leased by one node at a time; the node renews the lease while the job runs and
/// completes it with a report. A lease that is not renewed within
/// [`lease_timeout`](Self::lease_timeout) (its node died) makes the job available again, with
/// its attempt count raised, until it has used its runs and fails with a report.
#[async_trait]
pub trait ControlChannel: Send + Sync + 'static {
    /// What the channel is, for logs and diagnostics (no secret).
    fn describe(&self) -> String;

    /// A lease not renewed for this long is taken from its node.
    fn lease_timeout(&self) -> Duration;

    /// Leases up to `max` jobs for `node`.
    async fn lease(&self, node: &str, max: usize) -> Result<Vec<Leased>>;

    /// Renews `node`'s lease on job `id`; `false` when the lease is lost (another node may
    /// run the job now: stop it and do not report it).
    async fn renew(&self, id: &str, node: &str) -> Result<bool>;

    /// Records a finished job's outcome and ends its lease.
    async fn complete(&self, finished: &FinishedJob) -> Result<()>;

    /// Hands a leased job back without counting the run (graceful shutdown).
    async fn release(&self, id: &str) -> Result<()>;

    /// Makes jobs whose lease expired available again; returns their ids. Channels whose
    /// store expires leases itself return none.
    async fn recover_expired(&self, node: &str) -> Result<Vec<String>>;

    /// Which of `ids` were asked to stop.
    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>>;

    /// Records a node's heartbeat.
    async fn node_heartbeat(&self, info: &NodeInfo) -> Result<()>;

    /// Whether job `id` already has a finished record (a second run of it is a replay).
    async fn finished(&self, id: &str) -> Result<bool>;

    /// Drops leased job `id` without running it and without touching any record of it (a
    /// replay of a finished job): it goes where the channel keeps rejected messages, with
    /// `why`.
    async fn reject(&self, id: &str, why: &str) -> Result<()>;

    /// Writes (or replaces) record `name` of `kind`: JSON text.
    async fn put_record(&self, kind: RecordKind, name: &str, json: &[u8]) -> Result<()>;

    /// Reads record `name` of `kind`, if there is one.
    async fn get_record(&self, kind: RecordKind, name: &str) -> Result<Option<Vec<u8>>>;

    /// The names of the records of `kind`, sorted.
    async fn list_records(&self, kind: RecordKind) -> Result<Vec<String>>;

    /// Removes record `name` of `kind` (none is fine).
    async fn delete_record(&self, kind: RecordKind, name: &str) -> Result<()>;
}

/// The records of a runtime's membership that travel through its channel (see
/// [`membership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A node's request to join: its name, its public key, and proof that it holds the
    /// runtime's authentication key.
    Registration,
    /// The runtime's answer to a registration: its credential key sealed to the node's key,
    /// signed by the runtime.
    Grant,
}

impl RecordKind {
    /// The folder (spool) or prefix (container) of this kind of record.
    pub fn dir(self) -> &'static str {
        match self {
            RecordKind::Registration => "registrations",
            RecordKind::Grant => "grants",
        }
    }
}

/// Refuses a record name that is not a usable node name (it becomes a file or blob name).
pub fn check_record_name(name: &str) -> Result<()> {
    if valid_job_id(name) {
        Ok(())
    } else {
        Err(Error::invalid_input(format!(
            "`{}` is not a usable node name: use letters, digits, `-`, `_` and `.`",
            name.escape_default()
        )))
    }
}

/// What operators and submitters ask of a channel (the CLI, the admin API): submit and
/// cancel jobs, read their records, list jobs and nodes.
#[async_trait]
pub trait ChannelQueries: Send + Sync + 'static {
    /// Puts a job (its JSON) in the channel, unsigned; returns its id.
    async fn submit(&self, job: serde_json::Value) -> Result<String> {
        self.submit_envelope(Envelope::new(new_job_id(&job), job))
            .await
    }

    /// Puts an envelope (a job with its id, signed or not) in the channel; returns its id.
    async fn submit_envelope(&self, envelope: Envelope) -> Result<String>;

    /// Asks for job `id` to stop; says what happens.
    async fn cancel(&self, id: &str) -> Result<String>;

    /// Job `id`'s record, once it finished.
    async fn report(&self, id: &str) -> Result<Option<FinishedJob>>;

    /// The `n` latest finished jobs, newest first.
    async fn recent_reports(&self, n: usize) -> Result<Vec<FinishedJob>>;

    /// The jobs the channel knows: queued, running and finished, oldest first.
    async fn jobs(&self) -> Result<Vec<JobState>>;

    /// How many jobs wait to be leased (for the policy's `max_queued_jobs`). The default
    /// counts [`jobs`](Self::jobs); a channel that can count cheaper says so.
    async fn queued(&self) -> Result<usize> {
        Ok(self
            .jobs()
            .await?
            .iter()
            .filter(|j| j.state == JobPhase::Queued)
            .count())
    }

    /// Every node that beat, with its last heartbeat.
    async fn nodes(&self) -> Result<Vec<NodeInfo>>;
}

/// A whole channel: what nodes need and what operators ask.
pub trait Channel: ControlChannel + ChannelQueries {}

impl<T: ControlChannel + ChannelQueries> Channel for T {}

/// The runtime that runs remote channels' HTTP requests: connection pools live on the
/// runtime that opened them, and a node calls its channel from several event loops (the
/// intake, the admin server's workers, the CLI), some of which end while the node runs.
pub(crate) fn io_handle() -> Result<tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("ferry-channel")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map(|rt| rt.handle().clone())
        .map_err(|e| Error::internal(format!("cannot start the channel's I/O threads: {e}")))
}
