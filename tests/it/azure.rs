//! Azure Blob Storage source and sink, and staged copy, against Azurite.

use std::path::Path;

use ferry_engine::{ErrorKind, JobStatus};

use crate::support::azurite::{ACCOUNT, azurite};
use crate::support::{js, read_parquet, run_job_with, run_phases, sorted_rows};

/// A CSV of `rows` rows with several types (and a quoted comma, an empty string, a NULL).
fn write_csv(path: &Path, rows: usize) {
    let mut text = String::from("id,name,amount,day\n");
    for i in 0..rows {
        let name = match i % 4 {
            0 => "\"a, quoted\"".to_string(),
            1 => "\"\"".to_string(),
            2 => String::new(),
            _ => format!("name {i}"),
        };
        text.push_str(&format!(
            "{i},{name},{}.{:02},2024-01-{:02}\n",
            i * 3,
            i % 100,
            i % 28 + 1
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// The rows [`write_csv`] writes, built from the same formula (not read by ferry).
fn csv_rows(rows: usize) -> arrow::record_batch::RecordBatch {
    use arrow::array::{Date32Array, Decimal128Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let i = 0..rows;
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("day", DataType::Date32, true),
    ]);
    // 2024-01-01 is day 19,723 of the Unix epoch.
    arrow::record_batch::RecordBatch::try_new(
        std::sync::Arc::new(schema),
        vec![
            std::sync::Arc::new(Int64Array::from_iter_values(i.clone().map(|i| i as i64))),
            std::sync::Arc::new(StringArray::from_iter(i.clone().map(|i| match i % 4 {
                0 => Some("a, quoted".to_string()),
                1 => Some(String::new()),
                2 => None,
                _ => Some(format!("name {i}")),
            }))),
            std::sync::Arc::new(
                Decimal128Array::from_iter_values(
                    i.clone().map(|i| (i as i128 * 3) * 100 + (i as i128 % 100)),
                )
                .with_precision_and_scale(12, 2)
                .unwrap(),
            ),
            std::sync::Arc::new(Date32Array::from_iter_values(
                i.map(|i| 19_723 + (i % 28) as i32),
            )),
        ],
    )
    .unwrap()
}

fn connections(extra: &str) -> String {
    format!(r#"{{"az": {}{extra}}}"#, azurite().connection())
}

const SCHEMA: &str = r#"[{"name":"id","type":"int64"},{"name":"name","type":"utf8"},{"name":"amount","type":"decimal(12,2)"},{"name":"day","type":"date"}]"#;

#[test]
fn every_format_round_trips_through_blobs() {
    let az = azurite();
    let container = az.container("roundtrip");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    write_csv(&csv, 20_000);
    let expected = sorted_rows(&[csv_rows(20_000)]);
    for (name, format, path) in [
        ("csv", r#"{"type": "csv"}"#, "csv/data.csv"),
        (
            "csv-gz",
            r#"{"type": "csv", "compression": "gzip"}"#,
            "csvgz/",
        ),
        (
            "jsonl-zst",
            r#"{"type": "jsonl", "compression": "zstd"}"#,
            "jsonl/",
        ),
        (
            "parquet",
            r#"{"type": "parquet", "compression": "zstd"}"#,
            "parquet/",
        ),
        ("arrow", r#"{"type": "arrow_ipc"}"#, "ipc/data.arrow"),
    ] {
        let up = run_job_with(
            &format!(
                r#"{{"name": "up-{name}", "source": {{"type": "file", "path": {}, "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                    "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "{path}", "format": {format}, "block_size": "1MiB"}},
                    "parallel_copies": 3}}"#,
                js(&csv)
            ),
            &connections(""),
        );
        assert_eq!(up.status, JobStatus::Succeeded, "{name}: {up}");
        assert_eq!(up.sink, "azure_blob");
        let blobs = az.list(
            &container,
            path.trim_end_matches('/').split('/').next().unwrap(),
        );
        assert!(!blobs.is_empty(), "{name}: no blob written");
        assert!(blobs.iter().all(|b| !b.contains("_ferry_tmp")), "{blobs:?}");

        let out = dir.path().join(format!("back-{name}.parquet"));
        let read_format = match name {
            "csv" | "csv-gz" => format!(
                r#"{{"type": "csv", "schema": {SCHEMA}{}}}"#,
                if name == "csv-gz" {
                    r#", "compression": "gzip""#
                } else {
                    ""
                }
            ),
            "jsonl-zst" => {
                format!(r#"{{"type": "jsonl", "schema": {SCHEMA}, "compression": "zstd"}}"#)
            }
            _ => format.to_string(),
        };
        let down = run_job_with(
            &format!(
                r#"{{"name": "down-{name}", "source": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "{path}", "format": {read_format}}},
                    "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}, "parallel_copies": 2}}"#,
                js(&out)
            ),
            &connections(""),
        );
        assert_eq!(down.status, JobStatus::Succeeded, "{name}: {down}");
        assert_eq!(down.rows_read, 20_000, "{name}");
        assert_eq!(
            sorted_rows(&read_parquet(&out)),
            expected,
            "{name}: rows differ"
        );
    }
}

#[test]
fn many_blobs_in_parallel_and_reruns_replace_parts() {
    let az = azurite();
    let container = az.container("many");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    for i in 0..12 {
        write_csv(&input.join(format!("f{i:02}.csv")), 500 + i * 10);
    }
    let job = |parallel: usize| {
        format!(
            r#"{{"name": "many", "source": {{"type": "file", "path": {}, "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "out/", "format": {{"type": "parquet"}}}},
                "parallel_copies": {parallel}}}"#,
            js(&input)
        )
    };
    let report = run_job_with(&job(6), &connections(""));
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    // Twelve parts and the manifest that lists them.
    assert_eq!(az.list(&container, "out").len(), 13);
    // Read all of them back by glob, in parallel.
    let out = dir.path().join("back.parquet");
    let back = run_job_with(
        &format!(
            r#"{{"name": "back", "source": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "out/part-*.parquet", "format": {{"type": "parquet"}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}, "parallel_copies": 4}}"#,
            js(&out)
        ),
        &connections(""),
    );
    assert_eq!(back.status, JobStatus::Succeeded, "{back}");
    assert_eq!(back.rows_read, (0..12).map(|i| 500 + i * 10).sum::<u64>());
    // A re-run with the inputs merged into fewer partitions replaces the earlier parts.
    std::fs::write(input.join("f00.csv"), "id,name,amount,day\n").unwrap();
    for i in 1..12 {
        std::fs::remove_file(input.join(format!("f{i:02}.csv"))).unwrap();
    }
    write_csv(&input.join("g.csv"), 10);
    let report = run_job_with(&job(2), &connections(""));
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    assert_eq!(
        az.list(&container, "out"),
        [
            "out/_ferry_manifest.json",
            "out/part-00000.parquet",
            "out/part-00001.parquet"
        ],
        "earlier part blobs are removed"
    );
}

#[test]
fn a_failure_mid_upload_leaves_no_blob() {
    let az = azurite();
    let container = az.container("failing");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    write_csv(&csv, 150_000);
    // A bad value at the very end: several blocks are uploaded before the job fails.
    let mut text = std::fs::read_to_string(&csv).unwrap();
    text.push_str("x,broken,1.00,2024-01-01\n");
    std::fs::write(&csv, text).unwrap();
    let report = run_job_with(
        &format!(
            r#"{{"name": "failing", "source": {{"type": "file", "path": {}, "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "data.csv", "format": {{"type": "csv"}}, "block_size": "1MiB"}},
                "parallel_copies": 1, "batch_rows": 1000}}"#,
            js(&csv)
        ),
        &connections(""),
    );
    assert_eq!(report.status, JobStatus::Failed);
    assert!(
        report.bytes_written > 2 << 20,
        "blocks were uploaded before the failure: {report}"
    );
    assert!(report.error.unwrap().message.contains("bad.csv:150002"));
    assert!(az.list(&container, "").is_empty(), "no blob may appear");
}

#[test]
fn credentials_and_containers_fail_clearly() {
    let az = azurite();
    let container = az.container("auth");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    write_csv(&csv, 100);
    let job = |container: &str| {
        format!(
            r#"{{"name": "auth", "source": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}},
                "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "x/", "format": {{"type": "csv"}}}}}}"#,
            js(&csv)
        )
    };
    let bad_key = format!(
        r#"{{"az": {{"type": "azure_blob", "account": "{ACCOUNT}", "endpoint": "{}", "allow_http": true, "auth": {{"type": "shared_key", "key": {{"env": "FERRY_IT_WRONG_KEY"}}}}}}}}"#,
        az.endpoint()
    );
    crate::support::expect_env("FERRY_IT_WRONG_KEY", "d3JvbmcgdGhpcyBrZXkgaXM=");
    let report = run_job_with(&job(&container), &bad_key);
    let error = report.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Auth, "{}", error.message);
    assert!(error.message.contains("access denied"), "{}", error.message);

    let report = run_job_with(&job("no-such-container"), &connections(""));
    let error = report.error.unwrap();
    assert!(
        error.message.contains("no-such-container"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("does not exist"),
        "{}",
        error.message
    );

    // A SAS token with read and list rights reads, and cannot write. The token is made now,
    // so `ferry copy` runs as a child process with it in its environment.
    let sas = az.sas("rl");
    let sas_conn = dir.path().join("sas.json");
    std::fs::write(
        &sas_conn,
        format!(
            r#"{{"az": {{"type": "azure_blob", "account": "{ACCOUNT}", "endpoint": "{}", "allow_http": true, "auth": {{"type": "sas", "token": {{"env": "FERRY_IT_SAS_RL"}}}}}}}}"#,
            az.endpoint()
        ),
    )
    .unwrap();
    let with_sas = |name: &str, job: &str| {
        let file = dir.path().join(format!("{name}.json"));
        std::fs::write(&file, job).unwrap();
        crate::support::ferry()
            .arg("copy")
            .arg(&file)
            .arg("--connections")
            .arg(&sas_conn)
            .env("FERRY_IT_SAS_RL", &sas)
            .output()
            .unwrap()
    };
    let refused = with_sas("sas-write", &job(&container));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("access denied"),
        "{stderr}"
    );
    let report = run_job_with(&job(&container), &connections(""));
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    let out = dir.path().join("via-sas.parquet");
    let read = with_sas(
        "sas-read",
        &format!(
            r#"{{"name": "sas-read", "source": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "x/", "format": {{"type": "csv"}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}}}"#,
            js(&out)
        ),
    );
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let rows: usize = read_parquet(&out).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 100);
}

