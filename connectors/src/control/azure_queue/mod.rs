//! The `azure_queue` control channel: jobs are messages of an Azure Storage queue, and the
//! channel's records live in a blob container of the same account.
//!
//! ```text
//! queue <queue>                  one message per job (its envelope as JSON)
//! queue <queue>-poison           messages that cannot run: not a job, or out of attempts
//! container/<queue>/reports/<id>.json   every finished job's record, whatever the outcome
//! container/<queue>/nodes/<node>.json   each node's heartbeat and load
//! container/<queue>/registrations/<node>.json  a node's registration (see `membership`)
//! container/<queue>/grants/<node>.json   the runtime's answer to it
//! container/<queue>/cancel/<id>         a cancellation request
//! ```
//!
//! A lease is the message made invisible for `lease_timeout` when a node receives it; the
//! node extends it (update message) while the job runs and deletes the message once the
//! job's record is written. A node that dies stops extending, the message becomes visible
//! again and another node receives it with a higher dequeue count. A message received more
//! than `max_attempts` times (runs handed back by a draining node do not count) goes to the
//! poison queue with its last error, and its job ends with a failed record. A message that
//! is not a job also goes to the poison queue, with a failed record, and is not retried.
//!
//! A message holds either an envelope (`{"id": ..., "job": {...}}`, as `ferry jobs submit`
//! sends) or a bare job file, whose id is then the message id; base64-encoded text (as some
//! SDKs send by default) is accepted too.
//!
//! The queue client is the official `azure_storage_queue` SDK. Authentication follows the
//! `azure_blob` connection the channel names: a SAS token (an account SAS for the queue and
//! blob services), the shared key (ferry signs a short-lived account SAS for the queue
//! service with it; the key never leaves the node), or Microsoft Entra ID (service principal
//! or managed identity) over HTTPS.

mod envelope;
mod errors;
mod http;
mod sas;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Transport, Url};
use azure_storage_queue::models::QueueClientGetPropertiesResultHeaders;
use azure_storage_queue::models::{
    QueueClientPeekMessagesOptions, QueueClientReceiveMessagesOptions,
    QueueClientUpdateMessageOptions,
};
use azure_storage_queue::{QueueClient, QueueClientOptions};
use ferry_engine::{Error, Result};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use self::envelope::{envelope_of, message_body, to_json};
use self::errors::{blob_error, lease_gone, queue_error, status_of};
pub use self::http::QUEUE_REQUEST_TIMEOUT;
use self::http::http_client;
use self::sas::{account_sas, redact};
use super::{
    ChannelQueries, ControlChannel, Envelope, FinishedJob, JobPhase, JobState, Leased, NodeInfo,
    RecordKind, check_record_name, now_ms,
};
use crate::azure_blob::{AzureAuth, AzureBlobConnection};

/// Messages the queue service returns per receive at most.
const MAX_RECEIVE: usize = 32;
/// Reports `jobs` reads at most.
const JOBS_REPORTS: usize = 200;
/// How long a list of cancellation requests is reused.
const CANCEL_LIST_TTL: Duration = Duration::from_secs(2);
/// Lifetime of the SAS ferry signs with a shared key, and when it is renewed.
const SAS_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const SAS_RENEW_AFTER: Duration = Duration::from_secs(6 * 3600);
/// Settings of an `azure_queue` channel.
#[derive(Debug, Clone)]
pub struct AzureQueueSettings {
    /// The name of the `azure_blob` connection (for messages).
    pub connection_name: String,
    /// The connection: account, credentials, proxy.
    pub connection: AzureBlobConnection,
    /// Queue service endpoint (default `https://<account>.queue.core.windows.net`).
    pub queue_endpoint: Option<String>,
    /// The jobs queue.
    pub queue: String,
    /// The poison queue (default `<queue>-poison`).
    pub poison_queue: Option<String>,
    /// The container of reports, heartbeats and cancellation requests.
    pub container: String,
    /// A lease not renewed for this long is taken from its node.
    pub lease_timeout: Duration,
    /// Runs of a job before it fails for good.
    pub max_attempts: u32,
}

