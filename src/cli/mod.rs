//! One module per subcommand; each turns arguments into engine calls and an exit code.

pub mod copy;
pub mod diagnostics;
pub mod node;
pub mod test_connection;
pub mod validate;

use std::path::Path;

use ferry_connectors::{JobFile, parse_job};
use ferry_engine::config::{Connections, JobSettings};
use ferry_engine::{Error, Result};

/// Reads and validates a job file and the connections file, without I/O to any store.
pub fn load(job: &Path, connections: Option<&Path>) -> Result<(JobFile, JobSettings, Connections)> {
    let text = std::fs::read_to_string(job)
        .map_err(|e| Error::io(format!("cannot read job file {}", job.display()), e))?;
    let (spec, settings) = parse_job(&text).map_err(|e| e.context(job.display()))?;
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

/// Prints an error the way every subcommand does and returns its exit code.
pub fn fail(e: &Error) -> u8 {
    eprintln!("error: {e}");
    e.exit_code() as u8
}
