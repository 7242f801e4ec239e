//! The `local` control channel: a spool directory that several worker processes on one host
//! (or on hosts sharing a file system with atomic rename) poll.
//!
//! ```text
//! spool/queue/<id>.json      submitted jobs (an envelope: id, attempt, the job)
//! spool/running/<id>.json    leased jobs, moved there by an atomic rename (one node wins)
//! spool/running/<id>.lease   the lease: node and heartbeat time, renewed while the job runs
//! spool/claims/<id>.json     an expired lease being put back in the queue (one node wins)
//! spool/reports/<id>.json    every finished job's report, whatever the outcome
//! spool/cancel/<id>          a cancellation request
//! spool/nodes/<node>.json    each node's heartbeat and load
//! spool/registrations/<node>.json  a node's registration (see `membership`)
//! spool/grants/<node>.json   the runtime's answer: its credential key sealed to the node
//! ```
//!
//! A node that dies stops renewing its leases; once a lease is older than `lease_timeout`,
//! any node puts the job back in the queue with its attempt count raised, and after
//! `max_attempts` the job ends with a failed report instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_engine::{Error, JobReport, JobStatus, Result};
use serde::{Deserialize, Serialize};

use ferry_engine::config::local::{check_private_dir, create_private_dir};

use super::{
    ChannelQueries, ControlChannel, Envelope, FinishedJob, JobPhase, JobState, Leased, NodeInfo,
    RecordKind, check_job_id, check_record_name, now_ms,
};

/// The lease file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseFile {
    node: String,
    heartbeat_ms: u64,
}

/// The spool directory.
#[derive(Debug, Clone)]
pub struct LocalChannel {
    root: PathBuf,
    lease_timeout: Duration,
    max_attempts: u32,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

/// Writes `bytes` to `path` atomically (temporary file, then rename); the file is readable
/// by the service account only (0600), whatever the umask.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{}-{seq}", std::process::id(), now_ms()));
    std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("write {}", path.display())))
}

