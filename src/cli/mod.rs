//! One module per subcommand; each turns arguments into engine calls and an exit code.

/// `println!` for command output that may go to a pipe closed early (`ferry jobs list |
/// head`): see [`print_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

pub mod copy;
pub mod credential;
pub mod diagnostics;
pub mod node;
pub mod runtime;
pub mod test_connection;
pub mod validate;

use std::path::Path;

use ferry_connectors::Connections;
use ferry_connectors::{JobFile, parse_job};
use ferry_engine::config::JobSettings;
use ferry_engine::{Error, Result};

/// Reads and validates a job file and the connections file, without I/O to any store; with
/// a policy file, checks the job against it and confines its local paths to its roots.
pub fn load(
    job: &Path,
    connections: Option<&Path>,
    policy: Option<&Path>,
    credential_key: Option<&Path>,
) -> Result<(JobFile, JobSettings, Connections)> {
    if let Some(key) = credential_key {
        ferry_connectors::control::trust::CredentialKey::load(key)?.install();
    }
    let text = std::fs::read_to_string(job)
        .map_err(|e| Error::io(format!("cannot read job file {}", job.display()), e))?;
    let (spec, mut settings) = parse_job(&text).map_err(|e| e.context(job.display()))?;
    if let Some(path) = policy {
        let policy = load_policy(path)?;
        policy
            .check_job(&spec, &settings, text.len())
            .map_err(|e| e.context(job.display()))?;
        settings.local = policy.local_files();
    }
    let connections = match connections {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::io(
                    format!("cannot read connections file {}", path.display()),
                    e,
                )
            })?;
            Connections::from_json(&text).map_err(|e| e.context(path.display()))?
        }
        None => Connections::default(),
    };
    Ok((spec, settings, connections))
}

/// Reads a policy file for `--policy`: the keys of a node's `[policy]` at the top level;
/// `local_roots` is required, and relative paths start from the file's directory.
pub fn load_policy(path: &Path) -> Result<ferry_connectors::NodePolicy> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read policy file {}", path.display()), e))?;
    let config: ferry_connectors::PolicyConfig =
        toml::from_str(&text).map_err(|e| Error::config(format!("{}: {e}", path.display())))?;
    if config.local_roots.is_none() {
        return Err(Error::config(format!(
            "{}: give `local_roots`, the directories jobs may read and write",
            path.display()
        )));
    }
    config
        .build(&ferry_connectors::PolicyContext {
            base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            denied: vec![path.to_path_buf()],
            ..Default::default()
        })
        .map_err(|e| e.context(path.display()))
}

/// Writes one line of output. When the reader has gone (a closed pipe), ends the process as
/// a shell tool ends on SIGPIPE (exit 141) instead of panicking.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Prints an error the way every subcommand does and returns its exit code.
pub fn fail(e: &Error) -> u8 {
    eprintln!("error: {e}");
    e.exit_code() as u8
}
