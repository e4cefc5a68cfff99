//! Errors as the user sees them: `anyhow` errors whose text is the
//! broker's own message (it names the field, the limit and the value), so
//! `main` prints `error: {err:#}` and exits non-zero. NOT_FOUND names the
//! queue, topic or subscription when the call names only one;
//! UNAUTHENTICATED comes with a hint about `--token`.

use anyhow::anyhow;

/// Added to an UNAUTHENTICATED error.
pub(crate) const TOKEN_HINT: &str =
    "hint: the broker requires a valid token: pass it with --token or set BROKER_TOKEN";

/// Turns a failed call into the error `main` prints.
///
/// The broker's messages for bad input are written for users, so they are
/// shown as they are. `queue` is the one queue the call names, if there is
/// only one: NOT_FOUND can then only be about it.
pub(crate) fn failure(err: broker_client::Error, queue: Option<&str>) -> anyhow::Error {
    failure_of(err, queue.map(|queue| ("queue", queue)))
}

/// [`failure`] for a call that names one thing of any kind: `("topic",
/// "payments")` turns NOT_FOUND into "topic 'payments' not found".
pub(crate) fn failure_of(err: broker_client::Error, only: Option<(&str, &str)>) -> anyhow::Error {
    use broker_client::Error as E;
    match (&err, only) {
        (E::NotFound(_), Some((kind, name))) => anyhow!("{kind} '{name}' not found"),
        (E::Unauthenticated(_), _) => anyhow!("{err}\n{TOKEN_HINT}"),
        (
            E::InvalidArgument(m) | E::NotFound(m) | E::AlreadyExists(m) | E::FailedPrecondition(m),
            _,
        ) if !m.is_empty() => anyhow!("{m}"),
        _ => anyhow!("{err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_topic_or_subscription() {
        let err = failure_of(
            broker_client::Error::NotFound("whatever".into()),
            Some(("topic", "payments")),
        );
        assert_eq!(format!("{err:#}"), "topic 'payments' not found");
        // Subscribe names two things: the broker's message says which is missing.
        let err = failure(
            broker_client::Error::NotFound("queue 'sms' does not exist".into()),
            None,
        );
        assert_eq!(format!("{err:#}"), "queue 'sms' does not exist");
    }

    #[test]
    fn not_found_names_the_queue() {
        let err = failure(broker_client::Error::NotFound("whatever".into()), Some("x"));
        assert_eq!(format!("{err:#}"), "queue 'x' not found");
        let err = failure(
            broker_client::Error::InvalidArgument(
                "delay_seconds must be in 0..=900; got 901".into(),
            ),
            Some("x"),
        );
        assert_eq!(
            format!("{err:#}"),
            "delay_seconds must be in 0..=900; got 901"
        );
        let err = failure(
            broker_client::Error::Unavailable("shutting down".into()),
            Some("x"),
        );
        assert_eq!(format!("{err:#}"), "unavailable: shutting down");
    }
}
