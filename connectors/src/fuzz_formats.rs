//! Property tests of the data ferry decodes: the CSV decoder against a reference reader (the
//! `csv` crate) on random dialects, quoting, line ends and split points; binary COPY encoded
//! and decoded back for random values of the numeric, temporal, interval and array types;
//! Parquet and Arrow IPC files truncated or corrupted at random offsets.
//!
//! Each property runs `FERRY_FUZZ_CASES` cases (256 by default, as in the test command);
//! `scripts/fuzz.sh` runs them long.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, Decimal128Array, Float64Array, Int16Array, Int64Array,
    IntervalMonthDayNanoArray, ListArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, IntervalMonthDayNano, Schema, SchemaRef};
use ferry_engine::Encoder;
use proptest::prelude::*;

use crate::format::csv::{CsvDecoder, CsvDialect, Origin, find_boundaries};
use crate::fuzz_tests::cases;
use crate::postgres::decode::CopyDecoder;
use crate::postgres::encode::{CopyEncoder, Target};
use crate::postgres::types::PgType;

// ---- CSV --------------------------------------------------------------------------------

/// One field as written: its text and whether it is quoted.
#[derive(Debug, Clone)]
struct CsvField {
    text: String,
    quoted: bool,
}

/// Rows of text columns, `None` for NULL.
type TextRows = Vec<Vec<Option<String>>>;

/// A CSV file to write: dialect, rows, line ends, where a parallel read splits it.
#[derive(Debug, Clone)]
struct CsvCase {
    delimiter: u8,
    columns: usize,
    rows: Vec<Vec<CsvField>>,
    crlf: Vec<bool>,
    bom: bool,
    final_newline: bool,
    /// Split targets, in thousandths of the file's length.
    splits: Vec<u16>,
    /// Bytes fed to the decoder at a time.
    feed: usize,
    batch_rows: usize,
}

fn csv_case() -> impl Strategy<Value = CsvCase> {
    (
        prop_oneof![Just(b','), Just(b';'), Just(b'\t'), Just(b'|')],
        1usize..5,
        0usize..25,
    )
        .prop_flat_map(|(delimiter, columns, rows)| {
            let field = ("[a,;|\t\"\r\n é]{0,6}", any::<bool>())
                .prop_map(|(text, quoted)| CsvField { text, quoted });
            (
                Just(delimiter),
                Just(columns),
                proptest::collection::vec(proptest::collection::vec(field, columns), rows),
                proptest::collection::vec(any::<bool>(), rows),
                any::<bool>(),
                any::<bool>(),
                proptest::collection::vec(1u16..1000, 0..4),
                1usize..40,
                1usize..8,
            )
        })
        .prop_map(
            |(delimiter, columns, mut rows, crlf, bom, final_newline, splits, feed, batch_rows)| {
                for row in &mut rows {
                    for f in row.iter_mut() {
                        // Quote what must be quoted; and an empty value alone on its line, which
                        // would be a blank line.
                        let needs = f
                            .text
                            .bytes()
                            .any(|b| b == delimiter || b == b'"' || b == b'\r' || b == b'\n')
                            || (columns == 1 && f.text.is_empty());
                        f.quoted |= needs;
                    }
                }
                CsvCase {
                    delimiter,
                    columns,
                    rows,
                    crlf,
                    bom,
                    final_newline,
                    splits,
                    feed,
                    batch_rows,
                }
            },
        )
}

impl CsvCase {
    fn bytes(&self) -> Vec<u8> {
        self.bytes_with(&[]).0
    }

