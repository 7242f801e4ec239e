//! Connecting to PostgreSQL: the `postgres` connection, TLS through rustls with libpq's
//! `sslmode` values, and PostgreSQL errors folded into ferry's error kinds.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::config::Secret;
use ferry_engine::config::units::HumanDuration;
use ferry_engine::{Error, ErrorKind, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::guard::GuardedStream;

/// Default time allowed to open a connection.
pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::secs(15);
/// Idle time before TCP keepalive probes start on a session.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the session is taken for dead.
pub const KEEPALIVE_RETRIES: u32 = 3;

/// TLS policy, as libpq's `sslmode`. The default is `verify-full`, and `prefer` for a
/// loopback host (`localhost`, 127.0.0.0/8, ::1) or a Unix socket, where no network lies in
/// between; the unverified modes are taken only when written, with a warning on every use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS always; the certificate is checked against `ssl_root_cert` only if one is given.
    Require,
    /// TLS always; the certificate must chain to a trusted root (host name not checked).
    VerifyCa,
    /// TLS always; the certificate must chain to a trusted root and name the host. Recommended.
    VerifyFull,
}

/// A `postgres` connection of the connections file.
///
/// Give a `url` (`postgres://user@host:5432/db` or libpq's `host=... dbname=...` form) or the
/// separate fields; separate fields override the URL. The password is a secret reference
/// (`{"env": "PGPASSWORD_ERP"}`), never a literal in the file.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConnection {
    /// A connection string: URL or key=value form, without the password.
    #[serde(default)]
    pub url: Option<String>,
    /// Host name or IP address.
    #[serde(default)]
    pub host: Option<String>,
    /// IP address to connect to without resolving `host` (libpq's `hostaddr`); TLS still
    /// verifies the certificate against `host`, and the sslmode default follows `host`.
    #[serde(default)]
    pub hostaddr: Option<std::net::IpAddr>,
    /// Port (default 5432).
    #[serde(default)]
    pub port: Option<u16>,
    /// Database name.
    #[serde(default)]
    pub database: Option<String>,
    /// User name.
    #[serde(default)]
    pub user: Option<String>,
    /// The password, as a secret reference.
    #[serde(default)]
    pub password: Option<Secret>,
    /// TLS policy: `disable`, `prefer`, `require`, `verify-ca`, `verify-full` (default;
    /// `prefer` for a loopback host). The unverified modes log a warning on every use.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM file of the CA certificates to trust; default: the system's roots.
    #[serde(default)]
    pub ssl_root_cert: Option<PathBuf>,
    /// Time allowed to open a connection (default 15s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// The longest a read or a load waits for the server's next data (or for it to take
    /// the next chunk) before it gives the session up and the partition is tried again
    /// (default 15 min). TCP keepalives find a dead host; this finds a server that is up but
    /// stuck, or a network path that swallows packets.
    #[serde(default)]
    pub idle_timeout: Option<HumanDuration>,
}

/// The default of [`PostgresConnection::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: HumanDuration = HumanDuration::secs(15 * 60);

impl fmt::Debug for PostgresConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConnection")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

/// A ready-to-use connection recipe: tokio-postgres settings plus the TLS connector.
#[derive(Clone)]
pub struct Connector {
    name: String,
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// Why this connection may be read or altered on the network, if it may: logged as a
    /// warning at every connect.
    unverified: Option<&'static str>,
    /// See [`PostgresConnection::idle_timeout`].
    idle_timeout: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({})", self.name)
    }
}

