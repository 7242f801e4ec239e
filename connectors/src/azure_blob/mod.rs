//! Azure Blob Storage over `object_store`'s Azure backend (maintained by the Apache Arrow
//! project): the same format code as local files, ranged GETs to read, block (multipart)
//! uploads to write.
//!
//! A blob sink uploads each output's blocks as it streams and commits the block list only
//! when the whole job succeeds, so a blob appears only then; uncommitted blocks of a failed
//! job are discarded by the service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::config::units::{ByteSize, HumanDuration};
use ferry_engine::config::{JobSettings, Secret};
use ferry_engine::{Error, Result};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::{ClientOptions, ObjectStore, RetryConfig};
use serde::{Deserialize, Serialize};

mod retry_after;

use crate::file::{self, FileSink, FileSource, Publish, RollOver, WriteMode};
use crate::format::FormatSpec;

/// Default size of one uploaded block.
pub const DEFAULT_BLOCK_SIZE: ByteSize = ByteSize::mib(8);
/// Default number of blocks uploaded at once per output.
pub const DEFAULT_MAX_CONCURRENCY: usize = 4;
/// Default time allowed for one request (a block upload is one request): `timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Time allowed to open a connection to the service.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Retries of a failed request (with backoff), and the time they may take in all.
pub const MAX_RETRIES: usize = 4;
/// See [`MAX_RETRIES`].
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(120);

/// How ferry authenticates to the storage account.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AzureAuth {
    /// The account's shared key.
    SharedKey {
        /// The key (base64), as a secret reference.
        key: Secret,
    },
    /// A SAS token (`sv=...&sig=...`).
    Sas {
        /// The token, as a secret reference.
        token: Secret,
    },
    /// A Microsoft Entra ID service principal with a client secret.
    ServicePrincipal {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// Client secret, as a secret reference.
        client_secret: Secret,
    },
    /// The managed identity of the machine ferry runs on.
    ManagedIdentity {
        /// Client id of a user-assigned identity; none for the system-assigned one.
        #[serde(default)]
        client_id: Option<String>,
    },
}

/// Outbound HTTP proxy.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProxySetting {
    /// Use HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment (default).
    #[default]
    System,
    /// Connect directly, whatever the environment says.
    None,
    /// Use this proxy.
    Custom {
        /// `http://proxy.corp:3128`.
        url: String,
        /// Hosts that bypass the proxy, comma separated (NO_PROXY syntax).
        #[serde(default)]
        excludes: Option<String>,
        /// PEM file of the CA that signs the proxy's certificate, if it intercepts TLS.
        #[serde(default)]
        ca_certificate: Option<PathBuf>,
    },
}

/// An `azure_blob` connection.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobConnection {
    /// Storage account name.
    pub account: String,
    /// Account endpoint for emulators and sovereign clouds
    /// (`http://127.0.0.1:10000/devstoreaccount1`); default `https://<account>.blob.core.windows.net`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Allow plain HTTP; only for an emulator on a loopback address.
    #[serde(default)]
    pub allow_http: bool,
    /// Authentication.
    pub auth: AzureAuth,
    /// Outbound proxy (default: the environment's).
    #[serde(default)]
    pub proxy: ProxySetting,
    /// Time allowed for one request (default 5m; a block upload is one request).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// The `azure_blob` source of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobSourceSpec {
    /// The `azure_blob` connection.
    pub connection: String,
    /// The container.
    pub container: String,
    /// A blob, a prefix ending with `/` (every blob below it) or a glob (`sales/*.csv.gz`).
    pub path: String,
    /// The blobs' format.
    pub format: FormatSpec,
}

