//! Helpers shared by the integration tests.

use std::path::Path;

use arrow::record_batch::RecordBatch;
use ferry_engine::JobReport;

/// Runs a job given as JSON in-process (like `ferry copy`) and returns its report.
pub fn run_job(json: &str) -> JobReport {
    let (spec, settings) = ferry_connectors::parse_job(json).expect("job parses");
    let name = settings.name.clone();
    actix::System::new().block_on(async move {
        match ferry_connectors::build_job(&spec, settings, &Default::default()).await {
            Ok(job) => ferry_engine::run(job).await,
            Err(e) => JobReport::failed(&name, e),
        }
    })
}

/// Runs a job and asserts it succeeded.
pub fn run_ok(json: &str) -> JobReport {
    let report = run_job(json);
    assert!(report.error.is_none(), "job failed: {report}");
    report
}

/// Reads every Parquet file under `dir` (or the file itself), in name order.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<_> = if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    files.sort();
    files
        .into_iter()
        .flat_map(|f| {
            let file = std::fs::File::open(&f).unwrap();
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Reads every Arrow IPC file under `dir`, in name order.
pub fn read_ipc_dir(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|f| {
            arrow::ipc::reader::FileReader::try_new(std::fs::File::open(&f).unwrap(), None)
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Checks an Arrow IPC file of `(id int64, payload utf8)` rows written from `rows` rows whose
/// payload is `payload(id)`: every row once and in order, in batches that end by bytes (each
/// below `limit` plus one row of payload, all but the last above half of `limit`, and more
/// than one). `what` names the case in messages.
pub fn assert_batches_end_by_bytes(
    path: &Path,
    rows: usize,
    payload: impl Fn(usize) -> String,
    limit: usize,
    what: &str,
) {
    use arrow::array::AsArray;
    let reader =
        arrow::ipc::reader::FileReader::try_new(std::fs::File::open(path).unwrap(), None).unwrap();
    let mut next = 0usize;
    let mut sizes = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        let payloads = batch.column(1).as_string::<i32>();
        for (r, id) in ids.values().iter().enumerate() {
            assert_eq!(*id, next as i64, "{what}: rows in order, each once");
            assert_eq!(payloads.value(r), payload(next), "{what}: row {next}");
            next += 1;
        }
        sizes.push(payloads.value_data().len());
    }
    assert_eq!(next, rows, "{what}");
    let row = payload(0).len();
    let (last, full) = sizes.split_last().unwrap();
    assert!(
        !full.is_empty()
            && full.iter().chain([last]).all(|&s| s < limit + row)
            && full.iter().all(|&s| s > limit / 2),
        "{what}: batches of about {limit} payload bytes, not one of {}: {sizes:?}",
        rows * row
    );
}

/// The rows of `batches` pretty-printed and sorted, to compare content regardless of order.
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let text = arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

/// Every file below `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                out.push(format!("{}/", p.strip_prefix(base).unwrap().display()));
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// A JSON string literal of a path.
pub fn js(p: &Path) -> String {
    serde_json::to_string(p.to_str().unwrap()).unwrap()
}

pub mod azurite;
pub mod http_faults;
pub mod postgres;
pub mod proxy;
pub mod sqlserver;

/// Runs a job given as JSON in-process with a connections file given as JSON; the report of
/// its last phase (a staged job has two).
pub fn run_job_with(json: &str, connections: &str) -> JobReport {
    run_phases(json, connections).pop().unwrap()
}

/// Runs a job given as JSON in-process; one report per phase.
pub fn run_phases(json: &str, connections: &str) -> Vec<JobReport> {
    let connections = ferry_connectors::Connections::from_json(connections).unwrap();
    let (spec, settings) = ferry_connectors::parse_job(json).expect("job parses");
    actix::System::new().block_on(async move {
        ferry_connectors::run_job(&spec, settings, &connections, &|_| {}).await
    })
}

/// Checks that environment variable `name` holds `value`: the tests' secrets are set by
/// .cargo/config.toml before the test process starts (never with `set_var` while tests run).
pub fn expect_env(name: &str, value: &str) {
    assert_eq!(
        std::env::var(name).as_deref(),
        Ok(value),
        "{name} is set by .cargo/config.toml; run the tests with cargo from the repository"
    );
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `script stop DIR` and removes `dir` once this test process has ended, however it
/// ends: a watchdog that outlives the process on purpose, so it is never waited for.
pub fn stop_when_tests_end(script: &Path, dir: &Path) {
    #[allow(clippy::zombie_processes)]
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {script} stop {dir}; rm -rf {dir}",
            pid = std::process::id(),
            script = script.display(),
            dir = dir.display()
        ))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
}

/// Runs `command` and returns its standard output; fails the test, with the command and its
/// standard error, unless it succeeds.
pub fn succeed(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `ferry` binary under test.
pub fn ferry() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
}
