//! A private Azurite (Azure Storage emulator) for the tests: started once per test run on
//! free loopback ports through `scripts/azurite.sh` (installed by `scripts/test.sh`), with a
//! watchdog that stops it and removes its files when the tests end.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::{free_port, repo_root};

/// Azurite's published development account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key (public, documented by Microsoft).
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The environment variable the tests' connections read the key from.
pub const KEY_ENV: &str = "FERRY_IT_AZURITE_KEY";

/// A running emulator.
pub struct Azurite {
    /// Blob service port on 127.0.0.1.
    pub blob_port: u16,
    /// Queue service port on 127.0.0.1.
    pub queue_port: u16,
}

static AZURITE: OnceLock<Azurite> = OnceLock::new();

/// The shared emulator, started on first use.
pub fn azurite() -> &'static Azurite {
    AZURITE.get_or_init(|| {
        let (blob_port, queue_port) = (free_port(), free_port());
        let dir: PathBuf =
            std::env::temp_dir().join(format!("ferry-it-azurite-{}", std::process::id()));
        let script = repo_root().join("scripts/azurite.sh");
        let status = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .arg(blob_port.to_string())
            .arg(queue_port.to_string())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "Azurite did not start (installed? `scripts/azurite.sh install`); see {}/azurite.log",
            dir.display()
        );
        super::stop_when_tests_end(&script, &dir);
        // Each test names the key by this variable, set by .cargo/config.toml.
        super::expect_env(KEY_ENV, KEY);
        Azurite {
            blob_port,
            queue_port,
        }
    })
}

impl Azurite {
    /// The account endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.blob_port)
    }

    /// The queue service's account endpoint.
    pub fn queue_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.queue_port)
    }

    /// Creates a container (idempotent).
    pub fn container(&self, name: &str) -> String {
        super::succeed(
            Command::new("python3")
                .arg(repo_root().join("scripts/azure-container.py"))
                .args(["create", &self.endpoint(), ACCOUNT, KEY, name]),
        );
        name.to_string()
    }

    /// An account SAS token for the blob service with `permissions`.
    pub fn sas(&self, permissions: &str) -> String {
        self.sas_for(permissions, "b")
    }

    /// An account SAS token for `services` (`b`, `q`, `bq`) with `permissions`.
    pub fn sas_for(&self, permissions: &str, services: &str) -> String {
        super::succeed(
            Command::new("python3")
                .arg(repo_root().join("scripts/azure-container.py"))
                .args(["sas", &self.endpoint(), ACCOUNT, KEY, permissions, services]),
        )
        .trim()
        .to_string()
    }

    /// The JSON of an `azure_blob` connection with shared-key auth (and `extra` members).
    pub fn connection(&self) -> String {
        format!(
            r#"{{"type": "azure_blob", "account": "{ACCOUNT}", "endpoint": "{}", "allow_http": true, "auth": {{"type": "shared_key", "key": {{"env": "{KEY_ENV}"}}}}}}"#,
            self.endpoint()
        )
    }

    /// [`Azurite::connection`], parsed as the connections file parses it.
    pub fn blob_connection(&self) -> ferry_connectors::azure_blob::AzureBlobConnection {
        match serde_json::from_str(&self.connection()).unwrap() {
            ferry_connectors::ConnectionSpec::AzureBlob(c) => c,
            other => panic!("not an azure_blob connection: {other:?}"),
        }
    }

    /// The bytes of blob `name` in `container`, read with object_store (not through ferry).
    pub fn get(&self, container: &str, name: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        let store = self.blob_connection().store("az", container).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let path = object_store::path::Path::from(name);
                store
                    .get(&path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .to_vec()
            })
    }

    /// Every blob name in `container` under `prefix`, sorted.
    pub fn list(&self, container: &str, prefix: &str) -> Vec<String> {
        let conn = self.blob_connection();
        let store = conn.store("az", container).unwrap();
        let prefix = object_store::path::Path::from(prefix);
        let mut names: Vec<String> = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use futures::TryStreamExt;
                store
                    .list(Some(&prefix))
                    .try_collect::<Vec<_>>()
                    .await
                    .unwrap()
            })
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        names.sort();
        names
    }
}

/// Every Parquet blob under `prefix` in `store`, in name order, read with object_store and
/// the parquet crate (not through ferry).
pub fn parquet_blobs(
    store: &dyn object_store::ObjectStore,
    prefix: &str,
) -> Vec<arrow::record_batch::RecordBatch> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prefix = object_store::path::Path::from(prefix);
        let mut listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        listed.sort_by(|a, b| a.location.cmp(&b.location));
        let mut batches = Vec::new();
        for meta in listed
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
        {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .unwrap()
                    .build()
                    .unwrap();
            batches.extend(reader.map(|b| b.unwrap()));
        }
        batches
    })
}
