//! [`Consumer`]: a queue worker in a few lines — receive, run a handler,
//! delete on success, retry with backoff on failure, heartbeat slow jobs,
//! rate-limit, shut down without stranding a message. [`ConsumerStream`]:
//! the same machinery as a `Stream` of [`Delivery`]s for a hand-written loop.
//!
//! # How a running consumer is put together
//!
//! - A **receiver** task fills a channel of [`Delivery`]s: in pull mode by
//!   long-polling `ReceiveMessages`, in push mode from one `StreamMessages`
//!   stream. It receives only while there is a free *slot* (at most
//!   `concurrency + batch_size` messages are held at once) and, with
//!   `max_per_second`, only as fast as the token bucket allows. Transient
//!   errors (the broker restarting) are retried with backoff forever; other
//!   errors (the queue was deleted) stop it, and the consumer reports them.
//! - **Workers** (run mode: [`Consumer`]) or the user's loop (stream mode:
//!   [`ConsumerStream`]) take deliveries from the channel and settle them.
//! - The **heartbeat** task extends the visibility of every message held for
//!   longer than half its visibility timeout.
//! - The **acker** task sends settlements and extensions to the broker:
//!   batched RPCs (`DeleteMessageBatch`, `ChangeMessageVisibilityBatch`,
//!   flushed every few milliseconds or at 10 entries), or in push mode the
//!   requests of the open stream.
//!
//! # Invariants
//!
//! - Every message received is in the *lease table* until it is settled
//!   exactly once: deleted, or released (made visible again now or after a
//!   backoff). Removing its entry is the right to settle it, so a delivery
//!   that finds its entry gone (released at the shutdown deadline) does
//!   nothing. Each entry holds one slot, given back when it is removed.
//! - The heartbeat queues an extension while it holds the table's lock, and
//!   a settlement is queued after its entry was removed, so an extension is
//!   never queued after the settlement of its message, and the acker keeps
//!   that order (a release can never be overridden by a late extension).
//! - Shutdown stops receiving first, then releases (visibility 0) what was
//!   received but not started, lets running handlers finish until the
//!   deadline, releases whatever is still held at the deadline, and flushes
//!   the acker: nothing is left to wait for its visibility timeout, except a
//!   message the broker sent in the instant its receive was cancelled.
//! - Acknowledgements sent on a push stream are also kept for two seconds;
//!   when the stream ends (shutdown or a broken connection), the recent ones
//!   are sent again through the RPCs, since the broker may not have read
//!   them. A repeat is harmless: it fails on a deleted message or a stale
//!   receipt handle, and such failures are not counted.
//!
//! # Modules
//!
//! - `builder`: [`ConsumerBuilder`], the options, and the launch of the tasks.
//! - `run`: run mode, [`Consumer`] and its workers; `stream`: stream mode,
//!   [`ConsumerStream`].
//! - `delivery`: [`Delivery`], a received message and the right to settle it.
//! - `lease`: the lease table, and settling through it.
//! - `pipeline`: the state the tasks share, the tasks, [`ConsumerSummary`],
//!   and the last steps of a shutdown.
//! - `pull`, `push`: the receivers; `heartbeat`; `acker`.
//! - `retry`: transient errors, backoff and copies of errors, shared with the
//!   publisher.

mod acker;
mod builder;
mod delivery;
mod heartbeat;
mod lease;
mod pipeline;
mod pull;
mod push;
mod retry;
mod run;
mod stream;

pub use builder::ConsumerBuilder;
pub use delivery::Delivery;
pub use pipeline::ConsumerSummary;
pub(crate) use retry::{backoff, copy, is_transient};
pub use run::Consumer;
pub use stream::ConsumerStream;

use crate::pb;

/// A received message, as the broker sent it: body, attributes, receipt
/// handle, receive count.
pub type Message = pb::ReceivedMessage;
