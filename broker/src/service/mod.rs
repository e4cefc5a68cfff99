//! Thin gRPC adapters over the engine: protobuf in, one engine call,
//! protobuf or a status out. The one table that maps engine errors to gRPC
//! status codes lives here.

pub mod deadline;
pub mod health;
pub mod queue;
pub mod stream;
pub mod topic;
pub mod trace;

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
        Error::Storage(_) | Error::Startup(_) => Code::Internal,
    }
}

/// The status a client sees. Storage failures are logged in full and
/// reported without internals. INVALID_ARGUMENT carries a `google.rpc.BadRequest`
/// detail naming the request field, so that programs need not parse the
/// message (every such message begins with the field it is about).
pub fn status(e: Error) -> Status {
    match &e {
        Error::Storage(inner) => {
            tracing::error!(error = %inner, "storage failure");
            Status::internal("internal storage error; the broker's log has the details")
        }
        Error::InvalidArgument(message) => match bad_request_field(message) {
            Some(field) => {
                use tonic_types::StatusExt as _;
                let details = tonic_types::ErrorDetails::with_bad_request_violation(field, message);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            None => Status::invalid_argument(message),
        },
        _ => Status::new(code(&e), e.to_string()),
    }
}

/// The request field an INVALID_ARGUMENT message is about: its first word
/// when that is a field name (`max_messages must be in ...`,
/// `filter_policy: not valid JSON`), `entries.id` for a batch entry's id.
fn bad_request_field(message: &str) -> Option<&str> {
    if message.starts_with("entry id") {
        return Some("entries.id");
    }
    let end = message.find([' ', ':']).unwrap_or(message.len());
    let word = &message[..end];
    let is_field = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    is_field.then_some(word)
}

/// A failed batch entry's `code` field: the status code name in the style
/// of gRPC's own (e.g. "INVALID_ARGUMENT").
pub fn code_name(e: &Error) -> &'static str {
    grpc_name(code(e))
}

/// The status code in a response head's `grpc-status` field, if it has one
/// (a trailers-only response: an error before any message).
pub fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.trim().parse().ok()?))
}

/// A status code's name as gRPC spells it (e.g. "NOT_FOUND"), for batch
/// results, logs and metrics.
pub fn grpc_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt as _;

    #[test]
    fn invalid_arguments_name_their_field_in_a_bad_request_detail() {
        let cases = [
            (
                "max_messages must be in 1..=100; got 101",
                Some("max_messages"),
            ),
            ("filter_policy: not valid JSON: EOF", Some("filter_policy")),
            (
                "entry ids must be distinct; \"a\" appears twice",
                Some("entries.id"),
            ),
            ("body must not be empty", Some("body")),
            ("A message has at most 10 attributes", None),
        ];
        for (message, field) in cases {
            let status = status(Error::InvalidArgument(message.into()));
            assert_eq!(status.code(), Code::InvalidArgument);
            assert_eq!(status.message(), message);
            let details = status.get_error_details();
            let violation = details
                .bad_request()
                .and_then(|b| b.field_violations.first());
            assert_eq!(violation.map(|v| v.field.as_str()), field, "{message}");
            if let Some(v) = violation {
                assert_eq!(v.description, message);
            }
        }
    }
}
