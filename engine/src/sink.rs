//! The sink contract: prepare a run, write each output under a temporary name, publish all
//! outputs together on success, or throw them away. State travels in handles, as
//! object_store's `put_multipart` hands back its upload: `prepare` returns the run's
//! [`PreparedSink`], `open` an output's [`OpenOutput`], `finish` a [`StagedOutput`] that owns
//! its temporary file, upload or transaction.

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

/// What a commit published.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Locations published.
    pub outputs: Vec<String>,
    /// Outputs of an earlier run that this commit replaced and removed.
    pub removed: Vec<String>,
}

/// A store that data is written to: a recipe, checked and turned into one run's
/// [`PreparedSink`] by [`Sink::prepare`].
#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Checks the destination, removes leftovers of a dead run of the same job, publishes
    /// nothing. Fails before any data moves if the destination cannot be written. The
    /// returned handle carries everything the run needs (the load plan, the directories it
    /// created), so nothing depends on call order.
    async fn prepare(&self, schema: &SchemaRef) -> Result<Box<dyn PreparedSink>>;

    /// The connector name, for metrics labels and reports.
    fn connector(&self) -> &'static str;
}

/// An output opened under a temporary name: its encoder and its writer, made together so
/// that they can share what the output needs (a roll-over's file boundaries).
pub struct OpenOutput {
    /// Turns the output's batches into bytes.
    pub encoder: Box<dyn Encoder>,
    /// Writes those bytes.
    pub writer: Box<dyn OutputWriter>,
}

/// One run's handle on its destination, from [`Sink::prepare`] to commit or abort.
#[async_trait::async_trait]
pub trait PreparedSink: Send + Sync {
    /// How partitions map to outputs.
    fn layout(&self) -> OutputLayout;

    /// What the report should say about how this run writes (how many sessions load a
    /// table, and why), one line each.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Opens output `output` under a temporary name (afresh for every attempt).
    async fn open(&self, schema: &SchemaRef, output: usize) -> Result<OpenOutput>;

    /// Publishes all staged outputs; the only step that makes data visible. Outputs it could
    /// not publish are discarded before it returns an error.
    async fn commit(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<Committed>;

    /// Discards `staged` and any temporary data of this run; idempotent.
    async fn abort(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<()>;
}

/// An output written completely and not yet published: it owns what holds it (a temporary
/// file, an upload's stored blocks, an open transaction) until it is published or
/// discarded.
#[async_trait::async_trait]
pub trait StagedOutput: Send + std::fmt::Debug {
    /// The output's index.
    fn output(&self) -> usize;

    /// Bytes written.
    fn bytes(&self) -> u64;

    /// Makes the output visible; returns the locations published.
    async fn publish(self: Box<Self>) -> Result<Vec<String>>;

    /// Throws the output away; nothing of it stays visible or stored.
    async fn discard(self: Box<Self>) -> Result<()>;
}

/// Publishes `staged` in order; the first failure discards the rest and is returned.
pub async fn publish_all(staged: Vec<Box<dyn StagedOutput>>) -> Result<Vec<String>> {
    let mut published = Vec::new();
    let mut staged = staged.into_iter();
    let mut index = 0;
    while let Some(output) = staged.next() {
        match output.publish().await {
            Ok(locations) => {
                published.extend(locations);
                crash_point(&format!("publish:output-{index}"));
                index += 1;
            }
            Err(e) => {
                discard_all(staged.collect()).await;
                return Err(e);
            }
        }
    }
    Ok(published)
}

/// Discards every output of `staged`, logging what could not be discarded.
pub async fn discard_all(staged: Vec<Box<dyn StagedOutput>>) {
    for output in staged {
        let shown = format!("{output:?}");
        if let Err(e) = output.discard().await {
            tracing::warn!(output = %shown, error = %e, "could not discard a staged output");
        }
    }
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
    async fn finish(self: Box<Self>) -> Result<Box<dyn StagedOutput>>;

    /// Discards the output.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Crashes the process at a named step of a commit when the environment variable
/// `FERRY_TEST_CRASH_AT` names it, as a `kill -9` would there (no clean-up runs). The tests
/// kill ferry this way between every pair of publish steps; nothing else sets it.
pub fn crash_point(step: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("FERRY_TEST_CRASH_AT").ok())
        .as_deref()
        == Some(step)
    {
        eprintln!("FERRY_TEST_CRASH_AT={step}: crashing here on purpose");
        std::process::abort();
    }
}