/// Writes `value` as JSON to `path` atomically.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::internal(e.to_string()))?;
    write_atomic(path, &bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            let what = if e.is_data() {
                "not what the channel expects"
            } else {
                "not valid JSON"
            };
            Error::invalid_input(format!("{}: {what} ({e})", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

fn ids_in(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(format!("list {}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(suffix))
                .filter(|n| !n.contains(".tmp-"))
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

impl LocalChannel {
    /// Opens (and creates, mode 0700) the spool at `root`. A spool that other users may
    /// write is refused: anyone who can write it can run jobs on every node that polls it.
    pub fn open(
        root: impl Into<PathBuf>,
        lease_timeout: Duration,
        max_attempts: u32,
    ) -> Result<Self> {
        let root = root.into();
        for dir in std::iter::once(root.clone()).chain(
            [
                "queue",
                "running",
                "claims",
                "reports",
                "cancel",
                "nodes",
                "rejected",
                "registrations",
                "grants",
            ]
            .map(|sub| root.join(sub)),
        ) {
            create_private_dir(&dir)
                .map_err(|e| e.context("cannot create the spool; check the channel's `path`"))?;
            check_private_dir(&dir, "the spool directory")?;
        }
        Ok(Self {
            root,
            lease_timeout,
            max_attempts: max_attempts.max(1),
        })
    }

    fn path(&self, sub: &str, name: &str) -> PathBuf {
        self.root.join(sub).join(name)
    }

    /// Submits a job (its JSON text); returns its id. The text is kept as JSON; a job that
    /// does not validate fails when a node takes it, with a report.
    pub fn submit(&self, job: serde_json::Value) -> Result<String> {
        self.submit_envelope(Envelope::new(super::new_job_id(&job), job))
    }

    /// Queues `envelope` under its id; an id the channel knows already is refused.
    pub fn submit_envelope(&self, envelope: Envelope) -> Result<String> {
        let id = envelope.id.clone();
        check_job_id(&id)?;
        let known = [("queue", "json"), ("running", "json"), ("reports", "json")]
            .iter()
            .any(|(dir, ext)| self.path(dir, &format!("{id}.{ext}")).exists());
        if known {
            return Err(Error::invalid_input(format!(
                "job id {id} is in the channel already; a job is submitted once"
            )));
        }
        write_json(&self.path("queue", &format!("{id}.json")), &envelope)?;
        Ok(id)
    }

    /// Moves leased job `id` to `rejected/` with `why`, leaving any record of it as it is.
    pub fn reject(&self, id: &str, why: &str) -> Result<()> {
        check_job_id(id)?;
        let stamp = now_ms();
        let running = self.path("running", &format!("{id}.json"));
        let kept = self.path("rejected", &format!("{id}-{stamp}.json"));
        std::fs::rename(&running, &kept).map_err(io(format!("reject {id}")))?;
        write_atomic(
            &self.path("rejected", &format!("{id}-{stamp}.why")),
            why.as_bytes(),
        )?;
        let _ = std::fs::remove_file(self.path("running", &format!("{id}.lease")));
        tracing::warn!(job = %id, reason = %why, "job rejected; kept in the spool's rejected/");
        Ok(())
    }

    /// Takes the oldest queued job, if any; `node` holds its lease from now on. A queued
    /// file that is not an envelope comes back with `Err` and an id, to be reported.
    pub fn lease(
        &self,
        node: &str,
    ) -> Result<Option<std::result::Result<Envelope, (String, Error)>>> {
        for id in ids_in(&self.root.join("queue"), ".json")? {
            let from = self.path("queue", &format!("{id}.json"));
            let to = self.path("running", &format!("{id}.json"));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                // Another node was faster.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("lease {}", from.display()), e)),
            }
            self.heartbeat(&id, node)?;
            return match read_json::<Envelope>(&to) {
                Ok(Some(mut envelope)) => {
                    envelope.attempt += 1;
                    envelope.id = id;
                    write_json(&to, &envelope)?;
                    Ok(Some(Ok(envelope)))
                }
                Ok(None) => Ok(None),
                Err(e) => Ok(Some(Err((id, e)))),
            };
        }
        Ok(None)
    }

    /// Renews `node`'s lease on job `id`.
    pub fn heartbeat(&self, id: &str, node: &str) -> Result<()> {
        check_job_id(id)?;
        let lease = LeaseFile {
            node: node.to_string(),
            heartbeat_ms: now_ms(),
        };
        write_json(&self.path("running", &format!("{id}.lease")), &lease)
    }

    /// Records a finished job and drops its lease.
    pub fn complete(&self, finished: &FinishedJob) -> Result<()> {
        let id = &finished.id;
        check_job_id(id)?;
        write_json(&self.path("reports", &format!("{id}.json")), finished)?;
        for p in [
            self.path("running", &format!("{id}.json")),
            self.path("running", &format!("{id}.lease")),
            self.path("cancel", id),
        ] {
            let _ = std::fs::remove_file(p);
        }
        Ok(())
    }

    /// Puts a leased job back in the queue without counting the run (graceful shutdown).
    pub fn release(&self, id: &str) -> Result<()> {
        check_job_id(id)?;
        let running = self.path("running", &format!("{id}.json"));
        if let Some(mut envelope) = read_json::<Envelope>(&running)? {
            envelope.attempt = envelope.attempt.saturating_sub(1);
            write_json(&running, &envelope)?;
        }
        std::fs::rename(&running, self.path("queue", &format!("{id}.json")))
            .map_err(io(format!("release {id}")))?;
        let _ = std::fs::remove_file(self.path("running", &format!("{id}.lease")));
        Ok(())
    }

    /// Puts back in the queue every job whose lease expired (its node died); a job that has
    /// used `max_attempts` runs ends with a failed report instead. Returns the ids handled.
    pub fn recover_expired(&self, node: &str) -> Result<Vec<String>> {
        let mut handled = Vec::new();
        let timeout = self.lease_timeout.as_millis() as u64;
        for id in ids_in(&self.root.join("running"), ".json")? {
            let lease: Option<LeaseFile> =
                read_json(&self.path("running", &format!("{id}.lease"))).unwrap_or(None);
            let age = lease
                .as_ref()
                .map_or(u64::MAX, |l| now_ms().saturating_sub(l.heartbeat_ms));
            if age < timeout {
                continue;
            }
            // A lease file is written right after the rename; give a fresh lease a moment.
            if lease.is_none() {
                let meta = std::fs::metadata(self.path("running", &format!("{id}.json")));
                let fresh = meta
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|e| e < self.lease_timeout);
                if fresh {
                    continue;
                }
            }
            let claim = self.path("claims", &format!("{id}.json"));
            match std::fs::rename(self.path("running", &format!("{id}.json")), &claim) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("recover {id}"), e)),
            }
            let _ = std::fs::remove_file(self.path("running", &format!("{id}.lease")));
            let dead = lease.map_or_else(|| "unknown".to_string(), |l| l.node);
            match read_json::<Envelope>(&claim) {
                Ok(Some(mut envelope)) if envelope.attempt < self.max_attempts => {
                    envelope.last_error = Some(format!(
                        "node {dead} stopped renewing its lease during run {}",
                        envelope.attempt
                    ));
                    write_json(&self.path("queue", &format!("{id}.json")), &envelope)?;
                    tracing::warn!(job = %id, node = %dead, "lease expired; job queued again");
                }
                Ok(Some(envelope)) => {
                    let message = format!(
                        "job {id}: its node stopped during each of {} runs (last {dead}); not retried",
                        envelope.attempt
                    );
                    self.complete(&FinishedJob::failed(&id, node, envelope.attempt, &message))?;
                }
                _ => {}
            }
            let _ = std::fs::remove_file(&claim);
            handled.push(id);
        }
        Ok(handled)
    }

    /// Asks for job `id` to be cancelled; a queued job ends at once with a report.
    pub fn cancel(&self, id: &str) -> Result<String> {
        check_job_id(id)?;
        let queued = self.path("queue", &format!("{id}.json"));
        let claim = self.path("claims", &format!("{id}.json"));
        if std::fs::rename(&queued, &claim).is_ok() {
            let attempt = read_json::<Envelope>(&claim)
                .ok()
                .flatten()
                .map_or(0, |e| e.attempt);
            self.complete(&FinishedJob {
                id: id.to_string(),
                node: String::new(),
                attempt,
                reports: vec![JobReport::failed(
                    id,
                    Error::cancelled("cancelled before it started"),
                )],
                status: JobStatus::Cancelled,
            })?;
            let _ = std::fs::remove_file(&claim);
            return Ok("cancelled before it started".into());
        }
        if self.path("running", &format!("{id}.json")).exists() {
            write_atomic(&self.path("cancel", id), b"")?;
            return Ok("cancellation requested; the node running it stops it".into());
        }
        if self.path("reports", &format!("{id}.json")).exists() {
            return Err(Error::invalid_input(format!(
                "job {id} has already finished"
            )));
        }
        Err(Error::invalid_input(format!("no job {id} in the channel")))
    }

    /// Whether cancellation of `id` was requested.
    pub fn cancel_requested(&self, id: &str) -> bool {
        super::valid_job_id(id) && self.path("cancel", id).exists()
    }

    /// The report of job `id`, if it finished.
    pub fn report(&self, id: &str) -> Result<Option<FinishedJob>> {
        check_job_id(id)?;
        read_json(&self.path("reports", &format!("{id}.json")))
    }

    /// The reports of the `n` latest finished jobs (by submission), newest first; reads only
    /// those reports.
    pub fn recent_reports(&self, n: usize) -> Result<Vec<FinishedJob>> {
        let ids = ids_in(&self.root.join("reports"), ".json")?;
        Ok(ids
            .iter()
            .rev()
            .take(n)
            .filter_map(|id| self.report(id).ok().flatten())
            .collect())
    }

    /// Every job the channel knows, oldest first.
    pub fn jobs(&self) -> Result<Vec<JobState>> {
        let mut out = Vec::new();
        for id in ids_in(&self.root.join("queue"), ".json")? {
            if let Ok(Some(e)) = read_json::<Envelope>(&self.path("queue", &format!("{id}.json"))) {
                out.push(JobState {
                    id,
                    state: JobPhase::Queued,
                    name: super::job_name(&e.job),
                    node: None,
                    attempt: e.attempt,
                });
            }
        }
        for id in ids_in(&self.root.join("running"), ".json")? {
            if let Ok(Some(e)) = read_json::<Envelope>(&self.path("running", &format!("{id}.json")))
            {
                let lease: Option<LeaseFile> =
                    read_json(&self.path("running", &format!("{id}.lease"))).unwrap_or(None);
                out.push(JobState {
                    id,
                    state: JobPhase::Running,
                    name: super::job_name(&e.job),
                    node: lease.map(|l| l.node),
                    attempt: e.attempt,
                });
            }
        }
        for id in ids_in(&self.root.join("reports"), ".json")? {
            if let Ok(Some(f)) = self.report(&id) {
                out.push(JobState {
                    id,
                    name: f.name(),
                    state: f.status.into(),
                    node: Some(f.node),
                    attempt: f.attempt,
                });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Records `node`'s heartbeat.
    pub fn node_heartbeat(&self, info: &NodeInfo) -> Result<()> {
        if !super::valid_job_id(&info.node) {
            return Err(Error::invalid_input(format!(
                "`{}` is not a usable node name: use letters, digits, `-`, `_` and `.`",
                info.node.escape_default()
            )));
        }
        write_json(&self.path("nodes", &format!("{}.json", info.node)), info)
    }

    /// Every node that ever beat, with its last heartbeat.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let mut nodes = Vec::new();
        for name in ids_in(&self.root.join("nodes"), ".json")? {
            if let Ok(Some(n)) = read_json::<NodeInfo>(&self.path("nodes", &format!("{name}.json")))
            {
                nodes.push(n);
            }
        }
        Ok(nodes)
    }
}

#[async_trait::async_trait]
impl ControlChannel for LocalChannel {
    fn describe(&self) -> String {
        format!("local spool {}", self.root.display())
    }

    fn lease_timeout(&self) -> Duration {
        self.lease_timeout
    }

    async fn lease(&self, node: &str, max: usize) -> Result<Vec<Leased>> {
        let mut leased = Vec::new();
        while leased.len() < max {
            match LocalChannel::lease(self, node)? {
                Some(job) => leased.push(job),
                None => break,
            }
        }
        Ok(leased)
    }

    async fn renew(&self, id: &str, node: &str) -> Result<bool> {
        check_job_id(id)?;
        // A lease taken back by another node has no lease file, or one of another node.
        let lease: Option<LeaseFile> = read_json(&self.path("running", &format!("{id}.lease")))?;
        if lease.is_none_or(|l| l.node != node) {
            return Ok(false);
        }
        self.heartbeat(id, node).map(|()| true)
    }

    async fn complete(&self, finished: &FinishedJob) -> Result<()> {
        LocalChannel::complete(self, finished)
    }

    async fn release(&self, id: &str) -> Result<()> {
        LocalChannel::release(self, id)
    }

    async fn recover_expired(&self, node: &str) -> Result<Vec<String>> {
        LocalChannel::recover_expired(self, node)
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>> {
        Ok(ids
            .iter()
            .filter(|id| LocalChannel::cancel_requested(self, id))
            .cloned()
            .collect())
    }

    async fn node_heartbeat(&self, info: &NodeInfo) -> Result<()> {
        LocalChannel::node_heartbeat(self, info)
    }

    async fn finished(&self, id: &str) -> Result<bool> {
        Ok(LocalChannel::report(self, id)?.is_some())
    }

    async fn reject(&self, id: &str, why: &str) -> Result<()> {
        LocalChannel::reject(self, id, why)
    }

    async fn put_record(&self, kind: RecordKind, name: &str, json: &[u8]) -> Result<()> {
        check_record_name(name)?;
        write_atomic(&self.path(kind.dir(), &format!("{name}.json")), json)
    }

    async fn get_record(&self, kind: RecordKind, name: &str) -> Result<Option<Vec<u8>>> {
        check_record_name(name)?;
        let path = self.path(kind.dir(), &format!("{name}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<String>> {
        ids_in(&self.root.join(kind.dir()), ".json")
    }

    async fn delete_record(&self, kind: RecordKind, name: &str) -> Result<()> {
        check_record_name(name)?;
        let path = self.path(kind.dir(), &format!("{name}.json"));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl ChannelQueries for LocalChannel {
    async fn submit_envelope(&self, envelope: Envelope) -> Result<String> {
        LocalChannel::submit_envelope(self, envelope)
    }

    async fn cancel(&self, id: &str) -> Result<String> {
        LocalChannel::cancel(self, id)
    }

    async fn report(&self, id: &str) -> Result<Option<FinishedJob>> {
        LocalChannel::report(self, id)
    }

    async fn recent_reports(&self, n: usize) -> Result<Vec<FinishedJob>> {
        LocalChannel::recent_reports(self, n)
    }

    async fn jobs(&self) -> Result<Vec<JobState>> {
        LocalChannel::jobs(self)
    }

    async fn queued(&self) -> Result<usize> {
        Ok(ids_in(&self.root.join("queue"), ".json")?.len())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        LocalChannel::nodes(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lease_per_job_and_expired_leases_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let ch = LocalChannel::open(dir.path(), Duration::from_millis(0), 2).unwrap();
        let id = ch.submit(serde_json::json!({"name": "j"})).unwrap();
        let a = ch.lease("a").unwrap().unwrap().unwrap();
        assert_eq!((a.id.as_str(), a.attempt), (id.as_str(), 1));
        assert!(
            ch.lease("b").unwrap().is_none(),
            "a leased job is not leased twice"
        );
        // The lease timeout is zero: node a counts as dead at once.
        assert_eq!(ch.recover_expired("b").unwrap(), std::slice::from_ref(&id));
        let again = ch.lease("b").unwrap().unwrap().unwrap();
        // Node a, awake again, finds its lease gone; b holds it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(!rt.block_on(ControlChannel::renew(&ch, &id, "a")).unwrap());
        assert!(rt.block_on(ControlChannel::renew(&ch, &id, "b")).unwrap());
        assert_eq!(again.attempt, 2);
        assert!(again.last_error.unwrap().contains("node a"));
        // After max_attempts runs the job fails with a report instead.
        ch.recover_expired("c").unwrap();
        assert!(ch.lease("c").unwrap().is_none());
        let report = ch.report(&id).unwrap().unwrap();
        assert_eq!(report.status, JobStatus::Failed);
        assert_eq!(ch.jobs().unwrap()[0].state, JobPhase::Failed);
    }

    #[test]
    fn malformed_envelopes_and_cancellation() {
        let dir = tempfile::tempdir().unwrap();
        let ch = LocalChannel::open(dir.path(), Duration::from_secs(60), 3).unwrap();
        std::fs::write(dir.path().join("queue/0-bad.json"), b"{not json").unwrap();
        let Some(Err((id, e))) = ch.lease("a").unwrap() else {
            panic!("a malformed file comes back as an error")
        };
        assert_eq!(id, "0-bad");
        assert!(e.to_string().contains("0-bad.json"));
        let queued = ch.submit(serde_json::json!({"name": "q"})).unwrap();
        assert!(ch.cancel(&queued).unwrap().contains("before it started"));
        assert_eq!(
            ch.report(&queued).unwrap().unwrap().status,
            JobStatus::Cancelled
        );
        assert!(ch.cancel("nope").is_err());
    }

    #[test]
    fn ids_that_could_escape_the_spool_are_refused_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let ch = LocalChannel::open(&spool, Duration::from_secs(60), 3).unwrap();
        // A file outside the spool that `../../x` would reach from spool/queue/.
        let victim = dir.path().join("x.json");
        std::fs::write(&victim, b"{}").unwrap();
        for id in [
            "../../x", "../x", "..", ".hidden", "a/b", "a\\b", "", "x\0y",
        ] {
            let err = ch.cancel(id).unwrap_err();
            assert!(err.to_string().contains("is not a job id"), "{id}: {err}");
            assert!(ch.report(id).is_err(), "{id}");
            assert!(ch.release(id).is_err(), "{id}");
            assert!(ch.heartbeat(id, "a").is_err(), "{id}");
            assert!(!ch.cancel_requested(id), "{id}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"{}");
        let long = "a".repeat(201);
        assert!(ch.cancel(&long).is_err());
    }

    #[test]
    fn the_spool_is_private_and_a_shared_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let ch = LocalChannel::open(&spool, Duration::from_secs(60), 3).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&spool), 0o700);
        assert_eq!(mode(&spool.join("queue")), 0o700);
        let id = ch.submit(serde_json::json!({"name": "j"})).unwrap();
        assert_eq!(mode(&spool.join(format!("queue/{id}.json"))), 0o600);
        std::fs::set_permissions(spool.join("queue"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = LocalChannel::open(&spool, Duration::from_secs(60), 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("queue")
                && err.contains("writable by other users")
                && err.contains("chmod"),
            "{err}"
        );
    }
}
