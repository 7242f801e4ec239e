//! Azure Blob Storage scenarios against Azurite, in one run:
//! 1. upload of a large Parquet file: ferry's binary copy vs the Python azure-storage-blob
//!    SDK at the same concurrency and block size;
//! 2. postgres lineitem -> Parquet blobs: direct streaming copy vs staged copy (interim
//!    Parquet zstd blobs in the same emulator).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::postgres::lineitem_server;
use crate::{
    Tool, command, ensure_venv, ferry_copy, lineitem_file, peer_versions, python, run_interleaved,
    stats, work_dir, write_job,
};

pub(crate) const ACCOUNT: &str = "devstoreaccount1";
pub(crate) const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A private Azurite for the run; stopped when dropped.
pub(crate) struct Azurite {
    dir: PathBuf,
    port: u16,
    queue_port: u16,
}

impl Azurite {
    pub(crate) fn start(dir: PathBuf) -> Result<Azurite> {
        if !Command::new("scripts/azurite.sh")
            .arg("install")
            .status()?
            .success()
        {
            bail!("Azurite could not be installed");
        }
        let free = || -> Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (port, queue) = (free()?, free()?);
        let _ = std::fs::remove_dir_all(&dir);
        let ok = Command::new("scripts/azurite.sh")
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .arg(queue.to_string())
            .status()?
            .success();
        if !ok {
            bail!("Azurite did not start; see {}/azurite.log", dir.display());
        }
        Ok(Azurite {
            dir,
            port,
            queue_port: queue,
        })
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    pub(crate) fn queue_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.queue_port)
    }

    pub(crate) fn container(&self, name: &str) -> Result<()> {
        let ok = Command::new("python3")
            .args([
                "scripts/azure-container.py",
                "create",
                &self.endpoint(),
                ACCOUNT,
                KEY,
                name,
            ])
            .status()?
            .success();
        if !ok {
            bail!("cannot create container {name}");
        }
        Ok(())
    }
}

