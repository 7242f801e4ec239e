//! Connecting to SQL Server: the `sqlserver` connection, TLS through rustls (tiberius),
//! and SQL Server errors folded into ferry's error kinds.

use std::path::PathBuf;
use std::time::Duration;

use ferry_engine::config::Secret;
use ferry_engine::config::units::HumanDuration;
use ferry_engine::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

/// The default connect (and TLS/login handshake) timeout.
pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::secs(15);

/// The default per-round-trip timeout. tiberius's own default (30 s) ends long extracts and
/// bulk loads that are merely slow; a server that stalls for an hour is gone.
pub const DEFAULT_COMMAND_TIMEOUT: HumanDuration = HumanDuration::secs(3600);

/// A connected client.
pub type SqlClient = Client<Compat<TcpStream>>;

/// How the session is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encrypt {
    /// TLS for the whole session (the default).
    #[default]
    Required,
    /// TLS for the login only (TDS "encryption off"): the password is protected, the data
    /// is not. Warned on every use.
    LoginOnly,
}

/// A `sqlserver` connection of the connections file.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SqlServerConnection {
    /// An ADO.NET connection string (`Server=tcp:host,1433;Database=...;User Id=...;
    /// Password=...;Encrypt=true`), as a secret reference since it holds the password;
    /// instead of `host`, `user` and `password`.
    #[serde(default)]
    pub connection_string: Option<Secret>,
    /// Host name or address.
    #[serde(default)]
    pub host: String,
    /// TCP port (default 1433).
    #[serde(default)]
    pub port: Option<u16>,
    /// A named instance (resolved through the SQL Browser, UDP 1434) instead of a port.
    #[serde(default)]
    pub instance: Option<String>,
    /// The database (default: the login's default database).
    #[serde(default)]
    pub database: Option<String>,
    /// SQL authentication: the login.
    #[serde(default)]
    pub user: String,
    /// Its password (a secret reference).
    #[serde(default)]
    pub password: Option<Secret>,
    /// `required` (default) or `login_only`.
    #[serde(default)]
    pub encrypt: Encrypt,
    /// Accept any server certificate (no validation): only for a server whose certificate
    /// cannot be fixed; warned on every connection.
    #[serde(default)]
    pub trust_server_certificate: bool,
    /// A PEM file of CA certificates to validate the server with (instead of the system's).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// The name the certificate must carry, when it is not `host`.
    #[serde(default)]
    pub hostname_in_certificate: Option<String>,
    /// Connect, TLS and login timeout (default 15s).
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    /// Timeout of one server round trip (default 1h).
    #[serde(default)]
    pub command_timeout: Option<HumanDuration>,
    /// The application name the server sees (default `ferry`).
    #[serde(default)]
    pub application_name: Option<String>,
}

impl std::fmt::Debug for SqlServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlServerConnection")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Opens sessions of one connection.
#[derive(Clone)]
pub struct Connector {
    name: String,
    connection: SqlServerConnection,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connector({})", self.name)
    }
}

impl SqlServerConnection {
    /// Checks the connection without I/O: its settings hold and the password opens.
    pub fn validate(&self, name: &str) -> Result<()> {
        let in_conn = |e: Error| e.context(format!("connection `{name}`"));
        if let Some(text) = &self.connection_string {
            if !self.host.is_empty() || !self.user.is_empty() || self.password.is_some() {
                return Err(in_conn(Error::config(
                    "give `connection_string` or `host`, `user` and `password`, not both",
                )));
            }
            let text = text.expose().map_err(in_conn)?;
            return Config::from_ado_string(&text).map(drop).map_err(|_| {
                in_conn(Error::config(
                    "`connection_string` is not an ADO.NET connection string (the value is not shown)",
                ))
            });
        }
        if self.host.trim().is_empty() {
            return Err(in_conn(Error::config(
                "give `host` (or `connection_string`)",
            )));
        }
        if self.user.is_empty() {
            return Err(in_conn(Error::config("give `user` (SQL authentication)")));
        }
        if self.port.is_some() && self.instance.is_some() {
            return Err(in_conn(Error::config(
                "give `port` or `instance`, not both",
            )));
        }
        if self.trust_server_certificate && self.ca_cert.is_some() {
            return Err(in_conn(Error::config(
                "`trust_server_certificate` turns validation off, so `ca_cert` would not be used: give one of them",
            )));
        }
        match &self.password {
            Some(p) => p.expose().map(drop).map_err(in_conn),
            None => Err(in_conn(Error::config(
                "give `password` as a reference such as {\"env\": \"MSSQL_PASSWORD\"} or {\"encrypted\": \"...\"}",
            ))),
        }
    }

