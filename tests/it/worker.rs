//! Worker nodes sharing a control channel, as real `ferry worker` processes: the local spool,
//! and an Azure Storage queue (Azurite's queue and blob services).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_connectors::ConnectionSpec;
use ferry_connectors::control::Envelope;
use ferry_connectors::control::azure_queue::AzureQueueSettings;
use ferry_connectors::control::trust::Signer;
use ferry_connectors::control::{
    AzureQueueChannel, Channel, FinishedJob, JobPhase, JobState, LocalChannel, NodeInfo,
};
use ferry_engine::JobStatus;

use crate::support::azurite::{self, azurite};
use crate::support::{ferry, js, read_parquet, succeed};

/// The lease timeout of the Azure queue tests: long enough that a node on a loaded CI machine
/// (tests run side by side with one emulator) always extends in time.
const AZURE_LEASE: Duration = Duration::from_secs(5);

/// Which channel the nodes of a test share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    Local,
    /// Azurite; the connection authenticates with the shared key, or with a SAS token.
    Azure {
        sas: bool,
    },
}

/// A channel shared by the nodes of one test, and their configuration files.
pub(crate) struct Runtime {
    dir: tempfile::TempDir,
    kind: Kind,
    /// The Azure queue's name (empty for the local channel).
    queue: String,
    /// The `[channel]` table of every node's configuration.
    channel_toml: String,
    /// The `[policy]` table of every node's configuration: jobs may use the test's directory.
    pub(crate) policy_toml: String,
    channel: Arc<dyn Channel>,
    /// The Azure channel itself, to send raw messages as a control plane would.
    azure: Option<Arc<AzureQueueChannel>>,
    tokio: tokio::runtime::Runtime,
    /// Environment given to every node (a SAS token made for this test).
    node_env: Vec<(String, String)>,
}

/// A name part no other test of this run uses.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}{n:02x}", std::process::id())
}

impl Runtime {
    pub(crate) fn new() -> Runtime {
        Runtime::with(Kind::Local)
    }

