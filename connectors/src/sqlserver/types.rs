//! SQL Server types and their Arrow types, and the builders that take tiberius's values
//! straight into Arrow arrays.
//!
//! | SQL Server | Arrow |
//! | --- | --- |
//! | bit | Boolean |
//! | tinyint | UInt8 |
//! | smallint, int, bigint | Int16, Int32, Int64 |
//! | real, float | Float32, Float64 |
//! | decimal(p,s), numeric(p,s) | Decimal128(p, s), from the raw integer and scale |
//! | money, smallmoney | Decimal128(19, 4), Decimal128(10, 4) |
//! | char, varchar, nchar, nvarchar, text, ntext, (max), xml | Utf8 |
//! | binary, varbinary, image, (max), rowversion | Binary |
//! | uniqueidentifier | FixedSizeBinary(16), extension arrow.uuid (RFC 4122 byte order) |
//! | date | Date32 |
//! | time(n) | Time64(ns) |
//! | datetime, smalldatetime | Timestamp(µs) |
//! | datetime2(0..=6) | Timestamp(µs) |
//! | datetime2(7) | Timestamp(ns): values outside 1677-09-21..2262-04-11 fail, naming the row |
//! | datetimeoffset(n) | the UTC instant as datetime2(n) maps it, with tz "+00:00", and the offset (minutes) in a companion Int16 column `<name>_offset_minutes` |
//!
//! Every field carries its SQL Server type in metadata (`ferry.sqlserver.type`), so a SQL
//! Server sink creates the same type. Other types (sql_variant, hierarchyid, geometry,
//! geography, CLR types) fail before any data moves, naming the column and a CAST.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder, Time64NanosecondBuilder, TimestampMicrosecondBuilder,
    TimestampNanosecondBuilder, UInt8Builder,
};
use arrow::datatypes::{DataType, Field, TimeUnit};
use ferry_engine::{Error, Result};
use tiberius::ColumnData;

/// Field metadata key holding the column's SQL Server type.
pub const TYPE_KEY: &str = "ferry.sqlserver.type";

/// Days from 0001-01-01 to 1970-01-01.
const DAYS_TO_EPOCH: i64 = 719_162;
/// Days from 0001-01-01 to 1900-01-01.
const DAYS_TO_1900: i64 = 693_595;

/// A SQL Server type, as `sp_describe_first_result_set` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsType {
    /// bit
    Bit,
    /// tinyint
    TinyInt,
    /// smallint
    SmallInt,
    /// int
    Int,
    /// bigint
    BigInt,
    /// real
    Real,
    /// float
    Float,
    /// decimal/numeric(p, s)
    Decimal(u8, u8),
    /// money
    Money,
    /// smallmoney
    SmallMoney,
    /// any character type
    Text,
    /// any binary type
    Binary,
    /// uniqueidentifier
    Guid,
    /// date
    Date,
    /// time(n)
    Time(u8),
    /// datetime
    DateTime,
    /// smalldatetime
    SmallDateTime,
    /// datetime2(n)
    DateTime2(u8),
    /// datetimeoffset(n): a UTC timestamp and, in a companion column, the offset
    DateTimeOffset(u8),
}

fn args(text: &str) -> Vec<String> {
    match (text.find('('), text.rfind(')')) {
        (Some(open), Some(close)) if open < close => text[open + 1..close]
            .split(',')
            .map(|a| a.trim().to_string())
            .collect(),
        _ => Vec::new(),
    }
}