/// The `azure_blob` sink of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobSinkSpec {
    /// The `azure_blob` connection.
    pub connection: String,
    /// The container (must exist).
    pub container: String,
    /// A blob name, or a prefix ending with `/` that gets one `part-NNNNN` blob per partition.
    pub path: String,
    /// The output format.
    pub format: FormatSpec,
    /// `overwrite` (default) or `error_if_exists`.
    #[serde(default)]
    pub mode: WriteMode,
    /// Size of one uploaded block (default 8MiB).
    #[serde(default)]
    pub block_size: Option<ByteSize>,
    /// Blocks uploaded at once per output (default 4).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Roll each partition's output over into a new blob (`part-00003-0001.parquet`, ...)
    /// after this many rows; checked between batches. Prefix paths only.
    #[serde(default)]
    pub max_rows_per_blob: Option<u64>,
    /// Roll over after this many encoded bytes (`"512MiB"`); checked between batches.
    #[serde(default)]
    pub max_bytes_per_blob: Option<ByteSize>,
}

impl AzureBlobSourceSpec {
    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        check_container(&self.container)?;
        if self.path.trim().is_empty() {
            return Err(Error::config("azure_blob source: `path` is empty"));
        }
        self.format.validate()
    }
}

impl AzureBlobSourceSpec {
    /// Builds the source: lists the blobs and reads their schema.
    pub async fn build(
        &self,
        connection: &AzureBlobConnection,
        settings: &JobSettings,
    ) -> Result<FileSource> {
        let store = connection.store(&self.connection, &self.container)?;
        let shown = format!("azure_blob {}/{}", self.container, self.path);
        let path = std::path::PathBuf::from(format!("/{}", self.path.trim_start_matches('/')));
        Ok(
            file::open_files(store, &path, &shown, &self.format, settings, false)
                .await?
                .with_connector("azure_blob"),
        )
    }
}

impl AzureBlobSinkSpec {
    /// Builds the sink (no I/O yet): blocks uploaded to each blob, committed together.
    pub fn build(
        &self,
        connection: &AzureBlobConnection,
        settings: &JobSettings,
    ) -> Result<FileSink> {
        let store = connection.store(&self.connection, &self.container)?;
        let (dir, name) = file::split_sink_path(&self.path);
        let dir = object_store::path::Path::parse(dir)
            .map_err(|e| Error::config(format!("sink path `{}`: {e}", self.path)))?;
        let format = match name {
            Some(name) => self.format.for_output_name(name),
            None => self.format.clone(),
        };
        Ok(FileSink::new(
            store,
            dir,
            None,
            name.map(str::to_string),
            format,
            self.mode,
            &settings.name,
            &format!("azure_blob {}/{}", self.container, self.path),
        )
        .with_publish(
            Publish::CompleteUpload {
                part_size: self.block_bytes(),
                concurrency: self.concurrency(settings),
            },
            "azure_blob",
        )
        .with_roll_over(RollOver {
            max_rows: self.max_rows_per_blob,
            max_bytes: self.max_bytes_per_blob.map(|b| b.bytes()),
        }))
    }
}

impl AzureBlobSinkSpec {
    /// Checks the spec without I/O.
    pub fn validate(&self) -> Result<()> {
        check_container(&self.container)?;
        if self.path.trim().is_empty() || self.path.contains(['*', '?', '[']) {
            return Err(Error::config(
                "azure_blob sink: `path` must be a blob name or a prefix ending with `/`",
            ));
        }
        if (self.max_rows_per_blob.is_some() || self.max_bytes_per_blob.is_some())
            && !crate::file::is_directory_path(&self.path)
        {
            return Err(Error::config(
                "azure_blob sink: rolling over (`max_rows_per_blob`, `max_bytes_per_blob`) needs a prefix `path` ending with `/`",
            ));
        }
        if self.max_rows_per_blob == Some(0)
            || self.max_bytes_per_blob.is_some_and(|b| b.bytes() == 0)
        {
            return Err(Error::config(
                "azure_blob sink: roll-over limits must be positive",
            ));
        }
        if self.max_concurrency == Some(0) {
            return Err(Error::config(
                "azure_blob sink: `max_concurrency` must be at least 1",
            ));
        }
        if let Some(size) = self.block_size
            && !(ByteSize::mib(1).bytes()..=ByteSize::mib(4000).bytes()).contains(&size.bytes())
        {
            return Err(Error::config(
                "azure_blob sink: `block_size` must be between 1MiB and 4000MiB",
            ));
        }
        self.format.validate()
    }

