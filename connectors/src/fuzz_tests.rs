//! Property tests of everything ferry parses from outside: job files, connections files,
//! channel messages, table names, authentication keys. Arbitrary text and mutations of
//! valid documents give an error or a value, never a panic.
//!
//! Each property runs `FERRY_FUZZ_CASES` cases (256 by default, as in the test command);
//! `scripts/fuzz.sh` runs them long.

use proptest::prelude::*;

/// Valid documents to mutate: the example jobs and connections, and channel messages.
const JOBS: [&str; 4] = [
    include_str!("../../examples/lineitem-csv-to-parquet.json"),
    include_str!("../../examples/postgres-orders-to-parquet.json"),
    include_str!("../../examples/sqlserver-orders-to-blob.json"),
    include_str!("../../examples/blob-binary-upload.json"),
];
const CONNECTIONS: &str = include_str!("../../examples/connections.json");
const ENVELOPE: &str = r#"{"id": "0000000000001-a-job", "attempt": 1, "job": {"name": "j", "source": {"type": "tpch", "table": "nation"}, "sink": {"type": "file", "path": "x.csv", "format": {"type": "csv"}}}, "signature": {"runtime": "rt-01", "expires_ms": 1, "signature": "AAAA"}}"#;

/// Cases per property: `FERRY_FUZZ_CASES`, or 256 (the test command).
pub(crate) fn cases() -> u32 {
    std::env::var("FERRY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// One edit of a document.
#[derive(Debug, Clone)]
enum Edit {
    /// Remove `len` characters at a position (a fraction of the length, in thousandths).
    Delete(u16, u8),
    /// Insert text at a position.
    Insert(u16, String),
    /// Repeat a stretch.
    Repeat(u16, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0u16..1000, 1u8..40).prop_map(|(at, n)| Edit::Delete(at, n)),
        (
            0u16..1000,
            prop_oneof![
                "[{}\\[\\]\",:0-9a-z\\\\ ]{0,8}".prop_map(|s| s),
                Just("\u{0}".to_string()),
                Just("\u{feff}".to_string()),
                Just("1e999999".to_string()),
                Just("-0".to_string()),
                Just("\"\\ud800\"".to_string()),
                any::<String>(),
            ]
        )
            .prop_map(|(at, s)| Edit::Insert(at, s)),
        (0u16..1000, 1u8..60).prop_map(|(at, n)| Edit::Repeat(at, n)),
    ]
}

/// `doc` with `edits` applied (positions on character boundaries).
fn mutate(doc: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = doc.chars().collect();
    for e in edits {
        let at = |thousandths: u16, len: usize| len * thousandths as usize / 1000;
        match e {
            Edit::Delete(p, n) => {
                let start = at(*p, chars.len());
                let end = (start + *n as usize).min(chars.len());
                chars.drain(start..end);
            }
            Edit::Insert(p, s) => {
                let start = at(*p, chars.len());
                chars.splice(start..start, s.chars());
            }
            Edit::Repeat(p, n) => {
                let start = at(*p, chars.len());
                let end = (start + *n as usize).min(chars.len());
                let copy: Vec<char> = chars[start..end].to_vec();
                chars.splice(end..end, copy);
            }
        }
    }
    chars.into_iter().collect()
}

fn no_panic<T>(what: &str, text: &str, f: impl FnOnce() -> T) {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert!(caught.is_ok(), "{what} panicked on {text:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn job_files_never_panic(doc in 0..JOBS.len(), edits in proptest::collection::vec(edit(), 1..6)) {
        let text = mutate(JOBS[doc], &edits);
        no_panic("parse_job", &text, || {
            if let Ok((spec, _)) = crate::parse_job(&text) {
                let _ = (spec.source.validate(), spec.sink.validate());
            }
        });
    }

    #[test]
    fn arbitrary_text_is_never_a_panic(text in any::<String>()) {
        no_panic("parse_job", &text, || crate::parse_job(&text).map(drop));
        no_panic("Connections::from_json", &text, || crate::Connections::from_json(&text).map(drop));
        no_panic("TableName::parse", &text, || crate::sqlserver::TableName::parse(&text).map(drop));
        no_panic("AuthKey::parse", &text, || {
            crate::control::membership::AuthKey::parse(&text).map(drop)
        });
        no_panic("envelope", &text, || {
            serde_json::from_str::<crate::control::Envelope>(&text).map(drop)
        });
    }

    #[test]
    fn connection_files_never_panic(edits in proptest::collection::vec(edit(), 1..6)) {
        let text = mutate(CONNECTIONS, &edits);
        no_panic("Connections::from_json", &text, || {
            if let Ok(connections) = crate::Connections::from_json(&text) {
                for name in connections.names() {
                    if let Ok(c) = connections.get(name) {
                        let _ = c.validate(name);
                    }
                }
            }
        });
    }

    #[test]
    fn channel_messages_never_panic(edits in proptest::collection::vec(edit(), 1..6)) {
        let text = mutate(ENVELOPE, &edits);
        no_panic("envelope", &text, || {
            serde_json::from_str::<crate::control::Envelope>(&text).map(drop)
        });
    }
}