#[test]
fn staged_copy_cleans_up_after_success_and_failure() {
    let az = azurite();
    let staging = az.container("staging");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    write_csv(&csv, 30_000);
    let out = dir.path().join("out.parquet");
    let expected = sorted_rows(&[csv_rows(30_000)]);
    let job = |sink_path: &Path, mode: &str, staging_json: &str| {
        format!(
            r#"{{"name": "staged", "source": {{"type": "file", "path": {}, "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}, "mode": "{mode}"}},
                "staging": {staging_json}, "parallel_copies": 2}}"#,
            js(&csv),
            js(sink_path)
        )
    };
    let local_staging = dir.path().join("interim");
    for staging_json in [
        format!(r#"{{"connection": "az", "path": "{staging}/ferry"}}"#),
        format!(
            r#"{{"path": {}, "compression": "snappy"}}"#,
            js(&local_staging)
        ),
        format!(
            r#"{{"connection": "az", "path": "{staging}/ferry", "format": "csv", "compression": "gzip"}}"#
        ),
    ] {
        let _ = std::fs::remove_file(&out);
        let phases = run_phases(&job(&out, "overwrite", &staging_json), &connections(""));
        assert_eq!(phases.len(), 2, "{staging_json}");
        for p in &phases {
            assert_eq!(p.status, JobStatus::Succeeded, "{p}");
            assert_eq!(p.rows_written, 30_000);
        }
        assert_eq!(phases[0].job, "staged-to-staging");
        assert_eq!(
            sorted_rows(&read_parquet(&out)),
            expected,
            "{staging_json}: rows differ"
        );
        assert!(
            az.list(&staging, "ferry").is_empty(),
            "interim blobs removed"
        );
        assert!(
            !local_staging.exists() || std::fs::read_dir(&local_staging).unwrap().next().is_none(),
            "interim files removed"
        );
        // Phase 2 fails (the output exists and the mode forbids replacing it): the interim
        // files are removed all the same.
        let phases = run_phases(
            &job(&out, "error_if_exists", &staging_json),
            &connections(""),
        );
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[0].status, JobStatus::Succeeded);
        assert_eq!(phases[1].status, JobStatus::Failed);
        assert!(
            az.list(&staging, "ferry").is_empty(),
            "interim blobs removed after a failure"
        );
        assert!(
            !local_staging.exists() || std::fs::read_dir(&local_staging).unwrap().next().is_none(),
            "interim files removed after a failure"
        );
    }
}

