//! How long a long poll may wait for a client that sent a deadline.
//!
//! A client's deadline travels as `grpc-timeout`, a duration the broker
//! counts from when the request arrived, so the broker's idea of the
//! deadline is later than the client's by the time the request took to get
//! here. A long poll still waiting when the client gives up could claim a
//! message for a caller that is gone: the message would stay in flight for
//! its visibility timeout, its receive count raised. So a long poll stops
//! waiting [`margin`] before the propagated deadline; a poll that cannot
//! answer in time takes nothing.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The most a long poll ends before the client's deadline.
pub const MAX_MARGIN: Duration = Duration::from_millis(500);

/// How early a long poll stops waiting before a deadline `timeout` away:
/// [`MAX_MARGIN`], or half the timeout when that is shorter (a 400 ms
/// deadline still gets a 200 ms wait).
pub fn margin(timeout: Duration) -> Duration {
    MAX_MARGIN.min(timeout / 2)
}

/// The longest a receive may wait for the caller of `metadata`: its
/// `grpc-timeout` less the [`margin`]; `None` without a (valid) deadline.
pub fn wait_limit(metadata: &MetadataMap) -> Option<Duration> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    Some(timeout - margin(timeout))
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`), as the gRPC over HTTP/2 spec writes it.
/// (Its caller's `to_str` lets only visible ASCII through; this refuses
/// anything else on its own, found by the property test below.)
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_the_rest() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("20S"), Some(Duration::from_secs(20)));
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", " 5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Client-supplied (a header): any text parses or is ignored,
        /// never a panic.
        #[test]
        fn any_header_value_parses_or_is_ignored(s in "\\PC{0,12}|[0-9]{1,9}[HMSmun]") {
            let _ = parse_grpc_timeout(&s);
        }
    }

    #[test]
    fn a_long_poll_ends_a_margin_before_the_deadline() {
        let mut metadata = MetadataMap::new();
        assert_eq!(wait_limit(&metadata), None);
        metadata.insert("grpc-timeout", "20S".parse().unwrap());
        assert_eq!(wait_limit(&metadata), Some(Duration::from_millis(19_500)));
        metadata.insert("grpc-timeout", "400m".parse().unwrap());
        assert_eq!(wait_limit(&metadata), Some(Duration::from_millis(200)));
        metadata.insert("grpc-timeout", "garbage".parse().unwrap());
        assert_eq!(wait_limit(&metadata), None);
    }
}