impl Azurite {
    /// Writes `path`: the connection `pg` of `pg_connections` and the connection `az` to this
    /// Azurite (its key from `FERRY_PERF_AZURITE_KEY`); returns `path`.
    pub(crate) fn connections_with(&self, pg_connections: &Path, path: &Path) -> Result<PathBuf> {
        let pg_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(pg_connections)?)?;
        write_job(
            path,
            &serde_json::json!({
                "pg": pg_json["pg"],
                "az": {"type": "azure_blob", "account": ACCOUNT, "endpoint": self.endpoint(), "allow_http": true,
                       "auth": {"type": "shared_key", "key": {"env": "FERRY_PERF_AZURITE_KEY"}}}
            })
            .to_string(),
        )?;
        Ok(path.to_path_buf())
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = Command::new("scripts/azurite.sh")
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(scale: f64, runs: usize, ferry: &Path) -> Result<()> {
    let work = work_dir()?;
    let venv = PathBuf::from("perf/.venv");
    let peers = ["azure-storage-blob"];
    ensure_venv(&venv, &peers)?;
    // The file to upload: lineitem as one Parquet file, made by ferry once.
    let parquet = lineitem_file(&work, scale, "parquet", ferry)?;
    let file_mb = std::fs::metadata(&parquet)?.len() as f64 / 1e6;
    let azurite = Azurite::start(work.join("azurite"))?;
    for c in ["upload", "direct", "staged", "staging"] {
        azurite.container(c)?;
    }
    let (pg, _db, pg_connections) = lineitem_server(&work, scale, ferry)?;
    let connections =
        azurite.connections_with(&pg_connections, &work.join("az-connections.json"))?;
    let upload_dir = work.join("az-upload");
    std::fs::create_dir_all(&upload_dir)?;
    let link = upload_dir.join("lineitem.parquet");
    if !link.exists() {
        std::fs::hard_link(&parquet, &link)
            .or_else(|_| std::fs::copy(&parquet, &link).map(|_| ()))?;
    }
    let upload_job = work.join("az-upload.json");
    write_job(
        &upload_job,
        &format!(
            r#"{{"name":"perf-az-upload","source":{{"type":"file","path":"{}/","format":{{"type":"binary"}}}},"sink":{{"type":"azure_blob","connection":"az","container":"upload","path":"ferry/","format":{{"type":"binary","overwrite":true}},"block_size":"4MiB","max_concurrency":4}},"parallel_copies":1}}"#,
            upload_dir.display()
        ),
    )?;
    let sdk = format!(
        "from azure.storage.blob import BlobServiceClient\n\
         svc = BlobServiceClient.from_connection_string('DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={}')\n\
         b = svc.get_blob_client('upload', 'sdk/lineitem.parquet')\n\
         with open('{}', 'rb') as f: b.upload_blob(f, overwrite=True, max_concurrency=4)",
        azurite.endpoint(),
        parquet.display()
    );
    let direct_job = work.join("az-direct.json");
    write_job(
        &direct_job,
        r#"{"name":"perf-pg-to-blob","source":{"type":"postgres","connection":"pg","table":"lineitem"},"sink":{"type":"azure_blob","connection":"az","container":"direct","path":"lineitem/","format":{"type":"parquet"}},"parallel_copies":2,"max_buffer_bytes":"128MiB"}"#,
    )?;
    let staged_job = work.join("az-staged.json");
    write_job(
        &staged_job,
        r#"{"name":"perf-pg-to-blob-staged","source":{"type":"postgres","connection":"pg","table":"lineitem"},"sink":{"type":"azure_blob","connection":"az","container":"staged","path":"lineitem/","format":{"type":"parquet"}},"staging":{"connection":"az","path":"staging/interim"},"parallel_copies":2,"max_buffer_bytes":"128MiB"}"#,
    )?;
    let staged_csv_job = work.join("az-staged-csv.json");
    write_job(
        &staged_csv_job,
        r#"{"name":"perf-pg-to-blob-staged-csv","source":{"type":"postgres","connection":"pg","table":"lineitem"},"sink":{"type":"azure_blob","connection":"az","container":"staged","path":"lineitem-csv/","format":{"type":"parquet"}},"staging":{"connection":"az","path":"staging/interim","format":"csv","compression":"gzip"},"parallel_copies":2,"max_buffer_bytes":"128MiB"}"#,
    )?;
    let tools: Vec<Tool> = vec![
        (
            "ferry binary copy (4MiB blocks, 4 in flight)".into(),
            command(
                ferry,
                ferry_copy(&upload_job, &connections),
                &[("FERRY_PERF_AZURITE_KEY", KEY)],
            ),
        ),
        (
            "azure-storage-blob SDK upload_blob (4MiB blocks, max_concurrency 4)".into(),
            command(
                &python(&venv),
                vec!["-c".into(), sdk],
                &[("FERRY_PERF_AZURITE_KEY", KEY)],
            ),
        ),
        (
            "ferry postgres -> blob parquet, direct".into(),
            command(
                ferry,
                ferry_copy(&direct_job, &connections),
                &[("FERRY_PERF_AZURITE_KEY", KEY)],
            ),
        ),
        (
            "ferry postgres -> blob parquet, staged (interim zstd Parquet blobs)".into(),
            command(
                ferry,
                ferry_copy(&staged_job, &connections),
                &[("FERRY_PERF_AZURITE_KEY", KEY)],
            ),
        ),
        (
            "ferry postgres -> blob parquet, staged (interim gzip CSV blobs, the classic way)"
                .into(),
            command(
                ferry,
                ferry_copy(&staged_csv_job, &connections),
                &[("FERRY_PERF_AZURITE_KEY", KEY)],
            ),
        ),
    ];
    let results = run_interleaved(&tools, runs)?;
    drop(pg);

    let mut table = format!(
        "# Azure Blob Storage (Azurite), TPC-H lineitem SF {scale}\n\n\
         Azurite 3 (the emulator, Node.js, in-memory metadata, blobs on local disk) on the same 2 cores; {runs} runs each, all interleaved in one run; \
         wall time and peak RSS of the whole client process. Peers: {}.\n\n\
         ## Upload of one {file_mb:.0} MB Parquet file\n\n| tool | time min / median / max (s) | MB/s (median) | peak RSS median (MiB) | vs SDK |\n| --- | --- | --- | --- | --- |\n",
        peer_versions(&peers)
    );
    let sdk_median = stats(&results[1].1, |r| r.secs).1;
    for (name, runs) in &results[..2] {
        let (lo, med, hi) = stats(runs, |r| r.secs);
        let rss = stats(runs, |r| r.max_rss_mib).1;
        table.push_str(&format!(
            "| {name} | {lo:.2} / {med:.2} / {hi:.2} | {:.0} | {rss:.0} | {:.2}x |\n",
            file_mb / med,
            sdk_median / med
        ));
    }
    let direct_median = stats(&results[2].1, |r| r.secs).1;
    table.push_str("\n## postgres -> Parquet blobs\n\n| job | time min / median / max (s) | peak RSS median (MiB) | time / direct's |\n| --- | --- | --- | --- |\n");
    for (name, runs) in &results[2..] {
        let (lo, med, hi) = stats(runs, |r| r.secs);
        let rss = stats(runs, |r| r.max_rss_mib).1;
        table.push_str(&format!(
            "| {name} | {lo:.2} / {med:.2} / {hi:.2} | {rss:.0} | {:.2}x |\n",
            med / direct_median
        ));
    }
    table.push_str(&format!(
        "\nMachine: {} cores. Command: `cargo run -p ferry-perf --release -- azure --scale {scale} --runs {runs}`.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    println!("{table}");
    std::fs::create_dir_all("perf/results")?;
    let path = format!("perf/results/azure-sf{scale}.md");
    std::fs::write(&path, table).with_context(|| format!("write {path}"))?;
    Ok(())
}
