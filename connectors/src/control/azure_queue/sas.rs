//! Shared Access Signatures: the account SAS ferry signs with a shared key (HMAC-SHA256 from
//! `ring` over the documented string-to-sign), and the redaction of signatures in any text
//! that may quote a URL.

use std::time::Duration;

use base64::Engine as _;
use ferry_engine::{Error, Result};

/// Account SAS version ferry signs.
const SAS_VERSION: &str = "2021-08-06";

/// Removes SAS signatures from a text (error messages may quote URLs).
pub(super) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        out.push_str("REDACTED");
        rest = &rest[at + 4..];
        let end = rest
            .find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The text of an account SAS for `services`, valid from 5 minutes ago for `lifetime`,
/// signed with the base64 `key` (HMAC-SHA256 over the documented string-to-sign).
pub(super) fn account_sas(
    account: &str,
    key: &str,
    services: &str,
    https_only: bool,
    lifetime: Duration,
) -> Result<String> {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    let now = time::OffsetDateTime::now_utc();
    let stamp = |t: time::OffsetDateTime| {
        t.format(&format)
            .map_err(|e| Error::internal(format!("cannot format a SAS time: {e}")))
    };
    let start = stamp(now - time::Duration::minutes(5))?;
    let expiry = stamp(now + lifetime)?;
    let (permissions, resource_types) = ("rwdlacup", "sco");
    let protocol = if https_only { "https" } else { "https,http" };
    let to_sign = format!(
        "{account}\n{permissions}\n{services}\n{resource_types}\n{start}\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n\n"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| {
            Error::config("the shared key is not base64; copy it again from the account")
        })?;
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        to_sign.as_bytes(),
    );
    let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("sv", SAS_VERSION)
        .append_pair("ss", services)
        .append_pair("srt", resource_types)
        .append_pair("sp", permissions)
        .append_pair("st", &start)
        .append_pair("se", &expiry)
        .append_pair("spr", protocol)
        .append_pair("sig", &signature);
    Ok(query.finish())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn signatures_are_redacted() {
        let text = "GET http://h/q?sv=1&sig=abc%2Bdef&se=2 failed; 'sig=xyz'";
        let clean = redact(text);
        assert!(!clean.contains("abc") && !clean.contains("xyz"), "{clean}");
        assert!(clean.contains("sig=REDACTED&se=2"), "{clean}");
    }

    #[test]
    fn an_account_sas_has_the_documented_fields() {
        let key = base64::engine::general_purpose::STANDARD.encode(b"not a real key");
        let sas = account_sas("acct", &key, "q", true, Duration::from_secs(60)).unwrap();
        let pairs: HashMap<String, String> = url::form_urlencoded::parse(sas.as_bytes())
            .into_owned()
            .collect();
        for (k, v) in [
            ("sv", SAS_VERSION),
            ("ss", "q"),
            ("srt", "sco"),
            ("spr", "https"),
        ] {
            assert_eq!(pairs[k], v, "{k}");
        }
        assert_eq!(pairs["sig"].len(), 44, "a base64 HMAC-SHA256");
        assert!(account_sas("acct", "%%%", "q", true, Duration::from_secs(60)).is_err());
    }
}
