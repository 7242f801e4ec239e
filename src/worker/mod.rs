//! `ferry worker`: a long-running node that takes jobs from its control channel, runs at most
//! `max_concurrent_jobs` of them at once, renews their leases, and reports every outcome.
//!
//! The JobIntake actor ticks every `poll_interval`: it beats the node's heartbeat, renews the
//! leases of its running jobs, stops jobs whose cancellation was asked, puts back jobs whose
//! node died (their lease expired), and leases new jobs while it has free slots. Each job
//! runs in the same process through the engine (a JobSupervisor per job). On SIGTERM/SIGINT
//! the node stops leasing, lets running jobs finish within the grace period, then cancels the
//! rest and hands them back to the channel for another node.

pub mod admin;
pub mod config;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use ferry_connectors::Connections;
use ferry_connectors::NodePolicy;
use ferry_connectors::control::{ControlChannel, FinishedJob, JobState, Leased, NodeInfo, now_ms};
use ferry_engine::config::{CommitGate, JobSettings};
use ferry_engine::{JobControl, JobReport, JobStatus};
use tokio_util::sync::CancellationToken;

/// A job this node runs.
struct Slot {
    name: String,
    attempt: u32,
    /// Its `max_buffer_bytes`, counted against the policy's `memory_limit`.
    budget: u64,
    cancel: Arc<Mutex<Option<CancellationToken>>>,
}

impl Slot {
    fn stop(&self) {
        if let Some(token) = self.cancel.lock().ok().and_then(|t| t.clone()) {
            token.cancel();
        }
    }
}

/// Takes jobs from the channel and runs them.
pub struct JobIntake {
    node: String,
    channel: Arc<dyn ControlChannel>,
    connections: Arc<Connections>,
    policy: Arc<NodePolicy>,
    max_jobs: usize,
    poll: Duration,
    grace: Duration,
    running: HashMap<String, Slot>,
    /// Jobs to hand back instead of reporting (stopped by a shutdown).
    handing_back: HashSet<String>,
    /// Jobs whose lease was lost (another node may run them): stopped, not reported.
    lost: HashSet<String>,
    /// Outcomes being written to the channel.
    writing: usize,
    /// A tick is talking to the channel.
    ticking: bool,
    /// The node's state changed since its last heartbeat.
    changed: bool,
    /// A job did not fit in the policy's `memory_limit`: lease nothing until a job ends.
    memory_full: bool,
    /// Drained: the last heartbeat is on its way, then the node stops.
    stopping: bool,
    draining_since: Option<Instant>,
    last_beat: Option<Instant>,
    view: Arc<admin::NodeView>,
    admin: Option<String>,
}

/// Stop leasing and shut down once running jobs are done (or the grace period ends).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// A job's run ended.
#[derive(Message)]
#[rtype(result = "()")]
struct JobEnded {
    id: String,
    reports: Vec<JobReport>,
}

/// The channel says this node no longer holds a job's lease: do not report the job.
#[derive(Message)]
#[rtype(result = "()")]
struct LeaseLost {
    id: String,
}

/// What one tick learnt from the channel.
#[derive(Default)]
struct TickResult {
    lost: Vec<String>,
    cancelled: Vec<String>,
    leased: Vec<Leased>,
}

