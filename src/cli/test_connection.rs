//! `ferry test-connection NAME`: runs a connection's health check (reach, authenticate, read
//! metadata) and says which step failed.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `ferry test-connection`.
#[derive(Args)]
pub struct TestConnectionArgs {
    /// The connection's name.
    name: String,
    /// File of named connections.
    #[arg(long, env = "FERRY_CONNECTIONS")]
    connections: PathBuf,
    /// For an azure_blob connection: the container to list.
    #[arg(long)]
    container: Option<String>,
    /// The runtime's credential key, which opens `{"encrypted": ...}` secrets in memory.
    #[arg(long, env = "FERRY_CREDENTIAL_KEY")]
    credential_key: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: TestConnectionArgs) -> u8 {
    if let Some(key) = &args.credential_key {
        match ferry_connectors::control::trust::CredentialKey::load(key) {
            Ok(key) => key.install(),
            Err(e) => return super::fail(&e),
        }
    }
    let connections = match std::fs::read_to_string(&args.connections)
        .map_err(|e| {
            ferry_engine::Error::io(
                format!(
                    "cannot read connections file {}",
                    args.connections.display()
                ),
                e,
            )
        })
        .and_then(|t| ferry_connectors::Connections::from_json(&t))
    {
        Ok(c) => c,
        Err(e) => return super::fail(&e),
    };
    let system = actix::System::new();
    let result = system.block_on(ferry_connectors::check_connection(
        &args.name,
        &connections,
        args.container.as_deref(),
    ));
    match result {
        Ok(steps) => {
            for step in steps {
                outln!("{step}");
            }
            outln!("connection `{}`: ok", args.name);
            0
        }
        Err(e) => super::fail(&e.context(format!("connection `{}` failed its check", args.name))),
    }
}
