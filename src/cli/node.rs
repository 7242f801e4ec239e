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

/// `ferry node ...`: this node's membership of its runtime.
#[derive(Subcommand)]
pub enum NodeCommand {
    /// Registers this node with its runtime: makes the node's own key (state_dir/keys/
    /// node.key), saves the authentication key (state_dir/keys/auth.key, unless ferry.toml
    /// names one) and asks the runtime, through the channel, for its credential key.
    Register {
        /// A file holding the runtime's authentication key (from `ferry runtime init`).
        #[arg(long, conflicts_with = "auth_key")]
        auth_key_file: Option<PathBuf>,
        /// The authentication key itself (it shows in the process list while this runs;
        /// prefer --auth-key-file or the FERRY_AUTH_KEY environment variable).
        #[arg(long, env = "FERRY_AUTH_KEY", hide_env_values = true)]
        auth_key: Option<String>,
        /// Wait this many seconds for the runtime's grant.
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        wait: u64,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Removes node NAME from the runtime: withdraws its grant; it takes no more work and
    /// is not granted again until it registers with a new authentication key.
    Remove {
        /// The node's name.
        name: String,
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

/// `ferry node ...`.
pub fn run_node(command: NodeCommand) -> u8 {
    match command {
        NodeCommand::Register {
            auth_key_file,
            auth_key,
            wait,
            config,
        } => register(&config, auth_key_file, auth_key, wait),
        NodeCommand::Remove { name, config } => {
            let Ok(loaded) = load(&config) else { return 2 };
            let removed = {
                let name = name.clone();
                loaded.with_channel(|channel| async move {
                    ferry_connectors::control::membership::remove_node(channel.as_ref(), &name)
                        .await
                })
            };
            match removed {
                Ok(true) => {
                    outln!(
                        "{name}: removed; its grant is withdrawn and it takes no more work. If its machine may be compromised, rotate the authentication key (`ferry runtime rotate-auth-key`) and the secrets it could open (docs/security.md)"
                    );
                    0
                }
                Ok(false) => super::fail(&ferry_engine::Error::invalid_input(format!(
                    "no node `{name}` has registered in this channel"
                ))),
                Err(e) => super::fail(&e),
            }
        }
    }
}

fn register(config: &ConfigArg, file: Option<PathBuf>, key: Option<String>, wait: u64) -> u8 {
    use ferry_connectors::control::membership::{AuthKey, Standing};
    use ferry_engine::Error;
    let given = match (file, key) {
        (Some(file), _) => Some(AuthKey::load(&file)),
        (None, Some(text)) => Some(AuthKey::parse(&zeroize::Zeroizing::new(text))),
        (None, None) => None,
    };
    let given = match given.transpose() {
        Ok(given) => given,
        Err(e) => return super::fail(&e),
    };
    let Ok(loaded) = load(config) else { return 2 };
    let (Some(verifier), Some(state_dir)) = (loaded.verifier.clone(), loaded.state_dir.clone())
    else {
        return super::fail(&Error::config(format!(
            "{}: a node registers with `[trust] runtime` (the runtime's runtime.json) and a `state_dir` (where its own key lives)",
            config.path().display()
        )));
    };
    if let Err(e) = loaded.create_dirs() {
        return super::fail(&e);
    }
    let named_in_config = loaded
        .config
        .trust
        .as_ref()
        .is_some_and(|t| t.auth_key_file.is_some() || t.auth_key_env.is_some());
    let membership = match given {
        Some(_) if named_in_config => {
            return super::fail(&Error::config(format!(
                "{}: [trust] names the authentication key already (`auth_key_file` or `auth_key_env`); update it there and run `ferry node register` without a key",
                config.path().display()
            )));
        }
        Some(key) => {
            let saved = state_dir.join("keys").join("auth.key");
            if let Err(e) = save_auth_key(&saved, &key) {
                return super::fail(&e);
            }
            worker::config::Membership {
                node_key: state_dir.join("keys").join("node.key"),
                auth_key: worker::config::AuthKeySource::File(saved),
            }
        }
        None => match &loaded.membership {
            Some(membership) => membership.clone(),
            None => {
                return super::fail(&Error::config(
                    "give the runtime's authentication key: --auth-key-file FILE (or FERRY_AUTH_KEY), as `ferry runtime init` printed it",
                ));
            }
        },
    };
    let member = match membership.member(&loaded.node, verifier) {
        Ok(member) => member,
        Err(e) => return super::fail(&e),
    };
    let node = loaded.node.clone();
    let standing = loaded.with_channel(|channel| async move {
        let registration = member.register(channel.as_ref()).await?;
        outln!(
            "{node}: registered with runtime {} (authentication key id {}, node key {})",
            registration.runtime,
            registration.auth_key_id,
            registration.recipient
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
        loop {
            let standing = member.refresh(channel.as_ref()).await;
            if standing != Standing::Waiting || std::time::Instant::now() >= deadline {
                return Ok(standing);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    });
    match standing {
        Ok(Standing::Granted) => {
            outln!("granted: the runtime sealed its credential key to this node; it takes work");
            0
        }
        Ok(Standing::Waiting) => {
            outln!(
                "waiting for the runtime's grant: run `ferry runtime sync` where the runtime's keys are; the node takes no work until then"
            );
            0
        }
        Ok(Standing::Refused(why)) => super::fail(&Error::forbidden(format!("refused: {why}"))),
        Err(e) => super::fail(&e),
    }
}

/// Saves the authentication key as the node's `state_dir/keys/auth.key` (0600), replacing
/// an earlier one.
fn save_auth_key(
    path: &std::path::Path,
    key: &ferry_connectors::control::membership::AuthKey,
) -> ferry_engine::Result<()> {
    use ferry_engine::config::local::{create_private_dir, write_private_file};
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let fresh = path.with_extension(format!("new-{}", std::process::id()));
    write_private_file(&fresh, &format!("{}\n", key.to_text().as_str()))?;
    std::fs::rename(&fresh, path)
        .map_err(|e| ferry_engine::Error::io(format!("cannot replace {}", path.display()), e))
}
