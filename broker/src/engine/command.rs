//! Commands: every state change of the engine as a value, and [`apply`].
//!
//! A change is made in two steps.
//! 1. **Decide**, in the engine's methods, under the engine lock where the
//!    in-memory index lives: validate the request, read the clock, choose
//!    the seqs a receive claims and the messages a sweep expires, hand out
//!    new seqs and message ids, compute deadlines. The result is a
//!    [`Command`] that carries every decided value.
//! 2. **Apply** ([`apply`]): write the command's one atomic batch and bring
//!    the index in step with it. Apply reads no clock (it places messages
//!    as of the command's `at_ms`), draws no random number and chooses
//!    nothing: replaying the same commands in the same order from the same
//!    state gives the same store and the same index. It may read the store
//!    (the body of a message it moves), which is the same on every replay.
//!
//! The single node applies its own commands at once, under the same lock;
//! a replicated log can go between the two steps. Commands encode with
//! prost ([`Command::encode_to_vec`]); `version` is [`VERSION`].
//!
//! What is not a command: a due timer's promotion to `ready` (the index at
//! a moment `t` is a function of the commands applied and of `t`, and each
//! side promotes when it looks), the rate limiter's tokens, and the
//! operation counters of the metrics.
//!
//! # Commands and their atomic effect
//! Every command may also carry `reserve_seqs`: the new persisted seq
//! reservation (`storage::keys::SEQ_RESERVATION`), written in the same batch
//! as the first use of the seqs it covers.
//!
//! | command | batch | index |
//! |---|---|---|
//! | `PutQueue` | the queue record | creates the queue, or sets its attributes |
//! | `DeleteQueue` | deletes the queue record, range-deletes its bodies and states, deletes its subscriptions | forgets the queue, its timers and subscriptions |
//! | `PurgeQueue` | range-deletes the queue's bodies and states | empties its index |
//! | `Send` | body + state of each new message (a publish's copies too) | adds each: ready if visible at `at_ms`, else under a timer |
//! | `Receive` | the new state of each claimed message; each dead letter moved | claimed messages go under their timer; moves as below |
//! | `ChangeVisibility` | the new state of each message | each is placed as of `at_ms` |
//! | `Delete` | deletes body + state of each message | removes each |
//! | `Redrive` | each message moved | as below |
//! | `Expire` | deletes body + state of each message | removes each |
//! | `CreateTopic` / `DeleteTopic` | the topic record / deletes it and its subscriptions | |
//! | `Subscribe` / `Unsubscribe` | the subscription record / deletes it | |
//!
//! A **move** (dead-lettering, redrive) reads the message's body, deletes
//! its body and state in the source queue and writes them under a new seq
//! in the target, in the same batch: a dead letter keeps its receive count
//! and remembers its source queue; a redriven message starts again from
//! receive 0 and forgets it. A message whose body is already gone is only
//! deleted.

use prost::Message;

use super::dead_letters::{MoveKind, Moved, place_moves, read_moves};
use super::ids::{QueueId, Seq};
use super::records::{BodyRecord, QueueRecord, StateRecord};
use super::state::{Queue, State};
use super::topics;
use crate::engine::error::Result;
use crate::engine::topics::{SubscriptionRecord, TopicRecord};
use crate::storage::{Batch, StorageError, Store, Ticket, keys};

/// The format version of [`Command`].
pub const VERSION: u32 = 1;

