//! ferry's connectors: stores (local files, PostgreSQL, a TPC-H generator), formats (CSV, JSON lines,
//! Parquet, Arrow IPC) over `ObjectStore`, and the registry that builds them from a job.

pub mod azure_blob;
pub mod binary;
pub mod connection;
pub mod control;
pub mod file;
pub mod format;
pub mod job;
pub mod policy;
pub mod postgres;
pub mod registry;
pub mod staged;
pub mod tpch;

pub use connection::{ConnectionSpec, Connections};
pub use job::{JobFile, SinkSpec, SourceSpec, StagingSpec};
pub use policy::{NodePolicy, PolicyConfig, PolicyContext};
pub use registry::{
    build_job, check_connection, check_connections, parse_job, validate_connections,
};
pub use staged::run_job;

/// Makes ring the process's TLS crypto provider. Both ring (ours) and aws-lc-rs (pulled in
/// by object_store's Azure backend) are compiled in, and rustls then cannot pick one by
/// itself. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
