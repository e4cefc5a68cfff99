//! The one table from errors to gRPC statuses.
//!
//! Every error a client can see goes through [`status`]: the engine's
//! [`Error`], [`AuthError`], [`LimitError`], the stream's [`ProtocolError`]
//! and [`HealthError`]. Each has its row in the table below
//! ([`ToStatus::kind`]), which decides the code and, for bad input, the
//! request field named by the `google.rpc.BadRequest` detail; the message
//! is the error's `Display`. The `code` strings of failed batch entries and
//! stream errors ([`code_name`]) come from the same rows.
//!
//! Invariants: every INVALID_ARGUMENT carries a BadRequest detail with one
//! field violation (the field, and the message as its description), so
//! programs need not parse messages; INTERNAL errors are logged in full and
//! the client is told no internals.

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::health::HealthError;
use super::stream::ProtocolError;
use crate::auth::AuthError;
use crate::engine::error::Error;
use crate::limits::LimitError;

/// What the table says of one error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// INVALID_ARGUMENT, with a BadRequest detail naming `field`, a path in
    /// the request (`max_messages`, `entries.id`, `attributes.delay_seconds`).
    BadRequest {
        field: &'static str,
    },
    NotFound,
    AlreadyExists,
    /// Well-formed, but the state does not allow it.
    FailedPrecondition,
    ResourceExhausted,
    Unauthenticated,
    PermissionDenied,
    /// Cluster mode: this node cannot answer now; retry (here or on
    /// another node).
    Unavailable,
    /// The broker's fault: logged in full, reported without internals.
    Internal,
}

impl Kind {
    pub fn code(self) -> Code {
        match self {
            Kind::BadRequest { .. } => Code::InvalidArgument,
            Kind::NotFound => Code::NotFound,
            Kind::AlreadyExists => Code::AlreadyExists,
            Kind::FailedPrecondition => Code::FailedPrecondition,
            Kind::ResourceExhausted => Code::ResourceExhausted,
            Kind::Unauthenticated => Code::Unauthenticated,
            Kind::PermissionDenied => Code::PermissionDenied,
            Kind::Unavailable => Code::Unavailable,
            Kind::Internal => Code::Internal,
        }
    }
}

/// An error a client may see: its `Display` is the message, [`kind`] its
/// row of the table.
///
/// [`kind`]: ToStatus::kind
pub trait ToStatus: fmt::Display {
    fn kind(&self) -> Kind;
}

// ---- the table ----

impl ToStatus for Error {
    fn kind(&self) -> Kind {
        let bad = |field: &'static str| Kind::BadRequest { field };
        match self {
            Error::OutOfRange { field, .. }
            | Error::InvalidName { field, .. }
            | Error::Invalid { field, .. } => bad(field),
            Error::DuplicateEntryId { .. } => bad("entries.id"),
            Error::TooManyAttributes { .. } | Error::InvalidAttributeName { .. } => {
                bad("attributes")
            }
            Error::MessageTooLarge { .. } | Error::CopyTooLarge { .. } => bad("body"),
            Error::InvalidFilterPolicy { .. } => bad("filter_policy"),
            Error::QueueNotFound { .. }
            | Error::TopicNotFound { .. }
            | Error::SubscriptionNotFound { .. }
            | Error::DeadLetterQueueNotFound { .. }
            | Error::QueueDeletedDuringPeek { .. } => Kind::NotFound,
            Error::QueueExists { .. } | Error::AlreadySubscribed { .. } => Kind::AlreadyExists,
            Error::ReceiptSuperseded { .. }
            | Error::NotInFlight
            | Error::MessageDeleted
            | Error::QueueIsDeadLetterTarget { .. } => Kind::FailedPrecondition,
            Error::ChangeTooLarge { .. }
            | Error::DiskLow { .. }
            | Error::DiskFull { .. }
            | Error::QueueFull { .. }
            | Error::BrokerFull { .. } => Kind::ResourceExhausted,
            Error::Unavailable { .. } | Error::StorageFailed { .. } => Kind::Unavailable,
            Error::Storage(_) => Kind::Internal,
        }
    }
}

impl ToStatus for AuthError {
    fn kind(&self) -> Kind {
        match self {
            AuthError::MissingToken
            | AuthError::MalformedAuthorization
            | AuthError::UnknownToken => Kind::Unauthenticated,
            AuthError::Denied { .. } => Kind::PermissionDenied,
        }
    }
}

impl ToStatus for LimitError {
    fn kind(&self) -> Kind {
        match self {
            LimitError::TooManyStreams { .. }
            | LimitError::TooManyLongPolls { .. }
            | LimitError::RequestTooLarge { .. } => Kind::ResourceExhausted,
        }
    }
}

impl ToStatus for ProtocolError {
    fn kind(&self) -> Kind {
        match self {
            ProtocolError::NotOpened
            | ProtocolError::OpenedAgain
            | ProtocolError::SendNotOpened
            | ProtocolError::SendOpenedAgain
            | ProtocolError::NoTarget => Kind::BadRequest { field: "open" },
        }
    }
}

