//! The queue service's HTTP client: the account's HTTP policy, shared with its blob store
//! (`AzureBlobConnection::reqwest_client`), and every request run on the channel's I/O
//! runtime, so the channel works from any thread or event loop.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::Result;

use crate::azure_blob::AzureBlobConnection;

/// Default time allowed for one queue request (the connection's `timeout` overrides it).
pub const QUEUE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP client for the queue service: the account's HTTP policy (the same as its blob
/// store's), its requests made on the channel's I/O runtime.
pub(super) fn http_client(
    conn: &AzureBlobConnection,
    name: &str,
) -> Result<Arc<dyn azure_core::http::HttpClient>> {
    // HTTPS only, unless the connection allows plain HTTP to a loopback emulator (checked
    // on the parsed endpoint): a SAS token in a query string must never cross a network in
    // clear text.
    let client = conn
        .reqwest_client(QUEUE_REQUEST_TIMEOUT)
        .map_err(|e| e.context(format!("connection `{name}`")))?;
    Ok(Arc::new(OnIoRuntime(Arc::new(client))))
}

/// An HTTP client whose requests run on the channel's I/O runtime: connection pools live
/// on the runtime that opened them, and a node calls its channel from several event loops
/// (the intake, the admin server's workers, the CLI).
#[derive(Debug)]
struct OnIoRuntime(Arc<dyn azure_core::http::HttpClient>);

#[async_trait::async_trait]
impl azure_core::http::HttpClient for OnIoRuntime {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        let (client, request) = (self.0.clone(), request.clone());
        let handle = crate::control::io_handle().map_err(|e| {
            azure_core::Error::with_message(azure_core::error::ErrorKind::Other, e.to_string())
        })?;
        ferry_engine::task::spawn_on(
            &handle,
            async move { client.execute_request(&request).await },
        )
        .await
        .map_err(|e| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                format!("a queue request task failed: {e}"),
            )
        })?
    }
}
