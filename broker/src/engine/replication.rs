//! The engine under a replicated log (cluster mode).
//!
//! A single node decides a command and applies it at once, under its lock.
//! A replica's engine decides only while its node leads, and its decisions
//! reach the store only when the log has committed them, on every replica
//! the same way ([`Engine::apply_entry`](super::Engine::apply_entry)).
//!
//! # The chain
//! Every command gets an id ([`CommandId`]: the deciding leader's term and
//! its own count), and is decided right after another one (`after`). A log
//! entry ([`Proposal`]) carries commands decided one after the other. A
//! replica applies an entry only if its `after` is the last command it
//! applied (recorded with each applied entry, `keys::RAFT_CHAIN`), so a
//! command is always applied to the state it was decided on. Otherwise
//! (leadership moved, and another leader's commands came first) it skips
//! the entry, on every replica alike, and the proposer answers UNAVAILABLE:
//! nothing was changed, and the client may retry. Entries that carry no
//! command (membership changes, the blank entry of a new leader) may come
//! between: they do not touch the chain.
//!
//! # Pipelined decisions
//! A leader does not wait for one decision to commit before it makes the
//! next. The hot commands (send, a receive's claims, visibility changes,
//! deletes, expiry: [`Command::pipelined`]) are applied to the leader's memory (the
//! index) when they are decided, *speculated*, and queued. One proposer
//! task proposes what is queued as one entry, waits until it is committed
//! and applied, and proposes what was queued meanwhile: one Raft round
//! carries every request that arrived during the previous one. When the
//! leader applies its own entry from the log, it writes only the store
//! part (its memory has it already).
//!
//! Every other command (queue and topic changes, purge, redrive, a receive
//! that moves dead letters) is a *barrier*: it is decided when
//! nothing is speculated or in flight (memory is then exactly the store),
//! proposed alone, and applied from the log, memory and store, as on a
//! follower. Deciders wait for it.
//!
//! What a client can observe of speculation: reads that do not decide
//! (stats, peek) may count a decided change before it is committed. No
//! reply that depends on a change is sent before the change is applied
//! from the log: a receive returns its messages after its own entry, and
//! so every send before it, is applied. A decision that changes nothing
//! but answers from what it read (a second delete of a message whose
//! delete is speculated) waits, [`Gate::settle`], until the last
//! speculated command is applied, and answers UNAVAILABLE if it never is.
//!
//! Bounds: an entry carries at most [`MAX_PROPOSAL`] commands and, past
//! its first, no more than [`PROPOSAL_BYTES`]; a command larger than
//! [`COMMAND_BYTES_MAX`] is refused (RESOURCE_EXHAUSTED), so that an
//! entry fits a frame between nodes; once [`PENDING_MAX`] commands are
//! speculated or queued, deciders wait for the log.
//!
//! **When speculation fails** (a proposal fails, leadership moves, or the
//! log applies an entry of another chain), the leader's memory is ahead of
//! its store with changes that may never be applied. It is *broken*: the
//! next decision or applied entry reloads the index from the store (as a
//! restart does, O(messages)), the queued, not yet proposed commands are
//! answered UNAVAILABLE (nothing changed), and deciding starts again from
//! the log's state once the proposal in flight has ended.
//!
//! # Time
//! Commands carry their decision time (`at_ms`), and apply reads no clock.
//! A replica's [`Engine::now_ms`](super::Engine::now_ms) never reads
//! earlier than the latest `at_ms` it applied (recorded with each applied
//! entry, so after a restart too), so a new leader whose clock is behind
//! the old one's does not move time backwards (it releases in-flight
//! messages no earlier than the old leader would have). A new leader whose
//! clock is ahead releases them early by that difference: the bound is the
//! clock skew between nodes (milliseconds under NTP), which
//! `--max-clock-skew-ms` bounds (`cluster::clocks`).
//!
//! What is not replicated: the promotion of due timers (each replica
//! promotes when it looks), the rate limiter's tokens and the counters of
//! the metrics, as in `command`'s docs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message as _;
use tokio::sync::{Notify, oneshot};

