//! A node's policy: what a job that arrives through the control channel may do on this node.
//!
//! Whoever can submit a job would otherwise own the node and every store it can reach: read
//! any file the service account can, drop any table, name the channel's own credentials. The
//! operator states what jobs may do in `[policy]` of ferry.toml; every way in (the channel,
//! `ferry jobs submit`, `POST /api/jobs`) applies [`NodePolicy::check_job`] before a job is
//! queued or run, and local paths are checked again, resolved, right before any I/O
//! ([`ferry_engine::config::LocalFiles`]). A single-machine `ferry copy` runs
//! [`NodePolicy::unrestricted`] unless it is given a policy file.
//!
//! ```toml
//! [policy]
//! local_roots = ["/srv/exchange"]      # default: state_dir/data
//! connections = ["erp", "lake"]        # default: all but the channel's own
//! max_batch_rows = 65536
//! max_parallel_copies = 16
//! max_buffer_bytes = "512MiB"
//! memory_limit = "2GiB"                # the sum over the node's running jobs
//!
//! [policy.connection.erp]
//! query = true                         # a `query` source (default true)
//! pre_copy_sql = false                 # default false
//! truncate = false                     # `mode: truncate` (default false)
//! overwrite = false                    # `mode: overwrite` drops the table (default false)
//!
//! [policy.connection.lake]
//! containers = ["raw", "curated"]      # default: any
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use ferry_engine::config::job::{MAX_BATCH_ROWS, MAX_PARALLEL_COPIES};
use ferry_engine::config::local::DEFAULT_OUTPUT_MODE;
use ferry_engine::config::{ByteSize, JobSettings, LocalFiles};
use ferry_engine::{Error, Result};
use serde::Deserialize;

use crate::job::{JobFile, SinkSpec, SourceSpec};
use crate::postgres::PostgresWriteMode;

/// Default bound on `batch_rows` on a node.
pub const DEFAULT_MAX_BATCH_ROWS: usize = 262_144;
/// Default bound on `parallel_copies` on a node.
pub const DEFAULT_MAX_PARALLEL_COPIES: usize = 32;
/// Default bound on one job's `max_buffer_bytes` on a node.
pub const DEFAULT_MAX_BUFFER_BYTES: ByteSize = ByteSize::mib(1024);
/// Default bound on the sum of `max_buffer_bytes` over a node's running jobs.
pub const DEFAULT_MEMORY_LIMIT: ByteSize = ByteSize::mib(4096);
/// Default bound on the size of one job's JSON.
pub const DEFAULT_MAX_JOB_BYTES: ByteSize = ByteSize(256 << 10);
/// Default bound on the jobs waiting in the channel when another is submitted.
pub const DEFAULT_MAX_QUEUED_JOBS: usize = 1000;

/// `[policy]` as written in ferry.toml (or a `ferry copy --policy` file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directories that jobs' local paths (file sources and sinks, staging, fault logs) must
    /// lie below, after links and `..` are resolved. Relative job paths start from the first.
    /// Default: `data/` in the node's `state_dir` (none without a `state_dir`).
    #[serde(default)]
    pub local_roots: Option<Vec<PathBuf>>,
    /// Connections jobs may name. Default: every connection of the connections file except
    /// the one the control channel uses, which jobs may never name.
    #[serde(default)]
    pub connections: Option<Vec<String>>,
    /// What jobs may do on each connection, by connection name.
    #[serde(default)]
    pub connection: BTreeMap<String, ConnectionRules>,
    /// Largest `batch_rows` a job may ask for (default 262144).
    #[serde(default)]
    pub max_batch_rows: Option<usize>,
    /// Largest `parallel_copies` (default 32).
    #[serde(default)]
    pub max_parallel_copies: Option<usize>,
    /// Largest `max_buffer_bytes` of one job (default 1GiB).
    #[serde(default)]
    pub max_buffer_bytes: Option<ByteSize>,
    /// Largest sum of `max_buffer_bytes` over the jobs running on the node at once (default
    /// 4GiB); a job that does not fit waits in the channel.
    #[serde(default)]
    pub memory_limit: Option<ByteSize>,
    /// Largest job JSON accepted (default 256KiB).
    #[serde(default)]
    pub max_job_bytes: Option<ByteSize>,
    /// Submissions are refused while this many jobs wait in the channel (default 1000).
    #[serde(default)]
    pub max_queued_jobs: Option<usize>,
    /// Mode of the files jobs create, in octal (default "0640").
    #[serde(default)]
    pub output_mode: Option<String>,
}

