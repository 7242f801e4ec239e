//! Control channels: where a worker node takes its jobs from and leaves their reports.
//!
//! - [`local`]: a spool directory shared by the worker processes of one host (the embedded
//!   default);
//! - [`azure_queue`]: an Azure Storage queue for the jobs and a blob container for reports,
//!   node heartbeats and cancellation requests, shared by nodes on any host.
//!
//! Both speak [`ControlChannel`]; the worker, its admin server and the CLI see only that.

pub mod azure_queue;
pub mod local;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use ferry_engine::{Error, Result};
use serde::{Deserialize, Serialize};

pub use azure_queue::AzureQueueChannel;
pub use local::LocalChannel;

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
    pub reports: Vec<serde_json::Value>,
    /// succeeded, failed or cancelled.
    pub status: String,
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

/// Where a job stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    /// Its id.
    pub id: String,
    /// queued, running, succeeded, failed or cancelled.
    pub state: String,
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
            reports: vec![serde_json::json!({
                "job": id, "status": "failed",
                "error": {"kind": "internal", "message": message},
            })],
            status: "failed".into(),
        }
    }

    /// The job's name, from its first report.
    pub fn name(&self) -> String {
        self.reports
            .first()
            .and_then(|r| r.get("job"))
            .and_then(|n| n.as_str())
            .unwrap_or("?")
            .to_string()
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

/// Where a worker node takes its jobs from and leaves their outcomes.
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

    /// Puts a job (its JSON) in the channel; returns its id.
    async fn submit(&self, job: serde_json::Value) -> Result<String>;

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

    /// Asks for job `id` to stop; says what happens.
    async fn cancel(&self, id: &str) -> Result<String>;

    /// Which of `ids` were asked to stop.
    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>>;

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
            .filter(|j| j.state == "queued")
            .count())
    }

    /// Records a node's heartbeat.
    async fn node_heartbeat(&self, info: &NodeInfo) -> Result<()>;

    /// Every node that beat, with its last heartbeat.
    async fn nodes(&self) -> Result<Vec<NodeInfo>>;
}

/// The runtime that runs remote channels' I/O: HTTP connection pools live on the runtime
/// that opened them, and a node calls its channel from several event loops (the intake, the
/// admin server's workers, the CLI).
fn io_runtime() -> Result<&'static tokio::runtime::Runtime> {
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
        .map_err(|e| Error::internal(format!("cannot start the channel's I/O threads: {e}")))
}

/// Runs `fut` on the channel I/O runtime and waits for it from any runtime.
async fn on_io<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    io_runtime()?
        .spawn(fut)
        .await
        .map_err(|e| Error::internal(format!("a channel task failed: {e}")))?
}

/// A channel whose every call runs on the channel I/O runtime.
pub struct OnIoRuntime(std::sync::Arc<dyn ControlChannel>);

impl OnIoRuntime {
    /// Opens a channel on the I/O runtime with `open`, and wraps it.
    pub async fn open<C, F>(open: F) -> Result<std::sync::Arc<dyn ControlChannel>>
    where
        C: ControlChannel,
        F: std::future::Future<Output = Result<C>> + Send + 'static,
    {
        let channel = on_io(open).await?;
        Ok(std::sync::Arc::new(OnIoRuntime(std::sync::Arc::new(
            channel,
        ))))
    }
}

#[async_trait]
impl ControlChannel for OnIoRuntime {
    fn describe(&self) -> String {
        self.0.describe()
    }

    fn lease_timeout(&self) -> Duration {
        self.0.lease_timeout()
    }

    async fn submit(&self, job: serde_json::Value) -> Result<String> {
        let c = self.0.clone();
        on_io(async move { c.submit(job).await }).await
    }

    async fn lease(&self, node: &str, max: usize) -> Result<Vec<Leased>> {
        let (c, node) = (self.0.clone(), node.to_string());
        on_io(async move { c.lease(&node, max).await }).await
    }

    async fn renew(&self, id: &str, node: &str) -> Result<bool> {
        let (c, id, node) = (self.0.clone(), id.to_string(), node.to_string());
        on_io(async move { c.renew(&id, &node).await }).await
    }

    async fn complete(&self, finished: &FinishedJob) -> Result<()> {
        let (c, finished) = (self.0.clone(), finished.clone());
        on_io(async move { c.complete(&finished).await }).await
    }

    async fn release(&self, id: &str) -> Result<()> {
        let (c, id) = (self.0.clone(), id.to_string());
        on_io(async move { c.release(&id).await }).await
    }

    async fn recover_expired(&self, node: &str) -> Result<Vec<String>> {
        let (c, node) = (self.0.clone(), node.to_string());
        on_io(async move { c.recover_expired(&node).await }).await
    }

    async fn cancel(&self, id: &str) -> Result<String> {
        let (c, id) = (self.0.clone(), id.to_string());
        on_io(async move { c.cancel(&id).await }).await
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>> {
        let (c, ids) = (self.0.clone(), ids.to_vec());
        on_io(async move { c.cancel_requested(&ids).await }).await
    }

    async fn report(&self, id: &str) -> Result<Option<FinishedJob>> {
        let (c, id) = (self.0.clone(), id.to_string());
        on_io(async move { c.report(&id).await }).await
    }

    async fn recent_reports(&self, n: usize) -> Result<Vec<FinishedJob>> {
        let c = self.0.clone();
        on_io(async move { c.recent_reports(n).await }).await
    }

    async fn jobs(&self) -> Result<Vec<JobState>> {
        let c = self.0.clone();
        on_io(async move { c.jobs().await }).await
    }

    async fn queued(&self) -> Result<usize> {
        let c = self.0.clone();
        on_io(async move { c.queued().await }).await
    }

    async fn node_heartbeat(&self, info: &NodeInfo) -> Result<()> {
        let (c, info) = (self.0.clone(), info.clone());
        on_io(async move { c.node_heartbeat(&info).await }).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let c = self.0.clone();
        on_io(async move { c.nodes().await }).await
    }
}
