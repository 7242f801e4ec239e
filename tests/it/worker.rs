//! Worker nodes on the local control channel: real `ferry worker` processes sharing a spool.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_connectors::control::{FinishedJob, LocalChannel};

use crate::support::{js, read_parquet};

/// A spool shared by the nodes of one test, and their configuration files.
struct Runtime {
    dir: tempfile::TempDir,
    channel: LocalChannel,
}

impl Runtime {
    fn new() -> Runtime {
        let dir = tempfile::tempdir().unwrap();
        let channel =
            LocalChannel::open(dir.path().join("spool"), Duration::from_secs(3), 3).unwrap();
        Runtime { dir, channel }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the configuration of node `name` and starts it.
    fn node(&self, name: &str, max_jobs: usize) -> Child {
        let config = self.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "node = \"{name}\"\nmax_concurrent_jobs = {max_jobs}\ngrace_period = \"60s\"\n\
                 admin_address = \"127.0.0.1:0\"\n\
                 [channel]\ntype = \"local\"\npath = \"spool\"\nlease_timeout = \"3s\"\n\
                 max_attempts = 3\npoll_interval = \"100ms\"\n"
            ),
        )
        .unwrap();
        crate::support::ferry()
            .args(["worker", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path().join(format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap()
    }

    fn config(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}.toml"))
    }

    /// A CSV -> Parquet job of `input` into `out`.
    fn job(&self, name: &str, input: &Path, out: &Path) -> serde_json::Value {
        serde_json::from_str(&format!(
            r#"{{"name": "{name}", "source": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}, "parallel_copies": 1}}"#,
            js(input),
            js(out)
        ))
        .unwrap()
    }

    /// Waits until `ids` all have reports.
    fn wait(&self, ids: &[String], within: Duration) -> Vec<FinishedJob> {
        let deadline = Instant::now() + within;
        loop {
            let done: Vec<FinishedJob> = ids
                .iter()
                .filter_map(|id| self.channel.report(id).unwrap())
                .collect();
            if done.len() == ids.len() {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {} jobs finished; states: {:?}",
                done.len(),
                ids.len(),
                self.channel.jobs().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until job `id` runs on some node; returns the node.
    fn wait_running(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = self.channel.jobs().unwrap();
            if let Some(j) = jobs.iter().find(|j| j.id == id && j.state == "running") {
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

fn write_csv(path: &Path, rows: usize) {
    let mut text = String::from("id,name,amount\n");
    for i in 0..rows {
        text.push_str(&format!("{i},name {i},{}.{:02}\n", i * 7, i % 100));
    }
    std::fs::write(path, text).unwrap();
}

fn rows(path: &Path) -> usize {
    read_parquet(path).iter().map(|b| b.num_rows()).sum()
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    // SIGTERM, as a service manager stops a node.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap()
}

#[test]
fn three_nodes_run_thirty_jobs_each_once() {
    let rt = Runtime::new();
    let input = rt.path().join("in.csv");
    write_csv(&input, 2_000);
    let nodes: Vec<Child> = ["a", "b", "c"].iter().map(|n| rt.node(n, 2)).collect();
    // One job through the command line, the others straight into the channel.
    let first = rt.path().join("job-0.json");
    std::fs::write(
        &first,
        rt.job("job-0", &input, &rt.path().join("out/job-0.parquet"))
            .to_string(),
    )
    .unwrap();
    let out = crate::support::ferry()
        .args(["jobs", "submit"])
        .arg(&first)
        .arg("--config")
        .arg(rt.config("a"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ids = vec![String::from_utf8(out.stdout).unwrap().trim().to_string()];
    for i in 1..30 {
        let job = rt.job(
            &format!("job-{i}"),
            &input,
            &rt.path().join(format!("out/job-{i}.parquet")),
        );
        ids.push(rt.channel.submit(job).unwrap());
    }
    let done = rt.wait(&ids, Duration::from_secs(180));
    let mut used = std::collections::BTreeSet::new();
    for f in &done {
        assert_eq!(f.status, "succeeded", "{f:?}");
        assert_eq!(f.attempt, 1, "every job ran once: {f:?}");
        used.insert(f.node.clone());
    }
    assert!(used.len() >= 2, "the jobs spread over the nodes: {used:?}");
    for i in 0..30 {
        assert_eq!(rows(&rt.path().join(format!("out/job-{i}.parquet"))), 2_000);
    }
    let listed = crate::support::ferry()
        .args(["nodes", "--config"])
        .arg(rt.config("a"))
        .output()
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
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
    let listed = crate::support::ferry()
        .args(["jobs", "list", "--config"])
        .arg(rt.config("a"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(listed.stdout)
            .unwrap()
            .matches("succeeded")
            .count(),
        30
    );
}

#[test]
fn a_killed_node_s_job_finishes_on_another_node() {
    let rt = Runtime::new();
    let input = rt.path().join("big.csv");
    write_csv(&input, 400_000);
    let out = rt.path().join("out/big.parquet");
    let id = rt.channel.submit(rt.job("big", &input, &out)).unwrap();
    let mut a = rt.node("a", 1);
    assert_eq!(rt.wait_running(&id), "a");
    std::thread::sleep(Duration::from_millis(300));
    a.kill().unwrap(); // SIGKILL: no chance to clean up or hand the job back
    a.wait().unwrap();
    let b = rt.node("b", 1);
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(120));
    assert_eq!(done[0].status, "succeeded", "{:?}", done[0]);
    assert_eq!((done[0].node.as_str(), done[0].attempt), ("b", 2));
    assert_eq!(rows(&out), 400_000, "exactly the right rows, no duplicates");
    let leftovers: Vec<_> = std::fs::read_dir(rt.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(leftovers, ["big.parquet"], "no partial files");
    assert!(stop(b).success());
}

#[test]
fn malformed_jobs_fail_once_with_a_report() {
    let rt = Runtime::new();
    std::fs::write(
        rt.path().join("spool/queue/0000000000001-bad.json"),
        b"{not json",
    )
    .unwrap();
    let invalid = rt
        .channel
        .submit(serde_json::json!({"name": "invalid", "source": {"type": "nope"}, "sink": {}}))
        .unwrap();
    let node = rt.node("a", 2);
    let done = rt.wait(
        &["0000000000001-bad".to_string(), invalid.clone()],
        Duration::from_secs(60),
    );
    for f in &done {
        assert_eq!((f.status.as_str(), f.attempt), ("failed", 1), "{f:?}");
    }
    let message = done[1].reports[0]["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("invalid job"), "{message}");
    // Not retried: nothing is queued or running a while later.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        rt.channel
            .jobs()
            .unwrap()
            .iter()
            .all(|j| j.state == "failed")
    );
    assert!(stop(node).success());
}

#[test]
fn sigterm_drains_and_cancel_stops_a_job() {
    let rt = Runtime::new();
    let input = rt.path().join("mid.csv");
    write_csv(&input, 150_000);
    let out = rt.path().join("out/mid.parquet");
    let id = rt.channel.submit(rt.job("mid", &input, &out)).unwrap();
    let node = rt.node("a", 1);
    rt.wait_running(&id);
    // SIGTERM while the job runs: the node finishes it, then exits.
    let status = stop(node);
    assert!(status.success(), "{status:?}");
    let report = rt
        .channel
        .report(&id)
        .unwrap()
        .expect("the job finished before the node stopped");
    assert_eq!(report.status, "succeeded");
    assert_eq!(rows(&out), 150_000);

    // `ferry jobs cancel` stops a running job; nothing is published.
    let big = rt.path().join("big.csv");
    write_csv(&big, 600_000);
    let out = rt.path().join("out/cancelled.parquet");
    let id = rt.channel.submit(rt.job("cancelled", &big, &out)).unwrap();
    let node = rt.node("a", 1);
    rt.wait_running(&id);
    let cancel = crate::support::ferry()
        .args(["jobs", "cancel", &id, "--config"])
        .arg(rt.config("a"))
        .output()
        .unwrap();
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert_eq!(done[0].status, "cancelled", "{:?}", done[0]);
    assert!(!out.exists());
    assert!(stop(node).success());
}

/// A plain HTTP/1.0 request to the node's admin server; returns (status, body).
fn http(address: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n{body}",
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
        if let Some(a) = rt
            .channel
            .nodes()
            .unwrap()
            .into_iter()
            .find_map(|n| n.admin)
        {
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
    while rt.channel.report(&id).unwrap().is_none() && Instant::now() < deadline {
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
    assert_eq!(done[0].status, "succeeded");
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
        .arg(format!("http://{address}/"))
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
    let id = rt
        .channel
        .submit(rt.job("shown-in-browser", &input, &rt.path().join("out/b.parquet")))
        .unwrap();
    rt.wait_running(&id);
    let address = rt
        .channel
        .nodes()
        .unwrap()
        .into_iter()
        .find_map(|n| n.admin)
        .unwrap();
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
    std::thread::sleep(Duration::from_millis(700));
    let later = render(&address);
    let after = percent(&later);
    if rt.channel.report(&id).unwrap().is_none() {
        assert!(after > before, "progress advanced: {before:?} -> {after:?}");
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
    let id = rt
        .channel
        .submit(serde_json::json!({"name": "broken", "source": {}, "sink": {}}))
        .unwrap();
    let node = rt.node("a", 1);
    rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert!(stop(node).success());
    // The node's configuration names the connections file.
    let config = rt.config("a");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("connections = \"connections.json\"\n{text}"),
    )
    .unwrap();
    let archive = rt.path().join("diag.tar.gz");
    let out = crate::support::ferry()
        .args(["diagnostics", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
    assert!(!all.contains("hunter2"), "a secret leaked into the archive");
}
