//! Explicit schemas in job files: a list of `{name, type, nullable}` with readable type names.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use ferry_engine::{Error, Result};
use serde::{Deserialize, Serialize};

/// One column of an explicit schema.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Type: bool, int8..int64, uint8..uint64, float32, float64, utf8 (or string, text),
    /// date (date32), timestamp (microseconds, no zone), timestamptz (microseconds, UTC),
    /// decimal(p,s).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether the column may hold nulls.
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// Parses a type name of a job file.
pub fn parse_type(name: &str) -> Result<DataType> {
    let t = name.trim().to_ascii_lowercase();
    let dt = match t.as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "int8" => DataType::Int8,
        "int16" | "smallint" => DataType::Int16,
        "int32" | "int" | "integer" => DataType::Int32,
        "int64" | "bigint" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "float" | "real" => DataType::Float32,
        "float64" | "double" => DataType::Float64,
        "utf8" | "string" | "text" => DataType::Utf8,
        "date" | "date32" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => {
            if let Some(args) = t.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')) {
                let (p, s) = args.split_once(',').unwrap_or((args, "0"));
                let p: u8 = p.trim().parse().map_err(|_| bad_type(name))?;
                let s: i8 = s.trim().parse().map_err(|_| bad_type(name))?;
                if p == 0 || p > 38 || s < 0 || s as u8 > p {
                    return Err(Error::config(format!(
                        "type `{name}`: precision must be 1..=38 and scale 0..=precision"
                    )));
                }
                DataType::Decimal128(p, s)
            } else {
                return Err(bad_type(name));
            }
        }
    };
    Ok(dt)
}

fn bad_type(name: &str) -> Error {
    Error::config(format!(
        "unknown column type `{name}`; use bool, int8..int64, uint8..uint64, float32, float64, utf8, date, timestamp, timestamptz or decimal(p,s)"
    ))
}

/// The column spec of an Arrow field, if the type has a name in job files.
pub fn from_field(field: &Field) -> Option<ColumnSpec> {
    let name = match field.data_type() {
        DataType::Boolean => "bool".to_string(),
        DataType::Int8 => "int8".into(),
        DataType::Int16 => "int16".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::UInt8 => "uint8".into(),
        DataType::UInt16 => "uint16".into(),
        DataType::UInt32 => "uint32".into(),
        DataType::UInt64 => "uint64".into(),
        DataType::Float32 => "float32".into(),
        DataType::Float64 => "float64".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "utf8".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(TimeUnit::Microsecond, None) => "timestamp".into(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "UTC" => {
            "timestamptz".into()
        }
        DataType::Decimal128(p, s) if *s >= 0 => format!("decimal({p},{s})"),
        _ => return None,
    };
    Some(ColumnSpec {
        name: field.name().clone(),
        data_type: name,
        nullable: field.is_nullable(),
    })
}

/// Builds an Arrow schema from column specs.
pub fn to_schema(columns: &[ColumnSpec]) -> Result<SchemaRef> {
    if columns.is_empty() {
        return Err(Error::config("`schema` has no columns"));
    }
    let mut seen = std::collections::HashSet::new();
    let fields = columns
        .iter()
        .map(|c| {
            if !seen.insert(c.name.as_str()) {
                return Err(Error::config(format!(
                    "`schema` names column `{}` twice",
                    c.name
                )));
            }
            Ok(Field::new(&c.name, parse_type(&c.data_type)?, c.nullable))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_type_names() {
        assert_eq!(parse_type("BIGINT").unwrap(), DataType::Int64);
        assert_eq!(
            parse_type("decimal(15, 2)").unwrap(),
            DataType::Decimal128(15, 2)
        );
        assert_eq!(
            parse_type("timestamptz").unwrap(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert!(
            parse_type("decimal(40,2)")
                .unwrap_err()
                .to_string()
                .contains("precision")
        );
        assert!(
            parse_type("money")
                .unwrap_err()
                .to_string()
                .contains("unknown column type `money`")
        );
    }

    #[test]
    fn duplicate_columns_are_rejected() {
        let col = |n: &str| ColumnSpec {
            name: n.into(),
            data_type: "int64".into(),
            nullable: true,
        };
        assert!(
            to_schema(&[col("a"), col("a")])
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert_eq!(to_schema(&[col("a"), col("b")]).unwrap().fields().len(), 2);
    }
}
