//! `ferry runtime init`: a runtime's identity for signed jobs.

use std::path::PathBuf;

use clap::Subcommand;

/// `ferry runtime ...`.
#[derive(Subcommand)]
pub enum RuntimeCommand {
    /// Creates a runtime's identity in DIR: runtime.json (its id and public keys, for every
    /// node and submitter), signing.key (signs jobs; submitters only) and credential.key
    /// (opens encrypted credentials; nodes only).
    Init {
        /// The directory (created with mode 0700).
        dir: PathBuf,
    },
}

/// Runs `ferry runtime ...`.
pub fn run(command: RuntimeCommand) -> u8 {
    match command {
        RuntimeCommand::Init { dir } => match ferry_connectors::control::trust::init(&dir) {
            Ok(identity) => {
                outln!("runtime {}", identity.runtime);
                outln!(
                    "  {}  public: give it to every node ([trust] runtime = ...)",
                    dir.join("runtime.json").display()
                );
                outln!(
                    "  {}  private (0600): only where jobs are submitted ([trust] signing_key = ...)",
                    dir.join("signing.key").display()
                );
                0
            }
            Err(e) => super::fail(&e),
        },
    }
}
