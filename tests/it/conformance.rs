//! Every store passes the engine's conformance suites (`ferry_engine::testing::conformance`):
//! the in-memory doubles, TPC-H, local files, Azure Blob (Azurite) and PostgreSQL.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use ferry_connectors::registry::{build_sink, build_source};
use ferry_connectors::{Connections, parse_job};
use ferry_engine::testing::conformance::{
    self, SinkTarget, SourceChecks, check_sink, check_source,
};
use ferry_engine::testing::{MemorySink, MemorySource};
use ferry_engine::{OutputLayout, Sink, Source};

use crate::support::azurite::azurite;
use crate::support::postgres::server;
use crate::support::{js, read_parquet, tree};

/// A job around `source` (and a sink that is never built), as a node would parse it.
fn source_of(
    source: &str,
    batch_rows: usize,
    connections: &Connections,
) -> impl std::future::Future<Output = ferry_engine::Result<Arc<dyn Source>>> {
    let job = format!(
        r#"{{"name": "conformance", "batch_rows": {batch_rows}, "source": {source},
            "sink": {{"type": "file", "path": "/nowhere/", "format": {{"type": "csv"}}}}}}"#
    );
    let (spec, settings) = parse_job(&job).unwrap();
    let connections = connections.clone();
    async move { build_source(&spec.source, &connections, &settings).await }
}

/// The sink of a job with `sink` as its sink section.
fn sink_of(sink: &str, connections: &Connections) -> ferry_engine::Result<Arc<dyn Sink>> {
    let job = format!(
        r#"{{"name": "conformance", "source": {{"type": "tpch", "table": "nation", "scale_factor": 1}},
            "sink": {sink}}}"#
    );
    let (spec, settings) = parse_job(&job).unwrap();
    build_sink(&spec.sink, connections, &settings)
}

/// `n` rows of `id` (int64) and `name` (text, null every 7th), as batches of `batch` rows.
fn id_name_rows(first: i64, n: usize, batch: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (first..first + n as i64).collect();
    ids.chunks(batch)
        .map(|chunk| {
            let names: Vec<Option<String>> = chunk
                .iter()
                .map(|i| (i % 7 != 0).then(|| format!("name {i}")))
                .collect();
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(chunk.to_vec())),
                Arc::new(StringArray::from(names)),
            ];
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        })
        .collect()
}

/// The same rows as CSV text with a header (an empty field is NULL).
fn id_name_csv(batches: &[RecordBatch]) -> String {
    let mut text = String::from("id,name\n");
    for row in conformance::rows(batches) {
        let (id, name) = row.split_once('|').unwrap();
        let name = if name == "NULL" { "" } else { name };
        text.push_str(&format!("{id},{name}\n"));
    }
    text
}

#[test]
fn the_engine_s_memory_doubles_pass_both_suites() {
    let expected: Vec<Vec<RecordBatch>> =
        (0..3).map(|p| id_name_rows(p * 1000, 1000, 100)).collect();
    let schema = expected[0][0].schema();
    let all: Vec<RecordBatch> = expected.iter().flatten().cloned().collect();
    check_source(
        "memory",
        || async move { Ok(Arc::new(MemorySource::new(schema, expected)) as Arc<dyn Source>) },
        &all,
        SourceChecks::default(),
    );

    struct Memory(Mutex<HashMap<String, MemorySink>>);
    impl SinkTarget for Memory {
        fn sink(&self, case: &str) -> ferry_engine::Result<Arc<dyn Sink>> {
            let sink = MemorySink::new(OutputLayout::PerPartition);
            self.0.lock().unwrap().insert(case.into(), sink.clone());
            Ok(Arc::new(sink))
        }
        fn visible(&self, case: &str) -> Vec<String> {
            conformance::rows(&self.0.lock().unwrap()[case].published())
        }
        fn leftovers(&self, case: &str) -> Vec<String> {
            self.0.lock().unwrap()[case].leftovers()
        }
    }
    check_sink("memory", &Memory(Mutex::default()));
}

