//! PostgreSQL scenarios: TPC-H lineitem loaded into a private server, then
//! postgres -> Parquet (ferry vs ADBC + pyarrow vs ConnectorX, against the `COPY TO STDOUT`
//! read floor) and postgres -> postgres (ferry vs a psql binary COPY pipe), all in one run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{
    Run, Tool, command, ensure_venv, ferry_copy, measure, peer_versions, python, run_interleaved,
    stats, work_dir, write_job,
};

/// A private server for the run; stopped when dropped.
pub(crate) struct Server {
    dir: PathBuf,
    pub(crate) port: u16,
    bindir: PathBuf,
}

impl Server {
    pub(crate) fn start(dir: PathBuf) -> Result<Server> {
        let status = Command::new("scripts/pg-server.sh")
            .arg("install")
            .status()?;
        if !status.success() {
            bail!("PostgreSQL is not installed and could not be installed");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let ok = Command::new("scripts/pg-server.sh")
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .env(
                "PG_SERVER_OPTS",
                "-c shared_buffers=1GB -c max_wal_size=8GB -c synchronous_commit=off -c max_connections=50",
            )
            .status()?
            .success();
        if !ok {
            bail!(
                "the PostgreSQL server did not start; see {}/server.log",
                dir.display()
            );
        }
        let out = Command::new("scripts/pg-server.sh")
            .arg("bindir")
            .output()?;
        let bindir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
        Ok(Server { dir, port, bindir })
    }

    fn psql(&self, db: &str) -> Command {
        let mut c = Command::new(self.bindir.join("psql"));
        c.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .arg("-p")
        .arg(self.port.to_string());
        c
    }

    fn psql_line(&self, db: &str) -> String {
        format!(
            "{} -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {} -U postgres -d {db}",
            self.bindir.join("psql").display(),
            self.port
        )
    }

    pub(crate) fn scalar(&self, db: &str, sql: &str) -> Result<String> {
        let out = self.psql(db).args(["-tA", "-c", sql]).output()?;
        if !out.status.success() {
            bail!("{sql}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("scripts/pg-server.sh")
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Starts the server and loads lineitem at `scale` once; returns the server, the database
/// and a connections file with the connection `pg`.
pub(crate) fn lineitem_server(
    work: &Path,
    scale: f64,
    ferry: &Path,
) -> Result<(Server, &'static str, PathBuf)> {
    let server = Server::start(work.join("pg"))?;
    let db = "perf";
    if server.scalar(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    )? == "0"
    {
        server.scalar("postgres", &format!("CREATE DATABASE {db}"))?;
    }
    let connections = work.join("pg-connections.json");
    write_job(
        &connections,
        &format!(
            r#"{{"pg": {{"type": "postgres", "host": "127.0.0.1", "port": {}, "user": "postgres", "database": "{db}", "sslmode": "disable"}}}}"#,
            server.port
        ),
    )?;
    let rows: u64 = (6_001_215.0 * scale) as u64;
    let loaded = if server.scalar(db, "SELECT to_regclass('lineitem') IS NOT NULL")? == "t" {
        server
            .scalar(db, "SELECT count(*) FROM lineitem")?
            .parse::<u64>()?
    } else {
        0
    };
    if loaded.abs_diff(rows) > rows / 100 {
        eprintln!("loading lineitem SF {scale} into PostgreSQL with ferry");
        let job = work.join("pg-load.json");
        write_job(
            &job,
            &format!(
                r#"{{"name":"perf-load","source":{{"type":"tpch","table":"lineitem","scale_factor":{scale}}},"sink":{{"type":"postgres","connection":"pg","table":"lineitem","mode":"overwrite"}},"parallel_copies":2}}"#
            ),
        )?;
        measure(
            Command::new(ferry)
                .arg("copy")
                .arg(&job)
                .arg("--connections")
                .arg(&connections),
        )?;
        server.scalar(db, "VACUUM ANALYZE lineitem")?;
    }
    Ok((server, db, connections))
}

pub fn run(scale: f64, runs: usize, ferry: &Path) -> Result<()> {
    let work = work_dir()?;
    let venv = PathBuf::from("perf/.venv");
    let peers = ["pyarrow", "adbc-driver-postgresql", "connectorx"];
    ensure_venv(&venv, &peers)?;
    let (server, db, connections) = lineitem_server(&work, scale, ferry)?;
    let rows: u64 = (6_001_215.0 * scale) as u64;
    let table_mb: f64 = server
        .scalar(db, "SELECT pg_relation_size('lineitem')")?
        .parse::<f64>()?
        / 1e6;
    server.scalar(db, "DROP TABLE IF EXISTS lineitem_psql")?;
    server.scalar(db, "CREATE TABLE lineitem_psql (LIKE lineitem)")?;
    server.scalar(db, "DROP TABLE IF EXISTS lineitem_ferry1")?;
    server.scalar(db, "CREATE TABLE lineitem_ferry1 (LIKE lineitem)")?;

    let out = |name: &str| work.join(format!("pg-out-{name}.parquet"));
    let to_parquet = work.join("pg-to-parquet.json");
    write_job(
        &to_parquet,
        &format!(
            r#"{{"name":"perf-pg-to-parquet","source":{{"type":"postgres","connection":"pg","table":"lineitem"}},"sink":{{"type":"file","path":"{}/","format":{{"type":"parquet","compression":"snappy"}}}},"parallel_copies":2,"max_buffer_bytes":"128MiB"}}"#,
            out("ferry").display()
        ),
    )?;
    let to_pg = work.join("pg-to-pg.json");
    write_job(
        &to_pg,
        r#"{"name":"perf-pg-to-pg","source":{"type":"postgres","connection":"pg","table":"lineitem"},"sink":{"type":"postgres","connection":"pg","table":"lineitem_ferry","mode":"overwrite"},"parallel_copies":2,"max_buffer_bytes":"128MiB"}"#,
    )?;
    let to_pg_one = work.join("pg-to-pg-one.json");
    write_job(
        &to_pg_one,
        r#"{"name":"perf-pg-to-pg-one","source":{"type":"postgres","connection":"pg","table":"lineitem"},"sink":{"type":"postgres","connection":"pg","table":"lineitem_ferry1","mode":"truncate"},"parallel_copies":2,"max_buffer_bytes":"128MiB"}"#,
    )?;
    let adbc = format!(
        "import adbc_driver_postgresql.dbapi as d, pyarrow.parquet as pq\n\
         with d.connect('{url}') as conn:\n    cur = conn.cursor()\n    cur.execute('SELECT * FROM lineitem')\n    r = cur.fetch_record_batch()\n    w = pq.ParquetWriter('{out}', r.schema, compression='snappy')\n    for b in r: w.write_batch(b)\n    w.close()",
        url = server.url(db),
        out = out("adbc").display()
    );
    let connectorx = format!(
        "import connectorx as cx, pyarrow.parquet as pq\n\
         t = cx.read_sql('{url}', 'SELECT * FROM lineitem', return_type='arrow', partition_on='l_orderkey', partition_num=2)\n\
         pq.write_table(t, '{out}', compression='snappy')",
        url = server.url(db),
        out = out("connectorx").display()
    );
    let psql = server.psql_line(db);
    let floor = format!("{psql} -c 'COPY lineitem TO STDOUT (FORMAT binary)' > /dev/null");
    // Two sessions, each a half of the table's pages (a TID range scan), in parallel.
    let half: u64 = server
        .scalar(db, "SELECT pg_relation_size('lineitem') / 8192 / 2")?
        .parse()?;
    let floor2 = format!(
        "{psql} -c \"COPY (SELECT * FROM lineitem WHERE ctid < '({half},0)') TO STDOUT (FORMAT binary)\" > /dev/null & \
         {psql} -c \"COPY (SELECT * FROM lineitem WHERE ctid >= '({half},0)') TO STDOUT (FORMAT binary)\" > /dev/null; wait"
    );
    let pipe = format!(
        "{psql} -c 'COPY lineitem TO STDOUT (FORMAT binary)' | {psql} -1 -c 'TRUNCATE lineitem_psql' -c 'COPY lineitem_psql FROM STDIN (FORMAT binary, FREEZE)'"
    );
    let sh = PathBuf::from("sh");
    let py = python(&venv);
    let read_tools: Vec<Tool> = vec![
        (
            "ferry (parallel_copies 2)".into(),
            command(ferry, ferry_copy(&to_parquet, &connections), &[]),
        ),
        (
            "ADBC 1.x + pyarrow (streaming)".into(),
            command(&py, vec!["-c".into(), adbc], &[]),
        ),
        (
            "ConnectorX (2 partitions)".into(),
            command(&py, vec!["-c".into(), connectorx], &[]),
        ),
        (
            "read floor: psql COPY TO STDOUT (binary) > /dev/null".into(),
            command(&sh, vec!["-c".into(), floor], &[]),
        ),
        (
            "read floor: two psql COPY TO STDOUT (binary) sessions in parallel > /dev/null".into(),
            command(&sh, vec!["-c".into(), floor2], &[]),
        ),
    ];
    let write_tools: Vec<Tool> = vec![
        (
            "ferry (parallel_copies 2, overwrite: two load sessions)".into(),
            command(ferry, ferry_copy(&to_pg, &connections), &[]),
        ),
        (
            "ferry (parallel_copies 2, truncate: one load session, FREEZE)".into(),
            command(ferry, ferry_copy(&to_pg_one, &connections), &[]),
        ),
        (
            "psql binary COPY pipe (one transaction, FREEZE)".into(),
            command(&sh, vec!["-c".into(), pipe], &[]),
        ),
    ];
    let mut all: Vec<Tool> = read_tools;
    let n_read = all.len();
    all.extend(write_tools);
    let results = run_interleaved(&all, runs)?;
    let check = server.scalar(
        db,
        "SELECT (SELECT count(*) FROM lineitem_ferry) = (SELECT count(*) FROM lineitem)",
    )?;
    if check != "t" {
        bail!("lineitem_ferry does not have lineitem's row count");
    }

    let mut table = format!(
        "# PostgreSQL, TPC-H lineitem SF {scale}\n\n{rows} rows, {table_mb:.0} MB on disk in PostgreSQL 15 on the same machine (loopback). \
         {runs} runs each, all tools interleaved in one run; wall time and peak RSS of the whole client process (for pipes, the largest process). \
         Peers: {}.\n\n\
         ## postgres -> Parquet (snappy)\n\n| tool | time min / median / max (s) | rows/s (median) | peak RSS median (MiB) | vs ferry |\n| --- | --- | --- | --- | --- |\n",
        peer_versions(&peers)
    );
    let row = |table: &mut String, name: &str, runs: &[Run], base: f64| {
        let (lo, med, hi) = stats(runs, |r| r.secs);
        let rss = stats(runs, |r| r.max_rss_mib).1;
        table.push_str(&format!(
            "| {name} | {lo:.2} / {med:.2} / {hi:.2} | {:.0}k | {rss:.0} | {:.2}x |\n",
            rows as f64 / med / 1e3,
            base / med
        ));
    };
    let ferry_read = stats(&results[0].1, |r| r.secs).1;
    for (name, runs) in &results[..n_read] {
        row(&mut table, name, runs, ferry_read);
    }
    let ferry_write = stats(&results[n_read].1, |r| r.secs).1;
    table.push_str("\n## postgres -> postgres\n\n| tool | time min / median / max (s) | rows/s (median) | peak RSS median (MiB) | vs ferry |\n| --- | --- | --- | --- | --- |\n");
    for (name, runs) in &results[n_read..] {
        row(&mut table, name, runs, ferry_write);
    }
    table.push_str(&format!(
        "\n\"vs ferry\" is the tool's speed relative to ferry (below 1 = slower than ferry).\n\nMachine: {} cores. Command: `cargo run -p ferry-perf --release -- postgres --scale {scale} --runs {runs}`.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    println!("{table}");
    std::fs::create_dir_all("perf/results")?;
    let path = format!("perf/results/postgres-sf{scale}.md");
    std::fs::write(&path, table).with_context(|| format!("write {path}"))?;
    Ok(())
}