/// `[policy.connection.NAME]`: what jobs may do on one connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRules {
    /// A `query` source (any SELECT the connection's role may run). Default true.
    #[serde(default)]
    pub query: Option<bool>,
    /// `pre_copy_sql` on a sink (arbitrary SQL in the load's transaction). Default false.
    #[serde(default)]
    pub pre_copy_sql: Option<bool>,
    /// `mode: truncate` on a sink (empties the table). Default false.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `mode: overwrite` on a sink (drops and recreates the table). Default false.
    #[serde(default)]
    pub overwrite: Option<bool>,
    /// Containers of an `azure_blob` connection jobs may use. Default: any.
    #[serde(default)]
    pub containers: Option<Vec<String>>,
}

/// What the policy is built against: the node's own files and its channel.
#[derive(Debug, Default)]
pub struct PolicyContext {
    /// The node's state directory; `data/` below it is the default local root.
    pub state_dir: Option<PathBuf>,
    /// Paths no job may touch, even below a root (spool, keys, configuration).
    pub denied: Vec<PathBuf>,
    /// The connection the control channel uses: never a job's.
    pub channel_connection: Option<String>,
    /// Relative paths in the policy start here (the configuration file's directory).
    pub base: PathBuf,
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct NodePolicy {
    local: Arc<LocalFiles>,
    /// `None`: any connection.
    connections: Option<BTreeSet<String>>,
    channel_connection: Option<String>,
    rules: BTreeMap<String, ConnectionRules>,
    /// Whether SQL and destructive modes are allowed on connections without rules (true only
    /// when unrestricted).
    open: bool,
    limits: Limits,
}

/// The numeric bounds of a policy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest `batch_rows`.
    pub batch_rows: usize,
    /// Largest `parallel_copies`.
    pub parallel_copies: usize,
    /// Largest `max_buffer_bytes` of one job.
    pub buffer_bytes: u64,
    /// Largest sum of `max_buffer_bytes` over running jobs.
    pub memory_limit: u64,
    /// Largest job JSON.
    pub job_bytes: u64,
    /// Submissions refused while this many jobs wait.
    pub queued_jobs: usize,
}

/// Where a policy setting lives, for messages.
const SETTING: &str = "the node's ferry.toml [policy]";