/// Files of awkward sizes in nested folders: empty, one byte, several blocks.
fn write_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut seed = 7u64;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect()
    };
    for (name, size) in [
        ("empty.bin", 0),
        ("one.txt", 1),
        ("a/small.csv", 1000),
        ("a/b/three-blocks.parquet", (2 << 20) + 12345),
        ("a/b/c/deep.bin", 300_000),
        ("z/big.bin", (5 << 20) + 1),
    ] {
        let data = bytes(size);
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        files.push((name.to_string(), data));
    }
    files
}

#[test]
fn binary_copy_of_a_tree_is_byte_for_byte_and_resumes() {
    let az = azurite();
    let container = az.container("binary");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let files = write_tree(&src);
    let job = |name: &str, source: String, sink: String| {
        format!(r#"{{"name": "{name}", "source": {source}, "sink": {sink}, "parallel_copies": 3}}"#)
    };
    let local_source = format!(
        r#"{{"type": "file", "path": {}, "format": {{"type": "binary"}}}}"#,
        js(&src)
    );
    let blob_sink = format!(
        r#"{{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "tree/", "format": {{"type": "binary", "verify_md5": true}}, "block_size": "1MiB"}}"#
    );
    let up = run_job_with(
        &job("up", local_source.clone(), blob_sink.clone()),
        &connections(""),
    );
    assert_eq!(up.status, JobStatus::Succeeded, "{up}");
    assert_eq!((up.rows_read, up.rows_written, up.rows_skipped), (6, 6, 0));
    let mut expected: Vec<String> = files.iter().map(|(n, _)| format!("tree/{n}")).collect();
    expected.sort();
    assert_eq!(az.list(&container, "tree"), expected);

    // Back down into a new directory, checked by MD5, and compared byte for byte.
    let back = dir.path().join("back");
    let down = run_job_with(
        &job(
            "down",
            format!(
                r#"{{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "tree/", "format": {{"type": "binary"}}}}"#
            ),
            format!(
                r#"{{"type": "file", "path": "{}/", "format": {{"type": "binary", "verify_md5": true}}}}"#,
                back.display()
            ),
        ),
        &connections(""),
    );
    assert_eq!(down.status, JobStatus::Succeeded, "{down}");
    // A binary copy counts files, and says so.
    let text = format!("{down}");
    assert!(
        text.contains("files     read 6") && text.contains("files/s") && !text.contains("rows"),
        "{text}"
    );
    for (name, data) in &files {
        assert_eq!(&std::fs::read(back.join(name)).unwrap(), data, "{name}");
        // Local copies get the default output mode, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(back.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640, "{name}");
    }

    // A re-run copies only what is missing.
    std::fs::remove_file(back.join("a/b/c/deep.bin")).unwrap();
    let again = run_job_with(
        &job(
            "down",
            format!(
                r#"{{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "tree/", "format": {{"type": "binary"}}}}"#
            ),
            format!(
                r#"{{"type": "file", "path": "{}/", "format": {{"type": "binary"}}}}"#,
                back.display()
            ),
        ),
        &connections(""),
    );
    assert_eq!((again.rows_written, again.rows_skipped), (1, 5), "{again}");
    assert_eq!(
        std::fs::read(back.join("a/b/c/deep.bin")).unwrap(),
        files[4].1
    );

    // Flattening names that collide fails before anything is copied.
    std::fs::write(src.join("a/one.txt"), b"x").unwrap();
    let flat = dir.path().join("flat");
    let report = run_job_with(
        &job(
            "flat",
            local_source,
            format!(
                r#"{{"type": "file", "path": "{}/", "format": {{"type": "binary", "hierarchy": "flatten"}}}}"#,
                flat.display()
            ),
        ),
        &connections(""),
    );
    let error = report.error.unwrap();
    assert!(
        error.message.contains("would both be copied to"),
        "{}",
        error.message
    );
    assert!(!flat.exists() || std::fs::read_dir(&flat).unwrap().next().is_none());
}

#[test]
fn outputs_roll_over_into_several_blobs() {
    let az = azurite();
    let container = az.container("rolling");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    write_csv(&csv, 50_000);
    let job = |limits: &str, path: &str| {
        let format = if path == "size/" { "csv" } else { "parquet" };
        format!(
            r#"{{"name": "roll", "source": {{"type": "file", "path": {}, "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "{path}", "format": {{"type": "{format}"}}{limits}}},
                "parallel_copies": 1, "batch_rows": 4096}}"#,
            js(&csv)
        )
    };
    let report = run_job_with(
        &job(r#", "max_rows_per_blob": 12000"#, "rows/"),
        &connections(""),
    );
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    // Files end at the first batch boundary past 12000 rows (batches hold at most 4096):
    // 50,000 rows make 4 or 5 files, named in sequence.
    let mut blobs = az.list(&container, "rows");
    assert_eq!(blobs.remove(0), "rows/_ferry_manifest.json");
    assert!((4..=5).contains(&blobs.len()), "{blobs:?}");
    let mut expected: Vec<String> = (1..blobs.len())
        .map(|i| format!("rows/part-00000-{i:04}.parquet"))
        .collect();
    expected.push("rows/part-00000.parquet".into());
    assert_eq!(blobs, expected);
    let out = dir.path().join("back.parquet");
    let back = run_job_with(
        &format!(
            r#"{{"name": "back", "source": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "rows/", "format": {{"type": "parquet"}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}}}"#,
            js(&out)
        ),
        &connections(""),
    );
    assert_eq!(back.rows_read, 50_000, "{back}");
    // By size; and a re-run without limits replaces every rolled blob.
    let report = run_job_with(
        &job(r#", "max_bytes_per_blob": "1MiB""#, "size/"),
        &connections(""),
    );
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    // About 1.9 MB of CSV: two files, and the manifest.
    assert_eq!(
        az.list(&container, "size"),
        [
            "size/_ferry_manifest.json",
            "size/part-00000-0001.csv",
            "size/part-00000.csv"
        ]
    );
    let report = run_job_with(&job("", "size/"), &connections(""));
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    assert_eq!(
        az.list(&container, "size"),
        ["size/_ferry_manifest.json", "size/part-00000.csv"]
    );
}

#[test]
fn test_connection_lists_the_container() {
    let az = azurite();
    let container = az.container("checked");
    let dir = tempfile::tempdir().unwrap();
    let conns = dir.path().join("connections.json");
    std::fs::write(&conns, connections("")).unwrap();
    let check = |container: &str| {
        crate::support::ferry()
            .args([
                "test-connection",
                "az",
                "--container",
                container,
                "--connections",
            ])
            .arg(&conns)
            .output()
            .unwrap()
    };
    let ok = check(&container);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.contains("listing of container checked: ok"), "{out}");
    let missing = check("missing-one");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("container does not exist"), "{err}");
}