impl MsType {
    /// Parses a type name (`decimal(38,10)`, `nvarchar(max)`, `datetime2(3)`); `Err` says
    /// what to CAST an unsupported type to.
    pub fn parse(name: &str) -> std::result::Result<MsType, &'static str> {
        let lower = name.trim().to_ascii_lowercase();
        let base = lower.split('(').next().unwrap_or("").trim();
        let a = args(&lower);
        let num = |i: usize, default: u8| -> u8 {
            a.get(i).and_then(|v| v.parse().ok()).unwrap_or(default)
        };
        Ok(match base {
            "bit" => MsType::Bit,
            "tinyint" => MsType::TinyInt,
            "smallint" => MsType::SmallInt,
            "int" => MsType::Int,
            "bigint" => MsType::BigInt,
            "real" => MsType::Real,
            "float" if num(0, 53) <= 24 => MsType::Real,
            "float" => MsType::Float,
            "decimal" | "numeric" => MsType::Decimal(num(0, 18), num(1, 0)),
            "money" => MsType::Money,
            "smallmoney" => MsType::SmallMoney,
            "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "xml" | "sysname" => {
                MsType::Text
            }
            "binary" | "varbinary" | "image" | "timestamp" | "rowversion" => MsType::Binary,
            "uniqueidentifier" => MsType::Guid,
            "date" => MsType::Date,
            "time" => MsType::Time(num(0, 7)),
            "datetime" => MsType::DateTime,
            "smalldatetime" => MsType::SmallDateTime,
            "datetime2" => MsType::DateTime2(num(0, 7)),
            "datetimeoffset" => MsType::DateTimeOffset(num(0, 7)),
            "sql_variant" | "hierarchyid" | "geometry" | "geography" => {
                return Err("CAST it to nvarchar(max) or varbinary(max)");
            }
            _ => {
                return Err(
                    "CAST it to a standard type (nvarchar(max), varbinary(max), decimal(38, s))",
                );
            }
        })
    }

    /// The Arrow type of this SQL Server type.
    pub fn arrow(self) -> DataType {
        match self {
            MsType::Bit => DataType::Boolean,
            MsType::TinyInt => DataType::UInt8,
            MsType::SmallInt => DataType::Int16,
            MsType::Int => DataType::Int32,
            MsType::BigInt => DataType::Int64,
            MsType::Real => DataType::Float32,
            MsType::Float => DataType::Float64,
            MsType::Decimal(p, s) => DataType::Decimal128(p.clamp(1, 38), s as i8),
            MsType::Money => DataType::Decimal128(19, 4),
            MsType::SmallMoney => DataType::Decimal128(10, 4),
            MsType::Text => DataType::Utf8,
            MsType::Binary => DataType::Binary,
            MsType::Guid => DataType::FixedSizeBinary(16),
            MsType::Date => DataType::Date32,
            MsType::Time(_) => DataType::Time64(TimeUnit::Nanosecond),
            MsType::DateTime | MsType::SmallDateTime => {
                DataType::Timestamp(TimeUnit::Microsecond, None)
            }
            MsType::DateTime2(7) => DataType::Timestamp(TimeUnit::Nanosecond, None),
            MsType::DateTime2(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
            MsType::DateTimeOffset(7) => {
                DataType::Timestamp(TimeUnit::Nanosecond, Some("+00:00".into()))
            }
            MsType::DateTimeOffset(_) => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
            }
        }
    }
}

/// Field metadata key of a datetimeoffset's companion column: the column whose offset it
/// holds.
pub const OFFSET_OF_KEY: &str = "ferry.sqlserver.offset_of";

/// The name of the companion column that holds the offsets (minutes east of UTC) of
/// datetimeoffset column `name`.
pub fn offset_column(name: &str) -> String {
    format!("{name}_offset_minutes")
}

/// The companion field of datetimeoffset column `name`: its offsets in minutes.
pub fn offset_field(name: &str, nullable: bool) -> Field {
    Field::new(offset_column(name), DataType::Int16, nullable).with_metadata(HashMap::from([(
        OFFSET_OF_KEY.to_string(),
        name.to_string(),
    )]))
}

/// The Arrow field of column `name` of SQL Server type `type_name`.
pub fn arrow_field(name: &str, type_name: &str, nullable: bool) -> Result<(Field, MsType)> {
    let ty = MsType::parse(type_name).map_err(|cast| {
        Error::config(format!(
            "column `{name}` is {type_name}, which ferry does not read; {cast}, in a `query`"
        ))
    })?;
    let mut metadata = HashMap::from([(TYPE_KEY.to_string(), type_name.to_string())]);
    if ty == MsType::Guid {
        metadata.insert("ARROW:extension:name".to_string(), "arrow.uuid".to_string());
    }
    Ok((
        Field::new(name, ty.arrow(), nullable).with_metadata(metadata),
        ty,
    ))
}