impl JobIntake {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        if let Some(since) = self.draining_since {
            if self.running.is_empty() && self.writing == 0 && !self.ticking {
                if self.stopping {
                    return;
                }
                // Say in a last heartbeat that this node left, then stop.
                self.stopping = true;
                let mut info = self.node_info();
                info.stopped = true;
                let (channel, node) = (self.channel.clone(), self.node.clone());
                ctx.spawn(
                    async move {
                        if let Err(e) = channel.node_heartbeat(&info).await {
                            tracing::warn!(error = %e, "cannot record that the node stopped");
                        }
                    }
                    .into_actor(self)
                    .map(move |(), _, _| {
                        tracing::info!(node = %node, "drained; stopping");
                        actix::System::current().stop_with_code(0);
                    }),
                );
                return;
            }
            if since.elapsed() >= self.grace {
                // The grace period is over: stop the rest and hand them to another node.
                for (id, slot) in &self.running {
                    if self.handing_back.insert(id.clone()) {
                        slot.stop();
                    }
                }
            }
        }
        if self.ticking {
            return;
        }
        self.ticking = true;
        // Renew leases and beat well inside the timeout.
        let beat = (self.channel.lease_timeout() / 4).min(Duration::from_secs(5));
        let due = self.last_beat.is_none_or(|at| at.elapsed() >= beat);
        let running: Vec<String> = self.running.keys().cloned().collect();
        let renew = if due { running.clone() } else { Vec::new() };
        let info = (due || self.changed).then(|| self.node_info());
        if info.is_some() {
            self.last_beat = Some(Instant::now());
            self.changed = false;
        }
        let free = if self.draining_since.is_some() || self.memory_full {
            0
        } else {
            self.max_jobs.saturating_sub(self.running.len())
        };
        let (channel, node) = (self.channel.clone(), self.node.clone());
        let work = async move {
            let mut result = TickResult::default();
            for id in renew {
                match channel.renew(&id, &node).await {
                    Ok(true) => {}
                    Ok(false) => result.lost.push(id),
                    Err(e) => tracing::warn!(job = %id, error = %e, "cannot renew the lease"),
                }
            }
            match channel.cancel_requested(&running).await {
                Ok(ids) => result.cancelled = ids,
                Err(e) => tracing::warn!(error = %e, "cannot read cancellation requests"),
            }
            if let Some(info) = info
                && let Err(e) = channel.node_heartbeat(&info).await
            {
                tracing::warn!(error = %e, "cannot record the node's heartbeat");
            }
            if free > 0 {
                if let Err(e) = channel.recover_expired(&node).await {
                    tracing::warn!(error = %e, "cannot recover expired leases");
                }
                match channel.lease(&node, free).await {
                    Ok(leased) => result.leased = leased,
                    Err(e) => tracing::warn!(error = %e, "cannot lease jobs"),
                }
            }
            result
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.ticking = false;
            act.apply(result, ctx);
        }));
    }

    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            node: self.node.clone(),
            max_concurrent_jobs: self.max_jobs,
            draining: self.draining_since.is_some(),
            heartbeat_ms: now_ms(),
            admin: self.admin.clone(),
            stopped: false,
            running: self
                .running
                .iter()
                .map(|(id, slot)| JobState {
                    id: id.clone(),
                    state: "running".into(),
                    name: slot.name.clone(),
                    node: Some(self.node.clone()),
                    attempt: slot.attempt,
                })
                .collect(),
        }
    }

    fn apply(&mut self, result: TickResult, ctx: &mut Context<Self>) {
        for id in result.lost {
            if let Some(slot) = self.running.get(&id) {
                tracing::error!(job = %id, "the job's lease was lost (another node may run it now); stopping it");
                self.lost.insert(id);
                slot.stop();
            }
        }
        for id in result.cancelled {
            if let Some(slot) = self.running.get(&id) {
                tracing::info!(job = %id, "cancellation requested; stopping the job");
                slot.stop();
            }
        }
        for leased in result.leased {
            match leased {
                Ok(envelope) if self.draining_since.is_none() => self.start(envelope, ctx),
                Ok(envelope) => {
                    // Drain began while the lease was on its way: hand it straight back.
                    let channel = self.channel.clone();
                    self.write(ctx, async move { channel.release(&envelope.id).await });
                }
                Err((id, e)) => {
                    tracing::error!(job = %id, error = %e, "malformed job in the channel");
                    let report = JobReport::failed(&id, e.context(format!("job {id}")));
                    let finished = finished(&id, &self.node, 1, &[report]);
                    let channel = self.channel.clone();
                    self.write(ctx, async move { channel.complete(&finished).await });
                }
            }
        }
    }

    /// Writes an outcome to the channel; a draining node waits for these before it stops.
    fn write(
        &mut self,
        ctx: &mut Context<Self>,
        work: impl std::future::Future<Output = ferry_engine::Result<()>> + 'static,
    ) {
        self.writing += 1;
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.writing -= 1;
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot record a job's outcome in the channel");
            }
            act.tick(ctx);
        }));
    }

    /// Parses a leased job and checks it against the node's policy; a job that fails is
    /// recorded as failed, with the reason, and never runs.
    fn admit(
        &mut self,
        envelope: &ferry_connectors::control::Envelope,
        ctx: &mut Context<Self>,
    ) -> Option<(ferry_connectors::JobFile, JobSettings)> {
        let id = &envelope.id;
        let text = envelope.job.to_string();
        let admitted = ferry_connectors::parse_job(&text).and_then(|(spec, mut settings)| {
            self.policy.check_job(&spec, &settings, text.len())?;
            ferry_connectors::validate_connections(&spec, &self.connections)?;
            settings.local = self.policy.local_files();
            Ok((spec, settings))
        });
        match admitted {
            Ok(job) => Some(job),
            Err(e) => {
                let e = e.context(format!("job {id}"));
                tracing::error!(job = %id, error = %e, "job refused; it does not run");
                metrics::counter!(ferry_engine::metrics::JOBS_TOTAL, "status" => "failed")
                    .increment(1);
                let report =
                    JobReport::failed(&ferry_connectors::control::job_name(&envelope.job), e);
                let finished = finished(id, &self.node, envelope.attempt, &[report]);
                let channel = self.channel.clone();
                self.write(ctx, async move { channel.complete(&finished).await });
                None
            }
        }
    }

    fn start(&mut self, envelope: ferry_connectors::control::Envelope, ctx: &mut Context<Self>) {
        let id = envelope.id.clone();
        let name = ferry_connectors::control::job_name(&envelope.job);
        tracing::info!(job = %id, node = %self.node, attempt = envelope.attempt, "job leased");
        if let Some(last) = &envelope.last_error {
            tracing::warn!(job = %id, previous = %last, "job runs again");
        }
        let Some((spec, mut settings)) = self.admit(&envelope, ctx) else {
            return;
        };
        let budget = settings.max_buffer_bytes;
        let held: u64 = self.running.values().map(|s| s.budget).sum();
        if !self.policy.fits_in_memory(held, budget) {
            tracing::info!(job = %id, held, budget, "the job does not fit in the node's free memory_limit; handed back until a running job ends");
            self.memory_full = true;
            let channel = self.channel.clone();
            self.write(ctx, async move { channel.release(&id).await });
            return;
        }
        let cancel: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
        if let Ok(mut jobs) = self.view.jobs.lock() {
            jobs.insert(
                id.clone(),
                admin::JobView {
                    name: name.clone(),
                    started: Instant::now(),
                    progress: None,
                },
            );
        }
        let view = self.view.clone();
        self.running.insert(
            id.clone(),
            Slot {
                name,
                attempt: envelope.attempt,
                budget,
                cancel: cancel.clone(),
            },
        );
        self.changed = true;
        let connections = self.connections.clone();
        let intake = ctx.address();
        // Right before publishing, the job renews its lease: a node that lost the job to
        // another node publishes nothing, and one that renewed holds it for a whole lease
        // timeout while it commits.
        let gate = {
            let (channel, id, node, intake) = (
                self.channel.clone(),
                id.clone(),
                self.node.clone(),
                intake.clone(),
            );
            CommitGate::new(move || {
                let (channel, id, node, intake) =
                    (channel.clone(), id.clone(), node.clone(), intake.clone());
                Box::pin(async move {
                    let held = channel.renew(&id, &node).await?;
                    if !held {
                        intake.do_send(LeaseLost { id });
                    }
                    Ok(held)
                })
            })
        };
        // Each job gets its own event loop (an arbiter thread): building a job can take CPU
        // time (schema inference, generators), and the intake must keep renewing leases.
        let arbiter = actix::Arbiter::new();
        let spawned = arbiter.spawn_fn(move || {
            actix::spawn(async move {
                settings.commit_gate = Some(gate);
                let observe = |running: &JobControl| {
                    if let Ok(mut slot) = cancel.lock() {
                        *slot = Some(running.cancel.clone());
                    }
                    if let Ok(mut jobs) = view.jobs.lock()
                        && let Some(job) = jobs.get_mut(&id)
                    {
                        job.progress = Some(running.progress.clone());
                    }
                };
                let reports =
                    ferry_connectors::run_job(&spec, settings, &connections, &observe).await;
                intake.do_send(JobEnded { id, reports });
                actix::Arbiter::current().stop();
            });
        });
        if !spawned {
            tracing::error!(node = %self.node, "cannot start a thread for a job");
        }
    }
}