#[test]
fn proxy_none_connects_directly_whatever_the_environment_says() {
    let az = azurite();
    let container = az.container("proxynone");
    let dir = tempfile::tempdir().unwrap();
    // A proxy that refuses every connection, as the environment names it.
    let closed = format!("http://127.0.0.1:{}", crate::support::free_port());
    let check = |proxy: &str| {
        let conns = dir.path().join(format!("{proxy}.json"));
        std::fs::write(
            &conns,
            format!(
                r#"{{"az": {}}}"#,
                az.connection().replace(
                    r#""allow_http": true"#,
                    &format!(r#""allow_http": true, "proxy": {{"type": "{proxy}"}}"#)
                )
            ),
        )
        .unwrap();
        crate::support::ferry()
            .args([
                "test-connection",
                "az",
                "--container",
                &container,
                "--connections",
            ])
            .arg(&conns)
            .env("HTTP_PROXY", &closed)
            .env("HTTPS_PROXY", &closed)
            .env("ALL_PROXY", &closed)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap()
    };
    let direct = check("none");
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    // The environment's proxy is used by default, and here it refuses.
    let system = check("system");
    assert!(!system.status.success(), "the system proxy was not used");
}

#[test]
fn a_staged_run_removes_the_interim_files_of_dead_runs_only() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    write_csv(&csv, 1_000);
    let staging = dir.path().join("interim");
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    // Leftovers: a dead run of this job (its marker an hour old), one from before markers
    // (only old files), a live run of this job (a fresh marker), and old runs of other jobs.
    let leftovers = [
        ("staged-dead01", true, true),
        ("staged-01d", false, true),
        ("staged-be0f02", true, false),
        ("staged-b-dead03", true, true),
        ("other-dead04", true, true),
    ];
    for (name, marker, old) in leftovers {
        let run = staging.join(name);
        std::fs::create_dir_all(&run).unwrap();
        let mut files = vec![run.join("part-00000.parquet")];
        if marker {
            files.push(run.join("_ferry_run"));
        }
        for file in files {
            std::fs::write(&file, b"x").unwrap();
            if old {
                std::fs::File::options()
                    .write(true)
                    .open(&file)
                    .unwrap()
                    .set_modified(hour_ago)
                    .unwrap();
            }
        }
    }
    let out = dir.path().join("out.parquet");
    let phases = run_phases(
        &format!(
            r#"{{"name": "staged", "source": {{"type": "file", "path": {}, "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}},
                "staging": {{"path": {}}}}}"#,
            js(&csv),
            js(&out),
            js(&staging)
        ),
        "{}",
    );
    assert!(
        phases.iter().all(|p| p.status == JobStatus::Succeeded),
        "{phases:?}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["other-dead04", "staged-b-dead03", "staged-be0f02"],
        "the dead runs of this job are gone, its own run cleaned up, the rest untouched"
    );
}

