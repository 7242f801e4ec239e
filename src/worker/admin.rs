//! The node's admin HTTP server (actix-web, loopback by default):
//!
//! - `GET /healthz`: 200 while the node runs (503 while draining);
//! - `GET /metrics`: Prometheus exposition of the metrics the engine records;
//! - `GET /api/status`: the node, its limit, and its running jobs with live progress;
//! - `GET /api/jobs`, `POST /api/jobs` (a job file as the body), `DELETE /api/jobs/{id}`:
//!   list, submit and cancel on the control channel;
//! - `GET /`: a status page (plain HTML and a little JavaScript) that polls `/api/status`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::{App, HttpResponse, HttpServer, web};
use ferry_connectors::control::Channel;

use super::admin_guard::Guard;
use ferry_engine::JobProgress;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

/// What the admin server can see of a running job.
pub struct JobView {
    /// The job's name.
    pub name: String,
    /// When it started on this node.
    pub started: Instant,
    /// Its live counters, once the engine runs it.
    pub progress: Option<Arc<JobProgress>>,
}

/// The node state shared with the admin server.
pub struct NodeView {
    /// Node name.
    pub node: String,
    /// Its limit.
    pub max_concurrent_jobs: usize,
    /// Running jobs by id.
    pub jobs: Mutex<HashMap<String, JobView>>,
    /// Whether the node is draining.
    pub draining: std::sync::atomic::AtomicBool,
}

#[derive(Serialize)]
struct RunningJson {
    id: String,
    name: String,
    seconds: f64,
    rows_read: u64,
    rows_written: u64,
    bytes_read: u64,
    bytes_total: u64,
    percent: Option<f64>,
    rows_per_sec: f64,
}

#[derive(Serialize)]
struct StatusJson {
    node: String,
    max_concurrent_jobs: usize,
    busy: usize,
    draining: bool,
    running: Vec<RunningJson>,
    nodes: Vec<ferry_connectors::control::NodeInfo>,
    recent: Vec<serde_json::Value>,
}

struct State {
    view: Arc<NodeView>,
    channel: Arc<dyn Channel>,
    metrics: Option<PrometheusHandle>,
    admission: Admission,
}

/// What a submission through the API is checked against: the same as `ferry jobs submit`.
pub struct Admission {
    /// The node's connections.
    pub connections: Arc<ferry_connectors::Connections>,
    /// The node's policy.
    pub policy: Arc<ferry_connectors::NodePolicy>,
    /// Whether the node's runtime requires signed jobs.
    pub verifier: bool,
    /// Signs submissions, when the node holds the runtime's signing key.
    pub signer: Option<(
        Arc<ferry_connectors::control::trust::Signer>,
        std::time::Duration,
    )>,
}

