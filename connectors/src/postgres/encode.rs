//! Arrow batches into PostgreSQL's binary COPY format, for the target table's column types.
//!
//! Each incoming column is first cast (checked, never silently lossy) to the Arrow type that
//! the target column's type reads as (see [`super::types`]); then one writer per target type
//! emits the binary send format. The cast is free when the types already agree.

use std::net::IpAddr;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Decimal256Array, FixedSizeBinaryArray, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, IntervalMonthDayNanoArray, ListArray, StringArray, Time64MicrosecondArray,
    TimestampMicrosecondArray,
};
use arrow::compute::{CastOptions, can_cast_types, cast_with_options};
use arrow::datatypes::{DataType, IntervalMonthDayNanoType};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use ferry_engine::{Encoder, Error, Result};

use super::decode::{EPOCH_DAYS, EPOCH_MICROS, SIGNATURE};
use super::types::{PgType, arrow_type};

/// A target column: its name and PostgreSQL type.
#[derive(Debug, Clone)]
pub struct Target {
    /// Column name.
    pub name: String,
    /// Its type.
    pub kind: PgType,
}

/// Checks that every source field can be written to its target column, before data moves.
pub fn check_compatible(fields: &[(String, DataType)], targets: &[Target]) -> Result<()> {
    for ((name, from), target) in fields.iter().zip(targets) {
        let to = arrow_type(&target.kind);
        let ok = from == &to
            || can_cast_types(from, &to)
            || (target.kind == PgType::Uuid && is_string(from));
        if !ok {
            return Err(Error::invalid_input(format!(
                "column `{name}` ({from}) cannot be written to a PostgreSQL {} column; cast it in the source or change the target column",
                describe(&target.kind)
            )));
        }
    }
    Ok(())
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn describe(t: &PgType) -> String {
    match t {
        PgType::Array(e, _) => format!("{}[]", describe(e)),
        PgType::Numeric(Some((p, s))) => format!("numeric({p},{s})"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Encodes batches as one binary COPY stream.
pub struct CopyEncoder {
    targets: Vec<Target>,
    header_sent: bool,
    row_bytes_hint: usize,
}

impl CopyEncoder {
    /// An encoder writing columns in `targets`' order (the batch's column order).
    pub fn new(targets: Vec<Target>) -> Self {
        Self {
            targets,
            header_sent: false,
            row_bytes_hint: 64,
        }
    }

    fn header(&mut self, out: &mut Vec<u8>) {
        if !self.header_sent {
            out.extend_from_slice(SIGNATURE);
            out.extend_from_slice(&0i32.to_be_bytes());
            out.extend_from_slice(&0i32.to_be_bytes());
            self.header_sent = true;
        }
    }
}

fn cast_error(column: &str, e: impl std::fmt::Display) -> Error {
    Error::data(format!("column `{column}`: {e}"))
}

/// Casts `array` to what the target type reads as.
fn conform(array: &ArrayRef, target: &Target) -> Result<ArrayRef> {
    let to = arrow_type(&target.kind);
    if array.data_type() == &to {
        return Ok(array.clone());
    }
    if target.kind == PgType::Interval && is_string(array.data_type()) {
        return interval_from_text(array, &target.name);
    }
    if matches!(
        target.kind,
        PgType::Date | PgType::Timestamp | PgType::Timestamptz
    ) && is_string(array.data_type())
    {
        return time_from_text(array, &to, &target.name);
    }
    if target.kind == PgType::Uuid && is_string(array.data_type()) {
        return cast_with_options(array, &DataType::Utf8, &strict())
            .map_err(|e| cast_error(&target.name, e));
    }
    cast_with_options(array, &to, &strict()).map_err(|e| cast_error(&target.name, e))
}

/// The value a date or timestamp column holds for PostgreSQL's `infinity` (`-infinity` is
/// the minimum): PostgreSQL's own binary form of them, passed through by the writer. No
/// Arrow value read from elsewhere is this far out (PostgreSQL refuses such dates anyway).
const INFINITY_DAYS: i32 = i32::MAX;
const INFINITY_MICROS: i64 = i64::MAX;

/// Whether `text` is PostgreSQL's `infinity` (`Some(true)`) or `-infinity` (`Some(false)`).
fn infinity(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => Some(true),
        "-infinity" => Some(false),
        _ => None,
    }
}

/// Text dates and timestamps (what `col::text` yields: ISO with an offset) into `to`,
/// keeping `infinity` and `-infinity` so that a column read as text loads back as it was.
fn time_from_text(array: &ArrayRef, to: &DataType, column: &str) -> Result<ArrayRef> {
    let text =
        cast_with_options(array, &DataType::Utf8, &strict()).map_err(|e| cast_error(column, e))?;
    let text = text.as_string::<i32>();
    let infinities: Vec<Option<bool>> = text.iter().map(|v| v.and_then(infinity)).collect();
    if infinities.iter().all(Option::is_none) {
        return cast_with_options(array, to, &strict()).map_err(|e| cast_error(column, e));
    }
    let finite: StringArray = text
        .iter()
        .zip(&infinities)
        .map(|(v, inf)| if inf.is_some() { None } else { v })
        .collect();
    let cast = cast_with_options(&(Arc::new(finite) as ArrayRef), to, &strict())
        .map_err(|e| cast_error(column, e))?;
    let out: ArrayRef = match to {
        DataType::Date32 => {
            let days = cast.as_primitive::<arrow::datatypes::Date32Type>();
            Arc::new(
                days.iter()
                    .zip(&infinities)
                    .map(|(v, inf)| match inf {
                        Some(true) => Some(INFINITY_DAYS),
                        Some(false) => Some(-INFINITY_DAYS - 1),
                        None => v,
                    })
                    .collect::<Date32Array>(),
            )
        }
        DataType::Timestamp(_, tz) => {
            let micros = cast.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            Arc::new(
                micros
                    .iter()
                    .zip(&infinities)
                    .map(|(v, inf)| match inf {
                        Some(true) => Some(INFINITY_MICROS),
                        Some(false) => Some(-INFINITY_MICROS - 1),
                        None => v,
                    })
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone_opt(tz.clone()),
            )
        }
        _ => cast,
    };
    Ok(out)
}

/// Text intervals: ISO 8601 (as ferry writes them to Parquet) or Arrow's interval syntax.
pub(crate) fn interval_from_text(array: &ArrayRef, column: &str) -> Result<ArrayRef> {
    let text =
        cast_with_options(array, &DataType::Utf8, &strict()).map_err(|e| cast_error(column, e))?;
    let text = text.as_string::<i32>();
    let mut out = arrow::array::IntervalMonthDayNanoBuilder::with_capacity(text.len());
    for v in text.iter() {
        match v {
            None => out.append_null(),
            Some(s) => match crate::format::interval::parse_iso8601(s) {
                Some(i) => out.append_value(i),
                None => {
                    let one = arrow::array::StringArray::from(vec![s]);
                    let parsed = cast_with_options(
                        &one,
                        &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
                        &strict(),
                    )
                    .map_err(|_| cast_error(column, format!("`{s}` is not an interval")))?;
                    out.append_value(parsed.as_primitive::<IntervalMonthDayNanoType>().value(0));
                }
            },
        }
    }
    Ok(std::sync::Arc::new(out.finish()))
}

fn strict() -> CastOptions<'static> {
    CastOptions {
        safe: false,
        ..Default::default()
    }
}

impl Encoder for CopyEncoder {
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>> {
        let arrays: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(&self.targets)
            .map(|(a, t)| conform(a, t))
            .collect::<Result<_>>()?;
        // Downcast every column once per batch, not once per value.
        let writers: Vec<Writer<'_>> = arrays
            .iter()
            .zip(&self.targets)
            .map(|(a, t)| Writer::new(a.as_ref(), &t.kind))
            .collect();
        let mut out = Vec::with_capacity(batch.num_rows() * self.row_bytes_hint + 32);
        self.header(&mut out);
        let ncols = self.targets.len() as i16;
        for row in 0..batch.num_rows() {
            out.extend_from_slice(&ncols.to_be_bytes());
            for (writer, target) in writers.iter().zip(&self.targets) {
                writer.field(&mut out, row).map_err(|message| {
                    Error::data(format!(
                        "row {} of the batch, column `{}`: {message}",
                        row + 1,
                        target.name
                    ))
                })?;
            }
        }
        if batch.num_rows() > 0 {
            self.row_bytes_hint = out.len() / batch.num_rows() + 1;
        }
        Ok(Some(Bytes::from(out)))
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        let mut out = Vec::with_capacity(32);
        self.header(&mut out);
        out.extend_from_slice(&(-1i16).to_be_bytes());
        Ok(Some(Bytes::from(out)))
    }
}

/// One column, downcast to the array type its target type is written from.
enum Writer<'a> {
    Bool(&'a BooleanArray),
    Int2(&'a Int16Array),
    Int4(&'a Int32Array),
    Int8(&'a Int64Array),
    Float4(&'a Float32Array),
    Float8(&'a Float64Array),
    Decimal128(&'a Decimal128Array, i8),
    Decimal256(&'a Decimal256Array, i8),
    NumericText(&'a StringArray),
    Text(&'a StringArray),
    Jsonb(&'a StringArray),
    Inet(&'a StringArray, bool),
    Bytea(&'a BinaryArray),
    Date(&'a Date32Array),
    Time(&'a Time64MicrosecondArray),
    Timestamp(&'a TimestampMicrosecondArray),
    Interval(&'a IntervalMonthDayNanoArray),
    Uuid(&'a FixedSizeBinaryArray),
    UuidText(&'a StringArray),
    List(&'a ListArray, Box<Writer<'a>>, u32),
}

impl<'a> Writer<'a> {
    /// `array` has already been conformed to what `kind` is written from.
    fn new(array: &'a dyn Array, kind: &PgType) -> Writer<'a> {
        match kind {
            PgType::Bool => Writer::Bool(array.as_boolean()),
            PgType::Int2 => Writer::Int2(array.as_primitive()),
            PgType::Int4 => Writer::Int4(array.as_primitive()),
            PgType::Int8 => Writer::Int8(array.as_primitive()),
            PgType::Float4 => Writer::Float4(array.as_primitive()),
            PgType::Float8 => Writer::Float8(array.as_primitive()),
            PgType::Numeric(_) => match array.data_type() {
                DataType::Decimal128(_, s) => Writer::Decimal128(array.as_primitive(), *s),
                DataType::Decimal256(_, s) => Writer::Decimal256(array.as_primitive(), *s),
                _ => Writer::NumericText(array.as_string()),
            },
            PgType::Text | PgType::Json => Writer::Text(array.as_string()),
            PgType::Jsonb => Writer::Jsonb(array.as_string()),
            PgType::Inet => Writer::Inet(array.as_string(), false),
            PgType::Cidr => Writer::Inet(array.as_string(), true),
            PgType::Bytea => Writer::Bytea(array.as_binary()),
            PgType::Date => Writer::Date(array.as_primitive()),
            PgType::Time => Writer::Time(array.as_primitive()),
            PgType::Timestamp | PgType::Timestamptz => Writer::Timestamp(array.as_primitive()),
            PgType::Interval => Writer::Interval(array.as_primitive()),
            PgType::Uuid => match array.data_type() {
                DataType::FixedSizeBinary(16) => Writer::Uuid(array.as_fixed_size_binary()),
                _ => Writer::UuidText(array.as_string()),
            },
            PgType::Array(elem, oid) => {
                let list = array.as_list::<i32>();
                Writer::List(
                    list,
                    Box::new(Writer::new(list.values().as_ref(), elem)),
                    *oid,
                )
            }
        }
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Writer::Bool(a) => a.is_null(i),
            Writer::Int2(a) => a.is_null(i),
            Writer::Int4(a) => a.is_null(i),
            Writer::Int8(a) => a.is_null(i),
            Writer::Float4(a) => a.is_null(i),
            Writer::Float8(a) => a.is_null(i),
            Writer::Decimal128(a, _) => a.is_null(i),
            Writer::Decimal256(a, _) => a.is_null(i),
            Writer::NumericText(a)
            | Writer::Text(a)
            | Writer::Jsonb(a)
            | Writer::Inet(a, _)
            | Writer::UuidText(a) => a.is_null(i),
            Writer::Bytea(a) => a.is_null(i),
            Writer::Date(a) => a.is_null(i),
            Writer::Time(a) => a.is_null(i),
            Writer::Timestamp(a) => a.is_null(i),
            Writer::Interval(a) => a.is_null(i),
            Writer::Uuid(a) => a.is_null(i),
            Writer::List(a, ..) => a.is_null(i),
        }
    }

    /// Writes one field: its length word, then its value (or -1 for NULL).
    fn field(&self, out: &mut Vec<u8>, i: usize) -> Result<(), String> {
        if self.is_null(i) {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            return Ok(());
        }
        // Fixed-size values: length and value at once.
        macro_rules! fixed {
            ($bytes:expr) => {{
                let b = $bytes;
                out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                out.extend_from_slice(&b);
                return Ok(());
            }};
        }
        match self {
            Writer::Bool(a) => fixed!([a.value(i) as u8]),
            Writer::Int2(a) => fixed!(a.value(i).to_be_bytes()),
            Writer::Int4(a) => fixed!(a.value(i).to_be_bytes()),
            Writer::Int8(a) => fixed!(a.value(i).to_be_bytes()),
            Writer::Float4(a) => fixed!(a.value(i).to_be_bytes()),
            Writer::Float8(a) => fixed!(a.value(i).to_be_bytes()),
            Writer::Date(a) => fixed!(
                match a.value(i) {
                    v @ (INFINITY_DAYS | i32::MIN) => v,
                    v => v.checked_sub(EPOCH_DAYS).ok_or("date out of range")?,
                }
                .to_be_bytes()
            ),
            Writer::Time(a) => fixed!(a.value(i).to_be_bytes()),
            Writer::Timestamp(a) => fixed!(
                match a.value(i) {
                    v @ (INFINITY_MICROS | i64::MIN) => v,
                    v => v
                        .checked_sub(EPOCH_MICROS)
                        .ok_or("timestamp out of range")?,
                }
                .to_be_bytes()
            ),
            Writer::Text(a) => {
                let v = a.value(i).as_bytes();
                out.extend_from_slice(&len_word(v.len())?);
                out.extend_from_slice(v);
                return Ok(());
            }
            Writer::Bytea(a) => {
                let v = a.value(i);
                out.extend_from_slice(&len_word(v.len())?);
                out.extend_from_slice(v);
                return Ok(());
            }
            _ => {}
        }
        let start = out.len();
        out.extend_from_slice(&0i32.to_be_bytes());
        self.value(out, i)?;
        let len = len_word(out.len() - start - 4)?;
        out[start..start + 4].copy_from_slice(&len);
        Ok(())
    }

    /// Writes a variable-size value (the length word is written by the caller).
    fn value(&self, out: &mut Vec<u8>, i: usize) -> Result<(), String> {
        match self {
            Writer::Decimal128(a, s) => {
                let v = a.value(i);
                numeric_from_u128(out, v < 0, v.unsigned_abs(), *s)?
            }
            Writer::Decimal256(a, s) => {
                let text = a.value(i).to_string();
                let (neg, digits) = match text.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, text.as_str()),
                };
                numeric_from_unscaled(out, neg, digits, *s)?
            }
            Writer::NumericText(a) => numeric_from_text(out, a.value(i))?,
            Writer::Jsonb(a) => {
                out.push(1);
                out.extend_from_slice(a.value(i).as_bytes());
            }
            Writer::Inet(a, cidr) => inet_from_text(out, a.value(i), *cidr)?,
            Writer::Interval(a) => {
                let v = a.value(i);
                if v.nanoseconds % 1000 != 0 {
                    return Err(
                        "interval has sub-microsecond precision, which PostgreSQL cannot hold"
                            .into(),
                    );
                }
                out.extend((v.nanoseconds / 1000).to_be_bytes());
                out.extend(v.days.to_be_bytes());
                out.extend(v.months.to_be_bytes());
            }
            Writer::Uuid(a) => out.extend_from_slice(a.value(i)),
            Writer::UuidText(a) => out.extend(uuid_from_text(a.value(i))?),
            Writer::List(list, elems, oid) => {
                let offsets = list.value_offsets();
                let (from, to) = (offsets[i] as usize, offsets[i + 1] as usize);
                let n = i32::try_from(to - from).map_err(|_| "array too long")?;
                out.extend(if n == 0 { 0i32 } else { 1 }.to_be_bytes());
                let has_nulls = (from..to).any(|j| elems.is_null(j));
                out.extend(i32::from(has_nulls).to_be_bytes());
                out.extend(oid.to_be_bytes());
                if n > 0 {
                    out.extend(n.to_be_bytes());
                    out.extend(1i32.to_be_bytes());
                    for j in from..to {
                        elems.field(out, j)?;
                    }
                }
            }
            // Fixed-size and plain byte values are written whole by `field`.
            _ => return Err("internal: value written twice".into()),
        }
        Ok(())
    }
}

fn len_word(len: usize) -> Result<[u8; 4], String> {
    i32::try_from(len)
        .map(i32::to_be_bytes)
        .map_err(|_| "value larger than 2 GiB".to_string())
}

/// numeric's binary form from an unscaled Decimal128 magnitude at `scale`, without allocating.
fn numeric_from_u128(
    out: &mut Vec<u8>,
    negative: bool,
    magnitude: u128,
    scale: i8,
) -> Result<(), String> {
    // Align the decimal point on a base-10000 group boundary: scale up to a multiple of 4.
    let pad = if scale >= 0 {
        (4 - scale as u32 % 4) % 4
    } else {
        0
    };
    let Some(aligned) = 10u128
        .checked_pow(pad)
        .and_then(|m| magnitude.checked_mul(m))
        .filter(|_| scale >= 0)
    else {
        return numeric_from_unscaled(out, negative, &magnitude.to_string(), scale);
    };
    let frac_groups = (scale as i32 + pad as i32) / 4;
    // Groups from the least significant; at most 39 digits + 3 = 11 groups.
    let mut groups = [0i16; 11];
    let mut n = 0;
    let mut rest = aligned;
    while rest > 0 {
        groups[n] = (rest % 10_000) as i16;
        rest /= 10_000;
        n += 1;
    }
    // Trailing zero groups (least significant) are not sent.
    let mut low = 0;
    while low < n && groups[low] == 0 {
        low += 1;
    }
    let ndigits = (n - low) as i16;
    let weight = if ndigits == 0 {
        0
    } else {
        n as i16 - 1 - frac_groups as i16
    };
    out.extend(ndigits.to_be_bytes());
    out.extend(weight.to_be_bytes());
    out.extend(
        (if negative && ndigits > 0 {
            0x4000u16
        } else {
            0
        })
        .to_be_bytes(),
    );
    out.extend((scale.max(0) as u16).to_be_bytes());
    for g in groups[low..n].iter().rev() {
        out.extend(g.to_be_bytes());
    }
    Ok(())
}

/// numeric's binary form from an unscaled decimal `digits` (no sign) at `scale`.
fn numeric_from_unscaled(
    out: &mut Vec<u8>,
    negative: bool,
    digits: &str,
    scale: i8,
) -> Result<(), String> {
    if scale < 0 {
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return numeric_from_parts(out, negative, &format!("{digits}{zeros}"), "", 0);
    }
    let scale = scale as usize;
    let (int, frac) = if digits.len() > scale {
        digits.split_at(digits.len() - scale)
    } else {
        ("", digits)
    };
    let frac = format!("{}{frac}", "0".repeat(scale - frac.len()));
    numeric_from_parts(out, negative, int, &frac, scale as u16)
}

/// numeric's binary form from decimal text (`-12.50`, `1e3`, `NaN`, `Infinity`).
fn numeric_from_text(out: &mut Vec<u8>, text: &str) -> Result<(), String> {
    let t = text.trim();
    let special = match t.to_ascii_lowercase().as_str() {
        "nan" => Some(0xC000u16),
        "infinity" | "+infinity" | "inf" | "+inf" => Some(0xD000),
        "-infinity" | "-inf" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        out.extend(0i16.to_be_bytes());
        out.extend(0i16.to_be_bytes());
        out.extend(sign.to_be_bytes());
        out.extend(0u16.to_be_bytes());
        return Ok(());
    }
    let bad = || format!("`{text}` is not a number");
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (mantissa, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i32>().map_err(|_| bad())?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if exp.unsigned_abs() > 1000 {
        return Err(bad());
    }
    // Move the decimal point by the exponent.
    let all = format!("{int}{frac}");
    let point = int.len() as i32 + exp;
    let (int, frac) = if point <= 0 {
        (
            String::new(),
            format!("{}{all}", "0".repeat((-point) as usize)),
        )
    } else if point as usize >= all.len() {
        (
            format!("{all}{}", "0".repeat(point as usize - all.len())),
            String::new(),
        )
    } else {
        (
            all[..point as usize].to_string(),
            all[point as usize..].to_string(),
        )
    };
    let dscale = frac.len() as u16;
    numeric_from_parts(out, negative, &int, &frac, dscale)
}

/// numeric's binary form from integer and fraction digit strings.
fn numeric_from_parts(
    out: &mut Vec<u8>,
    negative: bool,
    int: &str,
    frac: &str,
    dscale: u16,
) -> Result<(), String> {
    let int = int.trim_start_matches('0');
    // Base-10000 groups aligned on the decimal point.
    let int_pad = (4 - int.len() % 4) % 4;
    let int_digits = format!("{}{int}", "0".repeat(int_pad));
    let frac_pad = (4 - frac.len() % 4) % 4;
    let frac_digits = format!("{frac}{}", "0".repeat(frac_pad));
    let group = |s: &str| -> i16 { s.bytes().fold(0i16, |a, b| a * 10 + (b - b'0') as i16) };
    let mut groups: Vec<i16> = int_digits
        .as_bytes()
        .chunks(4)
        .chain(frac_digits.as_bytes().chunks(4))
        .map(|c| group(std::str::from_utf8(c).unwrap_or("0")))
        .collect();
    let mut weight = (int_digits.len() / 4) as i32 - 1;
    // Strip leading and trailing zero groups.
    let lead = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..lead);
    weight -= lead as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let weight = i16::try_from(weight).map_err(|_| "number out of range")?;
    let ndigits = i16::try_from(groups.len()).map_err(|_| "number out of range")?;
    out.extend(ndigits.to_be_bytes());
    out.extend(weight.to_be_bytes());
    out.extend(
        (if negative && !groups.is_empty() {
            0x4000u16
        } else {
            0
        })
        .to_be_bytes(),
    );
    out.extend(dscale.to_be_bytes());
    for g in groups {
        out.extend(g.to_be_bytes());
    }
    Ok(())
}

fn inet_from_text(out: &mut Vec<u8>, text: &str, cidr: bool) -> Result<(), String> {
    let bad = || format!("`{text}` is not an IP address or network");
    let (addr, bits) = match text.trim().split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
        None => (text.trim(), None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let (family, max, bytes): (u8, u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (2, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (3, 128, a.octets().to_vec()),
    };
    let bits = bits.unwrap_or(max);
    if bits > max {
        return Err(bad());
    }
    out.extend([family, bits, cidr as u8, bytes.len() as u8]);
    out.extend(bytes);
    Ok(())
}

fn uuid_from_text(text: &str) -> Result<[u8; 16], String> {
    let hex: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b'-' | b'{' | b'}'))
        .collect();
    let bad = || format!("`{text}` is not a UUID");
    if hex.len() != 32 {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The target columns for `batch`'s schema, in order; used by tests and the sink.
pub fn targets_for(names: &[String], kinds: &[PgType]) -> Vec<Target> {
    names
        .iter()
        .zip(kinds)
        .map(|(n, k)| Target {
            name: n.clone(),
            kind: k.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::decode::CopyDecoder;
    use arrow::array::{
        Date32Array, Decimal128Array, Int64Array, ListArray, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Int32Type, Schema};
    use arrow::util::pretty::pretty_format_batches;
    use std::sync::Arc;

    fn numeric_bytes(f: impl FnOnce(&mut Vec<u8>) -> Result<(), String>) -> Vec<u8> {
        let mut v = Vec::new();
        f(&mut v).unwrap();
        v
    }

    #[test]
    fn the_allocation_free_numeric_path_matches_the_exact_one() {
        for (v, scale) in [
            (0u128, 2i8),
            (1, 0),
            (12_345_678, 3),
            (150, 2),
            (10_000, 4),
            (1, 10),
            (99_999_999_999_999_999_999_999_999_999_999_999u128, 10),
            (u128::MAX / 7, 38),
            (5, -2),
        ] {
            for negative in [false, true] {
                let fast = numeric_bytes(|o| numeric_from_u128(o, negative, v, scale));
                let exact =
                    numeric_bytes(|o| numeric_from_unscaled(o, negative, &v.to_string(), scale));
                assert_eq!(fast, exact, "{v} scale {scale}");
            }
        }
    }

    #[test]
    fn numeric_text_and_decimals_agree() {
        let a = numeric_bytes(|o| numeric_from_text(o, "12345.678"));
        let b = numeric_bytes(|o| numeric_from_unscaled(o, false, "12345678", 3));
        assert_eq!(a, b);
        // digits [1, 2345, 6780], weight 1, dscale 3
        assert_eq!(a, [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1A, 0x7C]);
        let c = numeric_bytes(|o| numeric_from_text(o, "1.2345678e4"));
        assert_eq!(&c[..6], &a[..6]);
        let z = numeric_bytes(|o| numeric_from_text(o, "-0.00"));
        assert_eq!(z, [0, 0, 0, 0, 0, 0, 0, 2], "zero has no sign");
        assert!(numeric_from_text(&mut Vec::new(), "12a").is_err());
        assert!(uuid_from_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").is_ok());
        assert!(uuid_from_text("nope").is_err());
        assert!(inet_from_text(&mut Vec::new(), "10.0.0.0/33", true).is_err());
    }

    /// Encoding then decoding gives the batch back.
    #[test]
    fn binary_copy_round_trips() {
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None]),
            Some(vec![]),
            None,
        ]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("amount", DataType::Decimal128(12, 3), true),
            Field::new("name", DataType::Utf8, true),
            Field::new("day", DataType::Date32, true),
            Field::new(
                "at",
                DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("l", list.data_type().clone(), true),
            Field::new("big", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, -2, 3])),
                Arc::new(
                    Decimal128Array::from(vec![Some(1_500), None, Some(-123_456_789)])
                        .with_precision_and_scale(12, 3)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(vec![Some("ünï"), Some(""), None])),
                Arc::new(Date32Array::from(vec![Some(0), Some(10_957), Some(-1)])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(0),
                    None,
                    Some(1_700_000_000_123_456),
                ])),
                Arc::new(list),
                Arc::new(StringArray::from(vec![
                    Some("NaN"),
                    Some("0.0001"),
                    Some("-123456789012345678901234567890.5"),
                ])),
            ],
        )
        .unwrap();
        let kinds = vec![
            PgType::Int8,
            PgType::Numeric(Some((12, 3))),
            PgType::Text,
            PgType::Date,
            PgType::Timestamp,
            PgType::Array(Box::new(PgType::Int4), 23),
            PgType::Numeric(None),
        ];
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut encoder = CopyEncoder::new(targets_for(&names, &kinds));
        let mut stream = encoder.encode(&batch).unwrap().unwrap().to_vec();
        stream.extend_from_slice(&encoder.finish().unwrap().unwrap());
        let mut decoder = CopyDecoder::new(schema, kinds, 100, 0);
        let d = decoder.decode(&stream).unwrap();
        assert_eq!(d.consumed, stream.len());
        assert!(decoder.finished());
        let back = decoder.flush().unwrap().unwrap();
        assert_eq!(
            pretty_format_batches(&[back]).unwrap().to_string(),
            pretty_format_batches(&[batch]).unwrap().to_string()
        );
    }

    #[test]
    fn incompatible_columns_fail_before_data_moves() {
        let fields = vec![("flag".to_string(), DataType::Boolean)];
        let targets = targets_for(&["flag".into()], &[PgType::Interval]);
        let err = check_compatible(&fields, &targets).unwrap_err().to_string();
        assert!(err.contains("`flag`") && err.contains("interval"), "{err}");
        let fields = vec![("id".to_string(), DataType::Utf8)];
        let targets = targets_for(&["id".into()], &[PgType::Uuid]);
        check_compatible(&fields, &targets).unwrap();
    }

    #[test]
    fn values_that_do_not_fit_fail_with_the_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 1 << 40]))])
                .unwrap();
        let mut encoder = CopyEncoder::new(targets_for(&["n".into()], &[PgType::Int4]));
        let err = encoder.encode(&batch).unwrap_err().to_string();
        assert!(err.contains("column `n`"), "{err}");
    }
}
