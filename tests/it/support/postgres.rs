//! A private PostgreSQL server for the tests: started once per test run on a free loopback
//! port through `scripts/pg-server.sh`, with TLS (a test CA made here) and roles for the
//! authentication tests; a watchdog stops it and removes its files when the tests end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tokio_postgres::NoTls;

use super::{free_port, repo_root};

/// Password of the role `ferry_pw` (scram-sha-256 authentication).
pub const PASSWORD: &str = "s3cret-Pw";

/// A running server.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its directory (data, socket, logs, certificates).
    pub dir: PathBuf,
    /// Its server settings.
    opts: String,
}

static SERVER: OnceLock<Postgres> = OnceLock::new();

/// The shared server, started on first use.
pub fn server() -> &'static Postgres {
    SERVER.get_or_init(|| Postgres::start(&[]))
}

fn owner_uid() -> Option<u32> {
    // Running as root, the cluster runs as `postgres` (initdb refuses root).
    if !nix_is_root() {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Makes a test CA and a server certificate for `localhost` signed by it; returns the CA PEM.
pub fn make_certificates(dir: &Path, names: &[&str]) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    ca_cert.pem()
}

impl Postgres {
    /// Starts a new server (tests that restart a server use their own).
    pub fn start(extra_opts: &[&str]) -> Postgres {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ferry-it-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        make_certificates(&dir, &["localhost"]);
        let uid = owner_uid();
        for f in ["server.crt", "server.key"] {
            let p = dir.join(f);
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some(uid) = uid {
                std::os::unix::fs::chown(&p, Some(uid), None).unwrap();
            }
        }
        let script = repo_root().join("scripts/pg-server.sh");
        let opts = format!(
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
             -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key {}",
            extra_opts.join(" "),
            d = dir.display()
        );
        let status = Command::new(&script)
            .args(["start", dir.to_str().unwrap(), &port.to_string()])
            .env("PG_SERVER_OPTS", &opts)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "the test PostgreSQL server did not start (is PostgreSQL installed? `scripts/pg-server.sh install`); see {}/server.log",
            dir.display()
        );
        super::stop_when_tests_end(&script, &dir);
        let pg = Postgres { port, dir, opts };
        std::fs::write(
            pg.dir.join("data/pg_hba.conf"),
            "local all all trust\n\
             hostssl all ferry_tls 127.0.0.1/32 trust\n\
             hostnossl all ferry_tls 127.0.0.1/32 reject\n\
             host all ferry_pw 127.0.0.1/32 scram-sha-256\n\
             host all ferry_clear 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        pg.sql(
            "postgres",
            &format!(
                "SELECT pg_reload_conf(); CREATE ROLE ferry_pw LOGIN SUPERUSER PASSWORD '{PASSWORD}'; \
                 CREATE ROLE ferry_clear LOGIN SUPERUSER PASSWORD '{PASSWORD}'; \
                 CREATE ROLE ferry_tls LOGIN SUPERUSER;"
            ),
        );
        pg
    }

    /// Runs SQL statements in `database` as the superuser.
    pub fn sql(&self, database: &str, sql: &str) {
        let url = self.url(database);
        block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            ferry_engine::task::spawn_detached(conn);
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        })
    }

    /// Runs a query whose result is one row of one bigint.
    pub fn count(&self, database: &str, sql: &str) -> i64 {
        self.query(database, sql)[0][0].parse().unwrap()
    }

    /// Runs a query and returns every value as text (NULL as "NULL").
    pub fn query(&self, database: &str, sql: &str) -> Vec<Vec<String>> {
        let url = self.url(database);
        let sql = format!("SELECT * FROM ({sql}) q");
        block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            ferry_engine::task::spawn_detached(conn);
            // The simple protocol returns every value as text.
            let messages = client
                .simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).unwrap_or("NULL").to_string())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        })
    }

    /// A new, empty database for one test.
    pub fn database(&self, name: &str) -> String {
        self.sql("postgres", &format!("DROP DATABASE IF EXISTS {name}"));
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        name.to_string()
    }

    /// A superuser URL (for the tests' own sessions).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A connections file with one `postgres` connection `pg` to `database`, plus `extra`
    /// fields (JSON object members, may be empty).
    pub fn connections(&self, database: &str, extra: &str) -> String {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        format!(
            r#"{{"pg": {{"type": "postgres", "host": "127.0.0.1", "port": {}, "user": "postgres", "database": "{database}", "sslmode": "disable"{extra}}}}}"#,
            self.port
        )
    }

    /// Restarts the server (fast shutdown, then start on the same port).
    pub fn restart(&self) {
        let script = repo_root().join("scripts/pg-server.sh");
        let dir = self.dir.to_str().unwrap();
        assert!(
            Command::new(&script)
                .args(["stop", dir])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new(&script)
                .args(["start", dir, &self.port.to_string()])
                .env("PG_SERVER_OPTS", &self.opts)
                .status()
                .unwrap()
                .success()
        );
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
