//! Queue messages: an envelope (`{"id": ..., "job": {...}}`), a bare job file, or either
//! base64-encoded (as some SDKs send by default).

use azure_storage_queue::models::QueueMessage;
use base64::Engine as _;
use ferry_engine::{Error, Result};

use crate::control::{Envelope, check_job_id};

pub(super) fn parse_text(text: &str) -> std::result::Result<serde_json::Value, String> {
    let trimmed = text.trim();
    let json = if trimmed.starts_with('{') {
        trimmed.to_string()
    } else {
        // Some SDKs base64-encode message text by default.
        base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("the message is neither JSON nor base64-encoded JSON")?
    };
    serde_json::from_str(&json).map_err(|e| format!("the message is not valid JSON: {e}"))
}

/// Reads a message's text as an envelope; a bare job file gets the message id.
pub(super) fn envelope_of(message_id: &str, text: &str) -> std::result::Result<Envelope, String> {
    let value = parse_text(text)?;
    if !value.is_object() {
        return Err("the message is not a JSON object (a job file or an envelope)".into());
    }
    let mut envelope = if value.get("job").is_some_and(|j| j.is_object()) {
        serde_json::from_value::<Envelope>(value)
            .map_err(|e| format!("the message is not a job envelope: {e}"))?
    } else {
        Envelope::new(String::new(), value)
    };
    if envelope.id.is_empty() {
        envelope.id = message_id.to_string();
    }
    if let Err(e) = check_job_id(&envelope.id) {
        return Err(e.to_string());
    }
    Ok(envelope)
}

pub(super) fn message_body(
    text: String,
) -> Result<azure_core::http::RequestContent<QueueMessage, azure_core::http::XmlFormat>> {
    QueueMessage {
        message_text: Some(text),
    }
    .try_into()
    .map_err(|e: azure_core::Error| Error::internal(format!("cannot encode a queue message: {e}")))
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_envelopes_bare_jobs_or_base64() {
        let e = envelope_of("m1", r#"{"id": "j1", "job": {"name": "a"}, "released": 1}"#).unwrap();
        assert_eq!((e.id.as_str(), e.released), ("j1", 1));
        let bare = envelope_of("m2", r#"{"name": "b", "source": {}, "sink": {}}"#).unwrap();
        assert_eq!(
            (bare.id.as_str(), bare.job["name"].as_str()),
            ("m2", Some("b"))
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(r#"{"name": "c"}"#);
        assert_eq!(envelope_of("m3", &encoded).unwrap().job["name"], "c");
        for bad in ["{not json", "[1, 2]", "plain words"] {
            assert!(envelope_of("m4", bad).is_err(), "{bad}");
        }
        assert!(envelope_of("m5", r#"{"id": "../x", "job": {}}"#).is_err());
    }
}
