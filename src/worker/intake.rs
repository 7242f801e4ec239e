//! The JobIntake actor: it ticks every `poll_interval`, beats the node's heartbeat, renews
//! the leases of its running jobs, stops jobs whose cancellation was asked, puts back jobs
//! whose node died (their lease expired), and leases new jobs while it has free slots. A
//! [`Drain`] stops leasing, lets running jobs finish within the grace period, then cancels
//! the rest and hands them back to the channel for another node.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture,
};
use ferry_connectors::control::{
    ControlChannel, FinishedJob, JobPhase, JobState, Leased, NodeInfo, now_ms,
};
use ferry_engine::config::CommitGate;
use ferry_engine::{CancellationToken, JobControl, JobReport};
use tokio::time::Instant;

use ferry_connectors::control::Envelope;
use ferry_connectors::control::membership::{Member, Standing};
use ferry_connectors::control::trust::Verifier;

use super::admin;
use super::runner::{JobRunner, Observe};

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

/// How a node takes work.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// The node's name.
    pub node: String,
    /// Jobs run at once.
    pub max_jobs: usize,
    /// How often the node looks for work.
    pub poll: Duration,
    /// How long a drain waits for running jobs before it hands them back.
    pub grace: Duration,
    /// The admin server's address, published in the heartbeat.
    pub admin: Option<String>,
    /// With `[trust]`: runs only jobs signed for the runtime, and no replays.
    pub verifier: Option<Arc<Verifier>>,
    /// A registered node: takes work only while the runtime's grant holds.
    pub member: Option<Arc<Member>>,
}

/// Takes jobs from the channel and runs them with `R`.
pub struct JobIntake<R: JobRunner> {
    node: String,
    channel: Arc<dyn ControlChannel>,
    runner: Arc<R>,
    verifier: Option<Arc<Verifier>>,
    member: Option<Arc<Member>>,
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
    /// Told when the node has drained and stopped.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<R: JobRunner> JobIntake<R> {
    /// An intake that leases from `channel` and runs with `runner`; `view` is what the admin
    /// server shows. The receiver resolves once the node has drained and stopped.
    pub fn new(
        config: IntakeConfig,
        channel: Arc<dyn ControlChannel>,
        runner: Arc<R>,
        view: Arc<admin::NodeView>,
    ) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (done, stopped) = tokio::sync::oneshot::channel();
        let intake = JobIntake {
            node: config.node,
            channel,
            runner,
            verifier: config.verifier,
            member: config.member,
            max_jobs: config.max_jobs,
            poll: config.poll,
            grace: config.grace,
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
            admin: config.admin,
            done: Some(done),
        };
        (intake, stopped)
    }
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