impl ToStatus for HealthError {
    fn kind(&self) -> Kind {
        match self {
            HealthError::UnknownService { .. } => Kind::NotFound,
        }
    }
}

// ---- building statuses from the table ----

/// The status a client sees for `e`.
pub fn status(e: impl ToStatus) -> Status {
    let message = e.to_string();
    match e.kind() {
        Kind::Internal => {
            tracing::error!(error = %message, "storage failure");
            Status::internal("internal storage error; the broker's log has the details")
        }
        Kind::BadRequest { field } => {
            let details = ErrorDetails::with_bad_request_violation(field, message.clone());
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        kind => Status::new(kind.code(), message),
    }
}

/// Every error of the table converts into its status, so handlers can use `?`.
macro_rules! into_status {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for Status {
            fn from(e: $error) -> Status {
                status(e)
            }
        }
    )*};
}
into_status!(Error, AuthError, LimitError, ProtocolError, HealthError);

/// The `code` of a failed batch entry or stream error: the status code's
/// name in the style of gRPC's own (e.g. "INVALID_ARGUMENT").
pub fn code_name(e: &impl ToStatus) -> &'static str {
    grpc_name(e.kind().code())
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

/// Rewrites tonic's answer to an oversize request (OUT_OF_RANGE "decoded
/// message length too large", a trailers-only response) into
/// RESOURCE_EXHAUSTED naming `max_request_bytes` and its value; other
/// responses pass unchanged. Used with `tower::util::MapResponseLayer`.
pub fn oversize_as_resource_exhausted<B>(
    max_request_bytes: usize,
) -> impl Fn(http::Response<B>) -> http::Response<B> + Clone {
    move |mut response| {
        if is_oversize(response.headers()) {
            let status = status(LimitError::RequestTooLarge { max_request_bytes });
            // Only fails for a message that is not a valid header value,
            // which this one is.
            let _ = status.add_header(response.headers_mut());
        }
        response
    }
}

