//! The `ferry` executable: exit codes, messages, reports, and kill -9 safety.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{ferry, js, tree};

fn write_job(dir: &TempDir, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.path().join(format!("{name}.json"));
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn copy_prints_a_json_report_and_exits_zero() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("region.csv");
    let job = write_job(
        &tmp,
        "ok",
        &format!(
            r#"{{"name":"ok","source":{{"type":"tpch","table":"region","scale_factor":1}},"sink":{{"type":"file","path":{},"format":{{"type":"csv"}}}}}}"#,
            js(&out)
        ),
    );
    let output = ferry()
        .args(["copy", "--report", "json"])
        .arg(&job)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["rows_written"], 5);
    assert_eq!(report["stages"].as_array().unwrap().len(), 3);
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 6);
}

#[test]
fn invalid_jobs_exit_two_with_the_reason() {
    let tmp = TempDir::new().unwrap();
    let cases = [
        (
            r#"{"name":"x","source":{"type":"tpch","table":"region","scale_factor":1},"sink":{"type":"file","path":"o.csv","format":{"type":"csv"}},"parallel_copy":2}"#,
            "unknown field `parallel_copy`",
        ),
        (
            r#"{"name":"x","source":{"type":"ftp"},"sink":{}}"#,
            "unknown variant `ftp`",
        ),
        (
            r#"{"name":"x","source":{"type":"tpch","table":"region","scale_factor":0},"sink":{"type":"file","path":"o.csv","format":{"type":"csv"}}}"#,
            "scale_factor",
        ),
        ("not json", "invalid job"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let job = write_job(&tmp, &format!("bad{i}"), body);
        for command in ["validate", "copy"] {
            let output = ferry().arg(command).arg(&job).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{command} {body}: {stderr}");
            assert!(stderr.contains(needle), "{command} {body}: {stderr}");
        }
    }
    let output = ferry()
        .args(["copy", "/nonexistent/job.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot read job file /nonexistent/job.json")
    );
    let good = write_job(
        &tmp,
        "good",
        r#"{"name":"g","source":{"type":"tpch","table":"region","scale_factor":1},"sink":{"type":"file","path":"o.csv","format":{"type":"csv"}}}"#,
    );
    let output = ferry().arg("validate").arg(&good).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("job g is valid"));
}

#[test]
fn kill_9_leaves_no_partial_output_and_the_next_run_cleans_up() {
    let tmp = TempDir::new().unwrap();
    let out_dir = tmp.path().join("out");
    let out = out_dir.join("lineitem.csv");
    let job = write_job(
        &tmp,
        "big",
        &format!(
            r#"{{"name":"big","source":{{"type":"tpch","table":"lineitem","scale_factor":0.05}},"sink":{{"type":"file","path":{},"format":{{"type":"csv"}}}},"parallel_copies":2}}"#,
            js(&out)
        ),
    );
    let mut child = ferry()
        .arg("copy")
        .arg(&job)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the job is writing its temporary output, then kill it hard.
    let started = Instant::now();
    let temp = out_dir.join("_ferry_tmp_big");
    while !(temp.exists()
        && std::fs::read_dir(&temp)
            .map(|d| d.count() > 0)
            .unwrap_or(false))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job never started writing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "no partial file at the destination");
    assert!(
        temp.exists(),
        "the temporary directory is what a killed run leaves"
    );
    // A reader globbing the destination for the format (`out/**/*.csv`) finds nothing of the
    // killed run: uncommitted files do not carry the output's extension.
    let left = tree(&out_dir);
    assert!(
        !left.is_empty() && left.iter().all(|p| !p.ends_with(".csv")),
        "{left:?}"
    );

    let status = ferry()
        .arg("copy")
        .arg(&job)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        tree(&out_dir),
        ["lineitem.csv"],
        "the re-run removed the leftovers"
    );
    // lineitem at scale 0.05 has 299,814 rows and the header (tpchgen is deterministic).
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().lines().count(),
        299_814 + 1
    );
}