/// How requests to the queue service are authorised.
enum QueueAuth {
    /// A SAS token in every URL.
    Sas(zeroize::Zeroizing<String>),
    /// An account SAS ferry signs with the shared key, renewed before it expires.
    SharedKey(zeroize::Zeroizing<String>),
    /// A Microsoft Entra ID token.
    Token(Arc<dyn azure_core::credentials::TokenCredential>),
}

struct Clients {
    jobs: Arc<QueueClient>,
    poison: Arc<QueueClient>,
    made: Instant,
}

/// A lease this node holds.
struct Lease {
    message_id: String,
    pop_receipt: String,
    envelope: Option<Envelope>,
    /// Set for a message that cannot run: its text and why, for the poison queue.
    poison: Option<(String, String)>,
}

/// The `azure_queue` channel.
pub struct AzureQueueChannel {
    settings: AzureQueueSettings,
    jobs_url: Url,
    poison_url: Url,
    auth: QueueAuth,
    http: Arc<dyn azure_core::http::HttpClient>,
    clients: Mutex<Clients>,
    store: Arc<dyn ObjectStore>,
    leases: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Lease>>>>,
    cancel_list: tokio::sync::Mutex<(Option<Instant>, HashSet<String>)>,
}

impl AzureQueueChannel {
    /// Opens the channel: checks the settings, creates the two queues if they are missing,
    /// and checks that the container answers.
    pub async fn open(settings: AzureQueueSettings) -> Result<Self> {
        crate::tls::install_crypto_provider();
        let name = settings.connection_name.clone();
        let conn = &settings.connection;
        for queue in [Some(&settings.queue), settings.poison_queue.as_ref()]
            .into_iter()
            .flatten()
        {
            crate::azure_blob::check_storage_name(queue, "queue")?;
        }
        let endpoint = match &settings.queue_endpoint {
            Some(e) => {
                let probe = AzureBlobConnection {
                    endpoint: Some(e.clone()),
                    ..conn.clone()
                };
                probe.check().map_err(|e| e.context("`queue_endpoint`"))?;
                e.trim_end_matches('/').to_string()
            }
            None => format!("https://{}.queue.core.windows.net", conn.account),
        };
        let url_of = |queue: &str| {
            Url::parse(&format!("{endpoint}/{queue}"))
                .map_err(|e| Error::config(format!("`queue_endpoint` {endpoint}: {e}")))
        };
        let poison = settings
            .poison_queue
            .clone()
            .unwrap_or_else(|| format!("{}-poison", settings.queue));
        let (jobs_url, poison_url) = (url_of(&settings.queue)?, url_of(&poison)?);
        let in_conn = |e: Error| e.context(format!("connection `{name}`"));
        let auth = match &conn.auth {
            AzureAuth::Sas { token } => QueueAuth::Sas(zeroize::Zeroizing::new(
                token
                    .expose()
                    .map_err(in_conn)?
                    .trim_start_matches('?')
                    .to_string(),
            )),
            AzureAuth::SharedKey { key } => QueueAuth::SharedKey(key.expose().map_err(in_conn)?),
            AzureAuth::ServicePrincipal {
                tenant_id,
                client_id,
                client_secret,
            } => QueueAuth::Token(
                azure_identity::ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    client_secret.expose().map_err(in_conn)?.to_string().into(),
                    None,
                )
                .map_err(|e| in_conn(Error::config(format!("service principal: {e}"))))?,
            ),
            AzureAuth::ManagedIdentity { client_id } => QueueAuth::Token(
                azure_identity::ManagedIdentityCredential::new(Some(
                    azure_identity::ManagedIdentityCredentialOptions {
                        user_assigned_id: client_id
                            .clone()
                            .map(azure_identity::UserAssignedId::ClientId),
                        ..Default::default()
                    },
                ))
                .map_err(|e| in_conn(Error::config(format!("managed identity: {e}"))))?,
            ),
        };
        let http = http_client(conn, &name)?;
        // The records' store makes its requests on the channel's I/O runtime too.
        let connector = object_store::client::SpawnedReqwestConnector::new(super::io_handle()?);
        let store = conn.store_with(&name, &settings.container, Some(connector))?;
        let clients = make_clients(&auth, &http, &jobs_url, &poison_url, conn)?;
        let channel = AzureQueueChannel {
            jobs_url,
            poison_url,
            auth,
            http,
            clients: Mutex::new(clients),
            store,
            leases: Mutex::default(),
            cancel_list: tokio::sync::Mutex::default(),
            settings,
        };
        channel.ensure_queues().await?;
        // The container must exist (ferry does not create containers).
        channel
            .store
            .list_with_delimiter(Some(&ObjectPath::from(channel.key("nodes", ""))))
            .await
            .map_err(|e| {
                blob_error(
                    &format!("channel container `{}`:", channel.settings.container),
                    &channel.key("nodes", ""),
                    e,
                )
            })?;
        Ok(channel)
    }

    /// The clients, signed anew when a SAS ferry signed gets old.
    fn clients(&self) -> Result<(Arc<QueueClient>, Arc<QueueClient>)> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| Error::internal("queue clients lock poisoned"))?;
        if matches!(self.auth, QueueAuth::SharedKey(_)) && clients.made.elapsed() > SAS_RENEW_AFTER
        {
            *clients = make_clients(
                &self.auth,
                &self.http,
                &self.jobs_url,
                &self.poison_url,
                &self.settings.connection,
            )?;
        }
        Ok((clients.jobs.clone(), clients.poison.clone()))
    }

    fn jobs_queue(&self) -> Result<Arc<QueueClient>> {
        self.clients().map(|c| c.0)
    }

    async fn ensure_queues(&self) -> Result<()> {
        let (jobs, poison) = self.clients()?;
        for (client, url) in [(jobs, &self.jobs_url), (poison, &self.poison_url)] {
            let what = format!("queue {}", url.path());
            if client.exists().await.map_err(|e| queue_error(&what, e))? {
                continue;
            }
            match client.create(None).await {
                Ok(_) => tracing::info!(queue = %url.path(), "queue created"),
                // Another node created it meanwhile.
                Err(e) if status_of(&e) == Some(409) => {}
                Err(e) => return Err(queue_error(&format!("cannot create {what}"), e)),
            }
        }
        Ok(())
    }

    /// The blob name of record `name` of `kind` (reports, nodes, cancel): under the queue's
    /// name, so one container can serve several runtimes.
    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.settings.queue)
    }

    /// The blob name of job `id`'s record.
    fn report_key(&self, id: &str) -> String {
        self.key("reports", &format!("{id}.json"))
    }

    fn lease_secs(&self) -> i32 {
        self.settings
            .lease_timeout
            .as_secs()
            .clamp(1, 7 * 24 * 3600) as i32
    }

    fn lease_of(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Lease>>> {
        self.leases.lock().ok().and_then(|l| l.get(id).cloned())
    }

    fn forget(&self, id: &str) {
        if let Ok(mut leases) = self.leases.lock() {
            leases.remove(id);
        }
    }

    async fn put_json<T: serde::Serialize>(&self, path: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::internal(e.to_string()))?;
        self.store
            .put(&ObjectPath::from(path), PutPayload::from(bytes))
            .await
            .map_err(|e| blob_error("write in the channel container", path, e))?;
        Ok(())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let bytes = match self.store.get(&ObjectPath::from(path)).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| blob_error("read in the channel container", path, e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(blob_error("read in the channel container", path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::invalid_input(format!("{path} in the channel container: {e}")))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix_path = ObjectPath::from(prefix);
        let mut names: Vec<String> = self
            .store
            .list(Some(&prefix_path))
            .map_ok(|meta| meta.location.filename().unwrap_or_default().to_string())
            .try_collect()
            .await
            .map_err(|e| blob_error("list in the channel container", prefix, e))?;
        names.sort();
        Ok(names)
    }

    /// Sends a message that cannot run to the poison queue, with why.
    async fn to_poison(&self, id: &str, text: &str, why: &str) -> Result<()> {
        let (_, poison) = self.clients()?;
        let body = to_json(&serde_json::json!({
            "id": id, "last_error": why, "failed_ms": now_ms(), "message": text,
        }))?;
        poison
            .send_message(message_body(body)?, None)
            .await
            .map_err(|e| queue_error("send to the poison queue", e))?;
        tracing::warn!(job = %id, error = %why, "message moved to the poison queue");
        Ok(())
    }

    async fn delete(&self, message_id: &str, pop_receipt: &str) -> Result<bool> {
        match self
            .jobs_queue()?
            .delete_message(message_id, pop_receipt, None)
            .await
        {
            Ok(_) => Ok(true),
            // The receipt is stale: the message was received again elsewhere.
            Err(e) if lease_gone(&e) => Ok(false),
            Err(e) => Err(queue_error("delete a job message", e)),
        }
    }

    /// Replaces the message's visibility timeout (and text); returns the new pop receipt,
    /// or `None` when the lease is lost.
    async fn update(
        &self,
        message_id: &str,
        pop_receipt: &str,
        visibility: i32,
        text: Option<String>,
    ) -> Result<Option<String>> {
        let options = QueueClientUpdateMessageOptions {
            queue_message: text.map(message_body).transpose()?,
            ..Default::default()
        };
        match self
            .jobs_queue()?
            .update_message(message_id, pop_receipt, visibility, Some(options))
            .await
        {
            // The new receipt is only in a header.
            Ok(response) => Ok(response
                .headers()
                .get_optional_str(&azure_core::http::headers::HeaderName::from_static(
                    "x-ms-popreceipt",
                ))
                .map(str::to_string)),
            Err(e) if lease_gone(&e) => Ok(None),
            Err(e) => Err(queue_error("extend a job's lease", e)),
        }
    }

    /// Handles one received message: a job to run, a message to report as unusable, or
    /// nothing (out of attempts, or already finished).
    async fn take(
        &self,
        node: &str,
        message_id: String,
        pop_receipt: String,
        dequeue_count: u32,
        text: String,
    ) -> Result<Option<Leased>> {
        let mut envelope = match envelope_of(&message_id, &text) {
            Ok(e) => e,
            Err(why) => {
                let lease = Lease {
                    message_id: message_id.clone(),
                    pop_receipt,
                    envelope: None,
                    poison: Some((text, why.clone())),
                };
                self.register(&message_id, lease);
                let e = Error::invalid_input(format!("message {message_id}: {why}"));
                return Ok(Some(Err((message_id, e))));
            }
        };
        let id = envelope.id.clone();
        // Its record was written but the message not deleted (its node died in between).
        if self.report(&id).await?.is_some() {
            self.delete(&message_id, &pop_receipt).await?;
            tracing::info!(job = %id, "job already finished; its message is removed");
            return Ok(None);
        }
        let attempt = dequeue_count.saturating_sub(envelope.released).max(1);
        if attempt > 1 {
            envelope.last_error = Some(format!(
                "run {} (node {}) did not finish: its node stopped renewing the lease",
                attempt - 1,
                envelope.node.as_deref().unwrap_or("unknown")
            ));
        }
        if attempt > self.settings.max_attempts {
            let why = format!(
                "job {id}: its node stopped during each of {} runs (last error: {}); not retried",
                attempt - 1,
                envelope.last_error.as_deref().unwrap_or("none")
            );
            let failed = FinishedJob::failed(&id, node, attempt - 1, &why);
            self.put_json(&self.report_key(&id), &failed).await?;
            self.forget(&id);
            self.to_poison(&id, &text, &why).await?;
            self.delete(&message_id, &pop_receipt).await?;
            return Ok(None);
        }
        envelope.attempt = attempt;
        envelope.node = Some(node.to_string());
        // Record the node in the message, so the next taker can say whose run failed.
        let Some(pop_receipt) = self
            .update(
                &message_id,
                &pop_receipt,
                self.lease_secs(),
                Some(to_json(&envelope)?),
            )
            .await?
        else {
            return Ok(None);
        };
        self.register(
            &id,
            Lease {
                message_id,
                pop_receipt,
                envelope: Some(envelope.clone()),
                poison: None,
            },
        );
        Ok(Some(Ok(envelope)))
    }

    /// Sends `text` as one message, as it is (an envelope, or a control plane's job file);
    /// returns the message id. Messages never expire: a job waits until a node takes it.
    pub async fn send_text(&self, text: &str) -> Result<String> {
        // The service takes messages of up to 64 KiB (XML-escaped).
        if text.len() > 60 * 1024 {
            return Err(Error::invalid_input(format!(
                "the job is {} KiB as JSON; a queue message holds at most 64 KiB: move long SQL into a view",
                text.len() / 1024
            )));
        }
        let options = azure_storage_queue::models::QueueClientSendMessageOptions {
            message_time_to_live: Some(-1),
            ..Default::default()
        };
        let sent = self
            .jobs_queue()?
            .send_message(message_body(text.to_string())?, Some(options))
            .await
            .map_err(|e| queue_error("submit a job", e))?
            .into_model()
            .and_then(|m| m.into_message())
            .map_err(|e| queue_error("read the submitted message", e))?;
        sent.message_id
            .ok_or_else(|| Error::store("the queue service returned no message id"))
    }

    /// The service's count of messages in the jobs queue (leased ones included; never lower
    /// than the real number).
    async fn queue_length(&self) -> Result<u64> {
        Ok(self
            .jobs_queue()?
            .get_properties(None)
            .await
            .map_err(|e| queue_error("read the queue's length", e))?
            .approximate_messages_count()
            .ok()
            .flatten()
            .map_or(u64::MAX, |n| n.max(0) as u64))
    }

    /// The queued jobs a peek shows (the next 32) and the running jobs of live nodes, by id.
    async fn unfinished(&self) -> Result<HashMap<String, JobState>> {
        let mut out: HashMap<String, JobState> = HashMap::new();
        let options = QueueClientPeekMessagesOptions {
            number_of_messages: Some(MAX_RECEIVE as i32),
            ..Default::default()
        };
        let peeked = self
            .jobs_queue()?
            .peek_messages(Some(options))
            .await
            .map_err(|e| queue_error("peek at the queued jobs", e))?
            .into_model()
            .map_err(|e| queue_error("read the queued jobs", e))?;
        for message in peeked.items.unwrap_or_default() {
            let message_id = message.message_id.unwrap_or_default();
            let text = message.message_text.unwrap_or_default();
            let (id, name, attempt) = match envelope_of(&message_id, &text) {
                Ok(e) => {
                    let count = message.dequeue_count.unwrap_or(0) as u32;
                    (
                        e.id,
                        super::job_name(&e.job),
                        count.saturating_sub(e.released),
                    )
                }
                Err(_) => (message_id, "(not a job)".to_string(), 0),
            };
            out.insert(
                id.clone(),
                JobState {
                    id,
                    state: JobPhase::Queued,
                    name,
                    node: None,
                    attempt,
                },
            );
        }
        let fresh = self.settings.lease_timeout.as_millis() as u64;
        for node in self.nodes().await? {
            if now_ms().saturating_sub(node.heartbeat_ms) > fresh {
                continue;
            }
            for job in node.running {
                out.insert(job.id.clone(), job);
            }
        }
        Ok(out)
    }

    fn register(&self, id: &str, lease: Lease) {
        if let Ok(mut leases) = self.leases.lock() {
            leases.insert(id.to_string(), Arc::new(tokio::sync::Mutex::new(lease)));
        }
    }
}

fn make_clients(
    auth: &QueueAuth,
    http: &Arc<dyn azure_core::http::HttpClient>,
    jobs: &Url,
    poison: &Url,
    conn: &AzureBlobConnection,
) -> Result<Clients> {
    let sas = match auth {
        QueueAuth::Sas(token) => Some(token.to_string()),
        QueueAuth::SharedKey(key) => Some(account_sas(
            &conn.account,
            key,
            "q",
            !conn.allow_http,
            SAS_LIFETIME,
        )?),
        QueueAuth::Token(_) => None,
    };
    let credential = match auth {
        QueueAuth::Token(c) => Some(c.clone()),
        _ => None,
    };
    let client = |url: &Url| {
        let mut url = url.clone();
        if let Some(sas) = &sas {
            url.set_query(Some(sas));
        }
        let options = QueueClientOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(http.clone())),
                // Transient failures are retried for up to 20 s; a node polls again anyway.
                retry: RetryOptions::exponential(ExponentialRetryOptions {
                    max_retries: 5,
                    max_total_elapsed: azure_core::time::Duration::seconds(20),
                    max_delay: azure_core::time::Duration::seconds(5),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        QueueClient::new(url, credential.clone(), Some(options))
            .map(Arc::new)
            .map_err(|e| {
                Error::config(format!("queue {}: {}", jobs.path(), redact(&e.to_string())))
            })
    };
    Ok(Clients {
        jobs: client(jobs)?,
        poison: client(poison)?,
        made: Instant::now(),
    })
}

#[async_trait]
impl ControlChannel for AzureQueueChannel {
    fn describe(&self) -> String {
        format!(
            "azure queue {} (records in container {})",
            self.jobs_url, self.settings.container
        )
    }

    fn lease_timeout(&self) -> Duration {
        self.settings.lease_timeout
    }

    async fn lease(&self, node: &str, max: usize) -> Result<Vec<Leased>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let options = QueueClientReceiveMessagesOptions {
            number_of_messages: Some(max.min(MAX_RECEIVE) as i32),
            visibility_timeout: Some(self.lease_secs()),
            ..Default::default()
        };
        let received = self
            .jobs_queue()?
            .receive_messages(Some(options))
            .await
            .map_err(|e| queue_error("receive jobs", e))?
            .into_model()
            .map_err(|e| queue_error("read received jobs", e))?;
        let mut leased = Vec::new();
        for message in received.items.unwrap_or_default() {
            let (Some(message_id), Some(pop_receipt)) = (message.message_id, message.pop_receipt)
            else {
                continue;
            };
            let dequeue_count = message.dequeue_count.unwrap_or(1).max(1) as u32;
            let text = message.message_text.unwrap_or_default();
            match self
                .take(node, message_id.clone(), pop_receipt, dequeue_count, text)
                .await
            {
                Ok(Some(job)) => leased.push(job),
                Ok(None) => {}
                // The message stays invisible until its timeout; it comes back then.
                Err(e) => {
                    tracing::warn!(message = %message_id, error = %e, "cannot take a job message")
                }
            }
        }
        Ok(leased)
    }

    async fn renew(&self, id: &str, _node: &str) -> Result<bool> {
        let Some(lease) = self.lease_of(id) else {
            return Ok(false);
        };
        let mut lease = lease.lock().await;
        match self
            .update(
                &lease.message_id,
                &lease.pop_receipt,
                self.lease_secs(),
                None,
            )
            .await?
        {
            Some(receipt) => {
                lease.pop_receipt = receipt;
                Ok(true)
            }
            None => {
                drop(lease);
                self.forget(id);
                Ok(false)
            }
        }
    }

    async fn complete(&self, finished: &FinishedJob) -> Result<()> {
        let id = &finished.id;
        self.put_json(&self.report_key(id), finished).await?;
        if let Some(lease) = self.lease_of(id) {
            let lease = lease.lock().await;
            if let Some((text, why)) = &lease.poison {
                self.to_poison(id, text, why).await?;
            }
            if !self.delete(&lease.message_id, &lease.pop_receipt).await? {
                tracing::warn!(job = %id, "the job's lease was lost before it finished; its record is written");
            }
            drop(lease);
            self.forget(id);
        }
        match self
            .store
            .delete(&ObjectPath::from(self.key("cancel", id)))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(blob_error(
                "remove in the channel container",
                &self.key("cancel", id),
                e,
            )),
        }
    }

    async fn release(&self, id: &str) -> Result<()> {
        let Some(lease) = self.lease_of(id) else {
            return Ok(());
        };
        let lease = lease.lock().await;
        let Some(mut envelope) = lease.envelope.clone() else {
            return Ok(());
        };
        envelope.released += 1;
        // Visible again at once, with the handed-back run not counted.
        self.update(
            &lease.message_id,
            &lease.pop_receipt,
            0,
            Some(to_json(&envelope)?),
        )
        .await?;
        drop(lease);
        self.forget(id);
        Ok(())
    }

    async fn recover_expired(&self, _node: &str) -> Result<Vec<String>> {
        // The queue service makes a message visible again when its lease expires.
        Ok(Vec::new())
    }

    async fn cancel_requested(&self, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cached = self.cancel_list.lock().await;
        if cached.0.is_none_or(|at| at.elapsed() >= CANCEL_LIST_TTL) {
            *cached = (
                Some(Instant::now()),
                self.list(&self.key("cancel", ""))
                    .await?
                    .into_iter()
                    .collect(),
            );
        }
        Ok(ids
            .iter()
            .filter(|id| cached.1.contains(*id))
            .cloned()
            .collect())
    }

    async fn node_heartbeat(&self, info: &NodeInfo) -> Result<()> {
        self.put_json(&self.key("nodes", &format!("{}.json", info.node)), info)
            .await
    }

    async fn finished(&self, id: &str) -> Result<bool> {
        Ok(ChannelQueries::report(self, id).await?.is_some())
    }

    async fn reject(&self, id: &str, why: &str) -> Result<()> {
        let Some(lease) = self.lease_of(id) else {
            return Ok(());
        };
        let lease = lease.lock().await;
        let text = match &lease.envelope {
            Some(envelope) => to_json(envelope)?,
            None => String::new(),
        };
        self.to_poison(id, &text, why).await?;
        self.delete(&lease.message_id, &lease.pop_receipt).await?;
        drop(lease);
        self.forget(id);
        Ok(())
    }

    async fn put_record(&self, kind: RecordKind, name: &str, json: &[u8]) -> Result<()> {
        check_record_name(name)?;
        let path = self.key(kind.dir(), &format!("{name}.json"));
        self.store
            .put(
                &ObjectPath::from(path.as_str()),
                PutPayload::from(json.to_vec()),
            )
            .await
            .map_err(|e| blob_error("write in the channel container", &path, e))?;
        Ok(())
    }

    async fn get_record(&self, kind: RecordKind, name: &str) -> Result<Option<Vec<u8>>> {
        check_record_name(name)?;
        let path = self.key(kind.dir(), &format!("{name}.json"));
        match self.store.get(&ObjectPath::from(path.as_str())).await {
            Ok(got) => got
                .bytes()
                .await
                .map(|b| Some(b.to_vec()))
                .map_err(|e| blob_error("read in the channel container", &path, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(blob_error("read in the channel container", &path, e)),
        }
    }

    async fn list_records(&self, kind: RecordKind) -> Result<Vec<String>> {
        let names = self.list(&self.key(kind.dir(), "")).await?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect())
    }

    async fn delete_record(&self, kind: RecordKind, name: &str) -> Result<()> {
        check_record_name(name)?;
        let path = self.key(kind.dir(), &format!("{name}.json"));
        match self.store.delete(&ObjectPath::from(path.as_str())).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(blob_error("remove in the channel container", &path, e)),
        }
    }
}