/// One column's builder.
pub enum ColumnBuilder {
    /// Boolean
    Bool(BooleanBuilder),
    /// UInt8
    U8(UInt8Builder),
    /// Int16
    I16(Int16Builder),
    /// Int32
    I32(Int32Builder),
    /// Int64
    I64(Int64Builder),
    /// Float32
    F32(Float32Builder),
    /// Float64
    F64(Float64Builder),
    /// Decimal128 (with its scale, to rescale money)
    Decimal(Decimal128Builder, u8, u8),
    /// Utf8
    Text(StringBuilder),
    /// Binary
    Binary(BinaryBuilder),
    /// FixedSizeBinary(16)
    Guid(FixedSizeBinaryBuilder),
    /// Date32
    Date(Date32Builder),
    /// Time64(ns)
    Time(Time64NanosecondBuilder),
    /// Timestamp(µs)
    Micros(TimestampMicrosecondBuilder),
    /// Timestamp(ns)
    Nanos(TimestampNanosecondBuilder),
    /// datetimeoffset: the UTC timestamp (µs or ns) and the offsets
    Offset(Box<ColumnBuilder>, Int16Builder),
}

/// The bytes a value adds to a batch: the text's or the bytes' length for variable-length
/// values, 16 for the others (none is wider).
pub fn value_bytes(value: &ColumnData<'_>) -> usize {
    match value {
        ColumnData::String(Some(s)) => s.len(),
        ColumnData::Binary(Some(b)) => b.len(),
        ColumnData::Xml(Some(x)) => x.as_ref().as_ref().len(),
        _ => 16,
    }
}

impl ColumnBuilder {
    /// A builder for `ty` with room for `rows`.
    pub fn new(ty: MsType, rows: usize) -> Self {
        match ty {
            MsType::Bit => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            MsType::TinyInt => ColumnBuilder::U8(UInt8Builder::with_capacity(rows)),
            MsType::SmallInt => ColumnBuilder::I16(Int16Builder::with_capacity(rows)),
            MsType::Int => ColumnBuilder::I32(Int32Builder::with_capacity(rows)),
            MsType::BigInt => ColumnBuilder::I64(Int64Builder::with_capacity(rows)),
            MsType::Real => ColumnBuilder::F32(Float32Builder::with_capacity(rows)),
            MsType::Float => ColumnBuilder::F64(Float64Builder::with_capacity(rows)),
            MsType::Decimal(p, s) => {
                ColumnBuilder::Decimal(Decimal128Builder::with_capacity(rows), p.clamp(1, 38), s)
            }
            MsType::Money => ColumnBuilder::Decimal(Decimal128Builder::with_capacity(rows), 19, 4),
            MsType::SmallMoney => {
                ColumnBuilder::Decimal(Decimal128Builder::with_capacity(rows), 10, 4)
            }
            MsType::Text => ColumnBuilder::Text(StringBuilder::with_capacity(rows, rows * 16)),
            MsType::Binary => ColumnBuilder::Binary(BinaryBuilder::with_capacity(rows, rows * 16)),
            MsType::Guid => ColumnBuilder::Guid(FixedSizeBinaryBuilder::with_capacity(rows, 16)),
            MsType::Date => ColumnBuilder::Date(Date32Builder::with_capacity(rows)),
            MsType::Time(_) => ColumnBuilder::Time(Time64NanosecondBuilder::with_capacity(rows)),
            MsType::DateTime | MsType::SmallDateTime => {
                ColumnBuilder::Micros(TimestampMicrosecondBuilder::with_capacity(rows))
            }
            MsType::DateTime2(7) => {
                ColumnBuilder::Nanos(TimestampNanosecondBuilder::with_capacity(rows))
            }
            MsType::DateTime2(_) => {
                ColumnBuilder::Micros(TimestampMicrosecondBuilder::with_capacity(rows))
            }
            MsType::DateTimeOffset(n) => ColumnBuilder::Offset(
                Box::new(ColumnBuilder::new(MsType::DateTime2(n), rows)),
                Int16Builder::with_capacity(rows),
            ),
        }
    }

