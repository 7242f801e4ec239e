//! Micro-benchmarks of the CPU stages on TPC-H lineitem: CSV decoding, Parquet encoding, and
//! PostgreSQL binary COPY encoding and decoding.
//!
//! `cargo bench --bench formats`; throughput is reported in input bytes per second.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_connectors::format::csv::{CsvDecoder, CsvDialect, CsvEncoder, Origin, infer_schema};
use ferry_connectors::format::parquet::{ParquetCodec, ParquetEncoder, writer_properties};
use ferry_connectors::postgres::decode::CopyDecoder;
use ferry_connectors::postgres::encode::{CopyEncoder, targets_for};
use ferry_connectors::postgres::types::{PgType, arrow_type};
use ferry_engine::Encoder;

/// Lineitem at scale 0.01 (60k rows) as Arrow batches and as CSV text.
fn lineitem() -> (Vec<RecordBatch>, Vec<u8>) {
    let batches: Vec<RecordBatch> = common::lineitem_batches();
    let mut encoder = CsvEncoder::new(&batches[0].schema(), CsvDialect::default());
    let mut csv = Vec::new();
    for b in &batches {
        csv.extend_from_slice(&encoder.encode(b).unwrap().unwrap());
    }
    (batches, csv)
}

fn decode_csv(c: &mut Criterion) {
    let (_, csv) = lineitem();
    let schema = infer_schema(&csv, true, &CsvDialect::default(), 1000, "lineitem.csv").unwrap();
    let mut group = c.benchmark_group("csv");
    group.throughput(Throughput::Bytes(csv.len() as u64));
    group.sample_size(10);
    group.bench_function("decode lineitem", |b| {
        b.iter(|| {
            let origin = Origin {
                file: Arc::from("lineitem.csv"),
                first_line: 1,
                skip_header: true,
            };
            let mut d = CsvDecoder::new(schema.clone(), CsvDialect::default(), origin, 8192, false);
            let mut rows = 0;
            // In blocks of 1 MiB, as the file source reads.
            for (i, block) in csv.chunks(1 << 20).enumerate() {
                let last = (i + 1) << 20 >= csv.len();
                let mut rest = block;
                loop {
                    let n = d.decode(rest).unwrap();
                    rest = &rest[n..];
                    let at_end = last && rest.is_empty();
                    if at_end {
                        d.decode(&[]).unwrap();
                    }
                    if (d.batch_full() || at_end)
                        && let Some((batch, _)) = d.flush().unwrap()
                    {
                        rows += batch.num_rows();
                    }
                    if rest.is_empty() {
                        break;
                    }
                }
            }
            assert_eq!(rows, 60_175);
        })
    });
    group.finish();
}

fn encode_parquet(c: &mut Criterion) {
    let (batches, csv) = lineitem();
    let mut group = c.benchmark_group("parquet");
    // Throughput in CSV bytes, to compare with the decode side.
    group.throughput(Throughput::Bytes(csv.len() as u64));
    group.sample_size(10);
    for codec in [ParquetCodec::Snappy, ParquetCodec::Zstd] {
        group.bench_function(format!("encode lineitem {codec:?}"), |b| {
            b.iter(|| {
                let props = writer_properties(codec, 1 << 20).unwrap();
                let mut e = ParquetEncoder::new(&batches[0].schema(), props).unwrap();
                let mut bytes = 0;
                for batch in &batches {
                    bytes += e.encode(batch).unwrap().map_or(0, |b| b.len());
                }
                bytes += e.finish().unwrap().map_or(0, |b| b.len());
                assert!(bytes > 0);
            })
        });
    }
    group.finish();
}

/// The PostgreSQL types lineitem's Arrow columns load into.
fn lineitem_pg_types(batch: &RecordBatch) -> Vec<PgType> {
    use arrow::datatypes::DataType;
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Int64 => PgType::Int8,
            DataType::Int32 => PgType::Int4,
            DataType::Decimal128(p, s) => PgType::Numeric(Some((*p, *s))),
            DataType::Date32 => PgType::Date,
            DataType::Utf8 | DataType::Utf8View => PgType::Text,
            other => panic!("lineitem has no {other} column"),
        })
        .collect()
}

fn postgres_copy(c: &mut Criterion) {
    let (batches, _) = lineitem();
    let schema = batches[0].schema();
    let kinds = lineitem_pg_types(&batches[0]);
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut group = c.benchmark_group("postgres");
    group.throughput(Throughput::Elements(rows as u64));
    group.sample_size(10);
    let encode = || {
        let mut e = CopyEncoder::new(targets_for(&names, &kinds));
        let mut stream = Vec::new();
        for batch in &batches {
            stream.extend_from_slice(&e.encode(batch).unwrap().unwrap());
        }
        stream.extend_from_slice(&e.finish().unwrap().unwrap());
        stream
    };
    group.bench_function("binary COPY encode lineitem", |b| b.iter(encode));
    let stream = encode();
    // Decode the same stream back into lineitem's Arrow types (text as Utf8).
    let decoded_schema = Arc::new(arrow::datatypes::Schema::new(
        names
            .iter()
            .zip(&kinds)
            .map(|(n, k)| arrow::datatypes::Field::new(n, arrow_type(k), true))
            .collect::<Vec<_>>(),
    ));
    group.bench_function("binary COPY decode lineitem", |b| {
        b.iter(|| {
            let mut d = CopyDecoder::new(decoded_schema.clone(), kinds.clone(), 8192, 0);
            let mut rest = &stream[..];
            let mut decoded = 0;
            loop {
                let step = d.decode(rest).unwrap();
                rest = &rest[step.consumed..];
                if let Some(batch) = d.flush().unwrap() {
                    decoded += batch.num_rows();
                }
                if d.finished() {
                    break;
                }
            }
            assert_eq!(decoded, rows);
        })
    });
    group.finish();
}

criterion_group!(benches, decode_csv, encode_parquet, postgres_copy);
criterion_main!(benches);
