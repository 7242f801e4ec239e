//! PostgreSQL's binary COPY format into Arrow arrays, with no per-row allocation.
//!
//! The stream is a header (`PGCOPY\n\377\r\n\0`, flags, extension), then one tuple per row
//! (an `i16` field count, then per field an `i32` length, -1 for NULL, and the value in the
//! type's binary send format, big-endian), then an `i16` of -1. Each column appends straight
//! into its Arrow builder.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arrow::array::NullBufferBuilder;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder,
    FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, IntervalMonthDayNanoBuilder, ListArray, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowNativeTypeOp, DataType, FieldRef, IntervalMonthDayNano, SchemaRef, i256,
};
use arrow::record_batch::RecordBatch;

use super::types::{PgType, arrow_type};

/// The binary COPY signature.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
pub const EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A batch ends after this many bytes of input even if it has fewer than `batch_rows` rows,
/// so that wide rows do not make huge batches (a job's budget may set a lower limit).
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// One column's builder and conversion.
enum Column {
    Bool(BooleanBuilder),
    Int2(Int16Builder),
    Int4(Int32Builder),
    Int8(Int64Builder),
    Float4(Float32Builder),
    Float8(Float64Builder),
    Decimal128(Decimal128Builder, i8, DataType),
    Decimal256(Decimal256Builder, i8, DataType),
    NumericText(StringBuilder),
    Text(StringBuilder),
    Jsonb(StringBuilder),
    Inet(StringBuilder),
    Bytea(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder, DataType),
    Interval(IntervalMonthDayNanoBuilder),
    Uuid(FixedSizeBinaryBuilder),
    List {
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        item: FieldRef,
        child: Box<Column>,
    },
}

/// Reads a big-endian integer of `N` bytes from a value that must be exactly that long.
fn be<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", v.len()))
}

