//! Test helpers (feature `testing`): the conformance suites every store passes
//! ([`conformance`]), an in-memory source with injectable failures, an in-memory sink that
//! can be slow or fail, and a probe of the bytes in flight between them.

pub mod conformance;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use crate::channel::ByteBudget;
use crate::encode::Encoder;
use crate::error::{Error, Result};
use crate::sink::{
    Committed, OpenOutput, OutputLayout, OutputWriter, PreparedSink, Sink, StagedOutput,
};
use crate::source::{BatchStream, Charge, Checkpoint, Partition, Source, SourceBatch};

/// Counts batches produced by [`MemorySource`] and chunks written by [`MemorySink`] (one per
/// batch with the IPC encoder), and the largest difference seen: the batches in flight.
#[derive(Debug, Default)]
pub struct FlightProbe {
    produced: AtomicU64,
    written: AtomicU64,
    peak: AtomicU64,
}

impl FlightProbe {
    fn produce(&self) {
        let produced = self.produced.fetch_add(1, SeqCst) + 1;
        let in_flight = produced.saturating_sub(self.written.load(SeqCst));
        self.peak.fetch_max(in_flight, SeqCst);
    }

    fn write(&self) {
        self.written.fetch_add(1, SeqCst);
    }

    /// The most batches that were produced and not yet written at one time.
    pub fn peak_in_flight(&self) -> u64 {
        self.peak.load(SeqCst)
    }
}

/// A failure to inject into [`MemorySource`].
#[derive(Debug, Clone, Copy)]
pub struct InjectedFailure {
    /// The partition that fails.
    pub partition: usize,
    /// The batch before which it fails.
    pub before_batch: usize,
    /// How many times it fails there.
    pub times: u32,
    /// Whether the failure is retryable.
    pub retryable: bool,
}

/// A source of in-memory batches, one list per partition.
pub struct MemorySource {
    schema: SchemaRef,
    partitions: Arc<Vec<Vec<RecordBatch>>>,
    failure: Option<InjectedFailure>,
    failures_left: Arc<AtomicU32>,
    opens: Arc<AtomicU32>,
    probe: Option<Arc<FlightProbe>>,
}

impl MemorySource {
    /// A source of `partitions`, each a list of batches of `schema`.
    pub fn new(schema: SchemaRef, partitions: Vec<Vec<RecordBatch>>) -> Self {
        Self {
            schema,
            partitions: Arc::new(partitions),
            failure: None,
            failures_left: Arc::default(),
            opens: Arc::default(),
            probe: None,
        }
    }

    /// Fails as described.
    pub fn with_failure(mut self, failure: InjectedFailure) -> Self {
        self.failures_left.store(failure.times, SeqCst);
        self.failure = Some(failure);
        self
    }

    /// Reports produced bytes to `probe`.
    pub fn with_probe(mut self, probe: Arc<FlightProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// How many times a partition was opened (retries included).
    pub fn opens(&self) -> Arc<AtomicU32> {
        self.opens.clone()
    }
}

#[async_trait::async_trait]
impl Source for MemorySource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    async fn plan(&self, _parallelism: usize) -> Result<Vec<Partition>> {
        (0..self.partitions.len())
            .map(|i| Partition::new(i, format!("memory {i}"), None, &i))
            .collect()
    }

    fn open(
        &self,
        partition: &Partition,
        resume: Option<Checkpoint>,
        _budget: &ByteBudget,
    ) -> Result<BatchStream> {
        // Lazy: nothing is built ahead of the reader, so the reader charges every batch.
        self.opens.fetch_add(1, SeqCst);
        let index: usize = partition.decode()?;
        let batches = self.partitions[index].clone();
        let start = resume.and_then(|c| c.position).unwrap_or(0) as usize;
        let mut records = resume.map_or(0, |c| c.records);
        let failure = self.failure.filter(|f| f.partition == index);
        let failures_left = self.failures_left.clone();
        let probe = self.probe.clone();
        let mut failed = false;
        // Lazy: each batch is produced (and counted by the probe) only when pulled.
        let items = batches
            .into_iter()
            .enumerate()
            .skip(start)
            .map_while(move |(i, batch)| {
                if failed {
                    return None;
                }
                if let Some(f) = failure.filter(|f| f.before_batch == i)
                    && failures_left.load(SeqCst) > 0
                {
                    failures_left.fetch_sub(1, SeqCst);
                    failed = true;
                    return Some(Err(Error::new(
                        crate::ErrorKind::Connect,
                        "injected failure",
                    )
                    .with_retryable(f.retryable)));
                }
                if let Some(p) = &probe {
                    p.produce();
                }
                records += batch.num_rows() as u64;
                Some(Ok(SourceBatch {
                    checkpoint: Checkpoint {
                        records,
                        position: Some(i as u64 + 1),
                        line: None,
                    },
                    skipped: vec![],
                    input_bytes: 0,
                    charge: Charge::default(),
                    batch,
                }))
            });
        Ok(Box::pin(futures::stream::iter(items)))
    }

    fn connector(&self) -> &'static str {
        "memory"
    }
}

/// An encoder to the Arrow IPC stream format, one message per batch.
pub struct IpcStreamEncoder {
    writer: Option<StreamWriter<Vec<u8>>>,
}

impl IpcStreamEncoder {
    /// An encoder for `schema`.
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Self {
            writer: Some(StreamWriter::try_new(Vec::new(), schema)?),
        })
    }

    fn take(&mut self) -> Option<Bytes> {
        let buf = std::mem::take(self.writer.as_mut()?.get_mut());
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }
}

