//! A node's policy, tried as an attacker who can write the channel would: every rule refuses
//! its job with a report that names the rule and the setting, nothing is read or written, and
//! the node goes on serving jobs that keep to the rules.

use std::time::{Duration, Instant};

use crate::support::{ferry, js};
use crate::worker::{Runtime, http, rows, stop, write_csv};

/// The node's policy in these tests: local paths under `data/`, two connections, small limits.
const POLICY: &str = "[policy]\nlocal_roots = [\"data\"]\nconnections = [\"pg\", \"other\"]\n\
    max_batch_rows = 100000\nmax_parallel_copies = 4\nmax_buffer_bytes = \"256MiB\"\n\
    memory_limit = \"512MiB\"\nmax_job_bytes = \"8KiB\"\n\
    [policy.connection.pg]\nquery = true\n\
    [policy.connection.other]\nquery = false\n";

/// A runtime whose nodes run [`POLICY`], with `pg` (never reached: refusals come first),
/// `other` and `unlisted` connections.
fn runtime() -> Runtime {
    let mut rt = Runtime::new();
    rt.policy_toml = POLICY.to_string();
    let pg = r#"{"type": "postgres", "host": "127.0.0.1", "port": 1, "user": "u", "sslmode": "disable"}"#;
    std::fs::write(
        rt.path().join("connections.json"),
        format!(r#"{{"pg": {pg}, "other": {pg}, "unlisted": {pg}}}"#),
    )
    .unwrap();
    rt
}

/// Starts node `a` of `rt` (its configuration names the connections file).
fn start_node(rt: &Runtime, max_jobs: usize) -> crate::worker::Node {
    rt.node("a", max_jobs)
}

/// `job` with `key` set to `value`.
fn with(mut job: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    job[key] = value;
    job
}

fn csv_job(name: &str, source: &str, sink: &str, extra: &str) -> serde_json::Value {
    serde_json::from_str(&format!(
        r#"{{"name": "{name}", "source": {{"type": "file", "path": {source}, "format": {{"type": "csv"}}}},
            "sink": {{"type": "file", "path": {sink}, "format": {{"type": "parquet"}}}},
            "parallel_copies": 1{extra}}}"#
    ))
    .unwrap()
}

fn pg_job(name: &str, source: &str, sink: &str) -> serde_json::Value {
    serde_json::from_str(&format!(
        r#"{{"name": "{name}", "source": {source}, "sink": {sink}, "parallel_copies": 1}}"#
    ))
    .unwrap()
}

