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

use actix::{Actor, AsyncContext, Context, Handler, Message};
use ferry_connectors::control::{Envelope, FinishedJob, LocalChannel, NodeInfo, local::now_ms};
use ferry_engine::config::Connections;
use ferry_engine::{JobReport, JobStatus, RunningJob};
use tokio_util::sync::CancellationToken;

/// A job this node runs.
struct Slot {
    cancel: Arc<Mutex<Option<CancellationToken>>>,
}

/// Takes jobs from the channel and runs them.
pub struct JobIntake {
    node: String,
    channel: LocalChannel,
    connections: Arc<Connections>,
    max_jobs: usize,
    poll: Duration,
    grace: Duration,
    running: HashMap<String, Slot>,
    /// Jobs to hand back instead of reporting (cancelled by a shutdown).
    handing_back: Arc<Mutex<HashSet<String>>>,
    draining_since: Option<Instant>,
    last_lease_beat: Instant,
    view: Arc<admin::NodeView>,
    admin: Option<String>,
}

/// Stop leasing and shut down once running jobs are done (or the grace period ends).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

/// A job ended (its outcome is already in the channel).
#[derive(Message)]
#[rtype(result = "()")]
struct JobEnded {
    id: String,
}

impl JobIntake {
    fn tick(&mut self, ctx: &mut Context<Self>) {
        // Renew leases well inside the timeout.
        let lease_beat = self.channel.lease_timeout() / 4;
        if self.last_lease_beat.elapsed() >= lease_beat.min(Duration::from_secs(5)) {
            for id in self.running.keys() {
                if let Err(e) = self.channel.heartbeat(id, &self.node) {
                    tracing::warn!(job = %id, error = %e, "cannot renew the lease");
                }
            }
            self.last_lease_beat = Instant::now();
        }
        for (id, slot) in &self.running {
            if self.channel.cancel_requested(id)
                && let Some(token) = slot.cancel.lock().ok().and_then(|t| t.clone())
            {
                token.cancel();
            }
        }
        let _ = self.channel.node_heartbeat(&NodeInfo {
            node: self.node.clone(),
            max_concurrent_jobs: self.max_jobs,
            running: self.running.keys().cloned().collect(),
            draining: self.draining_since.is_some(),
            heartbeat_ms: now_ms(),
            admin: self.admin.clone(),
        });
        if let Some(since) = self.draining_since {
            if self.running.is_empty() {
                tracing::info!(node = %self.node, "drained; stopping");
                actix::System::current().stop_with_code(0);
            } else if since.elapsed() >= self.grace {
                // The grace period is over: stop the rest and hand them to another node.
                for (id, slot) in &self.running {
                    if let Ok(mut back) = self.handing_back.lock() {
                        back.insert(id.clone());
                    }
                    if let Some(token) = slot.cancel.lock().ok().and_then(|t| t.clone()) {
                        token.cancel();
                    }
                }
            }
            return;
        }
        if let Err(e) = self.channel.recover_expired(&self.node) {
            tracing::warn!(error = %e, "cannot recover expired leases");
        }
        while self.running.len() < self.max_jobs {
            match self.channel.lease(&self.node) {
                Ok(Some(Ok(envelope))) => self.start(envelope, ctx),
                Ok(Some(Err((id, e)))) => {
                    tracing::error!(job = %id, error = %e, "malformed job in the channel");
                    let report = JobReport::failed(&id, e.context(format!("job {id}")));
                    let _ = self
                        .channel
                        .complete(&finished(&id, &self.node, 1, &[report]));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot lease a job");
                    break;
                }
            }
        }
    }

    fn start(&mut self, envelope: Envelope, ctx: &mut Context<Self>) {
        let id = envelope.id.clone();
        tracing::info!(job = %id, node = %self.node, attempt = envelope.attempt, "job leased");
        let cancel: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
        if let Ok(mut jobs) = self.view.jobs.lock() {
            jobs.insert(
                id.clone(),
                admin::JobView {
                    name: envelope
                        .job
                        .get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or("?")
                        .to_string(),
                    started: Instant::now(),
                    progress: None,
                },
            );
        }
        let view = self.view.clone();
        self.running.insert(
            id.clone(),
            Slot {
                cancel: cancel.clone(),
            },
        );
        let (channel, connections, node) = (
            self.channel.clone(),
            self.connections.clone(),
            self.node.clone(),
        );
        let handing_back = self.handing_back.clone();
        let intake = ctx.address();
        // Each job gets its own event loop (an arbiter thread): building a job can take CPU
        // time (schema inference, generators), and the intake must keep renewing leases.
        let arbiter = actix::Arbiter::new();
        let spawned = arbiter.spawn_fn(move || {
            actix::spawn(async move {
                let text = envelope.job.to_string();
                let reports = match ferry_connectors::parse_job(&text) {
                    Err(e) => vec![JobReport::failed(&id, e.context(format!("job {id}")))],
                    Ok((spec, settings)) => {
                        let observe = |running: &RunningJob| {
                            if let Ok(mut slot) = cancel.lock() {
                                *slot = Some(running.cancel.clone());
                            }
                            if let Ok(mut jobs) = view.jobs.lock()
                                && let Some(job) = jobs.get_mut(&id)
                            {
                                job.progress = Some(running.progress.clone());
                            }
                        };
                        ferry_connectors::run_job(&spec, settings, &connections, &observe).await
                    }
                };
                let hand_back = handing_back
                    .lock()
                    .map(|mut s| s.remove(&id))
                    .unwrap_or(false);
                let result = if hand_back {
                    tracing::warn!(job = %id, "grace period over; job handed back to the channel");
                    channel.release(&id)
                } else {
                    channel.complete(&finished(&id, &node, envelope.attempt, &reports))
                };
                if let Err(e) = result {
                    tracing::error!(job = %id, error = %e, "cannot record the job's outcome");
                }
                intake.do_send(JobEnded { id });
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
            self.view
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            self.tick(ctx);
        }
    }
}

impl Handler<JobEnded> for JobIntake {
    type Result = ();

    fn handle(&mut self, msg: JobEnded, ctx: &mut Self::Context) {
        self.running.remove(&msg.id);
        if let Ok(mut jobs) = self.view.jobs.lock() {
            jobs.remove(&msg.id);
        }
        self.tick(ctx);
    }
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
    let view = Arc::new(admin::NodeView {
        node: loaded.node.clone(),
        max_concurrent_jobs: loaded.config.max_concurrent_jobs,
        jobs: Mutex::default(),
        draining: Default::default(),
    });
    let system = actix::System::new();
    let started = system.block_on(async move {
        let address = loaded.config.admin_address.clone();
        let bound = admin::start(&address, view.clone(), loaded.channel.clone(), metrics)
            .map_err(|e| {
                format!(
                    "cannot serve the admin API on {address}: {e}; set another `admin_address` (port 0 picks a free one)"
                )
            })?;
        tracing::info!(node = %loaded.node, admin = %bound, "admin server listening");
        let intake = JobIntake {
            node: loaded.node,
            channel: loaded.channel,
            connections: Arc::new(loaded.connections),
            max_jobs: loaded.config.max_concurrent_jobs,
            poll: loaded.poll,
            grace,
            running: HashMap::new(),
            handing_back: Arc::default(),
            draining_since: None,
            last_lease_beat: Instant::now(),
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
