//! The engine's [`Log`] over a node's [`Raft`]: whether this node leads
//! (from openraft's metrics), and proposals as `client_write`s.

use std::sync::Arc;

use crate::engine::command::Command;
use crate::engine::error::{Error, Result};
use crate::engine::replication::{BoxFuture, Log};

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
    fn leading(&self) -> Result<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state.is_leader() && m.current_leader == Some(self.id) {
            return Ok(m.last_log_index.unwrap_or(0));
        }
        Err(Error::Unavailable {
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
            match raft.client_write(Request { base, command }).await {
                Ok(response) => Ok(response.data),
                Err(e) => Err(Error::Unavailable {
                    reason: format!(
                        "node {id} could not commit the change ({e}); it may have been applied \
                         if the cluster committed it after all"
                    ),
                }),
            }
        })
    }
}
