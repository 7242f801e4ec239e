//! ferry's end-to-end performance harness.
//!
//! `cargo run -p ferry-perf --release -- csv-to-parquet --scale 1` generates TPC-H lineitem as
//! CSV (with ferry's own generator), then times ferry, DuckDB and pyarrow converting the same
//! file to Parquet (snappy) in the same run, each several times, and writes a Markdown table to
//! perf/results/. Peers are installed into a private Python venv (perf/.venv) on first use.
//! Wall time and peak RSS come from the OS (wait4) for each whole process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

mod azure;
mod memory;
mod postgres;
mod sharing;
mod sqlserver;
mod worker;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Local CSV -> Parquet: ferry vs DuckDB vs pyarrow, and ferry's memory bound.
    CsvToParquet(Lineitem),
    /// Azure Blob (Azurite): binary upload vs the Python SDK; postgres -> blob direct vs staged.
    Azure(Lineitem),
    /// Worker nodes: jobs per minute against max_concurrent_jobs and the number of nodes.
    Worker(Binary),
    /// PostgreSQL -> Parquet and PostgreSQL -> PostgreSQL: ferry vs ADBC, ConnectorX, psql.
    Postgres(Lineitem),
    /// Peak RSS of four workloads at 16, 64 and 256 MiB budgets against budget + 64 MiB.
    Memory(Runs),
    /// SQL Server (the TDS test peer) -> Parquet and Parquet -> SQL Server.
    Sqlserver(Lineitem),
    /// One node running eight CSV -> Parquet jobs four at a time: encoding capped at the cores or not.
    Sharing(Runs),
    /// The TDS test peer holding lineitem, in its own process for the `sqlserver` scenario.
    #[command(hide = true)]
    SqlserverPeer(sqlserver::PeerArgs),
}

/// The ferry binary a scenario measures.
#[derive(Args)]
struct Binary {
    /// The ferry binary to measure.
    #[arg(long, default_value = "target/release/ferry")]
    ferry: PathBuf,
}

/// A scenario on TPC-H lineitem, run several times.
#[derive(Args)]
struct Lineitem {
    /// TPC-H scale factor of lineitem (1 = 6M rows, ~760 MB as CSV).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Runs of each tool; the table shows min, median and max.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    binary: Binary,
}

/// A scenario run several times.
#[derive(Args)]
struct Runs {
    /// Runs of each job; the table shows min, median and max.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    #[command(flatten)]
    binary: Binary,
}

/// One measured process run.
pub struct Run {
    secs: f64,
    max_rss_mib: f64,
}

/// Runs a command to completion and measures it; fails if it fails.
fn measure(cmd: &mut Command) -> Result<Run> {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("start {cmd:?}"))?;
    let mut status = 0;
    // SAFETY-free: wait4 through libc returns the child's own resource usage.
    let mut usage: libc::rusage = unsafe_free_rusage();
    let pid = child.id() as libc::pid_t;
    let ret = wait4(pid, &mut status, &mut usage);
    let secs = start.elapsed().as_secs_f64();
    if ret < 0 {
        bail!("wait4 failed for {cmd:?}");
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{cmd:?} failed with status {status}");
    }
    Ok(Run {
        secs,
        max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

fn unsafe_free_rusage() -> libc::rusage {
    // rusage is plain data; zeroed through a safe constructor of its fields.
    libc::rusage {
        ru_utime: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        ru_stime: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        ru_maxrss: 0,
        ru_ixrss: 0,
        ru_idrss: 0,
        ru_isrss: 0,
        ru_minflt: 0,
        ru_majflt: 0,
        ru_nswap: 0,
        ru_inblock: 0,
        ru_oublock: 0,
        ru_msgsnd: 0,
        ru_msgrcv: 0,
        ru_nsignals: 0,
        ru_nvcsw: 0,
        ru_nivcsw: 0,
    }
}

#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t, status: &mut i32, usage: &mut libc::rusage) -> i32 {
    // SAFETY: pointers are to live, exclusively borrowed locals of the right types.
    unsafe { libc::wait4(pid, status, 0, usage) }
}

fn python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

/// The peers' versions, pinned so that tables made on different days compare: what pip
/// installs on the day moved DuckDB's CSV -> Parquet time from 6.07 s to 3.49 s once.
const PEERS: &[(&str, &str)] = &[
    ("duckdb", "2.0.1"),
    ("pyarrow", "26.0.1"),
    ("polars", "2.1.0"),
    ("adbc-driver-postgresql", "1.13.0"),
    ("connectorx", "0.4.6"),
    ("azure-storage-blob", "12.31.1"),
];

/// `name==version` of a peer in [`PEERS`].
fn pinned(name: &str) -> Result<String> {
    PEERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, v)| format!("{n}=={v}"))
        .with_context(|| format!("{name} is not in PEERS"))
}

