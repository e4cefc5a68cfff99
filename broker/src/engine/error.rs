//! The engine's error type: what went wrong, as data.
//!
//! Each layer has its own error enum, and one table at the edge
//! (`service::status`) maps every one of them to a gRPC status:
//!
//! | layer | error | seen by a client as |
//! |-------|-------|---------------------|
//! | engine (`queue`, `topic`) | [`Error`] (this module) | INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAVAILABLE; INTERNAL for [`Error::Storage`] |
//! | storage | [`StorageError`] | INTERNAL (inside [`Error::Storage`]), logged in full |
//! | `auth` | `auth::AuthError` | UNAUTHENTICATED, PERMISSION_DENIED |
//! | `limits` | `limits::LimitError` | RESOURCE_EXHAUSTED |
//! | `service::stream`, `service::health` | `ProtocolError`, `HealthError` | INVALID_ARGUMENT, NOT_FOUND |
//! | startup (`server`, `tls`, `auth`'s token file) | `server::StartupError` | never: `server::run` returns it |
//!
//! Variants carry context fields, not finished messages; their `Display`
//! is the message a client reads, which names the field, the limit and the
//! value. Every bad-input variant knows the request field it is about (a
//! path in the request, such as `max_messages`, `entries.id` or
//! `attributes.visibility_timeout_seconds`), which the edge puts into the
//! `google.rpc.BadRequest` detail.