impl Column {
    fn new(t: &PgType, capacity: usize) -> Column {
        let data_type = arrow_type(t);
        match t {
            PgType::Bool => Column::Bool(BooleanBuilder::with_capacity(capacity)),
            PgType::Int2 => Column::Int2(Int16Builder::with_capacity(capacity)),
            PgType::Int4 => Column::Int4(Int32Builder::with_capacity(capacity)),
            PgType::Int8 => Column::Int8(Int64Builder::with_capacity(capacity)),
            PgType::Float4 => Column::Float4(Float32Builder::with_capacity(capacity)),
            PgType::Float8 => Column::Float8(Float64Builder::with_capacity(capacity)),
            PgType::Numeric(_) => match data_type {
                DataType::Decimal128(_, s) => {
                    Column::Decimal128(Decimal128Builder::with_capacity(capacity), s, data_type)
                }
                DataType::Decimal256(_, s) => {
                    Column::Decimal256(Decimal256Builder::with_capacity(capacity), s, data_type)
                }
                _ => Column::NumericText(StringBuilder::with_capacity(capacity, capacity * 8)),
            },
            PgType::Text | PgType::Json => {
                Column::Text(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            PgType::Jsonb => Column::Jsonb(StringBuilder::with_capacity(capacity, capacity * 16)),
            PgType::Inet | PgType::Cidr => {
                Column::Inet(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            PgType::Bytea => Column::Bytea(BinaryBuilder::with_capacity(capacity, capacity * 16)),
            PgType::Date => Column::Date(Date32Builder::with_capacity(capacity)),
            PgType::Time => Column::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            PgType::Timestamp | PgType::Timestamptz => Column::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                data_type,
            ),
            PgType::Interval => {
                Column::Interval(IntervalMonthDayNanoBuilder::with_capacity(capacity))
            }
            PgType::Uuid => Column::Uuid(FixedSizeBinaryBuilder::with_capacity(capacity, 16)),
            PgType::Array(elem, _) => {
                let DataType::List(item) = data_type else {
                    unreachable!("arrays map to lists")
                };
                let mut offsets = Vec::with_capacity(capacity + 1);
                offsets.push(0);
                Column::List {
                    offsets,
                    nulls: NullBufferBuilder::new(capacity),
                    item,
                    child: Box::new(Column::new(elem, capacity)),
                }
            }
        }
    }

    fn append(&mut self, value: Option<&[u8]>) -> Result<(), String> {
        let Some(v) = value else {
            self.append_null();
            return Ok(());
        };
        match self {
            Column::Bool(b) => b.append_value(be::<1>(v)?[0] != 0),
            Column::Int2(b) => b.append_value(i16::from_be_bytes(be(v)?)),
            Column::Int4(b) => b.append_value(i32::from_be_bytes(be(v)?)),
            Column::Int8(b) => b.append_value(i64::from_be_bytes(be(v)?)),
            Column::Float4(b) => b.append_value(f32::from_be_bytes(be(v)?)),
            Column::Float8(b) => b.append_value(f64::from_be_bytes(be(v)?)),
            Column::Decimal128(b, scale, _) => {
                b.append_value(numeric_to_decimal::<i128>(v, *scale)?)
            }
            Column::Decimal256(b, scale, _) => {
                b.append_value(numeric_to_decimal::<i256>(v, *scale)?)
            }
            Column::NumericText(b) => b.append_value(numeric_to_text(v)?),
            Column::Text(b) => b.append_value(utf8(v)?),
            Column::Jsonb(b) => match v.split_first() {
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err("unknown jsonb binary version".into()),
            },
            Column::Inet(b) => b.append_value(inet_to_text(v)?),
            Column::Bytea(b) => b.append_value(v),
            Column::Date(b) => {
                let days = i32::from_be_bytes(be(v)?);
                if days == i32::MAX || days == i32::MIN {
                    return Err("date is ±infinity, which Arrow cannot hold; read the column as text (`col::text`: a PostgreSQL sink loads `infinity` back) or filter the row".into());
                }
                b.append_value(days.checked_add(EPOCH_DAYS).ok_or("date out of range")?)
            }
            Column::Time(b) => b.append_value(i64::from_be_bytes(be(v)?)),
            Column::Timestamp(b, _) => {
                let micros = i64::from_be_bytes(be(v)?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err("timestamp is ±infinity, which Arrow cannot hold; read the column as text (`col::text`: a PostgreSQL sink loads `infinity` back) or filter the row".into());
                }
                b.append_value(
                    micros
                        .checked_add(EPOCH_MICROS)
                        .ok_or("timestamp out of range")?,
                )
            }
            Column::Interval(b) => {
                let v: [u8; 16] = be(v)?;
                let micros = i64::from_be_bytes(v[0..8].try_into().unwrap_or_default());
                let days = i32::from_be_bytes(v[8..12].try_into().unwrap_or_default());
                let months = i32::from_be_bytes(v[12..16].try_into().unwrap_or_default());
                let nanos = micros.checked_mul(1000).ok_or("interval out of range")?;
                b.append_value(IntervalMonthDayNano::new(months, days, nanos))
            }
            Column::Uuid(b) => b.append_value(be::<16>(v)?).map_err(|e| e.to_string())?,
            Column::List {
                offsets,
                nulls,
                child,
                ..
            } => {
                let count = decode_array(v, child)?;
                let last = offsets.last().copied().unwrap_or(0);
                offsets.push(last.checked_add(count).ok_or("array column too large")?);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Column::Bool(b) => b.append_null(),
            Column::Int2(b) => b.append_null(),
            Column::Int4(b) => b.append_null(),
            Column::Int8(b) => b.append_null(),
            Column::Float4(b) => b.append_null(),
            Column::Float8(b) => b.append_null(),
            Column::Decimal128(b, ..) => b.append_null(),
            Column::Decimal256(b, ..) => b.append_null(),
            Column::NumericText(b) | Column::Text(b) | Column::Jsonb(b) | Column::Inet(b) => {
                b.append_null()
            }
            Column::Bytea(b) => b.append_null(),
            Column::Date(b) => b.append_null(),
            Column::Time(b) => b.append_null(),
            Column::Timestamp(b, _) => b.append_null(),
            Column::Interval(b) => b.append_null(),
            Column::Uuid(b) => b.append_null(),
            Column::List { offsets, nulls, .. } => {
                offsets.push(offsets.last().copied().unwrap_or(0));
                nulls.append_null();
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Int2(b) => Arc::new(b.finish()),
            Column::Int4(b) => Arc::new(b.finish()),
            Column::Int8(b) => Arc::new(b.finish()),
            Column::Float4(b) => Arc::new(b.finish()),
            Column::Float8(b) => Arc::new(b.finish()),
            Column::Decimal128(b, _, dt) => Arc::new(b.finish().with_data_type(dt.clone())),
            Column::Decimal256(b, _, dt) => Arc::new(b.finish().with_data_type(dt.clone())),
            Column::NumericText(b) | Column::Text(b) | Column::Jsonb(b) | Column::Inet(b) => {
                Arc::new(b.finish())
            }
            Column::Bytea(b) => Arc::new(b.finish()),
            Column::Date(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
            Column::Timestamp(b, dt) => Arc::new(b.finish().with_data_type(dt.clone())),
            Column::Interval(b) => Arc::new(b.finish()),
            Column::Uuid(b) => Arc::new(b.finish()),
            Column::List {
                offsets,
                nulls,
                item,
                child,
            } => {
                let offsets = std::mem::replace(offsets, vec![0]);
                Arc::new(ListArray::new(
                    item.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    child.finish(),
                    nulls.finish(),
                ))
            }
        }
    }
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("text is not UTF-8: {e}"))
}

/// Reads a one-dimensional array into `child`; returns the element count.
fn decode_array(v: &[u8], child: &mut Column) -> Result<i32, String> {
    let mut r = Reader(v);
    let ndim = r.i32()?;
    let _has_nulls = r.i32()?;
    let _elem_oid = r.i32()?;
    match ndim {
        0 => return Ok(0),
        1 => {}
        n => {
            return Err(format!(
                "a {n}-dimensional array; ferry reads one-dimensional arrays only: cast the column to text or jsonb (to_jsonb(col))"
            ));
        }
    }
    let len = r.i32()?;
    let _lower_bound = r.i32()?;
    for _ in 0..len {
        let n = r.i32()?;
        if n < 0 {
            child.append(None)?;
        } else {
            child.append(Some(r.take(n as usize)?))?;
        }
    }
    Ok(len)
}

/// A cursor over a value's bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("value is truncated".into());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(be(self.take(2)?)?))
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(be(self.take(2)?)?))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(be(self.take(4)?)?))
    }
}

/// numeric's sign word values.
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// The parts of a binary numeric: base-10000 digits, the weight of the first, the sign.
struct Numeric<'a> {
    digits: &'a [u8],
    weight: i16,
    sign: u16,
    dscale: u16,
}

