//! An HTTP proxy for fault tests in front of Azurite: it forwards every request and, as
//! told, answers chosen ones itself with an error status (503, 500, 429) and a
//! `Retry-After`, as a throttled or busy storage service does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

/// One planned answer: the `nth` request (from 0) with `method` gets `status`.
struct Planned {
    method: String,
    nth: usize,
    status: u16,
    retry_after: Option<u32>,
}

#[derive(Default)]
struct State {
    plan: Vec<Planned>,
    /// Requests seen so far, per method.
    seen: HashMap<String, usize>,
    /// Requests answered with a planned status.
    answered: usize,
}

/// A running proxy (it lives as long as the test process).
pub struct HttpFaults {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl HttpFaults {
    /// A proxy on a free loopback port to `upstream` (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> HttpFaults {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let (upstream, shared) = (upstream.trim_end_matches('/').to_string(), state.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(listener, upstream, shared));
        });
        HttpFaults { port, state }
    }

    /// The proxy's endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `nth` request (counted from 0, from now) with `method` is answered with `status`
    /// and, when given, `Retry-After: retry_after`.
    pub fn answer(&self, method: &str, nth: usize, status: u16, retry_after: Option<u32>) {
        let mut state = self.state.lock().unwrap();
        let seen = state.seen.get(method).copied().unwrap_or(0);
        state.plan.push(Planned {
            method: method.to_string(),
            nth: seen + nth,
            status,
            retry_after,
        });
    }

    /// Requests answered with a planned status so far.
    pub fn answered(&self) -> usize {
        self.state.lock().unwrap().answered
    }
}

async fn serve(listener: std::net::TcpListener, upstream: String, state: Arc<Mutex<State>>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (upstream, state, client) = (upstream.clone(), state.clone(), client.clone());
        ferry_engine::task::spawn_detached(async move {
            let service = hyper::service::service_fn(move |req| {
                handle(req, upstream.clone(), state.clone(), client.clone())
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    upstream: String,
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let planned = {
        let mut state = state.lock().unwrap();
        let method = req.method().as_str().to_string();
        let n = *state.seen.entry(method.clone()).or_default();
        state.seen.insert(method.clone(), n + 1);
        let hit = state
            .plan
            .iter()
            .position(|p| p.method == method && p.nth == n)
            .map(|i| state.plan.remove(i));
        if hit.is_some() {
            state.answered += 1;
        }
        hit
    };
    let (parts, body) = req.into_parts();
    // The body is read either way, as a service reads it before answering.
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Some(p) = planned {
        let mut answer = Response::builder()
            .status(p.status)
            .header("x-ms-error-code", "ServerBusy")
            .header("content-type", "application/xml");
        if let Some(seconds) = p.retry_after {
            answer = answer.header("retry-after", seconds.to_string());
        }
        let text = "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>ServerBusy</Code><Message>The server is busy (a planned fault).</Message></Error>";
        return Ok(answer.body(Full::new(Bytes::from(text))).unwrap());
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut forward = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            forward = forward.header(name, value);
        }
    }
    let response = match forward.body(body).send().await {
        Ok(response) => response,
        Err(e) => {
            return Ok(Response::builder()
                .status(502)
                .body(Full::new(Bytes::from(e.to_string())))
                .unwrap());
        }
    };
    let mut answer = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        if !matches!(name.as_str(), "transfer-encoding" | "connection") {
            answer = answer.header(name, value);
        }
    }
    let bytes = response.bytes().await.unwrap_or_default();
    Ok(answer.body(Full::new(bytes)).unwrap())
}
