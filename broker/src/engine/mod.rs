//! The engine: queues with SQS semantics and topics that fan out into
//! them, over a RocksDB store and an in-memory index. The gRPC services
//! are thin adapters over [`Engine`]'s methods.
//!
//! # Where things are
//! | concern | module |
//! |---|---|
//! | the engine type, opening (rebuilding the index), applying commands | this module |
//! | everything the lock guards: queues, topics, the seq counter | `state` |
//! | create, update, list, delete and purge queues; queue attributes | `queues`, [`attributes`] |
//! | caps on queued messages (a queue's `max_messages`, the broker's) | `room` |
//! | send, receive (long polling, the rate limit), visibility, delete | `messages`, `rate` |
//! | dead letters and redrive, and the one message move both use | `dead_letters` |
//! | retention, and the scheduler that fires timers | `retention` |
//! | topics, subscriptions, the fan-out of a publish, filter policies, the envelope | [`topics`] |
//! | a read-only look at messages, for operators | `peek` |
//! | what the metrics read | [`counters`] |
//! | every state change as a value, and `apply` | [`command`] |
//! | the index; record encodings; receipt handles | `index`, `records`, `receipt` (private) |
//! | name and message checks, the wire limits they enforce | [`validate`] |
//! | the engine's error type | [`error`] |
//!
//! # Data model
//! RocksDB is the truth (layouts in `storage::keys`, values in `records`);
//! memory holds an index derived from it at startup (`index`): per queue,
//! the seqs of visible messages, and for the whole engine a timer set of
//! hidden messages ordered by the moment they become visible. Bodies are
//! read from RocksDB only when a message is received.
//!
//! # Decide, then apply
//! Every state change is decided by the engine's methods, under the engine
//! lock (validation, the clock, the seqs a receive claims, new seqs and
//! message ids, deadlines), as a [`Command`] that carries every decided
//! value; [`command::apply`] then writes it and updates the index, with
//! no choice of its own. The command list and each command's atomic write
//! are in [`command`]'s docs. A single node applies its own commands at
//! once under the same lock; [`Engine::replay`] applies one decided
//! elsewhere. In cluster mode the decisions go to a replicated log and are
//! applied when it commits them, on every replica alike ([`replication`]).
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
//! # What runs under the lock
//! Deciding, the RocksDB write of the command's batch (a WAL append without
//! `fsync` and a memtable insert) and the index update; and, in a command
//! that moves messages (dead-lettering, redrive), the read of the bodies it
//! rewrites (`dead_letters::read_moves`), so that apply writes what the
//! store holds at that point of the order. The `fsync` is awaited after the
//! lock is released; received and peeked bodies, and the bodies a redrive
//! reads to find where each message died, are read without the lock.
//! Writing under the lock is what keeps the WAL in the order of the
//! decisions, which a replay relies on; `benches/README.md` has what it
//! costs, measured.
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
mod dead_letters;
pub mod error;
mod ids;
mod index;
mod messages;
mod peek;
mod queues;
mod rate;
mod receipt;
pub(crate) mod records;
pub mod replication;
mod retention;
mod room;
mod state;
pub mod topics;
pub mod validate;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::storage::{Store, SyncMode, Ticket, keys};
pub use attributes::{AttributeChanges, QueueAttributes, RedrivePolicy, RetryPolicy};
use command::Command;
use counters::Activity;
pub use error::{Error, Result};
use ids::{QueueId, Seq};
pub use messages::{NewMessage, ReceiveOptions, Received};
pub use peek::{MessageState, Peeked};
use records::{QueueRecord, StateRecord};
use replication::{Check, Done, Gate, Kind, Log, Proposal};
pub use room::{BrokerCap, BrokerStats};
use state::{Queue, State};
pub use state::{QueueInfo, QueueStats};
pub use topics::{NewPublication, Published, SubscriptionInfo, TopicInfo};

/// Sequence numbers reserved per write of the reservation key.
const SEQ_BLOCK: u64 = 1 << 20;
/// Messages moved per write by redrive and retention, so that one call
/// never holds the lock for long.
const CHUNK: usize = 1_000;

