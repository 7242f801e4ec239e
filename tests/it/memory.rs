//! Memory stays bounded by the budget: `ferry copy` runs as a child process over CSV 20 times
//! its `max_buffer_bytes`, and its peak resident set (its `VmHWM`) must stay under the bound
//! measured for this build. No time is measured.

use std::io::Write;

use crate::support::{ferry, js};

/// The child's peak RSS in KiB (its `VmHWM`, polled every 10 ms until it exits), after it
/// exited successfully; its standard error goes to `log`. Not `wait4`'s `ru_maxrss`: Linux
/// keeps a process's high-water mark across fork and exec, so a child of the large test
/// process would report the test process's own.
fn peak_rss_kib(command: &mut std::process::Command, log: &std::path::Path) -> u64 {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(
        status.success(),
        "ferry failed with {status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    assert!(peak > 0, "no VmHWM read from {status_file}");
    peak
}

#[test]
fn a_copy_of_twenty_times_its_budget_stays_within_its_memory_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("big.csv");
    // 4.5 million rows, about 340 MB: more than 20 times the 16 MiB budget.
    let mut out = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
    writeln!(out, "id,name,amount,day,note").unwrap();
    for i in 0..4_500_000u64 {
        writeln!(
            out,
            "{i},name {},{}.{:02},2024-01-{:02},some text for row {i} with words",
            i % 977,
            i * 3,
            i % 100,
            i % 28 + 1
        )
        .unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let size = std::fs::metadata(&csv).unwrap().len();
    let budget: u64 = 16 << 20;
    assert!(size >= 20 * budget, "{size} bytes");
    let job = tmp.path().join("job.json");
    std::fs::write(
        &job,
        format!(
            r#"{{"name": "bounded", "source": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}},
                "sink": {{"type": "file", "path": "{}/", "format": {{"type": "parquet"}}}},
                "max_buffer_bytes": "16MiB", "parallel_copies": 2}}"#,
            js(&csv),
            tmp.path().join("out").display()
        ),
    )
    .unwrap();
    let peak_mib =
        peak_rss_kib(ferry().arg("copy").arg(&job), &tmp.path().join("ferry.log")) / 1024;
    // The bound this build keeps today (docs/operations.md, "Memory"; perf/results/
    // memory.md): the unoptimised test build peaks at 87-88 MiB here (its slower stages hold
    // batches longer than the release build, which peaks at 63-64 MiB on this data's SF 5
    // sibling), so the bound is the budget plus 96 MiB, which leaves room for a slower or
    // busier machine. The target, budget plus 64 MiB, is met by the release build; this test
    // catches a regression of the data's share (before jemalloc and the budget-sized write
    // buffers this build peaked at 108-110 MiB).
    let bound = (budget >> 20) + 96;
    assert!(
        peak_mib <= bound,
        "peak RSS {peak_mib} MiB over the bound of {bound} MiB for a 16 MiB budget"
    );
    eprintln!("peak RSS {peak_mib} MiB for a 16 MiB budget over {size} bytes");
}
