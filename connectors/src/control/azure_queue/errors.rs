//! Errors of the queue and blob services, folded into the engine's errors: the status and
//! the service's error code, never a response body or a signature.

use ferry_engine::{Error, ErrorKind};
use object_store::path::Path as ObjectPath;

use super::sas::redact;

pub(super) fn status_of(e: &azure_core::Error) -> Option<u16> {
    e.http_status().map(u16::from)
}

/// Whether a message operation failed because the lease is gone: the message was deleted
/// (404) or received again by another node, which changed its pop receipt.
pub(super) fn lease_gone(e: &azure_core::Error) -> bool {
    match e.kind() {
        azure_core::error::ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            u16::from(*status) == 404
                || error_code
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case("PopReceiptMismatch"))
        }
        _ => false,
    }
}

/// Folds a queue service error into the engine's error: the status and the service's error
/// code, not the response body.
pub(super) fn queue_error(what: &str, e: azure_core::Error) -> Error {
    let text = match e.kind() {
        azure_core::error::ErrorKind::HttpResponse {
            status, error_code, ..
        } => format!(
            "HTTP {} {}",
            u16::from(*status),
            error_code.as_deref().unwrap_or_default()
        ),
        _ => redact(&e.to_string()),
    };
    let text = text.trim();
    match status_of(&e) {
        Some(401 | 403) => Error::new(
            ErrorKind::Auth,
            format!(
                "{what}: access denied ({text}); check the channel connection's credentials and their rights on the queue"
            ),
        ),
        Some(404) => Error::invalid_input(format!(
            "{what}: not found ({text}); check `queue_endpoint` and the queue's name"
        )),
        Some(s) if s >= 500 || s == 408 || s == 429 => {
            Error::store(format!("{what}: {text}")).with_retryable(true)
        }
        Some(_) => Error::store(format!("{what}: {text}")),
        None => Error::new(
            ErrorKind::Connect,
            format!("{what}: cannot reach the queue service ({text}); check `queue_endpoint`, the network and the proxy"),
        )
        .with_retryable(true),
    }
}

pub(super) fn blob_error(what: &str, path: &str, e: object_store::Error) -> Error {
    crate::format::io::store_error(what, &ObjectPath::from(path), e)
}
