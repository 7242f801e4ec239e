//! ferry's connectors: stores (local files, PostgreSQL, a TPC-H generator), formats (CSV, JSON lines,
//! Parquet, Arrow IPC) over `ObjectStore`, and the registry that builds them from a job.

pub mod file;
pub mod format;
pub mod postgres;
pub mod registry;
pub mod tpch;

pub use registry::{JobFile, SinkSpec, SourceSpec, build_job, check_connections, parse_job};
