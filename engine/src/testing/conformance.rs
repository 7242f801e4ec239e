//! Conformance suites: what every source and sink promises the engine, checked against a real
//! store. A store's tests call [`check_source`] and [`check_sink`] from a plain `#[test]`;
//! each suite runs the store on a current-thread runtime of its own, inside a
//! [`LiveWork`] scope, and panics with the store's name and the broken promise.
//!
//! Source promises:
//! - `plan` + reading every partition yields exactly the expected rows;
//! - checkpoints count the records consumed so far, and resuming a partition from any
//!   checkpoint it handed out yields exactly the rest of that partition;
//! - dropping a stream after its first batch leaves no task, blocking work or server session
//!   running (counted, not assumed), and gives back every byte of the budget it was opened
//!   with (what it read ahead was charged there).
//!
//! Sink promises:
//! - nothing is visible before the commit, while outputs are written or once they are
//!   finished; the commit publishes every output;
//! - aborting after every output finished leaves nothing, and aborting again is harmless;
//! - an output abandoned mid-way (its writer aborted, as the engine does on cancel) and the
//!   run aborted leave nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;

use crate::channel::ByteBudget;
use crate::error::Result;
use crate::sink::{OutputLayout, PreparedSink, Sink, StagedOutput};
use crate::source::{Checkpoint, Partition, Source};
use crate::task::LiveWork;

/// How long a dropped stream's work may take to end.
const SETTLE: Duration = Duration::from_secs(10);

/// Every row of `batches` as text, columns joined by `|`, nulls as `NULL`, in order.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter<'_>> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<_, _>>()
            .unwrap_or_else(|e| panic!("cannot format a column: {e}"));
        for row in 0..batch.num_rows() {
            let values: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            out.push(values.join("|"));
        }
    }
    out
}

/// `rows`, sorted: for comparing outputs whose order across partitions is free.
pub fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = rows(batches);
    rows.sort();
    rows
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"))
}

/// Calls a store's probe (which may run a runtime and spawn work of its own) outside the
/// suite's count of live work.
fn aside<T>(probe: impl FnOnce() -> T) -> T {
    let _aside = LiveWork::new().enter();
    probe()
}

/// What the source suite needs beyond the source.
pub struct SourceChecks {
    /// Partitions asked of `plan` (default 4).
    pub parallelism: usize,
    /// Counts the store's server sessions that this source may hold open (none for stores
    /// without sessions); called outside the suite's runtime.
    pub sessions: Option<Box<dyn Fn() -> usize>>,
}

impl Default for SourceChecks {
    fn default() -> Self {
        Self {
            parallelism: 4,
            sessions: None,
        }
    }
}

/// One partition read to its end.
struct Read {
    rows: Vec<String>,
    checkpoints: Vec<Checkpoint>,
}

async fn read_partition(
    store: &str,
    source: &Arc<dyn Source>,
    partition: &Partition,
    resume: Option<Checkpoint>,
) -> Read {
    let mut stream = source
        .open(partition, resume, &ByteBudget::unbounded())
        .unwrap_or_else(|e| panic!("{store}: cannot open {partition}: {e}"));
    let mut read = Read {
        rows: Vec::new(),
        checkpoints: Vec::new(),
    };
    let mut records = resume.map_or(0, |c| c.records);
    while let Some(item) = stream.next().await {
        let item = item.unwrap_or_else(|e| panic!("{store}: reading {partition} failed: {e}"));
        records += item.records();
        assert_eq!(
            item.checkpoint.records, records,
            "{store}: {partition}: a checkpoint must count every record consumed so far"
        );
        read.rows.extend(rows(std::slice::from_ref(&item.batch)));
        read.checkpoints.push(item.checkpoint);
    }
    read
}