impl PolicyConfig {
    /// Validates the section against the node's context.
    pub fn build(&self, ctx: &PolicyContext) -> Result<NodePolicy> {
        let roots: Vec<PathBuf> = match &self.local_roots {
            Some(roots) => roots.iter().map(|r| ctx.base.join(r)).collect(),
            None => ctx
                .state_dir
                .iter()
                .map(|d| ctx.base.join(d).join("data"))
                .collect(),
        };
        let roots = roots
            .into_iter()
            .map(|r| {
                std::path::absolute(&r).map_err(|e| {
                    Error::io(
                        format!("[policy] local_roots: cannot resolve {}", r.display()),
                        e,
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mode = match &self.output_mode {
            None => DEFAULT_OUTPUT_MODE,
            Some(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777 && m & 0o002 == 0)
                .ok_or_else(|| {
                    Error::config(format!(
                        "[policy] `output_mode` `{text}` is not an octal file mode without the world-write bit (such as \"0640\")"
                    ))
                })?,
        };
        let local = LocalFiles::restricted(&roots, &ctx.denied, "[policy] local_roots")?
            .with_output_mode(mode);
        if let (Some(allowed), Some(channel)) = (&self.connections, &ctx.channel_connection)
            && allowed.contains(channel)
        {
            return Err(Error::config(format!(
                "[policy] `connections` lists `{channel}`, the control channel's own connection: jobs may never use it; give the channel a connection of its own"
            )));
        }
        let positive = |value: Option<usize>, default: usize, hard: usize, key: &str| {
            let v = value.unwrap_or(default);
            if v == 0 || v > hard {
                return Err(Error::config(format!(
                    "[policy] `{key}` must be between 1 and {hard}"
                )));
            }
            Ok(v)
        };
        let limits = Limits {
            batch_rows: positive(
                self.max_batch_rows,
                DEFAULT_MAX_BATCH_ROWS,
                MAX_BATCH_ROWS,
                "max_batch_rows",
            )?,
            parallel_copies: positive(
                self.max_parallel_copies,
                DEFAULT_MAX_PARALLEL_COPIES,
                MAX_PARALLEL_COPIES,
                "max_parallel_copies",
            )?,
            buffer_bytes: self
                .max_buffer_bytes
                .unwrap_or(DEFAULT_MAX_BUFFER_BYTES)
                .bytes(),
            memory_limit: self.memory_limit.unwrap_or(DEFAULT_MEMORY_LIMIT).bytes(),
            job_bytes: self.max_job_bytes.unwrap_or(DEFAULT_MAX_JOB_BYTES).bytes(),
            queued_jobs: positive(
                self.max_queued_jobs,
                DEFAULT_MAX_QUEUED_JOBS,
                usize::MAX,
                "max_queued_jobs",
            )?,
        };
        if limits.buffer_bytes > limits.memory_limit {
            return Err(Error::config(
                "[policy] `max_buffer_bytes` is larger than `memory_limit`: no job could ever run",
            ));
        }
        Ok(NodePolicy {
            local: Arc::new(local),
            connections: self
                .connections
                .as_ref()
                .map(|c| c.iter().cloned().collect()),
            channel_connection: ctx.channel_connection.clone(),
            rules: self.connection.clone(),
            open: false,
            limits,
        })
    }
}

/// One use of a connection by a job, for the checks.
struct Use<'a> {
    role: &'static str,
    connection: &'a str,
    query: bool,
    pre_copy_sql: bool,
    mode: Option<PostgresWriteMode>,
    container: Option<&'a str>,
}

impl<'a> Use<'a> {
    fn plain(role: &'static str, connection: &'a str) -> Self {
        Use {
            role,
            connection,
            query: false,
            pre_copy_sql: false,
            mode: None,
            container: None,
        }
    }
}

fn uses(spec: &JobFile) -> Vec<Use<'_>> {
    let mut out = Vec::new();
    match &spec.source {
        SourceSpec::File(s) => out.extend(s.connection.as_deref().map(|c| Use::plain("source", c))),
        SourceSpec::Tpch(_) => {}
        SourceSpec::Postgres(s) => out.push(Use {
            query: s.query.is_some(),
            ..Use::plain("source", &s.connection)
        }),
        SourceSpec::AzureBlob(s) => out.push(Use {
            container: Some(&s.container),
            ..Use::plain("source", &s.connection)
        }),
        SourceSpec::Sqlserver(s) => out.push(Use {
            query: s.query.is_some(),
            ..Use::plain("source", &s.connection)
        }),
    }
    match &spec.sink {
        SinkSpec::File(s) => out.extend(s.connection.as_deref().map(|c| Use::plain("sink", c))),
        SinkSpec::Postgres(s) => out.push(Use {
            pre_copy_sql: s.pre_copy_sql.is_some(),
            mode: Some(s.mode),
            ..Use::plain("sink", &s.connection)
        }),
        SinkSpec::AzureBlob(s) => out.push(Use {
            container: Some(&s.container),
            ..Use::plain("sink", &s.connection)
        }),
        SinkSpec::Sqlserver(s) => out.push(Use {
            // The same rules bound emptying and recreating a table, whatever the store.
            mode: Some(match s.mode {
                crate::sqlserver::SqlServerWriteMode::Append => PostgresWriteMode::Append,
                crate::sqlserver::SqlServerWriteMode::Truncate => PostgresWriteMode::Truncate,
                crate::sqlserver::SqlServerWriteMode::Overwrite => PostgresWriteMode::Overwrite,
            }),
            ..Use::plain("sink", &s.connection)
        }),
    }
    if let Some(staging) = &spec.staging
        && let Some(name) = &staging.connection
    {
        out.push(Use {
            container: Some(staging.container_and_prefix().0),
            ..Use::plain("staging", name)
        });
    }
    out
}

impl NodePolicy {
    /// A policy that allows everything the process can do (a single-machine `ferry copy`).
    pub fn unrestricted() -> Self {
        NodePolicy {
            local: Arc::new(LocalFiles::unrestricted()),
            connections: None,
            channel_connection: None,
            rules: BTreeMap::new(),
            open: true,
            limits: Limits {
                batch_rows: MAX_BATCH_ROWS,
                parallel_copies: MAX_PARALLEL_COPIES,
                buffer_bytes: u64::MAX,
                memory_limit: u64::MAX,
                job_bytes: u64::MAX,
                queued_jobs: usize::MAX,
            },
        }
    }

    /// The local paths jobs may touch (goes into each job's settings).
    pub fn local_files(&self) -> Arc<LocalFiles> {
        self.local.clone()
    }

    /// The numeric bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks a parsed job against the policy (no I/O): its size, its limits, the
    /// connections it names and what it does on them. Local paths are checked when they
    /// resolve, right before I/O.
    pub fn check_job(
        &self,
        spec: &JobFile,
        settings: &JobSettings,
        job_bytes: usize,
    ) -> Result<()> {
        let job = &settings.name;
        let refuse = |what: String, setting: &str| {
            Error::forbidden(format!(
                "node policy: job {job}: {what}; an operator can allow it with `{setting}` in {SETTING}"
            ))
        };
        let limits = &self.limits;
        if job_bytes as u64 > limits.job_bytes {
            return Err(refuse(
                format!(
                    "the job is {job_bytes} bytes, over the {} allowed",
                    limits.job_bytes
                ),
                "max_job_bytes",
            ));
        }
        for (value, limit, field, setting) in [
            (
                settings.batch_rows.get() as u64,
                limits.batch_rows as u64,
                "batch_rows",
                "max_batch_rows",
            ),
            (
                settings.parallel_copies.get() as u64,
                limits.parallel_copies as u64,
                "parallel_copies",
                "max_parallel_copies",
            ),
            (
                settings.max_buffer_bytes,
                limits.buffer_bytes,
                "max_buffer_bytes",
                "max_buffer_bytes",
            ),
        ] {
            if value > limit {
                return Err(refuse(
                    format!("`{field}` is {value}, over the node's limit of {limit}"),
                    setting,
                ));
            }
        }
        for u in uses(spec) {
            self.check_use(&u, &refuse)?;
        }
        Ok(())
    }

    fn check_use(&self, u: &Use<'_>, refuse: &dyn Fn(String, &str) -> Error) -> Result<()> {
        let name = u.connection;
        if self.channel_connection.as_deref() == Some(name) {
            return Err(Error::forbidden(format!(
                "node policy: the {} names connection `{name}`, which the control channel uses; jobs may never use it",
                u.role
            )));
        }
        if let Some(allowed) = &self.connections
            && !allowed.contains(name)
        {
            return Err(refuse(
                format!(
                    "the {} names connection `{name}`, which jobs may not use",
                    u.role
                ),
                "connections",
            ));
        }
        let rules = self.rules.get(name);
        let allowed = |flag: Option<bool>, default: bool| flag.unwrap_or(self.open || default);
        let key = |field: &str| format!("connection.{name}.{field} = true");
        if u.query && !allowed(rules.and_then(|r| r.query), true) {
            return Err(refuse(
                format!("a `query` source on connection `{name}` is not allowed"),
                &key("query"),
            ));
        }
        if u.pre_copy_sql && !allowed(rules.and_then(|r| r.pre_copy_sql), false) {
            return Err(refuse(
                format!("`pre_copy_sql` on connection `{name}` is not allowed"),
                &key("pre_copy_sql"),
            ));
        }
        match u.mode {
            Some(PostgresWriteMode::Truncate)
                if !allowed(rules.and_then(|r| r.truncate), false) =>
            {
                return Err(refuse(
                    format!("`mode: truncate` on connection `{name}` is not allowed"),
                    &key("truncate"),
                ));
            }
            Some(PostgresWriteMode::Overwrite)
                if !allowed(rules.and_then(|r| r.overwrite), false) =>
            {
                return Err(refuse(
                    format!(
                        "`mode: overwrite` (drop and recreate the table) on connection `{name}` is not allowed"
                    ),
                    &key("overwrite"),
                ));
            }
            _ => {}
        }
        if let (Some(container), Some(allowed)) =
            (u.container, rules.and_then(|r| r.containers.as_ref()))
            && !allowed.iter().any(|c| c == container)
        {
            return Err(refuse(
                format!(
                    "container `{container}` of connection `{name}` is not one jobs may use ({})",
                    allowed.join(", ")
                ),
                &format!("connection.{name}.containers"),
            ));
        }
        Ok(())
    }

    /// Whether a job that holds `budget` bytes fits beside running jobs holding `held`.
    pub fn fits_in_memory(&self, held: u64, budget: u64) -> bool {
        held.saturating_add(budget) <= self.limits.memory_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> (JobFile, JobSettings, usize) {
        let (spec, settings) = crate::parse_job(json).unwrap();
        (spec, settings, json.len())
    }

    fn policy(toml_like: PolicyConfig, channel: Option<&str>) -> NodePolicy {
        let dir = std::env::temp_dir();
        toml_like
            .build(&PolicyContext {
                state_dir: Some(dir.join("ferry-policy-test-state")),
                channel_connection: channel.map(str::to_string),
                base: dir,
                ..Default::default()
            })
            .unwrap()
    }

    fn refused(p: &NodePolicy, json: &str) -> String {
        let (spec, settings, len) = job(json);
        let err = p.check_job(&spec, &settings, len).unwrap_err();
        assert_eq!(err.kind(), ferry_engine::ErrorKind::Forbidden, "{err}");
        err.to_string()
    }

    const BLOB_SINK: &str = r#"{"type": "azure_blob", "connection": "lake", "container": "raw", "path": "o/", "format": {"type": "parquet"}}"#;

    #[test]
    fn the_channel_s_connection_is_never_a_job_s() {
        let p = policy(PolicyConfig::default(), Some("control"));
        let err = refused(
            &p,
            &format!(
                r#"{{"name": "j", "source": {{"type": "tpch", "table": "nation", "scale_factor": 0.01}}, "sink": {}}}"#,
                BLOB_SINK.replace("lake", "control")
            ),
        );
        assert!(err.contains("the control channel uses"), "{err}");
        // Listing it is a configuration error, caught when the node starts.
        let listed = PolicyConfig {
            connections: Some(vec!["control".into()]),
            ..Default::default()
        };
        let err = listed
            .build(&PolicyContext {
                channel_connection: Some("control".into()),
                base: std::env::temp_dir(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("never use it"), "{err}");
    }

    #[test]
    fn containers_staging_connections_and_defaults() {
        let mut rules = BTreeMap::new();
        rules.insert(
            "lake".to_string(),
            ConnectionRules {
                containers: Some(vec!["raw".into()]),
                ..Default::default()
            },
        );
        let p = policy(
            PolicyConfig {
                connection: rules,
                ..Default::default()
            },
            None,
        );
        let ok = format!(
            r#"{{"name": "j", "source": {{"type": "tpch", "table": "nation", "scale_factor": 0.01}}, "sink": {BLOB_SINK}}}"#
        );
        let (spec, settings, len) = job(&ok);
        p.check_job(&spec, &settings, len).unwrap();
        let err = refused(&p, &ok.replace("\"raw\"", "\"curated\""));
        assert!(
            err.contains("container `curated`") && err.contains("connection.lake.containers"),
            "{err}"
        );
        // A staging area in a container the policy does not list.
        let staged = ok.replace(
            r#""sink""#,
            r#""staging": {"connection": "lake", "path": "secret/stage"}, "sink""#,
        );
        let err = refused(&p, &staged);
        assert!(err.contains("container `secret`"), "{err}");
        // Defaults: queries allowed, destructive modes and pre-copy SQL not.
        let pg = |sink_extra: &str| {
            format!(
                r#"{{"name": "j", "source": {{"type": "postgres", "connection": "db", "query": "select 1"}}, "sink": {{"type": "postgres", "connection": "db", "table": "t"{sink_extra}}}}}"#
            )
        };
        let (spec, settings, len) = job(&pg(""));
        p.check_job(&spec, &settings, len).unwrap();
        assert!(refused(&p, &pg(r#", "mode": "truncate""#)).contains("truncate"));
        assert!(refused(&p, &pg(r#", "mode": "overwrite""#)).contains("overwrite"));
        assert!(refused(&p, &pg(r#", "pre_copy_sql": "select 1""#)).contains("pre_copy_sql"));
        // Without a policy, everything the hard limits allow.
        let open = NodePolicy::unrestricted();
        let (spec, settings, len) =
            job(&pg(r#", "mode": "overwrite", "pre_copy_sql": "select 1""#));
        open.check_job(&spec, &settings, len).unwrap();
        assert!(!open.local_files().is_restricted());
    }

    #[test]
    fn bad_settings_are_refused_at_load() {
        let base = PolicyContext {
            base: std::env::temp_dir(),
            ..Default::default()
        };
        for (config, needle) in [
            (
                PolicyConfig {
                    output_mode: Some("0666".into()),
                    ..Default::default()
                },
                "world-write",
            ),
            (
                PolicyConfig {
                    output_mode: Some("rw-r-----".into()),
                    ..Default::default()
                },
                "octal",
            ),
            (
                PolicyConfig {
                    max_batch_rows: Some(0),
                    ..Default::default()
                },
                "max_batch_rows",
            ),
            (
                PolicyConfig {
                    max_buffer_bytes: Some(ByteSize::mib(512)),
                    memory_limit: Some(ByteSize::mib(256)),
                    ..Default::default()
                },
                "no job could ever run",
            ),
        ] {
            let err = config.build(&base).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