/// The queue engine. Cheap to share behind an `Arc`.
/// A change decided and written (single node) or proposed (cluster), not
/// yet durable: [`Engine::acknowledged`] waits until it is. Changes become
/// durable in the order they were written, so a caller may wait for them
/// in that order without delaying any.
#[must_use = "a change is acknowledged only once `Engine::acknowledged` returns"]
pub struct Written(Done);

pub struct Engine {
    state: Mutex<State>,
    store: Store,
    clock: Clock,
    /// Wakes the scheduler when a timer earlier than its sleep is set.
    scheduler: Notify,
    shutdown: CancellationToken,
    /// Open long polls and streams, for the metrics.
    activity: Activity,
    /// The data dir's free space and floor: sends, publishes and redrives
    /// are refused below it (`storage::disk`).
    disk: Arc<crate::storage::disk::DiskSpace>,
    /// The broker's cap on queued messages (`room`).
    cap: BrokerCap,
    /// Set in cluster mode: decisions go to the replicated log
    /// (`replication`).
    replication: OnceLock<Arc<Gate>>,
    /// Cluster mode: the largest `at_ms` of the commands applied from the
    /// log; [`Engine::now_ms`] never reads earlier.
    time_floor: std::sync::atomic::AtomicU64,
    /// Every command applied, in order (unit tests replay them).
    #[cfg(test)]
    journal: Mutex<Vec<Command>>,
    /// Dropped with the engine, after the store (fields drop in order):
    /// [`Engine::closed`] resolves once the database is closed.
    closed: tokio::sync::watch::Sender<()>,
}

impl Engine {
    /// Opens the store in `dir` and rebuilds the index from it.
    pub fn open(dir: &Path, sync: SyncMode) -> Result<Engine> {
        Engine::open_with(dir, sync, None)
    }

    /// [`Engine::open`], with storage failures to inject (tests).
    pub fn open_with(
        dir: &Path,
        sync: SyncMode,
        faults: Option<Arc<crate::storage::faults::Faults>>,
    ) -> Result<Engine> {
        Engine::open_with_clock(dir, sync, faults, Clock::new())
    }

    /// [`Engine::open_with`], on `clock` (tests: a cluster node whose
    /// clock is off).
    pub fn open_with_clock(
        dir: &Path,
        sync: SyncMode,
        faults: Option<Arc<crate::storage::faults::Faults>>,
        clock: Clock,
    ) -> Result<Engine> {
        let store = Store::open_with(dir, sync, faults)?;
        if let Some(index) = store.get(keys::RAFT_INSTALLING)? {
            // A snapshot install cut short (see `install`): its part goes,
            // the marker stays until the kept snapshot is installed again.
            empty_for_install(&store, &index)?;
            tracing::warn!(
                "a snapshot install was cut short: what it wrote is removed, and the kept snapshot is installed again"
            );
        }
        let state = Self::load(&store, clock.now_ms())?;
        Ok(Engine {
            state: Mutex::new(state),
            store,
            clock,
            scheduler: Notify::new(),
            shutdown: CancellationToken::new(),
            activity: Activity::default(),
            disk: Arc::default(),
            cap: BrokerCap::default(),
            replication: OnceLock::new(),
            time_floor: Default::default(),
            #[cfg(test)]
            journal: Mutex::new(Vec::new()),
            closed: tokio::sync::watch::Sender::new(()),
        })
    }

