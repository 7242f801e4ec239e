//! The queue service's HTTP client: the connection's proxy policy and timeouts, HTTPS only
//! (plain HTTP to a loopback emulator when the connection allows it), and every request run
//! on the channel's I/O runtime, so the channel works from any thread or event loop.

use std::sync::Arc;
use std::time::Duration;

use ferry_engine::{Error, Result};

use crate::azure_blob::{AzureBlobConnection, ProxySetting};

/// Default time allowed for one queue request (the connection's `timeout` overrides it).
pub const QUEUE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP client for the queue service, with the connection's proxy setting.
pub(super) fn http_client(
    conn: &AzureBlobConnection,
    name: &str,
) -> Result<Arc<dyn azure_core::http::HttpClient>> {
    let in_conn = |e: String| Error::config(format!("connection `{name}`: {e}"));
    // HTTPS only, unless the connection allows plain HTTP to a loopback emulator (checked
    // on the parsed endpoint): a SAS token in a query string must never cross a network in
    // clear text.
    let mut builder = reqwest::Client::builder()
        .https_only(!conn.allow_http)
        .connect_timeout(crate::azure_blob::CONNECT_TIMEOUT)
        .timeout(conn.timeout.map_or(QUEUE_REQUEST_TIMEOUT, |t| t.0));
    builder = match &conn.proxy {
        ProxySetting::System => builder,
        ProxySetting::None => builder.no_proxy(),
        ProxySetting::Custom {
            url,
            excludes,
            ca_certificate,
        } => {
            let mut proxy =
                reqwest::Proxy::all(url).map_err(|e| in_conn(format!("proxy url `{url}`: {e}")))?;
            if let Some(excludes) = excludes {
                proxy = proxy.no_proxy(reqwest::NoProxy::from_string(excludes));
            }
            let mut builder = builder.proxy(proxy);
            if let Some(path) = ca_certificate {
                let pem = std::fs::read(path).map_err(|e| {
                    in_conn(format!(
                        "cannot read the proxy CA certificate {}: {e}",
                        path.display()
                    ))
                })?;
                let cert = reqwest::Certificate::from_pem(&pem)
                    .map_err(|e| in_conn(format!("proxy CA certificate: {e}")))?;
                builder = builder.add_root_certificate(cert);
            }
            builder
        }
    };
    let client = builder
        .build()
        .map_err(|e| in_conn(format!("cannot set up HTTP: {e}")))?;
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