use super::command::Command;
use super::error::{Error, Result};
use super::state::State;

/// A boxed future, as the [`Log`] trait returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a decision waits for the node's log to be applied (or for a
/// leader to hear from a majority again) before it answers UNAVAILABLE.
pub(super) const DECIDE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Commands queued for one proposal, at most: a bound on an entry's size.
const MAX_PROPOSAL: usize = 1_000;

/// A proposal takes no further command once its commands' encoded bytes
/// reach this: an entry stays small enough to be replicated within
/// openraft's 100 ms per append request (see `cluster::network`'s
/// `APPEND_BYTES`), and one slow round does not carry a burst of large
/// batches at once.
const PROPOSAL_BYTES: usize = 1 << 20;

/// The largest command (prost-encoded bytes) a node replicates: its entry,
/// alone in a frame as base64 JSON (4/3 of it, plus the entry's fields),
/// stays under the frame bound of `cluster::network`. A larger change
/// (a batch of large messages published to many queues) is refused.
pub const COMMAND_BYTES_MAX: usize = 160 << 20;

/// Decided commands not yet applied from the log (speculated or queued),
/// at most: past it, deciders wait for the log to catch up, so that a
/// leader whose log stalls does not queue without bound.
const PENDING_MAX: usize = 20_000;

/// A command's name in the chain: the term of the leader that decided it
/// (one leader per term) and that leader's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandId {
    pub term: u64,
    pub n: u64,
}

impl CommandId {
    pub fn encode(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.term.to_be_bytes());
        out[8..].copy_from_slice(&self.n.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<CommandId> {
        let term = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let n = u64::from_be_bytes(bytes.get(8..)?.try_into().ok()?);
        Some(CommandId { term, n })
    }
}

/// One log entry's commands: decided one after the other, the first
/// (`first`) right after command `after`, the others numbered on from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub after: CommandId,
    pub first: CommandId,
    pub commands: Vec<Command>,
}

impl Proposal {
    /// The first entry of a log: `cmd` alone, at the start of the chain.
    #[cfg(test)]
    pub fn first_of_log(cmd: Command) -> Proposal {
        Proposal {
            after: CommandId::default(),
            first: CommandId { term: 1, n: 1 },
            commands: vec![cmd],
        }
    }

    /// The id of the last command, the chain's end once applied.
    pub fn last(&self) -> CommandId {
        CommandId {
            term: self.first.term,
            n: self.first.n + self.commands.len().saturating_sub(1) as u64,
        }
    }
}

/// A node that leads and holds its lease.
#[derive(Debug, Clone, Copy)]
pub struct Leading {
    /// The index of the last entry of its log.
    pub last_index: u64,
    /// Its term.
    pub term: u64,
}

/// The replicated log under an engine (implemented by `cluster`).
pub trait Log: Send + Sync + 'static {
    /// Whether this node leads and has heard from a majority lately;
    /// `Err(reason)` saying why not otherwise, with `wait` set when that
    /// may pass soon (a leader that has not heard from a majority lately).
    fn leading(&self) -> std::result::Result<Leading, NotLeading>;
    /// Resolves when the log's state may have changed (leadership, entries
    /// appended), for deciders that wait.
    fn changed(&self) -> BoxFuture<'static, ()>;
    /// Proposes `proposal`. Resolves once the entry is committed and
    /// applied on this node: `true` if its commands were applied, `false`
    /// if it was skipped (see the module docs).
    fn propose(&self, proposal: Proposal) -> BoxFuture<'static, Result<bool>>;
}

/// Why a node may not decide now.
#[derive(Debug, Clone)]
pub struct NotLeading {
    pub reason: String,
    /// Worth waiting for (up to the decision's bound), not refused at once.
    pub wait: bool,
}

/// What a decider will decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Pipelined commands only (see the module docs).
    Pipelined,
    /// Any command: waits until nothing is speculated or in flight.
    Barrier,
}

