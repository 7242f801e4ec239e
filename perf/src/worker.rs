//! Worker scaling: jobs per minute and MB/s against `max_concurrent_jobs` (one node) and
//! against the number of nodes (two slots each), on jobs whose time is dominated by waiting
//! for the store (a PostgreSQL query that sleeps one second before it streams its rows); the
//! nodes share the local channel, then an Azure Storage queue (Azurite).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::azure::{ACCOUNT, Azurite, KEY};
use crate::postgres::Server;
use crate::{work_dir, write_job};

const JOBS: usize = 24;

/// One measured configuration.
struct Point {
    label: String,
    x: usize,
    secs: f64,
    mb: f64,
}

/// The channel the nodes share.
#[derive(Clone, Copy, PartialEq)]
enum Channel<'a> {
    Local,
    /// Azurite's queue service endpoint.
    Azure(&'a str),
}

/// The environment variable the perf connections read Azurite's key from.
const KEY_ENV: &str = "FERRY_PERF_AZURITE_KEY";

fn start_node(
    ferry: &Path,
    dir: &Path,
    name: &str,
    slots: usize,
    channel: Channel,
) -> Result<Child> {
    let config = dir.join(format!("{name}.toml"));
    let table = match channel {
        Channel::Local => "type = \"local\"\npath = \"spool\"\n".to_string(),
        Channel::Azure(endpoint) => format!(
            "type = \"azure_queue\"\nconnection = \"control\"\nqueue = \"{}\"\n\
             container = \"control\"\nqueue_endpoint = \"{endpoint}\"\n",
            queue_name(dir)
        ),
    };
    std::fs::write(
        &config,
        format!(
            "node = \"{name}\"\nmax_concurrent_jobs = {slots}\nconnections = \"../pg-connections.json\"\n\
             admin_address = \"127.0.0.1:0\"\n[channel]\n{table}lease_timeout = \"30s\"\npoll_interval = \"100ms\"\n"
        ),
    )?;
    Ok(Command::new(ferry)
        .args(["worker", "--config"])
        .arg(&config)
        .env(KEY_ENV, KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// One queue per configuration directory.
fn queue_name(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.replace(['_', '.'], "-")
}

/// Runs `ferry jobs ARGS --config CONFIG`; returns its standard output.
fn jobs(ferry: &Path, config: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(ferry)
        .arg("jobs")
        .args(args)
        .arg("--config")
        .arg(config)
        .env(KEY_ENV, KEY)
        .output()?;
    if !out.status.success() {
        bail!(
            "ferry jobs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn run_config(
    ferry: &Path,
    work: &Path,
    nodes: usize,
    slots: usize,
    channel: Channel,
) -> Result<(f64, f64)> {
    let kind = if channel == Channel::Local {
        "local"
    } else {
        "queue"
    };
    let dir = work.join(format!("scale-{kind}-{nodes}x{slots}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out"))?;
    let mut children: Vec<Child> = (0..nodes)
        .map(|i| start_node(ferry, &dir, &format!("n{i}"), slots, channel))
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut ids = Vec::new();
    for j in 0..JOBS {
        let job = dir.join(format!("job-{j}.json"));
        write_job(
            &job,
            &format!(
                r#"{{"name":"scale-{j}","source":{{"type":"postgres","connection":"pg","query":"select g, md5(g::text) as h, repeat('x', 200) as pad from generate_series(1, 50000) g, (select pg_sleep(1)) s","snapshot":false}},"sink":{{"type":"file","path":"{}/out/job-{j}.parquet","format":{{"type":"parquet"}}}},"parallel_copies":1,"max_buffer_bytes":"32MiB"}}"#,
                dir.display()
            ),
        )?;
        let submitted = jobs(
            ferry,
            &dir.join("n0.toml"),
            &["submit", &job.to_string_lossy()],
        )?;
        ids.push(submitted.trim().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut bytes = 0u64;
    let config = dir.join("n0.toml");
    // Each job publishes its output atomically at its end: watch the outputs, the same way
    // for every channel and without loading the channel (a `jobs list` is many requests).
    for j in 0..JOBS {
        let output = dir.join(format!("out/job-{j}.parquet"));
        while !output.exists() {
            if Instant::now() > deadline {
                bail!("job {j} did not finish");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // Then every job's report, through the channel.
    for id in &ids {
        let v: serde_json::Value = loop {
            let text = jobs(ferry, &config, &["show", id])?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            if v["status"] != "running" || Instant::now() > deadline {
                break v;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = v.to_string();
        if v["status"] != "succeeded" {
            bail!("job {id} failed: {text}");
        }
        bytes += v["reports"][0]["bytes_read"].as_u64().unwrap_or(0);
    }
    for c in &mut children {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
    }
    for mut c in children {
        let _ = c.wait();
    }
    Ok((secs, bytes as f64 / 1e6))
}

/// An SVG line chart of jobs per minute for each series.
fn plot(series: &[(&str, &[Point])]) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let max_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.x))
        .max()
        .unwrap_or(1) as f64;
    let rate = |p: &Point| JOBS as f64 / p.secs * 60.0;
    let max_y = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(rate))
        .fold(1.0, f64::max)
        * 1.1;
    let sx = |x: f64| pad + (x / max_x) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y / max_y) * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">slots (one node) or nodes (2 slots each)</text>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">jobs per minute</text>\n",
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for x in 1..=(max_x as usize) {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x}</text>\n",
            sx(x as f64),
            h - pad + 16.0
        ));
    }
    for i in 0..=4 {
        let y = max_y * i as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y:.0}</text>\n",
            pad - 6.0,
            sy(y) + 4.0
        ));
    }
    for (k, (name, points)) in series.iter().enumerate() {
        let color = ["#1f77b4", "#d62728", "#2ca02c"][k % 3];
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.x as f64), sy(rate(p))))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        ));
        for p in *points {
            svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                sx(p.x as f64),
                sy(rate(p))
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
            pad + 10.0,
            pad + 14.0 * k as f64
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn run(ferry: &Path) -> Result<()> {
    let work: PathBuf = work_dir()?;
    let server = Server::start(work.join("pg"))?;
    let azurite = Azurite::start(work.join("azurite-worker"))?;
    azurite.container("control")?;
    write_job(
        &work.join("pg-connections.json"),
        &format!(
            r#"{{"pg": {{"type": "postgres", "host": "127.0.0.1", "port": {}, "user": "postgres", "database": "postgres", "sslmode": "disable"}},
                "control": {{"type": "azure_blob", "account": "{ACCOUNT}", "endpoint": "{}", "allow_http": true, "auth": {{"type": "shared_key", "key": {{"env": "{KEY_ENV}"}}}}}}}}"#,
            server.port,
            azurite.endpoint()
        ),
    )?;
    let queue_endpoint = azurite.queue_endpoint();
    let mut slots = Vec::new();
    for k in [1, 2, 4, 8] {
        let (secs, mb) = run_config(ferry, &work, 1, k, Channel::Local)?;
        eprintln!("1 node x {k} slots: {secs:.1}s");
        slots.push(Point {
            label: format!("1 node, max_concurrent_jobs {k}"),
            x: k,
            secs,
            mb,
        });
    }
    let mut nodes = Vec::new();
    let mut queue_nodes = Vec::new();
    // Side by side: each node count on the local channel, then on the Azure queue.
    for n in [1, 2, 3] {
        let (secs, mb) = run_config(ferry, &work, n, 2, Channel::Local)?;
        eprintln!("{n} nodes x 2 slots, local channel: {secs:.1}s");
        nodes.push(Point {
            label: format!("{n} node(s), max_concurrent_jobs 2 each, local channel"),
            x: n,
            secs,
            mb,
        });
        let (secs, mb) = run_config(ferry, &work, n, 2, Channel::Azure(&queue_endpoint))?;
        eprintln!("{n} nodes x 2 slots, Azure queue: {secs:.1}s");
        queue_nodes.push(Point {
            label: format!("{n} node(s), max_concurrent_jobs 2 each, Azure queue (Azurite)"),
            x: n,
            secs,
            mb,
        });
    }
    drop(server);
    drop(azurite);
    let mut table = format!(
        "# Worker scaling\n\n{JOBS} jobs, each a PostgreSQL query that waits 1 s at the server and then streams 50,000 rows \
         (about 13 MB) into a local Parquet file. Nodes share one local channel, or one Azure Storage queue in Azurite (the nodes poll it every 100 ms), \
         on this {}-core machine; the PostgreSQL server and Azurite run here too. \
         Time is from the first submission to the last output published (outputs appear atomically when their job ends); \
         every job's report is then checked through the channel.\n\n\
         | configuration | time (s) | jobs per minute | MB/s | speed-up over 1 slot |\n| --- | --- | --- | --- | --- |\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let base = slots[0].secs;
    for p in slots.iter().chain(&nodes).chain(&queue_nodes) {
        table.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2}x |\n",
            p.label,
            p.secs,
            JOBS as f64 / p.secs * 60.0,
            p.mb / p.secs,
            base / p.secs
        ));
    }
    table.push_str("\n![jobs per minute](worker-scaling.svg)\n\nCommand: `cargo run -p ferry-perf --release -- worker`. One run per configuration.\n");
    let speedup = |p: &Point| base / p.secs;
    let queue_cost: Vec<String> = nodes
        .iter()
        .zip(&queue_nodes)
        .map(|(l, q)| format!("{:+.0}%", (q.secs / l.secs - 1.0) * 100.0))
        .collect();
    table.push_str(&format!(
        "\nWhere it bends: every job spends about 1 s waiting at the server, then about 0.1 s of CPU \
         (binary COPY decode and Parquet encode) per MB. Throughput grows nearly linearly while slots \
         wait: {:.2}x with 2 slots, {:.2}x with 4. With 8 slots the machine's cores are saturated by \
         decoding and encoding ({:.0} MB/s, shared with the PostgreSQL server), so 8 slots give {:.2}x \
         instead of 8x. Nodes behave like slots: 3 nodes of 2 slots (6 slots) give {:.2}x, between \
         the 4-slot and 8-slot points of one node, because the nodes here share the same cores; on \
         separate machines nodes add cores as well as slots. The Azure queue costs {} in time against \
         the local channel at 1, 2 and 3 nodes: a receive, two updates (one records the node in the \
         message, one confirms the lease before publishing), a report blob and a delete per job, all \
         against an emulator on the same cores.\n",
        speedup(&slots[1]),
        speedup(&slots[2]),
        slots[3].mb / slots[3].secs,
        speedup(&slots[3]),
        speedup(&nodes[2]),
        queue_cost.join(", ")
    ));
    println!("{table}");
    std::fs::create_dir_all("perf/results")?;
    std::fs::write("perf/results/worker-scaling.md", table)?;
    std::fs::write(
        "perf/results/worker-scaling.svg",
        plot(&[
            ("one node, slots", &slots),
            ("nodes, 2 slots each (local)", &nodes),
            ("nodes, 2 slots each (Azure queue)", &queue_nodes),
        ]),
    )?;
    Ok(())
}
