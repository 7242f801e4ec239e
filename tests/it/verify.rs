//! `verify: true`: the published output is read back and compared with what was read, in
//! every format, through a table and a blob container; a table that changes what it is
//! given, and an output damaged after the commit, fail the job.

use std::path::Path;

use ferry_engine::JobStatus;
use ferry_engine::report::Verification;

use crate::support::azurite::azurite;
use crate::support::postgres::server;
use crate::support::{js, run_job_with, run_phases, tree};

/// The verification of a report that succeeded: both sides' figures, equal.
fn verified(report: &ferry_engine::JobReport) -> &Verification {
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    let v = report
        .verification
        .as_ref()
        .expect("the report has figures");
    let output = v.output.as_ref().expect("the output was read back");
    assert_eq!(&v.read, output, "{report}");
    assert!(v.read.differences(output).is_empty());
    v
}

#[test]
fn every_format_reads_back_equal_to_what_was_read() {
    let tmp = tempfile::tempdir().unwrap();
    // lineitem at scale 0.01 has 60,175 rows (tpchgen is deterministic): decimals, dates,
    // text, in every format, as part files and as one file, direct and staged.
    for format in ["csv", "jsonl", "parquet", "arrow_ipc"] {
        for path in [
            format!("{}/", tmp.path().join(format).display()),
            format!("{}/one.{format}", tmp.path().join(format).display()),
        ] {
            let job = format!(
                r#"{{"name": "v-{format}", "source": {{"type": "tpch", "table": "lineitem", "scale_factor": 0.01}},
                    "sink": {{"type": "file", "path": "{path}", "format": {{"type": "{format}"}}}},
                    "parallel_copies": 3, "verify": true}}"#
            );
            let report = run_job_with(&job, "{}");
            let v = verified(&report);
            assert_eq!(v.read.rows, 60_175, "{path}");
            assert_eq!(v.read.columns.len(), 16);
        }
    }
    let staged = format!(
        r#"{{"name": "v-staged", "source": {{"type": "tpch", "table": "orders", "scale_factor": 0.01}},
            "sink": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}},
            "staging": {{"path": {}}}, "verify": true}}"#,
        js(&tmp.path().join("staged.csv")),
        js(&tmp.path().join("staging"))
    );
    let phases = run_phases(&staged, "{}");
    assert_eq!(phases.len(), 2);
    for phase in &phases {
        assert_eq!(verified(phase).read.rows, 15_000, "{phase}");
    }
}

#[test]
fn every_postgres_type_verifies_through_parquet_a_table_and_blobs() {
    let pg = server();
    let db = pg.database("verified");
    pg.sql(&db, crate::postgres::EVERYTHING);
    let az = azurite();
    let container = az.container("verified");
    let connections =
        pg.connections(&db, "")
            .replacen('{', &format!(r#"{{"az": {}, "#, az.connection()), 1);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("everything.parquet");
    let sinks = [
        format!(
            r#"{{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}"#,
            js(&out)
        ),
        format!(
            r#"{{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "everything/", "format": {{"type": "parquet"}}}}"#
        ),
        r#"{"type": "postgres", "connection": "pg", "table": "copy", "mode": "overwrite"}"#
            .to_string(),
    ];
    for sink in sinks {
        let job = format!(
            r#"{{"name": "v-pg", "source": {{"type": "postgres", "connection": "pg", "table": "everything"}},
                "sink": {sink}, "verify": true}}"#
        );
        let report = run_job_with(&job, &connections);
        assert_eq!(verified(&report).read.rows, 5000, "{sink}");
    }
    // And back from the Parquet file into a table that exists (truncate).
    let job = format!(
        r#"{{"name": "v-back", "source": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}},
            "sink": {{"type": "postgres", "connection": "pg", "table": "copy", "mode": "truncate"}},
            "verify": true}}"#,
        js(&out)
    );
    assert_eq!(verified(&run_job_with(&job, &connections)).read.rows, 5000);
}

