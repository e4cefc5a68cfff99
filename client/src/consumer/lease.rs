//! The lease table: every message received and not settled yet, with its
//! receipt handle and when its visibility timeout lapses.
//!
//! Invariants:
//! - A message is in the table from its receive until it is settled exactly
//!   once: deleted, or released (made visible again now or after a
//!   backoff). Removing its entry is the right to settle it, so a delivery
//!   that finds its entry gone does nothing.
//! - Each entry holds one slot (a permit of `Core::slots`), given back
//!   when it is removed.
//! - A settlement is queued to the acker after its entry was removed, and
//!   the heartbeat queues an extension while it holds the table's lock, so
//!   an extension is never queued after the settlement of its message.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::Message;
use super::acker::Op;
use super::delivery::Delivery;
use super::pipeline::Core;

#[derive(Default)]
pub(super) struct LeaseTable {
    pub(super) next_key: u64,
    pub(super) leases: HashMap<u64, Lease>,
}

/// A message held by the consumer.
pub(super) struct Lease {
    pub(super) receipt_handle: String,
    /// When its visibility timeout lapses, by our clock (conservatively:
    /// measured from before the receive was sent).
    pub(super) expires: Instant,
}

/// How a message is settled.
pub(super) enum Settlement {
    Delete,
    /// Visible again after this many seconds.
    Release(u32),
}

/// Which counter a settlement adds to.
#[derive(Clone, Copy)]
pub(super) enum Outcome {
    Succeeded,
    Failed,
    Released,
    Abandoned,
}

impl Core {
    pub(super) fn table(&self) -> MutexGuard<'_, LeaseTable> {
        self.leases.lock().expect("the lease table lock")
    }

    /// Records a received message in the lease table (it holds a slot the
    /// caller acquired) and wraps it in a delivery.
    pub(super) fn register(self: &Arc<Self>, message: Message, leased_at: Instant) -> Delivery {
        let expires = leased_at + Duration::from_secs(u64::from(self.visibility));
        let key = {
            let mut table = self.table();
            let key = table.next_key;
            table.next_key += 1;
            table.leases.insert(
                key,
                Lease {
                    receipt_handle: message.receipt_handle.clone(),
                    expires,
                },
            );
            key
        };
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        Delivery {
            core: self.clone(),
            key,
            message_id: message.message_id.clone(),
            receive_count: message.receive_count,
            message,
            settled: false,
        }
    }

    /// Settles a message if it is still leased; see the module's invariants.
    pub(super) fn settle(&self, key: u64, settlement: Settlement, outcome: Outcome) {
        let receipt_handle = {
            let mut table = self.table();
            let Some(lease) = table.leases.remove(&key) else {
                return;
            };
            if table.leases.is_empty() {
                self.all_settled.notify_waiters();
            }
            lease.receipt_handle
        };
        let op = match settlement {
            Settlement::Delete => Op::Delete(receipt_handle),
            Settlement::Release(seconds) => Op::Visibility {
                receipt_handle,
                seconds,
                extend: false,
            },
        };
        let _ = self.ops.send(op);
        self.slots.add_permits(1);
        self.count(outcome);
    }

    /// Releases a message that never entered the lease table (received
    /// while shutting down).
    pub(super) fn release_unleased(&self, message: Message) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let _ = self.ops.send(Op::Visibility {
            receipt_handle: message.receipt_handle,
            seconds: 0,
            extend: false,
        });
        self.count(Outcome::Released);
    }

    fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Succeeded => &self.counters.succeeded,
            Outcome::Failed => &self.counters.failed,
            Outcome::Released => &self.counters.released,
            Outcome::Abandoned => &self.counters.abandoned,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Releases every message still leased (the shutdown deadline passed).
    pub(super) fn abandon_all(&self) {
        let keys: Vec<u64> = self.table().leases.keys().copied().collect();
        for key in keys {
            self.settle(key, Settlement::Release(0), Outcome::Abandoned);
        }
    }

    /// Waits until no message is leased, or `deadline`.
    pub(super) async fn settled_by(&self, deadline: Instant) {
        loop {
            let notified = self.all_settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.table().leases.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}
