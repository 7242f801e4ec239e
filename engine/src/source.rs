//! The source contract: plan partitions without reading data, then stream each partition as
//! record batches, resumable from a checkpoint.

use std::fmt;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// A lazily produced stream of batches; dropping it cancels the work behind it.
pub type BatchStream = BoxStream<'static, Result<SourceBatch>>;

/// One independent unit of reading: a file, a byte range of a file, a set of row groups, a
/// key range. Its `spec` is the source's own description, kept as JSON so that a plan can be
/// stored and resumed elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Partition {
    /// Position of the partition in the plan, from 0.
    pub index: usize,
    /// Human-readable description for logs and errors (`data.csv bytes 0..1048576`).
    pub description: String,
    /// Estimated bytes to read, for progress.
    pub size_hint: Option<u64>,
    /// The source's private description of the partition.
    pub spec: serde_json::Value,
}

impl Partition {
    /// A partition whose private description is `spec`.
    pub fn new<T: Serialize>(
        index: usize,
        description: impl Into<String>,
        size_hint: Option<u64>,
        spec: &T,
    ) -> Result<Self> {
        Ok(Self {
            index,
            description: description.into(),
            size_hint,
            spec: serde_json::to_value(spec)
                .map_err(|e| Error::internal(format!("cannot describe partition: {e}")))?,
        })
    }

    /// The source's private description.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.spec.clone()).map_err(|e| {
            Error::internal(format!(
                "partition {}: bad description: {e}",
                self.description
            ))
        })
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "partition {} ({})", self.index, self.description)
    }
}

/// Where a partition's reading stands after a batch: enough to resume after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Records consumed from the partition so far, skipped ones included.
    pub records: u64,
    /// A source-defined position to resume from (a byte offset, a row group), if the source
    /// can seek; otherwise it resumes by skipping `records`.
    pub position: Option<u64>,
    /// The line number at `position`, for text formats' messages.
    pub line: Option<u64>,
}

/// A row that a source skipped under `fault_tolerance.skip_incompatible_rows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRow {
    /// Where the row is (`data.csv:17`).
    pub location: String,
    /// Why it was skipped.
    pub reason: String,
}

/// One batch from a source with the bookkeeping that travels with it.
#[derive(Debug)]
pub struct SourceBatch {
    /// The rows.
    pub batch: RecordBatch,
    /// The position after this batch.
    pub checkpoint: Checkpoint,
    /// Rows of the input that this batch accounts for but does not contain.
    pub skipped: Vec<SkippedRow>,
    /// Bytes of input consumed for this batch (for progress), if known.
    pub input_bytes: u64,
}

impl SourceBatch {
    /// Records consumed for this batch: the rows it holds plus those skipped.
    pub fn records(&self) -> u64 {
        self.batch.num_rows() as u64 + self.skipped.len() as u64
    }
}

/// A store or generator that data is read from.
#[async_trait::async_trait]
pub trait Source: Send + Sync + 'static {
    /// The schema of every batch.
    fn schema(&self) -> SchemaRef;

    /// Splits the data into independent partitions; reads metadata, no data.
    /// `parallelism` is how many partitions will run at once: a hint for how finely to split.
    async fn plan(&self, parallelism: usize) -> Result<Vec<Partition>>;

    /// Opens a partition as a lazy stream, after `resume` when given.
    fn open(&self, partition: &Partition, resume: Option<Checkpoint>) -> Result<BatchStream>;

    /// The connector name, for metrics labels and reports (`file`, `postgres`).
    fn connector(&self) -> &'static str;

    /// What the job's report should say about reading `partitions` (for example that they
    /// read the source at different moments); nothing by default.
    fn notes(&self, partitions: &[Partition]) -> Vec<String> {
        let _ = partitions;
        Vec::new()
    }
}