#[test]
fn the_tpch_generator_passes_the_source_suite() {
    // The expected table comes from the generator crate itself, in one piece: the suite
    // checks ferry's partitioning, batching and resuming against it.
    let expected: Vec<RecordBatch> =
        tpchgen_arrow::OrderArrow::new(tpchgen::generators::OrderGenerator::new(0.001, 1, 1))
            .with_batch_size(1000)
            .map(|b| b.unwrap())
            .collect();
    assert_eq!(
        expected.iter().map(RecordBatch::num_rows).sum::<usize>(),
        1500
    );
    let connections = Connections::default();
    check_source(
        "tpch",
        || {
            source_of(
                r#"{"type": "tpch", "table": "orders", "scale_factor": 0.001, "partitions": 3}"#,
                128,
                &connections,
            )
        },
        &expected,
        SourceChecks::default(),
    );
}

#[test]
fn local_files_pass_the_source_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for part in 0..3 {
        let batches = id_name_rows(part * 2000, 2000, 2000);
        std::fs::write(
            dir.path().join(format!("in-{part}.csv")),
            id_name_csv(&batches),
        )
        .unwrap();
        expected.extend(batches);
    }
    // A column schema, so that `name` is text and `id` an integer whatever inference says.
    let csv = format!(
        r#"{{"type": "file", "path": {}, "format": {{"type": "csv", "schema": [{{"name": "id", "type": "bigint"}}, {{"name": "name", "type": "text"}}]}}}}"#,
        js(&dir.path().join("*.csv"))
    );
    let connections = Connections::default();
    check_source(
        "file (csv)",
        || source_of(&csv, 300, &connections),
        &expected,
        SourceChecks::default(),
    );

    // Parquet with several row groups, written by the parquet crate.
    let path = dir.path().join("in.parquet");
    let file = std::fs::File::create(&path).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(700))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, expected[0].schema(), Some(props)).unwrap();
    for batch in &expected {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
    let parquet = format!(
        r#"{{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}"#,
        js(&path)
    );
    check_source(
        "file (parquet)",
        || source_of(&parquet, 250, &connections),
        &expected,
        SourceChecks::default(),
    );
}

/// Parquet outputs under `root/<case>/`: `out/` (one file per output) or `out.parquet`.
struct LocalTarget {
    root: PathBuf,
    single: bool,
}

impl LocalTarget {
    fn published(&self, case: &str) -> Vec<PathBuf> {
        let base = self.root.join(case);
        if self.single {
            let file = base.join("out.parquet");
            return if file.exists() { vec![file] } else { vec![] };
        }
        let out = base.join("out");
        if !out.exists() {
            return vec![];
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                !name.starts_with(['.', '_']) && name.ends_with(".parquet")
            })
            .collect();
        files.sort();
        files
    }
}

impl SinkTarget for LocalTarget {
    fn sink(&self, case: &str) -> ferry_engine::Result<Arc<dyn Sink>> {
        let path = if self.single {
            js(&self.root.join(case).join("out.parquet"))
        } else {
            format!("\"{}/\"", self.root.join(case).join("out").display())
        };
        sink_of(
            &format!(r#"{{"type": "file", "path": {path}, "format": {{"type": "parquet"}}}}"#),
            &Connections::default(),
        )
    }

    fn visible(&self, case: &str) -> Vec<String> {
        let batches: Vec<RecordBatch> = self
            .published(case)
            .iter()
            .flat_map(|p| read_parquet(p))
            .collect();
        conformance::rows(&batches)
    }

    fn leftovers(&self, case: &str) -> Vec<String> {
        let base = self.root.join(case);
        let published: Vec<String> = self
            .published(case)
            .iter()
            .map(|p| p.strip_prefix(&base).unwrap().display().to_string())
            .collect();
        // The manifest is part of a published set of part files.
        tree(&base)
            .into_iter()
            .filter(|p| {
                !published.contains(p)
                    && (p != "out/" || published.is_empty())
                    && (p != "out/_ferry_manifest.json" || published.is_empty())
            })
            .collect()
    }
}

#[test]
fn local_files_pass_the_sink_suite() {
    let dir = tempfile::tempdir().unwrap();
    for single in [false, true] {
        let target = LocalTarget {
            root: dir.path().join(if single { "single" } else { "parts" }),
            single,
        };
        std::fs::create_dir_all(&target.root).unwrap();
        check_sink(
            if single {
                "file (one file)"
            } else {
                "file (part files)"
            },
            &target,
        );
    }
}

/// Reads every Parquet blob under `prefix` of `container`.
fn blob_rows(store: &dyn object_store::ObjectStore, prefix: &str) -> Vec<String> {
    conformance::rows(&crate::support::azurite::parquet_blobs(store, prefix))
}

struct BlobTarget {
    container: String,
    connections: Connections,
    store: Arc<dyn object_store::ObjectStore>,
}

impl SinkTarget for BlobTarget {
    fn sink(&self, case: &str) -> ferry_engine::Result<Arc<dyn Sink>> {
        sink_of(
            &format!(
                r#"{{"type": "azure_blob", "connection": "az", "container": "{}", "path": "{case}/", "format": {{"type": "parquet"}}}}"#,
                self.container
            ),
            &self.connections,
        )
    }