    /// How many arrays this builder makes (a datetimeoffset makes two).
    pub fn width(&self) -> usize {
        match self {
            ColumnBuilder::Offset(..) => 2,
            _ => 1,
        }
    }

    /// Appends one value; `Err` says why it does not fit (the caller names row and column).
    pub fn append(&mut self, value: ColumnData<'_>) -> std::result::Result<(), String> {
        use ColumnBuilder as B;
        use ColumnData as D;
        let mismatch = |value: &ColumnData<'_>| format!("the server sent a {value:?} value for it");
        match (self, value) {
            (B::Bool(b), D::Bit(v)) => b.append_option(v),
            (B::U8(b), D::U8(v)) => b.append_option(v),
            (B::I16(b), D::I16(v)) => b.append_option(v),
            (B::I32(b), D::I32(v)) => b.append_option(v),
            (B::I64(b), D::I64(v)) => b.append_option(v),
            (B::F32(b), D::F32(v)) => b.append_option(v),
            (B::F64(b), D::F64(v)) => b.append_option(v),
            (B::Decimal(b, _, s), D::Numeric(v)) => match v {
                None => b.append_null(),
                Some(n) => {
                    // The raw integer at the value's scale, brought to the column's scale.
                    let (raw, scale) = (n.value(), n.scale());
                    let value = if scale == *s {
                        raw
                    } else if scale < *s {
                        raw.checked_mul(10i128.pow((*s - scale) as u32))
                            .ok_or("a decimal value overflows its column")?
                    } else {
                        let div = 10i128.pow((scale - *s) as u32);
                        if raw % div != 0 {
                            return Err(format!(
                                "a decimal value has {scale} digits after the point, more than the column's {s}"
                            ));
                        }
                        raw / div
                    };
                    b.append_value(value)
                }
            },
            (B::Text(b), D::String(v)) => b.append_option(v.as_deref()),
            (B::Text(b), D::Xml(v)) => b.append_option(v.as_ref().map(|x| x.to_string())),
            (B::Binary(b), D::Binary(v)) => b.append_option(v.as_deref()),
            (B::Guid(b), D::Guid(v)) => match v {
                None => b.append_null(),
                Some(g) => b.append_value(g.as_bytes()).map_err(|e| e.to_string())?,
            },
            (B::Date(b), D::Date(v)) => {
                b.append_option(v.map(|d| (d.days() as i64 - DAYS_TO_EPOCH) as i32))
            }
            (B::Time(b), D::Time(v)) => {
                b.append_option(v.map(|t| time_nanos(t.increments(), t.scale())))
            }
            (B::Micros(b), D::DateTime(v)) => b.append_option(v.map(|d| {
                let days = d.days() as i64 + DAYS_TO_1900 - DAYS_TO_EPOCH;
                // 1/300 s, to the nearest microsecond.
                let micros = (d.seconds_fragments() as i64 * 1_000_000 + 150) / 300;
                days * 86_400_000_000 + micros
            })),
            (B::Micros(b), D::SmallDateTime(v)) => b.append_option(v.map(|d| {
                let days = d.days() as i64 + DAYS_TO_1900 - DAYS_TO_EPOCH;
                days * 86_400_000_000 + d.seconds_fragments() as i64 * 60_000_000
            })),
            (B::Micros(b), D::DateTime2(v)) => b.append_option(v.map(|d| {
                let days = d.date().days() as i64 - DAYS_TO_EPOCH;
                days * 86_400_000_000 + time_nanos(d.time().increments(), d.time().scale()) / 1000
            })),
            (B::Nanos(b), D::DateTime2(v)) => match v {
                None => b.append_null(),
                Some(d) => {
                    let days = d.date().days() as i64 - DAYS_TO_EPOCH;
                    let nanos = days
                        .checked_mul(86_400_000_000_000)
                        .and_then(|n| n.checked_add(time_nanos(d.time().increments(), d.time().scale())))
                        .ok_or(
                            "a datetime2(7) value outside 1677-09-21..2262-04-11 does not fit a nanosecond timestamp; CAST the column to datetime2(6) in a `query`",
                        )?;
                    b.append_value(nanos)
                }
            },
            (B::Offset(instant, offsets), D::DateTimeOffset(v)) => {
                // The value is the UTC date and time, and the offset to show it in.
                instant.append(D::DateTime2(v.map(|d| d.datetime2())))?;
                offsets.append_option(v.map(|d| d.offset()));
            }
            (_, value) => return Err(mismatch(&value)),
        }
        Ok(())
    }

