//! Split votes that repeat: why they happen with openraft 0.9, and how a
//! node breaks them ([`jitter_rounds`]).
//!
//! openraft 0.9 draws a node's election timeout once, when the node starts
//! (in `election_timeout_min..election_timeout_max`), and checks it on its
//! tick, every 150 ms (1.5 heartbeats). A candidate thus stands again every
//! whole number of ticks, the same number every round. Two nodes whose
//! timeouts round up to the same number of ticks (about two pairs in five,
//! with 0.4 to 0.7 s) and whose ticks fall within a vote's round trip of
//! each other (a few ms; tens on a busy machine) stand at the same moments
//! round after round: each votes for itself, refuses the other, and no
//! leader is elected until their ticks drift apart.
//!
//! The usual Raft answer is a new random timeout each round. Standing
//! again at a random moment (`Trigger::elect`) would give one, but it
//! would also undo openraft's own way out of another case: a candidate
//! whose log is shorter than a voter's (which cannot win) waits longer
//! before its next round, so that the voter stands with a higher term and
//! wins; a short-log node that stood again on its own would keep pace with
//! the voter's terms and refuse it each round (seen here). So
//! [`jitter_rounds`] only ever delays: each time this node starts a round
//! as a candidate without a leader, its elections are switched off
//! (`RuntimeConfigHandle::elect`) until a moment drawn afresh in
//! `election_timeout_min..election_timeout_max + JITTER`, after which
//! openraft's tick stands again as it would. The node's round then lasts
//! the longer of openraft's fixed timeout and the draw, which differs from
//! round to round, and two nodes in step fall out of step. Followers with a
//! leader, and a node's first election after losing its leader (openraft's
//! lease plus its timeout), are left alone.
//!
//! One more case keeps a leader from being elected for seconds (seen
//! here): a candidate with a shorter log stands first, is refused by the
//! voter with the longer log (which keeps its term), and stands again
//! before that voter does; the voter then stands in the term the candidate
//! already voted itself in, is refused, and so on. So a candidate refused
//! by a longer log (seen in the vote's answer, `network`) stands no more
//! for [`SHORTER_LOG_HOLD`], or until a leader is known: the voter, whose
//! log can win, gets rounds of its own.
//!
//! # A leader whose clock drifts
//! A node whose clock is out of the bound (`clocks`) does not stand, but
//! it may already lead when it drifts out (or when the voters it is
//! measured against change: the first node of a cluster leads alone, in
//! step with itself, until others join). openraft 0.9 has no leadership
//! transfer, so such a leader hands over by going quiet ([`Handover`]): it
//! serves and decides nothing (`proposer::leadership` says `Held`, so
//! requests wait, then go to the next leader) and sends no heartbeats
//! (`RuntimeConfigHandle::heartbeat`). The followers' leases run out
//! (openraft's lease, 0.7 s, plus an election timeout) and one in step is
//! elected in a higher term, which ends the old leader's term. A leader
//! elected while out of the bound (by [`OUT_OF_BOUND_WAIT`]: no node in
//! step could win) keeps leading: handing over would only leave the
//! cluster leaderless again. It hands over if it drifts out again after
//! coming back within the bound.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use super::Raft;

/// How far past `election_timeout_max` a candidate's next round may be
/// put off: a few ticks.
pub const JITTER: Duration = Duration::from_millis(450);

/// How long a candidate whose log was found shorter than a voter's stands
/// no more (see the module docs): time for the voter, which can win, to
/// stand twice.
pub const SHORTER_LOG_HOLD: Duration = Duration::from_secs(3);

/// How long a node whose clock is out of the bound (`clocks`) waits with
/// no leader known before it stands anyway: time for the nodes in step to
/// stand several times (a first round comes 1.1 to 1.4 s after the leader
/// is lost, a held-back one up to about 3 s later). When none of them can
/// win (too few are up, or their logs are shorter than this node's, whose
/// vote they then do not get), the cluster is without a leader for this
/// long, not until the clock is fixed; the leader it gets then releases
/// in-flight messages early by its clock's error (an earlier redelivery,
/// as at-least-once allows).
pub const OUT_OF_BOUND_WAIT: Duration = Duration::from_secs(6);