async fn status(state: &State) -> StatusJson {
    let mut running: Vec<RunningJson> = state
        .view
        .jobs
        .lock()
        .map(|jobs| {
            jobs.iter()
                .map(|(id, j)| {
                    let seconds = j.started.elapsed().as_secs_f64();
                    let s = j.progress.as_ref().map(|p| p.snapshot());
                    let (read, written, bytes, total) = s.map_or((0, 0, 0, 0), |s| {
                        (
                            s.records_read,
                            s.rows_written,
                            s.input_bytes_read,
                            s.input_bytes_total,
                        )
                    });
                    RunningJson {
                        id: id.clone(),
                        name: j.name.clone(),
                        seconds,
                        rows_read: read,
                        rows_written: written,
                        bytes_read: bytes,
                        bytes_total: total,
                        percent: (total > 0)
                            .then(|| bytes.min(total) as f64 * 100.0 / total as f64),
                        rows_per_sec: if seconds > 0.0 {
                            written as f64 / seconds
                        } else {
                            0.0
                        },
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    running.sort_by(|a, b| a.id.cmp(&b.id));
    // Polled every second by open status pages: read only the reports shown.
    let recent = state
        .channel
        .recent_reports(10)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|f| {
            let last = f.reports.last();
            serde_json::json!({
                "id": f.id, "node": f.node, "status": f.status, "attempt": f.attempt,
                "rows_written": last.map(|r| r.rows_written),
                "duration_secs": last.map(|r| r.duration_secs),
                "bottleneck": last.and_then(|r| r.bottleneck),
                "advice": last.map(|r| r.advice.join(" ")).unwrap_or_default(),
                "error": last.and_then(|r| r.error.as_ref()).map(|e| e.message.clone()),
            })
        })
        .collect();
    StatusJson {
        node: state.view.node.clone(),
        max_concurrent_jobs: state.view.max_concurrent_jobs,
        busy: running.len(),
        draining: state
            .view
            .draining
            .load(std::sync::atomic::Ordering::Relaxed),
        running,
        nodes: state.channel.nodes().await.unwrap_or_default(),
        recent,
    }
}

async fn healthz(state: web::Data<State>) -> HttpResponse {
    if state
        .view
        .draining
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        HttpResponse::ServiceUnavailable().body("draining\n")
    } else {
        HttpResponse::Ok().body("ok\n")
    }
}

async fn metrics_page(state: web::Data<State>) -> HttpResponse {
    match &state.metrics {
        Some(handle) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(handle.render()),
        None => HttpResponse::NotFound().body("metrics are recorded by another exporter\n"),
    }
}

async fn api_status(state: web::Data<State>) -> HttpResponse {
    HttpResponse::Ok().json(status(&state).await)
}

async fn api_jobs(state: web::Data<State>) -> HttpResponse {
    match state.channel.jobs().await {
        Ok(jobs) => HttpResponse::Ok().json(jobs),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

async fn api_submit(state: web::Data<State>, body: String) -> HttpResponse {
    if state.admission.verifier && state.admission.signer.is_none() {
        return HttpResponse::Forbidden().body(
            "this runtime runs only signed jobs and this node holds no signing key: submit with `ferry jobs submit` where the signing key is\n",
        );
    }
    let submitted = super::submit(
        state.channel.as_ref(),
        &body,
        &state.admission.connections,
        &state.admission.policy,
        state.admission.signer.as_ref(),
    )
    .await;
    match submitted {
        Ok(id) => HttpResponse::Created().json(serde_json::json!({ "id": id })),
        Err(e) => error_response(&e),
    }
}

/// The HTTP answer to an error: 400 for a bad request, 403 for what the policy forbids,
/// 500 for the rest.
fn error_response(e: &ferry_engine::Error) -> HttpResponse {
    use ferry_engine::ErrorKind;
    let body = format!("{e}\n");
    match e.kind() {
        ErrorKind::InvalidInput | ErrorKind::Config => HttpResponse::BadRequest().body(body),
        ErrorKind::Forbidden => HttpResponse::Forbidden().body(body),
        _ => HttpResponse::InternalServerError().body(body),
    }
}

async fn api_cancel(state: web::Data<State>, id: web::Path<String>) -> HttpResponse {
    if let Err(e) = ferry_connectors::control::check_job_id(&id) {
        return HttpResponse::BadRequest().body(format!("{e}\n"));
    }
    match state.channel.cancel(&id).await {
        Ok(what) => {
            HttpResponse::Ok().json(serde_json::json!({ "id": id.as_str(), "result": what }))
        }
        Err(e) if e.kind() == ferry_engine::ErrorKind::InvalidInput => {
            HttpResponse::NotFound().body(format!("{e}\n"))
        }
        Err(e) => HttpResponse::InternalServerError().body(format!("{e}\n")),
    }
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("status.html"))
}

/// Who may use the server: its token, the other names it answers to, and its TLS files.
pub struct Access {
    /// The bearer token.
    pub token: String,
    /// Other `host:port` names it answers to.
    pub hosts: Vec<String>,
    /// TLS; required off loopback (checked when the configuration loads).
    pub tls: Option<super::config::AdminTls>,
}

/// The rustls configuration of the admin server's certificate and key.
fn tls_config(tls: &super::config::AdminTls) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: String| {
        std::io::Error::other(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("admin TLS certificate", &tls.cert, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| bad("admin TLS key", &tls.key, e.to_string()))?;
    ferry_connectors::install_crypto_provider();
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("admin TLS certificate", &tls.cert, e.to_string()))
}

/// Starts the server on `address`; returns the bound address.
pub fn start(
    address: &str,
    view: Arc<NodeView>,
    channel: Arc<dyn Channel>,
    metrics: Option<PrometheusHandle>,
    admission: Admission,
    access: Access,
) -> std::io::Result<std::net::SocketAddr> {
    let state = web::Data::new(State {
        view,
        channel,
        metrics,
        admission,
    });
    let guard = web::Data::new(Guard::new(&access.token, &access.hosts));
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(guard.clone())
            .wrap(actix_web::middleware::from_fn(super::admin_guard::guard))
            .route("/", web::get().to(page))
            .route("/healthz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics_page))
            .route("/api/status", web::get().to(api_status))
            .route("/api/jobs", web::get().to(api_jobs))
            .route("/api/jobs", web::post().to(api_submit))
            .route("/api/jobs/{id}", web::delete().to(api_cancel))
    })
    .workers(1)
    .disable_signals();
    let server = match &access.tls {
        Some(tls) => server.bind_rustls_0_23(address, tls_config(tls)?)?,
        None => server.bind(address)?,
    };
    let bound = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("the admin server bound no address"))?;
    actix::spawn(server.run());
    Ok(bound)
}
