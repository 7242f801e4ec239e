//! Honouring `Retry-After`: object_store retries a throttled (429) or unavailable (5xx)
//! request with its own exponential backoff, which starts at 100 ms and ignores how long the
//! service asked it to wait. This connector wraps the HTTP client: a throttled answer with a
//! `Retry-After` waits that long (at most [`MAX_WAIT`]) before object_store sees it, so its
//! retry comes after the service's delay.

use std::time::Duration;

use object_store::ClientOptions;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService,
};

/// The longest a single `Retry-After` is honoured (object_store's retry timeout bounds the
/// whole request).
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// An [`HttpConnector`] whose clients wait out `Retry-After` on 429 and 5xx answers.
#[derive(Debug)]
pub struct RetryAfterConnector(pub Box<dyn HttpConnector>);

impl HttpConnector for RetryAfterConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(RetryAfterService(self.0.connect(options)?)))
    }
}

#[derive(Debug)]
struct RetryAfterService(HttpClient);

#[async_trait::async_trait]
impl HttpService for RetryAfterService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = self.0.execute(req).await?;
        let status = response.status().as_u16();
        if (status == 429 || status >= 500)
            && let Some(wait) = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after)
        {
            tracing::warn!(
                status,
                wait_ms = wait.as_millis() as u64,
                "Azure Storage asked to retry later; waiting as its Retry-After says"
            );
            tokio::time::sleep(wait).await;
        }
        Ok(response)
    }
}

/// The wait a `Retry-After` value asks for: whole seconds, or an HTTP date; at most
/// [`MAX_WAIT`].
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at =
                time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822)
                    .ok()?;
            let left = at - time::OffsetDateTime::now_utc();
            Duration::try_from(left).unwrap_or_default()
        }
    };
    Some(wait.min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after("86400"), Some(MAX_WAIT));
        // A date in the past asks for no wait; one in the future for the time until then.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(20))
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap();
        let wait = retry_after(&soon).unwrap();
        assert!(
            wait > Duration::from_secs(17) && wait <= Duration::from_secs(20),
            "{soon}: {wait:?}"
        );
        assert_eq!(retry_after("soon"), None);
        assert_eq!(retry_after("-1"), None);
    }
}