/// What to do with this node's elections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elections {
    /// Off until the instant: a new round was started.
    OffUntil(Instant),
    /// Back on (they were off, and this node is no longer a leaderless
    /// candidate, or its wait is over).
    On,
}

/// The rounds of one node, from what it sees of its Raft.
#[derive(Debug, Default)]
pub struct Rounds {
    /// The term of the last round seen as a leaderless candidate.
    term: Option<u64>,
    /// Until when elections are off, while they are.
    off_until: Option<Instant>,
}

impl Rounds {
    /// What the node sees changed: whether it is a candidate that knows no
    /// leader, in `term`. `draw` gives a new round's wait.
    pub fn observe(
        &mut self,
        leaderless_candidate: bool,
        term: u64,
        now: Instant,
        draw: impl FnOnce() -> Duration,
    ) -> Option<Elections> {
        if !leaderless_candidate {
            self.term = None;
            return self.off_until.take().map(|_| Elections::On);
        }
        if self.term == Some(term) {
            return None;
        }
        self.term = Some(term);
        let until = now + draw();
        self.off_until = Some(until);
        Some(Elections::OffUntil(until))
    }

    /// A vote this node asked for was refused by a voter with a longer
    /// log: if it is still a leaderless candidate, elections stay off until
    /// `until` at least.
    pub fn hold(&mut self, until: Instant) -> Option<Elections> {
        self.term?;
        if self.off_until.is_some_and(|u| u >= until) {
            return None;
        }
        self.off_until = Some(until);
        Some(Elections::OffUntil(until))
    }

    /// Until when elections are off, if they are.
    pub fn off_until(&self) -> Option<Instant> {
        self.off_until
    }

    /// The wait is over at `now`: elections go back on.
    pub fn wait_over(&mut self, now: Instant) -> Option<Elections> {
        match self.off_until {
            Some(until) if until <= now => {
                self.off_until = None;
                Some(Elections::On)
            }
            _ => None,
        }
    }
}

/// Whether a leader hands its leadership over (see the module docs), from
/// what it sees of its Raft and its clock.
#[derive(Debug, Default)]
pub struct Handover {
    leads: bool,
    /// Elected while out of the bound: it keeps leading until it is back.
    keep: bool,
    handing_over: bool,
}

impl Handover {
    /// The node leads or not, and its clock is within the bound or not:
    /// the new answer to "is it handing over?", when that changes.
    pub fn observe(&mut self, leads: bool, within: bool) -> Option<bool> {
        if leads && !self.leads {
            self.keep = !within;
        }
        if within {
            self.keep = false;
        }
        self.leads = leads;
        let handing_over = leads && !within && !self.keep;
        (std::mem::replace(&mut self.handing_over, handing_over) != handing_over)
            .then_some(handing_over)
    }
}

