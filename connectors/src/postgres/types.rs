//! The type table: which PostgreSQL types ferry reads and writes, and as which Arrow types.
//!
//! One line per type, in the style of ConnectorX's transports. The catalog (not the wire)
//! describes each column, so `numeric(p, s)` keeps its precision and scale, domains read as
//! their base type and enums as text.
//!
//! | PostgreSQL                          | Arrow                                   |
//! | ----------------------------------- | --------------------------------------- |
//! | boolean                             | Boolean                                 |
//! | smallint / integer / bigint         | Int16 / Int32 / Int64                   |
//! | real / double precision             | Float32 / Float64                       |
//! | numeric(p, s), p <= 38              | Decimal128(p, s)                        |
//! | numeric(p, s), 38 < p <= 76         | Decimal256(p, s)                        |
//! | numeric (no typmod), numeric(p > 76)| Utf8, the exact decimal text ("NaN" too) |
//! | text, varchar(n), char(n), name     | Utf8 (char(n) keeps its padding)        |
//! | enum types, citext                  | Utf8                                    |
//! | bytea                               | Binary                                  |
//! | date                                | Date32                                  |
//! | time                                | Time64(µs)                              |
//! | timestamp / timestamptz             | Timestamp(µs) / Timestamp(µs, "UTC")    |
//! | interval                            | Interval(MonthDayNano)                  |
//! | uuid                                | FixedSizeBinary(16), extension arrow.uuid |
//! | json / jsonb                        | Utf8, extension arrow.json              |
//! | inet / cidr                         | Utf8 (`10.0.0.1/8` text form)           |
//! | one-dimensional arrays of the above | List of the element's type              |
//!
//! Every field carries its PostgreSQL type in the metadata key [`PG_TYPE_KEY`]
//! (`numeric(15,2)`, `jsonb`), so that a PostgreSQL sink can create the same column type
//! again after a trip through Parquet.
//!
//! `numeric` NaN and ±Infinity, and `date`/`timestamp` ±infinity, have no Arrow value in a
//! decimal or temporal column: reading one fails with the row and column named and asks for a
//! cast (`col::text` or `col::float8`). Other types (money, timetz, geometric types, ranges,
//! multi-dimensional arrays, composite types) fail before any data moves, naming the column
//! and suggesting a cast.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, IntervalUnit, TimeUnit};
use ferry_engine::{Error, Result};
use tokio_postgres::Client;

use super::connect::pg_error;

/// Field metadata key holding the column's PostgreSQL type (`format_type` text).
pub const PG_TYPE_KEY: &str = "ferry.pg_type";
/// Arrow's extension-name metadata key.
pub const EXTENSION_KEY: &str = "ARROW:extension:name";
/// Arrow's field metadata key of an extension type's metadata.
pub const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";

/// A PostgreSQL type ferry can move, with what decides its binary form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    /// boolean
    Bool,
    /// smallint
    Int2,
    /// integer
    Int4,
    /// bigint
    Int8,
    /// real
    Float4,
    /// double precision
    Float8,
    /// numeric, with (precision, scale) when the column has a typmod.
    Numeric(Option<(u8, i8)>),
    /// text, varchar, bpchar, name, citext, enum types: UTF-8 text on the wire.
    Text,
    /// bytea
    Bytea,
    /// date
    Date,
    /// time without time zone
    Time,
    /// timestamp without time zone
    Timestamp,
    /// timestamp with time zone
    Timestamptz,
    /// interval
    Interval,
    /// uuid
    Uuid,
    /// json (text on the wire)
    Json,
    /// jsonb (version byte 1, then text)
    Jsonb,
    /// inet
    Inet,
    /// cidr
    Cidr,
    /// A one-dimensional array; `elem_oid` is the element type's oid (needed to write it).
    Array(Box<PgType>, u32),
}

/// A column as the catalog describes it.
#[derive(Debug, Clone)]
pub struct PgColumn {
    /// Column name.
    pub name: String,
    /// The type as PostgreSQL prints it (`numeric(15,2)`, `character varying(25)`).
    pub type_name: String,
    /// What ferry moves it as, or why it cannot.
    pub kind: std::result::Result<PgType, String>,
}

