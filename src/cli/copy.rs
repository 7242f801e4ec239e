//! `ferry copy JOB.json`: run one job in this process, with a progress bar on a terminal and
//! the report at the end.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ferry_engine::{JobProgress, JobReport};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `ferry copy`.
#[derive(Args)]
pub struct CopyArgs {
    /// The job file.
    job: PathBuf,
    /// File of named connections.
    #[arg(long, env = "FERRY_CONNECTIONS")]
    connections: Option<PathBuf>,
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
    let (spec, settings, connections) = match super::load(&args.job, args.connections.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => return super::fail(&e),
    };
    let name = settings.name.clone();
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    let system = actix::System::new();
    let report = system.block_on(async move {
        let job = match ferry_connectors::build_job(&spec, settings, &connections).await {
            Ok(job) => job,
            Err(e) => return JobReport::failed(&name, e),
        };
        let running = ferry_engine::start(job);
        let cancel = running.cancel.clone();
        let ctrl_c = tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("cancelling: nothing will be published");
                cancel.cancel();
            }
        });
        let bar = show_progress.then(|| spawn_progress(running.progress.clone()));
        let report = running.report().await;
        ctrl_c.abort();
        if let Some((bar, ticker)) = bar {
            ticker.abort();
            bar.finish_and_clear();
        }
        report
    });
    match args.report {
        ReportFormat::Text => print!("{report}"),
        ReportFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("error: cannot print the report: {e}"),
        },
    }
    if let Some(e) = &report.error {
        eprintln!("error: {}", e.message);
    }
    report.exit_code() as u8
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
