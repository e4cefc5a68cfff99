//! The stored topic and subscription records, and what clients see of
//! them.

use prost::Message;

/// A topic, stored under its name.
#[derive(Clone, PartialEq, Message)]
pub struct TopicRecord {
    #[prost(uint64, tag = "1")]
    pub created_at_ms: u64,
}

/// A subscription, stored under its id.
#[derive(Clone, PartialEq, Message)]
pub struct SubscriptionRecord {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(string, tag = "2")]
    pub queue: String,
    /// The policy as the client gave it; empty: every message.
    #[prost(string, tag = "3")]
    pub filter_policy: String,
    #[prost(bool, tag = "4")]
    pub raw_delivery: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub created_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub id: String,
    pub topic: String,
    pub queue: String,
    pub filter_policy: String,
    pub raw_delivery: bool,
}

/// Subscription ids as clients see them: 16 hex digits.
pub fn format_subscription_id(id: u64) -> String {
    format!("{id:016x}")
}

pub fn parse_subscription_id(s: &str) -> Option<u64> {
    (s.len() == 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}
