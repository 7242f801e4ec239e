//! The `ferry` command: copy jobs, validation, and (later) the worker node.
//!
//! Exit codes: 0 success, 1 the job failed, 2 invalid input (job, connections, arguments).

#[macro_use]
mod cli;

use ferry::worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// ferry: copies data between files, databases and cloud storage, fast and safely.
#[derive(Parser)]
#[command(name = "ferry", version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on stderr (default text; a worker's `[log] format` otherwise).
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one copy job in this process and prints its report.
    Copy(cli::copy::CopyArgs),
    /// Checks a job file (and its connections) without running it.
    Validate(cli::validate::ValidateArgs),
    /// Runs a worker node: takes jobs from the control channel until SIGTERM.
    Worker(cli::node::ConfigArg),
    /// Submits, lists, shows and cancels jobs on the control channel.
    #[command(subcommand)]
    Jobs(cli::node::JobsCommand),
    /// Lists the nodes sharing the control channel and their status.
    Nodes(cli::node::ConfigArg),
    /// Registers this node with its runtime, or removes a node from it.
    #[command(subcommand)]
    Node(cli::node::NodeCommand),
    /// Creates a runtime's identity and keys, rotates its authentication key, answers
    /// nodes' registrations.
    #[command(subcommand)]
    Runtime(cli::runtime::RuntimeCommand),
    /// Seals secrets to the runtime for connections files.
    #[command(subcommand)]
    Credential(cli::credential::CredentialCommand),
    /// Checks a connection: reach the store, authenticate, read metadata.
    TestConnection(cli::test_connection::TestConnectionArgs),
    /// Writes an archive for a support ticket (configuration, reports), secrets redacted.
    Diagnostics(cli::diagnostics::DiagnosticsArgs),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Writes man pages (ferry.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Manpages {
        /// The directory (created if missing).
        dir: std::path::PathBuf,
    },
}

/// How the process logs.
struct Logging {
    verbose: u8,
    format: LogFormat,
    /// A worker is a service: its log says what it did (jobs leased, finished, handed back)
    /// without -v; libraries stay at warnings.
    service: bool,
    /// Directives from the worker's configuration.
    level: Option<String>,
    /// Directory of daily log files, and how many to keep.
    files: Option<(std::path::PathBuf, usize)>,
}

fn init_logging(logging: Logging) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::prelude::*;
    let level = match (logging.verbose, &logging.level) {
        (0, Some(level)) => level.as_str(),
        (0, None) if logging.service => "warn,ferry=info,ferry_connectors=info,ferry_engine=info",
        (0, None) => "warn",
        (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    // tiberius logs every error token the server sends at ERROR level, also those ferry
    // expects and handles (an existence check); ferry reports the ones that matter itself.
    let level = format!("{level},tiberius::tds::stream::token=off");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let mut layers: Vec<Boxed> = vec![if logging.format == LogFormat::Json {
        stderr.json().boxed()
    } else {
        stderr.boxed()
    }];
    let mut file_error = None;
    if let Some((dir, keep)) = logging.files {
        // The state directory and its logs are the service account's alone (0700).
        let appender = ferry_engine::config::local::create_private_dir(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                tracing_appender::rolling::Builder::new()
                    .rotation(tracing_appender::rolling::Rotation::DAILY)
                    .filename_prefix("ferry")
                    .filename_suffix("log")
                    .max_log_files(keep.max(1))
                    .build(&dir)
                    .map_err(|e| e.to_string())
            });
        match appender {
            Ok(appender) => {
                let file = tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(appender);
                layers.push(if logging.format == LogFormat::Json {
                    file.json().boxed()
                } else {
                    file.boxed()
                });
            }
            Err(e) => {
                file_error = Some(format!("cannot write log files in {}: {e}", dir.display()))
            }
        }
    }
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .init();
    if let Some(e) = file_error {
        tracing::error!("{e}; logging to stderr only");
    }
}

/// The allocator: jemalloc, in one arena (threads keep their own caches of small blocks).
/// ferry's stages hand buffers from thread to thread, which glibc's malloc kept in per-thread
/// arenas and rarely reused. Measured side by side on lineitem SF 5 CSV -> Parquet
/// (perf/results/memory.md): peak RSS at a 64 MiB budget 142-152 -> 122-124 MiB, at 16 MiB
/// 93-97 -> 79-81 MiB, in 0.93-1.07x the time.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read as it starts; `_RJEM_MALLOC_CONF` in the environment adds to them
/// (docs/operations.md, "Memory").
// SAFETY: the symbol jemalloc reads its compiled-in settings from, a NUL-terminated string
// that nothing writes.
#[cfg(not(target_env = "msvc"))]
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 10] = b"narenas:1\0";

/// Writes `ferry.1` and `ferry-<subcommand>.1` into `dir` from the command-line definition.
fn write_manpages(dir: &std::path::Path) -> u8 {
    use clap::CommandFactory;
    let write = || -> std::io::Result<usize> {
        std::fs::create_dir_all(dir)?;
        let command = Cli::command();
        clap_mangen::generate_to(command, dir)?;
        Ok(std::fs::read_dir(dir)?.count())
    };
    match write() {
        Ok(n) => {
            outln!("wrote {n} man pages to {}", dir.display());
            0
        }
        Err(e) => cli::fail(&ferry_engine::Error::io(
            format!("cannot write man pages to {}", dir.display()),
            e,
        )),
    }
}

fn main() -> ExitCode {
    ferry_connectors::install_crypto_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let service = matches!(cli.command, Command::Worker(_));
    let settings = match &cli.command {
        Command::Worker(config) => worker::config::log_settings(config.path()),
        _ => None,
    };
    let (log, files) = settings.unwrap_or_default();
    let format = cli.log_format.unwrap_or(match log.format {
        Some(worker::config::LogFileFormat::Json) => LogFormat::Json,
        _ => LogFormat::Text,
    });
    init_logging(Logging {
        verbose: cli.verbose,
        format,
        service,
        level: log.level,
        files: files.map(|dir| {
            (
                dir,
                log.keep_days.unwrap_or(worker::config::DEFAULT_KEEP_DAYS),
            )
        }),
    });
    let code = match cli.command {
        Command::Copy(args) => cli::copy::run(args),
        Command::Validate(args) => cli::validate::run(args),
        Command::Worker(args) => cli::node::run_worker(args),
        Command::Jobs(command) => cli::node::run_jobs(command),
        Command::Nodes(args) => cli::node::run_nodes(args),
        Command::Node(command) => cli::node::run_node(command),
        Command::Runtime(command) => cli::runtime::run(command),
        Command::Credential(command) => cli::credential::run(command),
        Command::TestConnection(args) => cli::test_connection::run(args),
        Command::Diagnostics(args) => cli::diagnostics::run(args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut script);
            outln!("{}", String::from_utf8_lossy(&script).trim_end());
            0
        }
        Command::Manpages { dir } => write_manpages(&dir),
    };
    ExitCode::from(code)
}
