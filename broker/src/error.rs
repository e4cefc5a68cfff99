//! The engine's one error type. Each variant maps to one gRPC status code at
//! the edge (see `service::status`); messages are written for the client:
//! they name the field, the limit and the value.

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a name, a range, a size.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well-formed but the state does not allow it (a
    /// superseded receipt handle, a queue still used as a dead-letter queue).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// Not the client's fault; logged in full, reported as INTERNAL.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The server could not start: a listener could not be bound, a TLS
    /// file or the token file is unusable. Returned by `server::run`, never
    /// to a client.
    #[error("{0}")]
    Startup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for `Err(Error::InvalidArgument(format!(..)))`.
macro_rules! invalid {
    ($($arg:tt)*) => { Err($crate::error::Error::InvalidArgument(format!($($arg)*))) };
}
pub(crate) use invalid;
