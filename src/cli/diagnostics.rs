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

/// Hides the password of `scheme://user:password@host` and `password=...` in text.
fn redact_text(text: &str) -> String {
    let mut out = text.to_string();
    if let Some(scheme) = out.find("://") {
        let rest = &out[scheme + 3..];
        if let Some(at) = rest.find('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme + 3 + colon + 1;
            out.replace_range(start..scheme + 3 + at, "<redacted>");
        }
    }
    for key in ["password=", "sig=", "AccountKey="] {
        while let Some(i) = out.find(key) {
            let start = i + key.len();
            if out[start..].starts_with("<redacted>") {
                break;
            }
            let end = out[start..]
                .find([' ', '&', ';'])
                .map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "<redacted>");
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
    add(
        &mut tar,
        "ferry/README.txt",
        b"ferry diagnostics: configuration, connections, nodes, jobs and recent reports, with secrets redacted.\n\
          The worker logs to stderr: attach its service manager's log (journalctl -u ferry) separately.\n",
    )?;
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| Error::io(format!("cannot finish {}", args.output.display()), e))?;
    Ok(())
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
    }
}
