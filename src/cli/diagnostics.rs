//! `ferry diagnostics`: an archive for a support ticket. It holds the node configuration,
//! the connections file, the node heartbeats, the channel's job list and the latest reports,
//! with every secret redacted.

use std::path::PathBuf;

use clap::Args;
use ferry_engine::Error;

use ferry::worker;

/// Arguments of `ferry diagnostics`.
#[derive(Args)]
pub struct DiagnosticsArgs {
    #[command(flatten)]
    config: super::node::ConfigArg,
    /// Where to write the archive (tar.gz).
    #[arg(long, short, default_value = "ferry-diagnostics.tar.gz")]
    output: PathBuf,
    /// How many of the latest reports to include.
    #[arg(long, default_value_t = 50)]
    reports: usize,
}

/// Names whose values are secrets, wherever they appear: as a JSON or TOML key, or as
/// `NAME=value` in text (connection strings, URLs' query strings, log lines). Compared
/// without case, `_` and `-`, so `Password`, `PWD`, `client_secret`, `AccountKey` and
/// `x-ms-sig` all match. The one table for every file of the archive.
const SECRET_NAMES: [&str; 24] = [
    "password",
    "pwd",
    "passwd",
    "pass",
    "secret",
    "clientsecret",
    "token",
    "accesstoken",
    "sastoken",
    "sas",
    "sig",
    "signature",
    "key",
    "accountkey",
    "accesskey",
    "sharedaccesskey",
    "sharedaccesssignature",
    "apikey",
    "privatekey",
    "credential",
    "credentials",
    "authorization",
    "bearer",
    "encrypted",
];

const REDACTED: &str = "<redacted>";

/// Whether `name` names a secret.
fn is_secret_name(name: &str) -> bool {
    let folded: String = name
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | '.'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_NAMES.contains(&folded.as_str())
}

/// Hides secrets in every file of a support archive: values under secret names (JSON keys
/// and `NAME=value` text), passwords in URLs, and the values of the environment variables
/// that the connections file names as secrets, wherever those values appear.
#[derive(Default)]
pub struct Redactor {
    /// Values known to be secrets (read from the environment), longest first.
    known: Vec<String>,
}

impl Redactor {
    /// A redactor that also hides the values of every `{"env": "VAR"}` secret in
    /// `connections`, as this process's environment holds them.
    pub fn for_connections(connections: &serde_json::Value) -> Self {
        fn env_refs(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(var)) = map.get("env") {
                        out.push(var.clone());
                    }
                    map.values().for_each(|v| env_refs(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| env_refs(v, out)),
                _ => {}
            }
        }
        let mut vars = Vec::new();
        env_refs(connections, &mut vars);
        let mut known: Vec<String> = vars
            .iter()
            .filter_map(|var| std::env::var(var).ok())
            .filter(|value| value.len() >= 4)
            .collect();
        known.sort_by_key(|v| std::cmp::Reverse(v.len()));
        known.dedup();
        Self { known }
    }

    /// Redacts a JSON value in place: values under secret names, and every string's text.
    pub fn json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if is_secret_name(k) {
                        *v = serde_json::Value::String(REDACTED.into());
                    } else {
                        self.json(v);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            serde_json::Value::String(s) => *s = self.text(s),
            _ => {}
        }
    }

    /// Redacts text: known secret values, `scheme://user:password@`, `NAME=value` and
    /// `Bearer value` for every secret name, every occurrence.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.known {
            out = out.replace(secret.as_str(), REDACTED);
        }
        redact_text(&out)
    }
}

