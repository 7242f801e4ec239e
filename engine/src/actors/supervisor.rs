//! JobSupervisor: plans a job, runs its outputs with at most `parallel_copies` partitions
//! reading at once, retries what can be retried, and publishes all outputs or none.
//!
//! An *output* (a file, a blob) is fed by one encoder and one writer, and by one partition
//! (layout [`OutputLayout::PerPartition`]) or by all of them ([`OutputLayout::Single`]). A
//! source failure is retried inside its reader from the last checkpoint; an encoder or sink
//! failure restarts the output from scratch, with fresh actors built from the same factories.
//! One kill switch per job: the first failure that cannot be retried stops every stage.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use actix::{Actor, Addr, Context, Handler, ResponseActFuture, SyncArbiter, WrapFuture};
use futures::StreamExt;
use futures::future::join_all;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::encoder::ChunkEncoder;
use super::messages::{EncodeOutput, RunJob, StageExit};
use super::reader::{ReaderCounts, SourceReader};
use super::writer::{SinkWriter, WriterResult};
use crate::channel::ByteBudget;
use crate::error::{Error, ErrorKind, Result};
use crate::job::{FaultLog, Job, JobContext};
use crate::report::{CountUnit, JobReport, RunOutcome};
use crate::retry::Retry;
use crate::sink::{Committed, OutputLayout, PreparedSink, StagedOutput};
use crate::source::Partition;
use crate::stats::JobProgress;

/// Batches queued between a reader and its encoder (bounded; the byte budget bounds memory).
pub const BATCH_CHANNEL_CAPACITY: usize = 4;
/// Chunks queued between an encoder and its writer.
pub const CHUNK_CHANNEL_CAPACITY: usize = 4;

/// Supervises one job.
pub struct JobSupervisor {
    job: Option<Job>,
    progress: Arc<JobProgress>,
    cancel: CancellationToken,
}