#[test]
fn a_node_refuses_what_its_policy_forbids_and_keeps_serving() {
    let rt = runtime();
    let data = rt.path().join("data");
    let outside = rt.path().join("outside");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write_csv(&data.join("in.csv"), 2_000);
    write_csv(&outside.join("secret.csv"), 10);
    std::os::unix::fs::symlink(outside.join("secret.csv"), data.join("link.csv")).unwrap();
    let spool_file = rt.path().join("spool/nodes");
    let out = |name: &str| js(&outside.join(name));
    let input = js(&data.join("in.csv"));
    let good_out = js(&data.join("out/good.parquet"));
    let file_sink = format!(
        r#"{{"type": "file", "path": {}, "format": {{"type": "csv"}}}}"#,
        js(&data.join("pg.csv"))
    );

    // Each forbidden job, with what its refusal must say.
    let forbidden: Vec<(serde_json::Value, &str)> = vec![
        (
            csv_job("abs", &js(&outside.join("secret.csv")), &good_out, ""),
            "outside the allowed roots",
        ),
        (
            csv_job("dotdot", "\"../outside/secret.csv\"", &good_out, ""),
            "resolves to",
        ),
        (
            csv_job("symlink", &js(&data.join("link.csv")), &good_out, ""),
            "resolves to",
        ),
        (
            csv_job("spool", &js(&spool_file), &good_out, ""),
            "outside the allowed roots",
        ),
        (
            csv_job("sinkout", &input, &out("stolen/"), ""),
            "outside the allowed roots",
        ),
        (
            csv_job(
                "faultlog",
                &input,
                &good_out,
                &format!(
                    r#", "fault_tolerance": {{"skip_incompatible_rows": true, "log_path": {}}}"#,
                    out("faults.jsonl")
                ),
            ),
            "fault log",
        ),
        (
            with(
                csv_job("staging", &input, &good_out, ""),
                "staging",
                serde_json::json!({ "path": outside.join("stage") }),
            ),
            "staging directory",
        ),
        (
            csv_job("batch", &input, &good_out, r#", "batch_rows": 500000"#),
            "max_batch_rows",
        ),
        (
            with(
                csv_job("parallel", &input, &good_out, ""),
                "parallel_copies",
                16.into(),
            ),
            "max_parallel_copies",
        ),
        (
            csv_job(
                "budget",
                &input,
                &good_out,
                r#", "max_buffer_bytes": "1GiB""#,
            ),
            "max_buffer_bytes",
        ),
        (
            pg_job(
                "presql",
                &input_csv_source(&input),
                r#"{"type": "postgres", "connection": "pg", "table": "t", "pre_copy_sql": "drop table users"}"#,
            ),
            "connection.pg.pre_copy_sql = true",
        ),
        (
            pg_job(
                "overwrite",
                &input_csv_source(&input),
                r#"{"type": "postgres", "connection": "pg", "table": "t", "mode": "overwrite"}"#,
            ),
            "connection.pg.overwrite = true",
        ),
        (
            pg_job(
                "truncate",
                &input_csv_source(&input),
                r#"{"type": "postgres", "connection": "pg", "table": "t", "mode": "truncate"}"#,
            ),
            "connection.pg.truncate = true",
        ),
        (
            pg_job(
                "query",
                r#"{"type": "postgres", "connection": "other", "query": "select * from pg_authid"}"#,
                &file_sink,
            ),
            "connection.other.query = true",
        ),
        (
            pg_job(
                "unlisted",
                r#"{"type": "postgres", "connection": "unlisted", "table": "t"}"#,
                &file_sink,
            ),
            "which jobs may not use",
        ),
        (
            pg_job(
                "big",
                &format!(
                    r#"{{"type": "postgres", "connection": "pg", "query": "select '{}'"}}"#,
                    "x".repeat(9000)
                ),
                &file_sink,
            ),
            "max_job_bytes",
        ),
    ];
    // Written to the channel directly, as anyone who can write the spool could.
    let ids: Vec<(String, &str)> = forbidden
        .into_iter()
        .map(|(job, needle)| (rt.submit(job), needle))
        .collect();
    let node = start_node(&rt, 2);
    let all: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    let reports = rt.wait(&all, Duration::from_secs(120));
    for ((id, needle), report) in ids.iter().zip(&reports) {
        assert_eq!(report.status, ferry_engine::JobStatus::Failed, "{id}");
        let text = serde_json::to_string(&report.reports).unwrap();
        assert!(
            text.contains("node policy") && text.contains(needle),
            "{id}: wanted `{needle}` in {text}"
        );
        assert!(
            text.contains("\"forbidden\""),
            "{id}: the error kind is forbidden: {text}"
        );
    }
    // Nothing was written anywhere outside, nor at the destinations of refused jobs.
    let mut left: Vec<String> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(left, ["secret.csv"], "nothing new outside the roots");
    assert!(!data.join("out").exists() && !data.join("pg.csv").exists());

    // The node still serves jobs that keep to the rules, with a relative path that starts
    // from the first root, and creates its outputs 0640.
    let id = rt.submit(csv_job("good", "\"in.csv\"", "\"out/good.parquet\"", ""));
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert_eq!(
        done[0].status,
        ferry_engine::JobStatus::Succeeded,
        "{:?}",
        done[0].reports
    );
    let output = data.join("out/good.parquet");
    assert_eq!(rows(&output), 2_000);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o640,
        "outputs are created with the policy's output_mode"
    );
    // So are part files and the manifest of a directory output.
    let id = rt.submit(csv_job("parts", "\"in.csv\"", "\"out/parts/\"", ""));
    let done = rt.wait(std::slice::from_ref(&id), Duration::from_secs(60));
    assert_eq!(
        done[0].status,
        ferry_engine::JobStatus::Succeeded,
        "{:?}",
        done[0].reports
    );
    for name in ["part-00000.parquet", "_ferry_manifest.json"] {
        let mode = std::fs::metadata(data.join("out/parts").join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640, "{name}");
    }
    // A job within the rules that fails while it is built (its input is missing) is logged
    // and counted like every other failure.
    let missing = rt.submit(csv_job("missing", "\"nope.csv\"", "\"out/m.parquet\"", ""));
    let done = rt.wait(std::slice::from_ref(&missing), Duration::from_secs(60));
    assert_eq!(done[0].status, ferry_engine::JobStatus::Failed);
    let log = std::fs::read_to_string(rt.path().join("a.log")).unwrap();
    assert!(log.contains("job refused"), "refusals are logged: {log}");
    assert!(
        log.lines()
            .any(|l| l.contains("job failed") && l.contains(&missing)),
        "the failure is logged with the job's id: {log}"
    );
    let (_, metrics) = http(&admin_address(&rt), "GET", "/metrics", "");
    let count = |status: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ferry_jobs_total{{status=\"{status}\"}} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    assert_eq!(count("failed"), Some(ids.len() as u64 + 1), "{metrics}");
    assert_eq!(count("succeeded"), Some(2), "{metrics}");
    assert!(
        !metrics.contains("job=\""),
        "no job names in labels: {metrics}"
    );
    assert!(stop(node).success());
}

fn input_csv_source(path: &str) -> String {
    format!(r#"{{"type": "file", "path": {path}, "format": {{"type": "csv"}}}}"#)
}

/// The node's admin address, once it published it.
fn admin_address(rt: &Runtime) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(a) = rt.nodes().into_iter().find_map(|n| n.admin) {
            return a;
        }
        assert!(Instant::now() < deadline, "no admin address");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_way_in_applies_the_same_checks() {
    let rt = runtime();
    let data = rt.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_csv(&data.join("in.csv"), 10);
    let node = start_node(&rt, 1);
    let address = admin_address(&rt);
    let forbidden = pg_job(
        "presql",
        &input_csv_source("\"in.csv\""),
        r#"{"type": "postgres", "connection": "pg", "table": "t", "pre_copy_sql": "drop table users"}"#,
    );
    let (status, body) = http(&address, "POST", "/api/jobs", &forbidden.to_string());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("pre_copy_sql"), "{body}");
    // A job naming a connection the node lacks is refused at the door too.
    let unknown = pg_job(
        "unknown",
        r#"{"type": "postgres", "connection": "nope", "table": "t"}"#,
        &input_csv_source("\"x.csv\""),
    );
    let (status, body) = http(&address, "POST", "/api/jobs", &unknown.to_string());
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown connection `nope`"), "{body}");
    // `ferry jobs submit` says the same, with exit code 2.
    let file = rt.path().join("presql.json");
    std::fs::write(&file, forbidden.to_string()).unwrap();
    let out = ferry()
        .args(["jobs", "submit"])
        .arg(&file)
        .arg("--config")
        .arg(rt.config("a"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pre_copy_sql"), "{stderr}");
    // Ids that could reach outside the spool are refused by the API's routes.
    for id in ["a..b", "..%2F..%2Fx", "%2E%2E"] {
        let (status, body) = http(&address, "DELETE", &format!("/api/jobs/{id}"), "");
        assert!(status == 400 || status == 404, "{id}: {status} {body}");
        assert!(!body.contains("cancellation requested"), "{id}: {body}");
    }
    let (status, body) = http(&address, "DELETE", "/api/jobs/a..b", "");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("is not a job id"), "{body}");
    // Nothing was queued by the refused submissions.
    assert!(rt.jobs().is_empty(), "{:?}", rt.jobs());
    assert!(stop(node).success());
}

#[test]
fn a_job_that_does_not_fit_in_the_memory_limit_waits_for_one_that_runs() {
    let rt = runtime();
    let data = rt.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_csv(&data.join("in.csv"), 200_000);
    // Two jobs of 200MiB each against a 512MiB limit fit; a third waits.
    let ids: Vec<String> = (0..3)
        .map(|i| {
            rt.submit(csv_job(
                &format!("mem{i}"),
                "\"in.csv\"",
                &format!("\"out/mem{i}.parquet\""),
                r#", "max_buffer_bytes": "200MiB""#,
            ))
        })
        .collect();
    let node = start_node(&rt, 3);
    let done = rt.wait(&ids, Duration::from_secs(120));
    for (i, d) in done.iter().enumerate() {
        assert_eq!(
            d.status,
            ferry_engine::JobStatus::Succeeded,
            "{:?}",
            d.reports
        );
        assert_eq!(rows(&data.join(format!("out/mem{i}.parquet"))), 200_000);
        // A job handed back for memory is not charged an attempt.
        assert_eq!(d.attempt, 1, "{:?}", d);
    }
    let log = std::fs::read_to_string(rt.path().join("a.log")).unwrap();
    assert!(
        log.contains("does not fit in the node's free memory_limit"),
        "the third job waited for memory: {log}"
    );
    assert!(stop(node).success());
}

#[test]
fn a_spool_or_state_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let rt = runtime();
    let node = start_node(&rt, 1);
    admin_address(&rt);
    assert!(stop(node).success());
    for dir in ["spool/queue", "state-a"] {
        let path = rt.path().join(dir);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = ferry()
            .args(["worker", "--config"])
            .arg(rt.config("a"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{dir}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("writable by other users") && stderr.contains("chmod"),
            "{dir}: {stderr}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

#[test]
fn submissions_stop_at_max_queued_jobs() {
    let rt = runtime();
    std::fs::create_dir_all(rt.path().join("data")).unwrap();
    // A configuration to submit with; no node runs, so jobs stay queued.
    let config = rt.path().join("submit.toml");
    std::fs::write(
        &config,
        "connections = \"connections.json\"\n[channel]\ntype = \"local\"\npath = \"spool\"\n\
         [policy]\nlocal_roots = [\"data\"]\nmax_queued_jobs = 2\n",
    )
    .unwrap();
    let job = rt.path().join("job.json");
    std::fs::write(
        &job,
        csv_job("queued", "\"in.csv\"", "\"out.parquet\"", "").to_string(),
    )
    .unwrap();
    let submit = || {
        ferry()
            .args(["jobs", "submit"])
            .arg(&job)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = submit();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = submit();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("2 jobs already wait") && stderr.contains("max_queued_jobs"),
        "{stderr}"
    );
    assert_eq!(rt.jobs().len(), 2);
}