    /// The file, with each row changed as `ragged` says (0 or absent: as it is; 1: without
    /// its last field; 2: with an extra field), and the line each row starts on.
    fn bytes_with(&self, ragged: &[u8]) -> (Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        let mut lines = Vec::new();
        let mut line = 2;
        if self.bom {
            out.extend_from_slice(b"\xEF\xBB\xBF");
        }
        let header: Vec<String> = (0..self.columns).map(|c| format!("c{c}")).collect();
        out.extend_from_slice(
            header
                .join(&(self.delimiter as char).to_string())
                .as_bytes(),
        );
        out.push(b'\n');
        for (i, row) in self.rows.iter().enumerate() {
            lines.push(line);
            let fields = match ragged.get(i) {
                Some(1) => &row[..row.len() - 1],
                _ => &row[..],
            };
            for (j, f) in fields.iter().enumerate() {
                if j > 0 {
                    out.push(self.delimiter);
                }
                // A line break inside a quoted field counts as one line (a CR alone does not).
                line += f.text.bytes().filter(|&b| b == b'\n').count() as u64;
                // A row cut to one empty field would be a blank line: quote it.
                let alone = fields.len() == 1 && f.text.is_empty();
                if f.quoted || alone {
                    out.push(b'"');
                    out.extend_from_slice(f.text.replace('"', "\"\"").as_bytes());
                    out.push(b'"');
                } else {
                    out.extend_from_slice(f.text.as_bytes());
                }
            }
            if ragged.get(i) == Some(&2) {
                out.push(self.delimiter);
                out.extend_from_slice(b"extra");
            }
            if i + 1 < self.rows.len() || self.final_newline {
                out.extend_from_slice(if self.crlf[i] { b"\r\n" } else { b"\n" });
            }
            line += 1;
        }
        (out, lines)
    }

    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            (0..self.columns)
                .map(|c| Field::new(format!("c{c}"), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ))
    }

    fn dialect(&self) -> CsvDialect {
        CsvDialect {
            delimiter: self.delimiter as char,
            ..CsvDialect::default()
        }
    }

    /// What ferry must read: an unquoted empty field is NULL, anything else its text.
    fn expected(&self) -> Vec<Vec<Option<String>>> {
        self.rows
            .iter()
            .map(|row| {
                row.iter()
                    .map(|f| (f.quoted || !f.text.is_empty()).then(|| f.text.clone()))
                    .collect()
            })
            .collect()
    }

    /// Decodes `bytes` (a whole file from `0`, or a range starting at a record) with ferry.
    fn decode(
        &self,
        bytes: &[u8],
        from_start: bool,
    ) -> ferry_engine::Result<Vec<Vec<Option<String>>>> {
        let origin = Origin {
            file: "fuzz.csv".into(),
            first_line: 1,
            skip_header: from_start,
        };
        let decoder = CsvDecoder::new(
            self.schema(),
            self.dialect(),
            origin,
            self.batch_rows,
            false,
        );
        Ok(self.feed(decoder, bytes)?.0)
    }

    /// Feeds `bytes` to `decoder` `self.feed` bytes at a time; the rows it read and the
    /// locations of the rows it skipped.
    fn feed(
        &self,
        mut decoder: CsvDecoder,
        bytes: &[u8],
    ) -> ferry_engine::Result<(TextRows, Vec<String>)> {
        let mut batches = Vec::new();
        let mut skipped = Vec::new();
        for piece in bytes.chunks(self.feed) {
            let mut rest = piece;
            while !rest.is_empty() {
                let n = decoder.decode(rest)?;
                rest = &rest[n..];
                if decoder.batch_full()
                    && let Some((b, s)) = decoder.flush()?
                {
                    batches.push(b);
                    skipped.extend(s.into_iter().map(|s| s.location));
                }
            }
        }
        decoder.decode(&[])?;
        if let Some((b, s)) = decoder.flush()? {
            batches.push(b);
            skipped.extend(s.into_iter().map(|s| s.location));
        }
        Ok((text_rows(&batches), skipped))
    }
}

/// The rows of batches of text columns.
fn text_rows(batches: &[RecordBatch]) -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    for b in batches {
        let columns: Vec<&StringArray> = b
            .columns()
            .iter()
            .map(|c| {
                c.as_any()
                    .downcast_ref::<StringArray>()
                    .expect("text column")
            })
            .collect();
        for r in 0..b.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|c| (!c.is_null(r)).then(|| c.value(r).to_string()))
                    .collect(),
            );
        }
    }
    rows
}

// ---- binary COPY ------------------------------------------------------------------------

/// A column of random values for a binary COPY round trip.
#[derive(Debug, Clone)]
enum CopyColumn {
    Int2(Vec<Option<i16>>),
    Int8(Vec<Option<i64>>),
    Float8(Vec<Option<f64>>),
    /// numeric(p,s) with unscaled values that fit p digits.
    Numeric(u8, i8, Vec<Option<i128>>),
    Text(Vec<Option<String>>),
    Date(Vec<Option<i32>>),
    Timestamp(Vec<Option<i64>>),
    Interval(Vec<Option<(i32, i32, i64)>>),
    IntArray(Vec<Option<Vec<Option<i32>>>>),
}