    pub(crate) fn with(kind: Kind) -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        {
            // The nodes of a test share one admin token, which the test knows.
            use std::os::unix::fs::PermissionsExt;
            let token = dir.path().join("admin-token");
            std::fs::write(&token, ADMIN_TOKEN).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut node_env = Vec::new();
        let (channel, channel_toml, azure, queue): (Arc<dyn Channel>, String, _, _) = match kind {
            Kind::Local => (
                Arc::new(
                    LocalChannel::open(dir.path().join("spool"), Duration::from_secs(3), 3)
                        .unwrap(),
                ),
                "[channel]\ntype = \"local\"\npath = \"spool\"\nlease_timeout = \"3s\"\n\
                 max_attempts = 3\npoll_interval = \"100ms\"\n"
                    .to_string(),
                None,
                String::new(),
            ),
            Kind::Azure { sas } => {
                let az = azurite();
                // One queue and one container per test: tests run side by side.
                let unique = unique();
                let (queue, container) = (
                    format!("jobs-{unique}"),
                    az.container(&format!("control-{unique}")),
                );
                let auth = if sas {
                    format!(
                        r#"{{"type": "sas", "token": {{"env": "FERRY_IT_QUEUE_SAS_{unique}"}}}}"#
                    )
                } else {
                    format!(
                        r#"{{"type": "shared_key", "key": {{"env": "{}"}}}}"#,
                        azurite::KEY_ENV
                    )
                };
                let connection = |auth: &str| {
                    format!(
                        r#"{{"type": "azure_blob", "account": "{}", "endpoint": "{}", "allow_http": true, "auth": {auth}}}"#,
                        azurite::ACCOUNT,
                        az.endpoint()
                    )
                };
                std::fs::write(
                    dir.path().join("connections.json"),
                    format!(r#"{{"control": {}}}"#, connection(&auth)),
                )
                .unwrap();
                // The nodes read the token from their environment; the test's own client
                // (the control plane) uses the account key.
                if sas {
                    node_env.push((
                        format!("FERRY_IT_QUEUE_SAS_{unique}"),
                        az.sas_for("rwdlacup", "bq"),
                    ));
                }
                let own = connection(&format!(
                    r#"{{"type": "shared_key", "key": {{"env": "{}"}}}}"#,
                    azurite::KEY_ENV
                ));
                let settings = AzureQueueSettings {
                    connection_name: "control".into(),
                    connection: match serde_json::from_str(&own).unwrap() {
                        ConnectionSpec::AzureBlob(c) => c,
                        other => panic!("not azure_blob: {other:?}"),
                    },
                    queue_endpoint: Some(az.queue_endpoint()),
                    queue: queue.clone(),
                    poison_queue: None,
                    container: container.clone(),
                    lease_timeout: AZURE_LEASE,
                    max_attempts: 3,
                };
                let opened = tokio
                    .block_on(AzureQueueChannel::open(settings.clone()))
                    .unwrap();
                let channel = tokio.block_on(AzureQueueChannel::open(settings)).unwrap();
                let toml = format!(
                    "[channel]\ntype = \"azure_queue\"\nconnection = \"control\"\nqueue = \"{queue}\"\n\
                     container = \"{container}\"\nqueue_endpoint = \"{}\"\nlease_timeout = \"{}s\"\n\
                     max_attempts = 3\npoll_interval = \"100ms\"\n",
                    az.queue_endpoint(),
                    AZURE_LEASE.as_secs()
                );
                (Arc::new(channel), toml, Some(Arc::new(opened)), queue)
            }
        };
        Runtime {
            dir,
            kind,
            queue,
            channel_toml,
            policy_toml: "[policy]\nlocal_roots = [\".\"]\n".to_string(),
            channel,
            azure,
            tokio,
            node_env,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the configuration of node `name` and starts it.
    pub(crate) fn node(&self, name: &str, max_jobs: usize) -> Node {
        self.start_node(name, max_jobs, &self.channel_toml, "connections.json")
    }

    /// Starts node `name` reaching the Azure channel's storage through local TCP proxies on
    /// `blob` and `queue` (its other connections go direct).
    pub(crate) fn node_through(&self, name: &str, max_jobs: usize, blob: u16, queue: u16) -> Node {
        let az = azurite();
        let via = |port: u16| format!("http://127.0.0.1:{port}/{}", azurite::ACCOUNT);
        let connections = format!("connections-{name}.json");
        std::fs::write(
            self.path().join(&connections),
            std::fs::read_to_string(self.path().join("connections.json"))
                .unwrap()
                .replace(&az.endpoint(), &via(blob)),
        )
        .unwrap();
        let channel = self.channel_toml.replace(&az.queue_endpoint(), &via(queue));
        self.start_node(name, max_jobs, &channel, &connections)
    }

    fn start_node(
        &self,
        name: &str,
        max_jobs: usize,
        channel_toml: &str,
        connections_file: &str,
    ) -> Node {
        let config = self.path().join(format!("{name}.toml"));
        // Every node named `c` caps its encoding at one batch at a time (`encode_threads`), so
        // the multi-node tests also run jobs through a cap shared by a node's jobs.
        let encode = if name == "c" {
            "encode_threads = 1\n"
        } else {
            ""
        };
        let connections =
            if self.kind == Kind::Local && !self.path().join(connections_file).exists() {
                String::new()
            } else {
                format!("connections = \"{connections_file}\"\n")
            };
        std::fs::write(
            &config,
            format!(
                "node = \"{name}\"\nmax_concurrent_jobs = {max_jobs}\n{encode}grace_period = \"60s\"\n\
                 admin_address = \"127.0.0.1:0\"\nadmin_token_file = \"admin-token\"\n\
                 state_dir = \"state-{name}\"\n{connections}{channel_toml}{}",
                self.policy_toml
            ),
        )
        .unwrap();
        Node(Some(
            ferry()
                .args(["worker", "--config"])
                .arg(&config)
                .envs(self.node_env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(self.path().join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap(),
        ))
    }

    pub(crate) fn config(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}.toml"))
    }

    pub(crate) fn submit(&self, job: serde_json::Value) -> String {
        self.tokio.block_on(self.channel.submit(job)).unwrap()
    }

    pub(crate) fn report(&self, id: &str) -> Option<FinishedJob> {
        self.tokio.block_on(self.channel.report(id)).unwrap()
    }

    pub(crate) fn jobs(&self) -> Vec<JobState> {
        self.tokio.block_on(self.channel.jobs()).unwrap()
    }

    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        self.tokio.block_on(self.channel.nodes()).unwrap()
    }

    /// Puts a raw message (text) in the channel as a control plane would; returns the id its
    /// job is reported under.
    pub(crate) fn send_raw(&self, text: &str) -> String {
        match &self.azure {
            Some(azure) => self.tokio.block_on(azure.send_text(text)).unwrap(),
            None => {
                let id = format!("0000000000001-{}-raw", unique());
                std::fs::write(self.path().join(format!("spool/queue/{id}.json")), text).unwrap();
                id
            }
        }
    }

    /// Puts `envelope` in the channel exactly as given, as anyone who can write the spool or
    /// send to the queue could.
    pub(crate) fn send_envelope(&self, envelope: &Envelope) {
        let text = serde_json::to_string(envelope).unwrap();
        match &self.azure {
            Some(azure) => {
                self.tokio.block_on(azure.send_text(&text)).unwrap();
            }
            None => std::fs::write(
                self.path()
                    .join(format!("spool/queue/{}.json", envelope.id)),
                text,
            )
            .unwrap(),
        }
    }

    /// The messages of the poison queue (Azure) or the spool's rejected jobs (local).
    pub(crate) fn rejected(&self) -> Vec<String> {
        match &self.azure {
            Some(_) => {
                let az = azurite();
                let poison = url::Url::parse(&format!(
                    "{}/{}-poison?{}",
                    az.queue_endpoint(),
                    self.queue,
                    az.sas_for("rlp", "q")
                ))
                .unwrap();
                self.tokio
                    .block_on(async {
                        azure_storage_queue::QueueClient::new(poison, None, None)
                            .unwrap()
                            .peek_messages(None)
                            .await
                            .unwrap()
                            .into_model()
                            .unwrap()
                    })
                    .items
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| m.message_text)
                    .collect()
            }
            None => std::fs::read_dir(self.path().join("spool/rejected"))
                .map(|entries| {
                    entries
                        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Checks that no node's log shows the account key or a SAS signature.
    pub(crate) fn assert_no_secret_in_logs(&self) {
        let mut secrets = vec![azurite::KEY.to_string()];
        for (name, value) in std::env::vars() {
            if name.starts_with("FERRY_IT_QUEUE_SAS_") {
                let pairs: std::collections::HashMap<String, String> =
                    url::form_urlencoded::parse(value.as_bytes())
                        .into_owned()
                        .collect();
                secrets.push(pairs["sig"].clone());
                secrets
                    .push(url::form_urlencoded::byte_serialize(pairs["sig"].as_bytes()).collect());
            }
        }
        for entry in std::fs::read_dir(self.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                let log = std::fs::read_to_string(&path).unwrap();
                for secret in &secrets {
                    assert!(
                        !log.contains(secret.as_str()),
                        "a secret in {}",
                        path.display()
                    );
                }
            }
        }
    }

    /// A CSV -> Parquet job of `input` into `out`.
    pub(crate) fn job(&self, name: &str, input: &Path, out: &Path) -> serde_json::Value {
        serde_json::from_str(&format!(
            r#"{{"name": "{name}", "source": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}, "parallel_copies": 1}}"#,
            js(input),
            js(out)
        ))
        .unwrap()
    }

    /// Waits until `ids` all have reports.
    pub(crate) fn wait(&self, ids: &[String], within: Duration) -> Vec<FinishedJob> {
        let deadline = Instant::now() + within;
        loop {
            let done: Vec<FinishedJob> = ids.iter().filter_map(|id| self.report(id)).collect();
            if done.len() == ids.len() {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {} jobs finished; states: {:?}",
                done.len(),
                ids.len(),
                self.jobs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until job `id` runs on some node; returns the node.
    pub(crate) fn wait_running(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = self.jobs();
            if let Some(j) = jobs
                .iter()
                .find(|j| j.id == id && j.state == JobPhase::Running)
            {
                return j.node.clone().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never started: {jobs:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) fn write_csv(path: &Path, rows: usize) {
    let mut text = String::from("id,name,amount\n");
    for i in 0..rows {
        text.push_str(&format!("{i},name {i},{}.{:02}\n", i * 7, i % 100));
    }
    std::fs::write(path, text).unwrap();
}

pub(crate) fn rows(path: &Path) -> usize {
    read_parquet(path).iter().map(|b| b.num_rows()).sum()
}

/// A `ferry worker` process of a test, killed when dropped: a test that panics leaves no node
/// running.
pub(crate) struct Node(Option<Child>);

impl std::ops::Deref for Node {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a node's process")
    }
}

impl std::ops::DerefMut for Node {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a node's process")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take()
            && child.try_wait().ok().flatten().is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn stop(mut child: Node) -> std::process::ExitStatus {
    // SIGTERM, as a service manager stops a node.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap()
}

#[test]
fn three_nodes_run_thirty_jobs_each_once() {
    thirty_jobs_on_three_nodes(Kind::Local);
}

#[test]
fn three_nodes_run_thirty_jobs_each_once_from_an_azure_queue() {
    thirty_jobs_on_three_nodes(Kind::Azure { sas: false });
}

fn thirty_jobs_on_three_nodes(kind: Kind) {
    let rt = Runtime::with(kind);
    let input = rt.path().join("in.csv");
    write_csv(&input, 2_000);
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| rt.node(n, 2)).collect();
    // One job through the command line, the others straight into the channel.
    let first = rt.path().join("job-0.json");
    std::fs::write(
        &first,
        rt.job("job-0", &input, &rt.path().join("out/job-0.parquet"))
            .to_string(),
    )
    .unwrap();
    let submitted = succeed(
        ferry()
            .args(["jobs", "submit"])
            .arg(&first)
            .arg("--config")
            .arg(rt.config("a")),
    );
    let mut ids = vec![submitted.trim().to_string()];
    for i in 1..30 {
        let job = rt.job(
            &format!("job-{i}"),
            &input,
            &rt.path().join(format!("out/job-{i}.parquet")),
        );
        ids.push(rt.submit(job));
    }
    let done = rt.wait(&ids, Duration::from_secs(180));
    let mut used = std::collections::BTreeSet::new();
    for f in &done {
        assert_eq!(f.status, JobStatus::Succeeded, "{f:?}");
        assert_eq!(f.attempt, 1, "every job ran once: {f:?}");
        used.insert(f.node.clone());
    }
    assert!(used.len() >= 2, "the jobs spread over the nodes: {used:?}");
    for i in 0..30 {
        assert_eq!(rows(&rt.path().join(format!("out/job-{i}.parquet"))), 2_000);
    }
    let listed = succeed(ferry().args(["nodes", "--config"]).arg(rt.config("a")));
    for n in ["a", "b", "c"] {
        assert!(
            listed
                .lines()
                .any(|l| l.starts_with(n) && l.contains("online")),
            "{listed}"
        );
    }
    for node in nodes {
        assert!(stop(node).success());
    }
    let listed = succeed(
        ferry()
            .args(["jobs", "list", "--config"])
            .arg(rt.config("a")),
    );
    assert_eq!(listed.matches("succeeded").count(), 30, "{listed}");
    assert!(
        !listed.contains("queued") && !listed.contains("running"),
        "{listed}"
    );
}

#[test]
fn a_killed_node_s_job_finishes_on_another_node() {
    killed_node(Kind::Local);
}

#[test]
fn a_killed_node_s_job_finishes_on_another_node_from_an_azure_queue() {
    killed_node(Kind::Azure { sas: true });
}

fn killed_node(kind: Kind) {
    let rt = Runtime::with(kind);
    let input = rt.path().join("big.csv");
    write_csv(&input, 400_000);
    let out = rt.path().join("out/big.parquet");
    let id = rt.submit(rt.job("big", &input, &out));
    let mut a = rt.node("a", 1);
    assert_eq!(rt.wait_running(&id), "a");
    // Mid-copy, observably: the node's status shows input read, and no record yet.
    let reading = || {
        let Some(address) = rt.nodes().into_iter().find_map(|n| n.admin) else {
            return false;
        };
        let (_, body) = http(&address, "GET", "/api/status", "");
        serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|s| {
            s["running"][0]["bytes_read"]
                .as_u64()
                .is_some_and(|b| b > 0)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reading() {
        assert!(
            rt.report(&id).is_none(),
            "the job finished before it could be killed; give it more rows"
        );
        assert!(Instant::now() < deadline, "the job never started writing");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rt.report(&id).is_none(), "the job is still running");
    a.kill().unwrap(); // SIGKILL: no chance to clean up or hand the job back
    a.wait().unwrap();
    let b = rt.node("b", 1);
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(120));
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    assert_eq!((done[0].node.as_str(), done[0].attempt), ("b", 2));
    assert_eq!(rows(&out), 400_000, "exactly the right rows, no duplicates");
    let leftovers: Vec<_> = std::fs::read_dir(rt.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(leftovers, ["big.parquet"], "no partial files");
    // Node b says whose run did not finish.
    let log = std::fs::read_to_string(rt.path().join("b.log")).unwrap();
    assert!(log.contains("node a"), "{log}");
    assert!(stop(b).success());
    rt.assert_no_secret_in_logs();
}

#[test]
fn malformed_jobs_fail_once_with_a_report() {
    malformed_jobs(Kind::Local);
}

#[test]
fn malformed_jobs_fail_once_with_a_report_from_an_azure_queue() {
    malformed_jobs(Kind::Azure { sas: false });
}

fn malformed_jobs(kind: Kind) {
    let rt = Runtime::with(kind);
    let garbage = rt.send_raw("{not json");
    let invalid =
        rt.submit(serde_json::json!({"name": "invalid", "source": {"type": "nope"}, "sink": {}}));
    let node = rt.node("a", 2);
    let done = rt.wait(&[garbage, invalid], Duration::from_secs(60));
    for f in &done {
        assert_eq!((f.status, f.attempt), (JobStatus::Failed, 1), "{f:?}");
    }
    let message = |f: &FinishedJob| f.reports[0].error.as_ref().unwrap().message.clone();
    assert!(message(&done[0]).contains("JSON"), "{}", message(&done[0]));
    assert!(
        message(&done[1]).contains("invalid job"),
        "{}",
        message(&done[1])
    );
    // Not retried: with their records written, nothing of them is queued or leased, so no
    // lease can expire and bring them back.
    let jobs = rt.jobs();
    assert!(jobs.iter().all(|j| j.state == JobPhase::Failed), "{jobs:?}");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(rt.tokio.block_on(rt.channel.queued()).unwrap(), 0);
    if kind == Kind::Local {
        let leases = std::fs::read_dir(rt.path().join("spool/running"))
            .unwrap()
            .count();
        assert_eq!(leases, 0, "no lease left to expire");
    }
    assert!(stop(node).success());
}

#[test]
fn sigterm_drains_and_cancel_stops_a_job() {
    drain_and_cancel(Kind::Local);
}

#[test]
fn sigterm_drains_and_cancel_stops_a_job_from_an_azure_queue() {
    drain_and_cancel(Kind::Azure { sas: false });
}

fn drain_and_cancel(kind: Kind) {
    let rt = Runtime::with(kind);
    let input = rt.path().join("mid.csv");
    write_csv(&input, 150_000);
    let out = rt.path().join("out/mid.parquet");
    let id = rt.submit(rt.job("mid", &input, &out));
    let node = rt.node("a", 1);
    rt.wait_running(&id);
    // SIGTERM while the job runs: the node finishes it, then exits.
    let status = stop(node);
    assert!(status.success(), "{status:?}");
    let report = rt
        .report(&id)
        .expect("the job finished before the node stopped");
    assert_eq!(report.status, JobStatus::Succeeded);
    assert_eq!(rows(&out), 150_000);
    // The drained node said it left: `ferry nodes` shows it stopped at once.
    let nodes = succeed(ferry().args(["nodes", "--config"]).arg(rt.config("a")));
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("stopped")),
        "{nodes}"
    );

    // `ferry jobs cancel` stops a running job; nothing is published.
    let big = rt.path().join("big.csv");
    write_csv(&big, 2_000_000);
    let out = rt.path().join("out/cancelled.parquet");
    let id = rt.submit(rt.job("cancelled", &big, &out));
    let node = rt.node("a", 1);
    rt.wait_running(&id);
    succeed(
        ferry()
            .args(["jobs", "cancel", &id, "--config"])
            .arg(rt.config("a")),
    );
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert_eq!(done[0].status, JobStatus::Cancelled, "{:?}", done[0]);
    assert!(!out.exists());
    assert!(stop(node).success());
}

#[test]
fn with_trust_only_signed_jobs_run() {
    signed_jobs(Kind::Local);
}

#[test]
fn with_trust_only_signed_jobs_run_from_an_azure_queue() {
    signed_jobs(Kind::Azure { sas: false });
}

fn signed_jobs(kind: Kind) {
    let mut rt = Runtime::with(kind);
    succeed(
        ferry()
            .args(["runtime", "init"])
            .arg(rt.path().join("keys")),
    );
    rt.policy_toml
        .push_str("[trust]\nruntime = \"keys/runtime.json\"\n");
    let input = rt.path().join("in.csv");
    write_csv(&input, 100);
    let out = |name: &str| rt.path().join(format!("out/{name}.parquet"));
    let node = rt.node("a", 2);
    // A submitter's configuration: the node's, with the signing key.
    let submitter = std::fs::read_to_string(rt.config("a"))
        .unwrap()
        .replace("[trust]\n", "[trust]\nsigning_key = \"keys/signing.key\"\n");
    std::fs::write(rt.path().join("submitter.toml"), submitter).unwrap();
    let job_file = rt.path().join("job.json");
    std::fs::write(
        &job_file,
        rt.job("by-cli", &input, &out("by-cli")).to_string(),
    )
    .unwrap();
    let by_cli = succeed(
        ferry()
            .args(["jobs", "submit"])
            .arg(&job_file)
            .arg("--config")
            .arg(rt.path().join("submitter.toml")),
    )
    .trim()
    .to_string();
    // Without the signing key, the command line refuses to submit.
    let refused = ferry()
        .args(["jobs", "submit"])
        .arg(&job_file)
        .arg("--config")
        .arg(rt.config("a"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("signing_key"));

    // Jobs put in the channel directly, as whoever can write it could.
    let signer = Signer::load(
        &rt.path().join("keys/runtime.json"),
        &rt.path().join("keys/signing.key"),
    )
    .unwrap();
    let envelope = |name: &str| {
        Envelope::new(
            format!("0000000000002-{}-{name}", unique()),
            rt.job(name, &input, &out(name)),
        )
    };
    let mut good = envelope("good");
    signer.sign(&mut good, Duration::from_secs(3600));
    let unsigned = envelope("unsigned");
    let mut tampered = envelope("tampered");
    signer.sign(&mut tampered, Duration::from_secs(3600));
    tampered.job["sink"]["path"] = serde_json::json!(out("elsewhere"));
    let mut expired = envelope("expired");
    signer.sign(&mut expired, Duration::ZERO);
    std::thread::sleep(Duration::from_millis(5));
    for e in [&good, &unsigned, &tampered, &expired] {
        rt.send_envelope(e);
    }
    let ids: Vec<String> = [&good, &unsigned, &tampered, &expired]
        .iter()
        .map(|e| e.id.clone())
        .chain([by_cli.clone()])
        .collect();
    let done = rt.wait(&ids, Duration::from_secs(60));
    let status = |id: &str| done.iter().find(|f| f.id == id).unwrap();
    assert_eq!(
        status(&by_cli).status,
        JobStatus::Succeeded,
        "{:?}",
        status(&by_cli)
    );
    assert_eq!(status(&good.id).status, JobStatus::Succeeded);
    for (e, why) in [
        (&unsigned, "not signed"),
        (&tampered, "does not match"),
        (&expired, "expired"),
    ] {
        let f = status(&e.id);
        assert_eq!(f.status, JobStatus::Failed, "{f:?}");
        let message = &f.reports[0].error.as_ref().unwrap().message;
        assert!(
            message.contains(why) && message.contains("does not run"),
            "{message}"
        );
    }
    assert!(out("by-cli").exists() && out("good").exists());
    for never in ["unsigned", "tampered", "expired", "elsewhere"] {
        assert!(!out(never).exists(), "{never} wrote output");
    }

    // The good job, sent again exactly as it was: a replay, rejected; its record stays.
    let record = rt.report(&good.id).unwrap();
    rt.send_envelope(&good);
    let deadline = Instant::now() + Duration::from_secs(60);
    let handled = || match kind {
        Kind::Local => rt.rejected().iter().any(|r| r.contains("replayed")),
        // The queue drops a message whose job has a record as it receives it (a replay, or a
        // node that died between writing the record and deleting the message).
        Kind::Azure { .. } => {
            rt.tokio.block_on(rt.channel.queued()).unwrap() == 0
                && rt.nodes().iter().all(|n| n.running.is_empty())
        }
    };
    while !handled() {
        assert!(Instant::now() < deadline, "the replay was not dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rt.report(&good.id).unwrap();
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&record).unwrap(),
        "the replay left the job's record as it was"
    );
    assert!(stop(node).success());
}

/// `secret` sealed to the runtime in `rt`'s `keys/`, by the command line.
fn seal(rt: &Runtime, secret: &str) -> serde_json::Value {
    use std::io::Write;
    let mut child = ferry()
        .args(["credential", "encrypt", "--runtime"])
        .arg(rt.path().join("keys/runtime.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    write!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn encrypted_credentials_run_on_any_node_and_the_password_shows_nowhere() {
    let pg = crate::support::postgres::server();
    let password = crate::support::postgres::PASSWORD;
    let wrong = "Wr0ng-but-secret-Pw";
    let db = pg.database("encrypted_nodes");
    pg.sql(
        &db,
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 500) g",
    );
    let mut rt = Runtime::new();
    succeed(
        ferry()
            .args(["runtime", "init"])
            .arg(rt.path().join("keys")),
    );
    rt.policy_toml.push_str(
        "[policy.connection.pg]\nquery = true\n[policy.connection.badpw]\nquery = true\n\
         [trust]\nruntime = \"keys/runtime.json\"\ncredential_key = \"keys/credential.key\"\n",
    );
    let connection = |user_password: serde_json::Value| {
        serde_json::json!({"type": "postgres", "host": "127.0.0.1", "port": pg.port,
            "database": db, "sslmode": "disable", "user": "ferry_pw", "password": user_password})
    };
    let connections = serde_json::json!({
        "pg": connection(seal(&rt, password)),
        "badpw": connection(seal(&rt, wrong)),
    });
    let text = connections.to_string();
    assert!(!text.contains(password) && !text.contains(wrong));
    std::fs::write(rt.path().join("connections.json"), text).unwrap();
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| rt.node(n, 1)).collect();
    let submitter = std::fs::read_to_string(rt.config("a"))
        .unwrap()
        .replace("[trust]\n", "[trust]\nsigning_key = \"keys/signing.key\"\n");
    std::fs::write(rt.path().join("submitter.toml"), submitter).unwrap();
    let submit = |name: &str, connection: &str, query: &str| {
        let job = serde_json::json!({"name": name,
            "source": {"type": "postgres", "connection": connection, "query": query},
            "sink": {"type": "file", "path": rt.path().join(format!("out/{name}.parquet")),
                     "format": {"type": "parquet"}},
            "retry": {"max_attempts": 1}});
        let file = rt.path().join(format!("{name}.json"));
        std::fs::write(&file, job.to_string()).unwrap();
        succeed(
            ferry()
                .args(["jobs", "submit"])
                .arg(&file)
                .arg("--config")
                .arg(rt.path().join("submitter.toml")),
        )
        .trim()
        .to_string()
    };
    let ok = submit("ok", "pg", "SELECT id FROM t");
    let failing = submit("failing", "pg", "SELECT id FROM missing_table");
    let refused = submit("refused", "badpw", "SELECT id FROM t");
    let done = rt.wait(
        &[ok.clone(), failing.clone(), refused.clone()],
        Duration::from_secs(90),
    );
    let by_id = |id: &str| done.iter().find(|f| f.id == id).unwrap();
    assert_eq!(by_id(&ok).status, JobStatus::Succeeded, "{:?}", by_id(&ok));
    assert_eq!(rows(&rt.path().join("out/ok.parquet")), 500);
    assert!(["a", "b", "c"].contains(&by_id(&ok).node.as_str()));
    assert_eq!(by_id(&failing).status, JobStatus::Failed);
    let auth = by_id(&refused);
    assert_eq!(auth.status, JobStatus::Failed);
    assert!(
        auth.reports[0]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("password authentication failed"),
        "{auth:?}"
    );

    // Everything a user or an attacker could read: logs, records, API answers, metrics and
    // the diagnostics archive.
    let mut seen = String::new();
    for f in &done {
        seen.push_str(&serde_json::to_string(f).unwrap());
    }
    // Every node's answers: the jobs ran on whichever nodes leased them.
    for name in ["a", "b", "c"] {
        let address = published_admin(&rt, name);
        for path in ["/api/status", "/api/jobs", "/metrics"] {
            seen.push_str(&http(&address, "GET", path, "").1);
        }
    }
    for node in nodes {
        assert!(stop(node).success());
    }
    for entry in std::fs::read_dir(rt.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            seen.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    let archive = rt.path().join("diag.tar.gz");
    succeed(
        ferry()
            .args(["diagnostics", "--config"])
            .arg(rt.config("a"))
            .arg("--output")
            .arg(&archive),
    );
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
    for entry in tar::Archive::new(gz).entries().unwrap() {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry.unwrap(), &mut bytes).unwrap();
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    assert!(seen.contains("missing_table") && seen.contains("ferry_jobs_total"));
    assert!(!seen.contains(password), "the password shows somewhere");
    assert!(!seen.contains(wrong), "the wrong password shows somewhere");
}

#[test]
fn registered_nodes_receive_the_credential_key_and_lose_it_when_cut_off() {
    membership(Kind::Local);
}

#[test]
fn registered_nodes_receive_the_credential_key_and_lose_it_when_cut_off_on_an_azure_queue() {
    membership(Kind::Azure { sas: false });
}

/// Writes `text` as a private (0600) file.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Nodes join with the runtime's authentication key and get its credential key from the
/// runtime through the channel (no node is given credential.key): a forged key gets
/// nothing, a rotated key cuts nodes off until they register again, a removed node takes no
/// more work.
fn membership(kind: Kind) {
    let pg = crate::support::postgres::server();
    let password = crate::support::postgres::PASSWORD;
    let db = pg.database(&format!("membership_{}", unique()));
    pg.sql(
        &db,
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 300) g",
    );
    let mut rt = Runtime::with(kind);
    let init = succeed(
        ferry()
            .args(["runtime", "init"])
            .arg(rt.path().join("keys")),
    );
    let auth = std::fs::read_to_string(rt.path().join("keys/auth.key")).unwrap();
    assert!(
        init.contains(auth.trim()),
        "init prints the authentication key once"
    );
    // A forged key: the right runtime, another secret.
    let runtime_id = auth.split(':').nth(1).unwrap();
    let forged = format!("ferry-auth1:{runtime_id}:{}\n", "A".repeat(43));
    let mut connections: serde_json::Value = match kind {
        Kind::Local => serde_json::json!({}),
        Kind::Azure { .. } => serde_json::from_str(
            &std::fs::read_to_string(rt.path().join("connections.json")).unwrap(),
        )
        .unwrap(),
    };
    connections["pg"] = serde_json::json!({"type": "postgres", "host": "127.0.0.1",
        "port": pg.port, "database": db, "sslmode": "disable", "user": "ferry_pw",
        "password": seal(&rt, password)});
    std::fs::write(rt.path().join("connections.json"), connections.to_string()).unwrap();
    let policy = rt.policy_toml.clone();
    let mut nodes = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let key = if name == "d" {
            forged.as_str()
        } else {
            auth.as_str()
        };
        write_private(&rt.path().join(format!("auth-{name}.key")), key);
        rt.policy_toml = format!(
            "{policy}[policy.connection.pg]\nquery = true\n[trust]\nruntime = \"keys/runtime.json\"\n\
             auth_key_file = \"auth-{name}.key\"\n"
        );
        nodes.push(rt.node(name, 1));
    }
    let submitter = rt.path().join("submitter.toml");
    std::fs::write(
        &submitter,
        std::fs::read_to_string(rt.config("a")).unwrap().replace(
            "auth_key_file = \"auth-a.key\"\n",
            "signing_key = \"keys/signing.key\"\n",
        ),
    )
    .unwrap();
    let sync = || {
        succeed(
            ferry()
                .args(["runtime", "sync"])
                .arg(rt.path().join("keys"))
                .arg("--config")
                .arg(&submitter),
        )
    };
    // Nodes register as they start; the runtime answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers = String::new();
    while !["a:", "b:", "c:", "d:"]
        .iter()
        .all(|n| answers.lines().any(|l| l.starts_with(n)))
    {
        assert!(
            Instant::now() < deadline,
            "not every node registered: {answers}"
        );
        answers.push_str(&sync());
        std::thread::sleep(Duration::from_millis(200));
    }
    for node in ["a", "b", "c"] {
        assert!(answers.contains(&format!("{node}: granted")), "{answers}");
    }
    assert!(
        answers
            .contains("d: refused: it was not made with the runtime's current authentication key"),
        "{answers}"
    );
    let submit = |name: &str| {
        let job = serde_json::json!({"name": name,
            "source": {"type": "postgres", "connection": "pg", "query": "SELECT id FROM t"},
            "sink": {"type": "file", "path": rt.path().join(format!("out/{name}.parquet")),
                     "format": {"type": "parquet"}},
            "retry": {"max_attempts": 1}});
        let file = rt.path().join(format!("{name}.json"));
        std::fs::write(&file, job.to_string()).unwrap();
        succeed(
            ferry()
                .args(["jobs", "submit"])
                .arg(&file)
                .arg("--config")
                .arg(&submitter),
        )
        .trim()
        .to_string()
    };
    let first: Vec<String> = (0..6).map(|i| submit(&format!("first-{i}"))).collect();
    for done in rt.wait(&first, Duration::from_secs(90)) {
        assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
        assert!(["a", "b", "c"].contains(&done.node.as_str()), "{done:?}");
    }
    assert_eq!(rows(&rt.path().join("out/first-0.parquet")), 300);
    wait_for_log(&rt, "d", "holds no grant");

    // A new authentication key: every node is cut off until it registers with it.
    succeed(
        ferry()
            .args(["runtime", "rotate-auth-key"])
            .arg(rt.path().join("keys")),
    );
    let answers = sync();
    assert_eq!(answers.matches("refused").count(), 4, "{answers}");
    let new_auth = std::fs::read_to_string(rt.path().join("keys/auth.key")).unwrap();
    assert_ne!(new_auth, auth);
    write_private(&rt.path().join("auth-a.key"), &new_auth);
    let registered = succeed(
        ferry()
            .args(["node", "register", "--config"])
            .arg(rt.config("a")),
    );
    assert!(
        registered.contains("waiting for the runtime's grant"),
        "{registered}"
    );
    let answers = sync();
    assert!(answers.contains("a: granted"), "{answers}");
    assert_eq!(answers.matches("refused").count(), 3, "{answers}");
    let second: Vec<String> = (0..3).map(|i| submit(&format!("second-{i}"))).collect();
    for done in rt.wait(&second, Duration::from_secs(90)) {
        assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
        assert_eq!(
            done.node, "a",
            "only the node registered with the new key works"
        );
    }

    // An operator removes node a: no node may work now.
    succeed(
        ferry()
            .args(["node", "remove", "a", "--config"])
            .arg(&submitter),
    );
    sync();
    wait_for_log(&rt, "a", "removed from the runtime by an operator");
    let third = submit("third");
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        rt.report(&third).is_none(),
        "a job ran with no registered node"
    );
    let state = rt.jobs().into_iter().find(|j| j.id == third).unwrap();
    assert_eq!(state.state, JobPhase::Queued, "{state:?}");
    for node in nodes {
        assert!(stop(node).success());
    }
    // No key file was handed to a node: each holds its own node key, made at its start.
    for name in ["a", "b", "c", "d"] {
        assert!(
            rt.path()
                .join(format!("state-{name}/keys/node.key"))
                .exists()
        );
        assert!(
            !rt.path()
                .join(format!("state-{name}/keys/credential.key"))
                .exists()
        );
    }
    let mut seen = String::new();
    for entry in std::fs::read_dir(rt.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            seen.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    let credential = std::fs::read_to_string(rt.path().join("keys/credential.key")).unwrap();
    assert!(!seen.contains(password) && !seen.contains(credential.trim()));
    assert!(!seen.contains(auth.trim()) && !seen.contains(new_auth.trim()));
}

/// Adds the test PostgreSQL server as connection `pg` to the nodes' connections file.
pub(crate) fn add_postgres(rt: &Runtime) {
    let pg = crate::support::postgres::server();
    let connections = rt.path().join("connections.json");
    let mut all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&connections).unwrap()).unwrap();
    let with_pg: serde_json::Value = serde_json::from_str(&pg.connections("postgres", "")).unwrap();
    all["pg"] = with_pg["pg"].clone();
    std::fs::write(&connections, all.to_string()).unwrap();
}

/// A job that waits `secs` at PostgreSQL, then writes 1,000 rows to `out`.
fn slow_job(secs: u32, out: &Path) -> serde_json::Value {
    serde_json::json!({
        "name": "slow",
        "source": {"type": "postgres", "connection": "pg", "snapshot": false,
                   "query": format!("select g from generate_series(1, 1000) g, (select pg_sleep({secs})) s")},
        "sink": {"type": "file", "path": out, "format": {"type": "parquet"}},
        "parallel_copies": 1
    })
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

fn wait_for_log(rt: &Runtime, node: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = rt.path().join(format!("{node}.log"));
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(Instant::now() < deadline, "{node} never logged {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_azure_queue_lease_is_extended_while_a_long_job_runs() {
    let rt = Runtime::with(Kind::Azure { sas: false });
    add_postgres(&rt);
    // It waits 12 s, more than twice the lease timeout, before its rows come.
    let out = rt.path().join("out/slow.parquet");
    let id = rt.submit(slow_job(12, &out));
    let nodes = [rt.node("a", 1), rt.node("b", 1)];
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(90));
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    assert_eq!(
        done[0].attempt, 1,
        "the lease held: the job never went to another node"
    );
    assert_eq!(rows(&out), 1_000);
    for node in nodes {
        assert!(stop(node).success());
    }
}

#[test]
fn a_frozen_node_stops_its_job_once_another_node_took_it() {
    let rt = Runtime::with(Kind::Azure { sas: false });
    add_postgres(&rt);
    let out = rt.path().join("out/slow.parquet");
    let id = rt.submit(slow_job(6, &out));
    let a = rt.node("a", 1);
    assert_eq!(rt.wait_running(&id), "a");
    // Node a freezes (a long GC pause, a suspended VM): its lease expires, b takes the job.
    signal(&a, "STOP");
    let b = rt.node("b", 1);
    wait_for_log(&rt, "b", "job leased");
    signal(&a, "CONT");
    // Awake again, a finds its lease gone and stops the job without reporting it.
    wait_for_log(&rt, "a", "lease was lost");
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(90));
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    assert_eq!((done[0].node.as_str(), done[0].attempt), ("b", 2));
    assert_eq!(rows(&out), 1_000);
    for node in [a, b] {
        assert!(stop(node).success());
    }
}

#[test]
fn a_node_cut_off_from_its_channel_publishes_nothing_and_comes_back() {
    use crate::support::proxy::Proxy;
    let rt = Runtime::with(Kind::Azure { sas: false });
    add_postgres(&rt);
    let az = azurite();
    let blob = Proxy::start(([127, 0, 0, 1], az.blob_port).into());
    let queue = Proxy::start(([127, 0, 0, 1], az.queue_port).into());
    let out = rt.path().join("out/slow.parquet");
    let id = rt.submit(slow_job(8, &out));
    let a = rt.node_through("a", 1, blob.port(), queue.port());
    assert_eq!(rt.wait_running(&id), "a");
    // The network between node a and its channel goes silent (a partition, a dead proxy):
    // a cannot renew its lease, which expires; node b, which still reaches the channel,
    // takes the job and publishes it.
    blob.stall_after(0, false);
    queue.stall_after(0, false);
    let b = rt.node("b", 1);
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(120));
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    assert_eq!((done[0].node.as_str(), done[0].attempt), ("b", 2));
    assert_eq!(rows(&out), 1_000);
    // Node a finished its copy meanwhile and asked to publish: it could not renew the lease,
    // so it published nothing.
    wait_for_log(&rt, "a", "nothing published");
    // The channel comes back: a takes work again, and the job's record stays b's.
    blob.heal();
    queue.heal();
    assert!(stop(b).success());
    let out2 = rt.path().join("out/after.parquet");
    let second = rt.submit(slow_job(0, &out2));
    let done = rt.wait(std::slice::from_ref(&second), Duration::from_secs(120));
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    assert_eq!(done[0].node, "a");
    assert_eq!(rows(&out2), 1_000);
    let first = rt.report(&id).expect("the first job's record");
    assert_eq!(
        (first.status, first.node.as_str()),
        (JobStatus::Succeeded, "b")
    );
    assert!(stop(a).success());
}

#[test]
fn a_node_sweeps_the_staging_areas_it_used_for_dead_runs_of_any_job() {
    let rt = Runtime::with(Kind::Local);
    let input = rt.path().join("in.csv");
    write_csv(&input, 2_000);
    let staging = rt.path().join("staging");
    let staged = |name: &str| {
        let mut job = rt.job(name, &input, &rt.path().join(format!("out/{name}.parquet")));
        job["staging"] = serde_json::json!({ "path": staging });
        job
    };
    let node = rt.node("a", 1);
    let first = rt.submit(staged("first"));
    let done = rt.wait(std::slice::from_ref(&first), Duration::from_secs(60));
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    // Runs of other jobs in the area the node used: one died an hour ago (its marker says
    // so), one is alive, one left no marker (only its own job's next run may judge it).
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for (run, marker) in [
        ("other-5f3a", true),
        ("alive-77aa", true),
        ("nomarker-1234", false),
    ] {
        let dir = staging.join(run);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(if marker {
            "_ferry_run"
        } else {
            "part-00000.parquet"
        });
        std::fs::write(&file, "x").unwrap();
        if run != "alive-77aa" {
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
    }
    // The node sweeps after its next job (and every five minutes).
    let second = rt.submit(rt.job("plain", &input, &rt.path().join("out/plain.parquet")));
    let done = rt.wait(std::slice::from_ref(&second), Duration::from_secs(60));
    assert_eq!(done[0].status, JobStatus::Succeeded, "{:?}", done[0]);
    wait_for_log(
        &rt,
        "a",
        "housekeeping: removed the interim files of dead staged runs",
    );
    let mut left: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["alive-77aa", "nomarker-1234"]);
    assert!(stop(node).success());
}

#[test]
fn an_azure_queue_hands_back_without_counting_and_poisons_after_max_attempts() {
    let rt = Runtime::with(Kind::Azure { sas: false });
    let id = rt.submit(serde_json::json!({"name": "doomed", "source": {}, "sink": {}}));
    let lease = |node: &str| rt.tokio.block_on(rt.channel.lease(node, 4)).unwrap();
    // A draining node hands the job back: the run does not count.
    let first = lease("drainer");
    assert_eq!(first.len(), 1);
    rt.tokio.block_on(rt.channel.release(&id)).unwrap();
    let taken = lease("ghost-1").pop().unwrap().unwrap();
    assert_eq!((taken.id.as_str(), taken.attempt), (id.as_str(), 1));
    // The job comes back once the dead taker's lease expires (waited for, not slept on).
    let lease_again = |node: &str| {
        let deadline = Instant::now() + 3 * AZURE_LEASE + Duration::from_secs(10);
        loop {
            if let Some(taken) = lease(node).pop() {
                return taken;
            }
            assert!(Instant::now() < deadline, "the job never came back");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Nodes that take the job and die (never extend the lease): each run counts.
    for run in 2..=3 {
        let taken = lease_again(&format!("ghost-{run}")).unwrap();
        assert_eq!(taken.attempt, run);
        let last = taken.last_error.unwrap();
        assert!(last.contains(&format!("ghost-{}", run - 1)), "{last}");
    }
    // Out of attempts: once the last lease expires, the next taker writes a failed record
    // and moves the message to the poison queue; nothing is left to run.
    let deadline = Instant::now() + 3 * AZURE_LEASE + Duration::from_secs(10);
    while rt.report(&id).is_none() {
        assert!(
            lease("survivor").is_empty(),
            "a job out of attempts never runs"
        );
        assert!(Instant::now() < deadline, "no failed record");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(lease("survivor").is_empty());
    let report = rt.report(&id).expect("a failed record");
    assert_eq!(report.status, JobStatus::Failed);
    let message = report.reports[0].error.as_ref().unwrap().message.as_str();
    assert!(
        message.contains("3 runs") && message.contains("ghost-3"),
        "{message}"
    );
    let peeked = rt.rejected();
    assert_eq!(peeked.len(), 1);
    let text = &peeked[0];
    assert!(text.contains(&id) && text.contains("ghost-3"), "{text}");
    assert!(rt.jobs().iter().all(|j| j.state == JobPhase::Failed));
}

/// A plain HTTP/1.0 request to the node's admin server; returns (status, body).
/// The admin token of the tests' nodes.
pub(crate) const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";

/// A request to a node's admin server as an operator makes it: its own Host, the token,
/// JSON.
pub(crate) fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let headers = format!(
        "Host: {address}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\n"
    );
    http_with(address, method, path, &headers, body)
}

/// A request with exactly `headers` (each line ending in CRLF).
pub(crate) fn http_with(
    address: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn the_admin_server_shows_status_metrics_and_takes_jobs() {
    let rt = Runtime::new();
    let input = rt.path().join("in.csv");
    write_csv(&input, 600_000);
    let node = rt.node("a", 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let address = loop {
        if let Some(a) = rt.nodes().into_iter().find_map(|n| n.admin) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the node never published its admin address"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(http(&address, "GET", "/healthz", "").0, 200);
    let (status, page) = http(&address, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(page.contains("/api/status") && page.contains("<table>"));

    // Submit through the API; while it runs, the status shows it with live progress.
    let job = rt
        .job("via-api", &input, &rt.path().join("out/api.parquet"))
        .to_string();
    let (status, created) = http(&address, "POST", "/api/jobs", &job);
    assert_eq!(status, 201, "{created}");
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen_rows = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.report(&id).is_none() && Instant::now() < deadline {
        let (_, body) = http(&address, "GET", "/api/status", "");
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(s["node"], "a");
        assert_eq!(s["max_concurrent_jobs"], 2);
        if let Some(j) = s["running"].as_array().and_then(|r| r.first()) {
            assert_eq!(j["name"], "via-api");
            seen_rows.push(j["bytes_read"].as_u64().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        seen_rows.windows(2).any(|w| w[1] > w[0]),
        "progress (input bytes read) advanced while the job ran: {seen_rows:?}"
    );
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert_eq!(done[0].status, JobStatus::Succeeded);
    let (_, metrics) = http(&address, "GET", "/metrics", "");
    assert!(metrics.contains("ferry_rows_written_total"), "{metrics}");
    let (_, body) = http(&address, "GET", "/api/status", "");
    assert!(body.contains(&id), "the last reports list the job: {body}");
    // A bad job is refused with the reason; an unknown id cannot be cancelled.
    let (status, why) = http(&address, "POST", "/api/jobs", r#"{"name": "x"}"#);
    assert_eq!(status, 400, "{why}");
    assert_eq!(http(&address, "DELETE", "/api/jobs/nope", "").0, 404);
    assert!(stop(node).success());
}

#[test]
fn a_binary_copy_shows_progress_and_metrics_and_can_be_cancelled() {
    let rt = Runtime::new();
    let input = rt.path().join("files");
    std::fs::create_dir_all(&input).unwrap();
    let (files, size) = (6000usize, 32 * 1024usize);
    for i in 0..files {
        std::fs::write(
            input.join(format!("f{i:05}.bin")),
            vec![(i % 251) as u8; size],
        )
        .unwrap();
    }
    let out = rt.path().join("copies");
    let job = serde_json::json!({
        "name": "bytes",
        "source": {"type": "file", "path": format!("{}/", input.display()), "format": {"type": "binary"}},
        "sink": {"type": "file", "path": format!("{}/", out.display()), "format": {"type": "binary", "verify_md5": true}},
        "parallel_copies": 1
    });
    let node = rt.node("a", 1);
    let id = rt.submit(job);
    rt.wait_running(&id);
    let address = rt.nodes().into_iter().find_map(|n| n.admin).unwrap();
    // The status page follows the copy file by file.
    let deadline = Instant::now() + Duration::from_secs(60);
    let copied = loop {
        let (_, body) = http(&address, "GET", "/api/status", "");
        let s: serde_json::Value = serde_json::from_str(&body).unwrap();
        let written = s["running"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|j| j["rows_written"].as_u64())
            .unwrap_or(0);
        if written > 0 {
            break written;
        }
        assert!(
            rt.report(&id).is_none(),
            "the copy ended before it showed progress"
        );
        assert!(Instant::now() < deadline, "no progress shown: {body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // `ferry jobs cancel` stops it between or inside files.
    succeed(
        ferry()
            .args(["jobs", "cancel", &id, "--config"])
            .arg(rt.config("a")),
    );
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert_eq!(done[0].status, JobStatus::Cancelled, "{:?}", done[0]);
    let report = &done[0].reports[0];
    let written = report.rows_written;
    assert!(
        written >= copied && (written as usize) < files,
        "copied {written} of {files} files (at least {copied} when cancelled)"
    );
    // Every file at the destination is a whole copy; nothing half-written stays.
    let at_destination: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(at_destination.len() as u64, written, "{at_destination:?}");
    for path in &at_destination {
        assert_eq!(
            std::fs::metadata(path).unwrap().len() as usize,
            size,
            "{}",
            path.display()
        );
    }
    let (_, metrics) = http(&address, "GET", "/metrics", "");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_jobs_total{status=\"cancelled\"}")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_bytes_written_total{source=\"file\",sink=\"file\"}")),
        "{metrics}"
    );
    assert!(stop(node).success());
}

/// The admin address node `name` of `rt` publishes.
fn published_admin(rt: &Runtime, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(a) = rt
            .nodes()
            .into_iter()
            .find(|n| n.node == name && !n.stopped)
            .and_then(|n| n.admin)
        {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never published its admin address"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_admin_api_refuses_strangers_and_plain_http_off_loopback() {
    let rt = Runtime::new();
    let input = rt.path().join("in.csv");
    write_csv(&input, 10);
    let job = rt
        .job("sneaky", &input, &rt.path().join("out/sneaky.parquet"))
        .to_string();
    let node = rt.node("a", 1);
    let address = published_admin(&rt, "a");
    let host = format!("Host: {address}\r\n");
    let token = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    let json = "Content-Type: application/json\r\n";
    let status = |method: &str, path: &str, headers: &str, body: &str| {
        http_with(&address, method, path, headers, body).0
    };
    assert_eq!(status("GET", "/healthz", &host, ""), 200);
    assert_eq!(status("GET", "/api/status", &host, ""), 401, "no token");
    assert_eq!(status("GET", "/metrics", &host, ""), 401, "no token");
    let wrong = "Authorization: Bearer test-admin-token-0123456789abcdef012345678X\r\n";
    assert_eq!(
        status("GET", "/api/jobs", &format!("{host}{wrong}"), ""),
        401
    );
    assert_eq!(
        status("POST", "/api/jobs", &format!("{host}{wrong}{json}"), &job),
        401,
        "a wrong token submits nothing"
    );
    // A page of another site posting a form (text/plain, its own Origin).
    let form = format!("{host}Origin: http://attacker.example\r\nContent-Type: text/plain\r\n");
    assert_eq!(status("POST", "/api/jobs", &form, &job), 403);
    assert_eq!(
        status(
            "POST",
            "/api/jobs",
            &format!("{host}{token}Content-Type: text/plain\r\n"),
            &job
        ),
        415,
        "the API takes JSON only"
    );
    // DNS rebinding: another name that resolves to this address.
    let port = address.rsplit(':').next().unwrap();
    let rebound = format!("Host: attacker.example:{port}\r\n{token}{json}");
    assert_eq!(status("POST", "/api/jobs", &rebound, &job), 403);
    assert_eq!(status("DELETE", "/api/jobs/x", &rebound, ""), 403);
    assert!(
        rt.jobs().is_empty(),
        "nothing was submitted: {:?}",
        rt.jobs()
    );
    // The operator's request goes through.
    assert_eq!(
        status("POST", "/api/jobs", &format!("{host}{token}{json}"), &job),
        201
    );
    assert!(stop(node).success());

    // Off loopback without TLS, the node refuses to start and says what to do.
    let config = std::fs::read_to_string(rt.config("a")).unwrap();
    let open = config.replace(
        "admin_address = \"127.0.0.1:0\"",
        "admin_address = \"0.0.0.0:0\"",
    );
    assert_ne!(open, config);
    std::fs::write(rt.path().join("open.toml"), &open).unwrap();
    let refused = ferry()
        .args(["worker", "--config"])
        .arg(rt.path().join("open.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(
        said.contains("not a loopback address") && said.contains("[admin_tls]"),
        "{said}"
    );

    // With a certificate it serves HTTPS, and only HTTPS.
    crate::support::postgres::make_certificates(rt.path(), &["localhost"]);
    let tls = format!("{open}\n[admin_tls]\ncert = \"server.crt\"\nkey = \"server.key\"\n");
    std::fs::write(
        rt.path().join("b.toml"),
        tls.replace("node = \"a\"", "node = \"b\""),
    )
    .unwrap();
    let node = Node(Some(
        ferry()
            .args(["worker", "--config"])
            .arg(rt.path().join("b.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(rt.path().join("b.log")).unwrap())
            .spawn()
            .unwrap(),
    ));
    let port = published_admin(&rt, "b")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let https = |path: &str, token: &str| {
        let script = "import ssl, sys, http.client\n\
            ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
            c = http.client.HTTPSConnection('localhost', int(sys.argv[2]), context=ctx)\n\
            c.request('GET', sys.argv[3], headers={'Authorization': 'Bearer ' + sys.argv[4]})\n\
            r = c.getresponse()\n\
            print(r.status)\n\
            print(r.read().decode())\n";
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(rt.path().join("ca.pem"))
            .args([&port, path, token])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let answer = https("/api/status", ADMIN_TOKEN);
    assert!(
        answer.starts_with("200") && answer.contains("\"node\":\"b\""),
        "{answer}"
    );
    assert!(https("/api/status", "nope").starts_with("401"));
    let plain = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    };
    assert!(!plain.starts_with(b"HTTP/"), "no plain HTTP on a TLS port");
    assert!(stop(node).success());
}

/// The status page as headless Chromium renders it (scripts run), as text.
fn render(address: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=3000",
            "--dump-dom",
        ])
        .arg(format!("http://{address}/#token={ADMIN_TOKEN}"))
        .output()
        .expect("chromium is installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_status_page_shows_a_running_job_in_a_browser() {
    let rt = Runtime::new();
    let input = rt.path().join("in.csv");
    write_csv(&input, 1_500_000);
    let node = rt.node("a", 2);
    let id = rt.submit(rt.job("shown-in-browser", &input, &rt.path().join("out/b.parquet")));
    rt.wait_running(&id);
    let address = rt.nodes().into_iter().find_map(|n| n.admin).unwrap();
    let first = render(&address);
    assert!(first.contains("ferry node a"), "{first}");
    assert!(
        first.contains("shown-in-browser") && first.contains(&id),
        "{first}"
    );
    assert!(first.contains("slots busy"), "{first}");
    // The page shows the job's progress (percent of input read); a later rendering shows it
    // further on.
    let percent = |dom: &str| -> Option<f64> {
        let row = dom.split("<tr>").find(|r| r.contains("shown-in-browser"))?;
        let cell = row.split("<td>").nth(3)?;
        cell.split('%').next()?.trim().parse().ok()
    };
    let before = percent(&first);
    // A later rendering shows it further on; the job must still be running to show it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after = percent(&render(&address));
        if after > before {
            break;
        }
        assert!(
            rt.report(&id).is_none(),
            "the job ended before the page showed progress ({before:?} -> {after:?}); give it more rows"
        );
        assert!(
            Instant::now() < deadline,
            "progress never advanced: {before:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.wait(std::slice::from_ref(&id), Duration::from_secs(120));
    let done = render(&address);
    assert!(
        done.contains("succeeded"),
        "the last reports show the job: {done}"
    );
    assert!(stop(node).success());
}

#[test]
fn diagnostics_archive_holds_reports_and_no_secret() {
    let rt = Runtime::new();
    std::fs::write(
        rt.path().join("connections.json"),
        r#"{"pg": {"type": "postgres", "url": "postgres://ferry:hunter2@db.internal/erp"}}"#,
    )
    .unwrap();
    let id = rt.submit(serde_json::json!({"name": "broken", "source": {}, "sink": {}}));
    let node = rt.node("a", 1);
    rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert!(stop(node).success());
    // The node's configuration names the connections file (written before it started).
    let config = rt.config("a");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("connections = \"connections.json\"")
    );
    let archive = rt.path().join("diag.tar.gz");
    succeed(
        ferry()
            .args(["diagnostics", "--config"])
            .arg(&config)
            .arg("--output")
            .arg(&archive),
    );
    let mut names = Vec::new();
    let mut all = String::new();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
    for entry in tar::Archive::new(gz).entries().unwrap() {
        let mut entry = entry.unwrap();
        names.push(entry.path().unwrap().to_string_lossy().to_string());
        std::io::Read::read_to_string(&mut entry, &mut all).unwrap();
    }
    for expected in [
        "ferry/config.json",
        "ferry/connections.json",
        "ferry/nodes.json",
        "ferry/jobs.json",
        &format!("ferry/reports/{id}.json"),
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    assert!(
        all.contains("db.internal") && all.contains("broken"),
        "{all}"
    );
    // The node's own log file (state_dir/logs), with what it did.
    let mut log = Vec::new();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap());
    for entry in tar::Archive::new(gz).entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry
            .path()
            .unwrap()
            .to_string_lossy()
            .starts_with("ferry/logs/ferry.")
        {
            entry.read_to_end(&mut log).unwrap();
        }
    }
    let log = String::from_utf8(log).unwrap();
    assert!(
        log.contains("job leased") && log.contains(&id),
        "the log file is in the archive: {names:?}"
    );
    assert!(!log.contains('\u{1b}'), "no colour codes in log files");
    assert!(!all.contains("hunter2"), "a secret leaked into the archive");
}
