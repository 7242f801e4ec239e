//! `ferry worker`: a long-running node that takes jobs from its control channel, runs at most
//! `max_concurrent_jobs` of them at once, renews their leases, and reports every outcome.
//!
//! [`intake::JobIntake`] is the node's logic (leases, renewals, drain, hand-back), over a
//! [`ControlChannel`] and a [`runner::JobRunner`]; [`runner::EngineRunner`] runs jobs through
//! the engine under the node's policy. On SIGTERM/SIGINT the node stops leasing, lets running
//! jobs finish within the grace period, then cancels the rest and hands them back to the
//! channel for another node.

pub mod admin;
mod admin_guard;
pub mod config;
pub mod intake;
#[cfg(test)]
mod memory;
pub mod runner;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use actix::Actor;
use ferry_connectors::control::trust::Signer;
use ferry_connectors::control::{Channel, Envelope, new_job_id};
use ferry_connectors::{Connections, NodePolicy};

pub use intake::{Drain, IntakeConfig, JobIntake};

/// Checks a job as every way in does (it parses and validates, the connections it names
/// exist, the node's policy allows it, and the channel is not full) and puts it in the
/// channel; returns its id. `ferry jobs submit` and `POST /api/jobs` both submit here.
pub async fn submit(
    channel: &dyn Channel,
    text: &str,
    connections: &Connections,
    policy: &NodePolicy,
    signer: Option<&(Arc<Signer>, std::time::Duration)>,
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
    let mut envelope = Envelope::new(new_job_id(&value), value);
    if let Some((signer, valid_for)) = signer {
        signer.sign(&mut envelope, *valid_for);
    }
    channel.submit_envelope(envelope).await
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
    let Some(token_file) = &loaded.admin_token_file else {
        eprintln!(
            "error: the node's admin API needs a token file: set `state_dir` (the token goes to state_dir/keys/admin-token) or `admin_token_file` in the configuration"
        );
        return 2;
    };
    let token = match admin_guard::load_or_create_token(token_file) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit_code() as u8;
        }
    };
    let member = match (&loaded.membership, &loaded.verifier) {
        (Some(membership), Some(verifier)) => {
            match membership.member(&loaded.node, verifier.clone()) {
                Ok(member) => Some(Arc::new(member)),
                Err(e) => {
                    eprintln!("error: {e}");
                    return e.exit_code() as u8;
                }
            }
        }
        _ => None,
    };
    let system = actix::System::new();
    let started = system.block_on(async move {
        let address = loaded.config.admin_address.clone();
        let channel = loaded
            .open_channel()
            .await
            .map_err(|e| format!("cannot open the control channel: {e}"))?;
        tracing::info!(node = %loaded.node, channel = %channel.describe(), "control channel open");
        if let Some(member) = &member {
            let registration = member
                .register(channel.as_ref())
                .await
                .map_err(|e| format!("cannot register the node with its runtime: {e}"))?;
            tracing::info!(node = %loaded.node, runtime = %registration.runtime, auth_key_id = %registration.auth_key_id, "registered with the runtime");
            member.refresh(channel.as_ref()).await;
        }
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
                verifier: loaded.verifier.is_some(),
                signer: loaded.signer.clone(),
            },
            admin::Access {
                token,
                hosts: loaded.config.admin_hosts.clone(),
                tls: loaded.admin_tls.clone(),
            },
        )
            .map_err(|e| {
                format!(
                    "cannot serve the admin API on {address}: {e}; set another `admin_address` (port 0 picks a free one)"
                )
            })?;
        tracing::info!(node = %loaded.node, admin = %bound, "admin server listening");
        let encode_slots = loaded
            .config
            .encode_threads
            .map(ferry_engine::encode::EncodeSlots::new);
        if let Some(slots) = &encode_slots {
            tracing::info!(node = %loaded.node, encode_threads = slots.slots(), "the node's jobs encode at most this many batches at once");
        }
        let runner = Arc::new(runner::EngineRunner {
            connections,
            policy,
            encode_slots,
        });
        if loaded.verifier.is_none() {
            tracing::warn!(node = %loaded.node, "no [trust]: this node runs unsigned jobs, so whoever can write its channel can run jobs here (see docs/security.md)");
        }
        let config = IntakeConfig {
            member,
            verifier: loaded.verifier.clone(),
            node: loaded.node,
            max_jobs: loaded.config.max_concurrent_jobs,
            poll: loaded.poll,
            grace,
            admin: Some(bound.to_string()),
        };
        let (intake, stopped) = JobIntake::new(config, channel, runner, view);
        let intake = intake.start();
        actix::spawn(async move {
            let _ = stopped.await;
            actix::System::current().stop_with_code(0);
        });
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