    /// The connector of connection `name`.
    pub fn connector(&self, name: &str) -> Result<Connector> {
        self.validate(name)?;
        Ok(Connector {
            name: name.to_string(),
            connection: self.clone(),
            connect_timeout: self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT).0,
        })
    }

    /// The health check of connection `name`: reach, TLS and login, then metadata.
    pub async fn check(&self, name: &str) -> Result<Vec<String>> {
        let connector = self.connector(name)?;
        let mut steps = vec!["configuration: ok".to_string()];
        let mut client = connector.connect().await?;
        steps.push("reach, TLS and authentication: ok".to_string());
        let row = client
            .simple_query(
                "SELECT CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)), DB_NAME(), SUSER_SNAME()",
            )
            .await
            .map_err(|e| sql_error(&connector, "cannot read the server's metadata", e))?
            .into_row()
            .await
            .map_err(|e| sql_error(&connector, "cannot read the server's metadata", e))?;
        let text = |i: usize| {
            row.as_ref()
                .and_then(|r| r.get::<&str, _>(i))
                .unwrap_or("?")
                .to_string()
        };
        steps.push(format!(
            "metadata: ok (SQL Server {}, database {} as {})",
            text(0),
            text(1),
            text(2)
        ));
        Ok(steps)
    }
}

impl Connector {
    /// The connection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The timeout of one server round trip.
    pub fn command_timeout(&self) -> Duration {
        self.connection
            .command_timeout
            .unwrap_or(DEFAULT_COMMAND_TIMEOUT)
            .0
    }

    fn config(&self) -> Result<Config> {
        let c = &self.connection;
        let mut config = match &c.connection_string {
            Some(text) => {
                let text = text.expose()?;
                Config::from_ado_string(&text).map_err(|_| {
                    Error::config(format!(
                        "connection `{}`: `connection_string` is not an ADO.NET connection string",
                        self.name
                    ))
                })?
            }
            None => Config::new(),
        };
        if c.connection_string.is_none() {
            self.plain_settings(&mut config)?;
        }
        config.application_name(c.application_name.as_deref().unwrap_or("ferry"));
        config.handshake_timeout(Some(self.connect_timeout));
        config.command_timeout(Some(c.command_timeout.unwrap_or(DEFAULT_COMMAND_TIMEOUT).0));
        Ok(config)
    }

    /// The settings of a connection given field by field.
    fn plain_settings(&self, config: &mut Config) -> Result<()> {
        let c = &self.connection;
        config.host(&c.host);
        if let Some(port) = c.port {
            config.port(port);
        }
        if let Some(instance) = &c.instance {
            config.instance_name(instance);
        }
        if let Some(db) = &c.database {
            config.database(db);
        }
        let password = match &c.password {
            Some(p) => p.expose()?,
            None => return Err(Error::config("no `password`")),
        };
        config.authentication(AuthMethod::sql_server(&c.user, password.as_str()));
        config.encryption(match c.encrypt {
            Encrypt::Required => EncryptionLevel::Required,
            Encrypt::LoginOnly => EncryptionLevel::Off,
        });
        if c.encrypt == Encrypt::LoginOnly {
            tracing::warn!(connection = %self.name, "encrypt = \"login_only\": only the login is encrypted; the data crosses the network in clear text");
        }
        if c.trust_server_certificate {
            tracing::warn!(connection = %self.name, "trust_server_certificate: the server's certificate is not validated; anyone on the network path can read and change the session");
            config.trust_cert();
        } else if let Some(ca) = &c.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| {
                Error::io(
                    format!(
                        "connection `{}`: cannot read `ca_cert` {}",
                        self.name,
                        ca.display()
                    ),
                    e,
                )
            })?;
            config.trust_cert_ca_bundle(pem);
        }
        if let Some(name) = &c.hostname_in_certificate {
            config.hostname_in_certificate(name);
        }
        Ok(())
    }

    /// Opens a session: TCP, TLS, login.
    pub async fn connect(&self) -> Result<SqlClient> {
        crate::tls::install_crypto_provider();
        let config = self.config()?;
        let addr = config.get_addr();
        let where_ = || format!("connection `{}` ({addr})", self.name);
        let connecting = async {
            if self.connection.instance.is_some() {
                // A named instance: the SQL Browser (UDP 1434) says its port.
                use tiberius::SqlBrowser;
                TcpStream::connect_named(&config)
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            } else {
                TcpStream::connect(&addr).await
            }
        };
        let tcp = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Connect,
                    format!(
                        "{}: no answer within {:?}; check `host` and `port`, and that the server accepts TCP connections",
                        where_(),
                        self.connect_timeout
                    ),
                )
                .with_retryable(true)
            })?
            .map_err(|e| {
                Error::new(
                    ErrorKind::Connect,
                    format!("{}: cannot connect: {e}; check `host` and `port`", where_()),
                )
                .with_retryable(true)
            })?;
        let _ = tcp.set_nodelay(true);
        Client::connect(config, tcp.compat_write())
            .await
            .map_err(|e| sql_error(self, "cannot log in", e))
    }
}

