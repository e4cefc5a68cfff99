//! Thin gRPC adapters over the engine: protobuf in, one engine call,
//! protobuf or a status out. The one table that maps engine errors to gRPC
//! status codes lives here.

pub mod queue;
pub mod stream;
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
        Error::Storage(_) | Error::Config(_) => Code::Internal,
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

/// Runs a batch RPC: checks its size and that entry ids are distinct (else
/// the whole request fails), fails entries with a malformed id alone, runs
/// `run` on the others and splits its per-entry results into successes
/// (with the entry id) and failures.
pub async fn run_batch<E, T>(
    entries: Vec<E>,
    id: impl Fn(&E) -> &String,
    run: impl AsyncFnOnce(&[E]) -> crate::Result<Vec<crate::Result<T>>>,
) -> Result<(Vec<(String, T)>, Vec<pb::BatchResultError>), Status> {
    crate::queue::validate::batch(entries.len(), entries.iter().map(|e| id(e).as_str()))
        .map_err(status)?;
    let mut failures = Vec::new();
    let mut good = Vec::with_capacity(entries.len());
    for e in entries {
        match crate::queue::validate::entry_id(id(&e)) {
            Ok(()) => good.push(e),
            Err(err) => failures.push(failed(id(&e).clone(), &err)),
        }
    }
    let results = if good.is_empty() {
        Vec::new()
    } else {
        run(&good).await.map_err(status)?
    };
    let mut successes = Vec::with_capacity(good.len());
    for (e, result) in good.iter().zip(results) {
        match result {
            Ok(value) => successes.push((id(e).clone(), value)),
            Err(err) => failures.push(failed(id(e).clone(), &err)),
        }
    }
    Ok((successes, failures))
}