/// The pinned versions of `names`, for a results table ("duckdb 2.0.1, polars 2.1.0").
fn peer_versions(names: &[&str]) -> String {
    names
        .iter()
        .filter_map(|name| PEERS.iter().find(|(n, _)| n == name))
        .map(|(n, v)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes the private venv and installs the Python `packages` that it lacks, each at its
/// version in [`PEERS`].
fn ensure_venv(venv: &Path, packages: &[&str]) -> Result<()> {
    if !python(venv).exists()
        && !Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .status()?
            .success()
    {
        bail!("could not create the venv {}", venv.display());
    }
    let mut missing = Vec::new();
    for p in packages {
        let want = pinned(p)?;
        let have = Command::new(python(venv))
            .args(["-m", "pip", "show", p])
            .stderr(std::process::Stdio::null())
            .output()?;
        let version = String::from_utf8_lossy(&have.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version: ").map(str::to_string));
        if version.as_deref() != want.split("==").nth(1) {
            missing.push(want);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "installing peers ({}) into {}",
        missing.join(", "),
        venv.display()
    );
    if !Command::new(python(venv))
        .args(["-m", "pip", "install", "-q"])
        .args(&missing)
        .status()?
        .success()
    {
        bail!("could not install the peers into {}", venv.display());
    }
    Ok(())
}

/// A factory of `program args...`, with environment `env`.
fn command(program: &Path, args: Vec<String>, env: &[(&str, &str)]) -> Box<dyn Fn() -> Command> {
    let program = program.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Box::new(move || {
        let mut c = Command::new(&program);
        c.args(&args).envs(env.iter().map(|(k, v)| (k, v)));
        c
    })
}

/// `ferry copy JOB --connections CONNECTIONS` as arguments.
fn ferry_copy(job: &Path, connections: &Path) -> Vec<String> {
    vec![
        "copy".to_string(),
        job.display().to_string(),
        "--connections".to_string(),
        connections.display().to_string(),
    ]
}

/// A named tool: a factory of the command to time.
type Tool = (String, Box<dyn Fn() -> Command>);

/// Runs every tool `runs` times, interleaved so that machine noise hits them alike.
fn run_interleaved(tools: &[Tool], runs: usize) -> Result<Vec<(String, Vec<Run>)>> {
    let mut results: Vec<(String, Vec<Run>)> =
        tools.iter().map(|(n, _)| (n.clone(), Vec::new())).collect();
    for round in 0..runs {
        for (i, (name, make)) in tools.iter().enumerate() {
            let run = measure(&mut make())?;
            eprintln!(
                "round {round} {name}: {:.2}s, {:.0} MiB",
                run.secs, run.max_rss_mib
            );
            results[i].1.push(run);
        }
    }
    Ok(results)
}

/// perf/work, created on first use.
fn work_dir() -> Result<PathBuf> {
    std::fs::create_dir_all("perf/work")?;
    Ok(PathBuf::from("perf/work").canonicalize()?)
}

fn stats(runs: &[Run], f: impl Fn(&Run) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn write_job(path: &Path, body: &str) -> Result<()> {
    std::fs::write(path, body).with_context(|| format!("write {}", path.display()))
}

/// `lineitem` at `scale` as one file of `format` (csv or parquet) in the work directory,
/// made by ferry's generator once.
fn lineitem_file(work: &Path, scale: f64, format: &str, ferry: &Path) -> Result<PathBuf> {
    let path = work.join(format!("lineitem-sf{scale}.{format}"));
    if !path.exists() {
        let job = work.join(format!("generate-{format}-{scale}.json"));
        write_job(
            &job,
            &format!(
                r#"{{"name":"perf-generate","source":{{"type":"tpch","table":"lineitem","scale_factor":{scale}}},"sink":{{"type":"file","path":"{}","format":{{"type":"{format}"}}}},"parallel_copies":2}}"#,
                path.display()
            ),
        )?;
        eprintln!("generating {}", path.display());
        measure(Command::new(ferry).arg("copy").arg(&job))?;
    }
    Ok(path)
}

fn csv_to_parquet(scale: f64, runs: usize, ferry: &Path) -> Result<()> {
    let work = work_dir()?;
    let venv = PathBuf::from("perf/.venv");
    let peers = ["duckdb", "pyarrow", "polars"];
    ensure_venv(&venv, &peers)?;
    let csv = lineitem_file(&work, scale, "csv", ferry)?;
    let csv_bytes = std::fs::metadata(&csv)?.len();
    let out = |name: &str| work.join(format!("out-{name}.parquet"));
    let ferry_job = work.join("ferry.json");
    write_job(
        &ferry_job,
        &format!(
            r#"{{"name":"perf-csv-to-parquet","source":{{"type":"file","path":"{}","format":{{"type":"csv"}}}},"sink":{{"type":"file","path":"{}/","format":{{"type":"parquet","compression":"snappy"}}}},"parallel_copies":2,"max_buffer_bytes":"256MiB"}}"#,
            csv.display(),
            out("ferry").display()
        ),
    )?;
    let small_job = work.join("ferry-64.json");
    write_job(
        &small_job,
        &format!(
            r#"{{"name":"perf-csv-to-parquet-64","source":{{"type":"file","path":"{}","format":{{"type":"csv"}}}},"sink":{{"type":"file","path":"{}/","format":{{"type":"parquet","compression":"snappy"}}}},"parallel_copies":2,"max_buffer_bytes":"64MiB"}}"#,
            csv.display(),
            out("ferry-64").display()
        ),
    )?;
    let duck = format!(
        "import duckdb; duckdb.sql(\"COPY (SELECT * FROM read_csv('{}')) TO '{}' (FORMAT parquet, COMPRESSION snappy)\")",
        csv.display(),
        out("duckdb").display()
    );
    let pyarrow = format!(
        "import pyarrow.csv as c, pyarrow.parquet as pq\nr = c.open_csv('{}')\nw = pq.ParquetWriter('{}', r.schema, compression='snappy')\nfor b in r: w.write_batch(b)\nw.close()",
        csv.display(),
        out("pyarrow").display()
    );
    let polars = format!(
        "import polars as pl\npl.scan_csv('{}').sink_parquet('{}', compression='snappy')",
        csv.display(),
        out("polars").display()
    );
    let tools: Vec<Tool> = vec![
        (
            "ferry (parallel_copies 2, 256MiB)".into(),
            Box::new({
                let (f, j) = (ferry.to_path_buf(), ferry_job.clone());
                move || {
                    let mut c = Command::new(&f);
                    c.arg("copy").arg(&j);
                    c
                }
            }),
        ),
        (
            "ferry (parallel_copies 2, 64MiB budget)".into(),
            Box::new({
                let (f, j) = (ferry.to_path_buf(), small_job.clone());
                move || {
                    let mut c = Command::new(&f);
                    c.arg("copy").arg(&j);
                    c
                }
            }),
        ),
        (
            "DuckDB".into(),
            Box::new({
                let (p, s) = (python(&venv), duck.clone());
                move || {
                    let mut c = Command::new(&p);
                    c.args(["-c", &s]);
                    c
                }
            }),
        ),
        (
            "pyarrow (streaming)".into(),
            Box::new({
                let (p, s) = (python(&venv), pyarrow.clone());
                move || {
                    let mut c = Command::new(&p);
                    c.args(["-c", &s]);
                    c
                }
            }),
        ),
        (
            "polars (streaming: scan_csv + sink_parquet)".into(),
            command(&python(&venv), vec!["-c".into(), polars], &[]),
        ),
    ];
    let results = run_interleaved(&tools, runs)?;
    let mut table = format!(
        "# CSV -> Parquet (snappy), TPC-H lineitem SF {scale}\n\nInput: {:.0} MB CSV. {runs} runs each, interleaved; wall time and peak RSS of the whole process. Peers: {}.\n\n| tool | time min / median / max (s) | MB/s (median) | peak RSS median (MiB) | vs DuckDB |\n| --- | --- | --- | --- | --- |\n",
        csv_bytes as f64 / 1e6,
        peer_versions(&peers)
    );
    let duck_median = stats(&results[2].1, |r| r.secs).1;
    for (name, runs) in &results {
        let (lo, med, hi) = stats(runs, |r| r.secs);
        let rss = stats(runs, |r| r.max_rss_mib).1;
        table.push_str(&format!(
            "| {name} | {lo:.2} / {med:.2} / {hi:.2} | {:.0} | {rss:.0} | {:.2}x |\n",
            csv_bytes as f64 / 1e6 / med,
            duck_median / med
        ));
    }
    table.push_str(&format!(
        "\nMachine: {} cores. Command: `cargo run -p ferry-perf --release -- csv-to-parquet --scale {scale} --runs {runs}`.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    println!("{table}");
    std::fs::create_dir_all("perf/results")?;
    std::fs::write(format!("perf/results/csv-to-parquet-sf{scale}.md"), table)?;
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().scenario {
        Scenario::CsvToParquet(s) => csv_to_parquet(s.scale, s.runs, &s.binary.ferry),
        Scenario::Postgres(s) => postgres::run(s.scale, s.runs, &s.binary.ferry),
        Scenario::Azure(s) => azure::run(s.scale, s.runs, &s.binary.ferry),
        Scenario::Worker(b) => worker::run(&b.ferry),
        Scenario::Memory(r) => memory::run(r.runs, &r.binary.ferry),
        Scenario::Sharing(r) => sharing::run(r.runs, &r.binary.ferry),
        Scenario::Sqlserver(s) => sqlserver::run(s.scale, s.runs, &s.binary.ferry),
        Scenario::SqlserverPeer(p) => sqlserver::serve(&p),
    }
}
