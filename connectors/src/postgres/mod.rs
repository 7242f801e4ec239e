//! PostgreSQL: a source that streams `COPY ... TO STDOUT (FORMAT binary)` straight into Arrow
//! builders, and a sink that streams Arrow batches into `COPY ... FROM STDIN (FORMAT binary)`
//! inside one transaction.
//!
//! - [`connect`]: connection settings, TLS (rustls) and error mapping.
//! - [`types`]: the type table (PostgreSQL type <-> Arrow type), one line per type.
//! - [`decode`] / [`encode`]: the binary COPY wire format to and from Arrow arrays.
//! - [`source`] / [`sink`]: the connectors.

pub mod connect;
pub mod decode;
pub mod encode;
mod guard;
mod ident;
pub mod sink;
pub mod source;
pub mod types;

use std::num::NonZeroUsize;

use ferry_engine::config::JobSettings;
use ferry_engine::{Error, Result};

use serde::{Deserialize, Serialize};

pub use connect::{PostgresConnection, SslMode};
pub use sink::PostgresSink;
pub use source::PostgresSource;

/// The `postgres` source of a job: a table or a query.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceSpec {
    /// The `postgres` connection to read from.
    pub connection: String,
    /// A table (`orders`, `sales.orders`, `"Mixed Case"`); every column is read.
    #[serde(default)]
    pub table: Option<String>,
    /// A query (`select id, total from orders where day > '2024-01-01'`).
    #[serde(default)]
    pub query: Option<String>,
    /// How to split the read for parallel copies. Without it a table is split by physical
    /// page ranges (ctid) into `parallel_copies` parts and a query is read as one part.
    #[serde(default)]
    pub partition: Option<PartitionSpec>,
    /// Read every partition in one consistent snapshot (an exported snapshot), so that
    /// parallel reads see the table as of one instant. Default true.
    #[serde(default = "default_true")]
    pub snapshot: bool,
}

/// How a PostgreSQL read is split.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// An integer, date or timestamp column whose min..max range is cut into `count` equal
    /// ranges (NULLs go with the first). Without it, a table is cut by ctid page ranges.
    #[serde(default)]
    pub column: Option<String>,
    /// How many partitions. Default: the job's `parallel_copies`.
    #[serde(default)]
    pub count: Option<NonZeroUsize>,
}

/// What the `postgres` sink does with rows already in the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresWriteMode {
    /// Add the rows to the table (default).
    #[default]
    Append,
    /// Empty the table, then load, in one transaction.
    Truncate,
    /// Drop the table and create it again from the source's schema, in one transaction.
    Overwrite,
}

/// The `postgres` sink of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkSpec {
    /// The `postgres` connection to write to.
    pub connection: String,
    /// The target table (`orders`, `staging.orders`).
    pub table: String,
    /// `append` (default), `truncate` or `overwrite`.
    #[serde(default)]
    pub mode: PostgresWriteMode,
    /// Create the table from the source's schema when it does not exist. Default true.
    #[serde(default = "default_true")]
    pub create_table: bool,
    /// SQL run in the load's transaction before the rows are copied (a cleanup such as
    /// `delete from orders where day = '2024-01-01'`); it commits or rolls back with them.
    #[serde(default)]
    pub pre_copy_sql: Option<String>,
}

fn default_true() -> bool {
    true
}

impl PostgresSourceSpec {
    /// Builds the source: connects, resolves the table or describes the query.
    pub async fn build(
        &self,
        connection: &PostgresConnection,
        settings: &JobSettings,
    ) -> Result<PostgresSource> {
        let connector = connection.connector(&self.connection)?;
        PostgresSource::new(self, connector, settings.batch_rows.get()).await
    }
}

impl PostgresSinkSpec {
    /// Builds the sink (no I/O yet).
    pub fn build(&self, connection: &PostgresConnection) -> Result<PostgresSink> {
        let connector = connection.connector(&self.connection)?;
        PostgresSink::new(self.clone(), connector)
    }
}

impl PostgresSourceSpec {
    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        match (&self.table, &self.query) {
            (Some(_), Some(_)) => Err(Error::config(
                "postgres source: give either `table` or `query`, not both",
            )),
            (None, None) => Err(Error::config(
                "postgres source: give a `table` or a `query` to read",
            )),
            (Some(t), None) if t.trim().is_empty() => {
                Err(Error::config("postgres source: `table` is empty"))
            }
            (None, Some(q)) if q.trim().is_empty() => {
                Err(Error::config("postgres source: `query` is empty"))
            }
            (Some(t), None) => ident::parse_qualified(t).map(|_| ()),
            (None, Some(_)) => Ok(()),
        }
    }
}

impl PostgresSinkSpec {
    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        ident::parse_qualified(&self.table).map(|_| ())
    }
}
