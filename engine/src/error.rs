//! The engine's one error type.
//!
//! Every failure carries an [`ErrorKind`] that answers two questions the engine must ask of
//! any error: may a retry help ([`Error::is_retryable`]), and which exit code does the command
//! line report ([`Error::exit_code`]). Connectors keep private error enums and fold them into
//! this type with a message that says what failed, where, and what to do about it.

use std::fmt;

/// A boxed error from a library below ferry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of the engine and the connectors.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The job or its input is wrong (bad field, unknown column, malformed row).
    InvalidInput,
    /// The configuration (job file, connections file) is wrong.
    Config,
    /// A store refused the credentials.
    Auth,
    /// A store could not be reached.
    Connect,
    /// Data could not be converted (a value that does not fit its column).
    Data,
    /// Reading or writing a file or stream failed.
    Io,
    /// A store reported a failure.
    Store,
    /// The job was cancelled.
    Cancelled,
    /// A bug in ferry: an invariant did not hold.
    Internal,
    /// The node's policy does not allow what the job asks (a path, a connection, a limit).
    Forbidden,
}

/// An error of the engine or a connector.
///
/// The message is complete on its own (lowercase, no trailing period) and names what failed
/// and where; the source, when present, is appended by `Display`.
pub struct Error {
    kind: ErrorKind,
    message: String,
    retryable: bool,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` with a message; retryable by the kind's default.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retryable = matches!(kind, ErrorKind::Connect);
        Self {
            kind,
            message: message.into(),
            retryable,
            source: None,
        }
    }

    /// Invalid input: the job or its data is wrong; not retryable.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// A configuration error; not retryable.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// A data conversion error; not retryable.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }

    /// A store error; not retryable unless marked with [`Error::with_retryable`].
    pub fn store(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Store, message)
    }

    /// The job was cancelled.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, message)
    }

    /// A job the node's policy does not allow.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    /// An internal error (a bug).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// An I/O error while doing `what`; retryable when the OS error is transient.
    pub fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        if is_disk_full(&err) {
            return Self::disk_full(what).with_source(err);
        }
        let retryable = matches!(
            err.kind(),
            K::Interrupted
                | K::TimedOut
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::WouldBlock
        );
        let kind = match err.kind() {
            K::NotFound | K::PermissionDenied | K::InvalidInput | K::InvalidData => {
                ErrorKind::InvalidInput
            }
            _ => ErrorKind::Io,
        };
        Self::new(kind, what)
            .with_retryable(retryable)
            .with_source(err)
    }

    /// `what` failed because its disk (or the user's quota on it) is full: not retried, since
    /// a retry would fill it again.
    pub fn disk_full(what: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Io,
            format!(
                "{}: the disk is full; free space there or write elsewhere",
                what.into()
            ),
        )
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides whether a retry may help.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Prefixes the message with where the error happened (`job x`, `partition 3`).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether running the failed step again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The process exit code for this error: 2 for invalid input, configuration or a job the
    /// policy forbids, else 1.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::InvalidInput | ErrorKind::Config | ErrorKind::Forbidden => 2,
            _ => 1,
        }
    }
}

/// Whether `err` (or an error it wraps) says a disk or quota is full: `ENOSPC` or `EDQUOT`,
/// also when a store reports it only in its text.
pub fn is_disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        let text = e.to_string();
        if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
            return true;
        }
        next = e.source();
    }
    false
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<arrow::error::ArrowError> for Error {
    /// Arrow's I/O failures are I/O (and may be retried, by their OS kind); external errors
    /// keep their message; the rest is about the data.
    fn from(err: arrow::error::ArrowError) -> Self {
        match err {
            arrow::error::ArrowError::IoError(what, e) => Error::io(what, e),
            other => Error::data(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_io_errors_are_io_errors() {
        let e: Error = arrow::error::ArrowError::IoError(
            "read block".into(),
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"),
        )
        .into();
        assert_eq!(e.kind(), ErrorKind::Io);
        let e: Error = arrow::error::ArrowError::CastError("bad".into()).into();
        assert_eq!(e.kind(), ErrorKind::Data);
    }

    #[test]
    fn io_errors_classify_by_os_kind() {
        let transient = Error::io(
            "read a.csv",
            std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"),
        );
        assert!(transient.is_retryable());
        assert_eq!(transient.kind(), ErrorKind::Io);
        let missing = Error::io(
            "open a.csv",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert!(!missing.is_retryable());
        assert_eq!(missing.exit_code(), 2);
        assert_eq!(missing.to_string(), "open a.csv: gone");
    }

    #[test]
    fn context_prefixes_the_message() {
        let err = Error::data("bad value").context("job j").context("ferry");
        assert_eq!(err.to_string(), "ferry: job j: bad value");
        assert_eq!(err.exit_code(), 1);
    }
}
