//! Peak memory against the byte budget: four workloads at three `max_buffer_bytes` each,
//! every `ferry copy`'s peak RSS (wait4) against the bound the docs promise, the budget plus
//! 64 MiB. CSV lineitem SF 5 -> Parquet, PostgreSQL lineitem SF 1 -> Parquet, Parquet SF 1
//! -> PostgreSQL (overwrite), CSV SF 1 -> Parquet blobs in Azurite.

use std::path::Path;

use anyhow::{Context, Result};

use crate::azure::{Azurite, KEY};
use crate::postgres::lineitem_server;
use crate::{
    Tool, command, ferry_copy, lineitem_file, run_interleaved, stats, work_dir, write_job,
};

const BUDGETS_MIB: [u64; 4] = [16, 64, 128, 256];

pub fn run(runs: usize, ferry: &Path) -> Result<()> {
    let work = work_dir()?;
    let csv5 = lineitem_file(&work, 5.0, "csv", ferry)?;
    let csv1 = lineitem_file(&work, 1.0, "csv", ferry)?;
    let parquet1 = lineitem_file(&work, 1.0, "parquet", ferry)?;
    let (pg, db, pg_connections) = lineitem_server(&work, 1.0, ferry)?;
    let azurite = Azurite::start(work.join("azurite-memory"))?;
    azurite.container("memory")?;
    let connections =
        azurite.connections_with(&pg_connections, &work.join("memory-connections.json"))?;
    let out = work.join("memory-out");
    let workloads: Vec<(&str, String, String)> = vec![
        (
            "CSV SF5 -> Parquet",
            format!(
                r#"{{"type":"file","path":"{}","format":{{"type":"csv"}}}}"#,
                csv5.display()
            ),
            format!(
                r#"{{"type":"file","path":"{}/csv5/","format":{{"type":"parquet","compression":"snappy"}}}}"#,
                out.display()
            ),
        ),
        (
            "PostgreSQL SF1 -> Parquet",
            r#"{"type":"postgres","connection":"pg","table":"lineitem"}"#.to_string(),
            format!(
                r#"{{"type":"file","path":"{}/pg/","format":{{"type":"parquet","compression":"snappy"}}}}"#,
                out.display()
            ),
        ),
        (
            "Parquet SF1 -> PostgreSQL (overwrite)",
            format!(
                r#"{{"type":"file","path":"{}","format":{{"type":"parquet"}}}}"#,
                parquet1.display()
            ),
            r#"{"type":"postgres","connection":"pg","table":"lineitem_memory","mode":"overwrite"}"#
                .to_string(),
        ),
        (
            "CSV SF1 -> Parquet blobs (Azurite)",
            format!(
                r#"{{"type":"file","path":"{}","format":{{"type":"csv"}}}}"#,
                csv1.display()
            ),
            r#"{"type":"azure_blob","connection":"az","container":"memory","path":"lineitem/","format":{"type":"parquet"}}"#
                .to_string(),
        ),
    ];
    let mut tools: Vec<Tool> = Vec::new();
    let mut rows: Vec<(&str, u64)> = Vec::new();
    for (name, source, sink) in &workloads {
        for budget in BUDGETS_MIB {
            let job = work.join(format!("memory-{}.json", rows.len()));
            write_job(
                &job,
                &format!(
                    r#"{{"name":"perf-memory-{n}","source":{source},"sink":{sink},"parallel_copies":2,"max_buffer_bytes":"{budget}MiB"}}"#,
                    n = rows.len()
                ),
            )?;
            tools.push((
                format!("{name}, {budget} MiB"),
                command(
                    ferry,
                    ferry_copy(&job, &connections),
                    &[("FERRY_PERF_AZURITE_KEY", KEY)],
                ),
            ));
            rows.push((name, budget));
        }
    }
    let results = run_interleaved(&tools, runs)?;
    let loaded = pg.scalar(db, "SELECT count(*) FROM lineitem_memory")?;
    let mut table = format!(
        "# Peak memory against the byte budget\n\n\
         Every `ferry copy` of four workloads at three `max_buffer_bytes`, `parallel_copies: 2`, \
         {runs} runs each, interleaved; peak RSS of the ferry process (wait4), against the bound \
         the docs promise: the budget plus 64 MiB. Parquet -> PostgreSQL loaded {loaded} rows a run.\n\n\
         | workload | budget (MiB) | peak RSS min / median / max (MiB) | budget + 64 MiB | within | time median (s) |\n\
         | --- | --- | --- | --- | --- | --- |\n"
    );
    for ((name, budget), (_, runs)) in rows.iter().zip(&results) {
        let (lo, med, hi) = stats(runs, |r| r.max_rss_mib);
        let secs = stats(runs, |r| r.secs).1;
        let bound = budget + 64;
        table.push_str(&format!(
            "| {name} | {budget} | {lo:.0} / {med:.0} / {hi:.0} | {bound} | {} | {secs:.2} |\n",
            if hi <= bound as f64 { "yes" } else { "no" }
        ));
    }
    table.push_str(&format!(
        "\nMachine: {} cores. Command: `cargo run -p ferry-perf --release -- memory --runs {runs}`.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    println!("{table}");
    std::fs::create_dir_all("perf/results")?;
    let path = "perf/results/memory.md";
    std::fs::write(path, table).with_context(|| format!("write {path}"))?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