    /// Block size in bytes.
    pub fn block_bytes(&self) -> usize {
        self.block_size.unwrap_or(DEFAULT_BLOCK_SIZE).bytes() as usize
    }

    /// Blocks in flight per output: `max_concurrency`, or by default as many as an output's
    /// share of the job's budget holds, 1 to 4, so that a small budget does not hold five
    /// 8 MiB blocks an output (16 MiB over 2 copies: 1; 64 MiB and up: 4).
    pub fn concurrency(&self, settings: &JobSettings) -> usize {
        self.max_concurrency.unwrap_or_else(|| {
            let share = settings.max_buffer_bytes / settings.parallel_copies.get() as u64;
            (share / self.block_bytes() as u64).clamp(1, DEFAULT_MAX_CONCURRENCY as u64) as usize
        })
    }
}

/// Checks an endpoint (blob or queue): HTTPS, or plain HTTP to a loopback address when
/// `allow_http` says so.
pub(crate) fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<()> {
    match endpoint_kind(endpoint)? {
        EndpointKind::Https => Ok(()),
        EndpointKind::LoopbackHttp if allow_http => Ok(()),
        EndpointKind::LoopbackHttp => Err(Error::config(
            "the endpoint is plain HTTP: use HTTPS, or set `allow_http: true` for an emulator on a loopback address",
        )),
        EndpointKind::RemoteHttp => Err(Error::config(
            "plain HTTP is allowed only to a loopback emulator (127.0.0.1, localhost, [::1]); use HTTPS",
        )),
    }
}

/// Container names: 3-63 characters, lower-case letters, digits and single hyphens.
fn check_container(name: &str) -> Result<()> {
    check_storage_name(name, "container")
}

/// Container and queue names: 3-63 characters, lower-case letters, digits and single
/// hyphens; `what` names the kind in the error.
pub(crate) fn check_storage_name(name: &str, what: &str) -> Result<()> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "`{name}` is not a valid {what} name: use 3-63 lower-case letters, digits and single hyphens"
        )))
    }
}

/// What an endpoint URL allows, decided on the parsed URL (scheme in any case, user info,
/// IPv6, names), never on a prefix of the text.
#[derive(Debug, PartialEq, Eq)]
enum EndpointKind {
    /// `https://...`.
    Https,
    /// `http://` to a loopback address: an emulator on this machine.
    LoopbackHttp,
    /// `http://` anywhere else.
    RemoteHttp,
}

/// Parses an endpoint and says what it is; user info, other schemes and unparsable text are
/// refused (a URL such as `http://127.0.0.1:1@evil.example/` goes to evil.example).
fn endpoint_kind(endpoint: &str) -> Result<EndpointKind> {
    let url = url::Url::parse(endpoint)
        .map_err(|e| Error::config(format!("the endpoint `{endpoint}` is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::config(
            "the endpoint holds user information (`user@` or `user:password@`); give the account's URL without it",
        ));
    }
    match url.scheme() {
        "https" => Ok(EndpointKind::Https),
        "http" if is_loopback_host(&url) => Ok(EndpointKind::LoopbackHttp),
        "http" => Ok(EndpointKind::RemoteHttp),
        other => Err(Error::config(format!(
            "the endpoint's scheme is `{other}`: use https"
        ))),
    }
}

