//! `ferry validate JOB.json`: parse and check a job (and the connections it names) without
//! running it or connecting to anything.

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
    /// A policy file (the keys of a node's `[policy]`): confine the job's local paths to its
    /// `local_roots` and check the job against its rules, as a worker node would.
    #[arg(long, env = "FERRY_POLICY")]
    policy: Option<PathBuf>,
    /// The runtime's credential key (from `ferry runtime init`), which opens the
    /// connections' `{"encrypted": ...}` secrets in memory.
    #[arg(long, env = "FERRY_CREDENTIAL_KEY")]
    credential_key: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: ValidateArgs) -> u8 {
    let loaded = super::load(
        &args.job,
        args.connections.as_deref(),
        args.policy.as_deref(),
        args.credential_key.as_deref(),
    )
    .and_then(|(spec, settings, connections)| {
        ferry_connectors::validate_connections(&spec, &connections)?;
        Ok(settings)
    });
    match loaded {
        Ok(settings) => {
            outln!(
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
