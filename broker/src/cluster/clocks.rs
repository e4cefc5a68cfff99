//! How far apart the nodes' clocks are, and the bound a node must be
//! within to stand for election (`--max-clock-skew-ms`).
//!
//! Deadlines (visibility, delays, retention) are absolute times decided by
//! the leader's clock and replicated (`docs/cluster-design.md`, "Time").
//! A new leader whose clock is behind its predecessor's releases nothing
//! early: the engine's clock never reads earlier than the decision time of
//! the last command it applied (`Engine::now_ms`). A new leader whose clock
//! is ahead releases in-flight messages early by the difference. This
//! module bounds that difference:
//!
//! - Every node asks each other member for its clock once a
//!   [`PROBE_EVERY`] (a `clock` frame, answered with the peer's local
//!   clock) and estimates the peer's offset as NTP does: the peer's
//!   reading minus the midpoint of sending and receiving, within half the
//!   round trip. An estimate older than [`STALE`] is dropped.
//! - A node's skew is its clock minus the median clock of the voters
//!   (itself counted with offset 0; for an even count, the lower of the two
//!   middle clocks, so the median is some voter's clock and that voter is
//!   always within the bound).
//! - While its skew, either way, is more than the bound, the node does not
//!   stand for election (`elections::jitter_rounds` keeps its elections off)
//!   and logs an error, once per change. It still votes. A leader out of
//!   the bound hands its leadership over (`elections`, "A leader whose
//!   clock drifts").
//!
//! So each leader elected while its estimates hold was within the bound of
//! the voters' median (and stays within it while it serves), two successive leaders' clocks differ by at most
//! twice the bound (plus the estimates' error, half a round trip), and a
//! message is released early by at most that.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::Raft;
use super::network::{ClusterId, Dial, call, channel};
use crate::clock::Clock;

/// How often a node reads the other members' clocks.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long an estimate counts.
pub const STALE: Duration = Duration::from_secs(10);
/// How long a probe waits for its answer.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// One estimate of a peer's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    /// The peer's clock minus this node's, in ms.
    pub ms: i64,
    /// Half the round trip: the estimate's error bound, in ms.
    pub error_ms: u64,
    /// When it was made.
    pub at: Instant,
}

impl Offset {
    /// The estimate from one probe: sent at `sent` and answered with
    /// `peer` at `received` (this node's clock, ms).
    pub fn estimate(sent: u64, peer: u64, received: u64, at: Instant) -> Offset {
        let received = received.max(sent);
        let midpoint = sent + (received - sent) / 2;
        Offset {
            ms: peer as i64 - midpoint as i64,
            error_ms: (received - sent).div_ceil(2),
            at,
        }
    }
}

/// This node's clock minus the voters' median clock, from the offsets of
/// the voters measured (`offsets`: peer minus this node, ms). This node
/// counts with offset 0 when it is a voter; a voter without an estimate is
/// left out. `None` when no voter is counted.
pub fn skew(
    own: u64,
    voters: impl IntoIterator<Item = u64>,
    offsets: &BTreeMap<u64, i64>,
) -> Option<i64> {
    let mut clocks: Vec<i64> = voters
        .into_iter()
        .filter_map(|v| {
            if v == own {
                Some(0)
            } else {
                offsets.get(&v).copied()
            }
        })
        .collect();
    if clocks.is_empty() {
        return None;
    }
    clocks.sort_unstable();
    Some(-clocks[(clocks.len() - 1) / 2])
}

/// A node's view of the cluster's clocks.
#[derive(Debug)]
pub struct Clocks {
    /// `--max-clock-skew-ms`.
    pub max_skew_ms: u64,
    offsets: Mutex<BTreeMap<u64, Offset>>,
    /// This node's last computed skew (ms), if any.
    skew: Mutex<Option<i64>>,
    /// Whether this node's skew is within the bound (true until measured).
    within: watch::Sender<bool>,
}

impl Clocks {
    pub fn new(max_skew_ms: u64) -> Clocks {
        Clocks {
            max_skew_ms,
            offsets: Mutex::default(),
            skew: Mutex::default(),
            within: watch::Sender::new(true),
        }
    }

    /// Whether this node may stand for election, as it changes.
    pub fn within_bound(&self) -> watch::Receiver<bool> {
        self.within.subscribe()
    }

    /// The estimates that still count, by node.
    pub fn offsets(&self) -> BTreeMap<u64, Offset> {
        let now = Instant::now();
        self.offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, o)| now.duration_since(o.at) <= STALE)
            .map(|(id, o)| (*id, *o))
            .collect()
    }

    /// This node's skew as last computed (ms), if any.
    pub fn skew_ms(&self) -> Option<i64> {
        *self.skew.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an estimate of node `id`'s clock.
    pub fn record(&self, id: u64, offset: Offset) {
        self.offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, offset);
    }

    /// Recomputes this node's skew against `voters`; returns whether it is
    /// within the bound, and logs when that changes.
    pub fn update(&self, own: u64, voters: impl IntoIterator<Item = u64>) -> bool {
        let offsets = self
            .offsets()
            .into_iter()
            .map(|(id, o)| (id, o.ms))
            .collect();
        let skew = skew(own, voters, &offsets);
        *self.skew.lock().unwrap_or_else(|e| e.into_inner()) = skew;
        let within = skew.is_none_or(|s| s.unsigned_abs() <= self.max_skew_ms);
        let changed = self
            .within
            .send_if_modified(|w| std::mem::replace(w, within) != within);
        if changed && !within {
            tracing::error!(
                skew_ms = skew,
                max_clock_skew_ms = self.max_skew_ms,
                "this node's clock is further from the voters' median clock than --max-clock-skew-ms: \
                 it does not stand for election until it is back within the bound (check its NTP)"
            );
        } else if changed {
            tracing::info!(
                skew_ms = skew,
                "this node's clock is within --max-clock-skew-ms again: it may stand for election"
            );
        }
        within
    }
}

