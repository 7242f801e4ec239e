//! Publishing a directory of part files is all or nothing for a reader: ferry is crashed
//! (`FERRY_TEST_CRASH_AT`, an abort where a `kill -9` could land) between every pair of its
//! publish steps, and what a reader sees after each crash is the earlier run's whole set or
//! the new run's whole set, never a mix; the next run cleans up what the crash left.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::support::azurite::azurite;
use crate::support::{ferry, js, tree};

/// What a reader sees in the output directory: every file by name, with its bytes.
type Listing = BTreeMap<String, Vec<u8>>;

/// Checks what a reader sees after a crash at a step, given both runs' rows.
type AfterCrash<'a> = &'a dyn Fn(&str, &Listing, &[String], &[String]);

const MANIFEST: &str = "_ferry_manifest.json";

/// Writes run `run`'s input, `files` CSV files of 500 rows each (`id,run`), into `dir`
/// (replacing what was there); returns its rows as the CSV sink writes them, sorted.
fn input(dir: &Path, run: &str, files: usize) -> Vec<String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut rows = Vec::new();
    for f in 0..files {
        let mut text = String::from("id,run\n");
        for i in 0..500 {
            let row = format!("{},{run}", f * 500 + i);
            text.push_str(&row);
            text.push('\n');
            rows.push(row);
        }
        std::fs::write(dir.join(format!("in-{f}.csv")), text).unwrap();
    }
    rows.sort();
    rows
}

