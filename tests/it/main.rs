//! ferry's integration tests: one binary, real files in temporary directories, the real
//! `ferry` executable where the command line is what is tested.

// Helpers outside #[test] functions panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod azure;
mod cli;
mod conformance;
mod files;
mod memory;
mod pipeline;
mod policy;
mod postgres;
mod publish;
mod sqlserver;
mod sqlserver_real;
mod support;
mod verify;
mod worker;