#[test]
fn every_example_job_validates() {
    let examples = crate::support::repo_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "connections.json"
            || path.extension().is_none_or(|e| e != "json")
        {
            continue;
        }
        crate::support::succeed(
            ferry()
                .arg("validate")
                .arg(&path)
                .arg("--connections")
                .arg(examples.join("connections.json"))
                .env("ERP_PASSWORD", "example")
                .env("MSSQL_PASSWORD", "example")
                .env("LAKE_SAS", "sv=2024-01-01&sig=example")
                .env("CONTROL_SAS", "sv=2024-01-01&sig=example"),
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} examples found");
    // What `ferry copy` would refuse as invalid input, `ferry validate` refuses too, without
    // connecting: a connection the file lacks, an unset secret, a password in a URL, a
    // literal secret (never quoted).
    let tmp = tempfile::tempdir().unwrap();
    let pg_job = tmp.path().join("pg.json");
    std::fs::write(
        &pg_job,
        r#"{"name":"j","source":{"type":"postgres","connection":"db","table":"t"},"sink":{"type":"file","path":"x.csv","format":{"type":"csv"}}}"#,
    )
    .unwrap();
    let example_connections = std::fs::read_to_string(examples.join("connections.json")).unwrap();
    for (connections, needle) in [
        (
            example_connections,
            "unknown connection `db`; the connections file defines: control, erp, lake, mssql".to_string(),
        ),
        (
            r#"{"db": {"type":"postgres","host":"db.example","user":"u","password":{"env":"FERRY_IT_UNSET_PW"}}}"#.to_string(),
            "`FERRY_IT_UNSET_PW` that holds a secret is not set".to_string(),
        ),
        (
            r#"{"db": {"type":"postgres","url":"postgres://u:Hunter2-pw@db.example/erp"}}"#.to_string(),
            "holds a password".to_string(),
        ),
        (
            r#"{"db": {"type":"postgres","host":"db.example","user":"u","password":"Hunter2-pw"}}"#.to_string(),
            "a literal secret is refused".to_string(),
        ),
    ] {
        let file = tmp.path().join("conns.json");
        std::fs::write(&file, &connections).unwrap();
        let out = ferry()
            .arg("validate")
            .arg(&pg_job)
            .arg("--connections")
            .arg(&file)
            .env_remove("FERRY_IT_UNSET_PW")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{connections}: {stderr}");
        assert!(stderr.contains(&needle), "{connections}: {stderr}");
        assert!(
            !stderr.contains("Hunter2"),
            "a secret is never shown: {stderr}"
        );
    }
}

#[test]
fn the_example_node_configuration_loads() {
    let examples = crate::support::repo_root().join("examples");
    let dir = tempfile::tempdir().unwrap();
    // The example's spool is relative to its file: copy it next to a private spool.
    let config = std::fs::read_to_string(examples.join("ferry.toml"))
        .unwrap()
        .replace("../target/spool", "spool");
    std::fs::write(dir.path().join("ferry.toml"), config).unwrap();
    std::fs::copy(
        examples.join("connections.json"),
        dir.path().join("connections.json"),
    )
    .unwrap();
    let listed = crate::support::succeed(
        ferry()
            .args(["nodes", "--config"])
            .arg(dir.path().join("ferry.toml")),
    );
    assert!(listed.starts_with("node"));
    assert!(dir.path().join("spool/queue").is_dir());
}

#[test]
fn the_example_azure_node_configuration_works_against_azurite() {
    let az = crate::support::azurite::azurite();
    let examples = crate::support::repo_root().join("examples");
    let dir = tempfile::tempdir().unwrap();
    // The example as it is, pointed at the emulator's queue service.
    let config = std::fs::read_to_string(examples.join("ferry-azure.toml"))
        .unwrap()
        .replace(
            "[channel]\n",
            &format!("[channel]\nqueue_endpoint = \"{}\"\n", az.queue_endpoint()),
        );
    std::fs::write(dir.path().join("ferry.toml"), config).unwrap();
    std::fs::write(
        dir.path().join("connections.json"),
        format!(r#"{{"control": {}}}"#, az.connection()),
    )
    .unwrap();
    az.container("ferry-control");
    let job = dir.path().join("job.json");
    std::fs::write(
        &job,
        r#"{"name": "example", "source": {"type": "tpch", "table": "nation", "scale_factor": 0.01}, "sink": {"type": "file", "path": "out.csv", "format": {"type": "csv"}}}"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        crate::support::succeed(
            ferry()
                .args(args)
                .arg("--config")
                .arg(dir.path().join("ferry.toml")),
        )
    };
    let id = run(&["jobs", "submit", job.to_str().unwrap()]);
    let listed = run(&["jobs", "list"]);
    assert!(
        listed.contains(id.trim()) && listed.contains("queued"),
        "{listed}"
    );
    assert!(run(&["jobs", "cancel", id.trim()]).contains("cancellation requested"));
    assert!(run(&["nodes"]).starts_with("node"));
}