    fn visible(&self, case: &str) -> Vec<String> {
        blob_rows(self.store.as_ref(), case)
    }

    fn leftovers(&self, _case: &str) -> Vec<String> {
        // Uncommitted blocks are not listable through the blob API that object_store
        // speaks; a blob that is listed is visible, which `visible` checks.
        Vec::new()
    }
}

#[test]
fn azure_blob_passes_both_suites() {
    let az = azurite();
    let container = az.container("conformance");
    let connections = Connections::from_json(&format!(r#"{{"az": {}}}"#, az.connection())).unwrap();
    let store = az.blob_connection().store("az", &container).unwrap();
    let mut expected = Vec::new();
    {
        use object_store::ObjectStoreExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for part in 0..3 {
            let batches = id_name_rows(part * 1500, 1500, 1500);
            let path = object_store::path::Path::from(format!("input/in-{part}.csv"));
            rt.block_on(store.put(&path, id_name_csv(&batches).into_bytes().into()))
                .unwrap();
            expected.extend(batches);
        }
    }
    let source = format!(
        r#"{{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "input/", "format": {{"type": "csv", "schema": [{{"name": "id", "type": "bigint"}}, {{"name": "name", "type": "text"}}]}}}}"#
    );
    check_source(
        "azure_blob",
        || source_of(&source, 400, &connections),
        &expected,
        SourceChecks::default(),
    );
    check_sink(
        "azure_blob",
        &BlobTarget {
            container,
            connections: connections.clone(),
            store,
        },
    );
}

/// ferry's sessions on `database`.
fn ferry_sessions(database: &str) -> Vec<String> {
    server()
        .query(
            "postgres",
            &format!(
                "SELECT pid::text || ' ' || coalesce(state, '') FROM pg_stat_activity \
             WHERE datname = '{database}' AND application_name = 'ferry'"
            ),
        )
        .into_iter()
        .map(|row| row.join(" "))
        .collect()
}

#[test]
fn postgres_passes_the_source_suite() {
    let pg = server();
    let db = pg.database("conformance_source");
    pg.sql(
        &db,
        "CREATE TABLE src AS SELECT i::bigint AS id, \
         CASE WHEN i % 7 = 0 THEN NULL ELSE 'name ' || i END AS name \
         FROM generate_series(0, 5999) i",
    );
    let expected = id_name_rows(0, 6000, 6000);
    let connections = Connections::from_json(&pg.connections(&db, "")).unwrap();
    for (what, source) in [
        (
            "table",
            r#"{"type": "postgres", "connection": "pg", "table": "src"}"#,
        ),
        (
            "query, range partitions",
            r#"{"type": "postgres", "connection": "pg", "query": "SELECT id, name FROM src", "partition": {"column": "id", "count": 3}}"#,
        ),
    ] {
        let db = db.clone();
        check_source(
            &format!("postgres ({what})"),
            || source_of(source, 500, &connections),
            &expected,
            SourceChecks {
                sessions: Some(Box::new(move || ferry_sessions(&db).len())),
                ..SourceChecks::default()
            },
        );
    }
}

struct PgTarget {
    database: String,
    connections: Connections,
}

impl SinkTarget for PgTarget {
    fn sink(&self, case: &str) -> ferry_engine::Result<Arc<dyn Sink>> {
        sink_of(
            &format!(r#"{{"type": "postgres", "connection": "pg", "table": "t_{case}"}}"#),
            &self.connections,
        )
    }

    fn visible(&self, case: &str) -> Vec<String> {
        let pg = server();
        if pg.count(
            &self.database,
            &format!("SELECT count(*) FROM pg_class WHERE oid = to_regclass('t_{case}')"),
        ) == 0
        {
            return Vec::new();
        }
        pg.query(
            &self.database,
            &format!("SELECT id::text || '|' || coalesce(name, 'NULL') FROM t_{case}"),
        )
        .into_iter()
        .map(|row| row.join(""))
        .collect()
    }

    fn leftovers(&self, _case: &str) -> Vec<String> {
        ferry_sessions(&self.database)
    }
}

#[test]
fn postgres_passes_the_sink_suite() {
    let pg = server();
    let database = pg.database("conformance_sink");
    let connections = Connections::from_json(&pg.connections(&database, "")).unwrap();
    check_sink(
        "postgres",
        &PgTarget {
            database,
            connections,
        },
    );
}

#[test]
fn sqlserver_passes_the_source_suite() {
    let server = crate::support::sqlserver::TestServer::start();
    let peer = &server.peer;
    peer.create_table(
        "dbo.src",
        &[("id", "bigint", false), ("name", "nvarchar(50)", true)],
    );
    peer.set_primary_key("dbo.src", &["id"]);
    let expected = id_name_rows(0, 6000, 6000);
    // Stored out of key order: a resumed read must follow the primary key, not the storage.
    let mut rows: Vec<Vec<tds_peer::Value>> = conformance::rows(&expected)
        .into_iter()
        .map(|row| {
            let (id, name) = row.split_once('|').unwrap();
            vec![
                tds_peer::Value::Int(id.parse().unwrap()),
                if name == "NULL" {
                    tds_peer::Value::Null
                } else {
                    tds_peer::Value::Text(name.to_string())
                },
            ]
        })
        .collect();
    rows.reverse();
    peer.insert("dbo.src", rows);
    let connections =
        Connections::from_json(&serde_json::json!({ "mssql": server.connection() }).to_string())
            .unwrap();
    for (what, source) in [
        (
            "table",
            r#"{"type": "sqlserver", "connection": "mssql", "table": "src"}"#,
        ),
        (
            "table, range partitions",
            r#"{"type": "sqlserver", "connection": "mssql", "table": "dbo.src", "partition": {"column": "id", "count": 3}}"#,
        ),
    ] {
        check_source(
            &format!("sqlserver ({what})"),
            || source_of(source, 500, &connections),
            &expected,
            SourceChecks {
                sessions: Some(Box::new(peer.session_count())),
                ..SourceChecks::default()
            },
        );
    }
}

/// The SQL Server peer as a sink target: a reader sees committed tables only.
struct SqlServerTarget {
    server: crate::support::sqlserver::TestServer,
    connections: Connections,
}

impl SinkTarget for SqlServerTarget {
    fn sink(&self, case: &str) -> ferry_engine::Result<Arc<dyn Sink>> {
        sink_of(
            &format!(r#"{{"type": "sqlserver", "connection": "mssql", "table": "t_{case}"}}"#),
            &self.connections,
        )
    }

    fn visible(&self, case: &str) -> Vec<String> {
        let Some(table) = self.server.peer.table(&format!("dbo.t_{case}")) else {
            return Vec::new();
        };
        table
            .rows
            .iter()
            .map(|row| {
                let text = |v: &tds_peer::Value| match v {
                    tds_peer::Value::Int(i) => i.to_string(),
                    tds_peer::Value::Text(s) => s.clone(),
                    tds_peer::Value::Null => "NULL".into(),
                    other => format!("{other:?}"),
                };
                format!("{}|{}", text(&row[0]), text(&row[1]))
            })
            .collect()
    }

    fn leftovers(&self, _case: &str) -> Vec<String> {
        // Open sessions are the only thing a load leaves behind (an open transaction).
        (0..self.server.peer.sessions())
            .map(|i| format!("open session {i}"))
            .collect()
    }
}

#[test]
fn sqlserver_passes_the_sink_suite() {
    let server = crate::support::sqlserver::TestServer::start();
    let connections =
        Connections::from_json(&serde_json::json!({ "mssql": server.connection() }).to_string())
            .unwrap();
    check_sink(
        "sqlserver",
        &SqlServerTarget {
            server,
            connections,
        },
    );
}
