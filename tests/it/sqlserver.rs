//! SQL Server, against the TDS test peer (`tds-peer`, TLS on): types at their limits,
//! partitioned reads, errors.

use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::*;

use crate::support::sqlserver::{PASSWORD, TestServer, Value};
use crate::support::{ferry, read_parquet};

/// Runs `ferry copy` of `job` with the peer's connections; returns (success, stdout+stderr).
fn copy(server: &TestServer, dir: &Path, job: serde_json::Value) -> (bool, String) {
    let connections = server.connections_file(dir);
    let file = dir.join("job.json");
    std::fs::write(&file, job.to_string()).unwrap();
    let out = ferry()
        .args(["copy"])
        .arg(&file)
        .arg("--connections")
        .arg(&connections)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASSWORD), "the password shows in the output");
    (out.status.success(), text)
}

fn to_parquet(table: &str, out: &Path) -> serde_json::Value {
    serde_json::json!({"name": "mssql-to-parquet",
        "source": {"type": "sqlserver", "connection": "mssql", "table": table},
        "sink": {"type": "file", "path": out, "format": {"type": "parquet"}}})
}

#[test]
fn a_table_reads_into_parquet() {
    let server = TestServer::start();
    server.peer.create_table(
        "dbo.small",
        &[("id", "int", false), ("name", "nvarchar(20)", true)],
    );
    server.peer.insert(
        "dbo.small",
        vec![
            vec![Value::Int(1), Value::Text("one".into())],
            vec![Value::Int(2), Value::Null],
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small.parquet");
    let (ok, text) = copy(&server, dir.path(), to_parquet("small", &out));
    assert!(ok, "{text}");
    let batches = read_parquet(&out);
    let ids: Vec<i32> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
        .collect();
    assert_eq!(ids, vec![1, 2]);
    let names = batches[0].column(1).as_string::<i32>();
    assert_eq!(names.value(0), "one");
    assert!(names.is_null(1));
}

/// Days from 0001-01-01 to 1970-01-01 (Python: `date(1970, 1, 1).toordinal() - 1`).
const EPOCH_DAYS: i64 = 719_162;
/// 100-ns ticks in a day.
const DAY_TICKS: u64 = 864_000_000_000;

fn day(y: i64, m: u32, d: u32) -> i64 {
    tds_peer::days_from_civil(y, m, d)
}

/// Every column of a Parquet file, concatenated over its batches.
fn columns(path: &Path) -> Vec<arrow::array::ArrayRef> {
    let batches = read_parquet(path);
    (0..batches[0].num_columns())
        .map(|i| {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            arrow::compute::concat(&parts).unwrap()
        })
        .collect()
}

fn opt<T: Clone>(a: &[Option<T>]) -> Vec<Option<T>> {
    a.to_vec()
}

/// The long values and the GUID of the limits table, for the checks.
struct Limits {
    types: Vec<(&'static str, &'static str)>,
    long_n: String,
    long_v: String,
    long_b: Vec<u8>,
    guid: [u8; 16],
}

/// Creates table `name` with every type: a row of low limits, one of high limits, one of
/// NULLs.
fn limits_table(peer: &tds_peer::Peer, name: &str) -> Limits {
    let types = [
        ("c_bit", "bit"),
        ("c_tinyint", "tinyint"),
        ("c_smallint", "smallint"),
        ("c_int", "int"),
        ("c_bigint", "bigint"),
        ("c_real", "real"),
        ("c_float", "float"),
        ("c_dec38_10", "decimal(38,10)"),
        ("c_num38_0", "numeric(38,0)"),
        ("c_dec38_37", "decimal(38,37)"),
        ("c_dec5_2", "decimal(5,2)"),
        ("c_money", "money"),
        ("c_smallmoney", "smallmoney"),
        ("c_char", "char(10)"),
        ("c_varchar", "varchar(50)"),
        ("c_nchar", "nchar(5)"),
        ("c_nvarchar", "nvarchar(100)"),
        ("c_nvarchar_max", "nvarchar(max)"),
        ("c_varchar_max", "varchar(max)"),
        ("c_text", "text"),
        ("c_ntext", "ntext"),
        ("c_binary", "binary(4)"),
        ("c_varbinary", "varbinary(16)"),
        ("c_varbinary_max", "varbinary(max)"),
        ("c_image", "image"),
        ("c_date", "date"),
        ("c_time7", "time(7)"),
        ("c_time3", "time(3)"),
        ("c_datetime", "datetime"),
        ("c_smalldatetime", "smalldatetime"),
        ("c_datetime2_7", "datetime2(7)"),
        ("c_datetime2_3", "datetime2(3)"),
        ("c_guid", "uniqueidentifier"),
        ("c_xml", "xml"),
        ("c_dto3", "datetimeoffset(3)"),
        ("c_dto7", "datetimeoffset(7)"),
    ];
    let defs: Vec<(&str, &str, bool)> = types.iter().map(|(n, t)| (*n, *t, true)).collect();
    peer.create_table(name, &defs);
    let nines = |digits: u32| 10i128.pow(digits) - 1;
    // Past one PLP chunk (8,000 bytes), within what the bulk load takes (65,535 bytes).
    let long_n: String = "日本語🙂 ".repeat(5_000);
    let long_v: String = "abcdefghij".repeat(2_000);
    let long_b: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let guid = [
        0x6F, 0x96, 0x19, 0xFF, 0x8B, 0x86, 0xD0, 0x11, 0xB4, 0x2D, 0x00, 0xC0, 0x4F, 0xC9, 0x64,
        0xFF,
    ];
    // datetime values on 1/300 s ticks: 23:59:59.997 is 299/300 s after :59.
    let last_datetime_ticks = (86_399 * 300 + 299) * 10_000_000 / 300;
    let low = vec![
        Value::Bool(false),
        Value::Int(0),
        Value::Int(i16::MIN as i64),
        Value::Int(i32::MIN as i64),
        Value::Int(i64::MIN),
        Value::F32(-3.402_823_5e38),
        Value::F64(-f64::MAX),
        Value::Decimal(-nines(38)),
        Value::Decimal(-nines(38)),
        Value::Decimal(-nines(38)),
        Value::Decimal(-99_999),
        Value::Money(i64::MIN),
        Value::Money(i32::MIN as i64),
        Value::Text("abc".into()),
        Value::Text(String::new()),
        Value::Text("日本".into()),
        Value::Text(String::new()),
        Value::Text(long_n.clone()),
        Value::Text(long_v.clone()),
        Value::Text("legacy text".into()),
        Value::Text("ünïcödé".into()),
        Value::Bytes(vec![1, 2]),
        Value::Bytes(vec![]),
        Value::Bytes(long_b.clone()),
        Value::Bytes(vec![0xFF; 3]),
        Value::Date(0),
        Value::Time(0),
        Value::Time(0),
        Value::DateTime(day(1753, 1, 1), 0),
        Value::DateTime(day(1900, 1, 1), 0),
        Value::DateTime(day(1677, 9, 22), 0),
        Value::DateTime(0, 0),
        Value::Guid(guid),
        Value::Text("<a b=\"1\">x</a>".into()),
        // UTC 14:00 at -14:00: the local time is the first instant of year 1.
        Value::DateTimeOffset(0, 14 * 36_000_000_000, -840),
        Value::DateTimeOffset(day(1970, 1, 1), 0, 0),
    ];
    let high = vec![
        Value::Bool(true),
        Value::Int(255),
        Value::Int(i16::MAX as i64),
        Value::Int(i32::MAX as i64),
        Value::Int(i64::MAX),
        Value::F32(1.175_494_4e-38),
        Value::F64(f64::MAX),
        Value::Decimal(nines(38)),
        Value::Decimal(nines(38)),
        Value::Decimal(nines(38)),
        Value::Decimal(99_999),
        Value::Money(i64::MAX),
        Value::Money(i32::MAX as i64),
        Value::Text("0123456789".into()),
        Value::Text("héllo wörld".into()),
        Value::Text("12345".into()),
        Value::Text("日本語 🙂 'quoted'".into()),
        Value::Text(String::new()),
        Value::Text(String::new()),
        Value::Text(String::new()),
        Value::Text(String::new()),
        Value::Bytes(vec![0xDE, 0xAD, 0xBE, 0xEF]),
        Value::Bytes(vec![0xAB; 16]),
        Value::Bytes(vec![]),
        Value::Bytes(vec![]),
        Value::Date(day(9999, 12, 31)),
        Value::Time(DAY_TICKS - 1),
        Value::Time(DAY_TICKS - 10_000),
        Value::DateTime(day(9999, 12, 31), last_datetime_ticks),
        Value::DateTime(day(2079, 6, 6), (23 * 60 + 59) * 600_000_000),
        Value::DateTime(day(2262, 4, 10), DAY_TICKS - 1),
        Value::DateTime(day(9999, 12, 31), DAY_TICKS - 10_000),
        Value::Guid([0xFF; 16]),
        Value::Text("<r/>".into()),
        // UTC 09:59:59.999 at +14:00: the local time is the last millisecond of 9999.
        Value::DateTimeOffset(day(9999, 12, 31), 10 * 36_000_000_000 - 10_000, 840),
        // India, with every digit of datetimeoffset(7).
        Value::DateTimeOffset(day(2024, 2, 29), 12 * 36_000_000_000 + 1_234_567, 330),
    ];
    let nulls = vec![Value::Null; types.len()];
    peer.insert(name, vec![low, high, nulls]);
    Limits {
        types: types.to_vec(),
        long_n,
        long_v,
        long_b,
        guid,
    }
}

#[test]
fn every_type_reads_at_its_limits_and_null_in_every_column() {
    let server = TestServer::start();
    let peer = &server.peer;
    let Limits {
        types,
        long_n,
        long_v,
        long_b,
        guid,
    } = limits_table(peer, "dbo.limits");
    let nines = |digits: u32| 10i128.pow(digits) - 1;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("limits.parquet");
    let (ok, text) = copy(&server, dir.path(), to_parquet("dbo.limits", &out));
    assert!(ok, "{text}");
    let c = columns(&out);
    // Each datetimeoffset brings a companion column of offsets.
    assert_eq!(c.len(), types.len() + 2);
    for (i, (name, _)) in types.iter().enumerate() {
        assert!(c[i].is_null(2), "{name}: the NULL row");
        assert_eq!(c[i].len(), 3, "{name}");
    }
    let bools = c[0].as_boolean();
    assert_eq!((bools.value(0), bools.value(1)), (false, true));
    assert_eq!(
        c[1].as_primitive::<UInt8Type>().values()[..2],
        [0, 255],
        "tinyint"
    );
    assert_eq!(
        c[2].as_primitive::<Int16Type>().values()[..2],
        [i16::MIN, i16::MAX]
    );
    assert_eq!(
        c[3].as_primitive::<Int32Type>().values()[..2],
        [i32::MIN, i32::MAX]
    );
    assert_eq!(
        c[4].as_primitive::<Int64Type>().values()[..2],
        [i64::MIN, i64::MAX]
    );
    assert_eq!(
        c[5].as_primitive::<Float32Type>().values()[..2],
        [-3.402_823_5e38, 1.175_494_4e-38]
    );
    assert_eq!(
        c[6].as_primitive::<Float64Type>().values()[..2],
        [-f64::MAX, f64::MAX]
    );
    for (i, p, s) in [(7, 38, 10), (8, 38, 0), (9, 38, 37)] {
        assert_eq!(c[i].data_type(), &DataType::Decimal128(p, s));
        assert_eq!(
            c[i].as_primitive::<Decimal128Type>().values()[..2],
            [-nines(38), nines(38)],
            "every digit of decimal({p},{s})"
        );
    }
    assert_eq!(c[10].data_type(), &DataType::Decimal128(5, 2));
    assert_eq!(
        c[10].as_primitive::<Decimal128Type>().values()[..2],
        [-99_999, 99_999]
    );
    assert_eq!(c[11].data_type(), &DataType::Decimal128(19, 4));
    assert_eq!(
        c[11].as_primitive::<Decimal128Type>().values()[..2],
        [i64::MIN as i128, i64::MAX as i128]
    );
    assert_eq!(c[12].data_type(), &DataType::Decimal128(10, 4));
    assert_eq!(
        c[12].as_primitive::<Decimal128Type>().values()[..2],
        [i32::MIN as i128, i32::MAX as i128]
    );
    let strings = |i: usize| -> Vec<Option<String>> {
        c[i].as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    };
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        strings(13),
        opt(&[s("abc       "), s("0123456789"), None]),
        "char pads"
    );
    assert_eq!(strings(14), opt(&[s(""), s("héllo wörld"), None]));
    assert_eq!(
        strings(15),
        opt(&[s("日本   "), s("12345"), None]),
        "nchar pads"
    );
    assert_eq!(strings(16), opt(&[s(""), s("日本語 🙂 'quoted'"), None]));
    assert_eq!(strings(17), opt(&[Some(long_n), s(""), None]));
    assert_eq!(strings(18), opt(&[Some(long_v), s(""), None]));
    assert_eq!(strings(19), opt(&[s("legacy text"), s(""), None]));
    assert_eq!(strings(20), opt(&[s("ünïcödé"), s(""), None]));
    let bytes = |i: usize| -> Vec<Option<Vec<u8>>> {
        c[i].as_binary::<i32>()
            .iter()
            .map(|v| v.map(<[u8]>::to_vec))
            .collect()
    };
    assert_eq!(
        bytes(21),
        opt(&[
            Some(vec![1, 2, 0, 0]),
            Some(vec![0xDE, 0xAD, 0xBE, 0xEF]),
            None
        ]),
        "binary pads"
    );
    assert_eq!(bytes(22), opt(&[Some(vec![]), Some(vec![0xAB; 16]), None]));
    assert_eq!(bytes(23), opt(&[Some(long_b), Some(vec![]), None]));
    assert_eq!(bytes(24), opt(&[Some(vec![0xFF; 3]), Some(vec![]), None]));
    assert_eq!(
        c[25].as_primitive::<Date32Type>().values()[..2],
        [
            (0 - EPOCH_DAYS) as i32,
            (day(9999, 12, 31) - EPOCH_DAYS) as i32
        ],
        "dates at both ends"
    );
    assert_eq!(
        c[26].as_primitive::<Time64NanosecondType>().values()[..2],
        [0, (DAY_TICKS as i64 - 1) * 100]
    );
    assert_eq!(
        c[27].as_primitive::<Time64NanosecondType>().values()[..2],
        [0, (DAY_TICKS as i64 - 10_000) * 100]
    );
    let micros = |d: i64, ticks: u64| (d - EPOCH_DAYS) * 86_400_000_000 + ticks as i64 / 10;
    assert_eq!(
        c[28].as_primitive::<TimestampMicrosecondType>().values()[..2],
        [
            micros(day(1753, 1, 1), 0),
            // 299/300 s, to the nearest microsecond.
            micros(day(9999, 12, 31), 0) + 86_399_000_000 + 996_667
        ],
        "datetime at both ends"
    );
    assert_eq!(
        c[29].as_primitive::<TimestampMicrosecondType>().values()[..2],
        [
            micros(day(1900, 1, 1), 0),
            micros(day(2079, 6, 6), (23 * 60 + 59) * 600_000_000)
        ]
    );
    assert_eq!(
        c[30].data_type(),
        &DataType::Timestamp(TimeUnit::Nanosecond, None)
    );
    assert_eq!(
        c[30].as_primitive::<TimestampNanosecondType>().values()[..2],
        [
            (day(1677, 9, 22) - EPOCH_DAYS) * 86_400_000_000_000,
            (day(2262, 4, 10) - EPOCH_DAYS) * 86_400_000_000_000 + (DAY_TICKS as i64 - 1) * 100
        ],
        "datetime2(7) keeps its 100 ns"
    );
    assert_eq!(
        c[31].as_primitive::<TimestampMicrosecondType>().values()[..2],
        [micros(0, 0), micros(day(9999, 12, 31), DAY_TICKS - 10_000)],
        "datetime2(3) at both ends"
    );
    let guids = c[32].as_fixed_size_binary();
    assert_eq!(guids.value(0), &guid, "RFC 4122 byte order");
    assert_eq!(guids.value(1), &[0xFF; 16]);
    assert_eq!(strings(33), opt(&[s("<a b=\"1\">x</a>"), s("<r/>"), None]));
    // datetimeoffset: the UTC instant in the column, the offset beside it.
    assert_eq!(
        c[34].data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()))
    );
    assert_eq!(
        c[34].as_primitive::<TimestampMicrosecondType>().values()[..2],
        [
            micros(0, 14 * 36_000_000_000),
            micros(day(9999, 12, 31), 10 * 36_000_000_000 - 10_000)
        ]
    );
    let offsets =
        |i: usize| -> Vec<Option<i16>> { c[i].as_primitive::<Int16Type>().iter().collect() };
    assert_eq!(offsets(35), vec![Some(-840), Some(840), None]);
    assert_eq!(
        c[36].as_primitive::<TimestampNanosecondType>().values()[..2],
        [
            0,
            (day(2024, 2, 29) - EPOCH_DAYS) * 86_400_000_000_000
                + (12 * 36_000_000_000 + 1_234_567) * 100
        ],
        "datetimeoffset(7) keeps its 100 ns"
    );
    assert_eq!(offsets(37), vec![Some(0), Some(330), None]);
}

