//! The queue engine: send, receive with visibility timeouts and long
//! polling, delete and visibility changes by receipt handle, dead letters,
//! redrive, purge and retention; and peek, a read-only look at messages
//! (module `peek`).
//!
//! # Data model
//! RocksDB is the truth (layouts in `storage::keys`, values in [`records`]);
//! memory holds an index derived from it at startup ([`index`]): per queue,
//! the seqs of visible messages, and for the whole engine a timer set of
//! hidden messages ordered by the moment they become visible. Bodies are
//! read from RocksDB only when a message is received.
//!
//! # Decide, then apply
//! Every state change is decided by the methods here, under the engine
//! lock (validation, the clock, the seqs a receive claims, new seqs and
//! message ids, deadlines), as a [`Command`] that carries every decided
//! value; [`command::apply`] then writes it and updates the index, with
//! no choice of its own. The command list and each command's atomic write
//! are in [`command`]'s docs. A single node applies its own commands at
//! once under the same lock; [`Engine::replay`] applies one decided
//! elsewhere.
//!
//! # Invariants
//! - Every state change of a message is one atomic write batch (one
//!   command): send (body + state), receive (state), visibility change
//!   (state), delete (body + state), dead-letter move and redrive (delete
//!   in one queue + body and state in the other), purge and queue deletion
//!   (range deletes).
//! - Commands are applied under the engine lock, in the order the lock
//!   decided them, so the WAL order is the order of the in-memory changes.
//!   Durability is awaited after the lock is released (group commit, see
//!   `storage`): send, delete, purge and queue changes are acknowledged only
//!   once durable; receives and visibility changes are acknowledged at once,
//!   since losing one only means an earlier redelivery.
//! - A crash at any moment leaves each message either before or after its
//!   last write; on restart the index is rebuilt from the state records, so
//!   in-flight messages stay hidden until their persisted deadline. The
//!   index kept in memory is the one a restart would rebuild (a property
//!   test checks it).
//! - Receive claims messages in one synchronous step after the wait: a
//!   client that disconnects while waiting (its future dropped) has claimed
//!   nothing.
//!
//! # Waking
//! Each queue has a [`Notify`]: a send, a timer that fires, and a release
//! (visibility 0) call `notify_one` once per message made visible, so a long
//! poll wakes only when there is something to take, and idle long polls
//! cost nothing. One scheduler task ([`Engine::run_scheduler`]) sleeps until
//! the earliest timer, moves due messages to ready, and sweeps expired
//! messages (retention) once a second.

pub mod attributes;
pub mod command;
pub mod counters;
pub mod index;
mod peek;
mod rate;
pub mod receipt;
pub mod records;
mod topics;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::storage::{Store, SyncMode, Ticket, keys};
pub use attributes::{AttributeChanges, QueueAttributes, RedrivePolicy, RetryPolicy};
use command::{Command, Op};
use counters::{Activity, QueueCounters};
use index::{QueueIndex, Timers};
pub use peek::{MessageState, PEEK_DEFAULT, PEEK_MAX, Peeked};
use receipt::ReceiptHandle;
use records::{BodyRecord, QueueRecord, StateRecord};
pub use topics::{NewPublication, Published};

/// Sequence numbers reserved per write of the reservation key.
const SEQ_BLOCK: u64 = 1 << 20;
/// Messages moved per write by redrive and retention, so that one call
/// never holds the lock for long.
const CHUNK: usize = 1_000;

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct NewMessage {
    pub body: Bytes,
    pub attributes: HashMap<String, String>,
    /// Absent: the queue's delay.
    pub delay_seconds: Option<u32>,
}

/// A message handed to a receiver.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: Bytes,
    pub attributes: HashMap<String, String>,
    pub receive_count: u32,
    pub sent_at_ms: u64,
    pub first_received_at_ms: u64,
}

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

/// Options of a receive; `None` takes the queue's value.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceiveOptions {
    pub max_messages: u32,
    pub visibility_timeout_seconds: Option<u32>,
    pub wait_time_seconds: Option<u32>,
    /// The longest the caller can wait, whatever the wait time says: a
    /// long poll whose client gives up at a deadline must stop waiting
    /// before it, or it could claim a message for a caller that is gone
    /// (`service::deadline` derives it from `grpc-timeout`).
    pub wait_limit: Option<Duration>,
}

struct Queue {
    id: u64,
    name: String,
    created_at_ms: u64,
    attributes: QueueAttributes,
    index: QueueIndex,
    /// Woken once per message made visible.
    notify: Arc<Notify>,
    /// The `max_receive_rate` bucket, if the queue has a rate.
    limiter: Option<rate::TokenBucket>,
    /// Operations since the process started, for the metrics.
    counters: QueueCounters,
}