/// A decided state change. See the module docs for each one's effect.
#[derive(Clone, PartialEq, Message)]
pub struct Command {
    /// [`VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// When the change was decided (Unix ms): the moment apply places
    /// messages at (ready, or under a timer).
    #[prost(uint64, tag = "2")]
    pub at_ms: u64,
    /// The new seq reservation, when the decision extended it.
    #[prost(uint64, optional, tag = "3")]
    pub reserve_seqs: Option<u64>,
    #[prost(
        oneof = "Op",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22"
    )]
    pub op: Option<Op>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "10")]
    PutQueue(PutQueue),
    #[prost(message, tag = "11")]
    DeleteQueue(DeleteQueue),
    #[prost(message, tag = "12")]
    PurgeQueue(PurgeQueue),
    #[prost(message, tag = "13")]
    Send(Send),
    #[prost(message, tag = "14")]
    Receive(Receive),
    #[prost(message, tag = "15")]
    ChangeVisibility(ChangeVisibility),
    #[prost(message, tag = "16")]
    Delete(Delete),
    #[prost(message, tag = "17")]
    Redrive(Redrive),
    #[prost(message, tag = "18")]
    Expire(Expire),
    #[prost(message, tag = "19")]
    CreateTopic(CreateTopic),
    #[prost(message, tag = "20")]
    DeleteTopic(DeleteTopic),
    #[prost(message, tag = "21")]
    Subscribe(Subscribe),
    #[prost(message, tag = "22")]
    Unsubscribe(Unsubscribe),
}

/// Creates the queue `name` with `record`, or gives it `record`'s
/// attributes if it exists (its id and creation time stay).
#[derive(Clone, PartialEq, Message)]
pub struct PutQueue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, required, tag = "2")]
    pub record: QueueRecord,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteQueue {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PurgeQueue {
    #[prost(uint64, tag = "1")]
    pub queue_id: u64,
}

/// New messages, in one or several queues.
#[derive(Clone, PartialEq, Message)]
pub struct Send {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<Enqueue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Enqueue {
    #[prost(uint64, tag = "1")]
    pub queue_id: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(message, required, tag = "3")]
    pub body: BodyRecord,
    #[prost(uint64, tag = "4")]
    pub visible_at_ms: u64,
}

/// A receive: the claimed messages with their new state, and the messages
/// found received `max_receive_count` times already, moved to the
/// dead-letter queue.
#[derive(Clone, PartialEq, Message)]
pub struct Receive {
    #[prost(uint64, tag = "1")]
    pub queue_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub claims: Vec<NewState>,
    #[prost(message, repeated, tag = "3")]
    pub dead_letters: Vec<Move>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChangeVisibility {
    #[prost(uint64, tag = "1")]
    pub queue_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub changes: Vec<NewState>,
}

/// A message's new state record.
#[derive(Clone, PartialEq, Message)]
pub struct NewState {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint32, tag = "2")]
    pub receive_count: u32,
    #[prost(uint64, tag = "3")]
    pub visible_at_ms: u64,
    #[prost(uint64, tag = "4")]
    pub first_received_at_ms: u64,
    #[prost(uint64, tag = "5")]
    pub sent_at_ms: u64,
}

impl NewState {
    pub fn new(seq: Seq, s: StateRecord) -> NewState {
        NewState {
            seq: seq.0,
            receive_count: s.receive_count,
            visible_at_ms: s.visible_at_ms,
            first_received_at_ms: s.first_received_at_ms,
            sent_at_ms: s.sent_at_ms,
        }
    }

    pub fn state(&self) -> StateRecord {
        StateRecord {
            receive_count: self.receive_count,
            visible_at_ms: self.visible_at_ms,
            first_received_at_ms: self.first_received_at_ms,
            sent_at_ms: self.sent_at_ms,
        }
    }
}

/// A message of the command's source queue that moves to `to_queue_id`
/// under the new seq `to_seq`.
#[derive(Clone, PartialEq, Message)]
pub struct Move {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(uint64, tag = "2")]
    pub to_queue_id: u64,
    #[prost(uint64, tag = "3")]
    pub to_seq: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Delete {
    #[prost(uint64, tag = "1")]
    pub queue_id: u64,
    #[prost(uint64, repeated, tag = "2")]
    pub seqs: Vec<u64>,
}

/// Moves out of the dead-letter queue `source_queue_id`.
#[derive(Clone, PartialEq, Message)]
pub struct Redrive {
    #[prost(uint64, tag = "1")]
    pub source_queue_id: u64,
    #[prost(message, repeated, tag = "2")]
    pub moves: Vec<Move>,
}