/// Hides the passwords of `scheme://user:password@host`, the values of `NAME=value` for
/// every secret name (any case) and `Bearer` tokens in text, wherever they appear.
pub fn redact_text(text: &str) -> String {
    let mut out = text.to_string();
    let mut from = 0;
    while let Some(scheme) = out[from..].find("://").map(|i| from + i + 3) {
        let rest = &out[scheme..];
        let authority = rest.find(['/', ' ', '"', '\'']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out.replace_range(scheme + colon + 1..scheme + at, REDACTED);
        }
        from = scheme;
    }
    // NAME=value, NAME: value and `Bearer value`: scan every `=` / `:` / space and look at
    // the word before it.
    let mut i = 0;
    while i < out.len() {
        let bytes = out.as_bytes();
        let sep = bytes[i];
        if matches!(sep, b'=' | b' ') || (sep == b':' && bytes.get(i + 1) == Some(&b' ')) {
            let name_start = out[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
                .map_or(0, |p| p + 1);
            let name = &out[name_start..i];
            let is_name = if sep == b' ' {
                name.eq_ignore_ascii_case("bearer") || name.eq_ignore_ascii_case("basic")
            } else {
                is_secret_name(name)
            };
            if is_name && !name.is_empty() {
                let mut start = i + 1;
                while out.as_bytes().get(start) == Some(&b' ') && sep != b' ' {
                    start += 1;
                }
                if out[start..].starts_with(REDACTED) {
                    i = start + REDACTED.len();
                    continue;
                }
                // `Authorization: Bearer xyz` holds a scheme and a token: to the line's end.
                let whole = name.eq_ignore_ascii_case("authorization");
                let end = if whole {
                    out[start..].find(['\n', '"', '\'', ','])
                } else {
                    out[start..].find([' ', '&', ';', '"', '\'', ',', '\n', ')', ']', '}', '>'])
                }
                .map_or(out.len(), |e| start + e);
                if end > start {
                    out.replace_range(start..end, REDACTED);
                    i = start + REDACTED.len();
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Adds a file to the archive, redacted as text (JSON files are redacted key by key first).
fn add(
    builder: &mut tar::Builder<impl std::io::Write>,
    redactor: &Redactor,
    name: &str,
    bytes: &[u8],
) -> Result<(), Error> {
    let redacted = redactor.text(&String::from_utf8_lossy(bytes));
    let bytes = redacted.as_bytes();
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(ferry_connectors::control::now_ms() / 1000);
    header.set_cksum();
    builder
        .append_data(&mut header, name, bytes)
        .map_err(|e| Error::io(format!("cannot add {name} to the archive"), e))
}

/// Runs the command.
pub fn run(args: DiagnosticsArgs) -> u8 {
    match write(&args) {
        Ok(()) => {
            outln!("wrote {}", args.output.display());
            0
        }
        Err(e) => super::fail(&e),
    }
}

fn write(args: &DiagnosticsArgs) -> Result<(), Error> {
    let path = args.config.path();
    let loaded = worker::config::load(path)?;
    let file = std::fs::File::create(&args.output)
        .map_err(|e| Error::io(format!("cannot create {}", args.output.display()), e))?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    let mut connections = serde_json::to_value(&loaded.connections).unwrap_or_default();
    let redactor = Redactor::for_connections(&connections);
    let json = |v: &mut serde_json::Value| {
        redactor.json(v);
        serde_json::to_vec_pretty(v).unwrap_or_default()
    };

    add(
        &mut tar,
        &redactor,
        "ferry/version.txt",
        format!("ferry {}\n", env!("CARGO_PKG_VERSION")).as_bytes(),
    )?;
    // The configuration, as TOML turned into JSON so that it can be redacted key by key.
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut config: serde_json::Value = toml::from_str::<toml::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_default();
    add(&mut tar, &redactor, "ferry/config.json", &json(&mut config))?;
    add(
        &mut tar,
        &redactor,
        "ferry/connections.json",
        &json(&mut connections),
    )?;
    // What the channel holds: nodes, jobs, and the newest reports.
    let (nodes, jobs, reports) = loaded.with_channel(|channel| async move {
        let nodes = channel.nodes().await?;
        let jobs = channel.jobs().await?;
        let mut reports = Vec::new();
        for job in jobs.iter().rev().take(args.reports) {
            if let Some(report) = channel.report(&job.id).await? {
                reports.push(report);
            }
        }
        Ok((nodes, jobs, reports))
    })?;
    let mut nodes = serde_json::to_value(nodes).unwrap_or_default();
    add(&mut tar, &redactor, "ferry/nodes.json", &json(&mut nodes))?;
    let mut jobs = serde_json::to_value(&jobs).unwrap_or_default();
    add(&mut tar, &redactor, "ferry/jobs.json", &json(&mut jobs))?;
    for report in reports {
        let id = report.id.clone();
        let mut value = serde_json::to_value(report).unwrap_or_default();
        add(
            &mut tar,
            &redactor,
            &format!("ferry/reports/{id}.json"),
            &json(&mut value),
        )?;
    }
    let logs = recent_logs(loaded.logs_dir.as_deref());
    let readme: &[u8] = if logs.is_empty() {
        b"ferry diagnostics: configuration, connections, nodes, jobs and recent reports, with secrets redacted.\n\
          This node keeps no log files (no `state_dir`): attach its service manager's log (journalctl -u ferry).\n"
    } else {
        b"ferry diagnostics: configuration, connections, nodes, jobs, recent reports and the node's latest log files, \
          with secrets redacted.\n"
    };
    for (name, text) in logs {
        add(
            &mut tar,
            &redactor,
            &format!("ferry/logs/{name}"),
            text.as_bytes(),
        )?;
    }
    add(&mut tar, &redactor, "ferry/README.txt", readme)?;
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| Error::io(format!("cannot finish {}", args.output.display()), e))?;
    Ok(())
}

/// Log files kept in an archive, newest first.
const LOG_FILES: usize = 3;
/// The tail of each log file kept.
const LOG_TAIL: u64 = 2 << 20;

/// The tails of the newest log files in `dir`, redacted line by line.
fn recent_logs(dir: Option<&std::path::Path>) -> Vec<(String, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    // Daily files are named ferry.YYYY-MM-DD.log: the name orders them.
    files.sort();
    files
        .iter()
        .rev()
        .take(LOG_FILES)
        .filter_map(|path| {
            let mut file = std::fs::File::open(path).ok()?;
            let len = file.metadata().ok()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)))
                .ok()?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).ok()?;
            let text = String::from_utf8_lossy(&bytes).to_string();
            Some((path.file_name()?.to_string_lossy().to_string(), text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_are() {
        let mut v = serde_json::json!({
            "pg": {"url": "postgres://ferry:hunter2@db/erp", "password": {"env": "PW"}},
            "lake": {"auth": {"type": "sas", "token": "sv=1&sig=abc"}, "note": "AccountKey=xyz;"},
            "list": ["host=h password=pw1 user=u"],
            "Client_Secret": "cs1", "PWD": "pw9", "x-api-key": "k9"
        });
        Redactor::default().json(&mut v);
        let text = v.to_string();
        for secret in ["hunter2", "abc", "xyz", "pw1", "\"PW\"", "cs1", "pw9"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("postgres://ferry:<redacted>@db/erp"),
            "{text}"
        );
        // Every occurrence in a line, not only the first, in any case.
        let line = redact_text(
            "a postgres://u:p1@h/x b https://h/c?sv=1&sig=s1&se=2 password=p2 PASSWORD=p3 AccountKey=k1;",
        );
        for secret in ["p1", "s1", "p2", "p3", "k1"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        assert!(line.contains("postgres://u:<redacted>@h/x"), "{line}");
    }

    #[test]
    fn connection_strings_sas_urls_and_keys_are_redacted() {
        for (text, secrets) in [
            (
                "Server=tcp:db,1433;Database=erp;User Id=etl;Password=Pa55w0rd!;Encrypt=true",
                vec!["Pa55w0rd!"],
            ),
            ("Data Source=db;UID=etl;PWD=s3cr3t;", vec!["s3cr3t"]),
            (
                "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=Eby8vdM02xNOcqFl==;EndpointSuffix=core.windows.net",
                vec!["Eby8vdM02xNOcqFl=="],
            ),
            (
                "BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2024&sig=AbC%2Bd",
                vec!["AbC%2Bd", "sv=2024"],
            ),
            (
                "GET https://acct.blob.core.windows.net/c/b?sp=r&st=1&se=2&spr=https&sv=2022&sr=b&sig=QwErTy%3D failed",
                vec!["QwErTy%3D"],
            ),
            (
                "Authorization: Bearer eyJhbGciOi.abc.def",
                vec!["eyJhbGciOi"],
            ),
            (
                "token: tkn-123 and client_secret=cs-456",
                vec!["tkn-123", "cs-456"],
            ),
        ] {
            let out = redact_text(text);
            for secret in secrets {
                assert!(!out.contains(secret), "{secret} in {out}");
            }
            assert!(out.contains(REDACTED), "{out}");
        }
        // Words that merely end like a secret name stay.
        assert_eq!(redact_text("design=a monkey=b"), "design=a monkey=b");
    }

    #[test]
    fn values_of_secret_environment_variables_are_redacted_anywhere() {
        // HOME is set in every test environment; its value stands in for a password that a
        // connection reads from the environment (tests never set variables: other threads
        // read the environment).
        let home = std::env::var("HOME").unwrap();
        assert!(
            home.len() >= 4,
            "HOME is too short to stand for a secret: {home}"
        );
        let connections =
            serde_json::json!({"pg": {"type": "postgres", "password": {"env": "HOME"}}});
        let redactor = Redactor::for_connections(&connections);
        let line = redactor.text(&format!(
            "login failed for etl with {home}; retried with {home}"
        ));
        assert!(!line.contains(&home), "{line}");
        assert_eq!(line.matches(REDACTED).count(), 2, "{line}");
    }
}