    /// The state `store` holds, with the index rebuilt as of `now`.
    fn load(store: &Store, now: u64) -> Result<State> {
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
            let id = QueueId(rec.id);
            state.names.insert(name.to_string(), id);
            state.queues.insert(
                id,
                Queue::new(id, name, rec.created_at_ms, rec.attributes(), now),
            );
        }
        let max_id = max_id.max(topics::recover(store, &mut state)?);
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
            let queue_id = QueueId(queue_id);
            match state.queues.get_mut(&queue_id) {
                Some(q) => q
                    .index
                    .insert(&mut state.timers, queue_id, Seq(seq), st, now),
                None => orphans += 1,
            }
        }
        if orphans > 0 {
            tracing::warn!(orphans, "state records of unknown queues ignored");
        }
        state.next_seq = state.reserved_seq.max(max_seq + 1);
        let messages: usize = state.queues.values().map(|q| q.index.slots.len()).sum();
        tracing::info!(queues = state.queues.len(), messages, "engine state loaded");
        Ok(state)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The data dir's free space and floor (set and watched by the server).
    pub fn disk(&self) -> &Arc<crate::storage::disk::DiskSpace> {
        &self.disk
    }

    /// Why the store failed, once it has (`storage`, "Failures"): the
    /// server stops the broker.
    pub fn storage_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.store.failure()
    }

    /// The broker's cap on queued messages (set by the server).
    pub fn broker_cap(&self) -> &BrokerCap {
        &self.cap
    }

    /// Whether the engine holds no queue and no topic.
    pub fn is_empty(&self) -> bool {
        let st = self.lock();
        st.queues.is_empty() && st.topics.is_empty()
    }

    /// The engine's clock: the local clock, but never earlier than the
    /// decision time of the last command applied from a replicated log
    /// (see `replication`), so that time does not run backwards when
    /// leadership moves to a node whose clock is behind.
    pub fn now_ms(&self) -> u64 {
        self.clock
            .now_ms()
            .max(self.time_floor.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The local clock, without the floor of [`Engine::now_ms`]: what
    /// other nodes compare their clocks with (`cluster::clocks`).
    pub fn local_clock(&self) -> Clock {
        self.clock
    }

    /// Ends long polls (they return what they have) and the scheduler.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves once the last reference to the engine is dropped and its
    /// database is closed.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.subscribe();
        // Nothing is ever sent: `changed` fails when the sender drops.
        async move { while closed.changed().await.is_ok() {} }
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
                    Ok(messages::Held { state: Some(state), .. }) if state.visible_at_ms > now)
            })
            .collect()
    }

    /// The lock, to decide a command of `kind`. In cluster mode, waits
    /// until this node may decide (see `replication`): UNAVAILABLE if it
    /// does not lead.
    async fn decide(&self, kind: Kind) -> Result<MutexGuard<'_, State>> {
        let Some(gate) = self.replication.get() else {
            return Ok(self.lock());
        };
        let deadline = tokio::time::Instant::now() + replication::DECIDE_WAIT;
        let _counted = (kind == Kind::Barrier).then(|| gate.barrier_waiting());
        loop {
            let free = gate.free.notified();
            tokio::pin!(free);
            free.as_mut().enable();
            let changed = gate.log().changed();
            let waiting_for = {
                let mut st = self.lock();
                match gate.check(&st, kind) {
                    Check::Go => return Ok(st),
                    Check::Reload => {
                        self.reload(&mut st, &mut gate.pipe())?;
                        continue;
                    }
                    Check::Wait(reason) => reason,
                    Check::Refuse(reason) => return Err(Error::Unavailable { reason }),
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable {
                    reason: waiting_for,
                });
            }
            tokio::select! {
                _ = free => {}
                _ = changed => {}
                // Bounded, whatever the log reports.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Cluster mode, when speculation failed (see `replication`): memory
    /// again exactly what the store holds, as a restart rebuilds it.
    fn reload(&self, st: &mut State, pipe: &mut replication::Pipe) -> Result<()> {
        let (applied, last) = (st.applied_index, st.last_command);
        self.rebuild(st, applied, last)?;
        pipe.reset(last);
        self.scheduler.notify_one();
        tracing::info!("speculated changes rolled back: the index was reloaded from the store");
        Ok(())
    }

    /// Replaces the index with the one the store holds, as a restart
    /// builds it, at the replica's place in the log (`applied`, `last`).
    /// Long polls wake and look again.
    fn rebuild(&self, st: &mut State, applied: u64, last: replication::CommandId) -> Result<()> {
        let fresh = Self::load(&self.store, self.now_ms())?;
        for q in st.queues.values() {
            q.notify.notify_waiters();
        }
        *st = fresh;
        st.applied_index = applied;
        st.last_command = last;
        Ok(())
    }

    /// From now on, decisions go to `log` and commands are applied only
    /// through [`Engine::apply_entry`] (cluster mode). Set once.
    pub fn replicate_through(&self, log: Arc<dyn Log>) {
        if self.replication.set(Gate::new(log)).is_err() {
            tracing::warn!("the engine already replicates through a log");
        }
    }

    /// Applies a command this engine decided, under its lock (see
    /// [`command`]), or in cluster mode submits it to the log.
    fn apply(&self, st: &mut State, cmd: &Command) -> Result<Done> {
        if let Some(gate) = self.replication.get() {
            return gate.submit(st, cmd, |st, cmd| {
                let earliest = st.timers.first().map(|t| t.at);
                command::memory_part(st, cmd, command::Written::default())?;
                self.timer_set(st, earliest);
                Ok(())
            });
        }
        let ticket = self.apply_command(st, cmd)?;
        #[cfg(test)]
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd.clone());
        Ok(Done::Local(ticket))
    }

    /// [`command::apply`], then wakes the scheduler when a timer moved earlier.
    fn apply_command(&self, st: &mut State, cmd: &Command) -> Result<Option<Ticket>> {
        let earliest = st.timers.first().map(|t| t.at);
        let ticket = command::apply(st, &self.store, cmd)?;
        self.timer_set(st, earliest);
        Ok(ticket)
    }

    /// Applies a command decided by another engine (a replay), and waits
    /// until it is durable.
    pub async fn replay(&self, cmd: &Command) -> Result<()> {
        let ticket = self.apply_command(&mut self.lock(), cmd)?;
        self.durable(Done::Local(ticket)).await
    }

    /// Applies entry `index` of a replicated log (cluster mode): its
    /// commands, if it has any and they were decided on the state this
    /// entry finds (the chain, see `replication`), with `key` = `value`
    /// (the replica's record of its applied entry) in the same batch, so
    /// that after a crash all are there or none is. Returns whether the
    /// commands were applied. The write is not synced: the log is the
    /// durable record, and a restart applies again what the store lost.
    pub fn apply_entry(
        &self,
        index: u64,
        proposal: Option<&Proposal>,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool> {
        let gate = self.replication.get();
        let mut st = self.lock();
        let mut pipe = gate.map(|g| g.pipe());
        if let Some(p) = pipe.as_deref_mut()
            && p.broken()
        {
            self.reload(&mut st, p)?;
        }
        let mut batch = crate::storage::Batch::default();
        batch.put(key, value);
        let applied = match proposal {
            Some(proposal) if proposal.after == st.last_command => {
                let ours = pipe.as_deref().is_some_and(|p| p.heads(proposal.first));
                if let Some(p) = pipe.as_deref_mut()
                    && !ours
                    && p.speculating()
                {
                    // Another chain than the one this leader speculated on.
                    self.reload(&mut st, p)?;
                }
                let mut parts = Vec::with_capacity(proposal.commands.len());
                let mut at_ms = 0;
                for cmd in &proposal.commands {
                    parts.push(command::write_part(&st, &self.store, cmd, &mut batch)?);
                    at_ms = at_ms.max(cmd.at_ms);
                }
                let floor = self
                    .time_floor
                    .fetch_max(at_ms, std::sync::atomic::Ordering::Relaxed)
                    .max(at_ms);
                let last = proposal.last();
                batch.put(keys::RAFT_TIME_FLOOR, floor.to_be_bytes());
                batch.put(keys::RAFT_CHAIN, last.encode());
                self.store.write(batch)?;
                if let Some(p) = pipe.as_deref_mut() {
                    p.applied(last, if ours { proposal.commands.len() } else { 0 });
                }
                if !ours {
                    let earliest = st.timers.first().map(|t| t.at);
                    for (cmd, written) in proposal.commands.iter().zip(parts) {
                        command::memory_part(&mut st, cmd, written)?;
                    }
                    self.timer_set(&st, earliest);
                }
                // else memory has them (speculated when decided).
                st.last_command = last;
                true
            }
            skipped => {
                if let (Some(proposal), Some(p)) = (skipped, pipe.as_deref_mut())
                    && p.heads(proposal.first)
                {
                    // This leader's speculation is skipped: undo it.
                    self.reload(&mut st, p)?;
                }
                self.store.write(batch)?;
                skipped.is_none()
            }
        };
        st.applied_index = index;
        drop(pipe);
        drop(st);
        if let Some(gate) = gate {
            gate.free.notify_waiters();
        }
        Ok(applied)
    }

    /// Cluster snapshots: calls `f` with every key of the store and its
    /// value as of one point in time, made durable before the scan.
    /// Each applied entry wrote its record of itself in its own batch
    /// (`apply_entry`), so what `f` sees is the state after exactly the
    /// entry that record names. The point is taken under the engine lock,
    /// so never in the middle of an [`Engine::install`]; the scan takes no
    /// lock: applies go on.
    pub fn export<E: From<crate::storage::StorageError>>(
        &self,
        f: impl FnMut(&[u8], &[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.store.for_each_consistent(|| self.lock(), f)
    }

    /// Cluster snapshots: replaces everything the store holds with the
    /// keys and values `read` gives (a snapshot of another replica taken
    /// after entry `index`, its record of that entry, `keys::RAFT_APPLIED`,
    /// included), made durable before this returns, then rebuilds the index
    /// from it, as a restart would. Long polls waiting on the old queues
    /// look again; counters start again from zero.
    ///
    /// The keys go in batches of about `batch_bytes`, so that an install
    /// holds one batch in memory, not the whole snapshot. The first write
    /// deletes every key and records `keys::RAFT_INSTALLING` (synced); the
    /// last writes the record of the entry (held back until then) and
    /// removes the marker (synced). A store found holding the marker when
    /// it opens holds part of a snapshot: [`Engine::open_with_clock`]
    /// empties it but for the marker, and `cluster::state_machine`, seeing
    /// the marker, installs the kept snapshot again. `read` should have
    /// checked its source whole first: an error from it (or from a write)
    /// leaves the store in that state too, and the index as it was until
    /// the replica restarts (openraft stops a replica whose install fails).
    pub fn install<E: From<Error>>(
        &self,
        index: u64,
        batch_bytes: usize,
        read: impl FnOnce(
            &mut dyn FnMut(Vec<u8>, Vec<u8>) -> std::result::Result<(), E>,
        ) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        use crate::storage::Batch;
        {
            let mut st = self.lock();
            empty_for_install(&self.store, &index.to_be_bytes())?;
            let mut batch = Batch::default();
            let mut applied = None;
            read(&mut |key, value| {
                if key == keys::RAFT_APPLIED {
                    applied = Some(value);
                    return Ok(());
                }
                batch.put(key, value);
                if batch.size_in_bytes() >= batch_bytes {
                    self.store
                        .write(std::mem::take(&mut batch))
                        .map_err(Error::from)?;
                }
                Ok(())
            })?;
            // A single node's data, snapshotted for its cluster, has none.
            if let Some(applied) = applied {
                batch.put(keys::RAFT_APPLIED, applied);
            }
            batch.delete(keys::RAFT_INSTALLING);
            self.store.write(batch).map_err(Error::from)?;
            self.store.persist().map_err(Error::from)?;
            let last = self.read_chain()?;
            self.rebuild(&mut st, index, last)?;
            if let Some(gate) = self.replication.get() {
                gate.pipe().reset(st.last_command);
            }
        }
        self.load_time_floor()?;
        self.scheduler.notify_one();
        if let Some(gate) = self.replication.get() {
            gate.free.notify_waiters();
        }
        Ok(())
    }

    /// The index of the last log entry applied (cluster mode), as the
    /// replica recorded it: set once when its state machine opens.
    pub fn start_at_entry(&self, index: u64) -> Result<()> {
        let last = self.read_chain()?;
        {
            let mut st = self.lock();
            st.applied_index = index;
            st.last_command = last;
        }
        self.load_time_floor()
    }

    /// Sets the clock floor to what the applied entries recorded
    /// (`keys::RAFT_TIME_FLOOR`, written with each applied command), so
    /// that time does not run backwards across a restart either.
    fn load_time_floor(&self) -> Result<()> {
        if let Some(floor) = self.read_u64(keys::RAFT_TIME_FLOOR)? {
            self.time_floor
                .fetch_max(floor, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// A u64 (big-endian) that `apply_entry` records under `key`.
    fn read_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        let Some(v) = self.store.get(key)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] =
            v.as_slice()
                .try_into()
                .map_err(|_| crate::storage::StorageError::Corrupt {
                    key: format!("{key:02x?}"),
                    reason: format!("{} bytes, not a u64's 8", v.len()),
                })?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    /// The last command applied, as `apply_entry` records it.
    fn read_chain(&self) -> Result<replication::CommandId> {
        match self.store.get(keys::RAFT_CHAIN)? {
            None => Ok(replication::CommandId::default()),
            Some(v) => replication::CommandId::decode(&v).ok_or_else(|| {
                crate::storage::StorageError::Corrupt {
                    key: format!("{:02x?}", keys::RAFT_CHAIN),
                    reason: format!("{} bytes, not a command id's 16", v.len()),
                }
                .into()
            }),
        }
    }

    /// Reads a key written by [`Engine::apply_entry`].
    pub fn recorded(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.store.get(key)?)
    }

    /// Waits until a change [`Engine::send_written`] or
    /// [`Engine::publish_written`] made is durable, as `send` and `publish`
    /// do before they answer.
    pub async fn acknowledged(&self, written: Written) -> Result<()> {
        self.durable(written.0).await
    }

    /// Waits until `done` is durable (a local write's `fsync`, or a
    /// proposal's commit).
    async fn durable(&self, done: Done) -> Result<()> {
        if let Some(t) = done.applied().await? {
            self.store.sync(t).await?;
        }
        Ok(())
    }

    /// What a decision that changes nothing awaits before it answers from
    /// what it read: the changes decided before it, made as durable as its
    /// own would be (single node: the last write synced; cluster: the last
    /// speculated command applied).
    fn settle(&self) -> Done {
        match self.replication.get() {
            Some(gate) => gate.settle(),
            None => Done::Local(Some(self.store.last_written())),
        }
    }

    /// Waits until `done` is applied: a proposal's commit; a local apply
    /// is done already (its `fsync` is not awaited).
    async fn committed(&self, done: Done) -> Result<()> {
        done.applied().await.map(drop)
    }

    /// Wakes the scheduler when the earliest timer moved earlier.
    fn timer_set(&self, state: &State, earliest_before: Option<u64>) {
        let earliest_now = state.timers.first().map(|t| t.at);
        if earliest_now.is_some() && (earliest_before.is_none() || earliest_now < earliest_before) {
            self.scheduler.notify_one();
        }
    }
}

/// The first step of a snapshot install ([`Engine::install`]), and of
/// its undoing at open: deletes every key and records
/// `keys::RAFT_INSTALLING` (`index`, the entry the snapshot was taken
/// after), synced.
fn empty_for_install(store: &Store, index: &[u8]) -> Result<()> {
    let mut batch = crate::storage::Batch::default();
    // Every key of `storage::keys` starts with a byte below 0xff.
    batch.delete_range([0x00], [0xff]);
    batch.put(keys::RAFT_INSTALLING, index);
    store.write(batch)?;
    store.persist()?;
    Ok(())
}

/// What tests compare: two engines in the same state dump the same.
#[cfg(test)]
impl Engine {
    /// The whole state as text, as of `now` (due timers promoted first):
    /// every key and value of the store, then the index.
    pub(crate) fn dump(&self, now: u64) -> String {
        use std::fmt::Write as _;
        let mut st = self.lock();
        st.promote_due(now);
        let mut out = String::new();
        for item in self.store.scan_prefix(&[]) {
            let (key, value) = item.expect("scan the store");
            writeln!(out, "{key:02x?} = {value:02x?}").unwrap();
        }
        let mut ids: Vec<QueueId> = st.queues.keys().copied().collect();
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
    pub(crate) fn journal(&self) -> Vec<Command> {
        self.journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod corrupt_tests;
#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod speculation_tests;
#[cfg(test)]
mod tests;
