//! The actors of a copy: [`JobSupervisor`] (one per job), `SourceReader` (one per running
//! partition), [`ChunkEncoder`] (a pool of CPU threads), `SinkWriter` (one per output).
//!
//! Actors own lifecycles: they start the stages, watch how each ends ([`StageExit`]), stop
//! the siblings of a failed stage, and rebuild failed stages for a retry. Data does not pass
//! through their mailboxes: batches and chunks travel on bounded channels.

mod encoder;
pub mod messages;
mod reader;
mod supervisor;
mod writer;

pub use encoder::ChunkEncoder;
pub use messages::{RunJob, StageExit};
pub use supervisor::{BATCH_CHANNEL_CAPACITY, CHUNK_CHANNEL_CAPACITY, JobSupervisor};