impl Queue {
    fn new(
        id: u64,
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
    fn set_attributes(&mut self, attributes: QueueAttributes, now: u64) {
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
    fn stats(&self, now: u64) -> QueueStats {
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

    fn info(&self) -> QueueInfo {
        QueueInfo {
            name: self.name.clone(),
            attributes: self.attributes.clone(),
            created_at_ms: self.created_at_ms,
        }
    }
}

/// Everything the engine lock guards.
#[derive(Default)]
struct State {
    queues: HashMap<u64, Queue>,
    /// Name to id, in name order (ListQueues pages through it).
    names: BTreeMap<String, u64>,
    timers: Timers,
    /// Topics by name, with the ids of their subscriptions.
    topics: BTreeMap<String, topics::Topic>,
    /// Subscriptions by id (ids come from the seq counter).
    subscriptions: BTreeMap<u64, topics::Subscription>,
    /// The next seq to hand out. Decision state, not a command's effect:
    /// a replica that starts deciding starts from `reserved_seq`.
    next_seq: u64,
    /// Seqs below this may have been handed out (persisted before use).
    reserved_seq: u64,
    /// A reservation decided by `alloc_seqs` and not yet carried by a
    /// command: the next command persists it.
    pending_reservation: Option<u64>,
}

impl State {
    /// The id of the queue `name`, given in the request field `field`:
    /// [`Error::InvalidName`] for a name no queue could have,
    /// [`Error::QueueNotFound`] for one that does not exist.
    fn queue_id(&self, field: &'static str, name: &str) -> Result<u64> {
        if let Some(&id) = self.names.get(name) {
            return Ok(id);
        }
        validate::name_as(field, "queue name", name)?;
        Err(Error::QueueNotFound {
            queue: name.to_string(),
        })
    }

    fn queue(&mut self, field: &'static str, name: &str) -> Result<&mut Queue> {
        let id = self.queue_id(field, name)?;
        Ok(self.queues.get_mut(&id).expect("names and queues agree"))
    }

    /// Hands out `n` fresh seqs, extending the reservation when needed: the
    /// next command carries it, so it is durable with their first use.
    fn alloc_seqs(&mut self, n: u64) -> u64 {
        let first = self.next_seq;
        self.next_seq += n;
        let reserved = self.pending_reservation.unwrap_or(self.reserved_seq);
        if self.next_seq > reserved {
            self.pending_reservation = Some(self.next_seq + SEQ_BLOCK);
        }
        first
    }

    /// A command decided at `now`, carrying the pending seq reservation.
    fn command(&mut self, now: u64, op: Op) -> Command {
        Command::new(now, self.pending_reservation.take(), op)
    }

    /// Notes a seq used by an applied command: a replica that applies
    /// commands it did not decide never hands it out again.
    fn see_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Moves every message whose timer is due into its queue's ready set.
    fn promote_due(&mut self, now: u64) {
        while let Some(&(at, queue_id, seq)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            if let Some(q) = self.queues.get_mut(&queue_id)
                && q.index.promote(seq)
            {
                q.notify.notify_one();
            }
        }
    }
}

/// What one claim under the lock found.
struct Claim {
    /// The messages taken: `(queue id, seq, new state)`.
    taken: Vec<(u64, u64, StateRecord)>,
    /// The queue's notify, to wait on when nothing was taken.
    notify: Arc<Notify>,
    /// The wait time of the receive (request, else the queue's).
    wait: u32,
    /// Set when messages are visible but the rate limit holds them back:
    /// when the next token comes.
    tokens_at: Option<u64>,
}

/// A new message of a send or a publish: its seq, body and when it is
/// visible, for a `Send` command.
fn enqueue(
    st: &mut State,
    queue_id: u64,
    body: BodyRecord,
    delay: u32,
    now: u64,
) -> command::Enqueue {
    command::Enqueue {
        queue_id,
        seq: st.alloc_seqs(1),
        body,
        visible_at_ms: now + u64::from(delay) * 1000,
    }
}

/// Entries of a name-ordered map whose name starts with `prefix`, after
/// `page_token` (the last name of the previous page).
fn by_name<'a, V>(
    map: &'a BTreeMap<String, V>,
    prefix: &'a str,
    page_token: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let start = if page_token.is_empty() {
        prefix
    } else {
        page_token
    };
    map.range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
        .filter(move |(n, _)| n.as_str() != page_token)
        .take_while(move |(n, _)| n.starts_with(prefix))
}

/// One page of `items` (already positioned after the page token), keyed
/// by what the next page token would be: the page, and the token of the
/// next page (empty on the last one).
fn paginate<T>(
    mut items: impl Iterator<Item = (String, T)>,
    page_size: u32,
) -> Result<(Vec<T>, String)> {
    let page_size = match page_size {
        0 => 100,
        n if n > 1000 => return Err(Error::out_of_range("page_size", 0, 1000, n)),
        n => n as usize,
    };
    let mut page = Vec::new();
    let mut last = String::new();
    for (key, item) in items.by_ref().take(page_size) {
        last = key;
        page.push(item);
    }
    let next = if items.next().is_some() {
        last
    } else {
        String::new()
    };
    Ok((page, next))
}

/// The queue engine. Cheap to share behind an `Arc`.
pub struct Engine {
    state: Mutex<State>,
    store: Store,
    clock: Clock,
    /// Wakes the scheduler when a timer earlier than its sleep is set.
    scheduler: Notify,
    shutdown: CancellationToken,
    /// Open long polls and streams, for the metrics.
    activity: Activity,
    /// Every command applied, in order (unit tests replay them).
    #[cfg(test)]
    journal: Mutex<Vec<Command>>,
}

impl Engine {
    /// Opens the store in `dir` and rebuilds the index from it.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Engine> {
        let store = Store::open(dir, sync)?;
        let clock = Clock::new();
        let now = clock.now_ms();
        let mut state = State::default();
        if let Some(v) = store.get(keys::SEQ_RESERVATION)? {
            let bytes: [u8; 8] =
                v.as_slice()
                    .try_into()
                    .map_err(|_| crate::storage::StorageError::Corrupt {
                        key: format!("{:02x?}", keys::SEQ_RESERVATION),
                        reason: format!("seq reservation of {} bytes, not 8", v.len()),
                    })?;
            state.reserved_seq = u64::from_be_bytes(bytes);
        }
        let mut max_id = 0;
        for item in store.scan_prefix(&[keys::QUEUE_PREFIX]) {
            let (key, value) = item?;
            let Some(name) = keys::decode_queue(&key) else {
                continue;
            };
            let rec: QueueRecord = records::decode(&key, &value)?;
            max_id = max_id.max(rec.id);
            state.names.insert(name.to_string(), rec.id);
            state.queues.insert(
                rec.id,
                Queue::new(rec.id, name, rec.created_at_ms, rec.attributes(), now),
            );
        }
        let max_id = max_id.max(topics::recover(&store, &mut state)?);
        let mut max_seq = max_id;
        let mut orphans = 0u64;
        for item in store.scan_prefix(&[keys::STATE_PREFIX]) {
            let (key, value) = item?;
            let Some((queue_id, seq)) = keys::decode_message(&key) else {
                continue;
            };
            let st = StateRecord::decode(&value).ok_or_else(|| {
                crate::storage::StorageError::Corrupt {
                    key: format!("{key:02x?}"),
                    reason: format!("state record of {} bytes", value.len()),
                }
            })?;
            max_seq = max_seq.max(seq);
            match state.queues.get_mut(&queue_id) {
                Some(q) => q.index.insert(&mut state.timers, queue_id, seq, st, now),
                None => orphans += 1,
            }
        }
        if orphans > 0 {
            tracing::warn!(orphans, "state records of unknown queues ignored");
        }
        state.next_seq = state.reserved_seq.max(max_seq + 1);
        let messages: usize = state.queues.values().map(|q| q.index.slots.len()).sum();
        tracing::info!(queues = state.queues.len(), messages, "engine opened");
        Ok(Engine {
            state: Mutex::new(state),
            store,
            clock,
            scheduler: Notify::new(),
            shutdown: CancellationToken::new(),
            activity: Activity::default(),
            #[cfg(test)]
            journal: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Ends long polls (they return what they have) and the scheduler.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves when shutdown begins.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }

    /// For each receipt handle: whether its lease still holds (the message
    /// exists, nobody received it since, and its visibility timeout has
    /// not lapsed). A malformed handle holds nothing.
    pub fn leases_held(&self, queue: &str, handles: &[String]) -> Vec<bool> {
        let now = self.now_ms();
        let mut st = self.lock();
        handles
            .iter()
            .map(|h| {
                matches!(Self::check_handle(&mut st, queue, h),
                    Ok((_, _, Some(state))) if state.visible_at_ms > now)
            })
            .collect()
    }

    /// Applies a command this engine decided, under its lock (see
    /// [`command`]). Returns the ticket to await the write's durability.
    fn apply(&self, st: &mut State, cmd: Command) -> Result<Option<Ticket>> {
        let ticket = self.apply_command(st, &cmd)?;
        #[cfg(test)]
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd);
        Ok(ticket)
    }

    /// [`command::apply`], then wakes the scheduler when a timer moved earlier.
    fn apply_command(&self, st: &mut State, cmd: &Command) -> Result<Option<Ticket>> {
        let earliest = st.timers.first().map(|t| t.0);
        let ticket = command::apply(st, &self.store, cmd)?;
        self.timer_set(st, earliest);
        Ok(ticket)
    }

    /// Applies a command decided by another engine (a replay), and waits
    /// until it is durable.
    pub async fn replay(&self, cmd: &Command) -> Result<()> {
        let ticket = self.apply_command(&mut self.lock(), cmd)?;
        self.durable(ticket).await
    }

    async fn durable(&self, ticket: Option<Ticket>) -> Result<()> {
        if let Some(t) = ticket {
            self.store.sync(t).await?;
        }
        Ok(())
    }

    /// Wakes the scheduler when the earliest timer moved earlier.
    fn timer_set(&self, state: &State, earliest_before: Option<u64>) {
        let earliest_now = state.timers.first().map(|t| t.0);
        if earliest_now.is_some() && (earliest_before.is_none() || earliest_now < earliest_before) {
            self.scheduler.notify_one();
        }
    }

    // ---- queues ----

    /// Creates a queue; idempotent for equal attributes.
    pub async fn create_queue(&self, name: &str, changes: &AttributeChanges) -> Result<QueueInfo> {
        validate::queue_name("name", name)?;
        let attributes = changes.apply_to(&QueueAttributes::default())?;
        let (info, ticket) = {
            let mut st = self.lock();
            if let Ok(q) = st.queue("name", name) {
                if let Some((attribute, have, want)) = q.attributes.first_difference(&attributes) {
                    return Err(Error::QueueExists {
                        queue: name.to_string(),
                        attribute,
                        have,
                        want,
                    });
                }
                return Ok(q.info());
            }
            self.check_redrive(&st, name, &attributes)?;
            let id = st.alloc_seqs(1);
            let now = self.now_ms();
            let put = command::PutQueue {
                name: name.to_string(),
                record: QueueRecord::new(id, now, &attributes),
            };
            let cmd = st.command(now, Op::PutQueue(put));
            let ticket = self.apply(&mut st, cmd)?;
            (st.queue("name", name)?.info(), ticket)
        };
        self.durable(ticket).await?;
        Ok(info)
    }

    fn check_redrive(&self, st: &State, name: &str, a: &QueueAttributes) -> Result<()> {
        if let Some(p) = &a.redrive_policy {
            if p.dead_letter_queue == name {
                return Err(Error::invalid(
                    "attributes.redrive_policy.dead_letter_queue",
                    "must name another queue; a queue cannot be its own dead-letter queue",
                ));
            }
            if !st.names.contains_key(&p.dead_letter_queue) {
                return Err(Error::DeadLetterQueueNotFound {
                    queue: p.dead_letter_queue.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn get_queue(&self, name: &str) -> Result<(QueueInfo, QueueStats)> {
        let now = self.now_ms();
        let mut st = self.lock();
        st.promote_due(now);
        let q = st.queue("name", name)?;
        Ok((q.info(), q.stats(now)))
    }

    /// Up to `page_size` queues whose name starts with `prefix`, after
    /// `page_token` (the last name of the previous page); and the next token.
    pub fn list_queues(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<QueueInfo>, String)> {
        let st = self.lock();
        let items = by_name(&st.names, prefix, page_token)
            .map(|(name, id)| (name.clone(), st.queues[id].info()));
        paginate(items, page_size)
    }

    pub async fn update_queue(&self, name: &str, changes: &AttributeChanges) -> Result<QueueInfo> {
        let (info, ticket) = {
            let mut st = self.lock();
            let q = st.queue("name", name)?;
            let attributes = changes.apply_to(&q.attributes)?;
            let (id, created_at_ms) = (q.id, q.created_at_ms);
            self.check_redrive(&st, name, &attributes)?;
            let put = command::PutQueue {
                name: name.to_string(),
                record: QueueRecord::new(id, created_at_ms, &attributes),
            };
            let cmd = st.command(self.now_ms(), Op::PutQueue(put));
            let ticket = self.apply(&mut st, cmd)?;
            (st.queue("name", name)?.info(), ticket)
        };
        self.durable(ticket).await?;
        Ok(info)
    }

    pub async fn delete_queue(&self, name: &str) -> Result<()> {
        let ticket = {
            let mut st = self.lock();
            st.queue_id("name", name)?;
            let mut sources: Vec<String> = st
                .queues
                .values()
                .filter(|q| {
                    q.attributes
                        .redrive_policy
                        .as_ref()
                        .is_some_and(|p| p.dead_letter_queue == name)
                })
                .map(|q| q.name.clone())
                .collect();
            if !sources.is_empty() {
                sources.sort();
                return Err(Error::QueueIsDeadLetterTarget {
                    queue: name.to_string(),
                    used_by: sources,
                });
            }
            let cmd = st.command(
                self.now_ms(),
                Op::DeleteQueue(command::DeleteQueue {
                    name: name.to_string(),
                }),
            );
            self.apply(&mut st, cmd)?
        };
        self.durable(ticket).await
    }

    /// Deletes every message of the queue, in flight ones too.
    pub async fn purge_queue(&self, name: &str) -> Result<()> {
        let ticket = {
            let mut st = self.lock();
            let queue_id = st.queue_id("name", name)?;
            let cmd = st.command(
                self.now_ms(),
                Op::PurgeQueue(command::PurgeQueue { queue_id }),
            );
            self.apply(&mut st, cmd)?
        };
        self.durable(ticket).await
    }

    // ---- messages ----

    /// Sends messages to a queue in one atomic, durable write. Each entry
    /// is checked alone: the result holds a message id or that entry's error.
    pub async fn send(
        &self,
        queue: &str,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<Result<String>>> {
        let now = self.now_ms();
        let (results, ticket) = {
            let mut st = self.lock();
            let id = st.queue_id("queue", queue)?;
            let attrs = st.queues[&id].attributes.clone();
            let checked: Vec<Result<(NewMessage, u32)>> = messages
                .into_iter()
                .map(|m| {
                    validate::message(&m.body, &m.attributes, attrs.max_message_bytes)?;
                    let delay = m.delay_seconds.unwrap_or(attrs.delay_seconds);
                    attributes::check_range("delay_seconds", delay, 0, attributes::DELAY_MAX)?;
                    Ok((m, delay))
                })
                .collect();
            let mut placed = Vec::new();
            let results: Vec<Result<String>> = checked
                .into_iter()
                .map(|c| {
                    let (m, delay) = c?;
                    let message_id = uuid::Uuid::new_v4().to_string();
                    let body = BodyRecord {
                        message_id: message_id.clone(),
                        body: m.body,
                        attributes: m.attributes,
                        sent_at_ms: now,
                        dead_letter_source: String::new(),
                    };
                    placed.push(enqueue(&mut st, id, body, delay, now));
                    Ok(message_id)
                })
                .collect();
            let ticket = self.send_placed(&mut st, placed, now)?;
            (results, ticket)
        };
        self.durable(ticket).await?;
        Ok(results)
    }

    /// Applies the `Send` of new messages (none: nothing to write; no seq
    /// was handed out, so no reservation waits to be persisted).
    fn send_placed(
        &self,
        st: &mut State,
        messages: Vec<command::Enqueue>,
        now: u64,
    ) -> Result<Option<Ticket>> {
        if messages.is_empty() {
            return Ok(None);
        }
        let cmd = st.command(now, Op::Send(command::Send { messages }));
        self.apply(st, cmd)
    }

    /// Receives up to `max_messages`, waiting up to the wait time for the
    /// first one. Messages received `max_receive_count` times already are
    /// moved to the dead-letter queue instead of being returned. With a
    /// `max_receive_rate`, returns at most what the queue's bucket holds,
    /// and a long poll waits for tokens within its wait time.
    pub async fn receive(&self, queue: &str, opts: ReceiveOptions) -> Result<Vec<Received>> {
        let max = match opts.max_messages {
            0 => 1,
            n if n > validate::RECEIVE_MAX => {
                return Err(Error::out_of_range(
                    "max_messages",
                    1,
                    validate::RECEIVE_MAX,
                    n,
                ));
            }
            n => n,
        };
        if let Some(v) = opts.visibility_timeout_seconds {
            attributes::check_range(
                "visibility_timeout_seconds",
                v,
                0,
                attributes::VISIBILITY_TIMEOUT_MAX,
            )?;
        }
        if let Some(w) = opts.wait_time_seconds {
            attributes::check_range("wait_time_seconds", w, 0, attributes::RECEIVE_WAIT_MAX)?;
        }
        let mut notify = self.lock().queue("queue", queue)?.notify.clone();
        let mut until = None;
        loop {
            // Registered before the claim looks: a message made visible
            // after that look notifies this waiter (or, if it returns with
            // messages, is forwarded to another waiter when it is dropped).
            let waiting_on = notify.clone();
            let notified = waiting_on.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claim = self.claim(queue, max, opts)?;
            if !claim.taken.is_empty() {
                return self.read_bodies(claim.taken);
            }
            if !Arc::ptr_eq(&claim.notify, &notify) {
                // The queue was deleted and created again meanwhile.
                notify = claim.notify;
                continue;
            }
            let until = *until.get_or_insert_with(|| {
                let wait = Duration::from_secs(u64::from(claim.wait));
                tokio::time::Instant::now() + opts.wait_limit.map_or(wait, |limit| wait.min(limit))
            });
            if tokio::time::Instant::now() >= until || self.shutdown.is_cancelled() {
                return Ok(Vec::new());
            }
            let wake = claim
                .tokens_at
                .map_or(until, |at| self.clock.instant_at(at).min(until));
            tokio::select! {
                _ = notified, if claim.tokens_at.is_none() => {}
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// One synchronous claim under the lock.
    fn claim(&self, queue: &str, max: u32, opts: ReceiveOptions) -> Result<Claim> {
        let now = self.now_ms();
        let mut st = self.lock();
        st.promote_due(now);
        let id = st.queue_id("queue", queue)?;
        let q = st.queues.get_mut(&id).expect("names and queues agree");
        let mut claim = Claim {
            taken: Vec::new(),
            notify: q.notify.clone(),
            wait: opts
                .wait_time_seconds
                .unwrap_or(q.attributes.receive_wait_time_seconds),
            tokens_at: None,
        };
        if q.index.ready.is_empty() {
            return Ok(claim);
        }
        let max = match &mut q.limiter {
            Some(bucket) => match bucket.available(max, now) {
                0 => {
                    claim.tokens_at = Some(bucket.next_token_at());
                    return Ok(claim);
                }
                n => n,
            },
            None => max,
        };
        let visibility = opts
            .visibility_timeout_seconds
            .unwrap_or(q.attributes.visibility_timeout_seconds);
        let q = &st.queues[&id];
        let dead_letter = q.attributes.redrive_policy.as_ref().and_then(|p| {
            Some((
                st.names.get(&p.dead_letter_queue).copied()?,
                p.max_receive_count,
            ))
        });
        let mut claims = Vec::new();
        let mut dead_letters = Vec::new();
        // Messages due for the dead-letter queue do not count against
        // `max`: the receive takes the next ones (at most CHUNK moves per
        // call, so a receive stays O(batch)).
        for &seq in &q.index.ready {
            if claims.len() >= max as usize || dead_letters.len() >= CHUNK {
                break;
            }
            let old = q.index.slots[&seq].state;
            if let Some((dlq, max_count)) = dead_letter
                && old.receive_count >= max_count
            {
                dead_letters.push((seq, dlq));
                continue;
            }
            let state = StateRecord {
                receive_count: old.receive_count + 1,
                visible_at_ms: now + u64::from(visibility) * 1000,
                first_received_at_ms: if old.first_received_at_ms == 0 {
                    now
                } else {
                    old.first_received_at_ms
                },
                sent_at_ms: old.sent_at_ms,
            };
            claims.push(command::NewState::new(seq, state));
        }
        if claims.is_empty() && dead_letters.is_empty() {
            return Ok(claim);
        }
        let first = st.alloc_seqs(dead_letters.len() as u64);
        let dead_letters = (first..)
            .zip(dead_letters)
            .map(|(to_seq, (seq, to_queue_id))| command::Move {
                seq,
                to_queue_id,
                to_seq,
            })
            .collect();
        claim.taken = claims.iter().map(|c| (id, c.seq, c.state())).collect();
        let receive = command::Receive {
            queue_id: id,
            claims,
            dead_letters,
        };
        let cmd = st.command(now, Op::Receive(receive));
        self.apply(&mut st, cmd)?;
        let q = st.queues.get_mut(&id).expect("checked above");
        if let Some(bucket) = &mut q.limiter {
            bucket.take(claim.taken.len() as u32);
        }
        Ok(claim)
    }

    fn read_bodies(&self, claimed: Vec<(u64, u64, StateRecord)>) -> Result<Vec<Received>> {
        let keys: Vec<Vec<u8>> = claimed
            .iter()
            .map(|&(q, s, _)| keys::body(q, s).to_vec())
            .collect();
        let bodies = self.store.multi_get(&keys)?;
        let mut out = Vec::with_capacity(claimed.len());
        for ((queue_id, seq, state), raw) in claimed.into_iter().zip(bodies) {
            // Gone since the claim (purged, expired, queue deleted): skip.
            let Some(raw) = raw else { continue };
            let body: BodyRecord = records::decode(&keys::body(queue_id, seq), &raw)?;
            out.push(Received {
                message_id: body.message_id,
                receipt_handle: ReceiptHandle {
                    queue_id,
                    seq,
                    receive_count: state.receive_count,
                }
                .encode(),
                body: body.body,
                attributes: body.attributes,
                receive_count: state.receive_count,
                sent_at_ms: body.sent_at_ms,
                first_received_at_ms: state.first_received_at_ms,
            });
        }
        Ok(out)
    }

    /// Checks a receipt handle against the queue (request field `queue`):
    /// the queue id, then (if the message still exists) that no receive
    /// superseded it.
    fn check_handle(
        st: &mut State,
        queue: &str,
        handle: &str,
    ) -> Result<(u64, u64, Option<StateRecord>)> {
        let h = ReceiptHandle::decode(handle)?;
        let id = st.queue_id("queue", queue)?;
        if h.queue_id != id {
            return Err(Error::invalid(
                "receipt_handle",
                format!("belongs to another queue than {queue:?}"),
            ));
        }
        let state = st.queues[&id].index.slots.get(&h.seq).map(|s| s.state);
        if let Some(s) = state
            && s.receive_count != h.receive_count
        {
            return Err(Error::ReceiptSuperseded {
                current: s.receive_count,
                handle: h.receive_count,
            });
        }
        Ok((id, h.seq, state))
    }

    /// Deletes messages by receipt handle in one atomic, durable write.
    /// Deleting an already deleted message with its last handle succeeds.
    pub async fn delete(&self, queue: &str, handles: &[&str]) -> Result<Vec<Result<()>>> {
        let (results, ticket) = {
            let mut st = self.lock();
            let queue_id = st.queue_id("queue", queue)?;
            let mut seqs = Vec::new();
            let results = handles
                .iter()
                .map(|handle| {
                    let (_, seq, state) = Self::check_handle(&mut st, queue, handle)?;
                    // The same message twice in one call is deleted once.
                    if state.is_some() && !seqs.contains(&seq) {
                        seqs.push(seq);
                    }
                    Ok(())
                })
                .collect();
            let ticket = if seqs.is_empty() {
                None
            } else {
                let cmd = st.command(
                    self.now_ms(),
                    Op::Delete(command::Delete { queue_id, seqs }),
                );
                self.apply(&mut st, cmd)?
            };
            (results, ticket)
        };
        self.durable(ticket).await?;
        Ok(results)
    }

    /// Sets the visibility timeout of in-flight messages, counted from now;
    /// 0 makes a message visible at once.
    pub fn change_visibility(
        &self,
        queue: &str,
        changes: &[(&str, u32)],
    ) -> Result<Vec<Result<()>>> {
        let now = self.now_ms();
        let mut st = self.lock();
        let queue_id = st.queue_id("queue", queue)?;
        let mut updates: Vec<command::NewState> = Vec::new();
        let results = changes
            .iter()
            .map(|&(handle, seconds)| {
                attributes::check_range(
                    "visibility_timeout_seconds",
                    seconds,
                    0,
                    attributes::VISIBILITY_TIMEOUT_MAX,
                )?;
                let (_, seq, state) = Self::check_handle(&mut st, queue, handle)?;
                let state = match state {
                    Some(s) if s.visible_at_ms > now => s,
                    Some(_) => return Err(Error::NotInFlight),
                    None => return Err(Error::MessageDeleted),
                };
                let state = StateRecord {
                    visible_at_ms: now + u64::from(seconds) * 1000,
                    ..state
                };
                // The same message twice in one call: the last change wins.
                updates.retain(|u| u.seq != seq);
                updates.push(command::NewState::new(seq, state));
                Ok(())
            })
            .collect();
        if !updates.is_empty() {
            let change = command::ChangeVisibility {
                queue_id,
                changes: updates,
            };
            let cmd = st.command(now, Op::ChangeVisibility(change));
            self.apply(&mut st, cmd)?;
        }
        Ok(results)
    }

    /// Moves up to `max` (0: all) visible messages out of the dead-letter
    /// queue `source`: to `destination`, or each to the queue it died in.
    /// Receive counts start again from 0. Returns how many moved.
    pub async fn redrive(&self, source: &str, destination: &str, max: u32) -> Result<u64> {
        let now = self.now_ms();
        if source == destination {
            return Err(Error::invalid(
                "destination_queue",
                "must differ from source_queue",
            ));
        }
        let mut moved = 0u64;
        let mut after = 0u64;
        let mut ticket = None;
        loop {
            let mut st = self.lock();
            st.promote_due(now);
            let src = st.queue_id("source_queue", source)?;
            let dest = match destination {
                "" => None,
                d => Some(st.queue_id("destination_queue", d)?),
            };
            let want = if max == 0 {
                CHUNK
            } else {
                CHUNK.min((u64::from(max) - moved) as usize)
            };
            let seqs: Vec<u64> = st.queues[&src]
                .index
                .ready
                .range(after..)
                .take(want)
                .copied()
                .collect();
            let Some(&last) = seqs.last() else { break };
            after = last + 1;
            // Each message goes back where it died, unless told where.
            let targets: Vec<(u64, u64)> = match dest {
                Some(d) => seqs.into_iter().map(|seq| (seq, d)).collect(),
                None => {
                    let keys: Vec<Vec<u8>> =
                        seqs.iter().map(|&s| keys::body(src, s).to_vec()).collect();
                    let bodies = self.store.multi_get(&keys)?;
                    let mut targets = Vec::with_capacity(seqs.len());
                    for (seq, raw) in seqs.into_iter().zip(bodies) {
                        let Some(raw) = raw else { continue };
                        let body: BodyRecord = records::decode(&keys::body(src, seq), &raw)?;
                        match st.names.get(&body.dead_letter_source) {
                            Some(&d) if d != src => targets.push((seq, d)),
                            // Its source queue is gone: it stays here.
                            _ => {}
                        }
                    }
                    targets
                }
            };
            if targets.is_empty() {
                continue;
            }
            let first = st.alloc_seqs(targets.len() as u64);
            let moves: Vec<command::Move> = (first..)
                .zip(targets)
                .map(|(to_seq, (seq, to_queue_id))| command::Move {
                    seq,
                    to_queue_id,
                    to_seq,
                })
                .collect();
            moved += moves.len() as u64;
            let redrive = command::Redrive {
                source_queue_id: src,
                moves,
            };
            let cmd = st.command(now, Op::Redrive(redrive));
            ticket = self.apply(&mut st, cmd)?.or(ticket);
            if max != 0 && moved >= u64::from(max) {
                break;
            }
        }
        self.durable(ticket).await?;
        Ok(moved)
    }

    /// Deletes messages older than their queue's retention period, at most
    /// [`CHUNK`] per write. Returns how many were deleted.
    pub fn expire(&self) -> Result<u64> {
        let now = self.now_ms();
        let mut st = self.lock();
        let mut messages = Vec::new();
        for q in st.queues.values() {
            let cutoff =
                now.saturating_sub(u64::from(q.attributes.message_retention_seconds) * 1000);
            for &(sent, seq) in &q.index.by_sent {
                if sent > cutoff || messages.len() >= CHUNK {
                    break;
                }
                messages.push(command::MessageRef {
                    queue_id: q.id,
                    seq,
                });
            }
        }
        if messages.is_empty() {
            return Ok(0);
        }
        // Queues in id order: the same expiry is the same command.
        messages.sort_by_key(|m| (m.queue_id, m.seq));
        let expired = messages.len() as u64;
        let cmd = st.command(now, Op::Expire(command::Expire { messages }));
        self.apply(&mut st, cmd)?;
        Ok(expired)
    }

    /// The background task: fires timers (delays, visibility timeouts) when
    /// due and expires messages once a second, until shutdown.
    pub async fn run_scheduler(self: Arc<Self>) {
        let mut next_sweep = tokio::time::Instant::now();
        loop {
            let next_timer = {
                let mut st = self.lock();
                st.promote_due(self.now_ms());
                st.timers.first().map(|t| self.clock.instant_at(t.0))
            };
            if tokio::time::Instant::now() >= next_sweep {
                match self.expire() {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(expired = n, "retention deleted messages"),
                    Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                }
                next_sweep = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            let wake = next_timer.map_or(next_sweep, |t| t.min(next_sweep));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.scheduler.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// What tests compare: two engines in the same state dump the same.
#[cfg(test)]
impl Engine {
    /// The whole state as text, as of `now` (due timers promoted first):
    /// every key and value of the store, then the index.
    fn dump(&self, now: u64) -> String {
        use std::fmt::Write as _;
        let mut st = self.lock();
        st.promote_due(now);
        let mut out = String::new();
        for item in self.store.scan_prefix(&[]) {
            let (key, value) = item.expect("scan the store");
            writeln!(out, "{key:02x?} = {value:02x?}").unwrap();
        }
        let mut ids: Vec<u64> = st.queues.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let q = &st.queues[&id];
            let i = &q.index;
            writeln!(
                out,
                "queue {id} {:?} created {} {:?}\n  slots {:?}\n  ready {:?}\n  by_sent {:?}\n  in flight {} delayed {} retry {:?}",
                q.name, q.created_at_ms, q.attributes, i.slots, i.ready, i.by_sent, i.in_flight, i.delayed, i.retry
            )
            .unwrap();
        }
        writeln!(out, "names {:?}\ntimers {:?}", st.names, st.timers).unwrap();
        topics::dump(&st, &mut out);
        writeln!(out, "reserved {}", st.reserved_seq).unwrap();
        out
    }

    /// The commands applied so far, in order.
    fn journal(&self) -> Vec<Command> {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod tests;
