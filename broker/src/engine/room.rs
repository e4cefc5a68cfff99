//! Caps on queued messages, so that a backlog cannot grow the broker's
//! memory without bound (about 180 bytes a message, mostly the index,
//! `index`): a queue's `max_messages` attribute and the broker's
//! `max_messages` setting, 0 meaning no cap for both.
//!
//! A call that adds messages (a send, a publish, a redrive) is checked as a
//! whole, under the engine lock, before anything is written: if it would
//! take any queue over its cap, or the broker over its own, it is refused
//! and writes nothing (RabbitMQ's `overflow: reject-publish`; never the
//! `drop-head` that would silently lose acknowledged messages). Moves do
//! not add to the broker's count; dead letters are never refused, since a
//! refusal would leave them nowhere, so a dead-letter queue may go over its
//! cap. Lowering a cap below what is queued removes nothing.
//!
//! Counting the broker's messages sums the queues' sizes, O(queues), and is
//! done only when the broker has a cap (and for [`Engine::broker_stats`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Engine;
use super::error::{Error, Result};
use super::ids::QueueId;
use super::state::State;

/// The broker's own state (`GetBrokerStats`, `broker stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerStats {
    pub queues: u64,
    /// Messages of every queue, in any state.
    pub messages: u64,
    /// The broker's cap on `messages`; 0: none.
    pub max_messages: u64,
    /// Free bytes on the data dir's disk at the last reading.
    pub disk_free: Option<u64>,
    /// `min_free_disk`; 0: none.
    pub min_free_disk: u64,
    /// Below the floor: what adds messages is refused.
    pub disk_low: bool,
}

impl Engine {
    /// The broker's counts, caps and disk space.
    pub fn broker_stats(&self) -> BrokerStats {
        let (queues, messages) = {
            let st = self.lock();
            (st.queues.len() as u64, messages(&st))
        };
        BrokerStats {
            queues,
            messages,
            max_messages: self.cap.get(),
            disk_free: self.disk.free(),
            min_free_disk: self.disk.floor(),
            disk_low: self.disk.is_low(),
        }
    }
}

/// Messages of every queue, in any state: O(queues).
fn messages(st: &State) -> u64 {
    st.queues.values().map(|q| q.index.slots.len() as u64).sum()
}

/// The broker's cap on queued messages (0: none), set by the server.
#[derive(Debug, Default)]
pub struct BrokerCap(AtomicU64);

impl BrokerCap {
    pub fn set(&self, max_messages: u64) {
        self.0.store(max_messages, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Refuses a call that would add `n` messages to queue `id`, for each
/// `(id, n)` of `adds` (a queue may come several times), `new` of them new
/// to the broker (the others moved within it). Costs a map lookup per item
/// of `adds`; only the queues with a cap are counted.
pub(super) fn check(
    st: &State,
    cap: &BrokerCap,
    adds: impl IntoIterator<Item = (QueueId, u64)>,
    new: u64,
) -> Result<()> {
    let mut capped: HashMap<QueueId, u64> = HashMap::new();
    for (id, n) in adds {
        if st
            .queues
            .get(&id)
            .is_some_and(|q| q.attributes.max_messages != 0)
        {
            *capped.entry(id).or_default() += n;
        }
    }
    for (id, adds) in capped {
        let q = &st.queues[&id];
        let max = q.attributes.max_messages;
        let holds = q.index.slots.len() as u64;
        if holds + adds > u64::from(max) {
            return Err(Error::QueueFull {
                queue: q.name.clone(),
                holds,
                adds,
                max,
            });
        }
    }
    let max = cap.get();
    if max != 0 && new > 0 {
        let holds = messages(st);
        if holds + new > max {
            return Err(Error::BrokerFull {
                holds,
                adds: new,
                max,
            });
        }
    }
    Ok(())
}
