//! SQL Server (on tiberius): the `sqlserver` connection, source and sink sections.

pub mod connect;
pub mod sink;
pub mod source;
pub mod types;

use std::num::NonZeroUsize;

use ferry_engine::config::JobSettings;
use ferry_engine::{Error, Result};
use serde::{Deserialize, Serialize};

pub use connect::SqlServerConnection;
pub use sink::SqlServerSink;
pub use source::SqlServerSource;

/// A SQL Server identifier in brackets (`]` doubled).
pub fn quote(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// A Unicode string literal (`N'...'`, `'` doubled).
pub fn string_literal(text: &str) -> String {
    format!("N'{}'", text.replace('\'', "''"))
}

/// A table name, `table` or `schema.table`, each part plain or in brackets; parsed once when
/// the job is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema (`dbo` when not given).
    pub schema: String,
    /// The table.
    pub name: String,
}

impl TableName {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            Error::config(format!(
                "`{}` is not a valid table name: write `table`, `schema.table` or `[schema].[table name]`",
                text.escape_default()
            ))
        };
        let mut parts = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let part;
            if let Some(inner) = rest.strip_prefix('[') {
                let mut end = None;
                let bytes = inner.as_bytes();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b']' {
                        if bytes.get(i + 1) == Some(&b']') {
                            i += 2;
                            continue;
                        }
                        end = Some(i);
                        break;
                    }
                    i += 1;
                }
                let end = end.ok_or_else(bad)?;
                part = inner[..end].replace("]]", "]");
                rest = &inner[end + 1..];
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                part = rest[..end].to_string();
                rest = &rest[end..];
                if part.is_empty()
                    || !part
                        .chars()
                        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '#' | '@' | '$'))
                {
                    return Err(bad());
                }
            }
            parts.push(part);
            match rest.strip_prefix('.') {
                Some(r) if !r.is_empty() => rest = r,
                Some(_) => return Err(bad()),
                None if rest.is_empty() => {}
                None => return Err(bad()),
            }
        }
        match parts.len() {
            1 => Ok(TableName {
                schema: "dbo".into(),
                name: parts.remove(0),
            }),
            2 => Ok(TableName {
                name: parts.remove(1),
                schema: parts.remove(0),
            }),
            _ => Err(bad()),
        }
    }

    /// `[schema].[table]`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.name))
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

impl Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.quoted())
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        TableName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A `sqlserver` source section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlServerSourceSpec {
    /// The connection's name.
    pub connection: String,
    /// A table to read.
    #[serde(default)]
    pub table: Option<TableName>,
    /// A query to read (instead of a table).
    #[serde(default)]
    pub query: Option<String>,
    /// Parallel reads: by ranges of a column, or `"physical"` (the table's own partitions).
    #[serde(default)]
    pub partition: Option<Partitioning>,
}

/// How a source splits its read.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Partitioning {
    /// `"physical"`: one read per partition of a partitioned table (its partition function's
    /// boundaries).
    Physical(&'static str),
    /// `{column, count}`: ranges of a column.
    Ranges(PartitionSpec),
}

impl<'de> Deserialize<'de> for Partitioning {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "physical" => {
                Ok(Partitioning::Physical("physical"))
            }
            serde_json::Value::String(s) => Err(D::Error::custom(format!(
                "`partition` is \"physical\" or {{\"column\": ..., \"count\": ...}}, not {s:?}"
            ))),
            other => serde_json::from_value(other)
                .map(Partitioning::Ranges)
                .map_err(D::Error::custom),
        }
    }
}

/// How a sink treats the rows already in its table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlServerWriteMode {
    /// Add the rows.
    #[default]
    Append,
    /// Empty the table first (in the load's transaction).
    Truncate,
    /// Drop and create the table from the source's columns (in the load's transaction).
    Overwrite,
}

/// A `sqlserver` sink section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlServerSinkSpec {
    /// The connection's name.
    pub connection: String,
    /// The table.
    pub table: TableName,
    /// append (default), truncate or overwrite.
    #[serde(default)]
    pub mode: SqlServerWriteMode,
    /// Create the table from the source's columns when it does not exist (default true).
    #[serde(default = "default_true")]
    pub create_table: bool,
    /// Take a table lock for the load (`TABLOCK`): faster, and readers wait.
    #[serde(default)]
    pub table_lock: bool,
}

fn default_true() -> bool {
    true
}

impl SqlServerSinkSpec {
    /// Checks the section without I/O.
    pub fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Builds the sink from its typed connection.
    pub fn build(&self, connection: &SqlServerConnection) -> Result<SqlServerSink> {
        let connector = connection.connector(&self.connection)?;
        Ok(SqlServerSink::new(self.clone(), connector))
    }
}

/// `partition: {column, count}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// An integer, date, datetime or datetime2 column whose MIN..MAX is cut into ranges.
    pub column: Option<String>,
    /// How many ranges (default: the job's `parallel_copies`).
    #[serde(default)]
    pub count: Option<NonZeroUsize>,
}

/// What a SQL Server source reads.
pub type ReadTarget<'a> = crate::ranges::ReadTarget<'a, TableName>;

impl SqlServerSourceSpec {
    /// The table or the query, settled.
    pub fn target(&self) -> Result<ReadTarget<'_>> {
        crate::ranges::read_target("sqlserver", self.table.as_ref(), self.query.as_ref())
    }

    /// Checks the section without I/O.
    pub fn validate(&self) -> Result<()> {
        self.target().map(drop)
    }

    /// Builds the source from its typed connection.
    pub async fn build(
        &self,
        connection: &SqlServerConnection,
        settings: &JobSettings,
    ) -> Result<SqlServerSource> {
        let connector = connection.connector(&self.connection)?;
        SqlServerSource::new(
            self,
            connector,
            settings.batch_rows.get(),
            settings.batch_bytes(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_parse_once_with_brackets_and_schemas() {
        assert_eq!(
            TableName::parse("orders").unwrap().quoted(),
            "[dbo].[orders]"
        );
        assert_eq!(
            TableName::parse("[sales].[Order Lines]").unwrap().quoted(),
            "[sales].[Order Lines]"
        );
        assert_eq!(
            TableName::parse("[we]]ird].t").unwrap().quoted(),
            "[we]]ird].[t]"
        );
        for bad in ["", "a.b.c", "a b", "[open", "a.", "x;DROP TABLE y"] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(string_literal("it's"), "N'it''s'");
    }
}
