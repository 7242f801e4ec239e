//! `ferry.toml`: a worker node's configuration.
//!
//! ```toml
//! node = "etl-01"                 # default: the host name
//! max_concurrent_jobs = 4
//! encode_threads = 2              # cap on batches encoded at once by all jobs; default: none
//! connections = "connections.json"
//! grace_period = "30s"            # how long SIGTERM waits for running jobs
//! admin_address = "127.0.0.1:9181"  # status page, /metrics, /api (loopback by default)
//! state_dir = "/var/lib/ferry"    # the node's own files: daily log files under logs/
//!
//! [log]
//! level = "info"                  # tracing directives; -v and RUST_LOG override
//! format = "text"                 # or "json"
//! keep_days = 7                   # daily log files kept under state_dir/logs
//!
//! [channel]
//! type = "local"
//! path = "/srv/ferry/spool"       # shared by every node of the runtime on this host
//! lease_timeout = "30s"           # a node silent this long is taken for dead
//! max_attempts = 3                # runs of one job before it fails for good
//! poll_interval = "500ms"
//! ```
//!
//! or, for nodes on several hosts, an Azure Storage queue and a container for the records:
//!
//! ```toml
//! [channel]
//! type = "azure_queue"
//! connection = "control"          # an `azure_blob` connection of the connections file
//! queue = "ferry-jobs"            # created if missing, with `ferry-jobs-poison`
//! container = "ferry-control"     # reports, node heartbeats, cancellation requests
//! # queue_endpoint = "https://<account>.queue.core.windows.net"   # the default
//! lease_timeout = "60s"
//! max_attempts = 3
//! poll_interval = "1s"
//! ```
//!
//! What jobs may do on the node is `[policy]` (see `ferry_connectors::policy`): by default
//! local paths only below `state_dir/data`, every connection but the channel's own, no
//! `pre_copy_sql`, `truncate` or `overwrite`, and bounded batch sizes, parallelism and memory.
//!
//! Relative paths are relative to the configuration file.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use ferry_connectors::Connections;
use ferry_connectors::control::membership::{AuthKey, Member, NodeKey};
use ferry_connectors::control::trust::{
    CredentialKey, DEFAULT_VALID_FOR, Signer, Verifier, read_identity,
};
use ferry_connectors::control::{Channel, ChannelConfig, ChannelSpec};
use ferry_connectors::{NodePolicy, PolicyConfig, PolicyContext};
use ferry_engine::config::local::{check_closed_dir, check_private_dir, create_private_dir};
use ferry_engine::config::units::HumanDuration;
use ferry_engine::{Error, Result};
use serde::Deserialize;

/// Default concurrent-jobs limit of a node.
pub const DEFAULT_MAX_CONCURRENT_JOBS: usize = 4;
/// Default grace period on SIGTERM.
pub const DEFAULT_GRACE_PERIOD: HumanDuration = HumanDuration::secs(30);

/// The worker configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// This node's name, unique in the runtime (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// Jobs this node runs at once.
    #[serde(default = "default_max_jobs")]
    pub max_concurrent_jobs: usize,
    /// A cap on the batches the node encodes at once, shared by all its jobs (default: none).
    #[serde(default)]
    pub encode_threads: Option<usize>,
    /// The connections file the jobs name connections from.
    #[serde(default)]
    pub connections: Option<PathBuf>,
    /// How long SIGTERM/SIGINT waits for running jobs before handing them back.
    #[serde(default)]
    pub grace_period: Option<HumanDuration>,
    /// Address of the admin HTTP server (default 127.0.0.1:9181; port 0 picks a free one,
    /// shown by `ferry nodes`). Keep it on loopback unless a proxy guards it.
    #[serde(default = "default_admin")]
    pub admin_address: String,
    /// Other `host:port` names the admin server answers to (a node's DNS name behind TLS).
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// TLS for the admin server (PEM files); required when `admin_address` is not loopback.
    #[serde(default)]
    pub admin_tls: Option<AdminTls>,
    /// The admin API's bearer token file (default `state_dir/keys/admin-token`), created
    /// with a random token, mode 0600, at the node's first start.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// The node's own files (daily log files under `logs/`); none by default.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Log settings. Read before anything else by [`log_settings`]; parsed here too, so
    /// that a wrong value fails the load with the file's name.
    #[serde(default)]
    #[allow(dead_code)]
    pub log: LogConfig,
    /// What jobs may do on this node.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The control channel.
    pub channel: ChannelConfig,
    /// Signed jobs: the runtime whose signatures this node requires, and (for submitters)
    /// its signing key.
    #[serde(default)]
    pub trust: Option<TrustConfig>,
}