/// The channel's record of a finished job.
fn finished(id: &str, node: &str, attempt: u32, reports: &[JobReport]) -> FinishedJob {
    let status = reports
        .iter()
        .find(|r| r.status != JobStatus::Succeeded)
        .or(reports.last())
        .map_or(JobStatus::Failed, |r| r.status);
    FinishedJob {
        id: id.to_string(),
        node: node.to_string(),
        attempt,
        reports: reports
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect(),
        status: format!("{status:?}").to_lowercase(),
    }
}

impl Actor for JobIntake {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(node = %self.node, max_concurrent_jobs = self.max_jobs, "worker started");
        self.tick(ctx);
        ctx.run_interval(self.poll, |act, ctx| act.tick(ctx));
    }
}

impl Handler<Drain> for JobIntake {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) {
        if self.draining_since.is_none() {
            tracing::info!(node = %self.node, running = self.running.len(), "draining: no new jobs");
            self.draining_since = Some(Instant::now());
            self.changed = true;
            self.view
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.tick(ctx);
        }
    }
}

impl Handler<LeaseLost> for JobIntake {
    type Result = ();

    fn handle(&mut self, msg: LeaseLost, _: &mut Self::Context) {
        if self.running.contains_key(&msg.id) {
            tracing::error!(job = %msg.id, "the job's lease was lost before it published (another node may run it now); nothing published");
            self.lost.insert(msg.id);
        }
    }
}

impl Handler<JobEnded> for JobIntake {
    type Result = ();

