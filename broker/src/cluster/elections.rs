//! Split votes that repeat: why they happen with openraft 0.9, and how a
//! node breaks them ([`break_ties`]).
//!
//! openraft 0.9 draws a node's election timeout once, when the node starts
//! (in `election_timeout_min..election_timeout_max`), and checks it on its
//! tick, every 150 ms (1.5 heartbeats). A candidate thus stands again every
//! whole number of ticks, the same number every round. Two nodes whose
//! timeouts round up to the same number of ticks (about one pair in four,
//! with 0.75 to 1.25 s) and whose ticks fall within a vote's round trip of
//! each other (a few ms; tens on a busy machine) stand at the same moments
//! round after round: each votes for itself, refuses the other, and no
//! leader is elected until their ticks drift apart. That was seen here as
//! a leader's death not followed by a new leader within 5 s (the cluster
//! suite's failover bound) in about one kill in thirty.
//!
//! The usual Raft answer is a new random timeout each round. [`break_ties`]
//! gives one: a node that has been a candidate without a leader for a time
//! drawn afresh each round stands again at once (`Trigger::elect`), at a
//! moment that is not on its tick; its later rounds keep that offset, so
//! the two nodes' rounds no longer coincide. It changes nothing while a
//! leader is known: the first election after a leader's loss is still
//! openraft's own.

use std::ops::Range;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use super::Raft;

/// When a node stands again, from what it sees of its Raft.
#[derive(Debug, Default)]
pub struct TieBreak {
    /// When this node became a candidate without a leader, and how long
    /// it waits from then before it stands again; `None` while it is not.
    waiting: Option<(Instant, Duration)>,
}

impl TieBreak {
    /// What the node sees changed: `leaderless_candidate` is whether it is
    /// a candidate and knows no leader. Returns when to stand again, if it
    /// should; `draw` gives a fresh wait for a new round.
    pub fn observe(
        &mut self,
        leaderless_candidate: bool,
        now: Instant,
        draw: impl FnOnce() -> Duration,
    ) -> Option<Instant> {
        if !leaderless_candidate {
            self.waiting = None;
            return None;
        }
        let (since, wait) = *self.waiting.get_or_insert_with(|| (now, draw()));
        Some(since + wait)
    }

    /// The node stood again at `now`: the next round waits from there.
    pub fn stood(&mut self, now: Instant, draw: impl FnOnce() -> Duration) {
        self.waiting = Some((now, draw()));
    }
}

/// Runs [`TieBreak`] over `raft` until the Raft shuts down: a candidate
/// without a leader for a random time in `timeouts` (ms, drawn afresh each
/// round) stands again.
pub async fn break_ties(raft: Raft, timeouts: Range<u64>) {
    let mut metrics = raft.metrics();
    let mut tie = TieBreak::default();
    let draw = || Duration::from_millis(rand::random_range(timeouts.clone()));
    loop {
        let deadline = {
            let m = metrics.borrow_and_update();
            let leaderless = m.state == ServerState::Candidate && m.current_leader.is_none();
            tie.observe(leaderless, Instant::now(), draw)
        };
        let changed = match deadline {
            None => metrics.changed().await,
            Some(at) => match tokio::time::timeout_at(at, metrics.changed()).await {
                Ok(changed) => changed,
                Err(_) => {
                    tracing::info!("a candidate without a leader for a while: standing again");
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                    tie.stood(Instant::now(), draw);
                    Ok(())
                }
            },
        };
        if changed.is_err() {
            return; // the Raft shut down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_leaderless_candidate_stands_again_after_a_wait_drawn_each_round() {
        let mut tie = TieBreak::default();
        let t0 = Instant::now();
        // A follower with a leader: nothing to do.
        assert_eq!(tie.observe(false, t0, || unreachable!()), None);
        // A candidate: the wait is drawn once, counted from when it began,
        // whatever changes meanwhile (its term, on openraft's tick).
        assert_eq!(tie.observe(true, t0, || 900 * MS), Some(t0 + 900 * MS));
        assert_eq!(
            tie.observe(true, t0 + 300 * MS, || unreachable!()),
            Some(t0 + 900 * MS)
        );
        // It stood: the next round waits a new draw from then.
        tie.stood(t0 + 900 * MS, || 800 * MS);
        assert_eq!(
            tie.observe(true, t0 + 950 * MS, || unreachable!()),
            Some(t0 + 1700 * MS)
        );
        // A leader is known: the next candidacy starts a new wait.
        assert_eq!(tie.observe(false, t0 + 1000 * MS, || unreachable!()), None);
        assert_eq!(
            tie.observe(true, t0 + 5000 * MS, || 1000 * MS),
            Some(t0 + 6000 * MS)
        );
    }
}