impl PostgresConnection {
    /// The health check of connection `name`: reach, TLS and authentication, then the
    /// catalog. Returns one line per step that passed.
    pub async fn check(&self, name: &str) -> Result<Vec<String>> {
        let connector = self.connector(name)?;
        let mut steps = vec!["configuration: ok".to_string()];
        let client = connector.connect().await?;
        steps.push("reach, TLS and authentication: ok".to_string());
        let row = client
            .query_one(
                "SELECT version(), current_database()::text, current_user::text, \
                 (SELECT count(*) FROM information_schema.tables \
                  WHERE table_schema NOT IN ('pg_catalog', 'information_schema'))",
                &[],
            )
            .await
            .map_err(|e| pg_error("cannot read the catalog", e))?;
        let (version, db, user, tables): (String, String, String, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        steps.push(format!(
            "metadata: ok (database {db} as {user}, {tables} tables visible; {})",
            version.split(" on ").next().unwrap_or(&version)
        ));
        Ok(steps)
    }

    /// Checks the connection without I/O: the URL parses and holds no password, a user is
    /// given, the password's environment variable is set.
    pub fn validate(&self, name: &str) -> Result<()> {
        self.settings(name).map(|_| ())
    }

    /// Builds the connector (reads the password and the CA file; no network I/O).
    pub fn connector(&self, name: &str) -> Result<Connector> {
        let in_conn = |e: Error| e.context(format!("connection `{name}`"));
        let (mut config, sslmode, unverified) = self.settings(name)?;
        let tls = match sslmode {
            SslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            mode => {
                config.ssl_mode(if mode == SslMode::Prefer {
                    tokio_postgres::config::SslMode::Prefer
                } else {
                    tokio_postgres::config::SslMode::Require
                });
                Some(MakeRustlsConnect::new(
                    tls_config(mode, self.ssl_root_cert.as_ref()).map_err(in_conn)?,
                ))
            }
        };
        Ok(Connector {
            name: name.to_string(),
            config,
            tls,
            unverified,
            idle_timeout: self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT).0,
        })
    }

    /// The driver's settings, the TLS mode, and why the connection is unverified (if it is).
    fn settings(
        &self,
        name: &str,
    ) -> Result<(tokio_postgres::Config, SslMode, Option<&'static str>)> {
        let in_conn = |e: Error| e.context(format!("connection `{name}`"));
        let mut sslmode = self.sslmode;
        let mut config = match &self.url {
            Some(url) => {
                // tokio-postgres knows only disable/prefer/require; take the verify modes
                // out of the string and apply them here.
                let (url, from_url) = take_verify_sslmode(url);
                sslmode = sslmode.or(from_url);
                url.parse::<tokio_postgres::Config>().map_err(|e| {
                    in_conn(Error::config(format!(
                        "`url` is not a PostgreSQL connection string: {e}"
                    )))
                })?
            }
            None => tokio_postgres::Config::new(),
        };
        if config.get_password().is_some() {
            return Err(in_conn(Error::config(
                "the `url` holds a password; move it to `password` as {\"env\": \"VAR\"} so that it is not stored in plain text",
            )));
        }
        if let Some(host) = &self.host {
            config.host(host);
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if let Some(address) = self.hostaddr {
            config.hostaddr(address);
        }
        if let Some(port) = self.port {
            config.port(port);
        }
        if let Some(db) = &self.database {
            config.dbname(db);
        }
        if let Some(user) = &self.user {
            config.user(user);
        }
        if config.get_user().is_none() {
            return Err(in_conn(Error::config(
                "no user: set `user` or put it in the `url`",
            )));
        }
        if let Some(secret) = &self.password {
            config.password(secret.expose().map_err(in_conn)?);
        }
        config.application_name("ferry");
        config.connect_timeout(self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT).0);
        config.keepalives(true);
        config.keepalives_idle(KEEPALIVE_IDLE);
        let loopback = config.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => is_loopback(name),
            tokio_postgres::config::Host::Unix(_) => true,
        });
        let sslmode = sslmode.unwrap_or(if loopback {
            SslMode::Prefer
        } else {
            SslMode::VerifyFull
        });
        let unverified = match sslmode {
            _ if loopback => None,
            SslMode::Disable => Some("sslmode=disable: the connection is not encrypted"),
            SslMode::Prefer => Some(
                "sslmode=prefer: the server's certificate is not checked and the connection may fall back to plain text",
            ),
            SslMode::Require if self.ssl_root_cert.is_none() => {
                Some("sslmode=require: the server's certificate is not checked")
            }
            _ => None,
        };
        Ok((config, sslmode, unverified))
    }
}