/// Runs the source suite on the source `build` makes; `expected` holds every row the source
/// must produce (from the input or an independent tool), in any order.
pub fn check_source<F, Fut>(store: &str, build: F, expected: &[RecordBatch], checks: SourceChecks)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Source>>>,
{
    let rt = runtime();
    let live = LiveWork::new();
    let _entered = live.enter();
    let source = rt
        .block_on(build())
        .unwrap_or_else(|e| panic!("{store}: cannot build the source: {e}"));
    if let Some(first) = expected.first() {
        let names = |s: &SchemaRef| s.fields().iter().map(|f| f.name().clone()).collect();
        let (got, want): (Vec<String>, Vec<String>) =
            (names(&source.schema()), names(&first.schema()));
        assert_eq!(got, want, "{store}: the source's columns");
    }
    let partitions = rt
        .block_on(source.plan(checks.parallelism))
        .unwrap_or_else(|e| panic!("{store}: plan failed: {e}"));
    assert!(
        !partitions.is_empty(),
        "{store}: plan returned no partition"
    );

    // Plan + read equals the expected table.
    let reads: Vec<Read> = partitions
        .iter()
        .map(|p| rt.block_on(read_partition(store, &source, p, None)))
        .collect();
    let mut all: Vec<String> = reads.iter().flat_map(|r| r.rows.clone()).collect();
    all.sort();
    let want = sorted_rows(expected);
    assert_eq!(
        all.len(),
        want.len(),
        "{store}: rows read across every partition"
    );
    assert!(
        all == want,
        "{store}: the rows read differ from the expected rows"
    );

    // Resuming from every checkpoint equals the rest of a full read.
    for (partition, read) in partitions.iter().zip(&reads) {
        for (i, checkpoint) in read.checkpoints.iter().enumerate() {
            let rest = rt.block_on(read_partition(store, &source, partition, Some(*checkpoint)));
            let offset = checkpoint.records as usize;
            assert!(
                rest.rows == read.rows[offset.min(read.rows.len())..],
                "{store}: {partition}: resuming after checkpoint {i} ({checkpoint:?}) must read the rest of the partition: {} rows, not {}",
                read.rows.len().saturating_sub(offset),
                rest.rows.len()
            );
        }
    }

    // Dropping a stream after its first batch leaves nothing running.
    let tasks_before = live.running();
    let sessions_before = checks.sessions.as_ref().map(aside);
    let budget = ByteBudget::new(256 * 1024);
    rt.block_on(async {
        let mut stream = source
            .open(&partitions[0], None, &budget)
            .unwrap_or_else(|e| panic!("{store}: cannot open {}: {e}", partitions[0]));
        match stream.next().await {
            Some(Ok(first)) => {
                assert!(
                    first.charge.reservation.bytes() <= budget.total_bytes(),
                    "{store}: a batch held more than the whole budget"
                );
                // Let the source read ahead as far as the budget lets it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Some(Err(e)) => panic!("{store}: first batch: {e}"),
            None => panic!("{store}: {} yielded no batch", partitions[0]),
        }
        drop(stream);
        let deadline = Instant::now() + SETTLE;
        while live.running() > tasks_before {
            assert!(
                Instant::now() < deadline,
                "{store}: {} task(s) or blocking closure(s) still run {SETTLE:?} after the stream was dropped",
                live.running() - tasks_before
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The count may have included work of an earlier read that was ending: wait for the
        // budget as well, within the same time.
        while budget.available_bytes() < budget.total_bytes() {
            assert!(
                Instant::now() < deadline,
                "{store}: {} bytes of the budget the stream was opened with are still held {SETTLE:?} after it was dropped",
                budget.total_bytes() - budget.available_bytes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    if let (Some(count), Some(before)) = (&checks.sessions, sessions_before) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let now = aside(count);
            if now <= before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{store}: {} server session(s) still open {SETTLE:?} after the stream was dropped",
                now - before
            );
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        }
    }
}

/// A store's destination under test, for [`check_sink`].
pub trait SinkTarget {
    /// A sink writing to destination `case`, which no other case uses.
    fn sink(&self, case: &str) -> Result<Arc<dyn Sink>>;

    /// Every row a reader sees at `case`, as [`rows`] formats them (`id|name`), in any order;
    /// empty when the destination does not exist.
    fn visible(&self, case: &str) -> Vec<String>;

    /// What a run left at `case` besides published rows (temporary files or directories,
    /// uncommitted uploads, open sessions); empty when nothing is left.
    fn leftovers(&self, case: &str) -> Vec<String>;
}

/// The schema the sink suite writes: `id` (int64, not null), `name` (utf8, with nulls).
pub fn sink_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

/// The sink suite's input: `outputs` outputs of `batches` batches of `rows` rows each.
fn sink_input(outputs: usize, batches: usize, rows: usize) -> Vec<Vec<RecordBatch>> {
    let schema = sink_schema();
    (0..outputs)
        .map(|o| {
            (0..batches)
                .map(|b| {
                    let first = ((o * batches + b) * rows) as i64;
                    let ids: Vec<i64> = (first..first + rows as i64).collect();
                    let names: Vec<Option<String>> = ids
                        .iter()
                        .map(|i| (i % 7 != 0).then(|| format!("name {i} ü,\"x\"")))
                        .collect();
                    let columns: Vec<ArrayRef> = vec![
                        Arc::new(Int64Array::from(ids)),
                        Arc::new(StringArray::from(names)),
                    ];
                    RecordBatch::try_new(schema.clone(), columns)
                        .unwrap_or_else(|e| panic!("sink input: {e}"))
                })
                .collect()
        })
        .collect()
}

/// Writes every batch of `input` into output `index`; returns the staged output.
async fn write_output(
    store: &str,
    sink: &dyn PreparedSink,
    index: usize,
    input: &[RecordBatch],
) -> Box<dyn StagedOutput> {
    let schema = sink_schema();
    let mut open = sink
        .open(&schema, index)
        .await
        .unwrap_or_else(|e| panic!("{store}: cannot open output {index}: {e}"));
    for batch in input {
        let encoded = open.encoder.encode(batch);
        let flushed = open.encoder.flush();
        for bytes in [encoded, flushed] {
            let bytes = bytes.unwrap_or_else(|e| panic!("{store}: encode: {e}"));
            if let Some(bytes) = bytes {
                open.writer
                    .write(bytes)
                    .await
                    .unwrap_or_else(|e| panic!("{store}: write output {index}: {e}"));
            }
        }
    }
    if let Some(tail) = open
        .encoder
        .finish()
        .unwrap_or_else(|e| panic!("{store}: encode: {e}"))
    {
        open.writer
            .write(tail)
            .await
            .unwrap_or_else(|e| panic!("{store}: write output {index}: {e}"));
    }
    open.writer
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{store}: finish output {index}: {e}"))
}

/// The sink suite's state: its runtime, the store under test and what it writes.
struct SinkSuite<'a> {
    store: &'a str,
    target: &'a dyn SinkTarget,
    rt: tokio::runtime::Runtime,
    input: Vec<Vec<RecordBatch>>,
}

impl SinkSuite<'_> {
    fn prepare(&self, case: &str) -> Arc<dyn PreparedSink> {
        let store = self.store;
        let sink = self
            .target
            .sink(case)
            .unwrap_or_else(|e| panic!("{store}: cannot build the sink for {case}: {e}"));
        self.rt
            .block_on(sink.prepare(&sink_schema()))
            .unwrap_or_else(|e| panic!("{store}: prepare {case}: {e}"))
            .into()
    }

    fn all(&self) -> Vec<RecordBatch> {
        self.input.iter().flatten().cloned().collect()
    }

    /// The outputs as the engine would make them for the sink's layout.
    fn outputs(&self, sink: &dyn PreparedSink) -> Vec<Vec<RecordBatch>> {
        match sink.layout() {
            OutputLayout::PerPartition => self.input.clone(),
            OutputLayout::Single => vec![self.all()],
        }
    }

    /// Writes and finishes every output.
    fn write_all(&self, sink: &Arc<dyn PreparedSink>) -> Vec<Box<dyn StagedOutput>> {
        self.outputs(sink.as_ref())
            .iter()
            .enumerate()
            .map(|(index, batches)| {
                self.rt
                    .block_on(write_output(self.store, sink.as_ref(), index, batches))
            })
            .collect()
    }

    fn nothing_visible(&self, case: &str, when: &str) {
        let seen = aside(|| self.target.visible(case));
        assert!(
            seen.is_empty(),
            "{}: {} row(s) visible {when}",
            self.store,
            seen.len()
        );
    }

    /// Sessions and uploads may take a moment to end once their handles are dropped.
    fn clean(&self, case: &str, when: &str) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = aside(|| self.target.leftovers(case));
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: left {left:?} {when}",
                self.store
            );
            // Let the runtime run what ends a dropped handle (a session's driver).
            self.rt
                .block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        }
    }

    /// Nothing visible before the commit; the commit publishes every output.
    fn commit(&self) {
        let (store, case) = (self.store, "commit");
        let sink = self.prepare(case);
        let mut staged = Vec::new();
        for (index, batches) in self.outputs(sink.as_ref()).iter().enumerate() {
            staged.push(
                self.rt
                    .block_on(write_output(store, sink.as_ref(), index, batches)),
            );
            self.nothing_visible(
                case,
                &format!("after output {index} was finished, before the commit"),
            );
        }
        let committed = self
            .rt
            .block_on(sink.commit(staged))
            .unwrap_or_else(|e| panic!("{store}: commit: {e}"));
        assert!(
            !committed.outputs.is_empty(),
            "{store}: the commit names what it published"
        );
        let mut seen = aside(|| self.target.visible(case));
        seen.sort();
        let written = sorted_rows(&self.all());
        assert_eq!(
            seen.len(),
            written.len(),
            "{store}: rows visible after the commit"
        );
        assert!(
            seen == written,
            "{store}: the published rows differ from those written"
        );
        self.clean(case, "after the commit");
    }

    /// Abort after every output finished leaves nothing; a second abort is harmless.
    fn abort(&self) {
        let (store, case) = (self.store, "abort");
        let sink = self.prepare(case);
        let staged = self.write_all(&sink);
        self.rt
            .block_on(sink.abort(staged))
            .unwrap_or_else(|e| panic!("{store}: abort: {e}"));
        self.nothing_visible(case, "after an abort");
        self.clean(case, "after an abort");
        self.rt
            .block_on(sink.abort(Vec::new()))
            .unwrap_or_else(|e| panic!("{store}: a second abort: {e}"));
        self.nothing_visible(case, "after a second abort");
        self.clean(case, "after a second abort");
    }

    /// An output abandoned mid-way, then the run aborted, leaves nothing.
    fn cancel(&self) {
        let (store, case) = (self.store, "cancel");
        let sink = self.prepare(case);
        self.rt.block_on(async {
            let schema = sink_schema();
            let mut open = sink
                .open(&schema, 0)
                .await
                .unwrap_or_else(|e| panic!("{store}: cannot open output 0: {e}"));
            for batch in &self.input[0][..2] {
                let bytes = open
                    .encoder
                    .encode(batch)
                    .and_then(|b| Ok(b.into_iter().chain(open.encoder.flush()?)))
                    .unwrap_or_else(|e| panic!("{store}: encode: {e}"));
                for chunk in bytes {
                    open.writer
                        .write(chunk)
                        .await
                        .unwrap_or_else(|e| panic!("{store}: write: {e}"));
                }
            }
            open.writer
                .abort()
                .await
                .unwrap_or_else(|e| panic!("{store}: abort output 0: {e}"));
        });
        self.nothing_visible(case, "after an output was abandoned");
        self.rt
            .block_on(sink.abort(Vec::new()))
            .unwrap_or_else(|e| panic!("{store}: abort: {e}"));
        self.nothing_visible(case, "after a cancelled run's abort");
        self.clean(case, "after a cancelled run's abort");
    }
}

/// Runs the sink suite against `target`.
pub fn check_sink(store: &str, target: &dyn SinkTarget) {
    let suite = SinkSuite {
        store,
        target,
        rt: runtime(),
        input: sink_input(3, 3, 500),
    };
    suite.commit();
    suite.abort();
    suite.cancel();
}
