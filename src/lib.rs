//! The `ferry` package's library: the worker node (its intake, runner, admin server and
//! configuration), used by the `ferry` binary and tested on its own.

pub mod worker;
