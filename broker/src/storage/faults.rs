//! Injected storage failures, for tests of what the broker does when its
//! disk fails: the next `n` writes, or the next `n` WAL syncs, fail as an
//! I/O error would, before RocksDB is called. A store opened without
//! [`Faults`] (every store but a test's) never checks them.
//!
//! What the store does with a failure, injected or real, is in the
//! module docs of `storage` ("Failures").

use std::sync::atomic::{AtomicU32, Ordering};

/// Failures to inject, armed at any time by a test holding an `Arc` of it.
#[derive(Debug, Default)]
pub struct Faults {
    writes: AtomicU32,
    syncs: AtomicU32,
}

impl Faults {
    /// The next `n` writes fail.
    pub fn fail_writes(&self, n: u32) {
        self.writes.store(n, Ordering::SeqCst);
    }

    /// The next `n` WAL syncs fail (then syncs work again: the
    /// fsync-fails-then-succeeds case).
    pub fn fail_syncs(&self, n: u32) {
        self.syncs.store(n, Ordering::SeqCst);
    }

    /// Whether this write fails (using up one armed failure).
    pub(super) fn write_fails(&self) -> bool {
        take(&self.writes)
    }

    /// Whether this sync fails (using up one armed failure).
    pub(super) fn sync_fails(&self) -> bool {
        take(&self.syncs)
    }
}

fn take(armed: &AtomicU32) -> bool {
    armed
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
