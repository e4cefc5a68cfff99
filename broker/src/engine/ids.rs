//! The engine's identifiers as types, so that a queue id is never taken
//! for a seq: [`QueueId`], [`Seq`], and a [`Timer`] that names its parts.
//!
//! Both ids come from one counter (`State::alloc_seqs`), are never reused,
//! and appear on disk and in commands as plain `u64` (`storage::keys`,
//! `command`): the types live in memory, where the engine decides.

use std::fmt;

/// A queue's id: handed out when the queue is created, never reused, so a
/// receipt handle of a deleted queue never matches a new one of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u64);

/// A message's sequence number: its place in its queue (receive takes the
/// lowest visible one first). A moved message gets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

/// A hidden message's timer: when it becomes visible (`at`, ms since the
/// epoch), and which message it is. Ordered by time first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    pub at: u64,
    pub queue: QueueId,
    pub seq: Seq,
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
