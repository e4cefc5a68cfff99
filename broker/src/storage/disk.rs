//! The data dir's free space, and the floor below which the broker takes
//! no new messages (`--min-free-disk`), as RabbitMQ's disk alarm does.
//!
//! A full disk fails every write, deletes too, and RocksDB needs room to
//! write tombstones and to compact. So below the floor, sends, publishes
//! and redrives (what adds data) are refused with RESOURCE_EXHAUSTED,
//! while receives, deletes, purges and queue deletion go on: they are how
//! consumers and operators free space. [`DiskSpace::watch`] reads the free
//! space every second (and logs each crossing of the floor, not each
//! refusal); [`DiskSpace::check`] is what the engine asks before a change
//! that adds data. A burst that fills the disk between two readings fails
//! in RocksDB with "No space left on device", which the engine reports as
//! RESOURCE_EXHAUSTED too (`engine::Error::DiskFull`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the free space is read.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// The data dir's free space as last read, and the floor.
#[derive(Debug)]
pub struct DiskSpace {
    /// 0: no floor.
    floor: AtomicU64,
    /// Bytes free for the broker's user when last read; `u64::MAX` until
    /// read.
    free: AtomicU64,
    /// Below the floor at the last reading.
    low: AtomicBool,
}

/// Below the floor: what [`DiskSpace::check`] refuses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BelowFloor {
    pub free: u64,
    pub floor: u64,
}

impl Default for DiskSpace {
    fn default() -> DiskSpace {
        DiskSpace {
            floor: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        }
    }
}

impl DiskSpace {
    /// Sets the floor (0: none); it applies from the next reading.
    pub fn set_floor(&self, floor: u64) {
        self.floor.store(floor, Ordering::Relaxed);
    }

    /// The floor, 0 when there is none.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Relaxed)
    }

    /// Bytes free at the last reading (`None` before the first).
    pub fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|&f| f != u64::MAX)
    }

    /// Whether the last reading was below the floor.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// `Err` while below the floor: nothing that adds data may be written.
    pub fn check(&self) -> Result<(), BelowFloor> {
        if self.is_low() {
            return Err(BelowFloor {
                free: self.free.load(Ordering::Relaxed),
                floor: self.floor(),
            });
        }
        Ok(())
    }

    /// Records a reading of `free` bytes; returns whether the broker is now
    /// below the floor, when that changed.
    pub fn observe(&self, free: u64) -> Option<bool> {
        self.free.store(free, Ordering::Relaxed);
        let floor = self.floor();
        let low = floor > 0 && free < floor;
        (self.low.swap(low, Ordering::Relaxed) != low).then_some(low)
    }

    /// Reads `dir`'s free space every [`WATCH_EVERY`] until `stop`,
    /// logging each crossing of the floor.
    pub async fn watch(&self, dir: PathBuf, stop: impl Future<Output = ()>) {
        let watch = async {
            let mut failed = false;
            loop {
                match free_bytes(&dir) {
                    Ok(free) => {
                        failed = false;
                        match self.observe(free) {
                            Some(true) => tracing::warn!(
                                free,
                                min_free_disk = self.floor(),
                                dir = %dir.display(),
                                "disk space below min_free_disk: refusing sends, publishes and redrives until space is freed; receives and deletes go on"
                            ),
                            Some(false) => tracing::info!(
                                free,
                                min_free_disk = self.floor(),
                                "disk space above min_free_disk again: sends, publishes and redrives resume"
                            ),
                            None => {}
                        }
                    }
                    Err(e) if !failed => {
                        failed = true;
                        tracing::warn!(error = %e, dir = %dir.display(), "cannot read the data dir's free space");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(WATCH_EVERY).await;
            }
        };
        tokio::select! {
            () = watch => {}
            () = stop => {}
        }
    }
}

/// Bytes free on the file system of `dir` for an unprivileged user (what
/// `df` shows as available).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Whether a RocksDB error is the file system being full.
pub fn is_no_space(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("NoSpace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_crossed_both_ways_once_each() {
        let disk = DiskSpace::default();
        assert_eq!(disk.free(), None);
        assert_eq!(disk.observe(100), None, "no floor: never low");
        assert!(disk.check().is_ok());
        disk.set_floor(50);
        assert_eq!(disk.observe(60), None);
        assert_eq!(disk.observe(49), Some(true));
        assert_eq!(disk.observe(10), None, "still low: no new crossing");
        assert_eq!(
            disk.check(),
            Err(BelowFloor {
                free: 10,
                floor: 50
            })
        );
        assert_eq!(disk.observe(50), Some(false));
        assert!(disk.check().is_ok());
        assert_eq!(disk.free(), Some(50));
    }

    #[test]
    fn reads_the_free_space_of_a_real_dir() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert!(free_bytes(dir.path()).expect("statvfs") > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