/// Messages past their queue's retention.
#[derive(Clone, PartialEq, Message)]
pub struct Expire {
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<MessageRef>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MessageRef {
    #[prost(uint64, tag = "1")]
    pub queue_id: u64,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateTopic {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub created_at_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeleteTopic {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Subscribe {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, required, tag = "2")]
    pub record: SubscriptionRecord,
}

#[derive(Clone, PartialEq, Message)]
pub struct Unsubscribe {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

impl Command {
    /// A command decided at `at_ms`, with the seq reservation the decision
    /// made (taken from `state`, which the decision's seq allocations set).
    pub fn new(at_ms: u64, reserve_seqs: Option<u64>, op: Op) -> Command {
        Command {
            version: VERSION,
            at_ms,
            reserve_seqs,
            op: Some(op),
        }
    }

    /// Whether a leader may pipeline this command (`replication`): its
    /// batch reads neither the store nor the index, so it can be written
    /// after later commands changed memory. A send, a receive's claims
    /// (no dead letters), a visibility change, a delete, an expiry.
    pub fn pipelined(&self) -> bool {
        match &self.op {
            Some(Op::Send(_) | Op::ChangeVisibility(_) | Op::Delete(_) | Op::Expire(_)) => true,
            Some(Op::Receive(c)) => c.dead_letters.is_empty(),
            _ => false,
        }
    }
}

/// Writes `cmd`'s batch and updates the index; returns the ticket to await
/// the write's durability (`None` when there was nothing to write). A
/// replica applies a log entry's commands through [`write_part`] and
/// [`memory_part`] instead, with the entry's log id in the same batch.
///
/// The batch is written before the index changes, so a failed write leaves
/// the index as it was. Waiters are woken for messages made visible.
pub(super) fn apply(st: &mut State, store: &Store, cmd: &Command) -> Result<Option<Ticket>> {
    let mut batch = Batch::default();
    let written = write_part(st, store, cmd, &mut batch)?;
    let ticket = if batch.is_empty() {
        None
    } else {
        Some(store.write(batch)?)
    };
    memory_part(st, cmd, written)?;
    Ok(ticket)
}

/// What [`write_part`] read that [`memory_part`] needs.
#[derive(Default)]
pub(super) struct Written {
    moved: Vec<Moved>,
    doomed_subscriptions: Vec<u64>,
}

/// Adds `cmd`'s writes to `batch`, reading what it needs from the store
/// and the index; changes nothing in memory. For a pipelined command
/// ([`Command::pipelined`]) it reads nothing.
pub(super) fn write_part(
    st: &State,
    store: &Store,
    cmd: &Command,
    batch: &mut Batch,
) -> Result<Written> {
    let now = cmd.at_ms;
    let op = op_of(cmd)?;
    if let Some(r) = cmd.reserve_seqs {
        batch.put(keys::SEQ_RESERVATION, r.to_be_bytes());
    }
    // The subscriptions a deletion takes with it, looked up once for the
    // batch and for memory.
    let doomed_subscriptions = match op {
        Op::DeleteQueue(c) => topics::subscriptions_of_queue(st, &c.name),
        Op::DeleteTopic(c) => topics::subscriptions_of_topic(st, &c.name),
        _ => Vec::new(),
    };
    for &id in &doomed_subscriptions {
        batch.delete(keys::subscription(id));
    }
    let moved = match op {
        Op::PutQueue(c) => {
            batch.put(keys::queue(&c.name), c.record.encode_to_vec());
            Vec::new()
        }
        Op::DeleteQueue(c) => {
            let id = st.names.get(&c.name).copied();
            batch.delete(keys::queue(&c.name));
            if let Some(id) = id {
                delete_all_messages(batch, id.0);
            }
            Vec::new()
        }
        Op::PurgeQueue(c) => {
            delete_all_messages(batch, c.queue_id);
            Vec::new()
        }
        Op::Send(c) => {
            for m in &c.messages {
                let state = new_message_state(m);
                batch.put(keys::body(m.queue_id, m.seq), m.body.encode_to_vec());
                batch.put(keys::state(m.queue_id, m.seq), state.encode());
            }
            Vec::new()
        }
        Op::Receive(c) => {
            for s in &c.claims {
                batch.put(keys::state(c.queue_id, s.seq), s.state().encode());
            }
            read_moves(
                st,
                store,
                batch,
                QueueId(c.queue_id),
                &c.dead_letters,
                MoveKind::DeadLetter,
                now,
            )?
        }
        Op::ChangeVisibility(c) => {
            for s in &c.changes {
                batch.put(keys::state(c.queue_id, s.seq), s.state().encode());
            }
            Vec::new()
        }
        Op::Delete(c) => {
            for &seq in &c.seqs {
                delete_message(batch, c.queue_id, seq);
            }
            Vec::new()
        }
        Op::Redrive(c) => read_moves(
            st,
            store,
            batch,
            QueueId(c.source_queue_id),
            &c.moves,
            MoveKind::Redrive,
            now,
        )?,
        Op::Expire(c) => {
            for m in &c.messages {
                delete_message(batch, m.queue_id, m.seq);
            }
            Vec::new()
        }
        Op::CreateTopic(c) => {
            let record = TopicRecord {
                created_at_ms: c.created_at_ms,
            };
            batch.put(keys::topic(&c.name), record.encode_to_vec());
            Vec::new()
        }
        Op::DeleteTopic(c) => {
            batch.delete(keys::topic(&c.name));
            Vec::new()
        }
        Op::Subscribe(c) => {
            batch.put(keys::subscription(c.id), c.record.encode_to_vec());
            Vec::new()
        }
        Op::Unsubscribe(c) => {
            batch.delete(keys::subscription(c.id));
            Vec::new()
        }
    };
    Ok(Written {
        moved,
        doomed_subscriptions,
    })
}

/// Brings the index in step with `cmd`, once its batch ([`write_part`]) is
/// written; or, for a pipelined command a leader speculates, before.
pub(super) fn memory_part(st: &mut State, cmd: &Command, written: Written) -> Result<()> {
    let now = cmd.at_ms;
    let op = op_of(cmd)?;
    let Written {
        moved,
        doomed_subscriptions,
    } = written;
    if let Some(r) = cmd.reserve_seqs {
        st.reserved_seq = st.reserved_seq.max(r);
    }
    match op {
        Op::PutQueue(c) => {
            let attributes = c.record.attributes();
            match st.names.get(&c.name) {
                Some(&id) => {
                    let State { queues, timers, .. } = &mut *st;
                    let q = queues.get_mut(&id).expect("names and queues agree");
                    q.index.set_retry(timers, id, attributes.retry_policy, now);
                    q.set_attributes(attributes, now);
                }
                None => {
                    st.see_seq(c.record.id);
                    let id = QueueId(c.record.id);
                    let q = Queue::new(id, &c.name, c.record.created_at_ms, attributes, now);
                    st.names.insert(c.name.clone(), id);
                    st.queues.insert(id, q);
                }
            }
        }
        Op::DeleteQueue(c) => {
            for &id in &doomed_subscriptions {
                topics::forget_subscription(st, id);
            }
            if let Some(id) = st.names.remove(&c.name)
                && let Some(mut q) = st.queues.remove(&id)
            {
                q.index.clear(&mut st.timers, id);
                q.notify.notify_waiters();
            }
        }
        Op::PurgeQueue(c) => {
            let State { queues, timers, .. } = st;
            if let Some(q) = queues.get_mut(&QueueId(c.queue_id)) {
                q.index.clear(timers, QueueId(c.queue_id));
            }
        }
        Op::Send(c) => {
            for m in &c.messages {
                st.see_seq(m.seq);
                let State { queues, timers, .. } = &mut *st;
                if let Some(q) = queues.get_mut(&QueueId(m.queue_id)) {
                    let (id, seq) = (QueueId(m.queue_id), Seq(m.seq));
                    q.index.insert(timers, id, seq, new_message_state(m), now);
                    q.counters.sent += 1;
                    if q.index.slots.get(&seq).is_some_and(|s| s.ready) {
                        q.notify.notify_one();
                    }
                }
            }
        }
        Op::Receive(c) => {
            let State { queues, timers, .. } = &mut *st;
            let id = QueueId(c.queue_id);
            if let Some(q) = queues.get_mut(&id) {
                for s in &c.claims {
                    // Under its timer even if already due (visibility 0),
                    // so that the receive placing it cannot take it again.
                    q.index.update(timers, id, Seq(s.seq), s.state(), now, true);
                }
                q.counters.received += c.claims.len() as u64;
            }
            place_moves(st, id, moved, MoveKind::DeadLetter, now);
        }
        Op::ChangeVisibility(c) => {
            let State { queues, timers, .. } = &mut *st;
            let id = QueueId(c.queue_id);
            if let Some(q) = queues.get_mut(&id) {
                for s in &c.changes {
                    let seq = Seq(s.seq);
                    q.index.update(timers, id, seq, s.state(), now, false);
                    if q.index.slots.get(&seq).is_some_and(|s| s.ready) {
                        q.notify.notify_one();
                    }
                }
            }
        }
        Op::Delete(c) => {
            let State { queues, timers, .. } = &mut *st;
            let id = QueueId(c.queue_id);
            if let Some(q) = queues.get_mut(&id) {
                for &seq in &c.seqs {
                    if q.index.remove(timers, id, Seq(seq)).is_some() {
                        q.counters.deleted += 1;
                    }
                }
            }
        }
        Op::Redrive(c) => place_moves(
            st,
            QueueId(c.source_queue_id),
            moved,
            MoveKind::Redrive,
            now,
        ),
        Op::Expire(c) => {
            let State { queues, timers, .. } = &mut *st;
            for m in &c.messages {
                let id = QueueId(m.queue_id);
                if let Some(q) = queues.get_mut(&id)
                    && q.index.remove(timers, id, Seq(m.seq)).is_some()
                {
                    q.counters.expired += 1;
                }
            }
        }
        Op::CreateTopic(c) => topics::insert_topic(st, &c.name, c.created_at_ms),
        Op::DeleteTopic(c) => {
            for id in &doomed_subscriptions {
                st.subscriptions.remove(id);
            }
            st.topics.remove(&c.name);
        }
        Op::Subscribe(c) => {
            st.see_seq(c.id);
            topics::insert_subscription(st, c.id, c.record.clone())?;
        }
        Op::Unsubscribe(c) => topics::forget_subscription(st, c.id),
    }
    Ok(())
}

fn op_of(cmd: &Command) -> Result<&Op> {
    cmd.op.as_ref().ok_or_else(|| {
        StorageError::Corrupt {
            key: "command".into(),
            reason: format!("version {} holds no operation", cmd.version),
        }
        .into()
    })
}

/// The state of a message just sent: never received.
fn new_message_state(m: &Enqueue) -> StateRecord {
    StateRecord {
        receive_count: 0,
        visible_at_ms: m.visible_at_ms,
        first_received_at_ms: 0,
        sent_at_ms: m.body.sent_at_ms,
    }
}

pub(super) fn delete_message(batch: &mut Batch, queue_id: u64, seq: u64) {
    batch.delete(keys::body(queue_id, seq));
    batch.delete(keys::state(queue_id, seq));
}

fn delete_all_messages(batch: &mut Batch, queue_id: u64) {
    for prefix in [keys::BODY_PREFIX, keys::STATE_PREFIX] {
        let (from, to) = keys::queue_range(prefix, queue_id);
        batch.delete_range(from, to);
    }
}