/// Decodes numeric's typmod into (precision, scale).
fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    if typmod < 4 {
        return None;
    }
    let t = typmod - 4;
    let precision = ((t >> 16) & 0xffff) as u32;
    // PostgreSQL 15 allows negative scales: an 11-bit two's complement field.
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    Some((u8::try_from(precision).ok()?, i8::try_from(scale).ok()?))
}

/// The type for a base (non-array) type name of `pg_catalog`, an enum, or citext.
fn classify(name: &str, typtype: &str, in_catalog: bool, typmod: i32) -> Option<PgType> {
    if typtype == "e" {
        return Some(PgType::Text);
    }
    if !in_catalog {
        return (name == "citext").then_some(PgType::Text);
    }
    Some(match name {
        "bool" => PgType::Bool,
        "int2" => PgType::Int2,
        "int4" => PgType::Int4,
        "int8" => PgType::Int8,
        "float4" => PgType::Float4,
        "float8" => PgType::Float8,
        "numeric" => PgType::Numeric(numeric_typmod(typmod)),
        "text" | "varchar" | "bpchar" | "name" => PgType::Text,
        "bytea" => PgType::Bytea,
        "date" => PgType::Date,
        "time" => PgType::Time,
        "timestamp" => PgType::Timestamp,
        "timestamptz" => PgType::Timestamptz,
        "interval" => PgType::Interval,
        "uuid" => PgType::Uuid,
        "json" => PgType::Json,
        "jsonb" => PgType::Jsonb,
        "inet" => PgType::Inet,
        "cidr" => PgType::Cidr,
        _ => return None,
    })
}

/// The catalog query: one row per column of relation `$1` (an oid), domains resolved to
/// their base type, arrays to their element type.
const COLUMNS_SQL: &str = "
SELECT a.attname::text,
       format_type(a.atttypid, a.atttypmod),
       bt.typname::text,
       bt.typtype::text,
       bt.typnamespace = 'pg_catalog'::regnamespace,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END,
       bt.typcategory::text,
       coalesce(et.typname::text, ''),
       coalesce(et.typtype::text, ''),
       coalesce(et.typnamespace = 'pg_catalog'::regnamespace, false),
       coalesce(et.oid, 0)::int8,
       a.attnotnull
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum";

/// Reads the columns of relation `oid` (a table or a view) from the catalog.
pub async fn columns_of(client: &Client, oid: i64) -> Result<Vec<(PgColumn, bool)>> {
    let rows = client
        .query(COLUMNS_SQL, &[&oid])
        .await
        .map_err(|e| pg_error("cannot read the column types from the catalog", e))?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get(0);
        let type_name: String = row.get(1);
        let typname: String = row.get(2);
        let typtype: String = row.get(3);
        let in_catalog: bool = row.get(4);
        let typmod: i32 = row.get(5);
        let category: String = row.get(6);
        let not_null: bool = row.get(11);
        let unsupported = || {
            format!(
                "column `{name}` has type {type_name}, which ferry does not read or write; cast it in a query (`{name}::text`) or change the column type"
            )
        };
        let kind = if category == "A" {
            let elem_name: String = row.get(7);
            let elem_typtype: String = row.get(8);
            let elem_catalog: bool = row.get(9);
            let elem_oid: i64 = row.get(10);
            match classify(&elem_name, &elem_typtype, elem_catalog, typmod) {
                Some(elem) => Ok(PgType::Array(Box::new(elem), elem_oid as u32)),
                None => Err(unsupported()),
            }
        } else {
            classify(&typname, &typtype, in_catalog, typmod).ok_or_else(unsupported)
        };
        columns.push((
            PgColumn {
                name,
                type_name,
                kind,
            },
            not_null,
        ));
    }
    Ok(columns)
}

/// The Arrow type of a PostgreSQL type.
pub fn arrow_type(t: &PgType) -> DataType {
    match t {
        PgType::Bool => DataType::Boolean,
        PgType::Int2 => DataType::Int16,
        PgType::Int4 => DataType::Int32,
        PgType::Int8 => DataType::Int64,
        PgType::Float4 => DataType::Float32,
        PgType::Float8 => DataType::Float64,
        PgType::Numeric(Some((p, s))) if *p <= 38 => DataType::Decimal128(*p, *s),
        PgType::Numeric(Some((p, s))) if *p <= 76 => DataType::Decimal256(*p, *s),
        PgType::Numeric(_) => DataType::Utf8,
        PgType::Text | PgType::Json | PgType::Jsonb | PgType::Inet | PgType::Cidr => DataType::Utf8,
        PgType::Bytea => DataType::Binary,
        PgType::Date => DataType::Date32,
        PgType::Time => DataType::Time64(TimeUnit::Microsecond),
        PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        PgType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        PgType::Uuid => DataType::FixedSizeBinary(16),
        PgType::Array(elem, _) => {
            DataType::List(Arc::new(Field::new("item", arrow_type(elem), true)))
        }
    }
}

