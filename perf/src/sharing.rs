//! A node's jobs sharing one cap on encoding: one node runs eight CSV -> Parquet jobs
//! (lineitem, two `parallel_copies` each) four at a time, with no cap (the default: each job's
//! encoders run as the operating system schedules them) and with `encode_threads` at the
//! machine's cores (one pool of slots for all jobs). Wall time until the eighth report, and the
//! node's peak RSS (VmHWM, polled).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{Run, lineitem_file, stats, work_dir, write_job};

const JOBS: usize = 8;

/// One run of the node with `encode_threads` (none: the default).
fn run_node(ferry: &Path, csv: &Path, work: &Path, threads: Option<usize>) -> Result<Run> {
    let dir = work.join("sharing");
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["spool", "state"] {
        std::fs::create_dir_all(dir.join(sub))?;
        // The node refuses a spool or state directory that other users can reach.
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o700))?;
    }
    let config = dir.join("ferry.toml");
    let encode = threads.map_or(String::new(), |n| format!("encode_threads = {n}\n"));
    std::fs::write(
        &config,
        format!(
            "node = \"n1\"\nmax_concurrent_jobs = 4\n{encode}admin_address = \"127.0.0.1:0\"\n\
             state_dir = \"state\"\n[policy]\nlocal_roots = [\"{}\", \"{}\"]\n\
             [channel]\ntype = \"local\"\npath = \"spool\"\npoll_interval = \"100ms\"\n",
            csv.parent().unwrap_or(work).display(),
            dir.display()
        ),
    )?;
    for j in 0..JOBS {
        let job = dir.join(format!("job-{j}.json"));
        write_job(
            &job,
            &format!(
                r#"{{"name":"sharing-{j}","source":{{"type":"file","path":"{}","format":{{"type":"csv"}}}},"sink":{{"type":"file","path":"{}/out-{j}/","format":{{"type":"parquet","compression":"snappy"}}}},"parallel_copies":2,"max_buffer_bytes":"64MiB"}}"#,
                csv.display(),
                dir.display()
            ),
        )?;
        let status = Command::new(ferry)
            .args(["jobs", "submit"])
            .arg(&job)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("could not submit {}", job.display());
        }
    }
    let started = Instant::now();
    let mut node = Command::new(ferry)
        .args(["worker", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let status_file = format!("/proc/{}/status", node.id());
    let reports = dir.join("spool/reports");
    let deadline = started + Duration::from_secs(900);
    let mut peak_kib = 0u64;
    let finished = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak_kib = peak_kib.max(kib);
        }
        let done = std::fs::read_dir(&reports).map_or(0, |d| d.count());
        if done >= JOBS {
            break started.elapsed().as_secs_f64();
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            bail!("the node did not finish {JOBS} jobs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let _ = node.wait();
    for entry in std::fs::read_dir(&reports)? {
        let text = std::fs::read_to_string(entry?.path())?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        if v["reports"][0]["status"] != "succeeded" {
            bail!("a job failed: {text}");
        }
    }
    Ok(Run {
        secs: finished,
        max_rss_mib: peak_kib as f64 / 1024.0,
    })
}

pub fn run(runs: usize, ferry: &Path) -> Result<()> {
    let work = work_dir()?;
    let csv = lineitem_file(&work, 1.0, "csv", ferry)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let configs: [(String, Option<usize>); 2] = [
        ("no cap (default)".to_string(), None),
        (
            format!("one pool for the node: `encode_threads = {cores}` (the cores)"),
            Some(cores),
        ),
    ];
    let mut results: Vec<Vec<Run>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 0..runs {
        for (i, (name, threads)) in configs.iter().enumerate() {
            let run = run_node(ferry, &csv, &work, *threads)?;
            eprintln!(
                "round {}: {name}: {:.2} s, {:.0} MiB",
                round + 1,
                run.secs,
                run.max_rss_mib
            );
            results[i].push(run);
        }
    }
    let base = stats(&results[0], |r| r.secs).1;
    let mut table = format!(
        "# A node's jobs sharing one cap on encoding\n\n\
         One node, `max_concurrent_jobs = 4`, runs {JOBS} jobs: lineitem SF 1 CSV -> Parquet (snappy), \
         `parallel_copies` 2, 64 MiB budget each, on {cores} cores. {runs} runs each, interleaved; \
         time from the node's start to its last report, and the node's peak RSS (VmHWM).\n\n\
         | encoding | time min / median / max (s) | peak RSS min / median / max (MiB) | time vs no cap |\n\
         | --- | --- | --- | --- |\n"
    );
    for ((name, _), runs) in configs.iter().zip(&results) {
        let (lo, med, hi) = stats(runs, |r| r.secs);
        let (rlo, rmed, rhi) = stats(runs, |r| r.max_rss_mib);
        table.push_str(&format!(
            "| {name} | {lo:.2} / {med:.2} / {hi:.2} | {rlo:.0} / {rmed:.0} / {rhi:.0} | {:.2}x |\n",
            med / base
        ));
    }
    let path = Path::new("perf/results/encode-sharing.md");
    std::fs::write(path, &table)?;
    println!("{table}");
    Ok(())
}