fn numeric_parts(v: &[u8]) -> Result<Numeric<'_>, String> {
    let mut r = Reader(v);
    let ndigits = r.i16()?;
    let weight = r.i16()?;
    let sign = r.u16()?;
    let dscale = r.u16()?;
    let digits = r.take(ndigits.max(0) as usize * 2)?;
    Ok(Numeric {
        digits,
        weight,
        sign,
        dscale,
    })
}

fn special(sign: u16) -> Option<&'static str> {
    match sign {
        NUMERIC_NAN => Some("NaN"),
        NUMERIC_PINF => Some("Infinity"),
        NUMERIC_NINF => Some("-Infinity"),
        _ => None,
    }
}

/// A binary numeric as the unscaled integer of a decimal with `scale`; exact or an error.
///
/// The decimal digits are taken one at a time, from the most significant, into
/// `value * 10^scale`: only digits at or above the scale's last place are accumulated (the
/// ones below must be zero), so the accumulator never holds more digits than the result. A
/// value that uses every digit of its column (numeric(38,10) with 28 integer digits) fits,
/// however PostgreSQL pads its base-10000 groups.
fn numeric_to_decimal<T: ArrowNativeTypeOp + From<i16>>(v: &[u8], scale: i8) -> Result<T, String> {
    let n = numeric_parts(v)?;
    if let Some(s) = special(n.sign) {
        return Err(format!(
            "numeric {s} has no decimal value; cast the column to float8 or text, or filter the row"
        ));
    }
    let overflow = || "numeric value does not fit its decimal column".to_string();
    let ten = T::from(10i16);
    let mut acc = T::ZERO;
    // The power of ten of the next digit in `value * 10^scale`.
    let mut place = 4 * (n.weight as i32 + 1) - 1 + scale as i32;
    for pair in n.digits.chunks_exact(2) {
        let group = i16::from_be_bytes([pair[0], pair[1]]);
        for divisor in [1000i16, 100, 10, 1] {
            let digit = (group / divisor) % 10;
            if place >= 0 {
                acc = acc
                    .mul_checked(ten)
                    .and_then(|a| a.add_checked(T::from(digit)))
                    .map_err(|_| overflow())?;
            } else if digit != 0 {
                return Err(format!(
                    "numeric has more than {scale} decimal places; cast the column"
                ));
            }
            place -= 1;
        }
    }
    // Digits not stored are zeros down to the scale's last place.
    for _ in 0..=place.max(-1) {
        acc = acc.mul_checked(ten).map_err(|_| overflow())?;
    }
    if n.sign == NUMERIC_NEG {
        acc = acc.neg_checked().map_err(|_| overflow())?;
    }
    Ok(acc)
}

