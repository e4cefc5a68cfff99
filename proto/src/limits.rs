//! The limits of the API, and the defaults the API states: part of the
//! contract, like the messages. The broker enforces them and clients may
//! rely on them; the code of every crate of the workspace takes them from
//! here. (Prose still spells some out: the CLI's help, which a test of
//! `broker-cli` checks, the client's docs and the README; and tests that
//! pin an exact error message.)
//!
//! The comments of `broker/v1/*.proto` (and so `docs/api.md`, generated
//! from them) state the same numbers to clients of other languages; a test
//! (`limits/tests.rs`) checks that every number those comments state is one
//! of these (or named there as something else, such as a setting of the
//! broker).
//!
//! A field named in a doc comment is its name in the request (the batch
//! forms and the stream have the same fields under their own names, e.g.
//! `entries.visibility_timeout_seconds`, `open.visibility_timeout_seconds`).

// ---- names ----

/// Longest name, in characters (of `[A-Za-z0-9_-]`; the shortest is 1): a
/// queue's or topic's `name` (and every field naming one, such as `queue`,
/// `topic`, `redrive_policy.dead_letter_queue`, `destination_queue`), and
/// a batch entry's `id`.
pub const NAME_LEN_MAX: usize = 80;

// ---- messages ----

/// Most attributes of one message (`attributes` of SendMessage, Publish and
/// their batch entries).
pub const ATTRIBUTES_MAX: usize = 10;

/// Longest attribute name, in bytes (the shortest is 1).
pub const ATTRIBUTE_NAME_BYTES_MAX: usize = 256;

/// Most entries of one batch (`entries` of SendMessageBatch,
/// DeleteMessageBatch, ChangeMessageVisibilityBatch and PublishBatch; the
/// fewest is 1).
pub const BATCH_ENTRIES_MAX: usize = 100;

/// Longest delay of a message, in seconds: `delay_seconds` of a send (and
/// `attributes.delay_seconds`, a queue's default delay).
pub const DELAY_SECONDS_MAX: u32 = 900;

// ---- receiving ----

/// Most messages one ReceiveMessages returns (`max_messages`; 0 means 1),
/// and so one push of StreamMessages.
pub const RECEIVE_MESSAGES_MAX: u32 = 100;

/// Longest long poll, in seconds: `wait_time_seconds` of ReceiveMessages
/// and `attributes.receive_wait_time_seconds`.
pub const WAIT_TIME_SECONDS_MAX: u32 = 20;

/// Longest visibility timeout, in seconds: `visibility_timeout_seconds` of
/// ReceiveMessages, ChangeMessageVisibility, StreamOpen, StreamExtend and
/// the queue attribute; StreamRelease's `delay_seconds`.
pub const VISIBILITY_TIMEOUT_SECONDS_MAX: u32 = 43_200;

/// Largest `credit` of StreamOpen: messages pushed on one stream and not
/// yet acknowledged (the smallest is 1).
pub const STREAM_CREDIT_MAX: u32 = 1_000;

/// Largest `window` of SendStreamOpen: messages sent on one publishing
/// stream and not yet answered before the broker stops reading it.
pub const SEND_STREAM_WINDOW_MAX: u32 = 10_000;

/// The `window` of a SendStreamOpen that gives none (0).
pub const SEND_STREAM_WINDOW_DEFAULT: u32 = 1_000;

/// Largest page of PeekMessages (`max_messages`), in messages.
pub const PEEK_MESSAGES_MAX: u32 = 100;

/// The page of PeekMessages when `max_messages` is 0, in messages.
pub const PEEK_MESSAGES_DEFAULT: u32 = 10;

// ---- listing ----

/// Largest page of ListQueues, ListTopics and ListSubscriptions
/// (`page_size`), in items.
pub const PAGE_SIZE_MAX: u32 = 1_000;

/// Their page when `page_size` is 0, in items.
pub const PAGE_SIZE_DEFAULT: u32 = 100;

// ---- queue attributes (`QueueAttributes`) ----

/// `visibility_timeout_seconds` of a queue created without it, in seconds
/// (at most [`VISIBILITY_TIMEOUT_SECONDS_MAX`]).
pub const VISIBILITY_TIMEOUT_SECONDS_DEFAULT: u32 = 30;

/// Shortest `message_retention_seconds`, in seconds.
pub const MESSAGE_RETENTION_SECONDS_MIN: u32 = 60;

/// Longest `message_retention_seconds`, in seconds (14 days).
pub const MESSAGE_RETENTION_SECONDS_MAX: u32 = 1_209_600;

/// `message_retention_seconds` of a queue created without it, in seconds
/// (4 days).
pub const MESSAGE_RETENTION_SECONDS_DEFAULT: u32 = 345_600;

/// Smallest `max_message_bytes`, in bytes.
pub const MAX_MESSAGE_BYTES_MIN: u32 = 1_024;

/// Largest `max_message_bytes`, in bytes (1 MiB); also the largest message
/// a Publish (or a PublishBatch entry) takes, body plus attribute names and
/// values, before each subscribed queue's own `max_message_bytes`.
pub const MAX_MESSAGE_BYTES_MAX: u32 = 1_048_576;

/// `max_message_bytes` of a queue created without it, in bytes (256 KiB).
pub const MAX_MESSAGE_BYTES_DEFAULT: u32 = 262_144;

/// Largest `redrive_policy.max_receive_count`, in receives (the smallest
/// is 1).
pub const MAX_RECEIVE_COUNT_MAX: u32 = 1_000;

/// Largest `max_receive_rate` (messages per second) and
/// `max_receive_burst` (messages).
pub const MAX_RECEIVE_RATE_MAX: u32 = 100_000;

/// Longest retry backoff, in seconds: `retry_policy.min_backoff_seconds` and
/// `retry_policy.max_backoff_seconds`.
pub const BACKOFF_SECONDS_MAX: u32 = 600;

// ---- topics ----

/// Most conditions of one `filter_policy` (Subscribe): every entry of every
/// key's array, across all `$or` branches. Bounds the work a publish does
/// per subscription.
pub const FILTER_POLICY_CONDITIONS_MAX: usize = 150;

// ---- transport ----

/// The largest gRPC message either side sends or accepts, in bytes: a
/// batch of [`BATCH_ENTRIES_MAX`] messages of the largest size
/// ([`MAX_MESSAGE_BYTES_MAX`] each), with room for attributes and framing.
/// Also the broker's default `max_request_bytes`.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

// The relations the comments above state.
const _: () = {
    assert!(MAX_GRPC_MESSAGE_BYTES >= BATCH_ENTRIES_MAX * MAX_MESSAGE_BYTES_MAX as usize);
    assert!(MAX_MESSAGE_BYTES_MIN <= MAX_MESSAGE_BYTES_DEFAULT);
    assert!(MAX_MESSAGE_BYTES_DEFAULT <= MAX_MESSAGE_BYTES_MAX);
    assert!(MESSAGE_RETENTION_SECONDS_MIN <= MESSAGE_RETENTION_SECONDS_DEFAULT);
    assert!(MESSAGE_RETENTION_SECONDS_DEFAULT <= MESSAGE_RETENTION_SECONDS_MAX);
    assert!(VISIBILITY_TIMEOUT_SECONDS_DEFAULT <= VISIBILITY_TIMEOUT_SECONDS_MAX);
    assert!(PEEK_MESSAGES_DEFAULT <= PEEK_MESSAGES_MAX);
    assert!(PAGE_SIZE_DEFAULT <= PAGE_SIZE_MAX);
};

#[cfg(test)]
mod tests;
