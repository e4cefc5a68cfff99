//! Everything the engine lock guards ([`State`]): the queues with their
//! indexes, the timers, topics and subscriptions, and the seq counter with
//! its persisted reservation. Deciding reads it; only `command::apply`
//! changes what a command changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::Notify;

use super::command::{Command, Op};
use super::counters::QueueCounters;
use super::error::{Error, Result};
use super::ids::{QueueId, Timer};
use super::index::{QueueIndex, Timers};
use super::{QueueAttributes, SEQ_BLOCK, rate, topics, validate};

/// A queue's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub name: String,
    pub attributes: QueueAttributes,
    pub created_at_ms: u64,
}

/// Exact message counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub oldest_message_age_seconds: u64,
}

pub(super) struct Queue {
    pub(super) id: QueueId,
    pub(super) name: String,
    pub(super) created_at_ms: u64,
    pub(super) attributes: QueueAttributes,
    pub(super) index: QueueIndex,
    /// Woken once per message made visible.
    pub(super) notify: Arc<Notify>,
    /// The `max_receive_rate` bucket, if the queue has a rate.
    pub(super) limiter: Option<rate::TokenBucket>,
    /// Operations since the process started, for the metrics.
    pub(super) counters: QueueCounters,
}

impl Queue {
    pub(super) fn new(
        id: QueueId,
        name: &str,
        created_at_ms: u64,
        attributes: QueueAttributes,
        now: u64,
    ) -> Queue {
        let mut q = Queue {
            id,
            name: name.to_string(),
            created_at_ms,
            attributes: QueueAttributes::default(),
            index: QueueIndex {
                retry: attributes.retry_policy,
                ..QueueIndex::default()
            },
            notify: Arc::new(Notify::new()),
            limiter: None,
            counters: QueueCounters::default(),
        };
        q.set_attributes(attributes, now);
        q
    }

    /// Applies attributes, and the rate limiter that derives from them
    /// (kept as it is if its rate is unchanged). The index's retry policy is
    /// the caller's to set (`QueueIndex::set_retry` re-places timers, which
    /// are the engine's).
    pub(super) fn set_attributes(&mut self, attributes: QueueAttributes, now: u64) {
        let (rate, burst) = (attributes.max_receive_rate, attributes.max_receive_burst);
        let unchanged =
            self.attributes.max_receive_rate == rate && self.attributes.max_receive_burst == burst;
        if rate == 0 {
            self.limiter = None;
        } else if self.limiter.is_none() || !unchanged {
            self.limiter = Some(rate::TokenBucket::new(rate, burst, now));
        }
        self.attributes = attributes;
    }

    /// Exact counts at `now` (due timers must have been promoted).
    pub(super) fn stats(&self, now: u64) -> QueueStats {
        QueueStats {
            visible: self.index.ready.len() as u64,
            in_flight: self.index.in_flight,
            delayed: self.index.delayed,
            oldest_message_age_seconds: self
                .index
                .oldest_sent_at()
                .map_or(0, |sent| now.saturating_sub(sent) / 1000),
        }
    }

    pub(super) fn info(&self) -> QueueInfo {
        QueueInfo {
            name: self.name.clone(),
            attributes: self.attributes.clone(),
            created_at_ms: self.created_at_ms,
        }
    }
}

/// Everything the engine lock guards.
#[derive(Default)]
pub(super) struct State {
    pub(super) queues: HashMap<QueueId, Queue>,
    /// Name to id, in name order (ListQueues pages through it).
    pub(super) names: BTreeMap<String, QueueId>,
    pub(super) timers: Timers,
    /// Topics by name, with the ids of their subscriptions.
    pub(super) topics: BTreeMap<String, topics::Topic>,
    /// Subscriptions by id (ids come from the seq counter).
    pub(super) subscriptions: BTreeMap<u64, topics::Subscription>,
    /// The next seq to hand out. Decision state, not a command's effect:
    /// a replica that starts deciding starts from `reserved_seq`.
    pub(super) next_seq: u64,
    /// Seqs below this may have been handed out (persisted before use).
    pub(super) reserved_seq: u64,
    /// A reservation decided by `alloc_seqs` and not yet carried by a
    /// command: the next command persists it.
    pub(super) pending_reservation: Option<u64>,
    /// Cluster mode: the index of the last log entry applied.
    pub(super) applied_index: u64,
    /// Cluster mode: the last command applied, the end of the chain (see
    /// `replication`).
    pub(super) last_command: super::replication::CommandId,
}

impl State {
    /// The id of the queue `name`, given in the request field `field`:
    /// [`Error::InvalidName`] for a name no queue could have,
    /// [`Error::QueueNotFound`] for one that does not exist.
    pub(super) fn queue_id(&self, field: &'static str, name: &str) -> Result<QueueId> {
        if let Some(&id) = self.names.get(name) {
            return Ok(id);
        }
        validate::name_as(field, "queue name", name)?;
        Err(Error::QueueNotFound {
            queue: name.to_string(),
        })
    }

    pub(super) fn queue(&mut self, field: &'static str, name: &str) -> Result<&mut Queue> {
        let id = self.queue_id(field, name)?;
        Ok(self.queues.get_mut(&id).expect("names and queues agree"))
    }

    /// Hands out `n` fresh seqs, extending the reservation when needed: the
    /// next command carries it, so it is durable with their first use.
    pub(super) fn alloc_seqs(&mut self, n: u64) -> u64 {
        let first = self.next_seq;
        self.next_seq += n;
        let reserved = self.pending_reservation.unwrap_or(self.reserved_seq);
        if self.next_seq > reserved {
            self.pending_reservation = Some(self.next_seq + SEQ_BLOCK);
        }
        first
    }

    /// A command decided at `now`, carrying the pending seq reservation.
    pub(super) fn command(&mut self, now: u64, op: Op) -> Command {
        Command::new(now, self.pending_reservation.take(), op)
    }

    /// Notes a seq used by an applied command: a replica that applies
    /// commands it did not decide never hands it out again.
    pub(super) fn see_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Moves every message whose timer is due into its queue's ready set.
    pub(super) fn promote_due(&mut self, now: u64) {
        while let Some(&Timer { at, queue, seq }) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(q) = self.queues.get_mut(&queue)
                && q.index.promote(seq)
            {
                q.notify.notify_one();
            }
        }
    }
}