/// `[trust]`: the runtime's identity (made by `ferry runtime init`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// `runtime.json`: the runtime's id and public key. With it, this node runs only jobs
    /// signed for that runtime.
    pub runtime: PathBuf,
    /// `signing.key`: the private key that signs jobs submitted from here (`ferry jobs
    /// submit`, the admin API). Only on machines that may submit.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// How long a signed job may wait in the channel (default 24h).
    #[serde(default)]
    pub valid_for: Option<HumanDuration>,
    /// `credential.key`: the runtime's credential key (mode 0600), which opens the
    /// connections' `{"encrypted": ...}` secrets in memory when a job uses them. A node
    /// that registers (`auth_key_file`, `auth_key_env`) receives it from the runtime instead.
    #[serde(default)]
    pub credential_key: Option<PathBuf>,
    /// A file (0600) holding the runtime's authentication key: the node registers with it
    /// and takes work only once the runtime granted it its credential key. `ferry node
    /// register` saves the key as `state_dir/keys/auth.key`, which counts as this setting.
    #[serde(default)]
    pub auth_key_file: Option<PathBuf>,
    /// An environment variable holding the authentication key (instead of a file).
    #[serde(default)]
    pub auth_key_env: Option<String>,
}

/// Where a registering node's authentication key comes from.
#[derive(Debug, Clone)]
pub enum AuthKeySource {
    /// A key file (0600).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl AuthKeySource {
    /// Reads the key.
    pub fn load(&self) -> Result<AuthKey> {
        match self {
            AuthKeySource::File(path) => AuthKey::load(path),
            AuthKeySource::Env(var) => {
                let text = zeroize::Zeroizing::new(std::env::var(var).map_err(|_| {
                    Error::config(format!(
                        "environment variable `{var}` (`[trust] auth_key_env`) is not set"
                    ))
                })?);
                AuthKey::parse(&text).map_err(|e| e.context(format!("`{var}`")))
            }
        }
    }
}

/// How a node joins its runtime (`[trust]` with an authentication key).
#[derive(Debug, Clone)]
pub struct Membership {
    /// The node's own key file, `state_dir/keys/node.key` (made at first start).
    pub node_key: PathBuf,
    /// The authentication key to register with.
    pub auth_key: AuthKeySource,
}

impl Membership {
    /// The node's side of membership: its key (made on first use) and the auth key.
    pub fn member(&self, node: &str, verifier: Arc<Verifier>) -> Result<Member> {
        let key = NodeKey::load_or_create(&self.node_key)?;
        Ok(Member::new(
            node,
            verifier,
            key,
            Some(self.auth_key.load()?),
        ))
    }
}

/// `[admin_tls]`: the admin server's certificate chain and private key, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[log]`: what the node logs, and how.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Tracing directives (`info`, `warn,ferry=debug`); `-v` and `RUST_LOG` override.
    #[serde(default)]
    pub level: Option<String>,
    /// `text` or `json`; `--log-format` overrides. A typo fails when the file loads.
    #[serde(default)]
    pub format: Option<LogFileFormat>,
    /// Daily log files kept under `state_dir/logs` (default 7).
    #[serde(default)]
    pub keep_days: Option<usize>,
}

/// The format of a node's log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFileFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Default number of daily log files kept.
pub const DEFAULT_KEEP_DAYS: usize = 7;

/// The log settings of a configuration file, read before anything else (logging starts
/// first). `None` when the file cannot be read or parsed: `load` reports that later.
pub fn log_settings(path: &Path) -> Option<(LogConfig, Option<PathBuf>)> {
    #[derive(Deserialize)]
    struct Partial {
        #[serde(default)]
        state_dir: Option<PathBuf>,
        #[serde(default)]
        log: LogConfig,
    }
    let text = std::fs::read_to_string(path).ok()?;
    let partial: Partial = toml::from_str(&text).ok()?;
    let logs = partial.state_dir.map(|d| logs_dir(path, &d));
    Some((partial.log, logs))
}

/// Where a node writes its log files: `logs/` in its `state_dir`, which is relative to the
/// configuration file `config` unless absolute.
fn logs_dir(config: &Path, state_dir: &Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(Path::new("."))
        .join(state_dir)
        .join("logs")
}

fn default_admin() -> String {
    DEFAULT_ADMIN_ADDRESS.to_string()
}

/// Default address of the admin HTTP server.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9181";

fn default_max_jobs() -> usize {
    DEFAULT_MAX_CONCURRENT_JOBS
}

