//! SQL Server through the TDS test peer (`tds-peer`) over loopback TLS: TDS rows -> Arrow
//! (the source: tiberius decoding plus ferry's builders) and Arrow -> TDS bulk load (the
//! sink: ferry's checked casts plus tiberius encoding), on TPC-H lineitem at scale 0.01
//! (60,175 rows).
//!
//! `cargo bench --bench sqlserver`; throughput is in rows per second. The peer encodes
//! (or decodes) on its own thread, so on two cores the figures are ferry's side as long as
//! the peer keeps up; on one core they include the peer's work too.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int32Type, Int64Type};
use arrow::record_batch::RecordBatch;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_connectors::Connections;
use tds_peer::{LINEITEM, Peer, Value};

/// The peer's values of one Arrow cell.
fn value(array: &dyn Array, row: usize) -> Value {
    match array.data_type() {
        DataType::Int64 => Value::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::Int32 => Value::Int(array.as_primitive::<Int32Type>().value(row) as i64),
        DataType::Decimal128(_, _) => {
            Value::Decimal(array.as_primitive::<Decimal128Type>().value(row))
        }
        DataType::Date32 => {
            Value::Date(array.as_primitive::<Date32Type>().value(row) as i64 + 719_162)
        }
        _ => {
            let text = arrow::util::display::ArrayFormatter::try_new(array, &Default::default())
                .unwrap()
                .value(row)
                .to_string();
            Value::Text(text)
        }
    }
}

struct Setup {
    peer: Peer,
    connections: Connections,
    batches: Vec<RecordBatch>,
    rows: usize,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    // SAFETY: set first, before this process starts any thread.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("FERRY_BENCH_MSSQL_PW", "Bench-pw-1")
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    let peer = Peer::start(tds_peer::Config {
        user: "bench".into(),
        password: "Bench-pw-1".into(),
        databases: vec!["bench".into()],
        tls: Some(tds_peer::TlsIdentity {
            chain: vec![cert.der().to_vec()],
            key: key.serialize_der(),
        }),
        snapshot_isolation: false,
    })
    .unwrap();
    let batches = common::lineitem_batches();
    peer.create_table("dbo.lineitem", &LINEITEM);
    let mut rows = Vec::new();
    for batch in &batches {
        for r in 0..batch.num_rows() {
            rows.push(
                (0..batch.num_columns())
                    .map(|c| value(batch.column(c).as_ref(), r))
                    .collect(),
            );
        }
    }
    let n = rows.len();
    peer.insert("dbo.lineitem", rows);
    let connections = Connections::from_json(
        &serde_json::json!({"mssql": {"type": "sqlserver", "host": "127.0.0.1",
            "port": peer.port(), "database": "bench", "user": "bench",
            "password": {"env": "FERRY_BENCH_MSSQL_PW"}, "ca_cert": dir.path().join("ca.pem")}})
        .to_string(),
    )
    .unwrap();
    Setup {
        peer,
        connections,
        batches,
        rows: n,
        _dir: dir,
    }
}

fn job(source: &str, sink: &str) -> String {
    format!(r#"{{"name": "bench", "batch_rows": 8192, "source": {source}, "sink": {sink}}}"#)
}

fn sqlserver(c: &mut Criterion) {
    let s = Arc::new(setup());
    let mut group = c.benchmark_group("sqlserver");
    group.sample_size(10);
    group.throughput(Throughput::Elements(s.rows as u64));
    let system = actix::System::new();
    group.bench_function("TDS rows -> Arrow, lineitem", |b| {
        b.iter(|| {
            let s = s.clone();
            system.block_on(async move {
                use futures::StreamExt;
                let (spec, settings) = ferry_connectors::parse_job(&job(
                    r#"{"type": "sqlserver", "connection": "mssql", "table": "lineitem"}"#,
                    r#"{"type": "file", "path": "/nowhere/", "format": {"type": "csv"}}"#,
                ))
                .unwrap();
                let source = ferry_connectors::registry::build_source(
                    &spec.source,
                    &s.connections,
                    &settings,
                )
                .await
                .unwrap();
                let partition = source.plan(1).await.unwrap().remove(0);
                let mut stream = source
                    .open(
                        &partition,
                        None,
                        &ferry_engine::channel::ByteBudget::unbounded(),
                    )
                    .unwrap();
                let mut rows = 0;
                while let Some(batch) = stream.next().await {
                    rows += batch.unwrap().batch.num_rows();
                }
                assert_eq!(rows, s.rows);
            })
        })
    });
    group.bench_function("Arrow -> TDS bulk load, lineitem", |b| {
        b.iter(|| {
            let s = s.clone();
            system.block_on(async move {
                let (spec, settings) = ferry_connectors::parse_job(&job(
                    r#"{"type": "tpch", "table": "nation", "scale_factor": 1}"#,
                    r#"{"type": "sqlserver", "connection": "mssql", "table": "loaded", "mode": "overwrite"}"#,
                ))
                .unwrap();
                let sink =
                    ferry_connectors::registry::build_sink(&spec.sink, &s.connections, &settings)
                        .unwrap();
                let schema = s.batches[0].schema();
                let prepared = sink.prepare(&schema).await.unwrap();
                let mut out = prepared.open(&schema, 0).await.unwrap();
                for batch in &s.batches {
                    if let Some(bytes) = out.encoder.encode(batch).unwrap() {
                        out.writer.write(bytes).await.unwrap();
                    }
                }
                let staged = out.writer.finish().await.unwrap();
                prepared.commit(vec![staged]).await.unwrap();
            })
        })
    });
    group.finish();
    assert_eq!(
        s.peer.table("dbo.loaded").unwrap().rows.len(),
        s.rows,
        "every row loaded"
    );
}

criterion_group!(benches, sqlserver);
criterion_main!(benches);
