//! The in-memory index of one queue's messages, derived from the state
//! records at startup and kept in step with every write.
//!
//! Each message is in exactly one place: `ready` (visible now, in seq
//! order) or the engine-wide timer set (hidden until its due time: delayed
//! if never received, in flight otherwise). The due time is `visible_at`,
//! plus the retry backoff for a received message when the queue has a
//! retry policy: a lapsed or released message waits out its backoff (and
//! counts as in flight meanwhile). Bodies stay on disk; a message
//! costs about 160 bytes of memory here: 56 in `slots`, 8 in `ready`, 16
//! in `by_sent`, each B-tree node about half full (seqs arrive in order, and
//! the standard B-tree splits a full node in the middle), plus inner nodes
//! (measured: 1.79 GB of RSS for 9.8 million messages, `benches/README.md`
//! scenario 4d). Every operation is O(log n) in the
//! queue's size or O(1): nothing scans the backlog.

use std::collections::{BTreeMap, BTreeSet};

use super::attributes::RetryPolicy;
use super::ids::{QueueId, Seq, Timer};
use super::records::StateRecord;

/// Timers of every queue, earliest first.
pub type Timers = BTreeSet<Timer>;

#[derive(Debug, Clone, Copy)]
pub struct Slot {
    pub state: StateRecord,
    /// In `ready` (true) or in the timers (false).
    pub ready: bool,
    /// The timer's time while not ready.
    pub due_at: u64,
}

#[derive(Debug, Default)]
pub struct QueueIndex {
    /// Every message by seq. A B-tree, not a hash map: seqs are handed out
    /// in order and receives take the lowest, so neighbours share nodes
    /// (a batch touches a few cache lines, not one per message), and the
    /// map never stops to rehash as the backlog grows.
    pub slots: BTreeMap<Seq, Slot>,
    /// Visible messages by seq: receive takes from the front.
    pub ready: BTreeSet<Seq>,
    /// `(sent_at_ms, seq)`: oldest message age and retention.
    pub by_sent: BTreeSet<(u64, Seq)>,
    pub in_flight: u64,
    pub delayed: u64,
    /// Redelivery backoff of received messages, if the queue has one.
    pub retry: Option<RetryPolicy>,
}

impl QueueIndex {
    /// Adds a message: ready if `visible_at <= now`, else under a timer.
    pub fn insert(
        &mut self,
        timers: &mut Timers,
        queue_id: QueueId,
        seq: Seq,
        state: StateRecord,
        now: u64,
    ) {
        self.by_sent.insert((state.sent_at_ms, seq));
        let slot = self.place(timers, queue_id, seq, state, now);
        self.slots.insert(seq, slot);
    }

    /// Removes a message wherever it is.
    pub fn remove(&mut self, timers: &mut Timers, queue_id: QueueId, seq: Seq) -> Option<Slot> {
        let slot = self.slots.remove(&seq)?;
        self.unplace(timers, queue_id, seq, &slot);
        self.by_sent.remove(&(slot.state.sent_at_ms, seq));
        Some(slot)
    }

    /// Gives a message a new state (a receive, a visibility change). With
    /// `force_timer`, the message goes under a timer even if already due, so
    /// that the receive placing it cannot take it again in the same call.
    pub fn update(
        &mut self,
        timers: &mut Timers,
        queue_id: QueueId,
        seq: Seq,
        state: StateRecord,
        now: u64,
        force_timer: bool,
    ) {
        let Some(old) = self.slots.get(&seq).copied() else {
            return;
        };
        self.unplace(timers, queue_id, seq, &old);
        let slot = if force_timer {
            self.place_timer(timers, queue_id, seq, state)
        } else {
            self.place(timers, queue_id, seq, state, now)
        };
        self.slots.insert(seq, slot);
    }

    /// Moves a message whose timer fired into `ready`.
    pub fn promote(&mut self, seq: Seq) -> bool {
        let Some(slot) = self.slots.get_mut(&seq) else {
            return false;
        };
        if slot.ready {
            return false;
        }
        slot.ready = true;
        if slot.state.receive_count > 0 {
            self.in_flight -= 1;
        } else {
            self.delayed -= 1;
        }
        self.ready.insert(seq);
        true
    }

