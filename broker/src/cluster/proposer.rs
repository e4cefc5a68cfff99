//! The engine's [`Log`] over a node's [`Raft`]: whether this node leads
//! (from openraft's metrics), and proposals as `client_write`s.

use std::sync::Arc;

use crate::engine::command::Command;
use crate::engine::error::{Error, Result};
use crate::engine::replication::{BoxFuture, Log, NotLeading};

/// A leader that has not heard from a majority for longer than this
/// decides nothing and serves nothing. It is shorter than the least time
/// a follower waits before standing for election (`raft_config`: 0.75 s), so
/// a new leader cannot be elected while the old one still serves.
/// Heartbeats go every 100 ms.
pub const LEASE_MS: u64 = 500;

/// How long a proposal may wait for its commit.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

use super::{Raft, Request};

/// Node `id`'s Raft as the log its engine decides into.
pub struct RaftLog {
    pub id: u64,
    pub raft: Raft,
}

impl RaftLog {
    pub fn new(id: u64, raft: Raft) -> Arc<RaftLog> {
        Arc::new(RaftLog { id, raft })
    }
}

impl Log for RaftLog {
    fn leading(&self) -> std::result::Result<u64, NotLeading> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state.is_leader() && m.current_leader == Some(self.id) {
            return match m.millis_since_quorum_ack {
                Some(ms) if ms <= LEASE_MS => Ok(m.last_log_index.unwrap_or(0)),
                since => Err(NotLeading {
                    reason: format!(
                        "node {} leads but has not heard from a majority of the cluster for {}: \
                         it may be cut off from it; retry",
                        self.id,
                        since.map_or("its whole term".to_string(), |ms| format!("{ms} ms"))
                    ),
                    wait: true,
                }),
            };
        }
        Err(NotLeading {
            reason: match m.current_leader {
                Some(leader) if leader != self.id => {
                    format!("node {} does not lead; node {leader} does", self.id)
                }
                _ => format!(
                    "node {} knows no leader: an election is under way, or this node cannot \
                     reach a majority of the cluster",
                    self.id
                ),
            },
            wait: false,
        })
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        let mut metrics = self.raft.metrics();
        metrics.borrow_and_update();
        Box::pin(async move {
            let _ = metrics.changed().await;
        })
    }

    fn propose(&self, base: u64, command: Command) -> BoxFuture<'static, Result<bool>> {
        let raft = self.raft.clone();
        let id = self.id;
        Box::pin(async move {
            let write = raft.client_write(Request { base, command });
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