#[test]
fn a_table_that_changes_what_it_is_given_fails_verification() {
    let pg = server();
    let db = pg.database("verify_trigger");
    pg.sql(
        &db,
        "CREATE TABLE src AS SELECT g AS id, 'name ' || g AS name FROM generate_series(1, 1000) g;
         CREATE TABLE dst (id int, name text);
         CREATE FUNCTION shout() RETURNS trigger AS $$
           BEGIN IF NEW.id = 500 THEN NEW.name := upper(NEW.name); END IF; RETURN NEW; END
         $$ LANGUAGE plpgsql;
         CREATE TRIGGER shout BEFORE INSERT ON dst FOR EACH ROW EXECUTE FUNCTION shout();",
    );
    let connections = pg.connections(&db, "");
    let job = |mode: &str| {
        format!(
            r#"{{"name": "v-trigger", "source": {{"type": "postgres", "connection": "pg", "table": "src"}},
                "sink": {{"type": "postgres", "connection": "pg", "table": "dst", "mode": "{mode}"}},
                "verify": true}}"#
        )
    };
    let report = run_job_with(&job("truncate"), &connections);
    assert_eq!(report.status, JobStatus::Failed, "{report}");
    let message = &report.error.as_ref().unwrap().message;
    assert!(
        message.contains("differs from what was read")
            && message.contains("column `name`")
            && !message.contains("column `id`")
            && message.contains("the table was left as loaded"),
        "{message}"
    );
    assert_eq!(
        pg.count(&db, "SELECT count(*) FROM dst WHERE name = 'NAME 500'"),
        1
    );
    // Append cannot be verified (the table holds more than this job's rows): refused before
    // anything runs.
    let err = ferry_connectors::parse_job(&job("append")).unwrap_err();
    assert!(
        err.to_string().contains("mode to truncate or overwrite"),
        "{err}"
    );
}

#[test]
fn an_output_damaged_after_the_commit_fails_and_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let job_text = format!(
        r#"{{"name": "v-damaged", "source": {{"type": "tpch", "table": "nation", "scale_factor": 1, "partitions": 2}},
            "sink": {{"type": "file", "path": "{}/", "format": {{"type": "csv"}}}}, "verify": true}}"#,
        out.display()
    );
    let (spec, settings) = ferry_connectors::parse_job(&job_text).unwrap();
    let connections = ferry_connectors::Connections::default();
    let report = crate::support::run_job_with(&job_text, "{}");
    verified(&report);
    let files = tree(&out);
    assert!(
        files.contains(&"_ferry_manifest.json".to_string()),
        "{files:?}"
    );
    // Storage changes one byte of one value after the commit (JORDAN becomes JORDAM): the
    // figures taken as the rows passed no longer match the output read back.
    let part = Path::new(&report.outputs[0]).to_path_buf();
    let text = std::fs::read_to_string(&part).unwrap();
    let damaged = if text.contains("JORDAN") {
        text.replacen("JORDAN", "JORDAM", 1)
    } else {
        text.replacen("ALGERIA", "ALGERIB", 1)
    };
    assert_ne!(damaged, text);
    std::fs::write(&part, damaged).unwrap();
    // The source's own schema, as the run had it.
    let schema = actix::System::new().block_on(async {
        ferry_connectors::build_job(&spec, settings.clone(), &connections)
            .await
            .unwrap()
            .source
            .schema()
    });
    let again = actix::System::new().block_on(ferry_connectors::verify::verify_output(
        &spec,
        &connections,
        &settings,
        &schema,
        report,
    ));
    assert_eq!(again.status, JobStatus::Failed, "{again}");
    let message = &again.error.as_ref().unwrap().message;
    assert!(
        message.contains("column `n_name`") && message.contains("were removed"),
        "{message}"
    );
    assert_eq!(
        tree(&out),
        Vec::<String>::new(),
        "the output and its manifest are gone"
    );
}

#[test]
fn a_sql_server_table_verifies_both_ways() {
    use crate::support::sqlserver::TestServer;
    let server = TestServer::start();
    let connections = serde_json::json!({ "mssql": server.connection() }).to_string();
    let tmp = tempfile::tempdir().unwrap();
    let parquet = tmp.path().join("orders.parquet");
    // TPC-H orders (15,000 rows at scale 0.01: keys, decimals, dates, text) into a table the
    // job creates, read back through the peer; then that table to Parquet, read back too.
    let load = r#"{"name": "v-mssql-load", "source": {"type": "tpch", "table": "orders", "scale_factor": 0.01},
        "sink": {"type": "sqlserver", "connection": "mssql", "table": "orders", "mode": "overwrite"},
        "verify": true}"#;
    assert_eq!(
        verified(&run_job_with(load, &connections)).read.rows,
        15_000
    );
    let read = format!(
        r#"{{"name": "v-mssql-read", "source": {{"type": "sqlserver", "connection": "mssql", "table": "orders"}},
            "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}},
            "verify": true}}"#,
        js(&parquet)
    );
    assert_eq!(
        verified(&run_job_with(&read, &connections)).read.rows,
        15_000
    );
}