/// Runs [`Rounds`] over `raft` until the Raft shuts down: each round a
/// leaderless candidate starts (counted in `rounds_stood`), its elections
/// are off for a wait drawn in `timeouts.start..timeouts.end + JITTER`
/// (ms), then on again. Whatever the rounds say, elections stay off while
/// `clock_within` is false (`clocks`: this node's clock is out of the
/// bound), unless no leader has been known for [`OUT_OF_BOUND_WAIT`].
/// A leader out of the bound hands over ([`Handover`]), with
/// `handing_over` set meanwhile.
pub async fn jitter_rounds(
    raft: Raft,
    timeouts: Range<u64>,
    rounds_stood: Arc<AtomicU64>,
    shorter_log: Arc<tokio::sync::Notify>,
    mut clock_within: tokio::sync::watch::Receiver<bool>,
    handing_over: Arc<AtomicBool>,
) {
    let mut metrics = raft.metrics();
    let mut rounds = Rounds::default();
    let mut handover = Handover::default();
    let mut clock_watched = true;
    // Since when no leader is known, and whether this node may stand as
    // far as its clock goes (as last applied).
    let mut leaderless_since: Option<Instant> = None;
    let mut clock_allows = true;
    let end = timeouts.end + JITTER.as_millis() as u64;
    let draw = || Duration::from_millis(rand::random_range(timeouts.start..end));
    loop {
        let now = Instant::now();
        let within = *clock_within.borrow_and_update();
        let (action, handing) = {
            let m = metrics.borrow_and_update();
            leaderless_since = match m.current_leader {
                Some(_) => None,
                None => leaderless_since.or(Some(now)),
            };
            let leaderless = m.state == ServerState::Candidate && m.current_leader.is_none();
            (
                rounds.observe(leaderless, m.current_term, now, draw),
                handover.observe(m.state == ServerState::Leader, within),
            )
        };
        if action.is_some_and(|a| a != Elections::On) {
            rounds_stood.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(handing) = handing {
            handing_over.store(handing, Ordering::Relaxed);
            raft.runtime_config().heartbeat(!handing);
            if handing {
                tracing::error!(
                    "this node leads, but its clock is out of --max-clock-skew-ms: it hands its \
                     leadership over (it serves nothing and sends no heartbeats until another \
                     node is elected)"
                );
            } else {
                tracing::info!("this node no longer hands its leadership over");
            }
        }
        let fallback = leaderless_since.map(|t| t + OUT_OF_BOUND_WAIT);
        let allows = clock_may_stand(within, fallback, now);
        if allows != clock_allows {
            clock_allows = allows;
            if allows && !within {
                tracing::warn!(
                    "no leader for {OUT_OF_BOUND_WAIT:?}: this node stands for election although its clock is out of --max-clock-skew-ms"
                );
            }
            raft.runtime_config()
                .elect(allows && rounds.off_until().is_none());
        }
        match action {
            Some(Elections::OffUntil(_)) => raft.runtime_config().elect(false),
            Some(Elections::On) => raft.runtime_config().elect(clock_allows),
            None => {}
        }
        let until = rounds.off_until();
        let wait_over = async {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Wakes when the fallback would let this node stand.
        let fallback_due = async {
            match fallback {
                Some(at) if !clock_allows => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        let changed = tokio::select! {
            changed = metrics.changed() => changed,
            () = shorter_log.notified() => {
                tracing::info!("a voter's log is longer than this candidate's: standing no more for a while");
                if let Some(Elections::OffUntil(_)) = rounds.hold(Instant::now() + SHORTER_LOG_HOLD) {
                    raft.runtime_config().elect(false);
                }
                Ok(())
            }
            () = wait_over => {
                if let Some(Elections::On) = rounds.wait_over(Instant::now()) {
                    raft.runtime_config().elect(clock_allows);
                }
                Ok(())
            }
            changed = clock_within.changed(), if clock_watched => {
                // The node's clocks are gone: their last word stands.
                clock_watched = changed.is_ok();
                Ok(())
            }
            () = fallback_due => Ok(()),
        };
        if changed.is_err() {
            return; // the Raft shut down
        }
    }
}

/// Whether this node may stand as far as its clock goes: while it is
/// `within` the bound, or from `fallback` on (no leader known for
/// [`OUT_OF_BOUND_WAIT`]), if any.
fn clock_may_stand(within: bool, fallback: Option<Instant>, now: Instant) -> bool {
    within || fallback.is_some_and(|at| now >= at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_node_out_of_the_clock_bound_stands_only_after_the_fallback() {
        let t0 = Instant::now();
        assert!(clock_may_stand(true, None, t0));
        assert!(clock_may_stand(true, Some(t0 + OUT_OF_BOUND_WAIT), t0));
        // Out of the bound with a leader known: never.
        assert!(!clock_may_stand(false, None, t0 + 60_000 * MS));
        // Out of the bound, leaderless since t0: from the fallback on.
        let fallback = Some(t0 + OUT_OF_BOUND_WAIT);
        assert!(!clock_may_stand(
            false,
            fallback,
            t0 + OUT_OF_BOUND_WAIT - MS
        ));
        assert!(clock_may_stand(false, fallback, t0 + OUT_OF_BOUND_WAIT));
    }

    #[test]
    fn a_leader_hands_over_when_its_clock_drifts_out_of_the_bound() {
        let mut h = Handover::default();
        // A follower, in or out of the bound: nothing to hand over.
        assert_eq!(h.observe(false, true), None);
        assert_eq!(h.observe(false, false), None);
        // Elected within the bound, then out of it: hands over.
        assert_eq!(h.observe(true, true), None);
        assert_eq!(h.observe(true, false), Some(true));
        assert_eq!(h.observe(true, false), None);
        // Another node is elected: done.
        assert_eq!(h.observe(false, false), Some(false));
        // Elected while out of the bound (the fallback): keeps leading...
        assert_eq!(h.observe(true, false), None);
        assert_eq!(h.observe(true, false), None);
        // ...until it is back within the bound and drifts out again.
        assert_eq!(h.observe(true, true), None);
        assert_eq!(h.observe(true, false), Some(true));
        // Back within the bound before another is elected: leads on.
        assert_eq!(h.observe(true, true), Some(false));
    }

    #[tokio::test(start_paused = true)]
    async fn each_round_of_a_leaderless_candidate_is_put_off_by_a_new_draw() {
        let mut rounds = Rounds::default();
        let t0 = Instant::now();
        // A follower with a leader: nothing to do.
        assert_eq!(rounds.observe(false, 3, t0, || unreachable!()), None);
        // A candidate in term 4: elections off for the draw.
        assert_eq!(
            rounds.observe(true, 4, t0, || 900 * MS),
            Some(Elections::OffUntil(t0 + 900 * MS))
        );
        // Other changes in the same round change nothing.
        assert_eq!(
            rounds.observe(true, 4, t0 + 100 * MS, || unreachable!()),
            None
        );
        assert_eq!(rounds.wait_over(t0 + 899 * MS), None);
        assert_eq!(rounds.wait_over(t0 + 900 * MS), Some(Elections::On));
        assert_eq!(rounds.off_until(), None);
        // openraft's tick stands again: term 5, a new draw.
        assert_eq!(
            rounds.observe(true, 5, t0 + 1_000 * MS, || 1_300 * MS),
            Some(Elections::OffUntil(t0 + 2_300 * MS))
        );
        // A leader is elected before the wait is over: elections back on.
        assert_eq!(
            rounds.observe(false, 5, t0 + 1_200 * MS, || unreachable!()),
            Some(Elections::On)
        );
        assert_eq!(
            rounds.observe(false, 6, t0 + 1_300 * MS, || unreachable!()),
            None
        );
        // The same term as a candidate again later (after a leader): a new round.
        assert_eq!(
            rounds.observe(true, 5, t0 + 9_000 * MS, || 800 * MS),
            Some(Elections::OffUntil(t0 + 9_800 * MS))
        );
        // A voter's log is longer: held back longer, never shorter.
        assert_eq!(
            rounds.hold(t0 + 12_000 * MS),
            Some(Elections::OffUntil(t0 + 12_000 * MS))
        );
        assert_eq!(rounds.hold(t0 + 11_000 * MS), None);
        assert_eq!(rounds.wait_over(t0 + 9_800 * MS), None);
        assert_eq!(rounds.wait_over(t0 + 12_000 * MS), Some(Elections::On));
        // Not a candidate: nothing to hold back.
        assert_eq!(
            rounds.observe(false, 6, t0 + 12_100 * MS, || unreachable!()),
            None
        );
        assert_eq!(rounds.hold(t0 + 20_000 * MS), None);
    }
}