/// A binary numeric as its exact decimal text (what PostgreSQL's `numeric_out` prints).
fn numeric_to_text(v: &[u8]) -> Result<String, String> {
    let n = numeric_parts(v)?;
    if let Some(s) = special(n.sign) {
        return Ok(s.to_string());
    }
    let digits: Vec<i16> = n
        .digits
        .chunks_exact(2)
        .map(|p| i16::from_be_bytes([p[0], p[1]]))
        .collect();
    let mut out = String::new();
    if n.sign == NUMERIC_NEG {
        out.push('-');
    }
    // Integer part: groups 0..=weight.
    if n.weight < 0 {
        out.push('0');
    } else {
        for i in 0..=n.weight as usize {
            let d = digits.get(i).copied().unwrap_or(0);
            if i == 0 {
                out.push_str(&d.to_string());
            } else {
                out.push_str(&format!("{d:04}"));
            }
        }
    }
    if n.dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut i = n.weight as i32 + 1;
        while frac.len() < n.dscale as usize {
            let d = if i < 0 {
                0
            } else {
                digits.get(i as usize).copied().unwrap_or(0)
            };
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(n.dscale as usize);
        out.push_str(&frac);
    }
    Ok(out)
}

/// inet/cidr binary form: family, bits, is_cidr, address length, address.
fn inet_to_text(v: &[u8]) -> Result<String, String> {
    let mut r = Reader(v);
    let head = r.take(4)?;
    let (family, bits, is_cidr, len) = (head[0], head[1], head[2] != 0, head[3] as usize);
    let addr = r.take(len)?;
    let (text, max) = match (family, len) {
        (2, 4) => (Ipv4Addr::from(be::<4>(addr)?).to_string(), 32),
        (3, 16) => (Ipv6Addr::from(be::<16>(addr)?).to_string(), 128),
        _ => return Err(format!("unknown inet family {family}")),
    };
    Ok(if is_cidr || bits != max {
        format!("{text}/{bits}")
    } else {
        text
    })
}

/// Decodes the binary COPY stream of one partition into batches.
pub struct CopyDecoder {
    schema: SchemaRef,
    types: Vec<PgType>,
    columns: Vec<Column>,
    batch_rows: usize,
    rows: usize,
    /// Input bytes of the rows in the builders (a batch also ends at `max_batch_bytes`).
    batch_bytes: usize,
    /// At most [`MAX_BATCH_BYTES`].
    max_batch_bytes: usize,
    header_done: bool,
    /// Tuples still to skip (resuming after a checkpoint).
    skip: u64,
    /// Rows decoded since the start of the stream, skipped ones included.
    position: u64,
    finished: bool,
}

/// What [`CopyDecoder::decode`] made of a buffer.
#[derive(Debug)]
pub struct Decoded {
    /// Bytes consumed (whole tuples only); keep the rest for the next call.
    pub consumed: usize,
    /// A batch is full: call [`CopyDecoder::flush`].
    pub batch_full: bool,
}

/// A decoding failure at a row and column.
#[derive(Debug)]
pub struct DecodeError {
    /// Row of the partition, from 1.
    pub row: u64,
    /// Column name, if the failure is in a value.
    pub column: Option<String>,
    /// What went wrong.
    pub message: String,
}