/// SQL Server error numbers a retry can fix: deadlock victim, lost or throttled sessions,
/// Azure SQL's transient errors.
const TRANSIENT: &[u32] = &[
    1205, 4060, 40197, 40501, 40613, 49918, 49919, 49920, 4221, 10928, 10929, 233, 64, 10053,
    10054, 10060,
];

/// Folds a tiberius error into ferry's kinds, with what to do.
pub fn sql_error(connector: &Connector, what: &str, e: tiberius::error::Error) -> Error {
    use tiberius::error::Error as E;
    let name = &connector.name;
    match e {
        E::Server(token) => {
            let number = token.code();
            let message = token.message().to_string();
            let (kind, hint) = match number {
                18456 => (
                    ErrorKind::Auth,
                    "; check `user` and `password` (and that the server allows SQL authentication)",
                ),
                4060 => (
                    ErrorKind::Config,
                    "; check `database`, and that the login may open it",
                ),
                208 => (ErrorKind::InvalidInput, ""),
                _ => (ErrorKind::Store, ""),
            };
            // 4060 at login is a wrong database, not a transient fault.
            let retryable = TRANSIENT.contains(&number) && number != 4060;
            Error::new(
                kind,
                format!("connection `{name}`: {what}: SQL Server error {number}: {message}{hint}"),
            )
            .with_retryable(retryable)
        }
        E::Io {
            kind: std::io::ErrorKind::TimedOut,
            ..
        } => Error::new(
            ErrorKind::Connect,
            format!(
                "connection `{name}`: {what}: the server answered nothing within `command_timeout` ({:?}); the session is given up. Raise `command_timeout` for queries that are slow to start, or check the server and the network",
                connector.command_timeout()
            ),
        )
        .with_retryable(true),
        E::Io { kind, message } => Error::new(
            ErrorKind::Connect,
            format!("connection `{name}`: {what}: the connection failed ({kind:?}): {message}"),
        )
        .with_retryable(true),
        E::Tls(message) => Error::new(
            ErrorKind::Connect,
            format!(
                "connection `{name}`: {what}: TLS failed: {message}; check the server's certificate, `ca_cert` and `hostname_in_certificate`"
            ),
        ),
        other => Error::new(
            ErrorKind::Store,
            format!("connection `{name}`: {what}: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_without_io_and_debug_hides_the_password() {
        let c: SqlServerConnection = serde_json::from_str(
            r#"{"host": "db", "user": "u", "password": {"env": "FERRY_TEST_NO_SUCH_VAR"}}"#,
        )
        .unwrap();
        let err = c.validate("erp").unwrap_err().to_string();
        assert!(
            err.contains("FERRY_TEST_NO_SUCH_VAR") && err.contains("erp"),
            "{err}"
        );
        assert!(!format!("{c:?}").contains("FERRY_TEST_NO_SUCH_VAR"));
        let ado: SqlServerConnection = serde_json::from_str(
            r#"{"connection_string": {"env": "FERRY_TEST_ADO"}, "user": "u"}"#,
        )
        .unwrap();
        assert!(
            ado.validate("erp")
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        let both: SqlServerConnection = serde_json::from_str(
            r#"{"host": "db", "port": 1433, "instance": "SQL1", "user": "u", "password": {"env": "X"}}"#,
        )
        .unwrap();
        assert!(
            both.validate("erp")
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
        assert!(
            serde_json::from_str::<SqlServerConnection>(
                r#"{"host": "db", "user": "u", "password": "literal"}"#
            )
            .is_err(),
            "a literal password is refused"
        );
    }
}
