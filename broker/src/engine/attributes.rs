//! Queue attributes: defaults, validation, and partial updates.
//!
//! The defaults and ranges are the API's, from `broker_proto::limits` (plain
//! constants: the engine uses no generated type).

use broker_proto::limits::{
    BACKOFF_SECONDS_MAX, DELAY_SECONDS_MAX, MAX_MESSAGE_BYTES_DEFAULT, MAX_MESSAGE_BYTES_MAX,
    MAX_MESSAGE_BYTES_MIN, MAX_RECEIVE_COUNT_MAX, MAX_RECEIVE_RATE_MAX,
    MESSAGE_RETENTION_SECONDS_DEFAULT, MESSAGE_RETENTION_SECONDS_MAX,
    MESSAGE_RETENTION_SECONDS_MIN, VISIBILITY_TIMEOUT_SECONDS_DEFAULT,
    VISIBILITY_TIMEOUT_SECONDS_MAX, WAIT_TIME_SECONDS_MAX,
};

use crate::engine::error::{Error, Result};

/// Backoff before a lapsed or released message is visible again:
/// `min_backoff_seconds * 2^(receive_count - 1)`, capped at the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min_backoff_seconds: u32,
    pub max_backoff_seconds: u32,
}

impl RetryPolicy {
    pub fn backoff_ms(&self, receive_count: u32) -> u64 {
        let exp = receive_count.saturating_sub(1).min(30);
        let secs = u64::from(self.min_backoff_seconds) << exp;
        secs.min(u64::from(self.max_backoff_seconds)) * 1000
    }
}

/// After `max_receive_count` receives, the next receive moves a message to
/// `dead_letter_queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePolicy {
    pub dead_letter_queue: String,
    pub max_receive_count: u32,
}

/// The effective attributes of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAttributes {
    pub visibility_timeout_seconds: u32,
    pub message_retention_seconds: u32,
    pub delay_seconds: u32,
    pub receive_wait_time_seconds: u32,
    pub max_message_bytes: u32,
    pub redrive_policy: Option<RedrivePolicy>,
    /// Messages per second all receivers together may take; 0: unlimited.
    pub max_receive_rate: u32,
    /// Token bucket size; at least `max_receive_rate`.
    pub max_receive_burst: u32,
    pub retry_policy: Option<RetryPolicy>,
    /// Most messages the queue holds; 0: no cap. Sends, publishes and
    /// redrives that would pass it are refused; dead letters are not.
    pub max_messages: u32,
}

impl Default for QueueAttributes {
    fn default() -> Self {
        QueueAttributes {
            visibility_timeout_seconds: VISIBILITY_TIMEOUT_SECONDS_DEFAULT,
            message_retention_seconds: MESSAGE_RETENTION_SECONDS_DEFAULT,
            delay_seconds: 0,
            receive_wait_time_seconds: 0,
            max_message_bytes: MAX_MESSAGE_BYTES_DEFAULT,
            redrive_policy: None,
            max_receive_rate: 0,
            max_receive_burst: 0,
            retry_policy: None,
            max_messages: 0,
        }
    }
}

/// Attributes given by a client: `None` keeps the current (or default) value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributeChanges {
    pub visibility_timeout_seconds: Option<u32>,
    pub message_retention_seconds: Option<u32>,
    pub delay_seconds: Option<u32>,
    pub receive_wait_time_seconds: Option<u32>,
    pub max_message_bytes: Option<u32>,
    /// `Some(None)` removes the redrive policy.
    pub redrive_policy: Option<Option<RedrivePolicy>>,
    pub max_receive_rate: Option<u32>,
    pub max_receive_burst: Option<u32>,
    /// `Some(None)` removes the retry policy.
    pub retry_policy: Option<Option<RetryPolicy>>,
    pub max_messages: Option<u32>,
}

/// `value` in `min..=max`; `field` is the request field.
pub fn check_range(field: &'static str, value: u32, min: u32, max: u32) -> Result<()> {
    if value < min || value > max {
        return Err(Error::out_of_range(field, min, max, value));
    }
    Ok(())
}

