//! Memory stays bounded by the budget: `ferry copy` runs as a child process over CSV 20 times
//! its `max_buffer_bytes`, and its peak resident set (from `wait4`'s resource usage) must stay
//! under the bound measured for this build. No time is measured.

use std::io::Write;

use crate::support::{ferry, js};

/// The child's peak RSS in KiB, after it exited successfully; its standard error goes to
/// `log`.
// `wait4` reaps the child (and gives its resource usage, which `Child::wait` does not).
#[allow(clippy::zombie_processes)]
fn peak_rss_kib(command: &mut std::process::Command, log: &std::path::Path) -> u64 {
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data, zeroed is a valid value; `wait4` writes to live locals.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
        usage
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "ferry failed with status {status}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    usage.ru_maxrss as u64
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
    // memory-heaptrack.md): the unoptimised test build peaks at the budget plus about
    // 97 MiB here (113-114 MiB over three runs), so the bound is the budget plus 128 MiB.
    // Issue 16's target is the budget plus 64 MiB; this test catches a regression on the way.
    let bound = (budget >> 20) + 128;
    assert!(
        peak_mib <= bound,
        "peak RSS {peak_mib} MiB over the bound of {bound} MiB for a 16 MiB budget"
    );
    eprintln!("peak RSS {peak_mib} MiB for a 16 MiB budget over {size} bytes");
}