/// Whether a host name or address is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Removes `sslmode=verify-ca|verify-full` from a connection string and returns the mode.
fn take_verify_sslmode(url: &str) -> (String, Option<SslMode>) {
    for (text, mode) in [
        ("sslmode=verify-full", SslMode::VerifyFull),
        ("sslmode=verify-ca", SslMode::VerifyCa),
    ] {
        if url.contains(text) {
            return (url.replace(text, "sslmode=require"), Some(mode));
        }
    }
    (url.to_string(), None)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `mode`.
fn tls_config(mode: SslMode, root_cert: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS set-up: {e}")))?;
    let verify = match mode {
        SslMode::Disable => return Err(Error::internal("TLS set-up asked for sslmode disable")),
        SslMode::Prefer => Verify::Nothing,
        SslMode::Require if root_cert.is_none() => Verify::Nothing,
        SslMode::Require | SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::Full,
    };
    let config = match verify {
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        Verify::Chain | Verify::Full => {
            let roots = Arc::new(load_roots(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| {
                    Error::config(format!("TLS: cannot use the root certificates: {e}"))
                })?;
            if verify == Verify::Full {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(config)
}

#[derive(PartialEq)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

fn load_roots(path: Option<&PathBuf>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    Error::config(format!(
                        "cannot read `ssl_root_cert` {}: {e}",
                        path.display()
                    ))
                })?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| {
                    Error::config(format!(
                        "`ssl_root_cert` {} is not a PEM certificate file: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::config(format!(
                    "`ssl_root_cert` {} holds no usable certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(Error::config(
                    "TLS verification needs root certificates: none found on this system; set `ssl_root_cert`",
                ));
            }
        }
    }
    Ok(roots)
}

/// `sslmode=prefer|require` without a root certificate: encrypt, but accept any server
/// certificate (libpq's behaviour); the handshake signature is still checked.
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must be trusted; the name in the certificate is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl Connector {
    /// The connection's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `step` (one wait for the server during a read or a load) within the
    /// connection's `idle_timeout`; past it, a retryable error that names the wait.
    pub async fn within_idle<T>(
        &self,
        what: &str,
        step: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.idle_timeout, step).await {
            Ok(result) => result,
            Err(_) => Err(self.idle_error(what)),
        }
    }

    fn idle_error(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Connect,
            format!(
                "{what}: the server sent or took nothing for {:?} (`idle_timeout` of connection `{}`); the session is given up",
                self.idle_timeout, self.name
            ),
        )
        .with_retryable(true)
    }

    /// Takes the items of `stream` (a COPY's messages, one per row) within the connection's
    /// `idle_timeout` without arming a timer for each: see [`IdleWatch`].
    pub fn idle_watch(&self) -> IdleWatch {
        let half = self.idle_timeout / 2;
        IdleWatch {
            sleep: Box::pin(tokio::time::sleep(half)),
            half,
            progressed: false,
            quiet: 0,
        }
    }

    /// The next item of `stream`, or the idle error naming `what` when the server has sent
    /// nothing for at least `idle_timeout` (and at most one and a half times it).
    pub async fn next_within_idle<S: futures::Stream + Unpin>(
        &self,
        watch: &mut IdleWatch,
        stream: &mut S,
        what: &str,
    ) -> Result<Option<S::Item>> {
        use futures::StreamExt;
        loop {
            tokio::select! {
                biased;
                item = stream.next() => {
                    watch.progressed = true;
                    return Ok(item);
                }
                _ = watch.sleep.as_mut() => {
                    if std::mem::take(&mut watch.progressed) {
                        watch.quiet = 0;
                    } else {
                        watch.quiet += 1;
                        if watch.quiet >= 2 {
                            return Err(self.idle_error(what));
                        }
                    }
                    let next = tokio::time::Instant::now() + watch.half;
                    watch.sleep.as_mut().reset(next);
                }
            }
        }
    }

    /// Opens a session; its driver task runs on the current runtime until the client drops.
    ///
    /// Over TCP the stream is guarded: on a connection that is not encrypted, a server that
    /// asks for the password in clear text is refused before the password is sent.
    pub async fn connect(&self) -> Result<Client> {
        let what = format!("cannot connect to PostgreSQL (connection `{}`)", self.name);
        if let Some(why) = self.unverified {
            tracing::warn!(connection = %self.name, "{why}; set sslmode=verify-full (and ssl_root_cert) to protect the data and the password");
        }
        let hosts = self.config.get_hosts();
        if hosts
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
        {
            // A Unix socket never leaves the machine.
            return self.connect_via_config(&what).await;
        }
        let ports = self.config.get_ports();
        let addresses = self.config.get_hostaddrs();
        let timeout = self
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT.0);
        let mut last = None;
        for (i, host) in hosts.iter().enumerate() {
            let tokio_postgres::config::Host::Tcp(host) = host else {
                continue;
            };
            let port = ports.get(i).or(ports.last()).copied().unwrap_or(5432);
            let address = addresses.get(i).copied();
            match self.connect_tcp(host, address, port, timeout, &what).await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::config(format!("{what}: no host to connect to"))))
    }

    /// One attempt at `host` (at `ip` when given, as libpq's `hostaddr`).
    async fn connect_tcp(
        &self,
        host: &str,
        ip: Option<std::net::IpAddr>,
        port: u16,
        timeout: Duration,
        what: &str,
    ) -> Result<Client> {
        let address = format!("{host}:{port}");
        let tcp = match ip {
            Some(ip) => {
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await
            }
            None => {
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await
            }
        };
        let tcp = tcp
            .map_err(|_| {
                Error::new(
                    ErrorKind::Connect,
                    format!(
                        "{what}: {address} did not answer within {timeout:?} (`connect_timeout`)"
                    ),
                )
                .with_retryable(true)
            })?
            .map_err(|e| {
                Error::new(ErrorKind::Connect, format!("{what}: {address}: {e}"))
                    .with_source(e)
                    .with_retryable(true)
            })?;
        let _ = tcp.set_nodelay(true);
        // A server or network that vanishes mid-COPY is noticed within about a minute
        // (30 s idle, then 3 probes 10 s apart), not after the system's two hours.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_RETRIES);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = GuardedStream::new(tcp, self.tls.is_some(), refused.clone());
        let cleartext = |e: tokio_postgres::Error| {
            if refused.load(std::sync::atomic::Ordering::Relaxed) {
                Error::new(
                    ErrorKind::Auth,
                    format!(
                        "{what}: the server at {address} asked for the password in clear text over an unencrypted connection, and ferry did not send it; use sslmode=verify-full (or require), or have the server use scram-sha-256"
                    ),
                )
            } else {
                pg_error(what, e)
            }
        };
        let connected = async {
            match &self.tls {
                None => {
                    let (client, connection) = self
                        .config
                        .connect_raw(stream, tokio_postgres::NoTls)
                        .await
                        .map_err(cleartext)?;
                    ferry_engine::task::spawn_detached(drive(connection));
                    Ok(client)
                }
                Some(tls) => {
                    use tokio_postgres::tls::MakeTlsConnect;
                    let connect =
                        <MakeRustlsConnect as MakeTlsConnect<GuardedStream>>::make_tls_connect(
                            &mut tls.clone(),
                            host,
                        )
                        .map_err(|e| {
                            Error::config(format!("{what}: TLS set-up for {host}: {e}"))
                        })?;
                    let (client, connection) = self
                        .config
                        .connect_raw(stream, connect)
                        .await
                        .map_err(cleartext)?;
                    ferry_engine::task::spawn_detached(drive(connection));
                    Ok(client)
                }
            }
        };
        tokio::time::timeout(timeout, connected)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Connect,
                    format!("{what}: {address} did not finish the start-up within {timeout:?} (`connect_timeout`)"),
                )
                .with_retryable(true)
            })?
    }

    async fn connect_via_config(&self, what: &str) -> Result<Client> {
        let client = match &self.tls {
            None => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| pg_error(what, e))?;
                ferry_engine::task::spawn_detached(drive(connection));
                client
            }
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| pg_error(what, e))?;
                ferry_engine::task::spawn_detached(drive(connection));
                client
            }
        };
        Ok(client)
    }
}