/// A loaded configuration, paths resolved.
pub struct Loaded {
    /// The parsed file.
    pub config: WorkerConfig,
    /// The node name.
    pub node: String,
    /// The channel, to open with [`Loaded::open_channel`].
    pub channel: ChannelSpec,
    /// The connections.
    pub connections: Connections,
    /// How often to poll.
    pub poll: std::time::Duration,
    /// Where the node writes its daily log files, if it does.
    pub logs_dir: Option<PathBuf>,
    /// What jobs may do on this node.
    pub policy: NodePolicy,
    /// The node's own directory, resolved.
    pub state_dir: Option<PathBuf>,
    /// The admin API's token file, resolved (none without `state_dir` or
    /// `admin_token_file`: such a node does not start).
    pub admin_token_file: Option<PathBuf>,
    /// The admin server's TLS files, resolved.
    pub admin_tls: Option<AdminTls>,
    /// Checks the signatures of jobs, when `[trust]` names a runtime.
    pub verifier: Option<Arc<Verifier>>,
    /// Signs submitted jobs, when `[trust]` names a signing key; with how long they stay valid.
    pub signer: Option<(Arc<Signer>, std::time::Duration)>,
    /// How the node registers with its runtime, when it has an authentication key.
    pub membership: Option<Membership>,
}

impl Loaded {
    /// Creates the node's private directories (mode 0700): the state directory and the local
    /// roots jobs may use. Run by the node itself, not by commands that only read the
    /// configuration.
    pub fn create_dirs(&self) -> Result<()> {
        if let Some(dir) = &self.state_dir {
            create_private_dir(dir)?;
            check_private_dir(dir, "the node's `state_dir`")?;
            check_closed_dir(dir, "the node's `state_dir`")?;
            let keys = dir.join("keys");
            if keys.exists() {
                check_closed_dir(&keys, "the node's key directory")?;
            }
        }
        for root in self.policy.local_files().roots().unwrap_or_default() {
            create_private_dir(root)?;
        }
        Ok(())
    }
}

impl Loaded {
    /// Opens the channel; it can be used from any thread or event loop.
    pub async fn open_channel(&self) -> Result<Arc<dyn Channel>> {
        self.channel.open().await
    }

    /// Runs `f` with the opened channel on a runtime of its own (for the CLI).
    pub fn with_channel<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Arc<dyn Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("cannot start a runtime: {e}")))?;
        runtime.block_on(async { f(self.open_channel().await?).await })
    }
}