#[async_trait]
impl ChannelQueries for AzureQueueChannel {
    async fn submit_envelope(&self, envelope: Envelope) -> Result<String> {
        super::check_job_id(&envelope.id)?;
        if self.report(&envelope.id).await?.is_some() {
            return Err(Error::invalid_input(format!(
                "job id {} has a record already; a job is submitted once",
                envelope.id
            )));
        }
        self.send_text(&to_json(&envelope)?).await?;
        Ok(envelope.id)
    }

    async fn cancel(&self, id: &str) -> Result<String> {
        super::check_job_id(id)?;
        if self.report(id).await?.is_some() {
            return Err(Error::invalid_input(format!(
                "job {id} has already finished"
            )));
        }
        let known = self.unfinished().await?.remove(id);
        let what = match known {
            Some(j) if j.state == JobPhase::Running => {
                "cancellation requested; the node running it stops it".to_string()
            }
            Some(_) => "cancellation requested; the job stops as soon as a node takes it".into(),
            None => {
                // A peek shows 32 messages: with no more in the queue, the id is unknown.
                let count = self.queue_length().await?;
                if count <= MAX_RECEIVE as u64 {
                    return Err(Error::invalid_input(format!("no job {id} in the channel")));
                }
                format!(
                    "cancellation requested; job {id} is not among the next {MAX_RECEIVE} queued jobs: it stops if a node takes it"
                )
            }
        };
        self.store
            .put(
                &ObjectPath::from(self.key("cancel", id)),
                PutPayload::from_static(b""),
            )
            .await
            .map_err(|e| {
                blob_error("write in the channel container", &self.key("cancel", id), e)
            })?;
        Ok(what)
    }