#[test]
fn copy_with_a_policy_file_keeps_the_job_inside_its_roots() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(allowed.join("in.csv"), "id,name\n1,a\n2,b\n").unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "local_roots = [\"allowed\"]\nmax_parallel_copies = 2\n",
    )
    .unwrap();
    let copy = |job: &str| {
        let path = dir.path().join("job.json");
        std::fs::write(&path, job).unwrap();
        ferry()
            .arg("copy")
            .arg(&path)
            .arg("--policy")
            .arg(dir.path().join("policy.toml"))
            .output()
            .unwrap()
    };
    let outside = copy(
        r#"{"name": "steal", "source": {"type": "file", "path": "/etc/hostname", "format": {"type": "csv", "header": false}},
            "sink": {"type": "file", "path": "out.csv", "format": {"type": "csv"}}, "parallel_copies": 1}"#,
    );
    assert_eq!(outside.status.code(), Some(2));
    let text = String::from_utf8_lossy(&outside.stderr).to_string()
        + &String::from_utf8_lossy(&outside.stdout);
    assert!(
        text.contains("node policy") && text.contains("outside the allowed roots"),
        "{text}"
    );
    assert!(!allowed.join("out.csv").exists());
    let limit = copy(
        r#"{"name": "wide", "source": {"type": "file", "path": "in.csv", "format": {"type": "csv"}},
            "sink": {"type": "file", "path": "out.csv", "format": {"type": "csv"}}, "parallel_copies": 8}"#,
    );
    assert_eq!(limit.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&limit.stderr).contains("max_parallel_copies"));
    // Inside the roots, relative paths start from the first root.
    let inside = copy(
        r#"{"name": "keep", "source": {"type": "file", "path": "in.csv", "format": {"type": "csv"}},
            "sink": {"type": "file", "path": "out.csv", "format": {"type": "csv"}}, "parallel_copies": 1}"#,
    );
    assert!(
        inside.status.success(),
        "{}",
        String::from_utf8_lossy(&inside.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(allowed.join("out.csv")).unwrap(),
        "id,name\n1,a\n2,b\n"
    );
}

/// Sends Ctrl-C (SIGINT) to `child` and waits for it; returns its exit code and stderr.
fn interrupt(child: std::process::Child) -> (Option<i32>, String) {
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

/// Whether process `pid` has a handler for SIGINT installed (its `SigCgt` mask).
fn catches_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

#[test]
fn ctrl_c_while_a_job_is_prepared_ends_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.json");
    let out = dir.path().join("lineitem.parquet");
    // Generating lineitem at scale 1 takes seconds to set up before any row is copied.
    std::fs::write(
        &job,
        format!(
            r#"{{"name": "prep", "source": {{"type": "tpch", "table": "lineitem", "scale_factor": 1}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}}}"#,
            js(&out)
        ),
    )
    .unwrap();
    let child = ferry()
        .arg("copy")
        .arg(&job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !catches_sigint(child.id()) {
        assert!(
            Instant::now() < deadline,
            "ferry never installed its Ctrl-C handler"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (code, stderr) = interrupt(child);
    assert_eq!(
        code,
        Some(1),
        "ends by its own exit, not by the signal: {stderr}"
    );
    assert!(
        stderr.contains("cancelling: nothing will be published")
            && stderr.contains("cancelled before it started"),
        "{stderr}"
    );
    assert!(!out.exists());
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["job.json"], "nothing written");
}

#[test]
fn ctrl_c_in_the_middle_of_a_copy_publishes_nothing_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.json");
    let out = dir.path().join("out");
    std::fs::write(
        &job,
        format!(
            r#"{{"name": "midway", "source": {{"type": "tpch", "table": "lineitem", "scale_factor": 0.2}},
                "sink": {{"type": "file", "path": "{}/", "format": {{"type": "csv"}}}}, "parallel_copies": 2}}"#,
            out.display()
        ),
    )
    .unwrap();
    let child = ferry()
        .arg("copy")
        .arg(&job)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until output is being written (in the directory's hidden sibling), then Ctrl-C.
    let sibling = dir.path().join(".out._ferry_tmp_midway");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&sibling).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "the copy never started writing");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, stderr) = interrupt(child);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cancelling: nothing will be published") && stderr.contains("cancelled"),
        "{stderr}"
    );
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["job.json"],
        "nothing published, no temporary file left"
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let bash = crate::support::succeed(ferry().args(["completions", "bash"]));
    assert!(
        bash.contains("_ferry()") && bash.contains("test-connection"),
        "{bash}"
    );
    let zsh = crate::support::succeed(ferry().args(["completions", "zsh"]));
    assert!(zsh.contains("#compdef ferry"), "{zsh}");
    let dir = tempfile::tempdir().unwrap();
    crate::support::succeed(ferry().arg("manpages").arg(dir.path()));
    for page in [
        "ferry.1",
        "ferry-copy.1",
        "ferry-worker.1",
        "ferry-jobs-submit.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    let copy = std::fs::read_to_string(dir.path().join("ferry-copy.1")).unwrap();
    assert!(copy.contains("policy"), "options are documented: {copy}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = ferry()
        .args(["completions", "bash"])
        .stdout(writer)
        .output()
        .unwrap();
    // As a shell tool on SIGPIPE (`ferry jobs list | head`), never a panic.
    assert_eq!(out.status.code(), Some(141));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
