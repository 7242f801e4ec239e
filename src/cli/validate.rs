//! `ferry validate JOB.json`: parse and check a job without running it.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `ferry validate`.
#[derive(Args)]
pub struct ValidateArgs {
    /// The job file.
    job: PathBuf,
    /// File of named connections.
    #[arg(long, env = "FERRY_CONNECTIONS")]
    connections: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: ValidateArgs) -> u8 {
    match super::load(&args.job, args.connections.as_deref()) {
        Ok((_, settings, _)) => {
            println!(
                "job {} is valid (parallel_copies {}, max_buffer_bytes {})",
                settings.name,
                settings.parallel_copies,
                ferry_engine::config::ByteSize(settings.max_buffer_bytes)
            );
            0
        }
        Err(e) => super::fail(&e),
    }
}
