//! Who may talk to a node's admin server, checked on every request before any route runs:
//!
//! - the `Host` header must name the server (its bound address, a loopback name with its
//!   port, or one of `admin_hosts`): a page of another site that resolves its own name to
//!   127.0.0.1 (DNS rebinding) is refused;
//! - an `Origin` header, when a browser sends one, must be this server: a cross-site form or
//!   `fetch` is refused;
//! - every route but `/healthz` and the status page's HTML needs `Authorization: Bearer
//!   <token>`, the token in the node's token file (created at first start, mode 0600);
//! - a request that changes state must be `application/json` (a browser cannot send that
//!   cross-site without a preflight the server never grants).

use std::path::Path;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse};
use ferry_engine::config::local::{create_private_dir, read_private_file, write_private_file};
use ferry_engine::{Error, Result};

/// The checks of one admin server.
pub struct Guard {
    /// SHA-256 of the token: compared digest to digest, so the comparison's time says
    /// nothing about the token.
    token_digest: Vec<u8>,
    /// Other `host:port` names it answers to, lower case.
    extra_hosts: Vec<String>,
}

fn digest(text: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .to_vec()
}

impl Guard {
    /// A guard for `token` that also lets through the `host:port` names of `extra_hosts`.
    pub fn new(token: &str, extra_hosts: &[String]) -> Self {
        Guard {
            token_digest: digest(token),
            extra_hosts: extra_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `host` names the server bound to `bound`: that address, a loopback name with
    /// its port (when it listens on loopback or every address), or a configured name.
    fn names_server(&self, host: &str, bound: std::net::SocketAddr) -> bool {
        let port = bound.port();
        let local = bound.ip().is_loopback() || bound.ip().is_unspecified();
        host == bound.to_string()
            || (local
                && [
                    format!("localhost:{port}"),
                    format!("127.0.0.1:{port}"),
                    format!("[::1]:{port}"),
                ]
                .iter()
                .any(|name| name == host))
            || self.extra_hosts.iter().any(|name| name == host)
    }

    /// The answer that refuses `req`, or `None` when it may go on.
    pub fn refusal(&self, req: &HttpRequest) -> Option<HttpResponse> {
        if req.path() == "/healthz" {
            return None;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if !self.names_server(&host, req.app_config().local_addr()) {
            return Some(HttpResponse::Forbidden().body(format!(
                "this server does not answer to Host `{}`; add it to `admin_hosts` if it is this node's name\n",
                host.escape_default()
            )));
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or_default().to_ascii_lowercase();
            let same = ["http://", "https://"]
                .iter()
                .any(|scheme| origin == format!("{scheme}{host}"));
            if !same {
                return Some(HttpResponse::Forbidden().body("cross-site requests are refused\n"));
            }
        }
        if req.path() == "/" {
            // The page's HTML holds no data; its script asks the API with the token.
            return None;
        }
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if given.is_empty() || digest(given) != self.token_digest {
            return Some(HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .body("give the node's admin token: Authorization: Bearer <token> (the token is in the node's admin token file)\n"));
        }
        let changes = ![Method::GET, Method::HEAD, Method::OPTIONS].contains(req.method());
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if changes && !json {
            return Some(
                HttpResponse::UnsupportedMediaType()
                    .body("send JSON: Content-Type: application/json\n"),
            );
        }
        None
    }
}

/// The middleware: runs the server's [`Guard`] before every route.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let refusal = match req.app_data::<actix_web::web::Data<Guard>>() {
        Some(guard) => guard.refusal(req.request()),
        None => Some(HttpResponse::InternalServerError().finish()),
    };
    match refusal {
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
        Some(refusal) => Ok(req.into_response(refusal).map_into_right_body()),
    }
}

/// The node's admin token: read from `path`, or created there (mode 0600, in a 0700
/// directory) with 256 random bits at the node's first start. A token file that others can
/// read is refused.
pub fn load_or_create_token(path: &Path) -> Result<String> {
    if path.exists() {
        let token = read_private_file(path, "admin token file")?
            .trim()
            .to_string();
        if token.len() < 32 {
            return Err(Error::config(format!(
                "the admin token in {} is shorter than 32 characters; remove the file and a new token is made at the next start",
                path.display()
            )));
        }
        return Ok(token);
    }
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::internal("no randomness for the admin token"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private_file(path, &format!("{token}\n"))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn guard() -> Guard {
        Guard::new(
            "0123456789abcdef0123456789abcdef",
            &["etl-01.corp:9181".to_string()],
        )
    }

    /// A test request arrives at 127.0.0.1:8080 (actix's default for tests).
    fn verdict(req: TestRequest) -> u16 {
        guard()
            .refusal(&req.to_http_request())
            .map_or(200, |refusal| refusal.status().as_u16())
    }

    #[test]
    fn only_this_host_a_token_and_json_get_through() {
        let token = ("Authorization", "Bearer 0123456789abcdef0123456789abcdef");
        let host = ("Host", "127.0.0.1:8080");
        let get = |path: &str| TestRequest::get().uri(path).insert_header(host);
        assert_eq!(verdict(get("/api/status").insert_header(token)), 200);
        assert_eq!(verdict(get("/api/status")), 401, "no token");
        let wrong = ("Authorization", "Bearer 0123456789abcdef0123456789abcdeX");
        assert_eq!(verdict(get("/api/status").insert_header(wrong)), 401);
        assert_eq!(verdict(get("/metrics")), 401, "metrics reveal data too");
        assert_eq!(verdict(get("/healthz")), 200, "health needs nothing");
        assert_eq!(verdict(get("/")), 200, "the page's HTML holds no data");
        // DNS rebinding: another name for this address.
        let rebound = TestRequest::get()
            .uri("/api/status")
            .insert_header(("Host", "attacker.example:8080"))
            .insert_header(token);
        assert_eq!(verdict(rebound), 403);
        let named = TestRequest::get()
            .uri("/api/status")
            .insert_header(("Host", "ETL-01.corp:9181"))
            .insert_header(token);
        assert_eq!(verdict(named), 200, "a configured name");
        // A cross-site text/plain POST, with and without the token.
        let post = || {
            TestRequest::post()
                .uri("/api/jobs")
                .insert_header(host)
                .insert_header(token)
        };
        assert_eq!(
            verdict(post().insert_header(("Content-Type", "text/plain"))),
            415
        );
        let cross = post()
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Origin", "https://attacker.example"));
        assert_eq!(verdict(cross), 403);
        let same = post()
            .insert_header(("Content-Type", "application/json; charset=utf-8"))
            .insert_header(("Origin", "http://127.0.0.1:8080"));
        assert_eq!(verdict(same), 200);
    }

    #[test]
    fn the_token_file_is_made_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/admin-token");
        let made = load_or_create_token(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            load_or_create_token(&path).unwrap(),
            made,
            "kept across starts"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_token(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