/// The Arrow field of a column, with its PostgreSQL type in the metadata.
pub fn arrow_field(column: &PgColumn, kind: &PgType, not_null: bool) -> Field {
    let mut metadata = HashMap::from([(PG_TYPE_KEY.to_string(), column.type_name.clone())]);
    match kind {
        PgType::Uuid => {
            metadata.insert(EXTENSION_KEY.to_string(), "arrow.uuid".to_string());
        }
        PgType::Json | PgType::Jsonb => {
            metadata.insert(EXTENSION_KEY.to_string(), "arrow.json".to_string());
            // The canonical JSON extension has empty metadata; without it readers (and the
            // Parquet writer) do not take the field for JSON.
            metadata.insert(EXTENSION_METADATA_KEY.to_string(), String::new());
        }
        _ => {}
    }
    Field::new(&column.name, arrow_type(kind), !not_null).with_metadata(metadata)
}

/// PostgreSQL type names that a sink may take from [`PG_TYPE_KEY`] when it creates a table
/// (anything else is derived from the Arrow type). Parametrised forms are checked by shape.
fn known_type_name(name: &str) -> bool {
    let base = name.strip_suffix("[]").unwrap_or(name);
    let simple = [
        "boolean",
        "smallint",
        "integer",
        "bigint",
        "real",
        "double precision",
        "numeric",
        "text",
        "bytea",
        "date",
        "time without time zone",
        "timestamp without time zone",
        "timestamp with time zone",
        "interval",
        "uuid",
        "json",
        "jsonb",
        "inet",
        "cidr",
        "name",
    ];
    if simple.contains(&base) {
        return true;
    }
    for prefix in ["numeric(", "character varying(", "character("] {
        if let Some(rest) = base.strip_prefix(prefix) {
            return rest.strip_suffix(')').is_some_and(|args| {
                args.chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
            });
        }
    }
    false
}

/// The column type a sink creates for an Arrow field: the recorded PostgreSQL type when it
/// is a built-in one that fits the Arrow type, else one derived from the Arrow type.
pub fn sql_type_for(field: &Field) -> Result<String> {
    let derived = derived_sql_type(field.data_type()).ok_or_else(|| {
        Error::invalid_input(format!(
            "column `{}` has Arrow type {}, which has no PostgreSQL column type in ferry; convert it first or create the table yourself",
            field.name(),
            field.data_type()
        ))
    })?;
    if let Some(hint) = field.metadata().get(PG_TYPE_KEY)
        && known_type_name(hint)
        && hint_fits(hint, field.data_type())
    {
        return Ok(hint.clone());
    }
    Ok(derived)
}

/// Whether a recorded PostgreSQL type can be written from this Arrow type.
fn hint_fits(hint: &str, data_type: &DataType) -> bool {
    let (base, is_array) = match hint.strip_suffix("[]") {
        Some(b) => (b, true),
        None => (hint, false),
    };
    let data_type = match (is_array, data_type) {
        (true, DataType::List(f) | DataType::LargeList(f)) => f.data_type(),
        (false, dt) => dt,
        _ => return false,
    };
    let stringy = matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    match base {
        "text" | "name" | "json" | "jsonb" | "inet" | "cidr" => stringy,
        "uuid" => matches!(data_type, DataType::FixedSizeBinary(16)) || stringy,
        // Intervals pass through Parquet as ISO 8601 text.
        "interval" => stringy,
        "numeric" => {
            stringy
                || matches!(
                    data_type,
                    DataType::Decimal128(..) | DataType::Decimal256(..)
                )
        }
        b if b.starts_with("character") => stringy,
        b if b.starts_with("numeric(") => {
            matches!(
                data_type,
                DataType::Decimal128(..) | DataType::Decimal256(..)
            ) || stringy
        }
        // Other simple names: the derived type is the same or better.
        _ => false,
    }
}

