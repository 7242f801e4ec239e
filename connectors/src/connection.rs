//! Named connections, kept apart from jobs: parsed once, typed, from the node's connections
//! file (`{ "name": { "type": "...", ... } }`).
//!
//! A connection holds a store's endpoint and credentials; jobs name it. Secrets are never
//! printed (see [`ferry_engine::config::Secret`]).

use std::collections::BTreeMap;

use ferry_engine::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::azure_blob::AzureBlobConnection;
use crate::file::FileConnection;
use crate::postgres::PostgresConnection;
use crate::sqlserver::SqlServerConnection;

/// One connection of the connections file, by `type`. A new store adds a variant here; the
/// compiler then lists every place that must handle it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConnectionSpec {
    /// A root directory of local files.
    File(FileConnection),
    /// A PostgreSQL server.
    Postgres(PostgresConnection),
    /// An Azure Storage account (blobs; also the queue of an `azure_queue` channel).
    AzureBlob(AzureBlobConnection),
    /// A SQL Server (or Azure SQL) database.
    Sqlserver(SqlServerConnection),
}

impl ConnectionSpec {
    /// The `type` of the connection, as the file spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionSpec::File(_) => "file",
            ConnectionSpec::Postgres(_) => "postgres",
            ConnectionSpec::AzureBlob(_) => "azure_blob",
            ConnectionSpec::Sqlserver(_) => "sqlserver",
        }
    }

    /// Checks that the connection is usable as it stands here: its settings hold and the
    /// environment variables of its secrets are set. Reads the environment, never files or
    /// the network.
    pub fn validate(&self, name: &str) -> Result<()> {
        match self {
            ConnectionSpec::File(_) => Ok(()),
            ConnectionSpec::Postgres(c) => c.validate(name),
            ConnectionSpec::AzureBlob(c) => c.validate(name),
            ConnectionSpec::Sqlserver(c) => c.validate(name),
        }
    }

    /// Runs the connection's health check: reach the store, authenticate, read metadata.
    /// Returns one line per step that passed; the error says which step failed.
    pub async fn check(&self, name: &str, container: Option<&str>) -> Result<Vec<String>> {
        match self {
            ConnectionSpec::File(c) => c.check(),
            ConnectionSpec::Postgres(c) => c.check(name).await,
            ConnectionSpec::AzureBlob(c) => c.check_container(name, container).await,
            ConnectionSpec::Sqlserver(c) => c.check(name).await,
        }
    }
}

/// The connections file, parsed: every entry is typed and checked for form when the file is
/// loaded, so a job names a connection that is known to parse.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Connections(BTreeMap<String, ConnectionSpec>);

impl Connections {
    /// Parses a connections file; an error names the connection at fault.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("invalid connections file: {e}")))?;
        let mut parsed = BTreeMap::new();
        for (name, value) in raw {
            if value.get("type").and_then(|t| t.as_str()).is_none() {
                return Err(Error::config(format!(
                    "invalid connections file: connection `{name}` has no `type` (one of: file, postgres, azure_blob, sqlserver)"
                )));
            }
            let spec: ConnectionSpec = serde_json::from_value(value).map_err(|e| {
                Error::config(format!(
                    "invalid connections file: connection `{name}`: {e}"
                ))
            })?;
            parsed.insert(name, spec);
        }
        Ok(Connections(parsed))
    }

    /// Connection `name`.
    pub fn get(&self, name: &str) -> Result<&ConnectionSpec> {
        self.0.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            if known.is_empty() {
                Error::config(format!(
                    "unknown connection `{name}`: no connections are defined; give a connections file (`--connections FILE` or FERRY_CONNECTIONS; `connections` in a node's ferry.toml)"
                ))
            } else {
                Error::config(format!(
                    "unknown connection `{name}`; the connections file defines: {}",
                    known.join(", ")
                ))
            }
        })
    }

    /// Names of all connections.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Connection `name`, which must be a `file` one.
    pub fn file(&self, name: &str) -> Result<&FileConnection> {
        match self.get(name)? {
            ConnectionSpec::File(c) => Ok(c),
            other => Err(wrong_kind(name, other, "file")),
        }
    }

    /// The `file` connection a file section names, if it names one: the root its paths
    /// start from.
    pub fn file_root(&self, name: &Option<String>) -> Result<Option<&FileConnection>> {
        name.as_deref().map(|n| self.file(n)).transpose()
    }

    /// Connection `name`, which must be a `postgres` one.
    pub fn postgres(&self, name: &str) -> Result<&PostgresConnection> {
        match self.get(name)? {
            ConnectionSpec::Postgres(c) => Ok(c),
            other => Err(wrong_kind(name, other, "postgres")),
        }
    }

    /// Connection `name`, which must be a `sqlserver` one.
    pub fn sqlserver(&self, name: &str) -> Result<&SqlServerConnection> {
        match self.get(name)? {
            ConnectionSpec::Sqlserver(c) => Ok(c),
            other => Err(wrong_kind(name, other, "sqlserver")),
        }
    }

    /// Connection `name`, which must be an `azure_blob` one.
    pub fn azure_blob(&self, name: &str) -> Result<&AzureBlobConnection> {
        match self.get(name)? {
            ConnectionSpec::AzureBlob(c) => Ok(c),
            other => Err(wrong_kind(name, other, "azure_blob")),
        }
    }
}

fn wrong_kind(name: &str, found: &ConnectionSpec, wanted: &str) -> Error {
    Error::config(format!(
        "connection `{name}` is a `{}` connection; a `{wanted}` one is needed here",
        found.kind()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_connection_lists_the_known_ones() {
        let c = Connections::from_json(r#"{"a":{"type":"file","root":"/x"}}"#).unwrap();
        assert_eq!(c.get("a").unwrap().kind(), "file");
        assert_eq!(
            c.file("a").unwrap().root,
            std::path::PathBuf::from("/x"),
            "the typed value is the file's"
        );
        let err = c.get("b").unwrap_err();
        assert!(err.to_string().contains("defines: a"), "{err}");
        let err = Connections::default().get("b").unwrap_err();
        assert!(err.to_string().contains("--connections FILE"), "{err}");
        let err = c.postgres("a").unwrap_err().to_string();
        assert!(
            err.contains("`a` is a `file` connection") && err.contains("`postgres` one"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_entry_fails_the_file_and_names_the_connection_and_field() {
        let err = Connections::from_json(r#"{"a":{"root":"/x"}}"#).unwrap_err();
        assert!(err.to_string().contains("`a` has no `type`"), "{err}");
        let err = Connections::from_json(r#"{"m":{"type":"mysql","host":"h"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`m`") && err.contains("mysql"), "{err}");
        assert!(
            err.contains("postgres"),
            "the known types are listed: {err}"
        );
        let err = Connections::from_json(
            r#"{"pg":{"type":"postgres","host":"h","user":"u","prot":5432}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`pg`") && err.contains("prot"), "{err}");
        let err = Connections::from_json(
            r#"{"pg":{"type":"postgres","host":"h","user":"u","password":"hunter2"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`pg`") && err.contains("literal secret is refused"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}
