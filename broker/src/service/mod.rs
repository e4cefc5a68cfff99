//! Thin gRPC adapters over the engine: protobuf in, one engine call,
//! protobuf or a status out. The one table that maps engine errors to gRPC
//! status codes lives here.

pub mod queue;
pub mod topic;

use broker_proto::pb;
use tonic::{Code, Status};

use crate::error::Error;

/// The gRPC code of an engine error.
pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::ShuttingDown => Code::Unavailable,
        Error::Storage(_) => Code::Internal,
    }
}

/// The status a client sees. Storage failures are logged in full and
/// reported without internals.
pub fn status(e: Error) -> Status {
    match &e {
        Error::Storage(inner) => {
            tracing::error!(error = %inner, "storage failure");
            Status::internal("internal storage error; the broker's log has the details")
        }
        _ => Status::new(code(&e), e.to_string()),
    }
}

/// A failed batch entry's `code` field: the status code name in the style
/// of gRPC's own (e.g. "INVALID_ARGUMENT").
pub fn code_name(e: &Error) -> &'static str {
    match code(e) {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// A failed batch entry: its id, its code name and the error's message.
pub fn failed(id: String, e: &Error) -> pb::BatchResultError {
    pb::BatchResultError {
        id,
        code: code_name(e).to_string(),
        message: e.to_string(),
    }
}
