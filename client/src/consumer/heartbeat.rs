//! The heartbeat: extends the visibility of every message held for longer
//! than half its visibility timeout, checking every quarter of it, so that
//! a slow handler never sees its message handed to another consumer.
//!
//! It queues each extension while it holds the lease table's lock (see
//! the lease table's invariants): an extension never follows the
//! settlement of its message.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::acker::Op;
use super::pipeline::Core;

/// Extends the visibility of every message held for more than half its
/// visibility timeout; checks every quarter of it.
pub(super) async fn heartbeat(core: Arc<Core>, enabled: bool, stop: CancellationToken) {
    if !enabled {
        return stop.cancelled().await;
    }
    let visibility = Duration::from_secs(u64::from(core.visibility));
    let mut ticks = tokio::time::interval(visibility / 4);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        // Queue under the lock: see the module's invariants.
        let mut table = core.table();
        for lease in table.leases.values_mut() {
            if lease.expires.saturating_duration_since(now) <= visibility / 2 {
                lease.expires = now + visibility;
                let _ = core.ops.send(Op::Visibility {
                    receipt_handle: lease.receipt_handle.clone(),
                    seconds: core.visibility,
                    extend: true,
                });
                core.counters.extended.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
