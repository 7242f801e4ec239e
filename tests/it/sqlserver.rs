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
