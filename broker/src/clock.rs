//! Wall-clock milliseconds that follow tokio's clock.
//!
//! Deadlines are persisted as Unix milliseconds (they must survive a
//! restart), while waiting uses `tokio::time`. The clock reads the wall
//! clock once and then advances with tokio's `Instant`, so tests that pause
//! tokio time (`tokio::time::pause()`) control the engine's notion of now.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix milliseconds at `base`.
    base_ms: u64,
    base: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        let base_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            base_ms,
            base: Instant::now(),
        }
    }

    /// This clock moved by `offset_ms` (tests: a node whose clock is off).
    pub fn shifted(self, offset_ms: i64) -> Clock {
        Clock {
            base_ms: self.base_ms.saturating_add_signed(offset_ms),
            base: self.base,
        }
    }

    /// Now, in Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base.elapsed().as_millis() as u64
    }

    /// The tokio instant at which the clock reads `ms`.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms.saturating_sub(self.base_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = Clock::new();
        let start = clock.now_ms();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.now_ms(), start + 30_000);
        assert_eq!(
            clock.instant_at(start + 1_000),
            clock.base + Duration::from_secs(1)
        );
    }
}