    /// The arrays of what was appended ([`ColumnBuilder::width`] of them), for `fields`.
    pub fn finish_into(&mut self, fields: &[arrow::datatypes::FieldRef], out: &mut Vec<ArrayRef>) {
        match self {
            ColumnBuilder::Offset(instant, offsets) => {
                out.push(instant.finish(&fields[0]));
                out.push(Arc::new(offsets.finish()));
            }
            other => out.push(other.finish(&fields[0])),
        }
    }

    /// The array of what was appended.
    pub fn finish(&mut self, field: &Field) -> ArrayRef {
        use ColumnBuilder as B;
        match self {
            // The instant; `finish_into` adds the offsets.
            B::Offset(instant, _) => instant.finish(field),
            B::Bool(b) => Arc::new(b.finish()),
            B::U8(b) => Arc::new(b.finish()),
            B::I16(b) => Arc::new(b.finish()),
            B::I32(b) => Arc::new(b.finish()),
            B::I64(b) => Arc::new(b.finish()),
            B::F32(b) => Arc::new(b.finish()),
            B::F64(b) => Arc::new(b.finish()),
            B::Decimal(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s as i8)
                    .unwrap_or_else(|_| b.finish()),
            ),
            B::Text(b) => Arc::new(b.finish()),
            B::Binary(b) => Arc::new(b.finish()),
            B::Guid(b) => Arc::new(b.finish()),
            B::Date(b) => Arc::new(b.finish()),
            B::Time(b) => Arc::new(b.finish()),
            B::Micros(b) => Arc::new(b.finish().with_data_type(field.data_type().clone())),
            B::Nanos(b) => Arc::new(b.finish().with_data_type(field.data_type().clone())),
        }
    }
}

/// Nanoseconds of a time of day given in units of 10^-scale s.
fn time_nanos(increments: u64, scale: u8) -> i64 {
    (increments as i64) * 10i64.pow(9 - scale.min(9) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_map_to_arrow_and_unsupported_ones_say_what_to_cast_to() {
        assert_eq!(
            MsType::parse("decimal(38,10)").unwrap().arrow(),
            DataType::Decimal128(38, 10)
        );
        assert_eq!(
            MsType::parse("numeric(5, 0)").unwrap(),
            MsType::Decimal(5, 0)
        );
        assert_eq!(MsType::parse("float(24)").unwrap(), MsType::Real);
        assert_eq!(
            MsType::parse("datetime2(7)").unwrap().arrow(),
            DataType::Timestamp(TimeUnit::Nanosecond, None)
        );
        assert_eq!(
            MsType::parse("DATETIME2(3)").unwrap().arrow(),
            DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        let err = arrow_field("geo", "geography", true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column `geo`") && err.contains("CAST"),
            "{err}"
        );
        let (field, _) = arrow_field("id", "uniqueidentifier", false).unwrap();
        assert_eq!(
            field
                .metadata()
                .get("ARROW:extension:name")
                .map(String::as_str),
            Some("arrow.uuid")
        );
    }
}