/// Whether `e` comes from the TLS layer: a rustls error somewhere in its chain of causes.
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = c.source();
    }
    // tokio-postgres reports a server that refuses TLS as its own error, not a rustls one.
    e.to_string().contains("TLS")
}

async fn drive<F>(connection: F)
where
    F: std::future::Future<Output = std::result::Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "postgres connection ended");
    }
}

/// Folds a tokio-postgres error into ferry's error, saying what was being done.
///
/// Connection loss, server shutdown, serialization failures and resource shortages are
/// retryable; authentication, missing objects, bad SQL and bad data are not.
pub fn pg_error(what: &str, e: tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let mut message = format!("{what}: {} (SQLSTATE {code})", db.message());
        if let Some(detail) = db.detail() {
            message.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            message.push_str(&format!("; hint: {hint}"));
        }
        // SQLSTATE classes (the first two characters) as the PostgreSQL manual lists them.
        let (kind, retryable) = match &code[..2] {
            "28" => (ErrorKind::Auth, false),
            "08" => (ErrorKind::Connect, true),
            "57" if db.code() == &SqlState::QUERY_CANCELED => (ErrorKind::Cancelled, false),
            "57" => (ErrorKind::Connect, true),
            "40" | "53" | "58" => (ErrorKind::Store, true),
            "3D" => (ErrorKind::Config, false),
            "42" | "0A" | "25" => (ErrorKind::InvalidInput, false),
            "22" | "23" => (ErrorKind::Data, false),
            _ => (ErrorKind::Store, false),
        };
        if kind == ErrorKind::Auth {
            message.push_str(
                "; check the connection's user, password and sslmode (the server's pg_hba.conf decides what it accepts)",
            );
        }
        return Error::new(kind, message).with_retryable(retryable);
    }
    let text = e.to_string();
    let mut full = text.clone();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        full.push_str(&format!(": {s}"));
        source = s.source();
    }
    if is_tls_failure(&e) {
        return Error::new(
            ErrorKind::Connect,
            format!(
                "{what}: {full}; check `sslmode` and `ssl_root_cert` (the server must present a certificate for the host name under verify-full)"
            ),
        )
        .with_retryable(false);
    }
    if text.contains("password") || text.contains("authentication") {
        return Error::new(ErrorKind::Auth, format!("{what}: {full}")).with_retryable(false);
    }
    Error::new(ErrorKind::Connect, format!("{what}: {full}")).with_retryable(true)
}