/// Whether a response head is tonic's refusal of an oversize request.
fn is_oversize(headers: &http::HeaderMap) -> bool {
    grpc_status(headers) == Some(tonic::Code::OutOfRange)
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("decoded%20message%20length%20too%20large")
                    || m.contains("decoded message length too large")
            })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Needs, Permission};
    use crate::storage::StorageError;

    /// The BadRequest field violation of a status, if it has one.
    fn violation(status: &Status) -> Option<(String, String)> {
        let details = status.get_error_details();
        let v = details.bad_request()?.field_violations.first()?.clone();
        Some((v.field, v.description))
    }

    #[track_caller]
    fn assert_bad_request(e: impl ToStatus, field: &str, message: &str) {
        let status = status(e);
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert_eq!(status.message(), message);
        assert_eq!(
            violation(&status),
            Some((field.to_string(), message.to_string())),
            "{message}"
        );
    }

    #[test]
    fn bad_requests_name_the_request_field_of_their_variant() {
        assert_bad_request(
            Error::out_of_range("max_messages", 1, 100, 101),
            "max_messages",
            "max_messages must be in 1..=100; got 101",
        );
        assert_bad_request(
            Error::out_of_range("attributes.visibility_timeout_seconds", 0, 43_200, 50_000),
            "attributes.visibility_timeout_seconds",
            "visibility_timeout_seconds must be in 0..=43200; got 50000",
        );
        assert_bad_request(
            Error::invalid("receipt_handle", "is malformed: expected hex"),
            "receipt_handle",
            "receipt_handle is malformed: expected hex",
        );
        assert_bad_request(
            Error::invalid(
                "attributes.redrive_policy.dead_letter_queue",
                "must name another queue",
            ),
            "attributes.redrive_policy.dead_letter_queue",
            "redrive_policy.dead_letter_queue must name another queue",
        );
        // A name looked up by GetQueue: the message says what it is, the
        // detail names the request field.
        assert_bad_request(
            Error::InvalidName {
                field: "name",
                what: "queue name",
                name: "a b".into(),
            },
            "name",
            r#"queue name must be 1..=80 characters of [A-Za-z0-9_-]; got "a b""#,
        );
        assert_bad_request(
            crate::engine::validate::entry_id("a.b").unwrap_err(),
            "entries.id",
            r#"entry id must be 1..=80 characters of [A-Za-z0-9_-]; got "a.b""#,
        );
        assert_bad_request(
            Error::DuplicateEntryId { id: "a".into() },
            "entries.id",
            r#"entry ids must be distinct; "a" appears twice"#,
        );
        assert_bad_request(
            Error::TooManyAttributes { max: 10, got: 11 },
            "attributes",
            "a message has at most 10 attributes; got 11",
        );
        assert_bad_request(
            Error::InvalidAttributeName {
                max: 256,
                name: String::new(),
            },
            "attributes",
            r#"attribute names must be 1..=256 bytes; got """#,
        );
        assert_bad_request(
            Error::MessageTooLarge {
                max: 1024,
                size: 1025,
            },
            "body",
            "message size (body plus attribute names and values) must be at most max_message_bytes = 1024; got 1025",
        );
        assert_bad_request(
            Error::CopyTooLarge {
                queue: "small".into(),
                size: 2000,
                max: 1024,
            },
            "body",
            r#"the copy for queue "small" would be 2000 bytes, over its max_message_bytes = 1024; no queue got a copy of this message"#,
        );
        assert_bad_request(
            Error::InvalidFilterPolicy {
                path: r#""a""#.into(),
                reason: "expects an array".into(),
            },
            "filter_policy",
            r#"filter_policy: at "a": expects an array"#,
        );
        assert_bad_request(
            ProtocolError::NotOpened,
            "open",
            "the first request of StreamMessages must be `open` (queue and credit)",
        );
    }

    #[test]
    fn every_variant_has_its_code() {
        let s = String::new;
        let engine = [
            (Error::out_of_range("f", 0, 1, 2), Code::InvalidArgument),
            (
                Error::InvalidName {
                    field: "f",
                    what: "f",
                    name: s(),
                },
                Code::InvalidArgument,
            ),
            (Error::DuplicateEntryId { id: s() }, Code::InvalidArgument),
            (
                Error::TooManyAttributes { max: 1, got: 2 },
                Code::InvalidArgument,
            ),
            (
                Error::InvalidAttributeName { max: 1, name: s() },
                Code::InvalidArgument,
            ),
            (
                Error::MessageTooLarge { max: 1, size: 2 },
                Code::InvalidArgument,
            ),
            (
                Error::CopyTooLarge {
                    queue: s(),
                    size: 2,
                    max: 1,
                },
                Code::InvalidArgument,
            ),
            (
                Error::InvalidFilterPolicy {
                    path: s(),
                    reason: s(),
                },
                Code::InvalidArgument,
            ),
            (Error::invalid("f", "r"), Code::InvalidArgument),
            (Error::QueueNotFound { queue: s() }, Code::NotFound),
            (Error::TopicNotFound { topic: s() }, Code::NotFound),
            (Error::SubscriptionNotFound { id: s() }, Code::NotFound),
            (
                Error::DeadLetterQueueNotFound { queue: s() },
                Code::NotFound,
            ),
            (Error::QueueDeletedDuringPeek { queue: s() }, Code::NotFound),
            (
                Error::QueueExists {
                    queue: s(),
                    attribute: "a",
                    have: s(),
                    want: s(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::AlreadySubscribed {
                    queue: s(),
                    topic: s(),
                    setting: s(),
                },
                Code::AlreadyExists,
            ),
            (
                Error::ReceiptSuperseded {
                    current: 2,
                    handle: 1,
                },
                Code::FailedPrecondition,
            ),
            (Error::NotInFlight, Code::FailedPrecondition),
            (Error::MessageDeleted, Code::FailedPrecondition),
            (Error::Unavailable { reason: s() }, Code::Unavailable),
            (
                Error::QueueIsDeadLetterTarget {
                    queue: s(),
                    used_by: vec![],
                },
                Code::FailedPrecondition,
            ),
            (
                Error::Storage(StorageError::Corrupt {
                    key: "k".into(),
                    reason: "disk gone".into(),
                }),
                Code::Internal,
            ),
            (
                Error::from(StorageError::Failed("fsync: EIO".into())),
                Code::Unavailable,
            ),
        ];
        for (e, code) in engine {
            assert_eq!(code_name(&e), grpc_name(code), "{e:?}");
            let has_detail = violation(&Status::from(e)).is_some();
            assert_eq!(has_detail, code == Code::InvalidArgument);
        }

        let auth = [
            (AuthError::MissingToken, Code::Unauthenticated),
            (AuthError::MalformedAuthorization, Code::Unauthenticated),
            (AuthError::UnknownToken, Code::Unauthenticated),
            (
                AuthError::Denied {
                    token: "t".into(),
                    needs: Needs::Permission(Permission::Send, "q".into()),
                },
                Code::PermissionDenied,
            ),
        ];
        for (e, code) in auth {
            let message = e.to_string();
            let status = Status::from(e);
            assert_eq!((status.code(), status.message()), (code, message.as_str()));
        }

        let limits = [
            LimitError::TooManyStreams { max_streams: 1 },
            LimitError::TooManyLongPolls {
                max_long_polls_per_connection: 1,
            },
            LimitError::RequestTooLarge {
                max_request_bytes: 1,
            },
        ];
        for e in limits {
            assert_eq!(Status::from(e).code(), Code::ResourceExhausted);
        }

        let unknown = HealthError::UnknownService {
            service: "x".into(),
        };
        assert_eq!(Status::from(unknown).code(), Code::NotFound);
        assert_eq!(code_name(&ProtocolError::OpenedAgain), "INVALID_ARGUMENT");
    }

    #[test]
    fn storage_failures_are_internal_without_their_cause() {
        let status = status(Error::Storage(StorageError::Corrupt {
            key: "k".into(),
            reason: "disk gone".into(),
        }));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("disk gone"), "{status:?}");
    }
}
