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