#[test]
fn busy_and_throttled_storage_is_retried_after_the_wait_it_asks_for() {
    use crate::support::http_faults::HttpFaults;
    let az = azurite();
    let container = az.container("throttled");
    let faults = HttpFaults::start(&format!("http://127.0.0.1:{}", az.blob_port));
    let conns = format!(
        r#"{{"az": {}}}"#,
        az.connection()
            .replace(&az.endpoint(), &format!("{}/{ACCOUNT}", faults.endpoint()))
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut expected = Vec::new();
    for f in 0..3 {
        let mut text = String::from("id,name\n");
        for i in 0..2000 {
            let row = format!("{},row {f}-{i}", f * 2000 + i);
            text.push_str(&row);
            text.push('\n');
            expected.push(row);
        }
        std::fs::write(input.join(format!("in-{f}.csv")), text).unwrap();
    }
    expected.sort();

    // Sink side: the listing before the load fails with a 500, a block upload is refused
    // with 503 and Retry-After: 1, a block list commit with 429 and Retry-After: 2.
    faults.answer("GET", 0, 500, None);
    faults.answer("PUT", 1, 503, Some(1));
    faults.answer("PUT", 4, 429, Some(2));
    let started = std::time::Instant::now();
    let report = run_job_with(
        &format!(
            r#"{{"name": "throttled", "source": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}},
                "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "out/", "format": {{"type": "csv"}}}}}}"#,
            js(&input)
        ),
        &conns,
    );
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    assert_eq!(faults.answered(), 3, "every planned fault was met");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(3),
        "the retries waited the 1 s and 2 s the service asked for: {:?}",
        started.elapsed()
    );
    // The blobs, read straight from Azurite, hold every input row once.
    let mut rows: Vec<String> = az
        .list(&container, "out")
        .iter()
        .filter(|b| b.ends_with(".csv"))
        .flat_map(|b| {
            String::from_utf8(az.get(&container, b))
                .unwrap()
                .lines()
                .skip(1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    assert_eq!(rows, expected);

    // Source side: reads answered 503 with Retry-After: 1 are retried too.
    faults.answer("GET", 1, 503, Some(1));
    faults.answer("GET", 2, 503, Some(1));
    let back = dir.path().join("back.csv");
    let report = run_job_with(
        &format!(
            r#"{{"name": "throttled-back", "source": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "out/", "format": {{"type": "csv"}}}},
                "sink": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}}}}"#,
            js(&back)
        ),
        &conns,
    );
    assert_eq!(report.status, JobStatus::Succeeded, "{report}");
    assert_eq!(faults.answered(), 5);
    let mut rows: Vec<String> = std::fs::read_to_string(&back)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect();
    rows.sort();
    assert_eq!(rows, expected);
}

