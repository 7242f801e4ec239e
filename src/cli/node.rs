//! `ferry worker`, `ferry jobs ...` and `ferry nodes`: running a node and driving the control
//! channel it shares with the other nodes of the runtime.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_connectors::control::now_ms;

use ferry::worker;

/// Where the node's configuration is.
#[derive(Args)]
pub struct ConfigArg {
    /// The node configuration (ferry.toml).
    #[arg(long, env = "FERRY_CONFIG", default_value = "ferry.toml")]
    config: PathBuf,
}

/// `ferry jobs` subcommands.
#[derive(Subcommand)]
pub enum JobsCommand {
    /// Validates a job file and puts it in the channel; prints its id.
    Submit {
        /// The job file.
        job: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Lists the channel's jobs: queued, running and finished.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Prints a job's state and, once it finished, its report.
    Show {
        /// The job id.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Cancels a queued or running job.
    Cancel {
        /// The job id.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

impl ConfigArg {
    /// The configuration file's path.
    pub fn path(&self) -> &std::path::Path {
        &self.config
    }
}

fn load(config: &ConfigArg) -> Result<worker::config::Loaded, u8> {
    worker::config::load(&config.config).map_err(|e| super::fail(&e))
}

/// `ferry worker`.
pub fn run_worker(config: ConfigArg) -> u8 {
    match load(&config) {
        Ok(loaded) => worker::run(loaded),
        Err(code) => code,
    }
}

/// `ferry jobs ...`.
pub fn run_jobs(command: JobsCommand) -> u8 {
    match command {
        JobsCommand::Submit { job, config } => {
            let Ok(loaded) = load(&config) else { return 2 };
            let text = match std::fs::read_to_string(&job) {
                Ok(t) => t,
                Err(e) => {
                    return super::fail(&ferry_engine::Error::io(
                        format!("cannot read job file {}", job.display()),
                        e,
                    ));
                }
            };
            let (connections, policy) = (&loaded.connections, &loaded.policy);
            let signer = loaded.signer.as_ref();
            if loaded.verifier.is_some() && signer.is_none() {
                return super::fail(&ferry_engine::Error::forbidden(format!(
                    "{}: [trust] names no `signing_key`: the runtime's nodes run only signed jobs, so submit from a machine that holds the signing key",
                    config.config.display()
                )));
            }
            let submitted = loaded.with_channel(|channel| async move {
                worker::submit(channel.as_ref(), &text, connections, policy, signer)
                    .await
                    .map_err(|e| e.context(job.display()))
            });
            match submitted {
                Ok(id) => {
                    outln!("{id}");
                    0
                }
                Err(e) => super::fail(&e),
            }
        }
        JobsCommand::List { config } => {
            let Ok(loaded) = load(&config) else { return 2 };
            match loaded.with_channel(|channel| async move { channel.jobs().await }) {
                Ok(jobs) => {
                    outln!(
                        "{:<48} {:<10} {:<8} {:<14} name",
                        "id",
                        "state",
                        "attempt",
                        "node"
                    );
                    for j in jobs {
                        outln!(
                            "{:<48} {:<10} {:<8} {:<14} {}",
                            j.id,
                            j.state,
                            j.attempt,
                            j.node.unwrap_or_default(),
                            j.name
                        );
                    }
                    0
                }
                Err(e) => super::fail(&e),
            }
        }
        JobsCommand::Show { id, config } => {
            let Ok(loaded) = load(&config) else { return 2 };
            let wanted = id.clone();
            let found = loaded.with_channel(|channel| async move {
                let id = wanted;
                match channel.report(&id).await? {
                    Some(finished) => Ok(Ok(finished)),
                    None => Ok(Err(channel.jobs().await?.into_iter().find(|j| j.id == id))),
                }
            });
            match found {
                Ok(Ok(finished)) => match serde_json::to_string_pretty(&finished) {
                    Ok(json) => {
                        outln!("{json}");
                        0
                    }
                    Err(e) => super::fail(&ferry_engine::Error::internal(e.to_string())),
                },
                Ok(Err(Some(j))) => {
                    outln!(
                        "{}",
                        serde_json::json!({"id": j.id, "status": j.state, "node": j.node, "attempt": j.attempt})
                    );
                    0
                }
                Ok(Err(None)) => super::fail(&ferry_engine::Error::invalid_input(format!(
                    "no job {id} in the channel"
                ))),
                Err(e) => super::fail(&e),
            }
        }
        JobsCommand::Cancel { id, config } => {
            let Ok(loaded) = load(&config) else { return 2 };
            let asked = {
                let id = id.clone();
                loaded.with_channel(|channel| async move { channel.cancel(&id).await })
            };
            match asked {
                Ok(what) => {
                    outln!("{id}: {what}");
                    0
                }
                Err(e) => super::fail(&e),
            }
        }
    }
}

/// `ferry nodes`: every node of the channel with its status.
pub fn run_nodes(config: ConfigArg) -> u8 {
    let Ok(loaded) = load(&config) else { return 2 };
    let listed = loaded.with_channel(|channel| async move {
        Ok((channel.lease_timeout(), channel.nodes().await?))
    });
    match listed {
        Ok((timeout, nodes)) => {
            let timeout = timeout.as_millis() as u64;
            outln!(
                "{:<20} {:<9} {:>5} {:>5}  last heartbeat",
                "node",
                "status",
                "busy",
                "slots"
            );
            for n in nodes {
                let age = now_ms().saturating_sub(n.heartbeat_ms);
                let status = if n.stopped {
                    "stopped"
                } else if age > timeout {
                    "offline"
                } else if n.draining {
                    "draining"
                } else if n.running.len() >= n.max_concurrent_jobs {
                    "limited"
                } else {
                    "online"
                };
                outln!(
                    "{:<20} {:<9} {:>5} {:>5}  {:.1}s ago",
                    n.node,
                    status,
                    n.running.len(),
                    n.max_concurrent_jobs,
                    age as f64 / 1000.0
                );
            }
            0
        }
        Err(e) => super::fail(&e),
    }
}
