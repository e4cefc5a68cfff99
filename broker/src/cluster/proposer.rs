//! The engine's [`Log`] over a node's [`Raft`]: whether this node leads
//! (from openraft's metrics), and proposals as `client_write`s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::engine::error::{Error, Result};
use crate::engine::replication::{BoxFuture, Leading, Log, NotLeading, Proposal};

/// A leader that has not heard from a majority for longer than this
/// decides nothing and serves nothing. It is shorter than the least time
/// a follower waits before standing for election (`raft_config`: 1.1 s), so
/// a new leader cannot be elected while the old one still serves.
/// Heartbeats go every 100 ms.
pub const LEASE_MS: u64 = 500;

/// How long a proposal may wait for its commit.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

use openraft::RaftMetrics;

use super::{Member, Raft, Request};

/// Node `id`'s Raft as the log its engine decides into.
pub struct RaftLog {
    pub id: u64,
    pub raft: Raft,
    lease: Lease,
}

impl RaftLog {
    pub fn new(id: u64, raft: Raft, lease: Lease) -> Arc<RaftLog> {
        Arc::new(RaftLog { id, raft, lease })
    }
}

/// How old openraft's latest metrics are. The time since a majority acked
/// that they carry was measured when they were reported, and openraft
/// reports only when its core runs (every heartbeat tick, about 150 ms,
/// unless the core is held up): the lease counts the time since the
/// report too, so a leader whose metrics stall does not keep serving on a
/// stale figure.
///
/// It also carries whether this node, leading, is handing its leadership
/// over (`elections::Handover`: its clock drifted out of the bound); a
/// leader handing over serves nothing either.
#[derive(Clone)]
pub struct Lease {
    base: std::time::Instant,
    /// When the latest report was seen, in ms since `base`.
    reported_ms: Arc<AtomicU64>,
    /// Set while this node hands its leadership over.
    pub handing_over: Arc<AtomicBool>,
}

impl Lease {
    /// Starts watching `raft`'s reports (a task that ends with the Raft).
    pub fn watch(raft: &Raft) -> Lease {
        let lease = Lease {
            base: std::time::Instant::now(),
            reported_ms: Arc::default(),
            handing_over: Arc::default(),
        };
        let mut metrics = raft.metrics();
        let seen = lease.clone();
        tokio::spawn(async move {
            while metrics.changed().await.is_ok() {
                seen.reported_ms.store(seen.now_ms(), Ordering::Relaxed);
            }
        });
        lease
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Milliseconds since openraft last reported its metrics (as seen by
    /// the watching task: late by its scheduling delay at most).
    fn since_report_ms(&self) -> u64 {
        self.now_ms()
            .saturating_sub(self.reported_ms.load(Ordering::Relaxed))
    }

    /// On a leader: how long ago a majority last acknowledged it, by its
    /// metrics `m` and their age (openraft reports them on changes only,
    /// so a leader cut off stops reporting while the age grows).
    pub fn quorum_ack_age_ms(&self, m: &RaftMetrics<u64, Member>) -> Option<u64> {
        m.millis_since_quorum_ack
            .map(|ms| ms.saturating_add(self.since_report_ms()))
    }
}

/// Who serves requests, as node `id` sees it from its Raft metrics `m`.
pub enum Leadership {
    /// This node leads and holds its lease.
    Leads,
    /// This node leads but may not serve: it has not heard from a majority
    /// within the lease, or it is handing its leadership over. Why, to
    /// tell the client.
    Held(String),
    /// Another node leads.
    Other(u64),
    /// No leader is known: why, to tell the client.
    Unknown(String),
}

/// [`Leadership`] of node `id` by `m`, reported to `lease`: the one rule
/// for deciding (`RaftLog::leading`), for serving (`forward`) and for
/// being ready (`Node::ready`).
pub fn leadership(id: u64, m: &RaftMetrics<u64, Member>, lease: &Lease) -> Leadership {
    let since_ack = lease.quorum_ack_age_ms(m);
    match m.current_leader {
        Some(l) if l == id && m.state.is_leader() && lease.handing_over.load(Ordering::Relaxed) => {
            Leadership::Held(handing_over(id))
        }
        Some(l) if l == id && m.state.is_leader() => match since_ack {
            Some(ms) if ms <= LEASE_MS => Leadership::Leads,
            since => Leadership::Held(format!(
                "node {id} leads but has not heard from a majority of the cluster for {}: it \
                 may be cut off from it; retry",
                since.map_or("its whole term".to_string(), |ms| format!("{ms} ms"))
            )),
        },
        Some(l) if l != id => Leadership::Other(l),
        _ => Leadership::Unknown(format!(
            "node {id} knows no leader: an election is under way, or this node cannot reach a \
             majority of the cluster; retry"
        )),
    }
}

/// Why leader `id` serves nothing while it hands its leadership over.
pub fn handing_over(id: u64) -> String {
    format!(
        "node {id} leads, but its clock is further than --max-clock-skew-ms from the other \
         voters': it is handing its leadership over; retry"
    )
}

impl Log for RaftLog {
    fn leading(&self) -> std::result::Result<Leading, NotLeading> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let (reason, wait) = match leadership(self.id, &m, &self.lease) {
            Leadership::Leads => {
                return Ok(Leading {
                    last_index: m.last_log_index.unwrap_or(0),
                    term: m.current_term,
                });
            }
            Leadership::Held(reason) => (reason, true),
            Leadership::Other(leader) => (
                format!("node {} does not lead; node {leader} does", self.id),
                false,
            ),
            Leadership::Unknown(reason) => (reason, false),
        };
        Err(NotLeading { reason, wait })
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        let mut metrics = self.raft.metrics();
        metrics.borrow_and_update();
        Box::pin(async move {
            let _ = metrics.changed().await;
        })
    }

    fn propose(&self, proposal: Proposal) -> BoxFuture<'static, Result<bool>> {
        let raft = self.raft.clone();
        let id = self.id;
        Box::pin(async move {
            let write = raft.client_write(Request(proposal));
            match tokio::time::timeout(COMMIT_WAIT, write).await {
                Ok(Ok(response)) => Ok(response.data),
                Err(_) => Err(Error::Unavailable {
                    reason: format!(
                        "node {id} could not commit the change within {} s (it may be cut off \
                         from a majority); it may still be applied if the cluster commits it",
                        COMMIT_WAIT.as_secs()
                    ),
                }),
                Ok(Err(e)) => Err(Error::Unavailable {
                    reason: format!(
                        "node {id} could not commit the change ({e}); it may have been applied \
                         if the cluster committed it after all"
                    ),
                }),
            }
        })
    }
}
