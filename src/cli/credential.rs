//! `ferry credential encrypt`: a secret sealed to a runtime, for a connections file.

use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;

/// `ferry credential ...`.
#[derive(Subcommand)]
pub enum CredentialCommand {
    /// Reads a secret on standard input and prints it sealed to the runtime, as the value of
    /// a connection's secret field: {"encrypted": "..."}. Needs only the public runtime.json.
    Encrypt {
        /// The runtime's `runtime.json` (from `ferry runtime init`).
        #[arg(long)]
        runtime: PathBuf,
    },
}

/// Runs `ferry credential ...`.
pub fn run(command: CredentialCommand) -> u8 {
    match command {
        CredentialCommand::Encrypt { runtime } => {
            let mut secret = zeroize::Zeroizing::new(String::new());
            if let Err(e) = std::io::stdin().read_to_string(&mut secret) {
                return super::fail(&ferry_engine::Error::io(
                    "cannot read the secret on stdin",
                    e,
                ));
            }
            // One trailing newline is the terminal's or echo's, not the secret's.
            let value = secret.strip_suffix('\n').unwrap_or(&secret);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                return super::fail(&ferry_engine::Error::invalid_input(
                    "no secret on stdin: pipe it in, e.g. `ferry credential encrypt --runtime runtime.json < password.txt`",
                ));
            }
            let sealed = ferry_connectors::control::trust::read_identity(&runtime)
                .and_then(|identity| ferry_connectors::control::trust::seal(&identity, value));
            match sealed {
                Ok(sealed) => {
                    outln!("{}", serde_json::json!({ "encrypted": sealed }));
                    0
                }
                Err(e) => super::fail(&e),
            }
        }
    }
}