/// Unscaled values of `p` digits: the extremes, zero, and random ones of every length.
fn numeric_values(p: u8, rows: usize) -> impl Strategy<Value = Vec<Option<i128>>> {
    let max = 10i128.pow(p as u32) - 1;
    let value = prop_oneof![
        Just(max),
        Just(-max),
        Just(0i128),
        Just(1i128),
        Just(-1i128),
        (1u32..=p as u32, any::<bool>(), any::<u128>()).prop_map(move |(digits, negative, r)| {
            let v = (r % 10u128.pow(digits)) as i128;
            if negative { -v } else { v }
        }),
    ];
    proptest::collection::vec(proptest::option::weighted(0.9, value), rows)
}

/// Mostly values, some NULLs.
fn nullable<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    proptest::option::weighted(0.85, s)
}

fn copy_column(rows: usize) -> impl Strategy<Value = CopyColumn> {
    let float = prop_oneof![
        any::<f64>(),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0)
    ];
    prop_oneof![
        proptest::collection::vec(nullable(any::<i16>()), rows).prop_map(CopyColumn::Int2),
        proptest::collection::vec(nullable(any::<i64>()), rows).prop_map(CopyColumn::Int8),
        proptest::collection::vec(nullable(float), rows).prop_map(CopyColumn::Float8),
        (1u8..=38)
            .prop_flat_map(move |p| (Just(p), 0..=p as i8, numeric_values(p, rows)))
            .prop_map(|(p, s, v)| CopyColumn::Numeric(p, s, v)),
        proptest::collection::vec(nullable(any::<String>()), rows).prop_map(CopyColumn::Text),
        // PostgreSQL's dates, 4713 BC to 5874897 AD, as days from 1970-01-01.
        proptest::collection::vec(nullable(-2_440_588i32..=2_145_042_906), rows)
            .prop_map(CopyColumn::Date),
        // Its timestamps from 4713 BC, as microseconds from 1970-01-01.
        proptest::collection::vec(
            nullable(-210_866_803_200_000_000i64..9_214_646_400_000_000_000),
            rows
        )
        .prop_map(CopyColumn::Timestamp),
        proptest::collection::vec(
            nullable((
                any::<i32>(),
                any::<i32>(),
                any::<i64>().prop_map(|m| m / 1000)
            )),
            rows
        )
        .prop_map(CopyColumn::Interval),
        proptest::collection::vec(
            nullable(proptest::collection::vec(nullable(any::<i32>()), 0..5)),
            rows
        )
        .prop_map(CopyColumn::IntArray),
    ]
}

impl CopyColumn {
    fn kind(&self) -> PgType {
        match self {
            CopyColumn::Int2(_) => PgType::Int2,
            CopyColumn::Int8(_) => PgType::Int8,
            CopyColumn::Float8(_) => PgType::Float8,
            CopyColumn::Numeric(p, s, _) => PgType::Numeric(Some((*p, *s))),
            CopyColumn::Text(_) => PgType::Text,
            CopyColumn::Date(_) => PgType::Date,
            CopyColumn::Timestamp(_) => PgType::Timestamp,
            CopyColumn::Interval(_) => PgType::Interval,
            CopyColumn::IntArray(_) => PgType::Array(Box::new(PgType::Int4), 23),
        }
    }

    fn array(&self) -> ArrayRef {
        match self {
            CopyColumn::Int2(v) => Arc::new(Int16Array::from(v.clone())),
            CopyColumn::Int8(v) => Arc::new(Int64Array::from(v.clone())),
            CopyColumn::Float8(v) => Arc::new(Float64Array::from(v.clone())),
            CopyColumn::Numeric(p, s, v) => Arc::new(
                Decimal128Array::from(v.clone())
                    .with_precision_and_scale(*p, *s)
                    .expect("valid decimal"),
            ),
            CopyColumn::Text(v) => Arc::new(StringArray::from(v.clone())),
            CopyColumn::Date(v) => Arc::new(Date32Array::from(v.clone())),
            CopyColumn::Timestamp(v) => Arc::new(TimestampMicrosecondArray::from(v.clone())),
            CopyColumn::Interval(v) => Arc::new(IntervalMonthDayNanoArray::from(
                v.iter()
                    .map(|i| i.map(|(m, d, micros)| IntervalMonthDayNano::new(m, d, micros * 1000)))
                    .collect::<Vec<_>>(),
            )),
            CopyColumn::IntArray(v) => {
                Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(v.clone()))
            }
        }
    }
}

