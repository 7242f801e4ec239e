//! The sink contract: prepare, write each output under a temporary name, publish all outputs
//! together on success, or throw them away.

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::encode::Encoder;
use crate::error::Result;

/// How partitions map to outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputLayout {
    /// Each partition becomes its own output (`part-00000.parquet`, ...).
    PerPartition,
    /// All partitions flow into one output (one file).
    Single,
}

/// An output written and not yet published: the input of [`Sink::commit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The output's index.
    pub output: usize,
    /// The temporary location it was written to.
    pub temporary: String,
    /// Where it is published.
    pub target: String,
    /// Bytes written.
    pub bytes: u64,
}

/// What a commit published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Locations published.
    pub outputs: Vec<String>,
    /// Outputs of an earlier run that this commit replaced and removed.
    pub removed: Vec<String>,
}

/// A store that data is written to.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Checks the destination, removes leftovers of a dead run of the same job, publishes
    /// nothing. Fails before any data moves if the destination cannot be written.
    async fn prepare(&self, schema: &SchemaRef) -> Result<()>;

    /// How partitions map to outputs.
    fn layout(&self) -> OutputLayout;

    /// A new encoder for output `output` (called right after [`Sink::open`] of that output).
    fn encoder(&self, schema: &SchemaRef, output: usize) -> Result<Box<dyn Encoder>>;

    /// Opens output `output` under a temporary name.
    async fn open(&self, output: usize) -> Result<Box<dyn OutputWriter>>;

    /// Publishes all staged outputs; the only step that makes data visible.
    async fn commit(&self, staged: Vec<Staged>) -> Result<Committed>;

    /// Removes staged outputs and any temporary data of this run; idempotent.
    async fn abort(&self, staged: Vec<Staged>) -> Result<()>;

    /// The connector name, for metrics labels and reports.
    fn connector(&self) -> &'static str;
}

/// Writes the chunks of one output.
#[async_trait::async_trait]
pub trait OutputWriter: Send {
    /// Writes a chunk.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled write leaves the output in an unknown state; call
    /// [`OutputWriter::abort`] afterwards.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;

    /// Completes the output under its temporary name.
    async fn finish(self: Box<Self>) -> Result<Staged>;

    /// Discards the output.
    async fn abort(self: Box<Self>) -> Result<()>;
}