impl Encoder for IpcStreamEncoder {
    fn encode(&mut self, batch: &RecordBatch) -> Result<Option<Bytes>> {
        if let Some(w) = self.writer.as_mut() {
            w.write(batch)?;
        }
        Ok(self.take())
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        if let Some(w) = self.writer.as_mut() {
            w.finish()?;
        }
        let out = self.take();
        self.writer = None;
        Ok(out)
    }
}

#[derive(Default)]
struct SinkState {
    temporary: BTreeMap<String, Vec<u8>>,
    published: BTreeMap<String, Vec<u8>>,
}

/// A sink that keeps outputs in memory as Arrow IPC streams.
#[derive(Clone)]
pub struct MemorySink {
    layout: OutputLayout,
    state: Arc<Mutex<SinkState>>,
    write_delay: Duration,
    fail_writes: Arc<AtomicU32>,
    probe: Option<Arc<FlightProbe>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new(layout: OutputLayout) -> Self {
        Self {
            layout,
            state: Arc::default(),
            write_delay: Duration::ZERO,
            fail_writes: Arc::default(),
            probe: None,
        }
    }

    /// Sleeps this long in every write (a slow sink).
    pub fn with_write_delay(mut self, delay: Duration) -> Self {
        self.write_delay = delay;
        self
    }

    /// The next `n` writes fail with a retryable error.
    pub fn with_failing_writes(self, n: u32) -> Self {
        self.fail_writes.store(n, SeqCst);
        self
    }

    /// Reports written bytes to `probe`.
    pub fn with_probe(mut self, probe: Arc<FlightProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// The batches of every published output, in output order.
    pub fn published(&self) -> Vec<RecordBatch> {
        let state = self.state.lock().expect("memory sink lock");
        state
            .published
            .values()
            .flat_map(|bytes| {
                StreamReader::try_new(std::io::Cursor::new(bytes.clone()), None)
                    .expect("published output is an IPC stream")
                    .map(|b| b.expect("published batch decodes"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Names of published outputs.
    pub fn published_names(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("memory sink lock")
            .published
            .keys()
            .cloned()
            .collect()
    }

    /// Names of outputs written and neither published nor aborted.
    pub fn leftovers(&self) -> Vec<String> {
        self.state
            .lock()
            .expect("memory sink lock")
            .temporary
            .keys()
            .cloned()
            .collect()
    }
}

struct MemoryWriter {
    sink: MemorySink,
    output: usize,
    name: String,
    bytes: Vec<u8>,
}

#[async_trait::async_trait]
impl OutputWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if !self.sink.write_delay.is_zero() {
            tokio::time::sleep(self.sink.write_delay).await;
        }
        if self
            .sink
            .fail_writes
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::store("injected write failure").with_retryable(true));
        }
        if let Some(p) = &self.sink.probe {
            p.write();
        }
        self.bytes.extend_from_slice(&chunk);
        self.sink
            .state
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .temporary
            .insert(self.name.clone(), self.bytes.clone());
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<Box<dyn StagedOutput>> {
        let mut state = self
            .sink
            .state
            .lock()
            .map_err(|_| Error::internal("lock"))?;
        state
            .temporary
            .insert(self.name.clone(), self.bytes.clone());
        Ok(Box::new(MemoryStaged {
            state: self.sink.state.clone(),
            output: self.output,
            temporary: self.name.clone(),
            bytes: self.bytes.len() as u64,
        }))
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.sink
            .state
            .lock()
            .map_err(|_| Error::internal("lock"))?
            .temporary
            .remove(&self.name);
        Ok(())
    }
}

/// An output of a [`MemorySink`] written under its temporary name.
struct MemoryStaged {
    state: Arc<Mutex<SinkState>>,
    output: usize,
    temporary: String,
    bytes: u64,
}

impl std::fmt::Debug for MemoryStaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "memory output {} ({})", self.output, self.temporary)
    }
}

#[async_trait::async_trait]
impl StagedOutput for MemoryStaged {
    fn output(&self) -> usize {
        self.output
    }

    fn bytes(&self) -> u64 {
        self.bytes
    }

    async fn publish(self: Box<Self>) -> Result<Vec<String>> {
        let mut state = self.state.lock().map_err(|_| Error::internal("lock"))?;
        let bytes = state
            .temporary
            .remove(&self.temporary)
            .ok_or_else(|| Error::internal(format!("staged output {} is gone", self.temporary)))?;
        let target = format!("output-{:05}", self.output);
        state.published.insert(target.clone(), bytes);
        Ok(vec![target])
    }

    async fn discard(self: Box<Self>) -> Result<()> {
        let mut state = self.state.lock().map_err(|_| Error::internal("lock"))?;
        state.temporary.remove(&self.temporary);
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    async fn prepare(&self, _schema: &SchemaRef) -> Result<Box<dyn PreparedSink>> {
        Ok(Box::new(self.clone()))
    }

    fn connector(&self) -> &'static str {
        "memory"
    }
}

#[async_trait::async_trait]
impl PreparedSink for MemorySink {
    fn layout(&self) -> OutputLayout {
        self.layout
    }

    async fn open(&self, schema: &SchemaRef, output: usize) -> Result<OpenOutput> {
        Ok(OpenOutput {
            encoder: Box::new(IpcStreamEncoder::new(schema)?),
            writer: Box::new(MemoryWriter {
                sink: self.clone(),
                output,
                name: format!("tmp-{output:05}-{}", fastrand::u32(..)),
                bytes: Vec::new(),
            }),
        })
    }

    async fn commit(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<Committed> {
        Ok(Committed {
            outputs: crate::sink::publish_all(staged).await?,
            removed: vec![],
        })
    }

    async fn abort(&self, staged: Vec<Box<dyn StagedOutput>>) -> Result<()> {
        crate::sink::discard_all(staged).await;
        Ok(())
    }
}