/// Encodes `batch` as one binary COPY stream and decodes it back, fed `feed` bytes at a time.
fn copy_round_trip(batch: &RecordBatch, kinds: &[PgType], feed: usize) -> Vec<RecordBatch> {
    let targets: Vec<Target> = batch
        .schema()
        .fields()
        .iter()
        .zip(kinds)
        .map(|(f, k)| Target {
            name: f.name().clone(),
            kind: k.clone(),
        })
        .collect();
    let mut encoder = CopyEncoder::new(targets);
    let mut bytes = Vec::new();
    if let Some(b) = encoder.encode(batch).expect("encodes") {
        bytes.extend_from_slice(&b);
    }
    if let Some(b) = encoder.finish().expect("finishes") {
        bytes.extend_from_slice(&b);
    }
    let mut decoder = CopyDecoder::new(batch.schema(), kinds.to_vec(), 7, 0);
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in bytes.chunks(feed) {
        pending.extend_from_slice(piece);
        loop {
            let decoded = decoder.decode(&pending).expect("decodes");
            pending.drain(..decoded.consumed);
            if decoded.batch_full {
                out.extend(decoder.flush().expect("flushes"));
                continue;
            }
            break;
        }
    }
    assert!(
        pending.is_empty() && decoder.finished(),
        "the stream ended whole"
    );
    out.extend(decoder.flush().expect("flushes"));
    out
}

// ---- Parquet and Arrow IPC --------------------------------------------------------------

/// A small file of the format: three row groups (Parquet) or record batches (IPC).
fn valid_file(parquet: bool) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let batch = |from: i64| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(from..from + 100)),
                Arc::new(StringArray::from_iter(
                    (from..from + 100).map(|i| (i % 7 != 0).then(|| format!("name {i}"))),
                )),
            ],
        )
        .expect("batch")
    };
    let mut out = Vec::new();
    if parquet {
        let props = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(100))
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), Some(props))
            .expect("writer");
        for from in [0, 100, 200] {
            w.write(&batch(from)).expect("write");
        }
        w.close().expect("close");
    } else {
        let mut w = arrow::ipc::writer::FileWriter::try_new(&mut out, &schema).expect("writer");
        for from in [0, 100, 200] {
            w.write(&batch(from)).expect("write");
        }
        w.finish().expect("finish");
    }
    out
}

/// How a file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut at this fraction of the length (thousandths).
    Truncate(u16),
    /// Overwrite bytes at these fractions of the length with these values.
    Overwrite(Vec<(u16, u8)>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0u16..1000).prop_map(Damage::Truncate),
        proptest::collection::vec((0u16..1000, any::<u8>()), 1..8).prop_map(Damage::Overwrite),
    ]
}

fn damaged(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    let at = |t: u16, len: usize| len * t as usize / 1000;
    match damage {
        Damage::Truncate(t) => bytes.truncate(at(*t, bytes.len())),
        Damage::Overwrite(edits) => {
            let len = bytes.len();
            for (t, v) in edits {
                bytes[at(*t, len).min(len - 1)] = *v;
            }
        }
    }
    bytes
}