/// The ids of a Parquet output, sorted, with NULL as `None`.
fn ids(out: &Path, column: usize) -> Vec<Option<i64>> {
    let mut ids: Vec<Option<i64>> = read_parquet(out)
        .iter()
        .flat_map(|b| {
            let a = arrow::compute::cast(b.column(column), &DataType::Int64).unwrap();
            a.as_primitive::<Int64Type>().iter().collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn partitioned_reads_equal_one_read_with_null_keys_and_gaps() {
    let server = TestServer::start();
    server.peer.create_table(
        "dbo.facts",
        &[
            ("id", "bigint", true),
            ("day", "date", true),
            ("v", "int", false),
        ],
    );
    // Keys with gaps, a few NULLs, and days over three years.
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for i in 0..2_000i64 {
        let id = if i % 97 == 0 {
            None
        } else {
            Some(i * i % 10_007 - 5_000)
        };
        let day = if i % 89 == 0 {
            Value::Null
        } else {
            Value::Date(day(2022, 1, 1) + (i * 7919) % 1_100)
        };
        rows.push(vec![id.map_or(Value::Null, Value::Int), day, Value::Int(i)]);
        expected.push(Some(i));
    }
    server.peer.insert("dbo.facts", rows);
    let dir = tempfile::tempdir().unwrap();
    for (column, count) in [("id", 7), ("day", 5), ("id", 1)] {
        let out = dir.path().join(format!("by-{column}-{count}"));
        let job = serde_json::json!({"name": "parts",
            "source": {"type": "sqlserver", "connection": "mssql", "table": "facts",
                       "partition": {"column": column, "count": count}},
            "sink": {"type": "file", "path": format!("{}/", out.display()), "format": {"type": "parquet"}},
            "parallel_copies": 4});
        let (ok, text) = copy(&server, dir.path(), job);
        assert!(ok, "{text}");
        assert!(text.contains(&format!("partitions {count} ")), "{text}");
        assert_eq!(
            text.contains("note      the") && text.contains("no snapshot that sessions share"),
            count > 1,
            "the report says when partitions read at different moments: {text}"
        );
        assert_eq!(
            ids(&out, 2),
            expected,
            "partitions by {column} ({count}) read every row once"
        );
    }
}

#[test]
fn bad_settings_fail_clearly_and_write_nothing() {
    let server = TestServer::start();
    server
        .peer
        .create_table("dbo.t", &[("id", "int", false), ("at", "geography", true)]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.parquet");
    let run = |connection: serde_json::Value, source: serde_json::Value| {
        std::fs::write(
            dir.path().join("connections.json"),
            serde_json::json!({ "mssql": connection }).to_string(),
        )
        .unwrap();
        let job = serde_json::json!({"name": "bad", "source": source,
            "sink": {"type": "file", "path": out, "format": {"type": "parquet"}}});
        std::fs::write(dir.path().join("job.json"), job.to_string()).unwrap();
        let o = ferry()
            .arg("copy")
            .arg(dir.path().join("job.json"))
            .arg("--connections")
            .arg(dir.path().join("connections.json"))
            .env("FERRY_IT_MSSQL_WRONG", "not-the-password")
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(!out.exists(), "a failed job wrote output");
        let text = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!text.contains(PASSWORD));
        text
    };
    let table =
        |t: &str| serde_json::json!({"type": "sqlserver", "connection": "mssql", "table": t});
    let mut wrong_password = server.connection();
    wrong_password["password"] = serde_json::json!({"env": "FERRY_IT_MSSQL_WRONG"});
    let text = run(wrong_password, table("id_only"));
    assert!(
        text.contains("18456") && text.contains("check `user` and `password`"),
        "{text}"
    );
    let mut other_db = server.connection();
    other_db["database"] = serde_json::json!("missing_db");
    let text = run(other_db, table("t"));
    assert!(
        text.contains("4060") && text.contains("check `database`"),
        "{text}"
    );
    // The health check: reach, TLS, login, metadata.
    let checked = crate::support::succeed(
        ferry()
            .args(["test-connection", "mssql", "--connections"])
            .arg(server.connections_file(dir.path())),
    );
    assert!(
        checked.contains("metadata: ok (SQL Server 16.0.4096.1, database ferry as ferry_it)"),
        "{checked}"
    );
    let text = run(server.connection(), table("no_such_table"));
    assert!(
        text.contains("no_such_table") && text.contains("does not exist"),
        "{text}"
    );
    let text = run(server.connection(), table("t"));
    assert!(
        text.contains("column `at`") && text.contains("geography") && text.contains("CAST"),
        "{text}"
    );
    // A CA that did not sign the peer's certificate.
    let other_ca = tempfile::tempdir().unwrap();
    crate::support::postgres::make_certificates(other_ca.path(), &["localhost"]);
    let mut wrong_ca = server.connection();
    wrong_ca["ca_cert"] = serde_json::json!(other_ca.path().join("ca.pem"));
    let text = run(wrong_ca, table("t"));
    assert!(text.contains("TLS") && text.contains("ca_cert"), "{text}");
    // A closed port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut refused = server.connection();
    refused["port"] = serde_json::json!(port);
    let text = run(refused, table("t"));
    assert!(
        text.contains("cannot connect") && text.contains("check `host` and `port`"),
        "{text}"
    );
}

/// A value as a server sends it for a column of type `ty`: two values are the same value of
/// that column when these bytes are equal (char pads, datetime keeps 1/300 s, ...).
fn on_the_wire(ty: &tds_peer::SqlType, value: &Value) -> Vec<u8> {
    let mut w = tds_peer::wire::Writer::default();
    ty.write_value(&mut w, value, false).unwrap();
    w.0
}

/// Checks that `table` holds the rows of `source`, column by column and value by value,
/// with the same column types.
fn assert_same_table(peer: &tds_peer::Peer, source: &str, table: &str) {
    let a = peer.table(source).unwrap();
    let b = peer
        .table(table)
        .unwrap_or_else(|| panic!("no table {table}"));
    // The deprecated text, ntext and image become their (max) successors.
    let successor = |ty: &tds_peer::SqlType| match ty {
        tds_peer::SqlType::Text => tds_peer::SqlType::VarChar(None),
        tds_peer::SqlType::NText => tds_peer::SqlType::NVarChar(None),
        tds_peer::SqlType::Image => tds_peer::SqlType::VarBinary(None),
        other => other.clone(),
    };
    assert_eq!(
        a.columns
            .iter()
            .map(|c| (c.name.clone(), successor(&c.ty)))
            .collect::<Vec<_>>(),
        b.columns
            .iter()
            .map(|c| (c.name.clone(), c.ty.clone()))
            .collect::<Vec<_>>(),
        "{table} was created with the source's types"
    );
    assert_eq!(a.rows.len(), b.rows.len(), "{table}: rows");
    for (r, (x, y)) in a.rows.iter().zip(&b.rows).enumerate() {
        for (c, column) in a.columns.iter().enumerate() {
            assert_eq!(
                on_the_wire(&column.ty, &x[c]),
                on_the_wire(&column.ty, &y[c]),
                "{table}, row {r}, column {}: {:?} became {:?}",
                column.name,
                x[c],
                y[c]
            );
        }
    }
}

#[test]
fn every_type_round_trips_through_parquet_and_table_to_table() {
    let server = TestServer::start();
    let peer = &server.peer;
    limits_table(peer, "dbo.limits");
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("limits.parquet");
    let (ok, text) = copy(&server, dir.path(), to_parquet("dbo.limits", &parquet));
    assert!(ok, "{text}");
    let back = serde_json::json!({"name": "parquet-to-mssql",
        "source": {"type": "file", "path": parquet, "format": {"type": "parquet"}},
        "sink": {"type": "sqlserver", "connection": "mssql", "table": "dbo.limits_back"}});
    let (ok, text) = copy(&server, dir.path(), back);
    assert!(ok, "{text}");
    assert_same_table(peer, "dbo.limits", "dbo.limits_back");

    let direct = serde_json::json!({"name": "mssql-to-mssql",
        "source": {"type": "sqlserver", "connection": "mssql", "table": "limits"},
        "sink": {"type": "sqlserver", "connection": "mssql", "table": "[dbo].[limits copy]",
                 "table_lock": true}});
    let (ok, text) = copy(&server, dir.path(), direct);
    assert!(ok, "{text}");
    assert_same_table(peer, "dbo.limits", "dbo.[limits copy]");

    // What ferry sent, byte by byte: the bulk load's COLMETADATA declares each column with
    // its own type, precision and scale, and decimal(38,10)'s high limit travels as 17 bytes
    // (positive sign, the 38 nines little-endian).
    // A table with time(n) or datetimeoffset(n) columns of n < 7 loads through a session
    // table of scale 7 (tiberius declares those types without their scale, which a server
    // refuses for n < 7), then moves to the table in the same transaction.
    let load = peer
        .bulk_loads()
        .pop()
        .expect("the direct copy's bulk load");
    assert_eq!(load.table, "dbo.#ferry_load");
    assert!(
        load.statement.contains("WITH (TABLOCK)"),
        "{}",
        load.statement
    );
    let mut r = tds_peer::wire::Reader::new(&load.payload);
    assert_eq!(r.u8().unwrap(), 0x81, "COLMETADATA first");
    let count = r.u16().unwrap() as usize;
    let source = peer.table("dbo.limits").unwrap();
    assert_eq!(count, source.columns.len());
    let successor = |ty: &tds_peer::SqlType| match ty {
        tds_peer::SqlType::Text => tds_peer::SqlType::VarChar(None),
        tds_peer::SqlType::NText => tds_peer::SqlType::NVarChar(None),
        tds_peer::SqlType::Image => tds_peer::SqlType::VarBinary(None),
        tds_peer::SqlType::Time(_) => tds_peer::SqlType::Time(7),
        tds_peer::SqlType::DateTimeOffset(_) => tds_peer::SqlType::DateTimeOffset(7),
        tds_peer::SqlType::SmallDateTime => tds_peer::SqlType::DateTime,
        other => other.clone(),
    };
    for column in &source.columns {
        r.u32().unwrap();
        r.u16().unwrap();
        let (ty, _) = tds_peer::SqlType::read_type_info(&mut r).unwrap();
        let n = r.u8().unwrap() as usize;
        r.take(n * 2).unwrap();
        assert_eq!(
            ty,
            successor(&column.ty),
            "the bulk load declares {}",
            column.name
        );
    }
    let nines = (10i128.pow(38) - 1).to_le_bytes();
    let mut expected = vec![17u8, 1];
    expected.extend_from_slice(&nines[..16]);
    assert!(
        load.payload.windows(18).any(|w| w == expected.as_slice()),
        "decimal(38,10) 9999999999999999999999999999.9999999999 as 17 bytes"
    );
}

#[test]
fn a_load_that_fails_leaves_the_table_as_it_was() {
    let server = TestServer::start();
    let peer = &server.peer;
    peer.create_table(
        "dbo.target",
        &[("id", "int", false), ("name", "nvarchar(5)", true)],
    );
    peer.insert(
        "dbo.target",
        vec![vec![Value::Int(-1), Value::Text("kept".into())]],
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    let mut text = String::from("id,name\n");
    for i in 0..5_000 {
        // Row 4,000 is too long for nvarchar(5).
        let name = if i == 3_999 { "far too long" } else { "ok" };
        text.push_str(&format!("{i},{name}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    for mode in ["append", "truncate", "overwrite"] {
        let job = serde_json::json!({"name": "load", "batch_rows": 1000,
            "source": {"type": "file", "path": csv, "format": {"type": "csv"}},
            "sink": {"type": "sqlserver", "connection": "mssql", "table": "target", "mode": mode}});
        let (ok, text) = copy(&server, dir.path(), job);
        if mode == "overwrite" {
            // A new table from the source's columns takes the long value: the whole load
            // commits.
            assert!(ok, "{text}");
            assert_eq!(peer.table("dbo.target").unwrap().rows.len(), 5_000);
            continue;
        }
        assert!(!ok, "{mode}: {text}");
        assert!(
            text.contains("row 4000") && text.contains("column `name`") && text.contains("holds 5"),
            "{mode}: {text}"
        );
        let rows = peer.table("dbo.target").unwrap().rows;
        assert_eq!(
            rows,
            vec![vec![Value::Int(-1), Value::Text("kept".into())]],
            "{mode}: none of the failed run's rows, and nothing removed"
        );
    }
    assert_eq!(server.peer.sessions(), 0, "no session left open");
}

#[test]
fn a_max_value_past_what_the_bulk_load_takes_fails_naming_the_limit() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, format!("id,doc\n1,short\n2,{}\n", "x".repeat(40_000))).unwrap();
    let job = serde_json::json!({"name": "long",
        "source": {"type": "file", "path": csv, "format": {"type": "csv"}},
        "sink": {"type": "sqlserver", "connection": "mssql", "table": "docs"}});
    let (ok, text) = copy(&server, dir.path(), job);
    assert!(!ok);
    assert!(
        text.contains("row 2, column `doc` (nvarchar(max))") && text.contains("65535 bytes"),
        "{text}"
    );
    assert!(
        server.peer.table("dbo.docs").is_none(),
        "the table it created is rolled back"
    );
}

/// Runs the independent TDS clients' script with `args`; returns its JSON answer.
fn tds_clients(server: &TestServer, args: &[&str], stdin: Option<&str>) -> serde_json::Value {
    use std::io::Write;
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        root.join("target/tools/tds-clients/bin/python")
            .display()
            .to_string()
    });
    assert!(
        Path::new(&python).exists(),
        "{python} is missing: run ./scripts/tds-clients.sh install (./scripts/test.sh does)"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/tds_clients.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .env(crate::support::sqlserver::PASSWORD_ENV, PASSWORD)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _ = server;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A value as the clients' script writes it, computed from the value put in the table: the
/// clients keep microseconds (Python's datetime), pytds reads datetime to milliseconds.
fn canonical(ty: &tds_peer::SqlType, v: &Value) -> serde_json::Value {
    use tds_peer::SqlType as T;
    let date = |days: i64| {
        // Python: date.fromordinal(days + 1).
        let (y, m, d) = civil(days);
        format!("{y:04}-{m:02}-{d:02}")
    };
    let time = |ticks: u64| {
        let micros = ticks / 10;
        let s = micros / 1_000_000;
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            micros % 1_000_000
        )
    };
    let decimal = |v: i128, scale: u32| {
        let sign = if v < 0 { "-" } else { "" };
        let digits = v.unsigned_abs().to_string();
        if scale == 0 {
            return format!("{sign}{digits}");
        }
        let digits = format!("{digits:0>width$}", width = scale as usize + 1);
        let (int, frac) = digits.split_at(digits.len() - scale as usize);
        format!("{sign}{int}.{frac}")
    };
    serde_json::Value::String(match (ty, v) {
        (_, Value::Null) => return serde_json::Value::Null,
        (_, Value::Bool(b)) => b.to_string(),
        (_, Value::Int(i)) => i.to_string(),
        (_, Value::F32(f)) => hex(&f.to_le_bytes()),
        (_, Value::F64(f)) => hex(&f.to_le_bytes()),
        (T::Decimal(_, s), Value::Decimal(d)) => decimal(*d, *s as u32),
        (_, Value::Money(m)) => decimal(*m as i128, 4),
        (T::Char(n), Value::Text(s)) => format!("{s:<width$}", width = *n as usize),
        (T::NChar(n), Value::Text(s)) => {
            let pad = *n as usize - s.encode_utf16().count();
            format!("{s}{}", " ".repeat(pad))
        }
        (_, Value::Text(s)) => s.clone(),
        (T::Binary(n), Value::Bytes(b)) => {
            let mut b = b.clone();
            b.resize(*n as usize, 0);
            hex(&b)
        }
        (_, Value::Bytes(b)) => hex(b),
        (_, Value::Date(d)) => date(*d),
        (_, Value::Time(t)) => time(*t),
        (T::DateTime, Value::DateTime(d, t)) => {
            // To 1/300 s as stored, then to milliseconds as pytds rounds them.
            let t300 = (*t as u128 * 300 + 5_000_000) / 10_000_000;
            let ms = ((t300 % 300) as f64 * 10.0 / 3.0).round() as u64;
            let secs = (t300 / 300) as u64;
            format!("{}T{}", date(*d), time(secs * 10_000_000 + ms * 10_000))
        }
        (_, Value::DateTime(d, t)) => format!("{}T{}", date(*d), time(*t)),
        (_, Value::DateTimeOffset(d, t, offset)) => {
            // The local date and time, then the offset, as Python's isoformat writes them.
            let local =
                (*d as i128 * DAY_TICKS as i128) + *t as i128 + *offset as i128 * 600_000_000;
            let (ld, lt) = (
                local.div_euclid(DAY_TICKS as i128) as i64,
                local.rem_euclid(DAY_TICKS as i128) as u64,
            );
            let sign = if *offset < 0 { '-' } else { '+' };
            let m = offset.unsigned_abs();
            format!("{}T{}{sign}{:02}:{:02}", date(ld), time(lt), m / 60, m % 60)
        }
        (_, Value::Guid(g)) => {
            let h = hex(g);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        (ty, v) => panic!("no canonical form of {v:?} as {ty:?}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// (year, month, day) of a day counted from 0001-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days - EPOCH_DAYS + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[test]
fn the_peer_answers_parameterized_queries_sent_as_rpc() {
    // pytds sends a query with parameters as an RPC request to sp_executesql; the peer
    // answers it like the batch it stands for.
    let server = TestServer::start();
    let peer = &server.peer;
    peer.create_table(
        "dbo.people",
        &[("id", "int", false), ("name", "nvarchar(20)", true)],
    );
    peer.insert(
        "dbo.people",
        [
            (1, "ann"),
            (2, "bob"),
            (3, "o'neil"),
            (4, "dee"),
            (5, "eve"),
        ]
        .into_iter()
        .map(|(i, n)| vec![Value::Int(i), Value::Text(n.into())])
        .collect(),
    );
    let answer = tds_clients(
        &server,
        &[
            "params",
            &peer.port().to_string(),
            &server.ca().display().to_string(),
            "ferry",
            crate::support::sqlserver::USER,
            "dbo.people",
        ],
        None,
    );
    assert_eq!(
        answer["by_range"],
        serde_json::json!([[2, "bob"], [3, "o'neil"], [4, "dee"]])
    );
    assert_eq!(answer["by_name"], serde_json::json!([[3, "o'neil"]]));
    assert!(
        peer.statements()
            .iter()
            .any(|s| s.contains("WHERE name = N'o''neil'")),
        "the statement ran with the parameter as a literal: {:?}",
        peer.statements()
    );
}

#[test]
fn independent_clients_read_the_peer_s_values_as_they_were_put_in() {
    let server = TestServer::start();
    let peer = &server.peer;
    limits_table(peer, "dbo.limits");
    let table = peer.table("dbo.limits").unwrap();
    let ca = server.ca().display().to_string();
    let port = peer.port().to_string();
    for client in ["pytds", "pymssql"] {
        let answer = tds_clients(
            &server,
            &[
                "read",
                client,
                &port,
                &ca,
                "ferry",
                crate::support::sqlserver::USER,
                "dbo.limits",
            ],
            None,
        );
        let types: Vec<String> = answer["types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            types,
            table
                .columns
                .iter()
                .map(|c| c.ty.name())
                .collect::<Vec<_>>(),
            "{client}: the described types"
        );
        let rows = answer["rows"].as_array().unwrap();
        assert_eq!(rows.len(), table.rows.len());
        for (r, row) in table.rows.iter().enumerate() {
            for (c, column) in table.columns.iter().enumerate() {
                let expected = canonical(&column.ty, &row[c]);
                assert_eq!(
                    rows[r][c],
                    expected,
                    "{client}: row {r}, column {} ({})",
                    column.name,
                    column.ty.name()
                );
            }
        }
    }
}

#[test]
fn pytds_and_ferry_bulk_load_the_same_values_into_the_peer() {
    let server = TestServer::start();
    let peer = &server.peer;
    let columns = [
        ("id", "int", false),
        ("big", "bigint", true),
        ("amount", "decimal(38,10)", true),
        ("flag", "bit", true),
        ("ratio", "float", true),
        ("name", "nvarchar(100)", true),
        ("doc", "nvarchar(max)", true),
        ("blob", "varbinary(max)", true),
        ("day", "date", true),
        ("at", "datetime2(6)", true),
        ("key", "uniqueidentifier", true),
    ];
    peer.create_table("dbo.by_pytds", &columns);
    peer.create_table("dbo.by_ferry", &columns);
    let rows = serde_json::json!([
        [
            1,
            i64::MIN,
            "-9999999999999999999999999999.9999999999",
            true,
            1.5,
            "日本語 🙂",
            "x".repeat(9000),
            "00ff10",
            "0001-01-01",
            "9999-12-31T23:59:59.999999",
            "6f9619ff-8b86-d011-b42d-00c04fc964ff"
        ],
        [
            2,
            i64::MAX,
            "9999999999999999999999999999.9999999999",
            false,
            -0.0,
            "",
            "",
            "",
            "9999-12-31",
            "0001-01-01T00:00:00.000000",
            "00000000-0000-0000-0000-000000000000"
        ],
        [
            3, null, null, null, null, null, null, null, null, null, null
        ]
    ]);
    let spec = serde_json::json!({
        "columns": columns.iter().map(|c| c.0).collect::<Vec<_>>(),
        "types": columns.iter().map(|c| c.1).collect::<Vec<_>>(),
        "kinds": ["int", "int", "decimal", "bool", "float", "str", "str", "bytes", "date", "datetime", "uuid"],
        "rows": rows,
    });
    let answer = tds_clients(
        &server,
        &[
            "bulk",
            &peer.port().to_string(),
            &server.ca().display().to_string(),
            "ferry",
            crate::support::sqlserver::USER,
            "dbo.by_pytds",
        ],
        Some(&spec.to_string()),
    );
    assert_eq!(answer["loaded"], 3);
    let pytds_rows = peer.table("dbo.by_pytds").unwrap().rows;
    assert_eq!(pytds_rows.len(), 3);
    let day = |y, m, d| Value::Date(day(y, m, d));
    assert_eq!(
        pytds_rows[0],
        vec![
            Value::Int(1),
            Value::Int(i64::MIN),
            Value::Decimal(-(10i128.pow(38) - 1)),
            Value::Bool(true),
            Value::F64(1.5),
            Value::Text("日本語 🙂".into()),
            Value::Text("x".repeat(9000)),
            Value::Bytes(vec![0x00, 0xff, 0x10]),
            day(1, 1, 1),
            Value::DateTime(tds_peer::days_from_civil(9999, 12, 31), DAY_TICKS - 10),
            Value::Guid([
                0x6F, 0x96, 0x19, 0xFF, 0x8B, 0x86, 0xD0, 0x11, 0xB4, 0x2D, 0x00, 0xC0, 0x4F, 0xC9,
                0x64, 0xFF
            ]),
        ],
        "pytds's bulk load, decoded by the peer"
    );
    assert!(pytds_rows[2][1..].iter().all(|v| *v == Value::Null));

    // ferry (tiberius) bulk-loads the same values; the peer decodes both loads alike.
    let dir = tempfile::tempdir().unwrap();
    let job = serde_json::json!({"name": "same-rows",
        "source": {"type": "sqlserver", "connection": "mssql", "table": "by_pytds"},
        "sink": {"type": "sqlserver", "connection": "mssql", "table": "by_ferry"}});
    let (ok, text) = copy(&server, dir.path(), job);
    assert!(ok, "{text}");
    assert_eq!(peer.table("dbo.by_ferry").unwrap().rows, pytds_rows);
    let loads = peer.bulk_loads();
    assert_eq!(loads.len(), 2, "one bulk load by each client");
    assert_ne!(
        loads[0].payload, loads[1].payload,
        "two encoders, two byte streams (decimal lengths, PLP framing), one set of values"
    );
}

#[test]
fn a_load_killed_mid_way_leaves_none_of_its_rows() {
    let server = TestServer::start();
    let peer = &server.peer;
    peer.create_table(
        "dbo.big",
        &[("id", "bigint", false), ("name", "nvarchar(40)", true)],
    );
    peer.insert(
        "dbo.big",
        vec![vec![Value::Int(-1), Value::Text("before".into())]],
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("big.csv");
    let mut text = String::from("id,name\n");
    for i in 0..1_500_000 {
        text.push_str(&format!("{i},row number {i}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let connections = server.connections_file(dir.path());
    let job = dir.path().join("job.json");
    std::fs::write(
        &job,
        serde_json::json!({"name": "killed",
            "source": {"type": "file", "path": csv, "format": {"type": "csv"}},
            "sink": {"type": "sqlserver", "connection": "mssql", "table": "big"}})
        .to_string(),
    )
    .unwrap();
    let mut child = ferry()
        .arg("copy")
        .arg(&job)
        .arg("--connections")
        .arg(&connections)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once rows are flowing: the bulk load has started and data has arrived.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while peer.bulk_in_progress() < 64 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ferry ended before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while peer.sessions() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed session stays"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        peer.table("dbo.big").unwrap().rows,
        vec![vec![Value::Int(-1), Value::Text("before".into())]],
        "none of the killed run's rows"
    );
}

/// Ids of every Parquet blob under `prefix` of `container`, read with object_store and the
/// parquet crate (not through ferry).
fn blob_ids(container: &str, prefix: &str) -> Vec<i64> {
    let az = crate::support::azurite::azurite();
    let store = az.blob_connection().store("az", container).unwrap();
    let mut ids: Vec<i64> = crate::support::azurite::parquet_blobs(store.as_ref(), prefix)
        .iter()
        .flat_map(|batch| {
            let id = arrow::compute::cast(batch.column(0), &DataType::Int64).unwrap();
            id.as_primitive::<Int64Type>().values().to_vec()
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_walkthrough_a_node_copies_a_sql_server_table_to_parquet_blobs_direct_and_staged() {
    use crate::worker::{Kind, Runtime, stop};
    let server = TestServer::start();
    server.peer.create_table(
        "sales.orders",
        &[
            ("order_id", "bigint", false),
            ("total", "money", true),
            ("placed", "datetime2(3)", true),
        ],
    );
    server.peer.set_primary_key("sales.orders", &["order_id"]);
    let rows: Vec<Vec<Value>> = (0..3_000i64)
        .map(|i| {
            vec![
                Value::Int(i),
                Value::Money(i * 12_345),
                Value::DateTime(day(2024, 1, 1) + i % 366, (i as u64 % 86_400) * 10_000_000),
            ]
        })
        .collect();
    server.peer.insert("sales.orders", rows);
    let rt = Runtime::with(Kind::Azure { sas: false });
    let az = crate::support::azurite::azurite();
    let lake = az.container("lake");
    let staging = az.container("staging");
    let connections = rt.path().join("connections.json");
    let mut all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&connections).unwrap()).unwrap();
    all["mssql"] = server.connection();
    all["lake"] = serde_json::from_str(&az.connection()).unwrap();
    std::fs::write(&connections, all.to_string()).unwrap();
    let node = rt.node("a", 2);
    let job = |name: &str, staged: bool| {
        let mut job = serde_json::json!({"name": name,
            "source": {"type": "sqlserver", "connection": "mssql", "table": "sales.orders",
                       "partition": {"column": "order_id", "count": 4}},
            "sink": {"type": "azure_blob", "connection": "lake", "container": lake,
                     "path": format!("{name}/"), "format": {"type": "parquet"}},
            "parallel_copies": 4});
        if staged {
            job["staging"] =
                serde_json::json!({"connection": "lake", "path": format!("{staging}/ferry")});
        }
        rt.submit(job)
    };
    let ids = [job("direct", false), job("staged", true)];
    let expected: Vec<i64> = (0..3_000).collect();
    for done in rt.wait(&ids, std::time::Duration::from_secs(120)) {
        assert_eq!(done.status, ferry_engine::JobStatus::Succeeded, "{done:?}");
    }
    assert_eq!(blob_ids(&lake, "direct/"), expected, "direct copy");
    assert_eq!(blob_ids(&lake, "staged/"), expected, "staged copy");
    assert!(
        az.list(&staging, "ferry").is_empty(),
        "the staged run removed its interim files"
    );
    assert!(stop(node).success());
    rt.assert_no_secret_in_logs();
    for entry in std::fs::read_dir(rt.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            assert!(!std::fs::read_to_string(&path).unwrap().contains(PASSWORD));
        }
    }
}

#[test]
fn every_type_round_trips_through_postgresql() {
    let server = TestServer::start();
    let peer = &server.peer;
    let Limits { types, .. } = limits_table(peer, "dbo.limits");
    // PostgreSQL keeps microseconds: the 100 ns types stay home.
    let kept: Vec<(&str, &str)> = types
        .iter()
        .copied()
        .filter(|(_, t)| !t.ends_with("(7)"))
        .collect();
    // The deprecated large types cannot be bulk-loaded: the target has their successors.
    let defs: Vec<(&str, &str, bool)> = kept
        .iter()
        .map(|(n, t)| {
            let t = match *t {
                "text" => "varchar(max)",
                "ntext" => "nvarchar(max)",
                "image" => "varbinary(max)",
                t => t,
            };
            (*n, t, true)
        })
        .collect();
    peer.create_table("dbo.limits_from_pg", &defs);
    let pg = crate::support::postgres::server();
    let db = pg.database("mssql_round_trip");
    let dir = tempfile::tempdir().unwrap();
    let mut connections: serde_json::Value =
        serde_json::from_str(&pg.connections(&db, "")).unwrap();
    connections["mssql"] = server.connection();
    let file = dir.path().join("connections.json");
    std::fs::write(&file, connections.to_string()).unwrap();
    let columns = kept
        .iter()
        .map(|(n, _)| format!("[{n}]"))
        .collect::<Vec<_>>()
        .join(", ");
    for job in [
        serde_json::json!({"name": "mssql-to-pg",
            "source": {"type": "sqlserver", "connection": "mssql",
                       "query": format!("SELECT {columns} FROM [dbo].[limits]")},
            "sink": {"type": "postgres", "connection": "pg", "table": "limits", "mode": "overwrite"}}),
        serde_json::json!({"name": "pg-to-mssql",
            "source": {"type": "postgres", "connection": "pg", "table": "limits"},
            "sink": {"type": "sqlserver", "connection": "mssql", "table": "limits_from_pg"}}),
    ] {
        let path = dir.path().join("job.json");
        std::fs::write(&path, job.to_string()).unwrap();
        crate::support::succeed(
            ferry()
                .arg("copy")
                .arg(&path)
                .arg("--connections")
                .arg(&file),
        );
    }
    let source = peer.table("dbo.limits").unwrap();
    let back = peer.table("dbo.limits_from_pg").unwrap();
    assert_eq!(back.rows.len(), 3);
    for (b, column) in back.columns.iter().enumerate() {
        let a = source
            .columns
            .iter()
            .position(|c| c.name == column.name)
            .unwrap();
        for r in 0..3 {
            assert_eq!(
                on_the_wire(&column.ty, &source.rows[r][a]),
                on_the_wire(&column.ty, &back.rows[r][b]),
                "row {r}, column {} ({}): {:?} came back as {:?}",
                column.name,
                column.ty.name(),
                source.rows[r][a],
                back.rows[r][b]
            );
        }
    }
}

#[test]
fn sql_server_sessions_that_stall_reset_or_close_are_read_or_loaded_again() {
    use crate::support::proxy::{Direction, Fault, Proxy};
    let server = TestServer::start();
    let peer = &server.peer;
    peer.create_table(
        "dbo.t",
        &[("id", "bigint", false), ("name", "nvarchar(40)", true)],
    );
    peer.set_primary_key("dbo.t", &["id"]);
    peer.insert(
        "dbo.t",
        (0..60_000i64)
            .map(|i| vec![Value::Int(i), Value::Text(format!("row number {i}"))])
            .collect(),
    );
    let proxy = Proxy::start(([127, 0, 0, 1], peer.port()).into());
    let dir = tempfile::tempdir().unwrap();
    let mut connection = server.connection();
    connection["port"] = serde_json::json!(proxy.port());
    connection["command_timeout"] = serde_json::json!("2s");
    std::fs::write(
        dir.path().join("connections.json"),
        serde_json::json!({ "mssql": connection }).to_string(),
    )
    .unwrap();
    let run = |name: &str| {
        let job = serde_json::json!({"name": name,
            "source": {"type": "sqlserver", "connection": "mssql", "table": "t",
                       "partition": {"column": "id", "count": 2}},
            "sink": {"type": "file", "path": dir.path().join(format!("{name}.parquet")),
                     "format": {"type": "parquet"}},
            "parallel_copies": 2, "retry": {"max_attempts": 3, "initial_backoff": "100ms"}});
        std::fs::write(dir.path().join("job.json"), job.to_string()).unwrap();
        let started = std::time::Instant::now();
        let out = ferry()
            .arg("copy")
            .arg(dir.path().join("job.json"))
            .arg("--connections")
            .arg(dir.path().join("connections.json"))
            .output()
            .unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(90),
            "a stall never hangs the job"
        );
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // One session goes silent mid-read: tiberius's command_timeout gives it up and the
    // partition is read again, resuming in primary-key order.
    proxy.stall_after(300_000, true);
    let (ok, text) = run("once");
    assert!(ok, "{text}");
    assert_eq!(proxy.faulted(), 1);
    assert_eq!(
        ids(&dir.path().join("once.parquet"), 0),
        (0..60_000).map(Some).collect::<Vec<_>>()
    );
    // A session reset, or closed by the server's side, mid-read: the partition is read
    // again, every row once.
    for (name, fault) in [("reset", Fault::Reset), ("closed", Fault::HalfClose)] {
        let before = proxy.faulted();
        proxy.fault_after(fault, Direction::FromServer, 300_000, true);
        let (ok, text) = run(name);
        assert!(ok, "{name}: {text}");
        assert_eq!(proxy.faulted(), before + 1, "{name}: the fault happened");
        assert_eq!(
            ids(&dir.path().join(format!("{name}.parquet")), 0),
            (0..60_000).map(Some).collect::<Vec<_>>(),
            "{name}"
        );
    }
    // The load side: a bulk load's session reset after 300 KB. The transaction dies with
    // the session; the load runs again in a new one, and the table holds every row once.
    peer.create_table(
        "dbo.u",
        &[("id", "bigint", false), ("name", "nvarchar(40)", true)],
    );
    proxy.fault_after(Fault::Reset, Direction::ToServer, 300_000, true);
    let before = proxy.faulted();
    let job = serde_json::json!({"name": "load",
        "source": {"type": "file", "path": dir.path().join("once.parquet"), "format": {"type": "parquet"}},
        "sink": {"type": "sqlserver", "connection": "mssql", "table": "u", "mode": "truncate"},
        "retry": {"max_attempts": 3, "initial_backoff": "100ms"}});
    std::fs::write(dir.path().join("load.json"), job.to_string()).unwrap();
    let out = ferry()
        .arg("copy")
        .arg(dir.path().join("load.json"))
        .arg("--connections")
        .arg(dir.path().join("connections.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proxy.faulted(), before + 1, "the load's session was reset");
    let mut loaded: Vec<i64> = peer
        .table("dbo.u")
        .unwrap()
        .rows
        .iter()
        .map(|r| match &r[0] {
            Value::Int(i) => *i,
            other => panic!("{other:?}"),
        })
        .collect();
    loaded.sort();
    assert_eq!(loaded, (0..60_000).collect::<Vec<i64>>());
    // Every session goes silent: the job fails naming the timeout, and writes nothing.
    proxy.stall_after(300_000, false);
    let (ok, text) = run("always");
    assert!(!ok);
    assert!(
        text.contains("answered nothing within `command_timeout` (2s)"),
        "{text}"
    );
    assert!(!dir.path().join("always.parquet").exists());
}

#[test]
fn physical_partitions_read_every_row_once_on_both_sides_of_each_boundary() {
    let server = TestServer::start();
    let peer = &server.peer;
    let rows = |n: i64| -> Vec<Vec<Value>> {
        (0..n)
            .map(|i| {
                vec![
                    if i % 101 == 0 {
                        Value::Null
                    } else {
                        Value::Int(i)
                    },
                    Value::Date(day(2024, 1, 1) + i % 400),
                    Value::Int(i),
                ]
            })
            .collect()
    };
    for name in ["by_id", "by_day", "plain"] {
        peer.create_table(
            &format!("dbo.{name}"),
            &[
                ("id", "int", true),
                ("day", "date", false),
                ("v", "bigint", false),
            ],
        );
        peer.insert(&format!("dbo.{name}"), rows(5_000));
    }
    // RANGE RIGHT on integers: each boundary starts a partition; values equal to one land
    // above it.
    peer.set_partitioning("dbo.by_id", "id", true, &["1000", "2000", "3000"]);
    // RANGE LEFT on dates: each boundary ends a partition.
    peer.set_partitioning("dbo.by_day", "day", false, &["2024-03-31", "2024-09-30"]);
    let dir = tempfile::tempdir().unwrap();
    let expected: Vec<Option<i64>> = (0..5_000).map(Some).collect();
    for (table, partitions) in [("by_id", 4), ("by_day", 3), ("plain", 1)] {
        let out = dir.path().join(table);
        let job = serde_json::json!({"name": table,
            "source": {"type": "sqlserver", "connection": "mssql", "table": table,
                       "partition": "physical"},
            "sink": {"type": "file", "path": format!("{}/", out.display()), "format": {"type": "parquet"}},
            "parallel_copies": 4});
        let (ok, text) = copy(&server, dir.path(), job);
        assert!(ok, "{text}");
        assert!(
            text.contains(&format!("partitions {partitions} ")),
            "{table}: {text}"
        );
        assert_eq!(ids(&out, 2), expected, "{table}: every row once");
    }
    // The reads follow the partition function's sides: RANGE RIGHT boundaries open a
    // partition, RANGE LEFT ones close one.
    let statements = peer.statements().join("\n");
    assert!(
        statements.contains("WHERE ([id] >= N'1000' AND [id] < N'2000')"),
        "{statements}"
    );
    assert!(
        statements.contains("WHERE ([day] > N'2024-03-31' AND [day] <= N'2024-09-30')"),
        "{statements}"
    );
    // A query has no partitions of its own.
    let job = serde_json::json!({"name": "q",
        "source": {"type": "sqlserver", "connection": "mssql", "query": "SELECT * FROM by_id",
                   "partition": "physical"},
        "sink": {"type": "file", "path": dir.path().join("q.parquet"), "format": {"type": "parquet"}}});
    let (ok, text) = copy(&server, dir.path(), job);
    assert!(!ok && text.contains("a `query` has none"), "{text}");
}

#[test]
fn wide_rows_end_batches_by_bytes() {
    // 300 rows of 16 KiB of text each (4.7 MiB), read with a 12 MiB budget by one partition:
    // batches end at a sixth of the budget (2 MiB) of values, not at the 8,192 rows of
    // `batch_rows`.
    const ROWS: usize = 300;
    const LIMIT: usize = 2 << 20;
    let payload = |i: usize| format!("{i:08}").repeat(2048);
    let server = TestServer::start();
    server.peer.create_table(
        "dbo.wide",
        &[("id", "bigint", false), ("payload", "nvarchar(max)", true)],
    );
    server.peer.insert(
        "dbo.wide",
        (0..ROWS)
            .map(|i| vec![Value::Int(i as i64), Value::Text(payload(i))])
            .collect(),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wide.arrow");
    let job = serde_json::json!({"name": "wide", "parallel_copies": 1, "max_buffer_bytes": "12MiB",
        "source": {"type": "sqlserver", "connection": "mssql", "table": "wide"},
        "sink": {"type": "file", "path": out, "format": {"type": "arrow_ipc"}}});
    let (ok, text) = copy(&server, dir.path(), job);
    assert!(ok, "{text}");
    crate::support::assert_batches_end_by_bytes(&out, ROWS, payload, LIMIT, "sqlserver");
}
