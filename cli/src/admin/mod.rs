//! The operator commands of the CLI: `peek`, `stats`, `top` and `redrive`
//! (at once, or paced with `--per-second`).
//!
//! - [`peek`](peek_messages) pages through `PeekMessages`: it only looks, so
//!   it may run against a queue in production use (receive counts,
//!   visibility and receipt handles stay as they are).
//! - `stats` lists the queues (`ListQueues`, every page) and asks each for
//!   its counts (`GetQueue`, a few at a time); a queue deleted in between is
//!   left out. [`top`] redraws that table every `--interval` until Ctrl-C,
//!   with the change of visible messages per second since the last frame.
//! - `redrive --per-second N` is a loop of `RedriveMessages` calls of a few
//!   messages each, paced by a token bucket (`governor`), reporting
//!   progress against the source's visible count at the start. Each call is
//!   atomic on the broker; stopping the loop (Ctrl-C) leaves every message
//!   either moved or where it was.
//!
//! Rendering is kept in pure functions (rows in, text out) so that it is
//! tested without a terminal or a broker.

mod peek;
mod redrive;
mod stats;

pub(crate) use peek::peek;
pub use peek::peek_messages;
pub(crate) use redrive::redrive;
pub use redrive::{RedriveProgress, progress_line, redrive_paced};
pub(crate) use stats::stats;
pub use stats::{QueueRow, broker_header, queue_rows, stats_table, top, top_header, visible_rates};

/// Milliseconds since the Unix epoch, as the broker stamps `*_at_ms`.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