impl JobSupervisor {
    /// A supervisor for `job`; send it [`RunJob`] to run it.
    pub fn new(job: Job) -> Self {
        Self {
            job: Some(job),
            progress: JobProgress::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The job's live counters (for progress displays).
    pub fn progress(&self) -> Arc<JobProgress> {
        self.progress.clone()
    }

    /// The job's kill switch.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl Actor for JobSupervisor {
    type Context = Context<Self>;
}

impl Handler<RunJob> for JobSupervisor {
    type Result = ResponseActFuture<Self, JobReport>;

    fn handle(&mut self, _: RunJob, _: &mut Self::Context) -> Self::Result {
        let job = self.job.take();
        let progress = self.progress.clone();
        let cancel = self.cancel.clone();
        Box::pin(
            async move {
                match job {
                    Some(job) => run_job(job, progress, cancel).await,
                    None => unreachable_report(),
                }
            }
            .into_actor(self),
        )
    }
}

fn unreachable_report() -> JobReport {
    JobReport::failed(
        "?",
        Error::internal("the job was already run by this supervisor"),
    )
}

/// The totals of a finished output.
#[derive(Default)]
struct OutputTotals {
    records: u64,
    skipped: u64,
    rows_written: u64,
    /// What passed to the sink, when the job verifies.
    figures: Option<crate::verify::Figures>,
}

/// Runs a job to its end and reports; never panics, never publishes partial output.
async fn run_job(job: Job, progress: Arc<JobProgress>, cancel: CancellationToken) -> JobReport {
    let started = Instant::now();
    let name = job.settings.name.clone();
    let (source_name, sink_name) = (job.source.connector(), job.sink.connector());
    let schema = job.source.schema();
    let ctx = Arc::new(JobContext {
        budget: ByteBudget::new(job.settings.max_buffer_bytes),
        faults: FaultLog::new(
            &name,
            job.settings.fault_tolerance.log_path.clone(),
            job.settings.local.output_mode(),
        ),
        settings: job.settings,
        source: job.source,
        sink: job.sink,
        schema,
        progress: progress.clone(),
    });
    let _ = progress.settings.set((
        ctx.settings.parallel_copies.get() as u64,
        ctx.settings.max_buffer_bytes,
    ));
    tracing::info!(job = %name, source = source_name, sink = sink_name, "job started");
    let (result, figures) = match copy(&ctx, &cancel).await {
        Ok((committed, figures)) => (Ok(committed), figures),
        Err(e) => (Err(e), None),
    };
    if let Some(note) = early_flush_note(&progress)
        && let Ok(mut notes) = progress.notes.lock()
    {
        notes.push(note);
    }
    let outcome = RunOutcome {
        job: name.clone(),
        kinds: (source_name, sink_name),
        secs: started.elapsed().as_secs_f64(),
        result,
        skipped_sample: ctx.faults.finish().unwrap_or_default(),
        unit: CountUnit::Rows,
        figures,
    };
    let report = JobReport::build(outcome, &progress);
    crate::metrics::record_job(&report);
    match &report.error {
        None => {
            tracing::info!(job = %name, rows = report.rows_written, secs = report.duration_secs, "job succeeded")
        }
        // The report carries the error; whoever ran the job (a node's log, `ferry copy`'s
        // output) shows it once.
        Some(e) => tracing::info!(job = %name, error = %e.message, "job failed"),
    }
    report
}

/// What the report says when encoders ended row groups early to stay within the budget.
fn early_flush_note(progress: &JobProgress) -> Option<String> {
    let flushes = progress.early_flushes.load(Relaxed);
    (flushes > 0).then(|| {
        format!(
            "row groups ended early {flushes} times, at about {} rows each, when an encoder held its share of max_buffer_bytes ({:.1} MiB); a larger budget makes larger row groups",
            progress.early_flush_rows.load(Relaxed) / flushes,
            progress.encoder_share.load(Relaxed) as f64 / 1048576.0
        )
    })
}

/// Prepares, copies every output, checks the row accounting and commits; on any failure,
/// aborts everything that was staged.
async fn copy(
    ctx: &Arc<JobContext>,
    cancel: &CancellationToken,
) -> Result<(Committed, Option<crate::verify::Figures>)> {
    let job = ctx.settings.name.as_str();
    let in_job = |e: Error| e.context(format!("job {job}"));
    let sink: Arc<dyn PreparedSink> = ctx.sink.prepare(&ctx.schema).await.map_err(in_job)?.into();
    let partitions = ctx
        .source
        .plan(ctx.settings.parallel_copies.get())
        .await
        .map_err(in_job)?;
    ctx.progress
        .partitions_total
        .store(partitions.len() as u64, Relaxed);
    if let Ok(mut notes) = ctx.progress.notes.lock() {
        *notes = ctx.source.notes(&partitions);
        notes.extend(sink.notes());
    }
    ctx.progress
        .input_bytes_total
        .store(partitions.iter().filter_map(|p| p.size_hint).sum(), Relaxed);
    tracing::info!(job, partitions = partitions.len(), "planned");
    let outputs: Vec<Vec<Partition>> = match sink.layout() {
        OutputLayout::PerPartition => partitions.into_iter().map(|p| vec![p]).collect(),
        OutputLayout::Single => vec![partitions],
    };
    let parallel = ctx.settings.parallel_copies.get();
    let slots = Arc::new(Semaphore::new(parallel));
    let encoders_wanted = parallel.min(outputs.len().max(1));
    let encoders = SyncArbiter::start(encoders_wanted, ChunkEncoder::default);
    // Each encoder may keep this much buffered (a row group) before it must flush: a quarter
    // of the budget shared among the outputs that can run at once. A flush builds the encoded
    // row group beside the buffers it encodes (up to as large again), so the encoders hold at
    // most half the budget, and readers always find the other half.
    let max_buffered = (ctx.settings.max_buffer_bytes / 4 / encoders_wanted as u64) as usize;
    ctx.progress
        .encoder_share
        .store(max_buffered as u64, Relaxed);

    let mut results = futures::stream::iter(outputs.into_iter().enumerate())
        .map(|(index, parts)| {
            let output = Output {
                sink: &sink,
                encoders: &encoders,
                slots: &slots,
                index,
                max_buffered,
            };
            run_output_with_retry(ctx, output, cancel, parts)
        })
        .buffer_unordered(parallel);
    let mut staged = Vec::new();
    let mut totals = OutputTotals {
        figures: ctx
            .settings
            .verify
            .then(|| crate::verify::Figures::new(&ctx.schema)),
        ..OutputTotals::default()
    };
    let mut failure: Option<Error> = None;
    while let Some(result) = results.next().await {
        match result {
            Ok((s, t)) => {
                staged.push(s);
                totals.records += t.records;
                totals.skipped += t.skipped;
                totals.rows_written += t.rows_written;
                if let (Some(all), Some(part)) = (&mut totals.figures, &t.figures) {
                    all.merge(part);
                }
            }
            Err(e) => {
                cancel.cancel();
                // Keep the first root cause; later errors are mostly consequences.
                if failure.as_ref().is_none_or(|f| {
                    f.kind() == ErrorKind::Cancelled && e.kind() != ErrorKind::Cancelled
                }) {
                    failure = Some(e);
                }
            }
        }
    }
    drop(results);
    if failure.is_none() && cancel.is_cancelled() {
        failure = Some(Error::cancelled("the job was cancelled"));
    }
    if failure.is_none() && totals.records != totals.rows_written + totals.skipped {
        failure = Some(Error::internal(format!(
            "row accounting does not add up: read {}, written {}, skipped {}; nothing was published",
            totals.records, totals.rows_written, totals.skipped
        )));
    }
    if let Some(e) = failure {
        if let Err(abort) = sink.abort(staged).await {
            tracing::warn!(job, error = %abort, "could not remove staged output");
        }
        return Err(in_job(e));
    }
    staged.sort_by_key(|s| s.output());
    if let Some(gate) = &ctx.settings.commit_gate
        && let Err(e) = gate.check().await
    {
        if let Err(abort) = sink.abort(staged).await {
            tracing::warn!(job, error = %abort, "could not remove staged output");
        }
        return Err(in_job(e));
    }
    match sink.commit(staged).await {
        Ok(committed) => Ok((committed, totals.figures)),
        Err(e) => {
            // The commit discarded what it did not publish; this removes the run's traces.
            let _ = sink.abort(Vec::new()).await;
            Err(in_job(e))
        }
    }
}

/// One output of a job and what its attempts share.
#[derive(Clone, Copy)]
struct Output<'a> {
    sink: &'a Arc<dyn PreparedSink>,
    encoders: &'a Addr<ChunkEncoder>,
    slots: &'a Arc<Semaphore>,
    index: usize,
    /// Bytes its encoder may hold before it must flush.
    max_buffered: usize,
}

/// Runs one output, restarting it from scratch on retryable encoder or sink failures.
async fn run_output_with_retry(
    ctx: &Arc<JobContext>,
    output: Output<'_>,
    cancel: &CancellationToken,
    partitions: Vec<Partition>,
) -> Result<(Box<dyn StagedOutput>, OutputTotals)> {
    let mut retry = Retry::new(
        &ctx.settings,
        &ctx.progress,
        "output",
        (ctx.source.connector(), ctx.sink.connector()),
    );
    loop {
        if cancel.is_cancelled() {
            return Err(Error::cancelled("the job was cancelled"));
        }
        let token = cancel.child_token();
        let (e, counts) = match run_output(ctx, output, &token, &partitions).await {
            Ok(done) => return Ok(done),
            Err(failed) => failed,
        };
        // Take back what the failed attempt counted: the retry counts it again.
        let take_back = |counter: &std::sync::atomic::AtomicU64, n: u64| {
            counter.fetch_sub(n.min(counter.load(Relaxed)), Relaxed);
        };
        let progress = &ctx.progress;
        take_back(&progress.records_read, counts.records);
        take_back(&progress.rows_skipped, counts.skipped);
        take_back(&progress.rows_written, counts.rows_written);
        take_back(
            &progress.rows_encoded,
            counts.records.saturating_sub(counts.skipped),
        );
        if cancel.is_cancelled() {
            return Err(e);
        }
        let Some(wait) = retry.after(&e) else {
            return Err(e);
        };
        let attempt = retry.attempt();
        tracing::warn!(job = %ctx.settings.name, output = output.index, attempt, error = %e, ?wait, "retrying output from the start");
        Retry::wait(wait, cancel).await?;
    }
}

/// Reads one partition into `output` once a slot of `parallel_copies` is free; the first
/// stage to fail stops its siblings.
async fn read(
    ctx: &Arc<JobContext>,
    slots: &Semaphore,
    token: &CancellationToken,
    partition: &Partition,
    output: mpsc::Sender<super::messages::BatchItem>,
) -> (StageExit, ReaderCounts) {
    let Ok(_slot) = slots.acquire().await else {
        return (StageExit::Killed, ReaderCounts::default());
    };
    if token.is_cancelled() {
        return (StageExit::Killed, ReaderCounts::default());
    }
    let (done, exit) = oneshot::channel();
    SourceReader {
        ctx: ctx.clone(),
        partition: partition.clone(),
        output: Some(output),
        cancel: token.clone(),
        done: Some(done),
    }
    .start();
    let result = exit.await.unwrap_or((
        StageExit::Panicked("the reader stopped without reporting".into()),
        ReaderCounts::default(),
    ));
    if result.0.is_success() {
        ctx.progress.partitions_done.fetch_add(1, Relaxed);
    } else {
        token.cancel();
    }
    result
}

/// One attempt at one output: a writer, an encoder and the readers of its partitions.
async fn run_output(
    ctx: &Arc<JobContext>,
    output: Output<'_>,
    token: &CancellationToken,
    partitions: &[Partition],
) -> std::result::Result<(Box<dyn StagedOutput>, OutputTotals), (Error, OutputTotals)> {
    let fail = |e: Error| (e, OutputTotals::default());
    let Output {
        sink,
        encoders,
        slots,
        index,
        max_buffered,
    } = output;
    let crate::sink::OpenOutput { encoder, writer } =
        sink.open(&ctx.schema, index).await.map_err(fail)?;
    let (batch_tx, batch_rx) = mpsc::channel(BATCH_CHANNEL_CAPACITY);
    let (chunk_tx, chunk_rx) = mpsc::channel(CHUNK_CHANNEL_CAPACITY);
    let figures = ctx.settings.verify.then(|| {
        Arc::new(std::sync::Mutex::new(crate::verify::Figures::new(
            &ctx.schema,
        )))
    });

    let (writer_done, writer_exit) = oneshot::channel();
    SinkWriter {
        ctx: ctx.clone(),
        input: Some(chunk_rx),
        writer: Some(writer),
        cancel: token.clone(),
        done: Some(writer_done),
    }
    .start();
    let encoded = encoders.send(EncodeOutput {
        input: batch_rx,
        output: chunk_tx,
        encoder,
        max_buffered,
        progress: ctx.progress.clone(),
        cancel: token.clone(),
        figures: figures.clone(),
        slots: ctx.settings.encode_slots.clone(),
    });
    let readers = join_all(
        partitions
            .iter()
            .map(|partition| read(ctx, slots, token, partition, batch_tx.clone())),
    );
    drop(batch_tx);
    let (readers, encoded) = futures::join!(readers, encoded);
    let encoded = encoded.unwrap_or_else(|e| StageExit::Panicked(format!("encoder pool: {e}")));
    if !encoded.is_success() {
        token.cancel();
    }
    let (written, result): (StageExit, WriterResult) = writer_exit.await.unwrap_or((
        StageExit::Panicked("the writer stopped without reporting".into()),
        WriterResult::default(),
    ));

    let mut totals = OutputTotals {
        rows_written: result.rows,
        figures: figures.and_then(|f| f.lock().ok().map(|f| f.clone())),
        ..OutputTotals::default()
    };
    let mut exits = Vec::new();
    for (exit, counts) in readers {
        totals.records += counts.records;
        totals.skipped += counts.skipped;
        exits.push(exit);
    }
    exits.extend([encoded, written]);
    if exits.iter().all(StageExit::is_success) {
        if let Some(staged) = result.staged {
            return Ok((staged, totals));
        }
        return Err((
            Error::internal("the writer reported success without output"),
            totals,
        ));
    }
    crate::sink::discard_all(result.staged.into_iter().collect()).await;
    let cause = exits
        .into_iter()
        .find_map(StageExit::root_cause)
        .unwrap_or_else(|| Error::cancelled("the job was cancelled"));
    Err((cause, totals))
}