impl<R: JobRunner> JobIntake<R> {
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
                    .map(move |(), _, ctx: &mut Context<Self>| {
                        tracing::info!(node = %node, "drained; stopping");
                        ctx.stop();
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
        let verifier = self.verifier.clone();
        let member = self.member.clone();
        let work = async move {
            let verifier = verifier.as_deref();
            let mut result = TickResult::default();
            // A registered node checks its grant at each beat, and takes no work without one.
            let free = match &member {
                Some(member) => {
                    if due {
                        member.refresh(channel.as_ref()).await;
                    }
                    if member.granted() { free } else { 0 }
                }
                None => free,
            };
            // A renewal that takes longer than the lease is useless: the lease is gone by then.
            let lease = channel.lease_timeout();
            for id in renew {
                match tokio::time::timeout(lease, channel.renew(&id, &node)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => result.lost.push(id),
                    Ok(Err(e)) => tracing::warn!(job = %id, error = %e, "cannot renew the lease"),
                    Err(_) => tracing::warn!(
                        job = %id,
                        "cannot renew the lease: the control channel did not answer within the lease timeout"
                    ),
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
                    Ok(leased)
                        if !still_granted(channel.as_ref(), member.as_deref(), &leased).await => {}
                    Ok(leased) => result.leased = screen(channel.as_ref(), verifier, leased).await,
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
                    state: JobPhase::Running,
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
                    let finished = FinishedJob::of_run(&id, &self.node, 1, vec![report]);
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

    /// Checks a leased job with the runner; a job that fails is recorded as failed, with
    /// the reason, and never runs.
    fn admit(
        &mut self,
        envelope: &ferry_connectors::control::Envelope,
        ctx: &mut Context<Self>,
    ) -> Option<(R::Job, u64)> {
        let id = &envelope.id;
        match self.runner.admit(&envelope.job) {
            Ok(job) => Some(job),
            Err(e) => {
                let e = e.context(format!("job {id}"));
                tracing::error!(job = %id, error = %e, "job refused; it does not run");
                let report =
                    JobReport::failed(&ferry_connectors::control::job_name(&envelope.job), e);
                ferry_engine::metrics::record_job(&report);
                let finished = FinishedJob::of_run(id, &self.node, envelope.attempt, vec![report]);
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
        let Some((job, budget)) = self.admit(&envelope, ctx) else {
            return;
        };
        let held: u64 = self.running.values().map(|s| s.budget).sum();
        if !self.runner.fits(held, budget) {
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
                    started: std::time::Instant::now(),
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
                    // Publishing needs the lease held for sure: a renewal that fails or does not
                    // answer within the lease timeout (the channel is unreachable) counts as
                    // lost. The job is neither published nor reported; once its lease expires,
                    // a node that reaches the channel runs it again.
                    let held = match tokio::time::timeout(
                        channel.lease_timeout(),
                        channel.renew(&id, &node),
                    )
                    .await
                    {
                        Ok(Ok(held)) => held,
                        Ok(Err(e)) => {
                            tracing::warn!(job = %id, error = %e, "cannot renew the lease before publishing");
                            false
                        }
                        Err(_) => {
                            tracing::warn!(
                                job = %id,
                                "cannot renew the lease before publishing: the control channel did not answer within the lease timeout"
                            );
                            false
                        }
                    };
                    if !held {
                        intake.do_send(LeaseLost { id });
                    }
                    Ok(held)
                })
            })
        };
        let watched = id.clone();
        let observe: Observe = Box::new(move |running: &JobControl| {
            if let Ok(mut slot) = cancel.lock() {
                *slot = Some(running.cancel.clone());
            }
            if let Ok(mut jobs) = view.jobs.lock()
                && let Some(job) = jobs.get_mut(&watched)
            {
                job.progress = Some(running.progress.clone());
            }
        });
        let reports = self.runner.run(job, gate, observe);
        ctx.spawn(
            reports
                .into_actor(self)
                .map(move |reports, _, ctx: &mut Context<Self>| {
                    ctx.notify(JobEnded { id, reports });
                }),
        );
    }
}

/// With a grant to hold (a registered node), checks it again once jobs were leased: the
/// runtime may have withdrawn it since the last beat. A node that lost it hands the jobs
/// back, uncounted, and says whether it may run them.
async fn still_granted(
    channel: &dyn ControlChannel,
    member: Option<&Member>,
    leased: &[Leased],
) -> bool {
    let Some(member) = member else {
        return true;
    };
    if leased.is_empty() || member.refresh(channel).await == Standing::Granted {
        return true;
    }
    for job in leased {
        let id = match job {
            Ok(envelope) => &envelope.id,
            Err((id, _)) => id,
        };
        if let Err(e) = channel.release(id).await {
            tracing::warn!(job = %id, error = %e, "cannot hand back a job this node may no longer run");
        }
    }
    false
}

/// Screens leased jobs before any runs: a job whose id already has a record is a replay and
/// is rejected without touching that record; with a verifier, a job that is unsigned,
/// tampered, foreign or expired comes back as refused (to be recorded as failed, never run).
async fn screen(
    channel: &dyn ControlChannel,
    verifier: Option<&Verifier>,
    leased: Vec<Leased>,
) -> Vec<Leased> {
    let Some(verifier) = verifier else {
        return leased;
    };
    let mut screened = Vec::with_capacity(leased.len());
    for job in leased {
        let envelope: Envelope = match job {
            Ok(envelope) => envelope,
            Err(malformed) => {
                screened.push(Err(malformed));
                continue;
            }
        };
        let id = envelope.id.clone();
        match channel.finished(&id).await {
            Ok(false) => {}
            Ok(true) => {
                let why =
                    format!("job {id} was replayed: it has a record already, and a job runs once");
                tracing::error!(job = %id, "{why}; rejected");
                if let Err(e) = channel.reject(&id, &why).await {
                    tracing::warn!(job = %id, error = %e, "cannot reject a replayed job");
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "cannot check whether the job ran before; handed back");
                let _ = channel.release(&id).await;
                continue;
            }
        }
        match verifier.verify(&envelope, now_ms()) {
            Ok(()) => screened.push(Ok(envelope)),
            Err(e) => screened.push(Err((id, e))),
        }
    }
    screened
}

impl<R: JobRunner> Actor for JobIntake<R> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(node = %self.node, max_concurrent_jobs = self.max_jobs, "worker started");
        self.tick(ctx);
        ctx.run_interval(self.poll, |act, ctx| act.tick(ctx));
        ctx.run_interval(SWEEP_EVERY, |_, _| sweep_staging());
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<R: JobRunner> Handler<Drain> for JobIntake<R> {
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

impl<R: JobRunner> Handler<LeaseLost> for JobIntake<R> {
    type Result = ();

    fn handle(&mut self, msg: LeaseLost, _: &mut Self::Context) {
        if self.running.contains_key(&msg.id) {
            tracing::error!(job = %msg.id, "the job's lease was lost before it published (another node may run it now); nothing published");
            self.lost.insert(msg.id);
        }
    }
}

impl<R: JobRunner> Handler<JobEnded> for JobIntake<R> {
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
            let finished = FinishedJob::of_run(&id, &self.node, attempt, msg.reports);
            let status = finished.status.name();
            match finished.reports.iter().find_map(|r| r.error.as_ref()) {
                None => tracing::info!(job = %id, status, "job finished"),
                Some(error) => {
                    tracing::error!(job = %id, status, error = %error.message, "job failed")
                }
            }
            self.write(ctx, async move { channel.complete(&finished).await });
        }
        sweep_staging();
        self.tick(ctx);
    }
}

/// How often a node sweeps the staging areas it has used for dead runs (also after each
/// job).
const SWEEP_EVERY: Duration = Duration::from_secs(5 * 60);

/// Housekeeping: removes the interim files of dead staged runs, of any job, in the staging
/// areas this node has used (a run whose marker is older than the dead-run age).
fn sweep_staging() {
    ferry_engine::task::spawn_detached(async {
        let removed = ferry_connectors::staged::sweep_dead_runs().await;
        if !removed.is_empty() {
            tracing::info!(runs = ?removed, "housekeeping: removed the interim files of dead staged runs");
        }
    });
}
