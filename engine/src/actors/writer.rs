//! SinkWriter: writes one output's chunks to the sink under a temporary name and completes
//! it, or discards it when anything fails.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use actix::{Actor, ActorContext, ActorFutureExt, AsyncContext, Context, WrapFuture};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::messages::{ChunkItem, StageExit, panic_message};
use crate::job::JobContext;
use crate::sink::{OutputWriter, StagedOutput};
use crate::stats::Stage;

/// What a writer wrote.
#[derive(Debug, Default)]
pub(crate) struct WriterResult {
    /// The completed output, on success.
    pub staged: Option<Box<dyn StagedOutput>>,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes one output; started by the supervisor, one per output.
pub(crate) struct SinkWriter {
    pub ctx: Arc<JobContext>,
    pub input: Option<mpsc::Receiver<ChunkItem>>,
    pub writer: Option<Box<dyn OutputWriter>>,
    pub cancel: CancellationToken,
    pub done: Option<oneshot::Sender<(StageExit, WriterResult)>>,
}

impl Actor for SinkWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some(input), Some(writer), Some(done)) =
            (self.input.take(), self.writer.take(), self.done.take())
        else {
            ctx.stop();
            return;
        };
        let pump = write_output(self.ctx.clone(), input, writer, self.cancel.clone());
        let guarded = std::panic::AssertUnwindSafe(pump).catch_unwind().map(|r| {
            r.unwrap_or_else(|p| {
                (
                    StageExit::Panicked(panic_message(p.as_ref())),
                    WriterResult::default(),
                )
            })
        });
        ctx.spawn(guarded.into_actor(self).map(move |result, _, ctx| {
            let _ = done.send(result);
            ctx.stop();
        }));
    }
}

async fn write_output(
    ctx: Arc<JobContext>,
    mut input: mpsc::Receiver<ChunkItem>,
    mut writer: Box<dyn OutputWriter>,
    cancel: CancellationToken,
) -> (StageExit, WriterResult) {
    let clock = ctx.progress.clock(Stage::Sink);
    let mut result = WriterResult::default();
    let exit = loop {
        let waiting = Instant::now();
        let item = tokio::select! {
            _ = cancel.cancelled() => break StageExit::Killed,
            item = input.recv() => item,
        };
        clock.wait_input(waiting.elapsed());
        let Some(ChunkItem {
            bytes,
            rows,
            reservation,
        }) = item
        else {
            if cancel.is_cancelled() {
                break StageExit::Killed;
            }
            let finishing = Instant::now();
            let finished = writer.finish().await;
            clock.busy(finishing.elapsed());
            return match finished {
                Ok(staged) => {
                    result.staged = Some(staged);
                    (StageExit::Success, result)
                }
                Err(e) => (StageExit::Failure(e), result),
            };
        };
        let len = bytes.len() as u64;
        let writing = Instant::now();
        let written = if len > 0 {
            writer.write(bytes).await
        } else {
            Ok(())
        };
        clock.busy(writing.elapsed());
        drop(reservation);
        if let Err(e) = written {
            break StageExit::Failure(e);
        }
        result.rows += rows;
        result.bytes += len;
        ctx.progress.rows_written.fetch_add(rows, Relaxed);
        ctx.progress.bytes_written.fetch_add(len, Relaxed);
    };
    if let Err(e) = writer.abort().await {
        tracing::warn!(job = %ctx.settings.name, error = %e, "could not discard a partial output");
    }
    (exit, result)
}