/// What [`Gate::check`] tells a decider.
pub(super) enum Check {
    Go,
    /// Speculation failed: reload memory from the store, then check again.
    Reload,
    Wait(String),
    Refuse(String),
}

/// The engine's side of replication.
pub(super) struct Gate {
    log: Arc<dyn Log>,
    /// Taken under the engine lock, or alone (the proposer task, a
    /// barrier decider counting itself, a settled answer); never the
    /// engine lock while holding it.
    pipe: Mutex<Pipe>,
    /// Notified when a proposal ends and when an entry is applied.
    pub(super) free: Notify,
}

/// Speculated and queued commands (see the module docs).
pub(super) struct Pipe {
    /// The term the speculation is made in.
    term: u64,
    /// The next command count: started from the wall clock's nanoseconds,
    /// so that a node restarted within one term does not reuse a count.
    next_n: u64,
    /// The last command decided (speculated, or applied).
    tail: CommandId,
    /// Commands applied to memory and not yet from the log, oldest first.
    speculated: VecDeque<CommandId>,
    /// The last command applied from the log (or loaded from the store).
    applied: CommandId,
    /// Decided, not yet proposed, with the clients waiting for each.
    queued: Vec<(Command, usize, oneshot::Sender<Result<bool>>)>,
    queued_after: CommandId,
    queued_first: CommandId,
    /// The proposer task runs.
    proposing: bool,
    /// A barrier command is queued or in flight.
    barrier: bool,
    /// Barrier deciders waiting: pipelined ones let them in first.
    barriers_waiting: usize,
    /// Memory must be reloaded from the store before anything else.
    broken: bool,
}

impl Pipe {
    /// Memory was reloaded from the store, whose chain ends at `last`:
    /// nothing is speculated any more, and what was queued is answered
    /// "skipped" (it will never be proposed).
    pub(super) fn reset(&mut self, last: CommandId) {
        self.speculated.clear();
        self.tail = last;
        self.applied = last;
        for (_, _, waiter) in self.queued.drain(..) {
            let _ = waiter.send(Ok(false));
        }
        self.broken = false;
    }

    /// Whether the leader's own speculated command `first` heads the queue.
    pub(super) fn heads(&self, first: CommandId) -> bool {
        self.speculated.front() == Some(&first)
    }

    pub(super) fn broken(&self) -> bool {
        self.broken
    }

    /// Whether something is speculated.
    pub(super) fn speculating(&self) -> bool {
        !self.speculated.is_empty()
    }

    /// An entry was applied from the log, its chain ending at `last`; if it
    /// was this leader's own (`heads`), its `ours` commands are no longer
    /// speculated.
    pub(super) fn applied(&mut self, last: CommandId, ours: usize) {
        let ours = ours.min(self.speculated.len());
        self.speculated.drain(..ours);
        self.applied = last;
    }
}

/// Waiting barrier deciders, counted while they wait.
pub(super) struct BarrierWaiting<'g>(&'g Gate);

impl Drop for BarrierWaiting<'_> {
    fn drop(&mut self) {
        self.0.pipe().barriers_waiting -= 1;
        self.0.free.notify_waiters();
    }
}

impl Gate {
    pub(super) fn new(log: Arc<dyn Log>) -> Arc<Gate> {
        let next_n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Arc::new(Gate {
            log,
            pipe: Mutex::new(Pipe {
                term: 0,
                next_n,
                tail: CommandId::default(),
                speculated: VecDeque::new(),
                applied: CommandId::default(),
                queued: Vec::new(),
                queued_after: CommandId::default(),
                queued_first: CommandId::default(),
                proposing: false,
                barrier: false,
                barriers_waiting: 0,
                broken: false,
            }),
            free: Notify::new(),
        })
    }

    pub(super) fn log(&self) -> &dyn Log {
        &*self.log
    }

