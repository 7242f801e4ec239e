//! ChunkEncoder: the CPU-bound stage, on dedicated threads of a `SyncArbiter`.
//!
//! Each [`EncodeOutput`] command occupies one thread of the pool until its input channel
//! closes, so encoding of different outputs runs in parallel and never blocks the async
//! runtime. The encoder keeps the budget of what it buffers (a Parquet row group in the
//! making) and passes the rest on with the encoded chunk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::Relaxed;

use actix::{Actor, Handler, SyncContext};

use super::messages::{ChunkItem, EncodeOutput, StageExit, panic_message};
use crate::channel::Reservation;
use crate::stats::{Stage, timed};

/// An encoder thread of the pool.
#[derive(Default)]
pub struct ChunkEncoder;

impl Actor for ChunkEncoder {
    type Context = SyncContext<Self>;
}

impl Handler<EncodeOutput> for ChunkEncoder {
    type Result = actix::MessageResult<EncodeOutput>;

    fn handle(&mut self, msg: EncodeOutput, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult(
            match catch_unwind(AssertUnwindSafe(|| encode_output(msg))) {
                Ok(exit) => exit,
                Err(payload) => StageExit::Panicked(panic_message(payload.as_ref())),
            },
        )
    }
}

fn encode_output(msg: EncodeOutput) -> StageExit {
    let EncodeOutput {
        mut input,
        output,
        mut encoder,
        max_buffered,
        progress,
        cancel,
        figures,
    } = msg;
    let clock = progress.clock(Stage::Encode);
    let mut held = Reservation::empty();
    let mut pending_rows = 0u64;
    let send = |bytes: bytes::Bytes, rows, held: &mut Reservation| {
        let reservation = held.split(bytes.len());
        let (sent, waited) = timed(|| {
            output.blocking_send(ChunkItem {
                bytes,
                rows,
                reservation,
            })
        });
        clock.wait_output(waited);
        sent.is_ok()
    };
    loop {
        let (item, waited) = timed(|| input.blocking_recv());
        clock.wait_input(waited);
        let Some(item) = item else { break };
        held.merge(item.reservation);
        pending_rows += item.batch.num_rows() as u64;
        progress
            .rows_encoded
            .fetch_add(item.batch.num_rows() as u64, Relaxed);
        let (encoded, busy) = timed(|| {
            if let Some(figures) = &figures {
                figures
                    .lock()
                    .map_err(|_| crate::Error::internal("verification figures poisoned"))?
                    .add(&item.batch)?;
            }
            let mut out = encoder.encode(&item.batch)?;
            if out.is_none() && encoder.buffered_bytes() > max_buffered {
                let rows = encoder.buffered_rows();
                out = encoder.flush()?;
                progress.early_flushes.fetch_add(1, Relaxed);
                progress.early_flush_rows.fetch_add(rows, Relaxed);
            }
            Ok::<_, crate::Error>(out)
        });
        clock.busy(busy);
        drop(item.batch);
        match encoded {
            Ok(Some(bytes)) => {
                // Rows still buffered in the encoder stay pending until a later chunk.
                let buffered = encoder.buffered_rows().min(pending_rows);
                let rows = pending_rows - buffered;
                pending_rows = buffered;
                if !send(bytes, rows, &mut held) {
                    return StageExit::DownstreamClosed;
                }
            }
            Ok(None) => {}
            Err(e) => return StageExit::Failure(e),
        }
        held.shrink_to(encoder.buffered_bytes());
    }
    if cancel.is_cancelled() {
        return StageExit::Killed;
    }
    let (finished, busy) = timed(|| encoder.finish());
    clock.busy(busy);
    match finished {
        Ok(Some(bytes)) => {
            if !send(bytes, pending_rows, &mut held) {
                return StageExit::DownstreamClosed;
            }
        }
        Ok(None) if pending_rows > 0 => {
            if !send(bytes::Bytes::new(), pending_rows, &mut held) {
                return StageExit::DownstreamClosed;
            }
        }
        Ok(None) => {}
        Err(e) => return StageExit::Failure(e),
    }
    StageExit::Success
}
