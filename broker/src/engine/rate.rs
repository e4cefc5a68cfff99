//! The token bucket behind a queue's `max_receive_rate`: all receivers of
//! the queue together take at most `rate` messages per second, with up to
//! `burst` at once after an idle period.
//!
//! It lives under the engine lock with the queue it limits and reads the
//! engine's clock (milliseconds that follow tokio's clock, so paused-time
//! tests drive it), which is why it is not the `governor` crate: governor
//! keeps its own clock and its own synchronisation.

#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    /// Tokens at `updated_ms`, in thousandths of a message (exact integer math).
    milli_tokens: u64,
    updated_ms: u64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now_ms: u64) -> TokenBucket {
        TokenBucket {
            rate,
            burst: burst.max(rate),
            milli_tokens: u64::from(burst.max(rate)) * 1000,
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let cap = u64::from(self.burst) * 1000;
        self.milli_tokens = (self.milli_tokens + elapsed * u64::from(self.rate)).min(cap);
        self.updated_ms = now_ms;
    }

    /// How many of `wanted` messages may be taken now (whole tokens).
    pub fn available(&mut self, wanted: u32, now_ms: u64) -> u32 {
        self.refill(now_ms);
        ((self.milli_tokens / 1000) as u32).min(wanted)
    }

    /// Takes `n` tokens, which `available` allowed.
    pub fn take(&mut self, n: u32) {
        self.milli_tokens = self.milli_tokens.saturating_sub(u64::from(n) * 1000);
    }

    /// When the next whole token is there.
    pub fn next_token_at(&self) -> u64 {
        let missing = 1000u64.saturating_sub(self.milli_tokens % 1000);
        let missing = if self.milli_tokens >= 1000 {
            0
        } else {
            missing
        };
        self.updated_ms + missing.div_ceil(u64::from(self.rate.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_full_then_refills_at_the_rate() {
        let mut b = TokenBucket::new(10, 20, 0);
        assert_eq!(b.available(100, 0), 20);
        b.take(20);
        assert_eq!(b.available(100, 0), 0);
        assert_eq!(b.next_token_at(), 100);
        assert_eq!(b.available(100, 99), 0);
        assert_eq!(b.available(100, 100), 1);
        assert_eq!(b.available(100, 1_000), 10);
        assert_eq!(b.available(100, 60_000), 20, "never above the burst");
    }

    #[test]
    fn over_any_window_takes_at_most_rate_times_time_plus_burst() {
        let mut b = TokenBucket::new(7, 7, 0);
        let mut taken = 0u64;
        for now in (0..10_000).step_by(13) {
            let n = b.available(5, now);
            b.take(n);
            taken += u64::from(n);
        }
        assert!(taken <= 7 * 10 + 7, "{taken}");
        assert!(taken >= 7 * 10 - 7, "{taken}");
    }
}