    /// The pipeline (see the field for when it is taken).
    pub(super) fn pipe(&self) -> MutexGuard<'_, Pipe> {
        self.pipe.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a barrier decider until the guard drops.
    pub(super) fn barrier_waiting(&self) -> BarrierWaiting<'_> {
        self.pipe().barriers_waiting += 1;
        BarrierWaiting(self)
    }

    /// Whether a decision of `kind` may be made now on `st` (called under
    /// the engine lock; see the module docs).
    pub(super) fn check(&self, st: &State, kind: Kind) -> Check {
        let mut p = self.pipe();
        if p.broken {
            return Check::Reload;
        }
        let leading = match self.log.leading() {
            Ok(leading) => leading,
            Err(NotLeading { reason, wait: true }) => return Check::Wait(reason),
            Err(NotLeading { reason, .. }) => return Check::Refuse(reason),
        };
        if !p.speculated.is_empty() && p.term != leading.term {
            // Leadership was lost and won again meanwhile.
            p.broken = true;
            return Check::Reload;
        }
        let busy = "this node leads and is committing a change; retry".to_string();
        if p.barrier {
            return Check::Wait(busy);
        }
        let fresh =
            p.speculated.is_empty() && !p.proposing && st.applied_index >= leading.last_index;
        let go = match kind {
            Kind::Barrier => fresh,
            Kind::Pipelined => {
                p.barriers_waiting == 0
                    && (fresh || !p.speculated.is_empty())
                    && p.speculated.len() + p.queued.len() < PENDING_MAX
            }
        };
        if !go {
            return Check::Wait(busy);
        }
        if fresh {
            p.term = leading.term;
            p.tail = st.last_command;
        }
        Check::Go
    }

    /// Submits `cmd`, decided on `st` (under the engine lock, after
    /// [`Gate::check`] said go): a pipelined command is speculated with
    /// `speculate` and queued; any other is queued alone as a barrier.
    pub(super) fn submit(
        self: &Arc<Self>,
        st: &mut State,
        cmd: &Command,
        speculate: impl FnOnce(&mut State, &Command) -> Result<()>,
    ) -> Result<Done> {
        let size = cmd.encoded_len();
        if size > COMMAND_BYTES_MAX {
            return Err(Error::ChangeTooLarge {
                size,
                max: COMMAND_BYTES_MAX,
            });
        }
        let mut p = self.pipe();
        let pipelined = cmd.pipelined();
        if !pipelined && (!p.speculated.is_empty() || !p.queued.is_empty() || p.barrier) {
            // `check` lets a barrier through only when nothing is pending:
            // a method that decides one without it is a bug, refused
            // rather than reordered.
            return Err(Error::Unavailable {
                reason: "a change was decided while others were pending; retry".into(),
            });
        }
        let id = CommandId {
            term: p.term,
            n: p.next_n,
        };
        if pipelined {
            speculate(st, cmd)?;
            p.speculated.push_back(id);
        } else {
            p.barrier = true;
        }
        p.next_n += 1;
        if p.queued.is_empty() {
            p.queued_after = p.tail;
            p.queued_first = id;
        }
        p.tail = id;
        let (tx, rx) = oneshot::channel();
        p.queued.push((cmd.clone(), size, tx));
        if !p.proposing {
            p.proposing = true;
            tokio::spawn(self.clone().propose_queued());
        }
        Ok(Done::Proposed(rx))
    }

    /// What a decision that submits nothing awaits (under the engine
    /// lock): its answer was read from memory, which may hold speculated
    /// changes (a message another request's delete removed); the answer
    /// holds once they are applied.
    pub(super) fn settle(self: &Arc<Self>) -> Done {
        match self.pipe().speculated.back() {
            Some(&last) => Done::Settled(self.clone(), last),
            None => Done::Local(None),
        }
    }

    /// Waits until speculated command `id` is applied from the log;
    /// UNAVAILABLE once it cannot be (speculation failed).
    async fn settled(&self, id: CommandId) -> Result<()> {
        loop {
            let free = self.free.notified();
            tokio::pin!(free);
            free.as_mut().enable();
            {
                let p = self.pipe();
                if p.applied.term == id.term && p.applied.n >= id.n {
                    return Ok(());
                }
                let pending = p
                    .speculated
                    .front()
                    .is_some_and(|f| f.term == id.term && f.n <= id.n);
                if p.broken || !pending {
                    return Err(Error::Unavailable {
                        reason: "the changes this answer depends on failed to commit \
                                 (leadership changed); retry"
                            .into(),
                    });
                }
            }
            free.await;
        }
    }

    /// The proposer task: proposes what is queued as one entry, waits for
    /// it, and goes on while something is queued. It runs on even if
    /// every client stops waiting.
    async fn propose_queued(self: Arc<Self>) {
        loop {
            let (proposal, waiters, barrier) = {
                let mut p = self.pipe();
                if p.queued.is_empty() {
                    p.proposing = false;
                    // A barrier `reset` answered before it was proposed.
                    p.barrier = false;
                    drop(p);
                    self.free.notify_waiters();
                    return;
                }
                let take = proposal_len(p.queued.iter().map(|(_, size, _)| *size));
                let (commands, waiters): (Vec<_>, Vec<_>) = p
                    .queued
                    .drain(..take)
                    .map(|(cmd, _, waiter)| (cmd, waiter))
                    .unzip();
                let barrier = !commands[0].pipelined();
                let proposal = Proposal {
                    after: p.queued_after,
                    first: p.queued_first,
                    commands,
                };
                if !p.queued.is_empty() {
                    // The rest follows this entry's last command.
                    let last = proposal.last();
                    p.queued_after = last;
                    p.queued_first = CommandId {
                        term: last.term,
                        n: last.n + 1,
                    };
                }
                (proposal, waiters, barrier)
            };
            let result = self.log.propose(proposal).await;
            {
                let mut p = self.pipe();
                if barrier {
                    p.barrier = false;
                }
                if result.is_err() && !p.speculated.is_empty() {
                    // Applied or not, nobody knows yet: start again from
                    // the store.
                    p.broken = true;
                }
            }
            for waiter in waiters {
                let _ = waiter.send(match &result {
                    Ok(applied) => Ok(*applied),
                    Err(e) => Err(Error::Unavailable {
                        reason: e.to_string(),
                    }),
                });
            }
            self.free.notify_waiters();
        }
    }
}

