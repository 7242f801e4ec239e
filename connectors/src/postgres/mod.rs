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

use ferry_engine::Result;
use ferry_engine::config::JobSettings;

use serde::{Deserialize, Serialize};

pub use connect::{PostgresConnection, SslMode};
pub use ident::TableName;
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
    pub table: Option<TableName>,
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
    pub table: TableName,
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
        PostgresSource::new(
            self,
            connector,
            settings.batch_rows.get(),
            settings.batch_bytes(),
        )
        .await
    }
}

impl PostgresSinkSpec {
    /// Builds the sink (no I/O yet).
    pub fn build(
        &self,
        connection: &PostgresConnection,
        settings: &JobSettings,
    ) -> Result<PostgresSink> {
        let connector = connection.connector(&self.connection)?;
        PostgresSink::new(self.clone(), connector, settings)
    }
}

/// What a `postgres` source reads: a table or a query, never both.
/// What a PostgreSQL source reads.
pub type ReadTarget<'a> = crate::ranges::ReadTarget<'a, TableName>;

impl PostgresSourceSpec {
    /// What the source reads; the one check of `table` against `query`.
    pub fn target(&self) -> Result<ReadTarget<'_>> {
        crate::ranges::read_target("postgres", self.table.as_ref(), self.query.as_ref())
    }

    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        self.target().map(drop)
    }
}

impl PostgresSinkSpec {
    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        // The table name was parsed and checked when the job was read.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::job::{SinkSpec, SourceSpec};

    #[test]
    fn table_names_are_parsed_once_when_the_job_is_read() {
        let job = r#"{"name": "j", "source": {"type": "postgres", "connection": "pg", "table": "Orders"},
            "sink": {"type": "postgres", "connection": "pg", "table": "sales.\"Order Lines\""}}"#;
        let (spec, _) = crate::parse_job(job).unwrap();
        let SinkSpec::Postgres(sink) = &spec.sink else {
            panic!("a postgres sink")
        };
        assert_eq!(sink.table.quoted(), r#""sales"."Order Lines""#);
        assert_eq!(sink.table.to_string(), r#"sales."Order Lines""#);
        let SourceSpec::Postgres(source) = &spec.source else {
            panic!("a postgres source")
        };
        assert!(
            matches!(source.target().unwrap(), super::ReadTarget::Table(t) if t.quoted() == r#""orders""#)
        );
        let err = crate::parse_job(&job.replace(r#"sales.\"Order Lines\""#, "a b"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sink") && err.contains("`a b` is not a valid table name"),
            "{err}"
        );
        let both = job.replace(
            r#""table": "Orders""#,
            r#""table": "orders", "query": "select 1""#,
        );
        let err = crate::parse_job(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
    }
}
