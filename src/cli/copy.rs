//! `ferry copy JOB.json`: run one job in this process, with a progress bar on a terminal and
//! the report at the end.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use ferry_engine::{JobProgress, JobReport, RunningJob};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `ferry copy`.
#[derive(Args)]
pub struct CopyArgs {
    /// The job file.
    job: PathBuf,
    /// File of named connections.
    #[arg(long, env = "FERRY_CONNECTIONS")]
    connections: Option<PathBuf>,
    /// A policy file (the keys of a node's `[policy]`): confine the job's local paths to its
    /// `local_roots` and check the job against its rules, as a worker node would.
    #[arg(long, env = "FERRY_POLICY")]
    policy: Option<PathBuf>,
    /// How to print the report on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    report: ReportFormat,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

/// Runs the command.
pub fn run(args: CopyArgs) -> u8 {
    let (spec, settings, connections) = match super::load(
        &args.job,
        args.connections.as_deref(),
        args.policy.as_deref(),
    ) {
        Ok(loaded) => loaded,
        Err(e) => return super::fail(&e),
    };
    let name = settings.name.clone();
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    let system = actix::System::new();
    let reports = system.block_on(async move {
        // One progress bar and one Ctrl-C handler per phase (a staged job has two).
        let shown: Mutex<Option<(ProgressBar, tokio::task::JoinHandle<()>)>> = Mutex::new(None);
        let ctrl_c: Mutex<Option<tokio::task::JoinHandle<()>>> = Mutex::new(None);
        let clear = |shown: &Mutex<Option<(ProgressBar, tokio::task::JoinHandle<()>)>>| {
            if let Some((bar, ticker)) = shown.lock().ok().and_then(|mut s| s.take()) {
                ticker.abort();
                bar.finish_and_clear();
            }
        };
        let observe = |running: &RunningJob| {
            let cancel = running.cancel.clone();
            let handler = tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("cancelling: nothing will be published");
                    cancel.cancel();
                }
            });
            if let Ok(mut slot) = ctrl_c.lock()
                && let Some(old) = slot.replace(handler)
            {
                old.abort();
            }
            clear(&shown);
            if show_progress && let Ok(mut slot) = shown.lock() {
                *slot = Some(spawn_progress(running.progress.clone()));
            }
        };
        let reports = ferry_connectors::run_job(&spec, settings, &connections, &observe).await;
        clear(&shown);
        if let Some(handler) = ctrl_c.lock().ok().and_then(|mut s| s.take()) {
            handler.abort();
        }
        if reports.is_empty() {
            vec![JobReport::failed(
                &name,
                ferry_engine::Error::internal("the job produced no report"),
            )]
        } else {
            reports
        }
    });
    let staged = reports.len() > 1;
    match args.report {
        ReportFormat::Text => {
            for (i, report) in reports.iter().enumerate() {
                if staged {
                    let what = if i == 0 {
                        "source -> staging"
                    } else {
                        "staging -> sink"
                    };
                    println!("phase {} of 2 ({what})", i + 1);
                }
                print!("{report}");
            }
        }
        ReportFormat::Json => {
            let json = if staged {
                serde_json::to_string_pretty(&serde_json::json!({ "phases": reports }))
            } else {
                serde_json::to_string_pretty(&reports[0])
            };
            match json {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("error: cannot print the report: {e}"),
            }
        }
    }
    let last = reports.last().unwrap_or(&reports[0]);
    let failed = reports.iter().find(|r| r.error.is_some()).unwrap_or(last);
    if let Some(e) = &failed.error {
        eprintln!("error: {}", e.message);
    }
    failed.exit_code() as u8
}

fn spawn_progress(progress: Arc<JobProgress>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let shown = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            let s = progress.snapshot();
            if s.input_bytes_total > 0 {
                shown.set_length(s.input_bytes_total);
                shown.set_position(s.input_bytes_read.min(s.input_bytes_total));
            } else if s.partitions_total > 0 {
                shown.set_length(s.partitions_total);
                shown.set_position(s.partitions_done);
            }
            shown.set_message(format!(
                "{} rows read, {} written, {} skipped, partitions {}/{}",
                s.records_read,
                s.rows_written,
                s.rows_skipped,
                s.partitions_done,
                s.partitions_total
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, ticker)
}
