//! SourceReader: pulls one partition from the source, reserves budget for each batch and
//! hands it to the encoder. A retryable failure of the source is retried here, with backoff,
//! from the checkpoint of the last batch handed on, so nothing is read twice or lost.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, WrapFuture};
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::messages::{BatchItem, StageExit, panic_message};
use crate::job::JobContext;
use crate::retry::Retry;
use crate::source::{Checkpoint, Partition};
use crate::stats::Stage;

/// What a reader delivered before it ended.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReaderCounts {
    /// Records handed on or skipped.
    pub records: u64,
    /// Rows skipped.
    pub skipped: u64,
    /// Input bytes consumed.
    pub input_bytes: u64,
    /// Retries of this partition.
    pub retries: u64,
}

/// Reads one partition; started by the supervisor, one per running partition.
pub(crate) struct SourceReader {
    pub ctx: Arc<JobContext>,
    pub partition: Partition,
    pub output: Option<mpsc::Sender<BatchItem>>,
    pub cancel: CancellationToken,
    pub done: Option<oneshot::Sender<(StageExit, ReaderCounts)>>,
}

impl Actor for SourceReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some(output), Some(done)) = (self.output.take(), self.done.take()) else {
            ctx.stop();
            return;
        };
        let pump = read_partition(
            self.ctx.clone(),
            self.partition.clone(),
            output,
            self.cancel.clone(),
        );
        let guarded = std::panic::AssertUnwindSafe(pump).catch_unwind().map(|r| {
            r.unwrap_or_else(|p| {
                (
                    StageExit::Panicked(panic_message(p.as_ref())),
                    ReaderCounts::default(),
                )
            })
        });
        ctx.spawn(guarded.into_actor(self).map(move |result, _, ctx| {
            let _ = done.send(result);
            ctx.stop();
        }));
    }
}

async fn read_partition(
    ctx: Arc<JobContext>,
    partition: Partition,
    output: mpsc::Sender<BatchItem>,
    cancel: CancellationToken,
) -> (StageExit, ReaderCounts) {
    let clock = ctx.progress.clock(Stage::Source);
    let mut counts = ReaderCounts::default();
    let mut checkpoint: Option<Checkpoint> = None;
    let mut retry = Retry::new(
        &ctx.settings,
        &ctx.progress,
        "source",
        (ctx.source.connector(), ctx.sink.connector()),
    );
    'attempts: loop {
        let mut stream = match ctx.source.open(&partition, checkpoint, &ctx.budget) {
            Ok(stream) => stream,
            Err(e) => return (StageExit::Failure(e.context(&partition)), counts),
        };
        loop {
            let started = Instant::now();
            let next = tokio::select! {
                _ = cancel.cancelled() => return (StageExit::Killed, counts),
                next = stream.next() => next,
            };
            let read_for = started.elapsed();
            // The part of the read a source spent waiting for the budget (it charges what it
            // reads ahead) counts as waiting for the budget, as the reader's own wait does.
            let source_waited = match &next {
                Some(Ok(batch)) => batch.charge.waited.min(read_for),
                _ => Duration::ZERO,
            };
            clock.busy(read_for - source_waited);
            clock.wait_output(source_waited);
            ctx.progress
                .budget_wait_ns
                .fetch_add(source_waited.as_nanos() as u64, Relaxed);
            let mut batch = match next {
                None => return (StageExit::Success, counts),
                Some(Ok(batch)) => batch,
                Some(Err(e)) => {
                    let Some(wait) = retry.after(&e) else {
                        let e = if e.is_retryable() {
                            let attempts = retry.attempt();
                            e.context(format!("{partition}, after {attempts} attempts"))
                        } else {
                            e.context(&partition)
                        };
                        return (StageExit::Failure(e), counts);
                    };
                    counts.retries += 1;
                    let attempt = retry.attempt();
                    tracing::warn!(job = %ctx.settings.name, %partition, attempt, error = %e, ?wait, "retrying partition from its checkpoint");
                    drop(stream);
                    match Retry::wait(wait, &cancel).await {
                        Ok(()) => continue 'attempts,
                        Err(_) => return (StageExit::Killed, counts),
                    }
                }
            };
            if let Err(e) = ctx.faults.record(&partition, &batch.skipped) {
                return (StageExit::Failure(e), counts);
            }
            let records = batch.records();
            let skipped = batch.skipped.len() as u64;
            let input_bytes = batch.input_bytes;
            let next_checkpoint = batch.checkpoint;
            let waiting = Instant::now();
            let reservation = tokio::select! {
                _ = cancel.cancelled() => return (StageExit::Killed, counts),
                r = ctx.budget.top_up(std::mem::take(&mut batch.charge.reservation), batch.batch.get_array_memory_size()) => r,
            };
            ctx.progress
                .budget_wait_ns
                .fetch_add(waiting.elapsed().as_nanos() as u64, Relaxed);
            let item = BatchItem {
                batch: batch.batch,
                reservation,
            };
            let sent = tokio::select! {
                _ = cancel.cancelled() => return (StageExit::Killed, counts),
                sent = output.send(item) => sent,
            };
            clock.wait_output(waiting.elapsed());
            if sent.is_err() {
                return (StageExit::DownstreamClosed, counts);
            }
            checkpoint = Some(next_checkpoint);
            counts.records += records;
            counts.skipped += skipped;
            counts.input_bytes += input_bytes;
            ctx.progress.records_read.fetch_add(records, Relaxed);
            ctx.progress.rows_skipped.fetch_add(skipped, Relaxed);
            ctx.progress
                .input_bytes_read
                .fetch_add(input_bytes, Relaxed);
        }
    }
}