impl CopyDecoder {
    /// Ends batches after `bytes` of input (at most [`MAX_BATCH_BYTES`]; at least one row a
    /// batch), even before `batch_rows`.
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes.clamp(1, MAX_BATCH_BYTES);
        self
    }

    /// A decoder for columns of `types` (in the schema's order), skipping the first `skip`
    /// rows.
    pub fn new(schema: SchemaRef, types: Vec<PgType>, batch_rows: usize, skip: u64) -> Self {
        let columns = types.iter().map(|t| Column::new(t, batch_rows)).collect();
        Self {
            schema,
            types,
            columns,
            batch_rows,
            rows: 0,
            batch_bytes: 0,
            max_batch_bytes: MAX_BATCH_BYTES,
            header_done: false,
            skip,
            position: 0,
            finished: false,
        }
    }

    /// Rows read from the stream so far, skipped ones included.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Whether the end-of-data marker was seen.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Rows waiting in the builders.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    fn error(&self, column: Option<usize>, message: impl Into<String>) -> DecodeError {
        DecodeError {
            row: self.position + 1,
            column: column.map(|c| self.schema.field(c).name().clone()),
            message: message.into(),
        }
    }

    /// Decodes whole tuples from `buf` until it runs out or a batch is full.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Decoded, DecodeError> {
        let mut at = 0;
        if !self.header_done {
            if buf.len() < 19 {
                return Ok(Decoded {
                    consumed: 0,
                    batch_full: false,
                });
            }
            if &buf[..11] != SIGNATURE {
                return Err(self.error(None, "the server did not send a binary COPY header"));
            }
            let ext = i32::from_be_bytes([buf[15], buf[16], buf[17], buf[18]]).max(0) as usize;
            if buf.len() < 19 + ext {
                return Ok(Decoded {
                    consumed: 0,
                    batch_full: false,
                });
            }
            at = 19 + ext;
            self.header_done = true;
        }
        let ncols = self.columns.len();
        while !self.finished
            && self.rows < self.batch_rows
            && self.batch_bytes < self.max_batch_bytes
        {
            let rest = &buf[at..];
            if rest.len() < 2 {
                break;
            }
            let count = i16::from_be_bytes([rest[0], rest[1]]);
            if count == -1 {
                self.finished = true;
                at += 2;
                break;
            }
            if count as usize != ncols {
                return Err(self.error(
                    None,
                    format!("a row has {count} fields, the query has {ncols} columns"),
                ));
            }
            // Find the tuple's end before touching any builder.
            let mut end = 2;
            let mut complete = true;
            for _ in 0..ncols {
                if rest.len() < end + 4 {
                    complete = false;
                    break;
                }
                let len =
                    i32::from_be_bytes([rest[end], rest[end + 1], rest[end + 2], rest[end + 3]]);
                end += 4 + len.max(0) as usize;
            }
            if !complete || rest.len() < end {
                break;
            }
            if self.skip > 0 {
                self.skip -= 1;
            } else {
                let mut p = 2;
                for c in 0..ncols {
                    let len = i32::from_be_bytes([rest[p], rest[p + 1], rest[p + 2], rest[p + 3]]);
                    p += 4;
                    let value = if len < 0 {
                        None
                    } else {
                        let v = &rest[p..p + len as usize];
                        p += len as usize;
                        Some(v)
                    };
                    if let Err(message) = self.columns[c].append(value) {
                        return Err(self.error(Some(c), message));
                    }
                }
                self.rows += 1;
                self.batch_bytes += end;
            }
            self.position += 1;
            at += end;
        }
        Ok(Decoded {
            consumed: at,
            batch_full: self.rows >= self.batch_rows || self.batch_bytes >= self.max_batch_bytes,
        })
    }

    /// Takes the buffered rows as a batch (None when there are none).
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, DecodeError> {
        if self.rows == 0 {
            return Ok(None);
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        self.rows = 0;
        self.batch_bytes = 0;
        RecordBatch::try_new(self.schema.clone(), arrays)
            .map(Some)
            .map_err(|e| self.error(None, format!("cannot build a batch: {e}")))
    }

    /// The PostgreSQL types being decoded.
    pub fn types(&self) -> &[PgType] {
        &self.types
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Field, Schema};

    /// numeric 12345.678 (dscale 3): digits [1, 2345, 6780], weight 1.
    fn numeric(digits: &[i16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((digits.len() as i16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend(sign.to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for d in digits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_become_exact_decimals_and_text() {
        let v = numeric(&[1, 2345, 6780], 1, 0, 3);
        assert_eq!(numeric_to_decimal::<i128>(&v, 3).unwrap(), 12_345_678);
        assert_eq!(numeric_to_decimal::<i128>(&v, 5).unwrap(), 1_234_567_800);
        assert!(numeric_to_decimal::<i128>(&v, 2).is_err());
        assert_eq!(numeric_to_text(&v).unwrap(), "12345.678");
        // -0.0042: weight -1, digits [42].
        let v = numeric(&[42], -1, NUMERIC_NEG, 4);
        assert_eq!(numeric_to_decimal::<i128>(&v, 4).unwrap(), -42);
        assert_eq!(numeric_to_text(&v).unwrap(), "-0.0042");
        // 99999999999999999999999999.9999999999 (36 digits) stays exact.
        let v = numeric(
            &[99, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9999, 9900],
            6,
            0,
            10,
        );
        assert_eq!(
            numeric_to_decimal::<i128>(&v, 10).unwrap(),
            999_999_999_999_999_999_999_999_999_999_999_999i128
        );
        assert_eq!(
            numeric_to_text(&v).unwrap(),
            "99999999999999999999999999.9999999999"
        );
        // 1e40 overflows Decimal128 but not Decimal256.
        let v = numeric(&[1], 10, 0, 0);
        assert!(numeric_to_decimal::<i128>(&v, 0).is_err());
        assert_eq!(
            numeric_to_decimal::<i256>(&v, 0).unwrap(),
            i256::from_string("10000000000000000000000000000000000000000").unwrap()
        );
        let nan = numeric(&[], 0, NUMERIC_NAN, 0);
        assert!(
            numeric_to_decimal::<i128>(&nan, 2)
                .unwrap_err()
                .contains("NaN")
        );
        assert_eq!(numeric_to_text(&nan).unwrap(), "NaN");
        assert_eq!(numeric_to_text(&numeric(&[], 0, 0, 2)).unwrap(), "0.00");
        assert_eq!(
            numeric_to_text(&numeric(&[1], 2, 0, 0)).unwrap(),
            "100000000"
        );
    }

    /// The binary form PostgreSQL sends for decimal `text`: base-10000 groups aligned on the
    /// decimal point, leading and trailing zero groups dropped.
    fn pg_numeric(text: &str) -> Vec<u8> {
        let (sign, text) = match text.strip_prefix('-') {
            Some(t) => (NUMERIC_NEG, t),
            None => (0, text),
        };
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let frac_padded = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let mut groups: Vec<i16> = int
            .as_bytes()
            .chunks(4)
            .chain(frac_padded.as_bytes().chunks(4))
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int.len() / 4) as i16 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        numeric(&groups, weight, sign, frac.len() as u16)
    }

    #[test]
    fn every_digit_of_a_column_fits() {
        let unscaled = |text: &str| text.replace('.', "");
        for (text, scale) in [
            ("1234567890123456789012345678.0123456789", 10),
            ("9999999999999999999999999999.9999999999", 10),
            ("-9999999999999999999999999999.9999999999", 10),
            ("999999999999999999999999999999999999.99", 2),
            ("-999999999999999999999999999999999999.99", 2),
            ("9.9999999999999999999999999999999999999", 37),
            ("-0.0000000000000000000000000000000000001", 37),
            ("0.99999999999999999999999999999999999999", 38),
            ("-0.00000000000000000000000000000000000001", 38),
            ("99999999999999999999999999999999999999", 0),
            ("170141183460469231731687303715884105727", 0),
        ] {
            let v = pg_numeric(text);
            let expected: i128 = unscaled(text).parse().unwrap();
            assert_eq!(
                numeric_to_decimal::<i128>(&v, scale),
                Ok(expected),
                "{text}"
            );
            // The same value in a wider column: trailing zeros appended.
            if scale < 38 && expected.unsigned_abs() < 10u128.pow(37) {
                assert_eq!(
                    numeric_to_decimal::<i128>(&v, scale + 1),
                    Ok(expected * 10),
                    "{text}"
                );
            }
        }
        // One past i128 fails cleanly instead of wrapping.
        let v = pg_numeric("170141183460469231731687303715884105728");
        assert!(numeric_to_decimal::<i128>(&v, 0).is_err());
        for (text, scale) in [
            (
                "9999999999999999999999999999999999999999999999999999999999999999999.999999999",
                9,
            ),
            (
                "-999999999999999999999999999999999999999999999999999999999999999999.9999999999",
                10,
            ),
        ] {
            let v = pg_numeric(text);
            let expected = i256::from_string(&unscaled(text)).unwrap();
            assert_eq!(
                numeric_to_decimal::<i256>(&v, scale),
                Ok(expected),
                "{text}"
            );
        }
        // Digits below the scale are refused, never rounded.
        assert!(numeric_to_decimal::<i128>(&pg_numeric("1.005"), 2).is_err());
    }

    #[test]
    fn inet_text_matches_postgres() {
        assert_eq!(
            inet_to_text(&[2, 32, 0, 4, 10, 0, 0, 1]).unwrap(),
            "10.0.0.1"
        );
        assert_eq!(
            inet_to_text(&[2, 8, 1, 4, 10, 0, 0, 0]).unwrap(),
            "10.0.0.0/8"
        );
        assert_eq!(
            inet_to_text(&[2, 24, 0, 4, 10, 0, 0, 1]).unwrap(),
            "10.0.0.1/24"
        );
        let mut v6 = vec![3, 64, 0, 16];
        v6.extend(Ipv6Addr::LOCALHOST.octets());
        assert_eq!(inet_to_text(&v6).unwrap(), "::1/64");
    }

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => v.extend((-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend((b.len() as i32).to_be_bytes());
                    v.extend(*b);
                }
            }
        }
        v
    }

    #[test]
    fn decodes_a_stream_split_anywhere() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ]));
        let types = vec![
            PgType::Int4,
            PgType::Numeric(Some((10, 2))),
            PgType::Array(Box::new(PgType::Text), 25),
        ];
        let mut stream = SIGNATURE.to_vec();
        stream.extend([0u8; 8]);
        let mut array = Vec::new();
        for x in [1i32, 0, 25, 2, 1] {
            array.extend(x.to_be_bytes());
        }
        array.extend(1i32.to_be_bytes());
        array.push(b'a');
        array.extend((-1i32).to_be_bytes());
        for i in 0..5i32 {
            let amount = numeric(&[i as i16, 5000], 0, 0, 2);
            let id = i.to_be_bytes();
            stream.extend(tuple(&[
                Some(&id),
                Some(&amount),
                if i == 3 { None } else { Some(&array) },
            ]));
        }
        stream.extend((-1i16).to_be_bytes());
        // Feed the stream in 7-byte pieces, keeping what was not consumed.
        let mut decoder = CopyDecoder::new(schema, types, 2, 1);
        let mut pending = Vec::new();
        let mut batches = Vec::new();
        for piece in stream.chunks(7) {
            pending.extend_from_slice(piece);
            loop {
                let d = decoder.decode(&pending).unwrap();
                pending.drain(..d.consumed);
                if d.batch_full {
                    batches.push(decoder.flush().unwrap().unwrap());
                } else {
                    break;
                }
            }
        }
        batches.extend(decoder.flush().unwrap());
        assert!(decoder.finished());
        assert!(pending.is_empty());
        assert_eq!(decoder.position(), 5);
        let ids: Vec<i32> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int32Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(ids, [1, 2, 3, 4], "the first row was skipped");
        let amounts: Vec<i128> = batches
            .iter()
            .flat_map(|b| {
                b.column(1)
                    .as_primitive::<Decimal128Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(amounts, [150, 250, 350, 450]);
        let tags = batches[1].column(2).as_list::<i32>();
        assert!(tags.is_null(0), "row 3 has a NULL array");
        assert_eq!(tags.value(1).as_string::<i32>().value(0), "a");
        assert!(tags.value(1).is_null(1));
    }

    #[test]
    fn a_bad_value_names_row_and_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        let mut stream = SIGNATURE.to_vec();
        stream.extend([0u8; 8]);
        stream.extend(tuple(&[Some(&0i32.to_be_bytes())]));
        stream.extend(tuple(&[Some(&i32::MAX.to_be_bytes())]));
        let mut decoder = CopyDecoder::new(schema, vec![PgType::Date], 10, 0);
        let err = decoder.decode(&stream).unwrap_err();
        assert_eq!((err.row, err.column.as_deref()), (2, Some("d")));
        assert!(err.message.contains("infinity"), "{}", err.message);
    }
}
