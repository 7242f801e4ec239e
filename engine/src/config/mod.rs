//! Configuration: jobs, secrets, local paths, and the units they are written in.
//!
//! Each file follows the same path: raw serde types that reject unknown fields, a pure
//! `validate()` that returns types that cannot be wrong, and, separately, the I/O that a
//! connector performs when it builds a store from them.

pub mod connection;
pub mod job;
pub mod local;
pub mod units;

pub use connection::Secret;
pub use job::{CommitGate, FaultTolerance, JobSettings, JobSpec, RetryPolicy};
pub use local::{Access, LocalFiles};
pub use units::{ByteSize, HumanDuration};
