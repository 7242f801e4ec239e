//! `ferry copy JOB.json`: run one job in this process, with a progress bar on a terminal and
//! the report at the end.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use ferry_engine::{JobControl, JobProgress, JobReport};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

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
    /// The runtime's credential key (from `ferry runtime init`), which opens the
    /// connections' `{"encrypted": ...}` secrets in memory.
    #[arg(long, env = "FERRY_CREDENTIAL_KEY")]
    credential_key: Option<PathBuf>,
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
        args.credential_key.as_deref(),
    ) {
        Ok(loaded) => loaded,
        Err(e) => {
            let code = super::fail(&e);
            if let ReportFormat::Json = args.report {
                // A script reading the JSON report gets one for an invalid job file too.
                let name = args
                    .job
                    .file_stem()
                    .map_or_else(|| "?".to_string(), |s| s.to_string_lossy().to_string());
                if let Ok(json) = serde_json::to_string_pretty(&JobReport::failed(&name, e)) {
                    outln!("{json}");
                }
            }
            return code;
        }
    };
    let name = settings.name.clone();
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    let system = actix::System::new();
    let reports = system.block_on(async move {
        // One Ctrl-C handler for the whole command, from its first moment (see
        // `watch_ctrl_c`): before the job runs it ends the process, since nothing was
        // written yet; once a phase runs, it cancels that phase.
        let running = watch_ctrl_c(&name);
        // Until a phase runs, a spinner says what ferry is doing; then a progress bar.
        let shown: Mutex<Option<(ProgressBar, ferry_engine::task::OwnedTask<()>)>> =
            Mutex::new(show_progress.then(spawn_preparing));
        let clear = |shown: &Mutex<Option<(ProgressBar, ferry_engine::task::OwnedTask<()>)>>| {
            if let Some((bar, ticker)) = shown.lock().ok().and_then(|mut s| s.take()) {
                ticker.abort();
                bar.finish_and_clear();
            }
        };
        let observe = |job: &JobControl| {
            if let Ok(mut slot) = running.lock() {
                *slot = Some(job.cancel.clone());
            }
            clear(&shown);
            if show_progress && let Ok(mut slot) = shown.lock() {
                *slot = Some(spawn_progress(job.progress.clone()));
            }
        };
        let reports = ferry_connectors::run_job(&spec, settings, &connections, &observe).await;
        clear(&shown);
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
                    outln!("phase {} of 2 ({what})", i + 1);
                }
                outln!("{}", report.to_string().trim_end());
            }
        }
        ReportFormat::Json => {
            let json = if staged {
                serde_json::to_string_pretty(&serde_json::json!({ "phases": reports }))
            } else {
                serde_json::to_string_pretty(&reports[0])
            };
            match json {
                Ok(json) => outln!("{json}"),
                Err(e) => eprintln!("error: cannot print the report: {e}"),
            }
        }
    }
    let last = reports.last().unwrap_or(&reports[0]);
    let failed = reports.iter().find(|r| r.error.is_some()).unwrap_or(last);
    // The text report on a terminal already shows the error; a JSON report, or output
    // that goes elsewhere, gets it on stderr too.
    if let Some(e) = &failed.error
        && (matches!(args.report, ReportFormat::Json) || !std::io::stdout().is_terminal())
    {
        eprintln!("error: {}", e.message);
    }
    failed.exit_code() as u8
}

/// Listens for Ctrl-C on a thread of its own, registered before this returns, so that a
/// Ctrl-C while the job is still being prepared (which may keep the main thread busy for
/// seconds) is handled too. Returns the slot where the running phase's cancel token goes.
fn watch_ctrl_c(job: &str) -> Arc<Mutex<Option<CancellationToken>>> {
    let running: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
    let (ready, registered) = std::sync::mpsc::channel();
    let (slot, job) = (running.clone(), job.to_string());
    let spawned = std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready.send(());
                return;
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let interrupt = signal(SignalKind::interrupt());
                let _ = ready.send(());
                let Ok(mut interrupt) = interrupt else { return };
                while interrupt.recv().await.is_some() {
                    eprintln!("cancelling: nothing will be published");
                    match slot.lock().ok().and_then(|r| r.clone()) {
                        Some(token) => token.cancel(),
                        None => {
                            eprintln!("job {job} cancelled before it started; nothing was written");
                            std::process::exit(1);
                        }
                    }
                }
            });
        });
    if spawned.is_ok() {
        let _ = registered.recv();
    }
    running
}

/// A spinner while the job is prepared (metadata read, schemas inferred, partitions planned).
fn spawn_preparing() -> (ProgressBar, ferry_engine::task::OwnedTask<()>) {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message("preparing the job (reading metadata, planning partitions)");
    let shown = bar.clone();
    let ticker = ferry_engine::task::spawn(async move {
        loop {
            shown.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, ticker)
}

fn spawn_progress(progress: Arc<JobProgress>) -> (ProgressBar, ferry_engine::task::OwnedTask<()>) {
    // A spinner until a total is known: a bar of length 0 would show 100%.
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let bar_style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    let shown = bar.clone();
    let ticker = ferry_engine::task::spawn(async move {
        loop {
            let s = progress.snapshot();
            if (s.input_bytes_total > 0 || s.partitions_total > 0) && shown.length().is_none() {
                shown.set_style(bar_style.clone());
            }
            if s.input_bytes_total > 0 {
                shown.set_length(s.input_bytes_total);
                shown.set_position(s.input_bytes_read.min(s.input_bytes_total));
            } else if s.partitions_total > 0 {
                shown.set_length(s.partitions_total);
                shown.set_position(s.partitions_done);
            }
            shown.set_message(format!(
                "{} rows read, {} encoded, {} written, {} skipped, partitions {}/{}",
                s.records_read,
                s.rows_encoded,
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
