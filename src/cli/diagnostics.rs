//! `ferry diagnostics`: an archive for a support ticket. It holds the node configuration,
//! the connections file, the node heartbeats, the channel's job list and the latest reports,
//! with every secret redacted.

use std::path::PathBuf;

use clap::Args;
use ferry_engine::Error;

use crate::worker;

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

/// Keys whose values are secrets wherever they appear.
const SECRET_KEYS: [&str; 7] = [
    "password",
    "key",
    "token",
    "client_secret",
    "secret",
    "sas",
    "access_key",
];

/// Replaces secret values (and passwords inside URLs) in a JSON value.
pub fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                    *v = serde_json::Value::String("<redacted>".into());
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        serde_json::Value::String(s) => *s = redact_text(s),
        _ => {}
    }
}

/// Hides the passwords of `scheme://user:password@host` and the values of `password=`,
/// `sig=` and `AccountKey=` in text, wherever they appear.
pub fn redact_text(text: &str) -> String {
    let mut out = text.to_string();
    let mut from = 0;
    while let Some(scheme) = out[from..].find("://").map(|i| from + i + 3) {
        let rest = &out[scheme..];
        let authority = rest.find(['/', ' ', '"', '\'']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out.replace_range(scheme + colon + 1..scheme + at, "<redacted>");
        }
        from = scheme;
    }
    for key in ["password=", "sig=", "AccountKey="] {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let end = out[start..]
                .find([' ', '&', ';', '"', '\''])
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "<redacted>");
            from = start + "<redacted>".len();
        }
    }
    out
}

fn add(
    builder: &mut tar::Builder<impl std::io::Write>,
    name: &str,
    bytes: &[u8],
) -> Result<(), Error> {
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
            println!("wrote {}", args.output.display());
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
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).unwrap_or_default();

    add(
        &mut tar,
        "ferry/version.txt",
        format!("ferry {}\n", env!("CARGO_PKG_VERSION")).as_bytes(),
    )?;
    // The configuration, as TOML turned into JSON so that it can be redacted key by key.
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut config: serde_json::Value = toml::from_str::<toml::Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_value(v).ok())
        .unwrap_or_default();
    redact(&mut config);
    add(&mut tar, "ferry/config.json", &json(&config))?;
    let mut connections = serde_json::to_value(&loaded.connections).unwrap_or_default();
    redact(&mut connections);
    add(&mut tar, "ferry/connections.json", &json(&connections))?;
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
    let nodes = serde_json::to_value(nodes).unwrap_or_default();
    add(&mut tar, "ferry/nodes.json", &json(&nodes))?;
    add(
        &mut tar,
        "ferry/jobs.json",
        &json(&serde_json::to_value(&jobs).unwrap_or_default()),
    )?;
    for report in reports {
        let id = report.id.clone();
        let mut value = serde_json::to_value(report).unwrap_or_default();
        redact(&mut value);
        add(&mut tar, &format!("ferry/reports/{id}.json"), &json(&value))?;
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
        add(&mut tar, &format!("ferry/logs/{name}"), text.as_bytes())?;
    }
    add(&mut tar, "ferry/README.txt", readme)?;
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
            let text = String::from_utf8_lossy(&bytes);
            let redacted: String = text.lines().map(|l| redact_text(l) + "\n").collect();
            Some((path.file_name()?.to_string_lossy().to_string(), redacted))
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
            "list": ["host=h password=pw1 user=u"]
        });
        redact(&mut v);
        let text = v.to_string();
        for secret in ["hunter2", "abc", "xyz", "pw1", "\"PW\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("postgres://ferry:<redacted>@db/erp"),
            "{text}"
        );
        // Every occurrence in a line, not only the first.
        let line = redact_text(
            "a postgres://u:p1@h/x b https://h/c?sv=1&sig=s1&se=2 password=p2 password=p3 AccountKey=k1;",
        );
        for secret in ["p1", "s1", "p2", "p3", "k1"] {
            assert!(!line.contains(secret), "{secret} in {line}");
        }
        assert!(line.contains("postgres://u:<redacted>@h/x"), "{line}");
    }
}