/// How many of the queued commands, of these encoded sizes, the next
/// proposal takes: at least one, at most [`MAX_PROPOSAL`], and no more
/// once their bytes reach [`PROPOSAL_BYTES`].
pub(super) fn proposal_len(sizes: impl Iterator<Item = usize>) -> usize {
    let mut bytes = 0;
    let mut take = 0;
    for size in sizes.take(MAX_PROPOSAL) {
        if take > 0 && bytes + size > PROPOSAL_BYTES {
            break;
        }
        bytes += size;
        take += 1;
    }
    take
}

/// What a caller of [`Engine::apply`](super::Engine) awaits.
pub(super) enum Done {
    /// Applied here: the write's ticket, to await its durability.
    Local(Option<crate::storage::Ticket>),
    /// Proposed to the log: resolves once committed and applied.
    Proposed(oneshot::Receiver<Result<bool>>),
    /// Nothing proposed, but the answer was read from speculated state:
    /// done once the leader's last speculated command is applied.
    Settled(Arc<Gate>, CommandId),
}

impl Done {
    /// Waits for a proposal to be applied (a local apply is done already).
    pub(super) async fn applied(self) -> Result<Option<crate::storage::Ticket>> {
        match self {
            Done::Local(ticket) => Ok(ticket),
            Done::Proposed(rx) => match rx.await {
                Ok(Ok(true)) => Ok(None),
                Ok(Ok(false)) => Err(Error::Unavailable {
                    reason: "leadership changed, or this leader's earlier changes failed to \
                             commit, while the request was decided; nothing was changed, retry"
                        .into(),
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::Unavailable {
                    reason: "the proposal was dropped (the node is shutting down); retry".into(),
                }),
            },
            Done::Settled(gate, id) => gate.settled(id).await.map(|()| None),
        }
    }
}
