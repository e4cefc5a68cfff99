//! Retention and the scheduler: the background task that fires timers
//! (delays, visibility timeouts, retry backoff) when due, and deletes
//! messages older than their queue's retention period.

use std::sync::Arc;
use std::time::Duration;

use super::command::{self, Op};
use super::error::Result;
use super::replication::Kind;
use super::{CHUNK, Engine};

impl Engine {
    /// [`CHUNK`] per write. Returns how many were deleted.
    pub async fn expire(&self) -> Result<u64> {
        let done = {
            let mut st = self.decide(Kind::Pipelined).await?;
            let now = self.now_ms();
            let mut messages = Vec::new();
            for q in st.queues.values() {
                let cutoff =
                    now.saturating_sub(u64::from(q.attributes.message_retention_seconds) * 1000);
                for &(sent, seq) in &q.index.by_sent {
                    if sent > cutoff || messages.len() >= CHUNK {
                        break;
                    }
                    messages.push(command::MessageRef {
                        queue_id: q.id.0,
                        seq: seq.0,
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
            (expired, self.apply(&mut st, &cmd)?)
        };
        self.committed(done.1).await?;
        Ok(done.0)
    }

    /// The background task: fires timers (delays, visibility timeouts) when
    /// due and expires messages once a second, until shutdown.
    pub async fn run_scheduler(self: Arc<Self>) {
        let mut next_sweep = tokio::time::Instant::now();
        // The sweep runs beside the timers: in cluster mode it may wait for
        // a proposal, and timers must not wait with it.
        let mut sweep: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let next_timer = {
                let mut st = self.lock();
                st.promote_due(self.now_ms());
                st.timers.first().map(|t| self.clock.instant_at(t.at))
            };
            let idle = sweep.as_ref().is_none_or(|s| s.is_finished());
            if tokio::time::Instant::now() >= next_sweep && idle {
                let engine = self.clone();
                sweep = Some(tokio::spawn(async move {
                    match engine.expire().await {
                        Ok(0) => {}
                        // A follower: its leader expires.
                        Err(super::Error::Unavailable { .. }) => {}
                        Ok(n) => tracing::debug!(expired = n, "retention deleted messages"),
                        Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                    }
                }));
                next_sweep = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            let wake = next_timer.map_or(next_sweep, |t| t.min(next_sweep));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.scheduler.notified() => {}
                _ = self.shutdown.cancelled() => {
                    if let Some(s) = sweep {
                        let _ = s.await;
                    }
                    return;
                }
            }
        }
    }
}
