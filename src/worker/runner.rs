//! What runs the jobs a node leases. The intake knows only [`JobRunner`]; [`EngineRunner`]
//! is the real one (the node's policy, its connections, the engine), and the intake's tests
//! use a runner of their own.

use std::sync::Arc;

use ferry_connectors::{Connections, JobFile, NodePolicy};
use ferry_engine::config::{CommitGate, JobSettings};
use ferry_engine::encode::EncodeSlots;
use ferry_engine::{JobControl, JobReport, Result};
use futures::future::BoxFuture;

/// Watches each phase of a running job (its counters and kill switch).
pub type Observe = Box<dyn Fn(&JobControl) + Send + Sync>;

/// Checks and runs the jobs a node leases.
pub trait JobRunner: Send + Sync + 'static {
    /// A job that passed [`JobRunner::admit`], ready to run.
    type Job: Send + 'static;

    /// Checks a leased job before it runs (it parses, the node's policy allows it, its
    /// connections are usable here); returns it with its memory budget in bytes.
    fn admit(&self, job: &serde_json::Value) -> Result<(Self::Job, u64)>;

    /// Whether a job of `budget` bytes fits beside running jobs that hold `held`.
    fn fits(&self, held: u64, budget: u64) -> bool;

    /// Runs `job` to its reports (one per phase). `gate` is asked right before anything is
    /// published; `observe` sees each phase as it starts.
    fn run(
        &self,
        job: Self::Job,
        gate: CommitGate,
        observe: Observe,
    ) -> BoxFuture<'static, Vec<JobReport>>;
}

/// Runs jobs through the engine under the node's policy, each on an event loop (a thread)
/// of its own: building a job can take CPU time (schema inference, generators), and the
/// intake must keep renewing leases meanwhile.
pub struct EngineRunner {
    /// The node's connections.
    pub connections: Arc<Connections>,
    /// What jobs may do on the node.
    pub policy: Arc<NodePolicy>,
    /// The node's cap on encoding, shared by all its jobs (`encode_threads`), if any.
    pub encode_slots: Option<EncodeSlots>,
}

impl JobRunner for EngineRunner {
    type Job = (JobFile, JobSettings);

    fn admit(&self, job: &serde_json::Value) -> Result<(Self::Job, u64)> {
        let text = job.to_string();
        let (spec, mut settings) = ferry_connectors::parse_job(&text)?;
        self.policy.check_job(&spec, &settings, text.len())?;
        ferry_connectors::validate_connections(&spec, &self.connections)?;
        settings.local = self.policy.local_files();
        let budget = settings.max_buffer_bytes;
        Ok(((spec, settings), budget))
    }

    fn fits(&self, held: u64, budget: u64) -> bool {
        self.policy.fits_in_memory(held, budget)
    }

    fn run(
        &self,
        (spec, mut settings): Self::Job,
        gate: CommitGate,
        observe: Observe,
    ) -> BoxFuture<'static, Vec<JobReport>> {
        let connections = self.connections.clone();
        let name = settings.name.clone();
        settings.encode_slots = self.encode_slots.clone();
        let (done, reports) = tokio::sync::oneshot::channel();
        let arbiter = actix::Arbiter::new();
        let spawned = arbiter.spawn_fn(move || {
            actix::spawn(async move {
                settings.commit_gate = Some(gate);
                let reports =
                    ferry_connectors::run_job(&spec, settings, &connections, &*observe).await;
                let _ = done.send(reports);
                actix::Arbiter::current().stop();
            });
        });
        Box::pin(async move {
            if !spawned {
                tracing::error!(job = %name, "cannot start a thread for a job");
            }
            reports.await.unwrap_or_else(|_| {
                vec![JobReport::failed(
                    &name,
                    ferry_engine::Error::internal("the job's thread ended without a report"),
                )]
            })
        })
    }
}
