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
pub mod ranges;
pub mod registry;
pub mod sqlserver;
pub mod staged;
pub mod tls;
pub mod tpch;
pub mod verify;

#[cfg(test)]
mod fuzz_formats;
#[cfg(test)]
mod fuzz_tests;

pub use connection::{ConnectionSpec, Connections};
pub use job::{JobFile, SinkSpec, SourceSpec, StagingSpec};
pub use policy::{NodePolicy, PolicyConfig, PolicyContext};
pub use registry::{
    build_job, check_connection, check_connections, parse_job, validate_connections,
};
pub use staged::run_job;

pub use tls::install_crypto_provider;
