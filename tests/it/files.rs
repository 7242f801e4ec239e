//! Copies between real files: formats, round trips, hard CSV, splitting, atomic output.

use std::io::Write;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::DataType;
use tempfile::TempDir;

use crate::support::{assert_batches_end_by_bytes, js, read_parquet, run_job, run_ok, tree};

fn job(name: &str, source: String, sink: String, extra: &str) -> String {
    format!(r#"{{"name":"{name}","source":{source},"sink":{sink}{extra}}}"#)
}

fn file(path: &Path, format: &str) -> String {
    format!(r#"{{"type":"file","path":{},"format":{format}}}"#, js(path))
}

fn dir(path: &Path, format: &str) -> String {
    let mut p = js(path);
    p.insert(p.len() - 1, '/');
    format!(r#"{{"type":"file","path":{p},"format":{format}}}"#)
}

const CSV: &str = r#"{"type":"csv"}"#;
const PARQUET: &str = r#"{"type":"parquet"}"#;

/// A CSV with every hard case: BOM, CRLF, quoted delimiters, quotes and newlines, empty
/// string vs NULL, unicode, and a very long field.
fn hard_csv() -> Vec<u8> {
    let long = "x".repeat(3 << 20);
    let mut text = Vec::new();
    text.extend_from_slice(b"\xEF\xBB\xBF");
    text.extend_from_slice(b"id,name,amount,day\r\n");
    text.extend_from_slice(b"1,\"Smith, \"\"J\"\"\",1.5,2024-01-31\r\n");
    text.extend_from_slice(b"2,\"\",,2024-02-29\r\n");
    text.extend_from_slice(b"3,,2.25,\r\n");
    text.extend_from_slice("4,\"multi\r\nline ünïcødé 你好 🚀\",-3,2023-12-01\r\n".as_bytes());
    text.extend_from_slice(format!("5,{long},0,2000-01-01\r\n").as_bytes());
    text.extend_from_slice(b"6,last,7.75,1999-12-31");
    text
}

#[test]
fn hard_csv_round_trips_through_parquet() {
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("hard.csv");
    std::fs::write(&input, hard_csv()).unwrap();
    let parquet = tmp.path().join("hard.parquet");
    let report = run_ok(&job(
        "hard-in",
        file(&input, CSV),
        file(&parquet, PARQUET),
        "",
    ));
    assert_eq!(
        (report.rows_read, report.rows_written, report.rows_skipped),
        (6, 6, 0)
    );

    let batches = read_parquet(&parquet);
    let schema = batches[0].schema();
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    assert_eq!(
        types,
        [
            &DataType::Int64,
            &DataType::Utf8,
            &DataType::Float64,
            &DataType::Date32
        ]
    );
    let names = batches[0].column(1).as_string::<i32>();
    assert_eq!(names.value(0), "Smith, \"J\"");
    assert!(
        !arrow::array::Array::is_null(names, 1) && names.value(1).is_empty(),
        "quoted empty stays an empty string"
    );
    assert!(
        arrow::array::Array::is_null(names, 2),
        "unquoted empty is NULL"
    );
    assert_eq!(names.value(3), "multi\r\nline ünïcødé 你好 🚀");
    assert_eq!(names.value(4).len(), 3 << 20);

    // Back to CSV and once more to Parquet: the same content.
    let csv_again = tmp.path().join("again.csv");
    run_ok(&job(
        "hard-out",
        file(&parquet, PARQUET),
        file(&csv_again, CSV),
        "",
    ));
    let parquet_again = tmp.path().join("again.parquet");
    run_ok(&job(
        "hard-in2",
        file(&csv_again, CSV),
        file(&parquet_again, PARQUET),
        "",
    ));
    assert_eq!(read_parquet(&parquet_again), batches);
}

#[test]
fn jsonl_round_trips_through_arrow_ipc() {
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for i in 0..5000 {
        let note = if i % 3 == 0 {
            "null".to_string()
        } else {
            format!("\"note {i}\"")
        };
        writeln!(
            f,
            r#"{{"id":{i},"name":"n{i} \"q\"","score":{}.5,"flag":{},"note":{note}}}"#,
            i % 7,
            i % 2 == 0
        )
        .unwrap();
    }
    drop(f);
    let ipc = tmp.path().join("out.arrow");
    run_ok(&job(
        "j2i",
        file(&input, r#"{"type":"jsonl"}"#),
        file(&ipc, r#"{"type":"arrow_ipc"}"#),
        r#","batch_rows":700"#,
    ));
    let back = tmp.path().join("back.jsonl");
    let report = run_ok(&job(
        "i2j",
        file(&ipc, r#"{"type":"arrow_ipc"}"#),
        file(&back, r#"{"type":"jsonl"}"#),
        "",
    ));
    assert_eq!(report.rows_written, 5000);
    let again = tmp.path().join("again.arrow");
    run_ok(&job(
        "j2i2",
        file(&back, r#"{"type":"jsonl"}"#),
        file(&again, r#"{"type":"arrow_ipc"}"#),
        "",
    ));
    // Expected values come from the input, read with serde_json (not ferry): every object,
    // with null members left out (ferry's JSON lines omit them), in any order.
    let objects = |p: &Path| {
        let mut all: Vec<String> = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(l).unwrap();
                v.retain(|_, x| !x.is_null());
                serde_json::Value::Object(v).to_string()
            })
            .collect();
        all.sort();
        all
    };
    let expected = objects(&input);
    assert_eq!(expected.len(), 5000);
    assert_eq!(objects(&back), expected, "JSON lines -> IPC -> JSON lines");
    // The IPC files, read with arrow's own reader, hold the input's values: ids, names with
    // their quotes, scores, flags and the notes' NULLs.
    for path in [&ipc, &again] {
        let reader =
            arrow::ipc::reader::FileReader::try_new(std::fs::File::open(path).unwrap(), None)
                .unwrap();
        let mut rows: Vec<String> = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let col = |name: &str| batch.column(batch.schema().index_of(name).unwrap()).clone();
            let (id, name, score, flag, note) = (
                col("id"),
                col("name"),
                col("score"),
                col("flag"),
                col("note"),
            );
            for r in 0..batch.num_rows() {
                let text = |a: &arrow::array::ArrayRef| {
                    arrow::util::display::array_value_to_string(a, r).unwrap()
                };
                let note = if note.is_null(r) {
                    "NULL".into()
                } else {
                    text(&note)
                };
                rows.push(format!(
                    "{}|{}|{}|{}|{note}",
                    text(&id),
                    text(&name),
                    text(&score),
                    text(&flag)
                ));
            }
        }
        rows.sort();
        let mut wanted: Vec<String> = (0..5000)
            .map(|i| {
                let note = if i % 3 == 0 {
                    "NULL".to_string()
                } else {
                    format!("note {i}")
                };
                format!("{i}|n{i} \"q\"|{}.5|{}|{note}", i % 7, i % 2 == 0)
            })
            .collect();
        wanted.sort();
        assert_eq!(rows, wanted, "{}", path.display());
    }
}

#[test]
fn gzip_and_zstd_text_round_trip() {
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("in.csv");
    let rows: String = (0..20_000)
        .map(|i| format!("{i},name {i},{}\n", i as f64 / 4.0))
        .collect();
    std::fs::write(&input, format!("id,name,v\n{rows}")).unwrap();
    for (ext, codec) in [("gz", "gzip"), ("zst", "zstd")] {
        let packed = tmp.path().join(format!("packed.csv.{ext}"));
        let fmt = format!(r#"{{"type":"csv","compression":"{codec}"}}"#);
        run_ok(&job("pack", file(&input, CSV), file(&packed, &fmt), ""));
        let raw = std::fs::read(&packed).unwrap();
        assert!(
            raw.len() < 400_000,
            "{codec} output is compressed: {} bytes",
            raw.len()
        );
        // Compression is detected from the name when reading.
        let out = tmp.path().join(format!("from-{ext}.parquet"));
        let report = run_ok(&job("unpack", file(&packed, CSV), file(&out, PARQUET), ""));
        assert_eq!(report.rows_written, 20_000);
    }
    assert_eq!(
        read_parquet(&tmp.path().join("from-gz.parquet")),
        read_parquet(&tmp.path().join("from-zst.parquet"))
    );
    // Without `compression`, the name decides when writing too, as when reading.
    for (name, format) in [
        ("named.csv.gz", CSV),
        ("named.jsonl.gz", r#"{"type":"jsonl"}"#),
        ("named.csv.zst", CSV),
        ("named.jsonl.zst", r#"{"type":"jsonl"}"#),
    ] {
        let packed = tmp.path().join(name);
        run_ok(&job("named", file(&input, CSV), file(&packed, format), ""));
        let raw = std::fs::read(&packed).unwrap();
        if name.ends_with(".gz") {
            // An independent decoder reads it whole.
            let mut text = String::new();
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&raw[..]), &mut text)
                .unwrap_or_else(|e| panic!("{name} is not gzip: {e}"));
            assert!(text.contains("name 19999"), "{name}");
        } else {
            assert_eq!(&raw[..4], [0x28, 0xb5, 0x2f, 0xfd], "{name} is zstd");
        }
        let back = tmp.path().join(format!("{name}.parquet"));
        let report = run_ok(&job(
            "back",
            file(&packed, format),
            file(&back, PARQUET),
            "",
        ));
        assert_eq!(report.rows_written, 20_000, "{name}");
    }
}

#[test]
fn parallel_reads_of_one_big_csv_equal_a_serial_read() {
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("big.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    writeln!(f, "id,note,value").unwrap();
    let mut i = 0u64;
    // ~42 MiB, with quoted newlines everywhere so that naive splitting would break records.
    while i < 700_000 {
        writeln!(
            f,
            "{i},\"line one of a longer note\nline, two {i}\",{}",
            i * 3
        )
        .unwrap();
        i += 1;
    }
    drop(f);
    assert!(std::fs::metadata(&input).unwrap().len() > 32 << 20);
    let serial = tmp.path().join("serial/");
    let parallel = tmp.path().join("parallel/");
    let s = run_ok(&job(
        "serial",
        file(&input, CSV),
        dir(&serial, PARQUET),
        r#","parallel_copies":1"#,
    ));
    let p = run_ok(&job(
        "parallel",
        file(&input, CSV),
        dir(&parallel, PARQUET),
        r#","parallel_copies":4"#,
    ));
    assert_eq!(s.partitions, 1, "one reader reads the file whole: {s}");
    assert!(p.partitions >= 4, "{p}");
    // Partition outputs in order are exactly the serial read, row for row.
    let concat = |b: Vec<arrow::record_batch::RecordBatch>| {
        arrow::compute::concat_batches(&b[0].schema(), &b).unwrap()
    };
    assert_eq!(
        concat(read_parquet(&serial)),
        concat(read_parquet(&parallel))
    );
    assert_eq!(p.rows_written, 700_000);
}

#[test]
fn a_bad_row_fails_with_its_location_and_leaves_no_output() {
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("bad.csv");
    let mut text = String::from("id,amount\n");
    for i in 0..50_000 {
        text.push_str(&format!("{i},{i}.5\n"));
    }
    text.push_str("50000,twelve\n");
    std::fs::write(&input, &text).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "user file").unwrap();
    let target = out.join("bad.parquet");
    let report = run_job(&job(
        "bad",
        file(&input, CSV),
        file(&target, PARQUET),
        r#","batch_rows":1000"#,
    ));
    let error = report.error.expect("the job fails");
    assert_eq!(error.exit_code, 1);
    assert!(error.message.contains("bad.csv:50002"), "{}", error.message);
    assert!(
        error
            .message
            .contains("column `amount`: `twelve` is not a number"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("it was inferred"),
        "{}",
        error.message
    );
    // With the type declared, the hint does not ask to declare it.
    let declared = r#"{"type":"csv","schema":[{"name":"id","type":"int64"},{"name":"amount","type":"float64"}]}"#;
    let report = run_job(&job(
        "bad",
        file(&input, declared),
        file(&target, PARQUET),
        r#","batch_rows":1000"#,
    ));
    let error = report.error.expect("the job fails");
    assert!(
        error
            .message
            .contains("change the column's type in format.schema")
            && !error.message.contains("declare"),
        "{}",
        error.message
    );
    assert_eq!(
        tree(&out),
        ["keep.txt"],
        "no partial output, no temporary files"
    );
    // A destination the failed run had to create is gone too, and an existing one stays.
    let fresh = tmp.path().join("fresh");
    let report = run_job(&job(
        "bad",
        file(&input, CSV),
        dir(&fresh.join("new/deep"), PARQUET),
        r#","batch_rows":1000"#,
    ));
    assert!(report.error.is_some());
    assert!(
        !fresh.exists(),
        "the directories the run created are removed"
    );
    assert!(out.is_dir());

    // With skipping, the row goes to the fault log and the report.
    let log = tmp.path().join("faults.jsonl");
    let extra = format!(
        r#","fault_tolerance":{{"skip_incompatible_rows":true,"log_path":{}}}"#,
        js(&log)
    );
    let report = run_ok(&job(
        "bad",
        file(&input, CSV),
        file(&target, PARQUET),
        &extra,
    ));
    assert_eq!(
        (report.rows_read, report.rows_written, report.rows_skipped),
        (50_001, 50_000, 1)
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("bad.csv:50002") && logged.contains("twelve"),
        "{logged}"
    );
    assert_eq!(tree(&out), ["bad.parquet", "keep.txt"]);
}

#[test]
fn directories_globs_and_reruns() {
    let tmp = TempDir::new().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    for (name, rows) in [
        ("a.csv", 10),
        ("b.csv", 20),
        ("sub/c.csv", 30),
        ("_ignored.csv", 5),
        (".hidden.csv", 5),
    ] {
        let body: String = (0..rows).map(|i| format!("{i},{name}\n")).collect();
        std::fs::write(input.join(name), format!("n,file\n{body}")).unwrap();
    }
    let out = tmp.path().join("out/");
    let report = run_ok(&job("dir", file(&input, CSV), dir(&out, PARQUET), ""));
    assert_eq!(
        report.rows_written, 60,
        "hidden and _ files are skipped: {report}"
    );
    assert_eq!(
        tree(&out),
        [
            "_ferry_manifest.json",
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet"
        ]
    );

    let pattern = input.join("*.csv");
    let report = run_ok(&job("dir", file(&pattern, CSV), dir(&out, PARQUET), ""));
    assert_eq!(
        report.rows_written, 30,
        "the glob does not descend into sub/"
    );
    assert_eq!(
        tree(&out),
        [
            "_ferry_manifest.json",
            "part-00000.parquet",
            "part-00001.parquet"
        ],
        "the re-run replaced the earlier parts"
    );
    assert_eq!(report.removed.len(), 1);

    let missing = input.join("nothing-*.csv");
    let report = run_job(&job("dir", file(&missing, CSV), dir(&out, PARQUET), ""));
    let error = report.error.expect("no input is an error");
    assert_eq!(error.exit_code, 2);
    assert!(
        error.message.contains("no input files match"),
        "{}",
        error.message
    );
    assert_eq!(tree(&out).len(), 3, "the failed job touched nothing");

    let report = run_job(&job(
        "dir",
        file(&input, CSV),
        r#"{"type":"file","path":"/proc/ferry-cannot-write/","format":{"type":"parquet"}}"#.into(),
        "",
    ));
    let error = report.error.expect("unwritable destination");
    assert!(
        error
            .message
            .contains("cannot write to /proc/ferry-cannot-write"),
        "{}",
        error.message
    );

    let strict = format!(
        r#"{{"type":"file","path":{},"format":{{"type":"parquet"}},"mode":"error_if_exists"}}"#,
        js(&tmp.path().join("out/part-00000.parquet"))
    );
    let report = run_job(&job("strict", file(&input, CSV), strict, ""));
    assert!(
        report
            .error
            .expect("exists")
            .message
            .contains("already exists")
    );
}

#[test]
fn tpch_generator_to_csv_and_parquet_agree() {
    let tmp = TempDir::new().unwrap();
    let csv = tmp.path().join("orders.csv");
    let tpch = r#"{"type":"tpch","table":"orders","scale_factor":0.01}"#.to_string();
    let a = run_ok(&job("gen-csv", tpch.clone(), file(&csv, CSV), ""));
    let parquet = tmp.path().join("orders.parquet");
    let b = run_ok(&job("gen-pq", tpch, file(&parquet, PARQUET), ""));
    assert_eq!(a.rows_written, 15_000);
    assert_eq!(b.rows_written, 15_000);
    let from_csv = tmp.path().join("from-csv.parquet");
    run_ok(&job(
        "csv-pq",
        file(&csv, CSV),
        file(&from_csv, PARQUET),
        "",
    ));
    // Same rows; CSV inference reads the decimals as float64, so compare the keys.
    let keys = |p: &Path| {
        let mut k: Vec<i64> = read_parquet(p)
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&parquet), keys(&from_csv));
}

#[test]
fn a_small_budget_ends_row_groups_early_and_the_report_says_so() {
    let tmp = TempDir::new().unwrap();
    let tpch = r#"{"type":"tpch","table":"orders","scale_factor":0.1}"#.to_string();
    let row_groups = |p: &Path| -> Vec<i64> {
        let file = std::fs::File::open(p).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        let meta = reader.metadata();
        meta.row_groups().iter().map(|g| g.num_rows()).collect()
    };
    let early = |report: &ferry_engine::JobReport| {
        report
            .notes
            .iter()
            .any(|n| n.contains("row groups ended early"))
    };
    // The default budget: one row group of all 150,000 rows, no note.
    let roomy = tmp.path().join("roomy.parquet");
    let report = run_ok(&job("roomy", tpch.clone(), file(&roomy, PARQUET), ""));
    assert_eq!(row_groups(&roomy), [150_000], "{report}");
    assert!(!early(&report), "{:?}", report.notes);
    // A 4 MiB budget: the writer may hold 1 MiB, so row groups end early, and say so.
    let tight = tmp.path().join("tight.parquet");
    let report = run_ok(&job(
        "tight",
        tpch,
        file(&tight, PARQUET),
        r#","parallel_copies":1,"max_buffer_bytes":"4MiB""#,
    ));
    let groups = row_groups(&tight);
    assert!(groups.len() > 2, "{groups:?}");
    assert_eq!(groups.iter().sum::<i64>(), 150_000);
    assert!(early(&report), "{:?}", report.notes);
}

#[test]
fn a_budget_too_small_for_the_batches_is_advised_to_grow() {
    // TPC-H lineitem in batches of 65,536 rows (about 10 MB each) through a 1 MiB budget, four
    // partitions at once: each batch takes the whole budget, so the readers wait for it in turn
    // (inside the source, which charges what it builds ahead) while the encoders idle.
    let tmp = TempDir::new().unwrap();
    let tpch = r#"{"type":"tpch","table":"lineitem","scale_factor":0.1}"#.to_string();
    let out = tmp.path().join("starved");
    let report = run_ok(&job(
        "starved",
        tpch,
        dir(&out, PARQUET),
        r#","parallel_copies":4,"batch_rows":65536,"max_buffer_bytes":"1MiB""#,
    ));
    // TPC-H's lineitem at scale factor 0.1 has 600,572 rows.
    let rows: usize = read_parquet(&out).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 600_572, "{report}");
    assert!(
        report.advice.len() == 1
            && report.advice[0].starts_with("budget-starved")
            && report.advice[0].contains("1MiB"),
        "{report}"
    );
}

/// A 1 MiB tmpfs mounted at `dir` for the test (unmounted when dropped), or `None` with the
/// reason printed when this user may not mount (the fault needs root or a user namespace).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path) -> Option<SmallDisk> {
        Self::mount_sized(dir, "1m")
    }

    fn mount_sized(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: a full disk needs a small tmpfs and this user cannot mount one: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: a full disk needs `mount`: {e}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_fails_naming_the_path_and_leaves_nothing() {
    let tmp = TempDir::new().unwrap();
    let full = tmp.path().join("full");
    let Some(_disk) = SmallDisk::mount(&full) else {
        return;
    };
    // About 35 MB of CSV (and several MB of compressed interim files) into 1 MiB: as one
    // file, as part files, and through local staging.
    let source = r#"{"type":"tpch","table":"lineitem","scale_factor":0.05}"#;
    let cases = [
        ("one", file(&full.join("one.csv"), CSV), String::new()),
        ("parts", dir(&full.join("parts"), CSV), String::new()),
        (
            "staged",
            file(&tmp.path().join("staged.csv"), CSV),
            format!(r#", "staging": {{"path": {}}}"#, js(&full.join("staging"))),
        ),
    ];
    for (name, sink, extra) in cases {
        let reports = crate::support::run_phases(&job(name, source.into(), sink, &extra), "{}");
        let error = reports
            .iter()
            .find_map(|r| r.error.as_ref())
            .unwrap_or_else(|| panic!("{name}: {reports:?}"));
        assert!(
            error.message.contains("No space left on device")
                && error.message.contains(&full.display().to_string()),
            "{name}: the error says the disk is full and names where: {}",
            error.message
        );
        // Only the (empty) staging area the job names may stay.
        let kept: &[&str] = if name == "staged" { &["staging/"] } else { &[] };
        assert_eq!(
            tree(&full),
            kept,
            "{name}: nothing published and no temporary file left"
        );
        assert!(!tmp.path().join("staged.csv").exists());
    }
}

#[test]
fn a_destination_that_is_a_mount_point_is_published_in_place() {
    // A directory that is a mount point cannot be swapped for another: the set is published
    // into it file by file under its manifest, twice (the second run replaces the first).
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("mounted");
    let Some(_disk) = SmallDisk::mount_sized(&out, "64m") else {
        return;
    };
    for (run, scale) in [("first", "0.001"), ("second", "0.002")] {
        let source =
            format!(r#"{{"type":"tpch","table":"orders","scale_factor":{scale},"partitions":2}}"#);
        let report = run_ok(&job("mounted", source, dir(&out, CSV), ""));
        assert_eq!(
            tree(&out),
            ["_ferry_manifest.json", "part-00000.csv", "part-00001.csv"],
            "{run}: {report}"
        );
        // orders has 1,500 rows per 0.001 of scale (tpchgen is deterministic); each part has
        // its header.
        let rows: usize = ["part-00000.csv", "part-00001.csv"]
            .iter()
            .map(|p| {
                std::fs::read_to_string(out.join(p))
                    .unwrap()
                    .lines()
                    .count()
                    - 1
            })
            .sum();
        let expected = if run == "first" { 1_500 } else { 3_000 };
        assert_eq!(rows, expected, "{run}");
    }
    assert!(
        !tmp.path().join(".mounted._ferry_tmp_mounted").exists(),
        "no sibling left beside the mount point"
    );
}

#[test]
fn wide_rows_end_batches_by_bytes_in_parquet_and_json_lines() {
    // 300 rows of 32 KiB each (9.4 MiB), read with a 12 MiB budget by one partition: batches
    // end at a sixth of the budget (2 MiB) of payload, not at the 8,192 rows of `batch_rows`.
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;

    const ROWS: usize = 300;
    const LIMIT: usize = 2 << 20;
    let payload = |i: usize| format!("{i:08}").repeat(4096);
    let tmp = TempDir::new().unwrap();
    let ids = Int64Array::from_iter_values(0..ROWS as i64);
    let payloads = StringArray::from_iter_values((0..ROWS).map(payload));
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(ids) as arrow::array::ArrayRef),
        ("payload", Arc::new(payloads) as arrow::array::ArrayRef),
    ])
    .unwrap();
    let parquet = tmp.path().join("wide.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let jsonl = tmp.path().join("wide.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    for i in 0..ROWS {
        writeln!(f, r#"{{"id":{i},"payload":"{}"}}"#, payload(i)).unwrap();
    }
    drop(f);

    for (input, format) in [
        (&parquet, r#"{"type":"parquet"}"#),
        (&jsonl, r#"{"type":"jsonl"}"#),
    ] {
        let out = tmp.path().join(format!("{}.arrow", input.display()));
        run_ok(&job(
            "wide",
            file(input, format),
            file(&out, r#"{"type":"arrow_ipc"}"#),
            r#","parallel_copies":1,"max_buffer_bytes":"12MiB""#,
        ));
        assert_batches_end_by_bytes(&out, ROWS, payload, LIMIT, format);
    }
}
