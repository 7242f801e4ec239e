//! SQL Server scenario against the TDS test peer (`tds-peer`, in this process, over loopback
//! TLS): TPC-H lineitem is put into the peer, then `ferry copy` reads it to Parquet (one
//! session, and two sessions by `l_orderkey` ranges) and loads that Parquet back with a
//! TDS bulk load. The peer isolates ferry's own cost from a server's; it runs on the same two
//! cores, so its work is in the figures too.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int32Type, Int64Type};
use tds_peer::{LINEITEM, Peer, Value};

use crate::{Tool, command, ferry_copy, measure, run_interleaved, stats, work_dir, write_job};

const PASSWORD: &str = "Perf-pw-1";

/// One column of a batch as the peer's values.
fn values(array: &dyn Array) -> Result<Vec<Value>> {
    Ok(match array.data_type() {
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .map(|v| Value::Int(*v))
            .collect(),
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .values()
            .iter()
            .map(|v| Value::Int(*v as i64))
            .collect(),
        DataType::Decimal128(_, _) => array
            .as_primitive::<Decimal128Type>()
            .values()
            .iter()
            .map(|v| Value::Decimal(*v))
            .collect(),
        // The peer counts days from 0001-01-01.
        DataType::Date32 => array
            .as_primitive::<Date32Type>()
            .values()
            .iter()
            .map(|v| Value::Date(*v as i64 + 719_162))
            .collect(),
        _ => {
            let text = arrow::compute::cast(array, &DataType::Utf8)?;
            text.as_string::<i32>()
                .iter()
                .map(|v| Value::Text(v.unwrap_or_default().to_string()))
                .collect()
        }
    })
}

/// Puts lineitem at `scale` into the peer's `dbo.lineitem`; returns its rows.
fn fill(peer: &Peer, scale: f64) -> Result<usize> {
    peer.create_table("dbo.lineitem", &LINEITEM);
    let generator = tpchgen::generators::LineItemGenerator::new(scale, 1, 1);
    let mut rows = 0;
    for batch in tpchgen_arrow::LineItemArrow::new(generator).with_batch_size(65_536) {
        let batch = batch?;
        let columns: Vec<Vec<Value>> = batch
            .columns()
            .iter()
            .map(|c| values(c.as_ref()))
            .collect::<Result<_>>()?;
        let mut columns: Vec<std::vec::IntoIter<Value>> =
            columns.into_iter().map(Vec::into_iter).collect();
        let batch_rows: Vec<Vec<Value>> = (0..batch.num_rows())
            .map(|_| columns.iter_mut().filter_map(Iterator::next).collect())
            .collect();
        rows += batch_rows.len();
        peer.insert("dbo.lineitem", batch_rows);
    }
    Ok(rows)
}

/// What the peer process is given.
#[derive(clap::Args)]
pub(crate) struct PeerArgs {
    /// TPC-H scale factor of lineitem.
    #[arg(long)]
    scale: f64,
    /// Where to write its CA certificate and, once it holds the table, its port.
    #[arg(long)]
    dir: std::path::PathBuf,
}

/// The peer process: starts the peer, puts lineitem into it, writes `dir/peer.port`, and
/// serves until its standard input closes; then prints the rows of `dbo.loaded`.
pub(crate) fn serve(args: &PeerArgs) -> Result<()> {
    let work = &args.dir;
    // The peer's TLS identity, signed by a CA of this run.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &issuer)?;
    std::fs::write(work.join("ca.pem"), ca_cert.pem())?;
    let peer = Peer::start(tds_peer::Config {
        user: "perf".into(),
        password: PASSWORD.into(),
        databases: vec!["perf".into()],
        tls: Some(tds_peer::TlsIdentity {
            chain: vec![cert.der().to_vec()],
            key: key.serialize_der(),
        }),
        snapshot_isolation: false,
    })
    .context("start the TDS test peer")?;
    eprintln!("putting lineitem SF {} into the peer...", args.scale);
    let rows = fill(&peer, args.scale)?;
    std::fs::write(
        work.join("peer.port.tmp"),
        format!("{} {rows}", peer.port()),
    )?;
    std::fs::rename(work.join("peer.port.tmp"), work.join("peer.port"))?;
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest)?;
    println!("{}", peer.table("dbo.loaded").map_or(0, |t| t.rows.len()));
    Ok(())
}

