//! The SQL Server test peer (the `tds-peer` crate) with TLS: a test CA, a certificate for
//! 127.0.0.1 and localhost, one login.

use std::path::{Path, PathBuf};

pub use tds_peer::{Peer, Value};

/// The peer's login.
pub const USER: &str = "ferry_it";
/// Its password; tests check it shows in no output.
pub const PASSWORD: &str = "Tds-peer-Pw-7";
/// The environment variable the connections name for the password.
pub const PASSWORD_ENV: &str = "FERRY_IT_MSSQL_PASSWORD";

/// A peer and the files a connection to it needs.
pub struct TestServer {
    /// The peer.
    pub peer: Peer,
    /// Where `ca.pem` is.
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// A peer with TLS and database `ferry`.
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "ferry test CA (SQL Server peer)");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let peer = Peer::start(tds_peer::Config {
            user: USER.into(),
            password: PASSWORD.into(),
            databases: vec!["ferry".into(), "other".into()],
            tls: Some(tds_peer::TlsIdentity {
                chain: vec![cert.der().to_vec()],
                key: key.serialize_der(),
            }),
            snapshot_isolation: false,
        })
        .unwrap();
        // The in-process sources and sinks read the password from the environment, set by
        // .cargo/config.toml.
        super::expect_env(PASSWORD_ENV, PASSWORD);
        TestServer { peer, dir }
    }

    /// The CA file that validates the peer.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A `sqlserver` connection to the peer, as JSON.
    pub fn connection(&self) -> serde_json::Value {
        serde_json::json!({"type": "sqlserver", "host": "127.0.0.1", "port": self.peer.port(),
            "database": "ferry", "user": USER, "password": {"env": PASSWORD_ENV},
            "ca_cert": self.ca()})
    }

    /// Writes a connections file with the peer as `mssql` into `dir`; returns its path.
    pub fn connections_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("connections.json");
        std::fs::write(
            &path,
            serde_json::json!({ "mssql": self.connection() }).to_string(),
        )
        .unwrap();
        path
    }
}