use broker_proto::limits::NAME_LEN_MAX;

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- bad input: INVALID_ARGUMENT, naming the request field ----
    /// A number outside its range.
    #[error("{} must be in {min}..={max}; got {got}", subject(.field))]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    /// A name no queue or topic could have, or a malformed batch entry id
    /// (1..=[`NAME_LEN_MAX`] characters of `[A-Za-z0-9_-]`). `what` is what
    /// the message calls it (`name`, `queue name`, `entry id`); `name` is
    /// cut to 100 characters.
    #[error("{what} must be 1..={NAME_LEN_MAX} characters of [A-Za-z0-9_-]; got {name:?}")]
    InvalidName {
        field: &'static str,
        what: &'static str,
        name: String,
    },
    /// Two entries of one batch with the same id (field `entries.id`).
    #[error("entry ids must be distinct; {id:?} appears twice")]
    DuplicateEntryId { id: String },
    /// More message attributes than allowed (field `attributes`).
    #[error("a message has at most {max} attributes; got {got}")]
    TooManyAttributes { max: usize, got: usize },
    /// An empty or too long attribute name (field `attributes`); `name` is
    /// cut to 100 characters.
    #[error("attribute names must be 1..={max} bytes; got {name:?}")]
    InvalidAttributeName { max: usize, name: String },
    /// A message over its queue's `max_message_bytes` (field `body`).
    #[error(
        "message size (body plus attribute names and values) must be at most max_message_bytes = {max}; got {size}"
    )]
    MessageTooLarge { max: u32, size: usize },
    /// A published message whose copy for one subscribed queue would exceed
    /// that queue's `max_message_bytes` (field `body`).
    #[error(
        "the copy for queue {queue:?} would be {size} bytes, over its max_message_bytes = {max}; no queue got a copy of this message"
    )]
    CopyTooLarge {
        queue: String,
        size: usize,
        max: u32,
    },
    /// A filter policy this broker would not evaluate as written (field
    /// `filter_policy`); `path` is where in the policy (`"$or"[1]."country"[0]`),
    /// empty for the policy as a whole.
    #[error("filter_policy: {}{reason}", at(.path))]
    InvalidFilterPolicy { path: String, reason: String },
    /// Any other bad input. The message is the field (as [`OutOfRange`]
    /// shows it) followed by `reason`, e.g. `receipt_handle` + `is malformed: ...`.
    ///
    /// [`OutOfRange`]: Error::OutOfRange
    #[error("{} {reason}", subject(.field))]
    Invalid { field: &'static str, reason: String },

    // ---- NOT_FOUND ----
    #[error("queue {queue:?} does not exist")]
    QueueNotFound { queue: String },
    #[error("topic {topic:?} does not exist")]
    TopicNotFound { topic: String },
    #[error("subscription {id:?} does not exist")]
    SubscriptionNotFound { id: String },
    /// A redrive policy naming a queue that does not exist.
    #[error("redrive_policy.dead_letter_queue {queue:?} does not exist; create it first")]
    DeadLetterQueueNotFound { queue: String },
    /// The queue went away between the two steps of a peek.
    #[error("queue {queue:?} was deleted while it was being peeked")]
    QueueDeletedDuringPeek { queue: String },

    // ---- ALREADY_EXISTS ----
    /// CreateQueue of an existing queue with other attributes; `attribute`
    /// is the first that differs.
    #[error("queue {queue:?} already exists with {attribute} = {have} (requested {want})")]
    QueueExists {
        queue: String,
        attribute: &'static str,
        have: String,
        want: String,
    },
    /// Subscribe of a subscribed queue with other settings; `setting` is
    /// the existing one that differs, as the message shows it.
    #[error(
        "queue {queue:?} is already subscribed to topic {topic:?} with {setting}; unsubscribe it first to change its settings"
    )]
    AlreadySubscribed {
        queue: String,
        topic: String,
        setting: String,
    },

    // ---- FAILED_PRECONDITION: well-formed, but the state does not allow it ----
    /// A receipt handle of an earlier receive of the message.
    #[error(
        "receipt_handle is superseded: the message was received again since (receive {current} of it, the handle is of receive {handle})"
    )]
    ReceiptSuperseded { current: u32, handle: u32 },
    /// A visibility change of a message whose visibility timeout lapsed.
    #[error("the message is not in flight: its visibility timeout already lapsed")]
    NotInFlight,
    /// A visibility change of a deleted message.
    #[error("the message no longer exists (deleted)")]
    MessageDeleted,
    /// DeleteQueue of a queue that other queues' redrive policies name.
    #[error(
        "queue {queue:?} is the dead-letter queue of {}; remove their redrive policy first",
        quoted(.used_by)
    )]
    QueueIsDeadLetterTarget { queue: String, used_by: Vec<String> },

    // ---- RESOURCE_EXHAUSTED ----
    /// Cluster mode: a change too large to replicate as one log entry (a
    /// batch of large messages, copied to many subscribed queues).
    #[error(
        "this request's change is {size} bytes; a cluster replicates at most {max} bytes in one change: send fewer or smaller messages per request"
    )]
    ChangeTooLarge { size: usize, max: usize },
    /// The data dir's file system has less free space than
    /// `min_free_disk` (`storage::disk`): what adds data is refused.
    #[error(
        "the data dir's disk has {free} bytes free, below min_free_disk = {floor} bytes: sends, publishes and redrives are refused until space is freed (receives, deletes and purges go on, and free it)"
    )]
    DiskLow { free: u64, floor: u64 },
    /// A write failed because the data dir's file system is full (filled
    /// between two readings of its free space).
    #[error(
        "the data dir's disk is full ({detail}): the write was not made; free space (min_free_disk keeps room for receives and deletes by refusing sends before the disk is full)"
    )]
    DiskFull { detail: String },
    /// The call would take a queue over its `max_messages` attribute.
    #[error(
        "queue {queue:?} is full: it holds {holds} and its max_messages is {max}; this call adds {adds}, so nothing was written; receive and delete to make room, or raise max_messages"
    )]
    QueueFull {
        queue: String,
        holds: u64,
        adds: u64,
        max: u32,
    },
    /// The call would take the broker over its `max_messages` setting.
    #[error(
        "the broker is full: it holds {holds} messages over all queues and its max_messages (--max-messages) is {max}; this call adds {adds}, so nothing was written; receive and delete to make room, or raise the cap"
    )]
    BrokerFull { holds: u64, adds: u64, max: u64 },

    // ---- UNAVAILABLE ----
    /// Cluster mode: this node cannot decide now (it does not lead, or
    /// leadership moved); the message says why. Nothing was changed.
    #[error("{reason}")]
    Unavailable { reason: String },
    /// The store failed (an I/O error writing or syncing): the broker
    /// acknowledges no more writes and stops (`storage`, "Failures").
    #[error(
        "the broker's storage failed ({reason}): this call's change is not acknowledged (it may or may not have been made), and the broker is stopping; retry once it is restarted"
    )]
    StorageFailed { reason: String },

    // ---- INTERNAL ----
    /// Not the client's fault; logged in full, reported as INTERNAL.
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for Error {
    /// A full file system is [`Error::DiskFull`] (RESOURCE_EXHAUSTED, the
    /// client can act on it), a failed store [`Error::StorageFailed`]
    /// (UNAVAILABLE: the broker stops), anything else [`Error::Storage`].
    fn from(e: StorageError) -> Error {
        match e {
            StorageError::Db(db) if crate::storage::disk::is_no_space(db.as_ref()) => {
                Error::DiskFull {
                    detail: db.to_string(),
                }
            }
            StorageError::Failed(reason) => Error::StorageFailed { reason },
            e => Error::Storage(e),
        }
    }
}

