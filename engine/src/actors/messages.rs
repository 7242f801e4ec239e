//! Messages between the actors, and the items that travel on the data channels.
//!
//! Commands are imperative (`RunJob`, `EncodeOutput`). Batches never travel through
//! mailboxes: they go over bounded channels, and only the command that hands a stage its
//! channels is a message. A running job is cancelled and observed through its
//! [`RunningJob`](crate::RunningJob) (a cancel token and shared counters), one API for both.

use std::fmt;

use actix::Message;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::channel::Reservation;
use crate::encode::Encoder;
use crate::error::Error;
use crate::report::JobReport;

/// Runs the job the supervisor was built for; answers with its report.
#[derive(Message)]
#[rtype(result = "JobReport")]
pub struct RunJob;

/// A batch on its way from a reader to an encoder, with the budget it holds.
pub struct BatchItem {
    /// The rows.
    pub batch: RecordBatch,
    /// Its share of the byte budget.
    pub reservation: Reservation,
}

/// Encoded bytes on their way to a sink writer, with the budget they hold.
pub struct ChunkItem {
    /// The bytes.
    pub bytes: Bytes,
    /// Rows that this chunk completes (rows whose bytes are now all out of the encoder).
    pub rows: u64,
    /// Its share of the byte budget.
    pub reservation: Reservation,
}

/// Hands an encoder thread one output to encode, from its batch channel to its chunk channel.
#[derive(Message)]
#[rtype(result = "StageExit")]
pub struct EncodeOutput {
    /// Batches in.
    pub input: mpsc::Receiver<BatchItem>,
    /// Chunks out.
    pub output: mpsc::Sender<ChunkItem>,
    /// The output's encoder.
    pub encoder: Box<dyn Encoder>,
    /// Bytes the encoder may keep buffered before it must flush.
    pub max_buffered: usize,
    /// Where its clock and counters go.
    pub progress: std::sync::Arc<crate::stats::JobProgress>,
    /// Set when the job or the output is cancelled.
    pub cancel: CancellationToken,
    /// The attempt's verification figures, when the job verifies.
    pub figures: Option<std::sync::Arc<std::sync::Mutex<crate::verify::Figures>>>,
    /// The node's cap on encoding, taken a batch at a time, if it sets one.
    pub slots: Option<crate::encode::EncodeSlots>,
}

/// How a stage ended, like a process exit status.
#[derive(Debug)]
pub enum StageExit {
    /// All input processed.
    Success,
    /// Stopped because the stage after it went away.
    DownstreamClosed,
    /// Stopped by the kill switch.
    Killed,
    /// Failed.
    Failure(Error),
    /// Panicked; the message is the panic's.
    Panicked(String),
}

impl StageExit {
    /// Whether the stage finished its work.
    pub fn is_success(&self) -> bool {
        matches!(self, StageExit::Success)
    }

    /// The failure this exit stands for, if it is a root cause rather than a consequence of
    /// another stage's failure.
    pub fn root_cause(self) -> Option<Error> {
        match self {
            StageExit::Failure(e) => Some(e),
            StageExit::Panicked(msg) => Some(Error::internal(format!("a stage panicked: {msg}"))),
            _ => None,
        }
    }
}

impl fmt::Display for StageExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageExit::Success => f.write_str("success"),
            StageExit::DownstreamClosed => f.write_str("downstream closed"),
            StageExit::Killed => f.write_str("killed"),
            StageExit::Failure(e) => write!(f, "failure: {e}"),
            StageExit::Panicked(m) => write!(f, "panicked: {m}"),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}
