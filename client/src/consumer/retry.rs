//! Retrying, shared with the publisher: which errors are worth retrying
//! ([`is_transient`]), exponential backoff with jitter ([`backoff`]), and
//! copies of errors ([`copy`]) for the error a consumer or publisher
//! reports to several callers; and whole seconds rounded up, as the
//! broker takes timeouts.

use std::time::Duration;

use crate::Error;

/// Backoff between attempts after a transient error (broker unreachable).
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(100);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Whether retrying may fix the error: the broker is unreachable,
/// restarting, or the call was cut off. Not for bad requests or a missing
/// queue.
pub(crate) fn is_transient(error: &Error) -> bool {
    use tonic::Code;
    matches!(
        error.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// Exponential backoff with jitter: `min * 2^(attempt - 1)` capped at
/// `max`, then uniformly between half of it and all of it.
pub(crate) fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = min.saturating_mul(1 << exponent).min(max);
    let half = full / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// `duration` in whole seconds, rounded up.
pub(super) fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// A copy of an error (`Error` is not `Clone`: `tonic::Status` is not).
pub(crate) fn copy(error: &Error) -> Error {
    match error {
        Error::Connect { addr, reason } => Error::Connect {
            addr: addr.clone(),
            reason: reason.clone(),
        },
        other => Error::from(tonic::Status::new(other.code(), other.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(10);
        for _ in 0..100 {
            for (attempt, full) in [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (40, 10)] {
                let full = Duration::from_secs(full);
                let delay = backoff(min, max, attempt);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
        assert_eq!(backoff(Duration::ZERO, max, 5), Duration::ZERO);
    }

    #[test]
    fn backoff_jitter_spreads_retries() {
        let delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| backoff(Duration::from_secs(1), Duration::from_secs(60), 4))
            .collect();
        assert!(delays.len() > 1, "no jitter: {delays:?}");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_seconds(Duration::ZERO), 0);
        assert_eq!(ceil_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ceil_seconds(Duration::from_secs(2)), 2);
        assert_eq!(ceil_seconds(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn transient_errors_are_retried_and_others_are_not() {
        assert!(is_transient(&Error::Unavailable("down".into())));
        assert!(is_transient(&Error::from(tonic::Status::unknown("h2"))));
        assert!(!is_transient(&Error::NotFound("queue".into())));
        assert!(!is_transient(&Error::InvalidArgument("bad".into())));
    }

    #[test]
    fn copies_keep_code_and_message() {
        let error = copy(&Error::NotFound("queue 'x' does not exist".into()));
        assert!(matches!(&error, Error::NotFound(m) if m == "queue 'x' does not exist"));
        let error = copy(&Error::Connect {
            addr: "a".into(),
            reason: "r".into(),
        });
        assert!(matches!(error, Error::Connect { .. }));
    }
}
