//! An in-memory control channel for the intake's tests: leases expire on tokio's clock, so
//! tests run in paused time; a test can take a lease away, ask for a cancellation, and read
//! what the node wrote.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use ferry_connectors::control::{
    ControlChannel, Envelope, FinishedJob, Leased, NodeInfo, RecordKind,
};
use ferry_engine::{Error, Result};
use tokio::time::Instant;

#[derive(Default)]
struct State {
    queued: VecDeque<Leased>,
    /// Leased jobs: envelope, holder, expiry.
    leased: HashMap<String, (Envelope, String, Instant)>,
    finished: HashMap<String, FinishedJob>,
    cancel: HashSet<String>,
    heartbeats: Vec<NodeInfo>,
    /// How many times each job was leased.
    leases: HashMap<String, u32>,
    released: Vec<String>,
    rejected: Vec<(String, String)>,
    /// Membership records by kind and name.
    records: HashMap<(&'static str, String), Vec<u8>>,
}

pub(crate) struct MemoryChannel {
    lease_timeout: Duration,
    max_attempts: u32,
    state: Mutex<State>,
}

impl MemoryChannel {
    pub(crate) fn new(lease_timeout: Duration, max_attempts: u32) -> Self {
        Self {
            lease_timeout,
            max_attempts,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("memory channel lock")
    }

    /// Queues job `id` with `job` as its JSON.
    pub(crate) fn submit(&self, id: &str, job: serde_json::Value) {
        self.state()
            .queued
            .push_back(Ok(Envelope::new(id.to_string(), job)));
    }

    /// Queues `envelope` as it is (signed or not).
    pub(crate) fn submit_envelope(&self, envelope: Envelope) {
        self.state().queued.push_back(Ok(envelope));
    }

    /// Records `finished` as if a node had (to set up a replay).
    pub(crate) fn record(&self, finished: FinishedJob) {
        self.state().finished.insert(finished.id.clone(), finished);
    }

    pub(crate) fn rejected(&self) -> Vec<(String, String)> {
        self.state().rejected.clone()
    }

    /// Queues a message that is not a job.
    pub(crate) fn submit_malformed(&self, id: &str, why: &str) {
        self.state()
            .queued
            .push_back(Err((id.to_string(), Error::invalid_input(why.to_string()))));
    }

    /// Gives job `id`'s lease to node `other`, as if the holder had been taken for dead;
    /// `other` then holds it for an hour.
    pub(crate) fn steal(&self, id: &str, other: &str) {
        if let Some(lease) = self.state().leased.get_mut(id) {
            lease.1 = other.to_string();
            lease.2 = Instant::now() + Duration::from_secs(3600);
        }
    }

    pub(crate) fn request_cancel(&self, id: &str) {
        self.state().cancel.insert(id.to_string());
    }

    pub(crate) fn finished(&self, id: &str) -> Option<FinishedJob> {
        self.state().finished.get(id).cloned()
    }

    pub(crate) fn holder(&self, id: &str) -> Option<String> {
        self.state().leased.get(id).map(|l| l.1.clone())
    }

    pub(crate) fn queued_ids(&self) -> Vec<String> {
        self.state()
            .queued
            .iter()
            .map(|q| match q {
                Ok(e) => e.id.clone(),
                Err((id, _)) => id.clone(),
            })
            .collect()
    }

    pub(crate) fn lease_count(&self, id: &str) -> u32 {
        self.state().leases.get(id).copied().unwrap_or(0)
    }

    pub(crate) fn released(&self) -> Vec<String> {
        self.state().released.clone()
    }

    pub(crate) fn last_heartbeat(&self) -> Option<NodeInfo> {
        self.state().heartbeats.last().cloned()
    }
}

#[async_trait]
impl ControlChannel for MemoryChannel {
    fn describe(&self) -> String {
        "memory".into()
    }

    fn lease_timeout(&self) -> Duration {
        self.lease_timeout
    }

    async fn lease(&self, node: &str, max: usize) -> Result<Vec<Leased>> {
        let mut state = self.state();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(next) = state.queued.pop_front() else {
                break;
            };
            match next {
                Ok(mut envelope) => {
                    envelope.attempt += 1;
                    *state.leases.entry(envelope.id.clone()).or_default() += 1;
                    let expires = Instant::now() + self.lease_timeout;
                    state.leased.insert(
                        envelope.id.clone(),
                        (envelope.clone(), node.to_string(), expires),
                    );
                    out.push(Ok(envelope));
                }
                Err(malformed) => out.push(Err(malformed)),
            }
        }
        Ok(out)
    }

    async fn renew(&self, id: &str, node: &str) -> Result<bool> {
        let mut state = self.state();
        match state.leased.get_mut(id) {
            Some(lease) if lease.1 == node => {
                lease.2 = Instant::now() + self.lease_timeout;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn complete(&self, finished: &FinishedJob) -> Result<()> {
        let mut state = self.state();
        state.leased.remove(&finished.id);
        state.finished.insert(finished.id.clone(), finished.clone());
        Ok(())
    }

    async fn release(&self, id: &str) -> Result<()> {
        let mut state = self.state();
        if let Some((mut envelope, _, _)) = state.leased.remove(id) {
            // A hand-back does not count as a run.
            envelope.attempt -= 1;
            envelope.released += 1;
            state.queued.push_front(Ok(envelope));
            state.released.push(id.to_string());
        }
        Ok(())
    }

    async fn recover_expired(&self, _node: &str) -> Result<Vec<String>> {
        let mut state = self.state();
        let now = Instant::now();
        let expired: Vec<String> = state
            .leased
            .iter()
            .filter(|(_, l)| l.2 <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            if let Some((mut envelope, node, _)) = state.leased.remove(id) {
                envelope.last_error = Some(format!("node {node} stopped renewing its lease"));
                if envelope.attempt >= self.max_attempts {
                    let failed =
                        FinishedJob::failed(id, &node, envelope.attempt, "out of attempts");
                    state.finished.insert(id.clone(), failed);
                } else {
                    state.queued.push_back(Ok(envelope));
                }
            }
        }
        Ok(expired)
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>> {
        let state = self.state();
        Ok(ids
            .iter()
            .filter(|id| state.cancel.contains(*id))
            .cloned()
            .collect())
    }

    async fn node_heartbeat(&self, info: &NodeInfo) -> Result<()> {
        self.state().heartbeats.push(info.clone());
        Ok(())
    }

    async fn finished(&self, id: &str) -> Result<bool> {
        Ok(self.state().finished.contains_key(id))
    }

    async fn reject(&self, id: &str, why: &str) -> Result<()> {
        let mut state = self.state();
        state.leased.remove(id);
        state.rejected.push((id.to_string(), why.to_string()));
        Ok(())
    }

    async fn put_record(&self, kind: RecordKind, name: &str, json: &[u8]) -> Result<()> {
        self.state()
            .records
            .insert((kind.dir(), name.to_string()), json.to_vec());
        Ok(())
    }

    async fn get_record(&self, kind: RecordKind, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .state()
            .records
            .get(&(kind.dir(), name.to_string()))
            .cloned())
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .state()
            .records
            .keys()
            .filter(|(dir, _)| *dir == kind.dir())
            .map(|(_, name)| name.clone())
            .collect();
        names.sort();
        Ok(names)
    }

    async fn delete_record(&self, kind: RecordKind, name: &str) -> Result<()> {
        self.state().records.remove(&(kind.dir(), name.to_string()));
        Ok(())
    }
}
