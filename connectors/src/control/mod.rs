//! Control channels: where a worker node takes its jobs from and leaves their reports.
//!
//! - [`local`]: a spool directory shared by the worker processes of one host (the embedded
//!   default).

pub mod local;

pub use local::{Envelope, FinishedJob, JobState, LocalChannel, NodeInfo};
