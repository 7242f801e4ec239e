//! `ferry runtime ...`: a runtime's identity, its authentication key, and the answers to
//! nodes' registrations.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use ferry_connectors::control::membership::{
    Answer, RuntimeKeys, answer_registrations, rotate_auth_key,
};

use super::node::ConfigArg;

/// `ferry runtime ...`.
#[derive(Subcommand)]
pub enum RuntimeCommand {
    /// Creates a runtime's identity in DIR: runtime.json (its id and public keys, for every
    /// node and submitter), signing.key (signs jobs and grants; submitters only),
    /// credential.key (opens encrypted credentials) and auth.key (lets nodes register; the
    /// key is printed once).
    Init {
        /// The directory (created with mode 0700).
        dir: PathBuf,
    },
    /// Replaces the runtime's authentication key and prints the new one. Nodes registered
    /// with the old key are cut off at the next `ferry runtime sync` until they register
    /// again with the new one.
    RotateAuthKey {
        /// The runtime's directory (from `ferry runtime init`).
        dir: PathBuf,
    },
    /// Replaces the runtime's credential key (after a node or key file may have been
    /// compromised). Seal every secret again with the new runtime.json, then run `ferry
    /// runtime sync`: nodes receive the new key and secrets sealed to the old one stop
    /// opening.
    RotateCredentialKey {
        /// The runtime's directory (from `ferry runtime init`).
        dir: PathBuf,
    },
    /// Answers nodes' registrations in the channel: grants the credential key (sealed to
    /// each node's own key, signed) to nodes registered with the current authentication
    /// key, refuses the others, withdraws grants of removed or cut-off nodes.
    Sync {
        /// The runtime's directory (from `ferry runtime init`).
        dir: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        /// Keep answering, every SECONDS, until stopped.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
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
                outln!(
                    "  {}  private (0600): stays here; registered nodes receive it sealed to their own key",
                    dir.join("credential.key").display()
                );
                print_auth_key(&dir)
            }
            Err(e) => super::fail(&e),
        },
        RuntimeCommand::RotateAuthKey { dir } => match rotate_auth_key(&dir) {
            Ok(key) => {
                outln!(
                    "runtime {}: new authentication key (id {}); nodes registered with the old one are cut off at the next `ferry runtime sync`",
                    key.runtime(),
                    key.id()
                );
                print_auth_key(&dir)
            }
            Err(e) => super::fail(&e),
        },
        RuntimeCommand::RotateCredentialKey { dir } => {
            match ferry_connectors::control::trust::rotate_credential_key(&dir) {
                Ok(recipient) => {
                    outln!(
                        "new credential key; its recipient {recipient} is in {}",
                        dir.join("runtime.json").display()
                    );
                    outln!(
                        "next: seal every secret again (`ferry credential encrypt --runtime {}`), update the connections files, then run `ferry runtime sync` so registered nodes receive the new key; secrets sealed to the old key no longer open on nodes that hold the new one",
                        dir.join("runtime.json").display()
                    );
                    0
                }
                Err(e) => super::fail(&e),
            }
        }
        RuntimeCommand::Sync { dir, config, watch } => {
            sync(&dir, &config, watch.map(Duration::from_secs))
        }
    }
}

/// Prints the authentication key in `dir` once, as the line to give to nodes.
fn print_auth_key(dir: &std::path::Path) -> u8 {
    match ferry_connectors::control::membership::AuthKey::load(&dir.join("auth.key")) {
        Ok(key) => {
            outln!(
                "  {}  private (0600): the authentication key nodes register with:",
                dir.join("auth.key").display()
            );
            outln!("{}", key.to_text().as_str());
            0
        }
        Err(e) => super::fail(&e),
    }
}

fn sync(dir: &std::path::Path, config: &ConfigArg, watch: Option<Duration>) -> u8 {
    let keys = match RuntimeKeys::load(dir) {
        Ok(keys) => keys,
        Err(e) => return super::fail(&e),
    };
    let loaded = match ferry::worker::config::load(config.path()) {
        Ok(loaded) => loaded,
        Err(e) => return super::fail(&e),
    };
    let done = loaded.with_channel(|channel| async move {
        let mut last: Vec<Answer> = Vec::new();
        loop {
            let answers = answer_registrations(channel.as_ref(), &keys).await?;
            for answer in &answers {
                // Watching, say only what changed.
                if watch.is_none() || !last.contains(answer) {
                    outln!("{answer}");
                }
            }
            let Some(every) = watch else {
                if answers.is_empty() {
                    outln!("no node has registered with runtime {}", keys.runtime());
                }
                return Ok(());
            };
            last = answers;
            tokio::time::sleep(every).await;
        }
    });
    match done {
        Ok(()) => 0,
        Err(e) => super::fail(&e),
    }
}