/// The idle watch of a stream of many small waits: one timer of half the `idle_timeout`,
/// re-armed each time it fires; two firings in a row with no item between them mean the
/// server sent nothing for at least the timeout. A timer per COPY message (one per row) cost
/// a few per cent of a PostgreSQL read in clock reads and timer-wheel updates.
pub struct IdleWatch {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    half: std::time::Duration,
    progressed: bool,
    quiet: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(json: &str) -> PostgresConnection {
        match serde_json::from_str(json).unwrap() {
            crate::connection::ConnectionSpec::Postgres(c) => c,
            other => panic!("not postgres: {other:?}"),
        }
    }

    #[test]
    fn verify_modes_come_out_of_the_url() {
        let (url, mode) = take_verify_sslmode("postgres://u@h/db?sslmode=verify-full");
        assert_eq!(url, "postgres://u@h/db?sslmode=require");
        assert_eq!(mode, Some(SslMode::VerifyFull));
        let (url, mode) = take_verify_sslmode("host=h user=u sslmode=verify-ca");
        assert_eq!(url, "host=h user=u sslmode=require");
        assert_eq!(mode, Some(SslMode::VerifyCa));
        let (url, mode) = take_verify_sslmode("host=h sslmode=disable");
        assert_eq!((url.as_str(), mode), ("host=h sslmode=disable", None));
    }

    #[test]
    fn a_password_in_the_url_is_refused() {
        let c = conn(r#"{"type":"postgres","url":"postgres://u:hunter2@h/db"}"#);
        let err = c.connector("erp").unwrap_err().to_string();
        assert!(err.contains("holds a password"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_user_is_required_and_the_password_is_redacted() {
        let c = conn(r#"{"type":"postgres","host":"h","sslmode":"disable"}"#);
        assert!(
            c.connector("erp")
                .unwrap_err()
                .to_string()
                .contains("no user")
        );
        let c = conn(
            r#"{"type":"postgres","host":"h","user":"u","password":{"env":"FERRY_PG_TEST_PW"}}"#,
        );
        assert!(
            !format!("{c:?}").contains("FERRY_PG_TEST_PW=")
                && format!("{c:?}").contains("redacted")
        );
    }
}