pub(crate) fn run(scale: f64, runs: usize, ferry: &Path) -> Result<()> {
    let work = work_dir()?.join("sqlserver");
    std::fs::create_dir_all(&work)?;
    // The peer runs in a process of its own, so that the peak RSS of each `ferry copy` is
    // its own (Linux keeps a process's high-water mark across fork and exec).
    let _ = std::fs::remove_file(work.join("peer.port"));
    let mut peer = Command::new(std::env::current_exe()?)
        .args(["sqlserver-peer", "--scale", &scale.to_string(), "--dir"])
        .arg(&work)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("start the peer process")?;
    let (port, rows) = loop {
        if let Ok(text) = std::fs::read_to_string(work.join("peer.port")) {
            let (port, rows) = text.split_once(' ').context("peer.port")?;
            break (port.parse::<u16>()?, rows.parse::<usize>()?);
        }
        if let Some(status) = peer.try_wait()? {
            anyhow::bail!("the peer process ended: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    eprintln!("{rows} rows in the peer");
    let connections = work.join("connections.json");
    std::fs::write(
        &connections,
        serde_json::json!({"mssql": {"type": "sqlserver", "host": "127.0.0.1",
            "port": port, "database": "perf", "user": "perf",
            "password": {"env": "PERF_MSSQL_PASSWORD"}, "ca_cert": work.join("ca.pem")}})
        .to_string(),
    )?;
    let parquet = work.join("lineitem.parquet");
    let read_one = work.join("read-one.json");
    write_job(
        &read_one,
        &serde_json::json!({"name": "perf-mssql-read", "source": {"type": "sqlserver",
            "connection": "mssql", "table": "lineitem"},
            "sink": {"type": "file", "path": parquet, "format": {"type": "parquet"}}})
        .to_string(),
    )?;
    let read_two = work.join("read-two.json");
    write_job(
        &read_two,
        &serde_json::json!({"name": "perf-mssql-read-2", "source": {"type": "sqlserver",
            "connection": "mssql", "table": "lineitem",
            "partition": {"column": "l_orderkey", "count": 2}},
            "sink": {"type": "file", "path": format!("{}/", work.join("parts").display()),
                     "format": {"type": "parquet"}},
            "parallel_copies": 2})
        .to_string(),
    )?;
    let load = work.join("load.json");
    write_job(
        &load,
        &serde_json::json!({"name": "perf-mssql-load", "source": {"type": "file",
            "path": parquet, "format": {"type": "parquet"}},
            "sink": {"type": "sqlserver", "connection": "mssql", "table": "loaded",
                     "mode": "overwrite", "table_lock": true}})
        .to_string(),
    )?;
    let env = [("PERF_MSSQL_PASSWORD", PASSWORD)];
    // The load reads the Parquet file the first read writes.
    measure(&mut command(
        ferry,
        ferry_copy(&read_one, &connections),
        &env,
    )())?;
    let tools: Vec<Tool> = vec![
        (
            "SQL Server -> Parquet, one session".into(),
            command(ferry, ferry_copy(&read_one, &connections), &env),
        ),
        (
            "SQL Server -> Parquet, two sessions (l_orderkey ranges)".into(),
            command(ferry, ferry_copy(&read_two, &connections), &env),
        ),
        (
            "Parquet -> SQL Server, TDS bulk load (TABLOCK)".into(),
            command(ferry, ferry_copy(&load, &connections), &env),
        ),
    ];
    let results = run_interleaved(&tools, runs);
    drop(peer.stdin.take());
    let out = peer.wait_with_output()?;
    let results = results?;
    let loaded: usize = String::from_utf8(out.stdout)?.trim().parse()?;
    anyhow::ensure!(loaded == rows, "the load left {loaded} rows of {rows}");
    let mut table = format!(
        "# SQL Server (TDS test peer) <-> Parquet, TPC-H lineitem SF {scale}\n\n\
         {rows} rows in the peer's `dbo.lineitem`. {runs} runs each, interleaved; wall time and \
         peak RSS of the `ferry copy` process (the peer runs in a process of its own, on the \
         same cores).\n\n| job | time min / median / max (s) | rows/s (median) | peak RSS median (MiB) |\n\
         | --- | --- | --- | --- |\n"
    );
    for (name, runs) in &results {
        let (lo, med, hi) = stats(runs, |r| r.secs);
        let rss = stats(runs, |r| r.max_rss_mib).1;
        table.push_str(&format!(
            "| {name} | {lo:.2} / {med:.2} / {hi:.2} | {:.0} | {rss:.0} |\n",
            rows as f64 / med
        ));
    }
    table.push_str(&format!(
        "\nMachine: {} cores. Command: `cargo run -p ferry-perf --release -- sqlserver --scale {scale} --runs {runs}`.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    println!("{table}");
    std::fs::create_dir_all("perf/results")?;
    std::fs::write(format!("perf/results/sqlserver-sf{scale}.md"), table)?;
    Ok(())
}
