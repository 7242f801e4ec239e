//! The job file's typed sections: every source, sink and staging area a job can name.
//!
//! A new store adds a variant to [`SourceSpec`] and/or [`SinkSpec`] (and a connection to
//! [`crate::connection::ConnectionSpec`]); every `match` over them is exhaustive, so the
//! compiler lists each place that must handle it.

use ferry_engine::config::JobSpec;
use ferry_engine::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::azure_blob::{AzureBlobSinkSpec, AzureBlobSourceSpec};
use crate::file::{FileSinkSpec, FileSourceSpec};
use crate::format::FormatSpec;
use crate::format::parquet::ParquetCodec;
use crate::postgres::{PostgresSinkSpec, PostgresSourceSpec};
use crate::sqlserver::{SqlServerSinkSpec, SqlServerSourceSpec};
use crate::tpch::TpchSourceSpec;

/// Every source a job can name, by `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceSpec {
    /// Local files.
    File(FileSourceSpec),
    /// Generated TPC-H data.
    Tpch(TpchSourceSpec),
    /// A PostgreSQL table or query.
    Postgres(PostgresSourceSpec),
    /// Blobs in an Azure Storage container.
    AzureBlob(AzureBlobSourceSpec),
    /// A SQL Server table or query.
    Sqlserver(SqlServerSourceSpec),
}

/// Every sink a job can name, by `type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkSpec {
    /// Local files.
    File(FileSinkSpec),
    /// A PostgreSQL table.
    Postgres(PostgresSinkSpec),
    /// Blobs in an Azure Storage container.
    AzureBlob(AzureBlobSinkSpec),
    /// A SQL Server table.
    Sqlserver(SqlServerSinkSpec),
}

/// A job file.
pub type JobFile = JobSpec<SourceSpec, SinkSpec, StagingSpec>;

impl SourceSpec {
    /// The connector's name, as reports and metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::File(_) => "file",
            SourceSpec::Tpch(_) => "tpch",
            SourceSpec::Postgres(_) => "postgres",
            SourceSpec::AzureBlob(_) => "azure_blob",
            SourceSpec::Sqlserver(_) => "sqlserver",
        }
    }

    /// Checks the section without I/O.
    pub fn validate(&self) -> Result<()> {
        match self {
            SourceSpec::File(s) => s.validate(),
            SourceSpec::Tpch(s) => s.validate(),
            SourceSpec::Postgres(s) => s.validate(),
            SourceSpec::AzureBlob(s) => s.validate(),
            SourceSpec::Sqlserver(s) => s.validate(),
        }
    }

    /// The connection the section names, if any.
    pub fn connection(&self) -> Option<&str> {
        match self {
            SourceSpec::File(s) => s.connection.as_deref(),
            SourceSpec::Tpch(_) => None,
            SourceSpec::Postgres(s) => Some(&s.connection),
            SourceSpec::AzureBlob(s) => Some(&s.connection),
            SourceSpec::Sqlserver(s) => Some(&s.connection),
        }
    }

    /// The format of a file-like source (files, blobs).
    pub fn format(&self) -> Option<&FormatSpec> {
        match self {
            SourceSpec::File(s) => Some(&s.format),
            SourceSpec::AzureBlob(s) => Some(&s.format),
            SourceSpec::Tpch(_) | SourceSpec::Postgres(_) | SourceSpec::Sqlserver(_) => None,
        }
    }
}

impl SinkSpec {
    /// The connector's name, as reports and metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkSpec::File(_) => "file",
            SinkSpec::Postgres(_) => "postgres",
            SinkSpec::AzureBlob(_) => "azure_blob",
            SinkSpec::Sqlserver(_) => "sqlserver",
        }
    }

    /// Checks the section without I/O.
    pub fn validate(&self) -> Result<()> {
        match self {
            SinkSpec::File(s) => s.validate(),
            SinkSpec::Postgres(s) => s.validate(),
            SinkSpec::AzureBlob(s) => s.validate(),
            SinkSpec::Sqlserver(s) => s.validate(),
        }
    }

    /// The connection the section names, if any.
    pub fn connection(&self) -> Option<&str> {
        match self {
            SinkSpec::File(s) => s.connection.as_deref(),
            SinkSpec::Postgres(s) => Some(&s.connection),
            SinkSpec::AzureBlob(s) => Some(&s.connection),
            SinkSpec::Sqlserver(s) => Some(&s.connection),
        }
    }

    /// The format of a file-like sink (files, blobs).
    pub fn format(&self) -> Option<&FormatSpec> {
        match self {
            SinkSpec::File(s) => Some(&s.format),
            SinkSpec::AzureBlob(s) => Some(&s.format),
            SinkSpec::Postgres(_) | SinkSpec::Sqlserver(_) => None,
        }
    }

    /// The path of a file-like sink (files, blobs).
    pub fn path(&self) -> Option<&str> {
        match self {
            SinkSpec::File(s) => Some(&s.path),
            SinkSpec::AzureBlob(s) => Some(&s.path),
            SinkSpec::Postgres(_) | SinkSpec::Sqlserver(_) => None,
        }
    }
}

/// The `staging` section of a job.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StagingSpec {
    /// A `file` or `azure_blob` connection; none for a local path.
    #[serde(default)]
    pub connection: Option<String>,
    /// A directory (local or under the `file` connection's root), or `container/prefix` for
    /// an `azure_blob` connection.
    pub path: String,
    /// Format of the interim files: `parquet` (default: typed, compact) or `csv` (the
    /// classic delimited text; every column type must have a CSV type name).
    #[serde(default)]
    pub format: InterimFormat,
    /// Compression of the interim files: zstd (default), gzip, snappy (Parquet only) or none.
    #[serde(default)]
    pub compression: Option<ParquetCodec>,
}

/// The format of interim files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InterimFormat {
    /// Parquet.
    #[default]
    Parquet,
    /// CSV (header, PostgreSQL null convention).
    Csv,
}

impl StagingSpec {
    /// Checks the section without I/O.
    pub fn validate(&self) -> Result<()> {
        if self.path.trim().is_empty() {
            return Err(Error::config(
                "staging: `path` is empty; give a directory (or `container/prefix` for an azure_blob connection)",
            ));
        }
        if self.format == InterimFormat::Csv && self.compression == Some(ParquetCodec::Snappy) {
            return Err(Error::config(
                "staging: snappy applies to Parquet interim files; use gzip, zstd or none for csv",
            ));
        }
        Ok(())
    }

    /// The container and prefix of `path` for a blob staging area.
    pub fn container_and_prefix(&self) -> (&str, &str) {
        let path = self.path.trim_matches('/');
        path.split_once('/').unwrap_or((path, ""))
    }
}
