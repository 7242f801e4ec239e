//! The encoder contract: turn record batches into the bytes a sink writes.
//!
//! Encoders run on dedicated CPU threads (the encoder pool), never on the async runtime.

use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::error::Result;

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