fn derived_sql_type(data_type: &DataType) -> Option<String> {
    Some(
        match data_type {
            DataType::Boolean => "boolean",
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
            DataType::Int32 | DataType::UInt16 => "integer",
            DataType::Int64 | DataType::UInt32 => "bigint",
            DataType::UInt64 => "numeric(20,0)",
            DataType::Float16 | DataType::Float32 => "real",
            DataType::Float64 => "double precision",
            DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
                return Some(format!("numeric({p},{s})"));
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea",
            DataType::FixedSizeBinary(16) => "uuid",
            DataType::FixedSizeBinary(_) => "bytea",
            DataType::Date32 | DataType::Date64 => "date",
            DataType::Time32(_) | DataType::Time64(_) => "time",
            DataType::Timestamp(_, None) => "timestamp",
            DataType::Timestamp(_, Some(_)) => "timestamptz",
            DataType::Interval(IntervalUnit::MonthDayNano) | DataType::Duration(_) => "interval",
            DataType::List(f) | DataType::LargeList(f) => {
                let elem = derived_sql_type(f.data_type())?;
                if elem.ends_with("[]") {
                    return None;
                }
                return Some(format!("{elem}[]"));
            }
            _ => return None,
        }
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_typmods_decode() {
        // numeric(15,2): ((15 << 16) | 2) + 4
        assert_eq!(numeric_typmod((15 << 16 | 2) + 4), Some((15, 2)));
        assert_eq!(numeric_typmod(-1), None);
        // numeric(5,-2), allowed since PostgreSQL 15.
        assert_eq!(
            numeric_typmod((5 << 16 | (0x7ff & -2i32)) + 4),
            Some((5, -2))
        );
    }

    #[test]
    fn the_type_table() {
        let cases = [
            ("bool", PgType::Bool, DataType::Boolean),
            ("int8", PgType::Int8, DataType::Int64),
            ("varchar", PgType::Text, DataType::Utf8),
            ("bpchar", PgType::Text, DataType::Utf8),
            ("jsonb", PgType::Jsonb, DataType::Utf8),
            ("uuid", PgType::Uuid, DataType::FixedSizeBinary(16)),
            (
                "timestamptz",
                PgType::Timestamptz,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
        ];
        for (name, kind, arrow) in cases {
            let got = classify(name, "b", true, -1).unwrap();
            assert_eq!(got, kind, "{name}");
            assert_eq!(arrow_type(&got), arrow, "{name}");
        }
        assert_eq!(classify("mood", "e", false, -1), Some(PgType::Text));
        assert_eq!(classify("money", "b", true, -1), None);
        assert_eq!(classify("text", "b", false, -1), None);
        assert_eq!(
            arrow_type(&PgType::Numeric(Some((40, 5)))),
            DataType::Decimal256(40, 5)
        );
        assert_eq!(arrow_type(&PgType::Numeric(None)), DataType::Utf8);
    }

    #[test]
    fn created_types_follow_the_recorded_postgres_type_when_it_fits() {
        let with = |dt: DataType, hint: &str| {
            Field::new("c", dt, true)
                .with_metadata(HashMap::from([(PG_TYPE_KEY.to_string(), hint.to_string())]))
        };
        assert_eq!(
            sql_type_for(&with(DataType::Utf8, "jsonb")).unwrap(),
            "jsonb"
        );
        assert_eq!(
            sql_type_for(&with(DataType::Utf8, "character varying(25)")).unwrap(),
            "character varying(25)"
        );
        // A hint that does not fit the data, or is not a built-in name, is ignored.
        assert_eq!(
            sql_type_for(&with(DataType::Int64, "jsonb")).unwrap(),
            "bigint"
        );
        assert_eq!(
            sql_type_for(&with(DataType::Utf8, "text; drop table x")).unwrap(),
            "text"
        );
        assert_eq!(sql_type_for(&with(DataType::Utf8, "mood")).unwrap(), "text");
        assert_eq!(
            sql_type_for(&Field::new(
                "l",
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                true
            ))
            .unwrap(),
            "integer[]"
        );
        assert!(sql_type_for(&Field::new("m", DataType::Null, true)).is_err());
    }
}