impl AttributeChanges {
    /// The attributes that result from applying these changes to `base`,
    /// every value checked against its range. Errors name the field as the
    /// requests that carry attributes do (`attributes.delay_seconds`).
    pub fn apply_to(&self, base: &QueueAttributes) -> Result<QueueAttributes> {
        let mut out = base.clone();
        let fields: [(&'static str, Option<u32>, &mut u32, u32, u32); 8] = [
            (
                "attributes.visibility_timeout_seconds",
                self.visibility_timeout_seconds,
                &mut out.visibility_timeout_seconds,
                0,
                VISIBILITY_TIMEOUT_SECONDS_MAX,
            ),
            (
                "attributes.message_retention_seconds",
                self.message_retention_seconds,
                &mut out.message_retention_seconds,
                MESSAGE_RETENTION_SECONDS_MIN,
                MESSAGE_RETENTION_SECONDS_MAX,
            ),
            (
                "attributes.delay_seconds",
                self.delay_seconds,
                &mut out.delay_seconds,
                0,
                DELAY_SECONDS_MAX,
            ),
            (
                "attributes.receive_wait_time_seconds",
                self.receive_wait_time_seconds,
                &mut out.receive_wait_time_seconds,
                0,
                WAIT_TIME_SECONDS_MAX,
            ),
            (
                "attributes.max_message_bytes",
                self.max_message_bytes,
                &mut out.max_message_bytes,
                MAX_MESSAGE_BYTES_MIN,
                MAX_MESSAGE_BYTES_MAX,
            ),
            (
                "attributes.max_receive_rate",
                self.max_receive_rate,
                &mut out.max_receive_rate,
                0,
                MAX_RECEIVE_RATE_MAX,
            ),
            (
                "attributes.max_receive_burst",
                self.max_receive_burst,
                &mut out.max_receive_burst,
                0,
                MAX_RECEIVE_RATE_MAX,
            ),
            (
                "attributes.max_messages",
                self.max_messages,
                &mut out.max_messages,
                0,
                u32::MAX,
            ),
        ];
        for (field, value, slot, min, max) in fields {
            if let Some(value) = value {
                check_range(field, value, min, max)?;
                *slot = value;
            }
        }
        if let Some(policy) = &self.redrive_policy {
            if let Some(p) = policy {
                super::validate::queue_name(
                    "attributes.redrive_policy.dead_letter_queue",
                    &p.dead_letter_queue,
                )?;
                check_range(
                    "attributes.redrive_policy.max_receive_count",
                    p.max_receive_count,
                    1,
                    MAX_RECEIVE_COUNT_MAX,
                )?;
            }
            out.redrive_policy = policy.clone();
        }
        if let Some(policy) = &self.retry_policy {
            if let Some(p) = policy {
                check_range(
                    "attributes.retry_policy.min_backoff_seconds",
                    p.min_backoff_seconds,
                    0,
                    BACKOFF_SECONDS_MAX,
                )?;
                check_range(
                    "attributes.retry_policy.max_backoff_seconds",
                    p.max_backoff_seconds,
                    p.min_backoff_seconds,
                    BACKOFF_SECONDS_MAX,
                )?;
            }
            out.retry_policy = *policy;
        }
        // The burst is at least the rate: a bucket smaller than one second
        // of tokens could never deliver the rate.
        if self.max_receive_burst.is_none() || out.max_receive_burst < out.max_receive_rate {
            out.max_receive_burst = out.max_receive_burst.max(out.max_receive_rate);
        }
        Ok(out)
    }
}

impl QueueAttributes {
    /// The first attribute whose value differs, as `(name, ours, theirs)`.
    pub fn first_difference(
        &self,
        other: &QueueAttributes,
    ) -> Option<(&'static str, String, String)> {
        let numbers = [
            (
                "visibility_timeout_seconds",
                self.visibility_timeout_seconds,
                other.visibility_timeout_seconds,
            ),
            (
                "message_retention_seconds",
                self.message_retention_seconds,
                other.message_retention_seconds,
            ),
            ("delay_seconds", self.delay_seconds, other.delay_seconds),
            (
                "receive_wait_time_seconds",
                self.receive_wait_time_seconds,
                other.receive_wait_time_seconds,
            ),
            (
                "max_message_bytes",
                self.max_message_bytes,
                other.max_message_bytes,
            ),
            (
                "max_receive_rate",
                self.max_receive_rate,
                other.max_receive_rate,
            ),
            (
                "max_receive_burst",
                self.max_receive_burst,
                other.max_receive_burst,
            ),
            ("max_messages", self.max_messages, other.max_messages),
        ];
        if let Some((name, a, b)) = numbers.into_iter().find(|(_, a, b)| a != b) {
            return Some((name, a.to_string(), b.to_string()));
        }
        if self.redrive_policy != other.redrive_policy {
            let show = |p: &Option<RedrivePolicy>| match p {
                None => "none".to_string(),
                Some(p) => format!(
                    "{}, max_receive_count {}",
                    p.dead_letter_queue, p.max_receive_count
                ),
            };
            return Some((
                "redrive_policy",
                show(&self.redrive_policy),
                show(&other.redrive_policy),
            ));
        }
        if self.retry_policy != other.retry_policy {
            let show = |p: &Option<RetryPolicy>| match p {
                None => "none".to_string(),
                Some(p) => format!(
                    "min_backoff_seconds {}, max_backoff_seconds {}",
                    p.min_backoff_seconds, p.max_backoff_seconds
                ),
            };
            return Some((
                "retry_policy",
                show(&self.retry_policy),
                show(&other.retry_policy),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_names_field_limit_and_value() {
        let changes = AttributeChanges {
            visibility_timeout_seconds: Some(50_000),
            ..Default::default()
        };
        let err = changes
            .apply_to(&QueueAttributes::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "visibility_timeout_seconds must be in 0..=43200; got 50000"
        );
        let policy = AttributeChanges {
            retry_policy: Some(Some(RetryPolicy {
                min_backoff_seconds: 10,
                max_backoff_seconds: 5,
            })),
            ..Default::default()
        };
        match policy.apply_to(&QueueAttributes::default()).unwrap_err() {
            Error::OutOfRange {
                field,
                min,
                max,
                got,
            } => {
                assert_eq!(field, "attributes.retry_policy.max_backoff_seconds");
                assert_eq!((min, max, got), (10, BACKOFF_SECONDS_MAX.into(), 5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_attribute_counts_as_a_difference() {
        let base = QueueAttributes::default();
        let rate = QueueAttributes {
            max_receive_rate: 10,
            max_receive_burst: 10,
            ..Default::default()
        };
        assert_eq!(
            base.first_difference(&rate).map(|d| d.0),
            Some("max_receive_rate")
        );
        let retry = QueueAttributes {
            retry_policy: Some(RetryPolicy {
                min_backoff_seconds: 1,
                max_backoff_seconds: 2,
            }),
            ..Default::default()
        };
        let difference = base.first_difference(&retry).unwrap();
        assert_eq!(difference.0, "retry_policy");
        assert_eq!(difference.1, "none");
        assert_eq!(retry.first_difference(&retry.clone()), None);
    }

    #[test]
    fn unset_fields_keep_their_value_and_policy_can_be_removed() {
        let base = QueueAttributes {
            delay_seconds: 5,
            redrive_policy: Some(RedrivePolicy {
                dead_letter_queue: "dlq".into(),
                max_receive_count: 3,
            }),
            ..Default::default()
        };
        let changes = AttributeChanges {
            visibility_timeout_seconds: Some(10),
            redrive_policy: Some(None),
            ..Default::default()
        };
        let out = changes.apply_to(&base).unwrap();
        assert_eq!(out.delay_seconds, 5);
        assert_eq!(out.visibility_timeout_seconds, 10);
        assert_eq!(out.redrive_policy, None);
        assert_eq!(
            out.first_difference(&base).map(|d| d.0),
            Some("visibility_timeout_seconds")
        );
    }
}