/// The data rows of the CSV files among `files`, sorted (headers dropped).
fn rows_of<'a>(files: impl Iterator<Item = &'a Vec<u8>>) -> Vec<String> {
    let mut rows: Vec<String> = files
        .flat_map(|bytes| {
            String::from_utf8(bytes.clone())
                .unwrap()
                .lines()
                .filter(|l| *l != "id,run")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort();
    rows
}

/// Rows of every `*.csv` file a glob of the directory finds.
fn globbed(listing: &Listing) -> Vec<String> {
    rows_of(
        listing
            .iter()
            .filter(|(name, _)| name.ends_with(".csv"))
            .map(|(_, b)| b),
    )
}

/// Rows of the files the manifest lists, after checking that each is there with the size the
/// manifest gives; `None` without a manifest.
fn listed(listing: &Listing) -> Option<Vec<String>> {
    let manifest: Value = serde_json::from_slice(listing.get(MANIFEST)?).unwrap();
    assert_eq!(manifest["format"], "ferry-manifest/1", "{manifest}");
    let files = manifest["files"].as_array().unwrap();
    assert!(!files.is_empty(), "{manifest}");
    let mut bytes = Vec::new();
    for file in files {
        let name = file["name"].as_str().unwrap();
        let found = listing
            .get(name)
            .unwrap_or_else(|| panic!("the manifest lists {name}, which is missing: {manifest}"));
        assert_eq!(
            found.len() as u64,
            file["bytes"].as_u64().unwrap(),
            "{name}: size differs from the manifest"
        );
        bytes.push(found);
    }
    Some(rows_of(bytes.into_iter()))
}

/// Every file under `dir` by relative name (what a recursive reader can reach).
fn local_listing(dir: &Path) -> Listing {
    tree(dir)
        .into_iter()
        .filter(|p| !p.ends_with('/'))
        .map(|p| {
            let bytes = std::fs::read(dir.join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

struct Case<'a> {
    tmp: &'a Path,
    job: std::path::PathBuf,
    connections: Option<std::path::PathBuf>,
}

impl<'a> Case<'a> {
    /// A job `name` that copies the CSV files of `tmp/in/` into directory `out` as CSV
    /// part files.
    fn local(tmp: &'a Path, name: &str, out: &Path) -> Case<'a> {
        let job = tmp.join("job.json");
        std::fs::write(
            &job,
            format!(
                r#"{{"name": "{name}", "source": {{"type": "file", "path": "{}/", "format": {{"type": "csv"}}}}, "sink": {{"type": "file", "path": "{}/", "format": {{"type": "csv"}}}}}}"#,
                tmp.join("in").display(),
                out.display()
            ),
        )
        .unwrap();
        Case {
            tmp,
            job,
            connections: None,
        }
    }
}

impl Case<'_> {
    /// Runs the job; `crash_at` crashes ferry at that publish step.
    fn run(&self, crash_at: Option<&str>) -> std::process::Output {
        let mut command = ferry();
        command.arg("copy").arg(&self.job);
        if let Some(c) = &self.connections {
            command.arg("--connections").arg(c);
        }
        if let Some(step) = crash_at {
            command.env("FERRY_TEST_CRASH_AT", step);
        }
        command.output().unwrap()
    }

    fn run_ok(&self) {
        let out = self.run(None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn crash(&self, step: &str) {
        let out = self.run(Some(step));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(&format!("FERRY_TEST_CRASH_AT={step}")),
            "ferry did not reach publish step {step}: {stderr}"
        );
    }

    fn input(&self, run: &str, files: usize) -> Vec<String> {
        input(&self.tmp.join("in"), run, files)
    }
}

/// Runs the crash loop: for each step, publish run one (three part files), then crash run
/// two (two part files) at the step and `check` what a reader sees; then run two again and
/// check that it published its set whole and cleaned up (`foreign` files are not ferry's).
fn crash_between_steps(
    case: &Case,
    steps: &[&str],
    listing: &dyn Fn() -> Listing,
    check: AfterCrash,
    foreign: &[&str],
) {
    for step in steps {
        let first = case.input("one", 3);
        case.run_ok();
        let before = listing();
        assert_eq!(globbed(&before), first, "run one published");
        assert_eq!(listed(&before).as_deref(), Some(&first[..]));

        let second = case.input("two", 2);
        case.crash(step);
        check(step, &listing(), &first, &second);

        case.run_ok();
        let after = listing();
        assert_eq!(globbed(&after), second, "after the re-run ({step})");
        assert_eq!(listed(&after).as_deref(), Some(&second[..]));
        let mut names: Vec<&str> = after.keys().map(String::as_str).collect();
        names.retain(|n| !foreign.contains(n));
        assert_eq!(
            names,
            [MANIFEST, "part-00000.csv", "part-00001.csv"],
            "the stale part-00002 and every leftover are gone ({step})"
        );
    }
}

#[test]
fn a_crash_while_a_directory_is_published_shows_the_old_set_or_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let case = Case::local(tmp.path(), "parts", &out);
    // The directory holds only ferry's files: the set is built beside it and swapped in.
    crash_between_steps(
        &case,
        &[
            "publish:output-0",
            "publish:output-1",
            "publish:staged",
            "publish:listed",
            "publish:exchanged",
        ],
        &|| local_listing(&out),
        &|step, seen, first, second| {
            let expected = if step == "publish:exchanged" {
                second
            } else {
                first
            };
            assert_eq!(globbed(seen), expected, "a glob after a crash at {step}");
            assert_eq!(
                listed(seen).as_deref(),
                Some(expected),
                "the manifest after a crash at {step}"
            );
            // The crash leaves only the hidden sibling beside the directory, which the next
            // run removes.
            let beside: Vec<String> = tree(tmp.path())
                .into_iter()
                .filter(|p| !p.contains('/') || p.split('/').nth(1) == Some(""))
                .collect();
            assert!(
                beside
                    .iter()
                    .all(|p| ["in/", "out/", "job.json", ".out._ferry_tmp_parts/"]
                        .contains(&p.as_str())),
                "{step}: {beside:?}"
            );
        },
        &[],
    );
    assert!(
        !tmp.path().join(".out._ferry_tmp_parts").exists(),
        "the sibling is gone after a good run"
    );
}

#[test]
fn a_crash_while_a_shared_directory_is_published_never_lists_a_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A file that is not ferry's: the directory cannot be swapped, so the files are published
    // one by one and the manifest, removed first and written last, is what a reader trusts.
    std::fs::write(out.join("notes.txt"), "kept").unwrap();
    let case = Case::local(tmp.path(), "shared", &out);
    crash_between_steps(
        &case,
        &MANIFEST_STEPS,
        &|| local_listing(&out),
        &|step, seen, _first, second| manifest_protocol_holds(step, seen, second),
        &["notes.txt"],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "kept"
    );
    assert!(!tmp.path().join(".out._ferry_tmp_shared").exists());
}

const MANIFEST_STEPS: [&str; 5] = [
    "publish:unlisted",
    "publish:output-0",
    "publish:output-1",
    "publish:stale-removed",
    "publish:listed",
];

/// Under the manifest protocol, a crash before the last step leaves no manifest (a reader
/// that trusts it reads nothing), and one after it a manifest of the whole new set.
fn manifest_protocol_holds(step: &str, seen: &Listing, second: &[String]) {
    match listed(seen) {
        None => assert_ne!(step, "publish:listed", "the manifest was written"),
        Some(rows) => {
            assert_eq!(
                step, "publish:listed",
                "a manifest is listed early: {seen:?}"
            );
            assert_eq!(rows, second, "the manifest lists the new set");
        }
    }
}

#[test]
fn a_crash_while_blobs_are_published_never_lists_a_mix() {
    let az = azurite();
    let container = az.container("publishcrash");
    let tmp = tempfile::tempdir().unwrap();
    let connections = tmp.path().join("connections.json");
    std::fs::write(&connections, format!(r#"{{"az": {}}}"#, az.connection())).unwrap();
    let job = tmp.path().join("job.json");
    std::fs::write(
        &job,
        format!(
            r#"{{"name": "blobs", "source": {{"type": "file", "path": {}, "format": {{"type": "csv"}}}}, "sink": {{"type": "azure_blob", "connection": "az", "container": "{container}", "path": "set/", "format": {{"type": "csv"}}}}}}"#,
            js(&tmp.path().join("in/"))
        ),
    )
    .unwrap();
    let case = Case {
        tmp: tmp.path(),
        job,
        connections: Some(connections),
    };
    let listing = || -> Listing {
        az.list(&container, "set")
            .into_iter()
            .map(|name| {
                let bytes = az.get(&container, &name);
                (name.trim_start_matches("set/").to_string(), bytes)
            })
            .collect()
    };
    crash_between_steps(
        &case,
        &MANIFEST_STEPS,
        &listing,
        &|step, seen, _first, second| manifest_protocol_holds(step, seen, second),
        &[],
    );
}

#[test]
fn a_destination_that_is_a_link_stays_a_link() {
    // Operators point data directories at other disks with links: ferry must publish into
    // the directory the link names, not replace the link with a directory of its own.
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("disk2/orders");
    std::fs::create_dir_all(&real).unwrap();
    let link = tmp.path().join("out");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let case = Case::local(tmp.path(), "linked", &link);
    for (run, files) in [("one", 3), ("two", 2)] {
        let rows = case.input(run, files);
        case.run_ok();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "the link is still a link after run {run}"
        );
        let seen = local_listing(&real);
        assert_eq!(globbed(&seen), rows, "run {run}");
        assert_eq!(listed(&seen).as_deref(), Some(&rows[..]), "run {run}");
    }
    assert_eq!(
        tree(&real),
        [MANIFEST, "part-00000.csv", "part-00001.csv"],
        "the stale part is gone"
    );
}
