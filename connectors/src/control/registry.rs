//! The one place where a node's `[channel]` table becomes a control channel: every channel
//! kind is one arm of each `match` here, so the worker and the binary name none.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::Result;
use ferry_engine::config::units::HumanDuration;
use serde::Deserialize;

use super::azure_queue::AzureQueueSettings;
use super::{AzureQueueChannel, Channel, LocalChannel};
use crate::connection::Connections;

/// Default lease timeout.
pub const DEFAULT_LEASE_TIMEOUT: HumanDuration = HumanDuration::secs(30);
/// Default runs of a job before it fails for good.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The `[channel]` table of a node's configuration.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// A spool directory on this host.
    Local {
        /// The spool directory.
        path: PathBuf,
        /// A lease not renewed for this long is taken from its node.
        #[serde(default)]
        lease_timeout: Option<HumanDuration>,
        /// Runs of a job before it fails for good.
        #[serde(default)]
        max_attempts: Option<u32>,
        /// How often the node looks for work.
        #[serde(default)]
        poll_interval: Option<HumanDuration>,
    },
    /// An Azure Storage queue, with records in a blob container of the same account.
    AzureQueue {
        /// The `azure_blob` connection (account, credentials, proxy).
        connection: String,
        /// The jobs queue (created if missing).
        queue: String,
        /// The container of reports, heartbeats and cancellation requests (must exist).
        container: String,
        /// Queue service endpoint (default `https://<account>.queue.core.windows.net`).
        #[serde(default)]
        queue_endpoint: Option<String>,
        /// The poison queue (default `<queue>-poison`).
        #[serde(default)]
        poison_queue: Option<String>,
        /// A lease not extended for this long is taken from its node.
        #[serde(default)]
        lease_timeout: Option<HumanDuration>,
        /// Runs of a job before it goes to the poison queue.
        #[serde(default)]
        max_attempts: Option<u32>,
        /// How often the node looks for work (each look is one request).
        #[serde(default)]
        poll_interval: Option<HumanDuration>,
    },
}

/// A channel ready to open, with how often a node polls it.
pub struct ChannelSpec {
    kind: ChannelKind,
    /// How often a node looks for work.
    pub poll: Duration,
}

enum ChannelKind {
    /// The spool, already open (it is a directory).
    Local(LocalChannel),
    /// The queue's settings, checked; opening talks to the service.
    AzureQueue(Box<AzureQueueSettings>),
}

impl ChannelConfig {
    /// Checks the table against `connections`; relative paths start at `base`.
    pub fn resolve(&self, connections: &Connections, base: &Path) -> Result<ChannelSpec> {
        match self {
            ChannelConfig::Local {
                path,
                lease_timeout,
                max_attempts,
                poll_interval,
            } => Ok(ChannelSpec {
                kind: ChannelKind::Local(LocalChannel::open(
                    base.join(path),
                    lease_timeout.unwrap_or(DEFAULT_LEASE_TIMEOUT).0,
                    max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
                )?),
                poll: poll_interval.map_or(Duration::from_millis(500), |p| p.0),
            }),
            ChannelConfig::AzureQueue {
                connection,
                queue,
                container,
                queue_endpoint,
                poison_queue,
                lease_timeout,
                max_attempts,
                poll_interval,
            } => Ok(ChannelSpec {
                kind: ChannelKind::AzureQueue(Box::new(AzureQueueSettings {
                    connection_name: connection.clone(),
                    connection: connections.azure_blob(connection)?.clone(),
                    queue_endpoint: queue_endpoint.clone(),
                    queue: queue.clone(),
                    poison_queue: poison_queue.clone(),
                    container: container.clone(),
                    lease_timeout: lease_timeout.unwrap_or(DEFAULT_LEASE_TIMEOUT).0,
                    max_attempts: max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1),
                })),
                poll: poll_interval.map_or(Duration::from_secs(1), |p| p.0),
            }),
        }
    }

    /// The connection the channel itself uses, which jobs may never name.
    pub fn connection(&self) -> Option<&str> {
        match self {
            ChannelConfig::Local { .. } => None,
            ChannelConfig::AzureQueue { connection, .. } => Some(connection),
        }
    }

    /// The local directory the channel keeps (a spool), which jobs may never touch.
    pub fn local_dir(&self, base: &Path) -> Option<PathBuf> {
        match self {
            ChannelConfig::Local { path, .. } => Some(base.join(path)),
            ChannelConfig::AzureQueue { .. } => None,
        }
    }
}

impl ChannelSpec {
    /// Opens the channel; it can be used from any thread or event loop (remote channels
    /// make their requests on a runtime of their own).
    pub async fn open(&self) -> Result<Arc<dyn Channel>> {
        match &self.kind {
            ChannelKind::Local(local) => Ok(Arc::new(local.clone())),
            ChannelKind::AzureQueue(settings) => Ok(Arc::new(
                AzureQueueChannel::open((**settings).clone()).await?,
            )),
        }
    }
}