/// Reads `path` through ferry's file source (plan, then every partition); an error must name
/// the file.
fn read_file(path: &std::path::Path, parquet: bool) -> Result<usize, String> {
    use futures::StreamExt;
    let format: crate::format::FormatSpec = serde_json::from_str(if parquet {
        r#"{"type": "parquet"}"#
    } else {
        r#"{"type": "arrow_ipc"}"#
    })
    .expect("format");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = ferry_engine::config::JobSettings::new("fuzz");
    let shown = path.display().to_string();
    rt.block_on(async {
        let work = async {
            let source = crate::file::open_files(
                crate::file::local_store(),
                path,
                &shown,
                &format,
                &settings,
                true,
            )
            .await?;
            let mut rows = 0;
            for partition in ferry_engine::Source::plan(&source, 2).await? {
                let mut stream = ferry_engine::Source::open(
                    &source,
                    &partition,
                    None,
                    &ferry_engine::channel::ByteBudget::unbounded(),
                )?;
                while let Some(batch) = stream.next().await {
                    rows += batch?.batch.num_rows();
                }
            }
            Ok::<usize, ferry_engine::Error>(rows)
        };
        match tokio::time::timeout(std::time::Duration::from_secs(20), work).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => panic!("reading a damaged file did not end within 20 s"),
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn csv_reads_as_the_reference_reader_does_whole_and_split(case in csv_case()) {
        let bytes = case.bytes();
        // The reference reader (BOM removed: it is ferry's to skip) reads the text the case
        // wrote, which checks the case itself.
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let mut reference = csv::ReaderBuilder::new()
            .delimiter(case.delimiter)
            .has_headers(true)
            .from_reader(body);
        let reference: Vec<Vec<String>> = reference
            .records()
            .map(|r| r.expect("the reference reads it").iter().map(str::to_string).collect())
            .collect();
        let written: Vec<Vec<String>> =
            case.rows.iter().map(|r| r.iter().map(|f| f.text.clone()).collect()).collect();
        prop_assert_eq!(&reference, &written);

        let whole = case.decode(&bytes, true).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&whole, &case.expected());
        let as_text: Vec<Vec<String>> = whole
            .iter()
            .map(|r| r.iter().map(|v| v.clone().unwrap_or_default()).collect())
            .collect();
        prop_assert_eq!(&as_text, &reference, "ferry and the reference reader agree");

        // A parallel read: split where the quote-aware scan finds record starts; the pieces
        // read one by one make the same table.
        let mut targets: Vec<u64> =
            case.splits.iter().map(|t| bytes.len() as u64 * *t as u64 / 1000).collect();
        targets.sort();
        let mut cuts: Vec<u64> = find_boundaries(&bytes[..], b'"', &targets)
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .into_iter()
            .map(|b| b.offset)
            .filter(|&o| o > 0 && o < bytes.len() as u64)
            .collect();
        cuts.dedup();
        let mut pieces = Vec::new();
        let mut start = 0u64;
        for cut in cuts.into_iter().chain([bytes.len() as u64]) {
            let range = &bytes[start as usize..cut as usize];
            pieces.extend(case.decode(range, start == 0).map_err(|e| TestCaseError::fail(e.to_string()))?);
            start = cut;
        }
        prop_assert_eq!(&pieces, &whole, "split reads equal the whole read");
    }

    #[test]
    fn csv_skips_rows_with_a_wrong_field_count_and_names_their_lines(
        (case, ragged) in csv_case().prop_flat_map(|case| {
            let rows = case.rows.len();
            // One field fewer only where that leaves a field (a row of one empty field would
            // be a blank line, which is no record at all).
            let fewer = case.columns > 1;
            let kinds = if fewer { prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)].boxed() }
                else { prop_oneof![4 => Just(0u8), 1 => Just(2u8)].boxed() };
            (Just(case), proptest::collection::vec(kinds, rows))
        }),
        max_batch_bytes in 1usize..64,
    ) {
        let (bytes, lines) = case.bytes_with(&ragged);
        let origin = Origin { file: "fuzz.csv".into(), first_line: 1, skip_header: true };
        let decoder = CsvDecoder::new(case.schema(), case.dialect(), origin, case.batch_rows, true)
            .with_max_batch_bytes(max_batch_bytes);
        let (rows, skipped) =
            case.feed(decoder, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected: Vec<Vec<Option<String>>> = case
            .expected()
            .into_iter()
            .zip(&ragged)
            .filter(|(_, r)| **r == 0)
            .map(|(row, _)| row)
            .collect();
        prop_assert_eq!(&rows, &expected);
        let expected_skipped: Vec<String> = lines
            .iter()
            .zip(&ragged)
            .filter(|(_, r)| **r != 0)
            .map(|(line, _)| format!("fuzz.csv:{line}"))
            .collect();
        prop_assert_eq!(&skipped, &expected_skipped, "skipped rows named by their lines");
    }

    #[test]
    fn binary_copy_round_trips_random_values(
        columns in (1usize..30).prop_flat_map(|rows| proptest::collection::vec(copy_column(rows), 1..5)),
        feed in 1usize..300,
    ) {
        let kinds: Vec<PgType> = columns.iter().map(CopyColumn::kind).collect();
        let arrays: Vec<ArrayRef> = columns.iter().map(CopyColumn::array).collect();
        let schema = Arc::new(Schema::new(
            arrays
                .iter()
                .enumerate()
                .map(|(i, a)| Field::new(format!("c{i}"), a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema.clone(), arrays).expect("batch");
        let back = copy_round_trip(&batch, &kinds, feed);
        let back = arrow::compute::concat_batches(&schema, &back).expect("concat");
        prop_assert_eq!(back, batch);
    }

    #[test]
    fn damaged_parquet_and_ipc_files_fail_naming_the_file(parquet in any::<bool>(), damage in damage()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(if parquet { "damaged.parquet" } else { "damaged.arrow" });
        std::fs::write(&path, damaged(valid_file(parquet), &damage)).expect("write");
        let outcome = std::panic::catch_unwind(|| read_file(&path, parquet));
        prop_assert!(outcome.is_ok(), "reading {:?} panicked", damage);
        if let Ok(Err(message)) = outcome {
            prop_assert!(
                message.contains("damaged.") && !message.contains("panicked"),
                "{:?}: {}", damage, message
            );
        }
    }
}