    fn handle(&mut self, msg: JobEnded, ctx: &mut Self::Context) {
        let id = msg.id;
        let attempt = self.running.remove(&id).map_or(1, |slot| slot.attempt);
        self.changed = true;
        self.memory_full = false;
        if let Ok(mut jobs) = self.view.jobs.lock() {
            jobs.remove(&id);
        }
        let channel = self.channel.clone();
        if self.lost.remove(&id) {
            // Another node owns the job now; its outcome is that node's to report.
            self.handing_back.remove(&id);
        } else if self.handing_back.remove(&id) {
            tracing::warn!(job = %id, "grace period over; job handed back to the channel");
            self.write(ctx, async move { channel.release(&id).await });
        } else {
            let finished = finished(&id, &self.node, attempt, &msg.reports);
            match msg.reports.iter().find_map(|r| r.error.as_ref()) {
                None => tracing::info!(job = %id, status = %finished.status, "job finished"),
                Some(error) => {
                    tracing::error!(job = %id, status = %finished.status, error = %error.message, "job failed")
                }
            }
            self.write(ctx, async move { channel.complete(&finished).await });
        }
        self.tick(ctx);
    }
}

/// Checks a job as every way in does (it parses and validates, the connections it names
/// exist, the node's policy allows it, and the channel is not full) and puts it in the
/// channel; returns its id. `ferry jobs submit` and `POST /api/jobs` both submit here.
pub async fn submit(
    channel: &dyn ControlChannel,
    text: &str,
    connections: &Connections,
    policy: &NodePolicy,
) -> ferry_engine::Result<String> {
    let (spec, settings) = ferry_connectors::parse_job(text)?;
    ferry_connectors::check_connections(&spec, connections)?;
    policy.check_job(&spec, &settings, text.len())?;
    let limit = policy.limits().queued_jobs;
    if limit < usize::MAX {
        let queued = channel.queued().await?;
        if queued >= limit {
            return Err(ferry_engine::Error::forbidden(format!(
                "node policy: {queued} jobs already wait in the channel (`max_queued_jobs` is {limit}); submit again once some have run"
            )));
        }
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ferry_engine::Error::invalid_input(format!("invalid job: {e}")))?;
    channel.submit(value).await
}

/// Runs a node until it is drained; returns the exit code.
pub fn run(loaded: config::Loaded) -> u8 {
    let grace = loaded
        .config
        .grace_period
        .unwrap_or(config::DEFAULT_GRACE_PERIOD)
        .0;
    // The engine records metrics through the `metrics` facade; /metrics renders them.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| tracing::warn!(error = %e, "no Prometheus recorder"))
        .ok();
    // Units and help texts of every metric, for the exposition.
    ferry_engine::metrics::describe();
    let view = Arc::new(admin::NodeView {
        node: loaded.node.clone(),
        max_concurrent_jobs: loaded.config.max_concurrent_jobs,
        jobs: Mutex::default(),
        draining: Default::default(),
    });
    if let Err(e) = loaded.create_dirs() {
        eprintln!("error: {e}");
        return e.exit_code() as u8;
    }
    let system = actix::System::new();
    let started = system.block_on(async move {
        let address = loaded.config.admin_address.clone();
        let channel = loaded
            .open_channel()
            .await
            .map_err(|e| format!("cannot open the control channel: {e}"))?;
        tracing::info!(node = %loaded.node, channel = %channel.describe(), "control channel open");
        let policy = Arc::new(loaded.policy);
        let connections = Arc::new(loaded.connections);
        let bound = admin::start(
            &address,
            view.clone(),
            channel.clone(),
            metrics,
            admin::Admission {
                connections: connections.clone(),
                policy: policy.clone(),
            },
        )
            .map_err(|e| {
                format!(
                    "cannot serve the admin API on {address}: {e}; set another `admin_address` (port 0 picks a free one)"
                )
            })?;
        tracing::info!(node = %loaded.node, admin = %bound, "admin server listening");
        let intake = JobIntake {
            node: loaded.node,
            channel,
            connections,
            policy,
            max_jobs: loaded.config.max_concurrent_jobs,
            poll: loaded.poll,
            grace,
            running: HashMap::new(),
            handing_back: HashSet::new(),
            lost: HashSet::new(),
            writing: 0,
            ticking: false,
            changed: true,
            memory_full: false,
            stopping: false,
            draining_since: None,
            last_beat: None,
            view,
            admin: Some(bound.to_string()),
        }
        .start();
        let signals = intake.clone();
        actix::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot listen for SIGTERM/SIGINT");
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            signals.do_send(Drain);
        });
        Ok::<(), String>(())
    });
    if let Err(message) = started {
        eprintln!("error: {message}");
        return 2;
    }
    match system.run_with_code() {
        Ok(code) => code as u8,
        Err(e) => {
            eprintln!("error: the worker stopped: {e}");
            1
        }
    }
}
