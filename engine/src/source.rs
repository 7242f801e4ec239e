//! The source contract: plan partitions without reading data, then stream each partition as
//! record batches, resumable from a checkpoint.

use std::fmt;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;

use crate::channel::{ByteBudget, Reservation};
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
    /// What this batch already holds of the job's budget: [`ReadAhead`] charges batches
    /// before they wait in a source's queue; the reader charges the rest.
    pub charge: Charge,
}

/// The part of the job's budget a batch holds, and how long its source waited for it.
#[derive(Debug, Default)]
pub struct Charge {
    /// Bytes held.
    pub reservation: Reservation,
    /// Time the source spent waiting for the budget for this batch (so that the report
    /// counts it as waiting for the budget, not as reading).
    pub waited: Duration,
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

    /// Opens a partition as a lazy stream, after `resume` when given. What the source builds
    /// ahead of the reader (batches in a queue, the batch being built) is charged to `budget`,
    /// through [`ReadAhead`]; anything else it holds must be bounded by a constant that does
    /// not grow with the data, the batch size or the row width.
    fn open(
        &self,
        partition: &Partition,
        resume: Option<Checkpoint>,
        budget: &ByteBudget,
    ) -> Result<BatchStream>;

    /// The connector name, for metrics labels and reports (`file`, `postgres`).
    fn connector(&self) -> &'static str;

    /// What the job's report should say about reading `partitions` (for example that they
    /// read the source at different moments); nothing by default.
    fn notes(&self, partitions: &[Partition]) -> Vec<String> {
        let _ = partitions;
        Vec::new()
    }
}

/// The sending half of a source's read-ahead queue, for sources that build batches on a task
/// or thread of their own. Every batch is charged to the job's budget before it waits in the
/// queue, and the batch being built is charged too, by an estimate (the size of the one
/// before) reserved before the source starts it. A source that runs ahead of the reader
/// therefore waits for the budget as the reader does: a slow sink slows it, and what it
/// holds counts against `max_buffer_bytes` whatever the batch size or row width.
#[derive(Debug)]
pub struct ReadAhead {
    tx: mpsc::Sender<Result<SourceBatch>>,
    budget: ByteBudget,
    /// Held for the batch being built, and the time waited for it.
    next: std::sync::Mutex<Charge>,
}

/// A read-ahead queue of `capacity` batches charged to `budget`, and its receiving end.
pub fn read_ahead(
    budget: &ByteBudget,
    capacity: usize,
) -> (ReadAhead, mpsc::Receiver<Result<SourceBatch>>) {
    let (tx, rx) = mpsc::channel(capacity);
    let ahead = ReadAhead {
        tx,
        budget: budget.clone(),
        next: std::sync::Mutex::new(Charge::default()),
    };
    (ahead, rx)
}

impl ReadAhead {
    /// Charges `batch` (what was held for it, topped up to its size), queues it, and holds
    /// as much again for the next batch before returning. False when the reader has gone:
    /// the source should stop.
    pub async fn send(&self, mut batch: SourceBatch) -> bool {
        let size = batch.batch.get_array_memory_size();
        let held = self.take_next();
        let waiting = Instant::now();
        let reservation = tokio::select! {
            r = self.budget.top_up(held.reservation, size) => r,
            _ = self.tx.closed() => return false,
        };
        batch.charge.reservation.merge(reservation);
        batch.charge.waited += held.waited + waiting.elapsed();
        if self.tx.send(Ok(batch)).await.is_err() {
            return false;
        }
        let waiting = Instant::now();
        let reservation = tokio::select! {
            r = self.budget.reserve(size) => r,
            _ = self.tx.closed() => return false,
        };
        *self.next.lock().unwrap_or_else(|e| e.into_inner()) = Charge {
            reservation,
            waited: waiting.elapsed(),
        };
        true
    }

    /// [`send`](Self::send) from a blocking thread.
    pub fn blocking_send(&self, batch: SourceBatch) -> bool {
        futures::executor::block_on(self.send(batch))
    }

    /// Queues an error: the stream's last item.
    pub async fn fail(&self, error: Error) {
        drop(self.take_next());
        let _ = self.tx.send(Err(error)).await;
    }

    /// [`fail`](Self::fail) from a blocking thread.
    pub fn blocking_fail(&self, error: Error) {
        futures::executor::block_on(self.fail(error))
    }

    /// Whether the reader has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn take_next(&self) -> Charge {
        std::mem::take(&mut *self.next.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::Int64Array;

    use super::*;

    fn batch(rows: usize) -> SourceBatch {
        let values = Int64Array::from_iter_values(0..rows as i64);
        SourceBatch {
            batch: RecordBatch::try_from_iter([("v", Arc::new(values) as _)]).unwrap(),
            checkpoint: Checkpoint {
                records: rows as u64,
                position: None,
                line: None,
            },
            skipped: vec![],
            input_bytes: 0,
            charge: Charge::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_reads_ahead_only_as_far_as_the_budget_lets_it() {
        let size = batch(1024).batch.get_array_memory_size();
        let charged = size.next_multiple_of(1024);
        // Room for two batches and a half; the queue itself would take eight.
        let budget = ByteBudget::new((size * 5 / 2) as u64);
        let (ahead, mut rx) = read_ahead(&budget, 8);
        let producer =
            crate::task::spawn_blocking(move || while ahead.blocking_send(batch(1024)) {});
        let settle = || tokio::time::sleep(Duration::from_millis(200));
        settle().await;
        // The first batch went out charged, the estimate for the second was held, the second
        // went out on it, and the estimate for the third waits: two batches fill the budget.
        assert_eq!(rx.len(), 2, "batches queued while no one read");

        let first = rx.recv().await.unwrap().unwrap();
        assert_eq!(
            first.charge.reservation.bytes() as usize,
            charged,
            "a queued batch carries its charge"
        );
        settle().await;
        assert_eq!(rx.len(), 1, "a batch taken but still held keeps its charge");
        drop(first);
        settle().await;
        assert_eq!(rx.len(), 2, "a batch dropped makes room for one more");

        drop(rx);
        producer.await.unwrap();
        assert_eq!(
            budget.available_bytes(),
            budget.total_bytes(),
            "all given back"
        );
    }
}