/// Whether the URL's host is a loopback address: 127.0.0.0/8, ::1, or `localhost` when every
/// address it resolves to is one (a name that resolves elsewhere is not loopback).
fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) if name.eq_ignore_ascii_case("localhost") => {
            use std::net::ToSocketAddrs;
            let port = url.port_or_known_default().unwrap_or(80);
            match (name, port).to_socket_addrs() {
                Ok(addrs) => {
                    let addrs: Vec<_> = addrs.collect();
                    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}

impl AzureBlobConnection {
    /// The health check of connection `name` against `container`: reach, authenticate and
    /// list the container's top level. Returns one line per step that passed.
    pub async fn check_container(
        &self,
        name: &str,
        container: Option<&str>,
    ) -> Result<Vec<String>> {
        let container = container.ok_or_else(|| {
            Error::config(
                "an azure_blob connection is checked against a container: give --container",
            )
        })?;
        let store = self.store(name, container)?;
        let mut steps = vec!["configuration: ok".to_string()];
        let listed = store.list_with_delimiter(None).await.map_err(|e| {
            crate::format::io::store_error("list", &object_store::path::Path::from(container), e)
        })?;
        steps.push(format!(
            "reach, authentication and listing of container {container}: ok ({} blobs and {} prefixes at the top)",
            listed.objects.len(),
            listed.common_prefixes.len()
        ));
        Ok(steps)
    }

    /// Checks the settings (without I/O, but for resolving `localhost`): HTTPS, or plain
    /// HTTP only to a loopback emulator with `allow_http`.
    pub fn check(&self) -> Result<()> {
        match &self.endpoint {
            Some(endpoint) => check_endpoint(endpoint, self.allow_http),
            None if self.allow_http => Err(Error::config(
                "`allow_http` needs a loopback `endpoint` (an emulator)",
            )),
            None => Ok(()),
        }
    }

    /// Checks the settings and that every secret the connection names is set (no I/O).
    pub fn validate(&self, name: &str) -> Result<()> {
        self.check()
            .and_then(|()| match &self.auth {
                AzureAuth::SharedKey { key } => key.expose().map(drop),
                AzureAuth::Sas { token } => token.expose().map(drop),
                AzureAuth::ServicePrincipal { client_secret, .. } => {
                    client_secret.expose().map(drop)
                }
                AzureAuth::ManagedIdentity { .. } => Ok(()),
            })
            .map_err(|e| e.context(format!("connection `{name}`")))
    }

    /// An object store over `container` (reads secrets; no network I/O).
    pub fn store(&self, name: &str, container: &str) -> Result<Arc<dyn ObjectStore>> {
        self.store_with(name, container, None)
    }

    /// The HTTP policy of every client of this account, blobs and queues alike: HTTPS only
    /// (plain HTTP to a loopback emulator with `allow_http`), the connect and request
    /// timeouts, and the proxy setting. As object_store's options.
    fn client_options(&self) -> Result<ClientOptions> {
        let mut options = ClientOptions::new()
            .with_allow_http(self.allow_http)
            .with_timeout(self.timeout.map_or(DEFAULT_REQUEST_TIMEOUT, |t| t.0))
            .with_connect_timeout(CONNECT_TIMEOUT);
        match &self.proxy {
            ProxySetting::System => {}
            // reqwest reads the environment's proxy unless one is set: set one that every
            // host bypasses.
            // Its excludes must match every host: `*` covers names, the two networks cover
            // IP-address endpoints (an emulator, a private endpoint by address).
            ProxySetting::None => {
                options = options
                    .with_proxy_url("http://127.0.0.1:9")
                    .with_proxy_excludes("*,0.0.0.0/0,::/0");
            }
            ProxySetting::Custom { url, excludes, .. } => {
                options = options.with_proxy_url(url);
                if let Some(excludes) = excludes {
                    options = options.with_proxy_excludes(excludes);
                }
                if let Some(pem) = self.proxy_ca()? {
                    options = options.with_proxy_ca_certificate(pem);
                }
            }
        }
        Ok(options)
    }

    /// The same policy as a reqwest client (for the queue service's SDK), whose requests
    /// time out after the connection's `timeout` or `default_timeout`.
    pub(crate) fn reqwest_client(&self, default_timeout: Duration) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .https_only(!self.allow_http)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(self.timeout.map_or(default_timeout, |t| t.0));
        builder = match &self.proxy {
            ProxySetting::System => builder,
            ProxySetting::None => builder.no_proxy(),
            ProxySetting::Custom { url, excludes, .. } => {
                let mut proxy = reqwest::Proxy::all(url)
                    .map_err(|e| Error::config(format!("proxy url `{url}`: {e}")))?;
                if let Some(excludes) = excludes {
                    proxy = proxy.no_proxy(reqwest::NoProxy::from_string(excludes));
                }
                let mut builder = builder.proxy(proxy);
                if let Some(pem) = self.proxy_ca()? {
                    let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                        .map_err(|e| Error::config(format!("proxy CA certificate: {e}")))?;
                    builder = builder.add_root_certificate(cert);
                }
                builder
            }
        };
        builder
            .build()
            .map_err(|e| Error::config(format!("cannot set up HTTP: {e}")))
    }

    /// The proxy's CA certificate (PEM), when one is given.
    fn proxy_ca(&self) -> Result<Option<String>> {
        let ProxySetting::Custom {
            ca_certificate: Some(path),
            ..
        } = &self.proxy
        else {
            return Ok(None);
        };
        std::fs::read_to_string(path).map(Some).map_err(|e| {
            Error::io(
                format!("cannot read the proxy CA certificate {}", path.display()),
                e,
            )
        })
    }

    /// [`Self::store`], its HTTP requests made through `connector` when given (such as
    /// object_store's `SpawnedReqwestConnector`, which runs them on another runtime).
    pub fn store_with(
        &self,
        name: &str,
        container: &str,
        connector: Option<object_store::client::SpawnedReqwestConnector>,
    ) -> Result<Arc<dyn ObjectStore>> {
        crate::tls::install_crypto_provider();
        let in_conn = |e: Error| e.context(format!("connection `{name}`"));
        self.check().map_err(in_conn)?;
        let mut builder = MicrosoftAzureBuilder::new()
            .with_account(&self.account)
            .with_container_name(container)
            .with_retry(RetryConfig {
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..Default::default()
            });
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
        }
        builder = builder.with_client_options(self.client_options().map_err(in_conn)?);
        let inner: Box<dyn object_store::client::HttpConnector> = match connector {
            Some(connector) => Box::new(connector),
            None => Box::new(object_store::client::ReqwestConnector::default()),
        };
        builder = builder.with_http_connector(retry_after::RetryAfterConnector(inner));
        builder = match &self.auth {
            AzureAuth::SharedKey { key } => {
                builder.with_access_key(key.expose().map_err(in_conn)?.as_str())
            }
            AzureAuth::Sas { token } => builder.with_config(
                AzureConfigKey::SasKey,
                token.expose().map_err(in_conn)?.trim_start_matches('?'),
            ),
            AzureAuth::ServicePrincipal {
                tenant_id,
                client_id,
                client_secret,
            } => builder.with_client_secret_authorization(
                client_id,
                client_secret.expose().map_err(in_conn)?.as_str(),
                tenant_id,
            ),
            // With no other credential, object_store asks the instance metadata service.
            AzureAuth::ManagedIdentity { client_id } => match client_id {
                Some(id) => builder.with_client_id(id),
                None => builder,
            },
        };
        let store = builder.build().map_err(|e| {
            in_conn(Error::config(format!(
                "cannot set up Azure Blob Storage: {e}"
            )))
        })?;
        Ok(Arc::new(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(json: &str) -> AzureBlobConnection {
        match serde_json::from_str(json).unwrap() {
            crate::connection::ConnectionSpec::AzureBlob(c) => c,
            other => panic!("not azure_blob: {other:?}"),
        }
    }

    #[test]
    fn blocks_in_flight_follow_the_budget_unless_set() {
        use crate::format::io::settings_with;
        let sink = |extra: &str| -> AzureBlobSinkSpec {
            serde_json::from_str(&format!(
                r#"{{"connection": "az", "container": "out", "path": "p/",
                    "format": {{"type": "parquet"}}{extra}}}"#
            ))
            .unwrap()
        };
        let defaults = sink("");
        // An output's share of the budget over 8 MiB blocks, 1 to 4.
        assert_eq!(defaults.concurrency(&settings_with(16, 2)), 1);
        assert_eq!(defaults.concurrency(&settings_with(16, 1)), 2);
        assert_eq!(defaults.concurrency(&settings_with(32, 2)), 2);
        assert_eq!(defaults.concurrency(&settings_with(64, 2)), 4);
        assert_eq!(defaults.concurrency(&settings_with(256, 2)), 4);
        assert_eq!(defaults.concurrency(&settings_with(1, 8)), 1);
        // Smaller blocks: more of them fit.
        let small = sink(r#", "block_size": "2MiB""#);
        assert_eq!(small.concurrency(&settings_with(16, 2)), 4);
        assert_eq!(small.concurrency(&settings_with(4, 2)), 1);
        // What the job says is what it gets.
        let set = sink(r#", "max_concurrency": 6"#);
        assert_eq!(set.concurrency(&settings_with(16, 2)), 6);
    }

    #[test]
    fn plain_http_only_to_a_loopback_emulator() {
        let base =
            r#""type":"azure_blob","account":"a","auth":{"type":"shared_key","key":{"env":"K"}}"#;
        assert!(
            conn(&format!(
                r#"{{{base},"endpoint":"http://127.0.0.1:10000/a","allow_http":true}}"#
            ))
            .check()
            .is_ok()
        );
        let err = conn(&format!(
            r#"{{{base},"endpoint":"http://127.0.0.1:10000/a"}}"#
        ))
        .check()
        .unwrap_err();
        assert!(err.to_string().contains("allow_http"), "{err}");
        let err = conn(&format!(
            r#"{{{base},"endpoint":"http://storage.corp/a","allow_http":true}}"#
        ))
        .check()
        .unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        assert!(
            conn(&format!(
                r#"{{{base},"endpoint":"https://storage.corp/a"}}"#
            ))
            .check()
            .is_ok()
        );
        assert!(
            conn(&format!(r#"{{{base},"allow_http":true}}"#))
                .check()
                .is_err()
        );
    }

    #[test]
    fn loopback_is_decided_on_the_parsed_url() {
        for bypass in [
            "http://127.0.0.1:1@evil.example/a",
            "http://user:pw@127.0.0.1:10000/a",
            "http://127.0.0.1.evil.example/a",
            "http://localhost.evil.example:10000/a",
            "http://[::ffff:8.8.8.8]:10000/a",
            "http://10.0.0.1:10000/a",
            "ftp://127.0.0.1/a",
            "HTTP://evil.example/a",
            "http:evil.example",
        ] {
            let err = check_endpoint(bypass, true);
            assert!(err.is_err(), "{bypass} passed");
        }
        for ok in [
            "http://127.0.0.1:10000/a",
            "HTTP://127.0.0.1:10000/a",
            "http://127.0.0.2:10000/a",
            "http://[::1]:10000/a",
            "http://localhost:10000/a",
            "https://evil.example/a",
            "HTTPS://account.blob.core.windows.net",
        ] {
            check_endpoint(ok, true).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = check_endpoint("http://127.0.0.1:10000/a", false).unwrap_err();
        assert!(err.to_string().contains("allow_http"), "{err}");
        let err = check_endpoint("http://127.0.0.1:1@evil.example/", true).unwrap_err();
        assert!(err.to_string().contains("user information"), "{err}");
    }

    #[test]
    fn container_names_follow_azure_rules() {
        for ok in ["abc", "raw-data", "a1b2"] {
            check_container(ok).unwrap();
        }
        for bad in ["ab", "Raw", "a--b", "-ab", "ab-", "a_b"] {
            assert!(check_container(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        // HOME's value stands for a SAS token held in the environment.
        let value = std::env::var("HOME").unwrap();
        let c = conn(
            r#"{"type":"azure_blob","account":"a","auth":{"type":"sas","token":{"env":"HOME"}}}"#,
        );
        c.validate("lake").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains(&value), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
    }
}