#[test]
fn blob_connections_reset_or_closed_midway_are_retried() {
    use crate::support::proxy::{Direction, Fault, Proxy};
    let az = azurite();
    let container = az.container("tcpfaults");
    let proxy = Proxy::start(([127, 0, 0, 1], az.blob_port).into());
    let conns = format!(
        r#"{{"az": {}}}"#,
        az.connection().replace(
            &az.endpoint(),
            &format!("http://127.0.0.1:{}/{ACCOUNT}", proxy.port())
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    write_csv(&csv, 60_000);
    let expected = sorted_rows(&[csv_rows(60_000)]);
    for (name, fault) in [("reset", Fault::Reset), ("closed", Fault::HalfClose)] {
        // An upload's connection fails after 1 MB on the way to the service: the block is
        // sent again.
        let before = proxy.faulted();
        proxy.fault_after(fault, Direction::ToServer, 1_000_000, true);
        let report = run_job_with(
            &format!(
                r#"{{"name": "up-{name}", "source": {{"type": "file", "path": {}, "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                    "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "{name}/", "format": {{"type": "csv"}}, "block_size": "1MiB"}}}}"#,
                js(&csv)
            ),
            &conns,
        );
        assert_eq!(report.status, JobStatus::Succeeded, "{name}: {report}");
        assert_eq!(
            proxy.faulted(),
            before + 1,
            "{name}: the upload's fault happened"
        );
        // A download's connection fails after 1 MB on the way back: the read is retried.
        proxy.fault_after(fault, Direction::FromServer, 1_000_000, true);
        let out = dir.path().join(format!("{name}.parquet"));
        let report = run_job_with(
            &format!(
                r#"{{"name": "down-{name}", "source": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "{name}/", "format": {{"type": "csv", "schema": {SCHEMA}}}}},
                    "sink": {{"type": "file", "path": {}, "format": {{"type": "parquet"}}}}}}"#,
                js(&out)
            ),
            &conns,
        );
        assert_eq!(report.status, JobStatus::Succeeded, "{name}: {report}");
        assert_eq!(
            proxy.faulted(),
            before + 2,
            "{name}: the download's fault happened"
        );
        assert_eq!(sorted_rows(&read_parquet(&out)), expected, "{name}");
    }
}