/// Whether every address `address` names is a loopback one.
fn is_loopback_address(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    address.to_socket_addrs().is_ok_and(|addrs| {
        let addrs: Vec<_> = addrs.collect();
        !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let config: WorkerConfig =
        toml::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
    if config.encode_threads == Some(0) {
        return Err(Error::config(format!(
            "{}: `encode_threads` must be at least 1 (leave it out for no cap)",
            path.display()
        )));
    }
    if config.max_concurrent_jobs == 0 {
        return Err(Error::config(format!(
            "{}: `max_concurrent_jobs` must be at least 1",
            path.display()
        )));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let connections_file = config.connections.as_deref().map(resolve);
    let connections = match &connections_file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                Error::io(format!("cannot read connections file {}", p.display()), e)
            })?;
            Connections::from_json(&text).map_err(|e| e.context(p.display()))?
        }
        None => Connections::default(),
    };
    let node = config.node.clone().unwrap_or_else(host_name);
    if !ferry_connectors::control::valid_job_id(&node) {
        return Err(Error::config(format!(
            "{}: `node` must be a plain name of letters, digits, `-`, `_` and `.`",
            path.display()
        )));
    }
    let channel = config
        .channel
        .resolve(&connections, base)
        .map_err(|e| e.context(format!("{}: [channel]", path.display())))?;
    let poll = channel.poll;
    let logs_dir = config.state_dir.as_deref().map(|d| logs_dir(path, d));
    let state_dir = config.state_dir.as_deref().map(resolve);
    if let Some(dir) = state_dir.as_ref().filter(|d| d.exists()) {
        // The node's logs (and, later, keys) live here: private to the service account.
        check_private_dir(dir, "the node's `state_dir`")?;
    }
    let admin_token_file = match (&config.admin_token_file, &state_dir) {
        (Some(file), _) => Some(resolve(file)),
        (None, Some(dir)) => Some(dir.join("keys").join("admin-token")),
        (None, None) => None,
    };
    let admin_tls = config.admin_tls.as_ref().map(|tls| AdminTls {
        cert: resolve(&tls.cert),
        key: resolve(&tls.key),
    });
    if admin_tls.is_none() && !is_loopback_address(&config.admin_address) {
        return Err(Error::config(format!(
            "{}: `admin_address = \"{}\"` is not a loopback address: the admin API would cross the network in clear text. Give `[admin_tls]` (cert and key files) to serve it over TLS, or bind to 127.0.0.1",
            path.display(),
            config.admin_address
        )));
    }
    let mut denied: Vec<PathBuf> = vec![path.to_path_buf()];
    denied.extend(admin_token_file.clone());
    denied.extend(admin_tls.iter().map(|t| t.key.clone()));
    denied.extend(connections_file);
    denied.extend(logs_dir.clone());
    denied.extend(state_dir.as_ref().map(|d| d.join("keys")));
    denied.extend(config.channel.local_dir(base));
    let channel_connection = config.channel.connection().map(str::to_string);
    let (verifier, signer, membership) = match &config.trust {
        None => (None, None, None),
        Some(trust) => {
            let in_file = |e: Error| e.context(format!("{}: [trust]", path.display()));
            let identity = read_identity(&resolve(&trust.runtime)).map_err(in_file)?;
            let verifier = Arc::new(Verifier::new(identity).map_err(in_file)?);
            let signer = match &trust.signing_key {
                Some(key) => Some((
                    Arc::new(
                        Signer::load(&resolve(&trust.runtime), &resolve(key)).map_err(in_file)?,
                    ),
                    trust.valid_for.map_or(DEFAULT_VALID_FOR, |v| v.0),
                )),
                None => None,
            };
            if let Some(key) = &trust.signing_key {
                denied.push(resolve(key));
            }
            let saved = state_dir.as_ref().map(|d| d.join("keys").join("auth.key"));
            let auth_key = match (&trust.auth_key_file, &trust.auth_key_env) {
                (Some(_), Some(_)) => {
                    return Err(in_file(Error::config(
                        "give `auth_key_file` or `auth_key_env`, not both",
                    )));
                }
                (Some(file), None) => Some(AuthKeySource::File(resolve(file))),
                (None, Some(var)) => Some(AuthKeySource::Env(var.clone())),
                (None, None) => saved.filter(|p| p.exists()).map(AuthKeySource::File),
            };
            if let Some(AuthKeySource::File(file)) = &auth_key {
                denied.push(file.clone());
            }
            let membership = match (auth_key, &state_dir) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(in_file(Error::config(
                        "a node that registers with an authentication key needs `state_dir`: its own key lives in state_dir/keys",
                    )));
                }
                (Some(_), Some(_)) if trust.credential_key.is_some() => {
                    return Err(in_file(Error::config(
                        "give `credential_key` (this node holds the runtime's credential key itself) or an authentication key (the node registers and the runtime grants it the key), not both",
                    )));
                }
                (Some(auth_key), Some(dir)) => Some(Membership {
                    node_key: dir.join("keys").join("node.key"),
                    auth_key,
                }),
            };
            if let Some(key) = &trust.credential_key {
                CredentialKey::load(&resolve(key))
                    .map_err(in_file)?
                    .install();
                denied.push(resolve(key));
            }
            (Some(verifier), signer, membership)
        }
    };
    let policy = config
        .policy
        .build(&PolicyContext {
            state_dir: state_dir.clone(),
            denied,
            channel_connection,
            base: base.to_path_buf(),
        })
        .map_err(|e| e.context(path.display()))?;
    Ok(Loaded {
        verifier,
        signer,
        membership,
        admin_token_file,
        admin_tls,
        state_dir,
        policy,
        logs_dir,
        config,
        node,
        channel,
        connections,
        poll,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_settings_and_their_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let config = "state_dir = \"state\"\n[log]\nlevel = \"debug\"\nformat = \"json\"\n\
                      [channel]\ntype = \"local\"\npath = \"spool\"\n";
        std::fs::write(&path, config).unwrap();
        let (log, logs) = log_settings(&path).unwrap();
        assert_eq!(
            (log.level.as_deref(), log.format),
            (Some("debug"), Some(LogFileFormat::Json))
        );
        assert_eq!(logs.unwrap(), dir.path().join("state/logs"));
        assert_eq!(
            load(&path).unwrap().logs_dir.unwrap(),
            dir.path().join("state/logs")
        );
        std::fs::write(&path, config.replace("\"json\"", "\"xml\"")).unwrap();
        let err = load(&path).err().unwrap().to_string();
        assert!(err.contains("`text` or `json`"), "{err}");
    }

    #[test]
    fn encode_threads_are_optional_and_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        let channel = "[channel]\ntype = \"local\"\npath = \"spool\"\n";
        std::fs::write(&path, channel).unwrap();
        assert_eq!(load(&path).unwrap().config.encode_threads, None);
        std::fs::write(&path, format!("encode_threads = 3\n{channel}")).unwrap();
        assert_eq!(load(&path).unwrap().config.encode_threads, Some(3));
        std::fs::write(&path, format!("encode_threads = 0\n{channel}")).unwrap();
        let err = load(&path).err().unwrap().to_string();
        assert!(err.contains("`encode_threads` must be at least 1"), "{err}");
    }
}
