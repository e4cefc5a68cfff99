//! The values stored under the keys of `storage::keys`, and their codecs.
//!
//! Queue and body records are protobuf messages (prost derive, no .proto):
//! compact, and new fields can be added without a migration. The state
//! record is rewritten on every receive, so it is a fixed 28 bytes.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use super::attributes::{QueueAttributes, RedrivePolicy, RetryPolicy};
use crate::storage::StorageError;

/// A queue, stored under its name.
#[derive(Clone, PartialEq, Message)]
pub struct QueueRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub created_at_ms: u64,
    #[prost(uint32, tag = "3")]
    pub visibility_timeout_seconds: u32,
    #[prost(uint32, tag = "4")]
    pub message_retention_seconds: u32,
    #[prost(uint32, tag = "5")]
    pub delay_seconds: u32,
    #[prost(uint32, tag = "6")]
    pub receive_wait_time_seconds: u32,
    #[prost(uint32, tag = "7")]
    pub max_message_bytes: u32,
    #[prost(string, optional, tag = "8")]
    pub dead_letter_queue: Option<String>,
    #[prost(uint32, tag = "9")]
    pub max_receive_count: u32,
    #[prost(uint32, tag = "10")]
    pub max_receive_rate: u32,
    #[prost(uint32, tag = "11")]
    pub max_receive_burst: u32,
    /// Present when the queue has a retry policy.
    #[prost(uint32, optional, tag = "12")]
    pub min_backoff_seconds: Option<u32>,
    #[prost(uint32, tag = "13")]
    pub max_backoff_seconds: u32,
    /// 0 (absent in records written before the attribute): no cap.
    #[prost(uint32, tag = "14")]
    pub max_messages: u32,
}

impl QueueRecord {
    pub fn new(id: u64, created_at_ms: u64, a: &QueueAttributes) -> QueueRecord {
        QueueRecord {
            id,
            created_at_ms,
            visibility_timeout_seconds: a.visibility_timeout_seconds,
            message_retention_seconds: a.message_retention_seconds,
            delay_seconds: a.delay_seconds,
            receive_wait_time_seconds: a.receive_wait_time_seconds,
            max_message_bytes: a.max_message_bytes,
            dead_letter_queue: a
                .redrive_policy
                .as_ref()
                .map(|p| p.dead_letter_queue.clone()),
            max_receive_count: a.redrive_policy.as_ref().map_or(0, |p| p.max_receive_count),
            max_receive_rate: a.max_receive_rate,
            max_receive_burst: a.max_receive_burst,
            min_backoff_seconds: a.retry_policy.map(|p| p.min_backoff_seconds),
            max_backoff_seconds: a.retry_policy.map_or(0, |p| p.max_backoff_seconds),
            max_messages: a.max_messages,
        }
    }

    pub fn attributes(&self) -> QueueAttributes {
        QueueAttributes {
            visibility_timeout_seconds: self.visibility_timeout_seconds,
            message_retention_seconds: self.message_retention_seconds,
            delay_seconds: self.delay_seconds,
            receive_wait_time_seconds: self.receive_wait_time_seconds,
            max_message_bytes: self.max_message_bytes,
            redrive_policy: self.dead_letter_queue.as_ref().map(|q| RedrivePolicy {
                dead_letter_queue: q.clone(),
                max_receive_count: self.max_receive_count,
            }),
            max_receive_rate: self.max_receive_rate,
            max_receive_burst: self.max_receive_burst,
            retry_policy: self.min_backoff_seconds.map(|min| RetryPolicy {
                min_backoff_seconds: min,
                max_backoff_seconds: self.max_backoff_seconds,
            }),
            max_messages: self.max_messages,
        }
    }
}

/// What a message carries: immutable while it lives in one queue.
#[derive(Clone, PartialEq, Message)]
pub struct BodyRecord {
    #[prost(string, tag = "1")]
    pub message_id: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub body: Bytes,
    #[prost(map = "string, string", tag = "3")]
    pub attributes: HashMap<String, String>,
    #[prost(uint64, tag = "4")]
    pub sent_at_ms: u64,
    /// The queue this message was dead-lettered from; empty if it never was.
    #[prost(string, tag = "5")]
    pub dead_letter_source: String,
}

/// Where a message is in its life: rewritten by receive and visibility changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRecord {
    pub receive_count: u32,
    /// Unix ms from which the message is visible (delay, visibility timeout).
    pub visible_at_ms: u64,
    /// Unix ms of the first receive; 0 if never received.
    pub first_received_at_ms: u64,
    pub sent_at_ms: u64,
}

impl StateRecord {
    pub const LEN: usize = 28;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0..4].copy_from_slice(&self.receive_count.to_be_bytes());
        out[4..12].copy_from_slice(&self.visible_at_ms.to_be_bytes());
        out[12..20].copy_from_slice(&self.first_received_at_ms.to_be_bytes());
        out[20..28].copy_from_slice(&self.sent_at_ms.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<StateRecord> {
        if bytes.len() != Self::LEN {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap_or_default());
        Some(StateRecord {
            receive_count: u32::from_be_bytes(bytes[0..4].try_into().ok()?),
            visible_at_ms: u64_at(4),
            first_received_at_ms: u64_at(12),
            sent_at_ms: u64_at(20),
        })
    }
}

pub fn decode<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, StorageError> {
    M::decode(bytes).map_err(|e| StorageError::Corrupt {
        key: format!("{key:02x?}"),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let s = StateRecord {
            receive_count: 3,
            visible_at_ms: 1_700_000_000_123,
            first_received_at_ms: 1_700_000_000_000,
            sent_at_ms: 42,
        };
        assert_eq!(StateRecord::decode(&s.encode()), Some(s));
        assert_eq!(StateRecord::decode(&[0; 3]), None);
    }

    #[test]
    fn queue_record_keeps_attributes() {
        let a = QueueAttributes {
            redrive_policy: Some(RedrivePolicy {
                dead_letter_queue: "dlq".into(),
                max_receive_count: 4,
            }),
            max_receive_rate: 10,
            max_receive_burst: 20,
            retry_policy: Some(RetryPolicy {
                min_backoff_seconds: 1,
                max_backoff_seconds: 60,
            }),
            max_messages: 1_000,
            ..Default::default()
        };
        let r = QueueRecord::new(1, 2, &a);
        let back: QueueRecord = decode(b"k", &r.encode_to_vec()).unwrap();
        assert_eq!(back.attributes(), a);
    }
}