/// Reads the other members' clocks every [`PROBE_EVERY`] and updates
/// `clocks`, until the Raft shuts down.
pub async fn probe(
    raft: Raft,
    id: u64,
    clock: Clock,
    cluster: ClusterId,
    dial: Dial,
    clocks: std::sync::Arc<Clocks>,
) {
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() {
            return;
        }
        let membership = metrics.membership_config.membership().clone();
        let mut probes = Vec::new();
        for (peer, member) in membership.nodes() {
            if *peer == id {
                continue;
            }
            let channel = match channels.get(&member.addr) {
                Some(c) => c.clone(),
                None => match channel(&member.addr, &dial) {
                    Ok(c) => channels.entry(member.addr.clone()).or_insert(c).clone(),
                    Err(_) => continue,
                },
            };
            let (peer, cluster) = (*peer, cluster.clone());
            probes.push(async move {
                let sent = clock.now_ms();
                let answer = tokio::time::timeout(
                    PROBE_WAIT,
                    call::<(), u64>(channel, &cluster, "clock", &()),
                )
                .await;
                match answer {
                    Ok(Ok(peer_ms)) => Some((
                        peer,
                        Offset::estimate(sent, peer_ms, clock.now_ms(), Instant::now()),
                    )),
                    _ => None,
                }
            });
        }
        for (peer, offset) in futures::future::join_all(probes)
            .await
            .into_iter()
            .flatten()
        {
            clocks.record(peer, offset);
        }
        clocks.update(id, membership.voter_ids());
        // Channels to nodes no longer members are dropped.
        channels.retain(|addr, _| membership.nodes().any(|(_, m)| &m.addr == addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_estimate_takes_the_midpoint_of_the_round_trip() {
        let at = Instant::now();
        let o = Offset::estimate(1_000, 1_700, 1_010, at);
        assert_eq!((o.ms, o.error_ms), (695, 5));
        let o = Offset::estimate(1_000, 400, 1_003, at);
        assert_eq!((o.ms, o.error_ms), (-601, 2));
        // A clock read that went backwards counts as no round trip.
        assert_eq!(Offset::estimate(1_000, 1_000, 990, at).ms, 0);
    }

    #[test]
    fn skew_is_against_the_median_voter() {
        let offsets = |pairs: &[(u64, i64)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        // Three voters, this one (1) 2 s ahead of the other two.
        assert_eq!(
            skew(1, [1, 2, 3], &offsets(&[(2, -2_000), (3, -2_010)])),
            Some(2_000)
        );
        // One peer far ahead, one in step: this node is the median's neighbour.
        assert_eq!(
            skew(1, [1, 2, 3], &offsets(&[(2, 5_000), (3, 10)])),
            Some(-10)
        );
        // Two voters: the lower clock is the median; the one ahead is off by
        // the whole difference, the one behind by none.
        assert_eq!(skew(1, [1, 2], &offsets(&[(2, -900)])), Some(900));
        assert_eq!(skew(2, [1, 2], &offsets(&[(1, 900)])), Some(0));
        // Four voters in two pairs 2 s apart: the lower pair is within.
        assert_eq!(
            skew(1, [1, 2, 3, 4], &offsets(&[(2, 0), (3, 2_000), (4, 2_000)])),
            Some(0)
        );
        assert_eq!(
            skew(
                3,
                [1, 2, 3, 4],
                &offsets(&[(1, -2_000), (2, -2_000), (4, 0)])
            ),
            Some(2_000)
        );
        // Peers not measured are left out; a learner counts no clock of its own.
        assert_eq!(skew(1, [1, 2, 3], &offsets(&[])), Some(0));
        assert_eq!(
            skew(4, [1, 2, 3], &offsets(&[(1, 300), (2, 200), (3, 100)])),
            Some(-200)
        );
        assert_eq!(skew(4, [1, 2, 3], &offsets(&[])), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_out_of_the_bound_may_not_stand_until_it_is_back() {
        let clocks = Clocks::new(500);
        let mut within = clocks.within_bound();
        assert!(*within.borrow_and_update(), "unmeasured: may stand");
        let at = Instant::now();
        clocks.record(
            2,
            Offset {
                ms: -800,
                error_ms: 1,
                at,
            },
        );
        clocks.record(
            3,
            Offset {
                ms: -750,
                error_ms: 1,
                at,
            },
        );
        assert!(!clocks.update(1, [1, 2, 3]));
        assert!(within.has_changed().unwrap());
        assert!(!*within.borrow_and_update());
        assert_eq!(clocks.skew_ms(), Some(750));
        // Estimates go stale: without any, the node may stand again.
        tokio::time::advance(STALE + Duration::from_millis(1)).await;
        assert!(clocks.offsets().is_empty());
        assert!(clocks.update(1, [1, 2, 3]));
        assert!(*within.borrow_and_update());
        // Within the bound either way.
        let at = Instant::now();
        clocks.record(
            2,
            Offset {
                ms: 450,
                error_ms: 1,
                at,
            },
        );
        clocks.record(
            3,
            Offset {
                ms: 500,
                error_ms: 1,
                at,
            },
        );
        assert!(clocks.update(1, [1, 2, 3]));
        assert!(!within.has_changed().unwrap(), "no change, no notification");
        assert_eq!(clocks.skew_ms(), Some(-450));
    }
}