impl From<crate::storage::disk::BelowFloor> for Error {
    fn from(b: crate::storage::disk::BelowFloor) -> Error {
        Error::DiskLow {
            free: b.free,
            floor: b.floor,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::Invalid`]: `field` followed by `reason` in the message.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// [`Error::OutOfRange`].
    pub fn out_of_range(field: &'static str, min: u32, max: u32, got: u32) -> Error {
        Error::OutOfRange {
            field,
            min: min.into(),
            max: max.into(),
            got: got.into(),
        }
    }
}

/// How a message calls a field: queue attributes as `QueueAttributes` names
/// them (`visibility_timeout_seconds`), without the request's `attributes.`,
/// every other field by its path in the request.
pub fn subject(field: &str) -> &str {
    field.strip_prefix("attributes.").unwrap_or(field)
}

/// `at PATH: ` before a filter policy error, if it has a path.
fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("at {path}: ")
    }
}

/// `"a", "b"`.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `s`, cut to 100 characters (with `...`), for values echoed in messages.
pub fn truncate(s: &str) -> String {
    if s.chars().count() > 100 {
        format!("{}...", s.chars().take(100).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_queue_attributes_without_the_request_path() {
        let e = Error::out_of_range("attributes.delay_seconds", 0, 900, 901);
        assert_eq!(e.to_string(), "delay_seconds must be in 0..=900; got 901");
        let e = Error::invalid(
            "attributes.redrive_policy.dead_letter_queue",
            "must name another queue",
        );
        assert_eq!(
            e.to_string(),
            "redrive_policy.dead_letter_queue must name another queue"
        );
        let e = Error::out_of_range("max_messages", 1, 100, 101);
        assert_eq!(e.to_string(), "max_messages must be in 1..=100; got 101");
    }

    #[test]
    fn filter_policy_errors_say_where() {
        let e = Error::InvalidFilterPolicy {
            path: r#""price"[0]"#.into(),
            reason: "expects a number".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"filter_policy: at "price"[0]: expects a number"#
        );
        let e = Error::InvalidFilterPolicy {
            path: String::new(),
            reason: "not valid JSON: EOF".into(),
        };
        assert_eq!(e.to_string(), "filter_policy: not valid JSON: EOF");
    }

    #[test]
    fn dead_letter_target_lists_its_sources() {
        let e = Error::QueueIsDeadLetterTarget {
            queue: "dlq".into(),
            used_by: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            r#"queue "dlq" is the dead-letter queue of "a", "b"; remove their redrive policy first"#
        );
    }
}
