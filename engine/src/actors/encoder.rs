//! ChunkEncoder: the CPU-bound stage, on dedicated threads of a `SyncArbiter`.
//!
//! Each [`EncodeOutput`] command occupies one thread of the pool until its input channel
//! closes, so encoding of different outputs runs in parallel and never blocks the async
//! runtime. Where the node caps encoding, the CPU work itself (each batch, flush and footer)
//! runs in one of its [`EncodeSlots`](crate::encode::EncodeSlots), shared by all its jobs.
//! The encoder keeps the budget of what it buffers (a Parquet row group in the making) and
//! passes the rest on with the encoded chunk.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::Relaxed;

use actix::{Actor, Handler, SyncContext};

use super::messages::{ChunkItem, EncodeOutput, StageExit, panic_message};
use crate::channel::Reservation;
use crate::encode::EncodeSlots;
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
        slots,
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
        // The wait for a slot counts as busy: the stage is bound by the node's cap.
        let (encoded, busy) = timed(|| {
            let _slot = slots.as_ref().map(EncodeSlots::take);
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
    let (finished, busy) = timed(|| {
        let _slot = slots.as_ref().map(EncodeSlots::take);
        encoder.finish()
    });
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    use arrow::array::Int64Array;
    use arrow::record_batch::RecordBatch;
    use bytes::Bytes;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::actors::messages::BatchItem;
    use crate::encode::Encoder;
    use crate::stats::JobProgress;

    /// Counts how many encoders work at the same moment.
    struct Probe {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Encoder for Probe {
        fn encode(&mut self, batch: &RecordBatch) -> crate::Result<Option<Bytes>> {
            let now = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            self.now.fetch_sub(1, SeqCst);
            Ok(Some(Bytes::from(vec![0; batch.num_rows()])))
        }

        fn finish(&mut self) -> crate::Result<Option<Bytes>> {
            Ok(None)
        }
    }

    /// Two outputs (of two jobs, say) encoded on two threads through `slots`: the most
    /// batches encoded at one moment.
    fn most_at_once(slots: Option<EncodeSlots>) -> usize {
        let (now, most) = (Arc::default(), Arc::<AtomicUsize>::default());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (batch_tx, batch_rx) = mpsc::channel(64);
                let (chunk_tx, mut chunk_rx) = mpsc::channel(64);
                let batch = RecordBatch::try_from_iter([(
                    "v",
                    Arc::new(Int64Array::from_iter_values(0..10)) as _,
                )])
                .unwrap();
                for _ in 0..20 {
                    batch_tx
                        .try_send(BatchItem {
                            batch: batch.clone(),
                            reservation: Reservation::empty(),
                        })
                        .unwrap_or_else(|_| panic!("queue full"));
                }
                drop(batch_tx);
                let msg = EncodeOutput {
                    input: batch_rx,
                    output: chunk_tx,
                    encoder: Box::new(Probe {
                        now: Arc::clone(&now),
                        most: Arc::clone(&most),
                    }),
                    max_buffered: 1 << 20,
                    progress: JobProgress::new(),
                    cancel: CancellationToken::new(),
                    figures: None,
                    slots: slots.clone(),
                };
                std::thread::spawn(move || {
                    let exit = encode_output(msg);
                    let mut rows = 0;
                    while let Ok(chunk) = chunk_rx.try_recv() {
                        rows += chunk.rows;
                    }
                    (exit.is_success(), rows)
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), (true, 200), "every row encoded once");
        }
        most.load(SeqCst)
    }

    #[test]
    fn encoders_of_different_outputs_share_the_slots() {
        assert_eq!(
            most_at_once(Some(EncodeSlots::new(1))),
            1,
            "one slot: one at a time"
        );
        assert_eq!(most_at_once(None), 2, "no cap: both at once");
    }
}