    async fn report(&self, id: &str) -> Result<Option<FinishedJob>> {
        if !super::valid_job_id(id) {
            return Ok(None);
        }
        self.get_json(&self.report_key(id)).await
    }

    async fn recent_reports(&self, n: usize) -> Result<Vec<FinishedJob>> {
        let names = self.list(&self.key("reports", "")).await?;
        let newest: Vec<String> = names
            .iter()
            .rev()
            .take(n)
            .filter_map(|name| name.strip_suffix(".json").map(str::to_string))
            .collect();
        let reports: Vec<Option<FinishedJob>> = futures::stream::iter(newest)
            .map(|id| async move { self.report(&id).await })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(reports.into_iter().flatten().collect())
    }

    async fn queued(&self) -> Result<usize> {
        Ok(usize::try_from(self.queue_length().await?).unwrap_or(usize::MAX))
    }

    async fn jobs(&self) -> Result<Vec<JobState>> {
        let mut out = self.unfinished().await?;
        for finished in self.recent_reports(JOBS_REPORTS).await? {
            out.insert(
                finished.id.clone(),
                JobState {
                    id: finished.id.clone(),
                    name: finished.name(),
                    state: finished.status.into(),
                    node: Some(finished.node),
                    attempt: finished.attempt,
                },
            );
        }
        let mut jobs: Vec<JobState> = out.into_values().collect();
        jobs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(jobs)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let names = self.list(&self.key("nodes", "")).await?;
        let nodes: Vec<Option<NodeInfo>> = futures::stream::iter(names)
            .map(|name| async move { self.get_json(&self.key("nodes", &name)).await })
            .buffered(8)
            .try_collect()
            .await?;
        Ok(nodes.into_iter().flatten().collect())
    }
}
