//! The engine under a replicated log (cluster mode).
//!
//! A single node decides a command and applies it at once, under its lock.
//! A replica's engine decides only while its node leads, and applies a
//! command only when the log has committed it, on every replica the same
//! way ([`Engine::apply_entry`]). Between the two, one rule keeps every
//! decision made on the state it will be applied to:
//!
//! - **One decision in flight.** [`Engine::decide`] waits until no proposal
//!   of this engine is pending and every entry of the node's log is applied
//!   ([`Log::leading`]); [`Engine::apply`] then hands the command to
//!   [`Log::propose`] instead of applying it. The next decision waits until
//!   that proposal is committed and applied (or has failed).
//! - **A command carries the entry it was decided after** (its `base`).
//!   [`Engine::apply_entry`] applies a command only if no command was
//!   applied after its base (the replica's `changed_at`, recorded with
//!   each applied command); entries that change no engine state, the
//!   membership changes and blank entries openraft appends by itself (a
//!   node joins or leaves), may come between. Otherwise (leadership moved
//!   between the decision and the append, and another command came first)
//!   it skips it, on every replica alike, and the proposer answers
//!   UNAVAILABLE: nothing was changed, and the client may retry.
//!
//! Throughput is one proposal per shard at a time (a Raft round with its
//! `fsync`s), each command carrying what it carries today (a batch of
//! sends, a receive of up to ten). Batching many requests into one entry
//! is the design's next step (`docs/cluster-design.md`).
//!
//! Time: commands carry their decision time (`at_ms`), and apply reads no
//! clock. A replica's [`Engine::now_ms`] never reads earlier than the
//! latest `at_ms` it applied (recorded with each applied command, so
//! after a restart too), so a new leader whose clock is behind the old
//! one's does not move time backwards (it releases in-flight messages no
//! earlier than the old leader would have). A new leader whose clock is
//! ahead releases them early by that difference: the bound is the clock
//! skew between nodes (milliseconds under NTP); a `--max-clock-skew`
//! check is not built yet.
//!
//! What is not replicated: the promotion of due timers (each replica
//! promotes when it looks), the rate limiter's tokens and the counters of
//! the metrics, as in `command`'s docs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::command::Command;
use super::error::{Error, Result};
use super::state::State;

/// A boxed future, as the [`Log`] trait returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a decision waits for the node's log to be applied (or for a
/// leader to hear from a majority again) before it answers UNAVAILABLE.
const DECIDE_WAIT: Duration = Duration::from_secs(2);

/// The replicated log under an engine (implemented by `cluster`).
pub trait Log: Send + Sync + 'static {
    /// The index of the last entry of this node's log, if this node leads
    /// and has heard from a majority lately; `Err(reason)` saying why not
    /// otherwise, with `wait` set when that may pass soon (a leader that
    /// has not heard from a majority lately).
    fn leading(&self) -> std::result::Result<u64, NotLeading>;
    /// Resolves when the log's state may have changed (leadership, entries
    /// appended), for deciders that wait.
    fn changed(&self) -> BoxFuture<'static, ()>;
    /// Proposes `cmd`, decided on the state after entry `base`. Resolves
    /// once the entry is committed and applied on this node: `true` if the
    /// command was applied, `false` if it was skipped (see the module docs).
    fn propose(&self, base: u64, cmd: Command) -> BoxFuture<'static, Result<bool>>;
}

/// Why a node may not decide now.
#[derive(Debug, Clone)]
pub struct NotLeading {
    pub reason: String,
    /// Worth waiting for (up to the decision's bound), not refused at once.
    pub wait: bool,
}

/// The engine's side of replication.
pub(super) struct Gate {
    pub(super) log: Arc<dyn Log>,
    /// A proposal of this engine is pending.
    busy: AtomicBool,
    /// Notified when a proposal ends and when an entry is applied.
    pub(super) free: Notify,
}

/// What a caller of [`Engine::apply`](super::Engine) awaits.
pub(super) enum Done {
    /// Applied here: the write's ticket, to await its durability.
    Local(Option<crate::storage::Ticket>),
    /// Proposed to the log: resolves once committed and applied.
    Proposed(oneshot::Receiver<Result<bool>>),
}

impl Gate {
    pub(super) fn new(log: Arc<dyn Log>) -> Arc<Gate> {
        Arc::new(Gate {
            log,
            busy: AtomicBool::new(false),
            free: Notify::new(),
        })
    }

    /// Whether a decision may be made now, with `applied` the index of the
    /// last entry the engine applied: this node leads, nothing is pending,
    /// and the whole log is applied. Called under the engine lock.
    fn may_decide(&self, applied: u64) -> std::result::Result<bool, NotLeading> {
        let last = self.log.leading()?;
        Ok(!self.busy.load(Ordering::SeqCst) && applied >= last)
    }

    /// Waits until [`Gate::may_decide`] holds, then returns the lock.
    pub(super) async fn decide<'e>(
        &self,
        lock: impl Fn() -> MutexGuard<'e, State>,
    ) -> Result<MutexGuard<'e, State>> {
        let deadline = tokio::time::Instant::now() + DECIDE_WAIT;
        loop {
            let free = self.free.notified();
            tokio::pin!(free);
            free.as_mut().enable();
            let changed = self.log.changed();
            let waiting_for = {
                let st = lock();
                match self.may_decide(st.applied_index) {
                    Ok(true) => return Ok(st),
                    Ok(false) => format!(
                        "this node leads but has not applied its log within {} s; retry",
                        DECIDE_WAIT.as_secs()
                    ),
                    Err(NotLeading { reason, wait: true }) => reason,
                    Err(NotLeading { reason, .. }) => return Err(Error::Unavailable { reason }),
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

    /// Proposes `cmd` (decided after entry `base`), in a task of its own:
    /// the proposal completes, and the next decision is let through, even
    /// if the caller stops waiting.
    pub(super) fn propose(self: &Arc<Self>, base: u64, cmd: Command) -> Result<Done> {
        if self.busy.swap(true, Ordering::SeqCst) {
            // `decide` lets one decision through at a time: a method that
            // applies without it is a bug, refused rather than reordered.
            return Err(Error::Unavailable {
                reason: "a decision was made while another was pending; retry".into(),
            });
        }
        let proposal = self.log.propose(base, cmd);
        let gate = self.clone();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let result = proposal.await;
            gate.busy.store(false, Ordering::SeqCst);
            gate.free.notify_waiters();
            let _ = tx.send(result);
        });
        Ok(Done::Proposed(rx))
    }
}

impl Done {
    /// Waits for a proposal to be applied (a local apply is done already).
    pub(super) async fn applied(self) -> Result<Option<crate::storage::Ticket>> {
        match self {
            Done::Local(ticket) => Ok(ticket),
            Done::Proposed(rx) => match rx.await {
                Ok(Ok(true)) => Ok(None),
                Ok(Ok(false)) => Err(Error::Unavailable {
                    reason: "leadership changed while the request was decided; nothing was \
                             changed, retry"
                        .into(),
                }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(Error::Unavailable {
                    reason: "the proposal was dropped (the node is shutting down); retry".into(),
                }),
            },
        }
    }
}
