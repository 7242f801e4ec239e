//! The encoder contract: turn record batches into the bytes a sink writes.
//!
//! Encoders run on dedicated CPU threads (the encoder pool), never on the async runtime; a
//! node can cap what all its jobs encode at once with [`EncodeSlots`].

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Result;

/// A cap on the batches a node encodes at once, shared by every job it runs: an encoder takes
/// a slot for each batch it encodes (and for each flush and footer) and gives it back before
/// it waits for anything else, so however many jobs and partitions run, at most this many
/// batches are encoded at a time, and jobs take turns in the order they asked. Without one
/// (the default), each job's encoders run as the operating system schedules them: measured
/// faster and leaner than a cap at the cores (perf/results/encode-sharing.md); a cap is for
/// leaving cores to other work on the host.
#[derive(Debug, Clone)]
pub struct EncodeSlots {
    semaphore: Arc<Semaphore>,
    slots: usize,
}

/// A slot taken; given back on drop.
#[must_use = "the slot is given back when this is dropped"]
pub struct EncodeSlot(#[allow(dead_code)] OwnedSemaphorePermit);

impl EncodeSlots {
    /// `slots` slots (at least one).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(slots)),
            slots,
        }
    }

    /// How many batches may be encoded at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Waits, blocking this (encoder) thread, for a slot.
    pub fn take(&self) -> EncodeSlot {
        let permit = futures::executor::block_on(self.semaphore.clone().acquire_owned());
        // The semaphore is never closed.
        EncodeSlot(permit.expect("encode slots are never closed"))
    }
}

/// Encodes batches into one output (a file, a blob, a COPY stream).
pub trait Encoder: Send + 'static {
    /// Encodes a batch. May buffer (a Parquet row group) and return nothing yet.
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>>;

    /// Pushes out what is buffered (ends a row group early) to give memory back.
    fn flush(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }

    /// Ends the output (a file footer) and returns the last bytes.
    fn finish(&mut self) -> Result<Option<Bytes>>;

    /// Bytes held inside the encoder, charged to the job's byte budget.
    fn buffered_bytes(&self) -> usize {
        0
    }

    /// Rows encoded but still buffered inside the encoder (not yet in a returned chunk).
    fn buffered_rows(&self) -> u64 {
        0
    }
}