    /// Gives the queue a new retry policy and places every received
    /// message again as of `now` under it, as a restart would: the index
    /// stays a function of the state records and the queue's attributes.
    /// O(messages): an attribute change, not a message operation.
    pub fn set_retry(
        &mut self,
        timers: &mut Timers,
        queue_id: QueueId,
        retry: Option<RetryPolicy>,
        now: u64,
    ) {
        if self.retry == retry {
            return;
        }
        self.retry = retry;
        let received: Vec<(Seq, Slot)> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.state.receive_count > 0)
            .map(|(&seq, &slot)| (seq, slot))
            .collect();
        for (seq, old) in received {
            self.unplace(timers, queue_id, seq, &old);
            let slot = self.place(timers, queue_id, seq, old.state, now);
            self.slots.insert(seq, slot);
        }
    }

    /// Removes every message (a purge, the queue's deletion), with their
    /// timers; keeps the retry policy.
    pub fn clear(&mut self, timers: &mut Timers, queue_id: QueueId) {
        let index = std::mem::take(self);
        self.retry = index.retry;
        for (seq, slot) in index.slots {
            if !slot.ready {
                timers.remove(&Timer {
                    at: slot.due_at,
                    queue: queue_id,
                    seq,
                });
            }
        }
    }

    pub fn oldest_sent_at(&self) -> Option<u64> {
        self.by_sent.first().map(|&(sent, _)| sent)
    }

    /// When a message in `state` becomes visible.
    pub fn due_at(&self, state: &StateRecord) -> u64 {
        match &self.retry {
            Some(retry) if state.receive_count > 0 => {
                state.visible_at_ms + retry.backoff_ms(state.receive_count)
            }
            _ => state.visible_at_ms,
        }
    }

    fn place(
        &mut self,
        timers: &mut Timers,
        queue_id: QueueId,
        seq: Seq,
        state: StateRecord,
        now: u64,
    ) -> Slot {
        let due_at = self.due_at(&state);
        if due_at <= now {
            self.ready.insert(seq);
            Slot {
                state,
                ready: true,
                due_at,
            }
        } else {
            self.place_timer(timers, queue_id, seq, state)
        }
    }

    fn place_timer(
        &mut self,
        timers: &mut Timers,
        queue_id: QueueId,
        seq: Seq,
        state: StateRecord,
    ) -> Slot {
        let due_at = self.due_at(&state);
        timers.insert(Timer {
            at: due_at,
            queue: queue_id,
            seq,
        });
        if state.receive_count > 0 {
            self.in_flight += 1;
        } else {
            self.delayed += 1;
        }
        Slot {
            state,
            ready: false,
            due_at,
        }
    }

    fn unplace(&mut self, timers: &mut Timers, queue_id: QueueId, seq: Seq, slot: &Slot) {
        if slot.ready {
            self.ready.remove(&seq);
        } else {
            timers.remove(&Timer {
                at: slot.due_at,
                queue: queue_id,
                seq,
            });
            if slot.state.receive_count > 0 {
                self.in_flight -= 1;
            } else {
                self.delayed -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: QueueId = QueueId(1);

    fn timer(at: u64, seq: u64) -> Timer {
        Timer {
            at,
            queue: Q,
            seq: Seq(seq),
        }
    }

    fn state(receive_count: u32, visible_at_ms: u64) -> StateRecord {
        StateRecord {
            receive_count,
            visible_at_ms,
            first_received_at_ms: 0,
            sent_at_ms: 1,
        }
    }

    #[test]
    fn counts_follow_every_transition() {
        let mut timers = Timers::new();
        let mut q = QueueIndex::default();
        q.insert(&mut timers, Q, Seq(10), state(0, 0), 100); // visible
        q.insert(&mut timers, Q, Seq(11), state(0, 500), 100); // delayed
        assert_eq!((q.ready.len(), q.in_flight, q.delayed), (1, 0, 1));

        q.update(&mut timers, Q, Seq(10), state(1, 100), 100, true); // received, visibility 0
        assert_eq!((q.ready.len(), q.in_flight, q.delayed), (0, 1, 1));
        assert_eq!(timers.len(), 2);

        timers.remove(&timer(100, 10)); // the engine pops a timer before promoting
        assert!(q.promote(Seq(10)));
        assert!(!q.promote(Seq(10)));
        assert_eq!((q.ready.len(), q.in_flight, q.delayed), (1, 0, 1));

        q.remove(&mut timers, Q, Seq(11));
        q.remove(&mut timers, Q, Seq(10));
        assert_eq!((q.ready.len(), q.in_flight, q.delayed), (0, 0, 0));
        assert!(timers.is_empty() && q.slots.is_empty() && q.by_sent.is_empty());
    }

    #[test]
    fn retry_policy_delays_a_lapsed_message_by_its_backoff() {
        let mut timers = Timers::new();
        let mut q = QueueIndex {
            retry: Some(RetryPolicy {
                min_backoff_seconds: 1,
                max_backoff_seconds: 5,
            }),
            ..Default::default()
        };
        q.insert(&mut timers, Q, Seq(10), state(0, 0), 100);
        assert_eq!(q.ready.len(), 1, "a new message has no backoff");
        // Third receive, released at 100: due at 100 + min(1 * 2^2, 5) s.
        q.update(&mut timers, Q, Seq(10), state(3, 100), 100, false);
        assert_eq!(timers.first(), Some(&timer(4_100, 10)));
        q.update(&mut timers, Q, Seq(10), state(9, 100), 100, false);
        assert_eq!(timers.first(), Some(&timer(5_100, 10)), "capped at max");
        assert_eq!(timers.len(), 1);
    }
}
