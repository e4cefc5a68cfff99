//! Every key layout of the store, in one place.
//!
//! A key is a one-byte prefix naming its kind, then big-endian fixed-width
//! integers, so that byte order is numeric order and all keys of one queue
//! are contiguous (a queue's messages are deleted with one range delete).
//!
//! | kind | key | value |
//! |---|---|---|
//! | sequence reservation | `0x00` `"seq"` | u64 BE: every sequence number below it may have been handed out |
//! | queue | `0x01` name (UTF-8) | a queue record |
//! | message body | `0x02` queue id (u64 BE) seq (u64 BE) | a body record: immutable while the message lives in this queue |
//! | message state | `0x03` queue id (u64 BE) seq (u64 BE) | a state record: receive count, visible-at, first receive, sent-at |
//! | topic | `0x04` name (UTF-8) | a topic record |
//! | subscription | `0x05` subscription id (u64 BE) | a subscription record: topic, queue, filter policy, raw delivery |
//! | Raft: applied | `0x10` `"applied"` | JSON: the last applied log id and membership (`cluster::state_machine`), written in the batch of the entry it names |
//! | Raft: time floor | `0x10` `"floor"` | u64 BE: the largest decision time (`at_ms`) of the commands applied, written in each one's batch (`Engine::now_ms` never reads earlier) |
//! | Raft: chain | `0x10` `"chain"` | the id of the last command applied (term, count: two u64 BE), written in its entry's batch (`engine::replication`) |
//! | Raft: installing | `0x10` `"installing"` | u64 BE: the index of the snapshot being installed; present only while an install is under way (`Engine::install`) |
//! | Raft: log entry | `0x11` index (u64 BE) | `0x01` then postcard (an earlier version's JSON, `{...}`, is read too): an openraft entry (`cluster::codec`) |
//! | Raft: vote, committed, last purged | `0x12` `"vote"`, `"committed"`, `"purged"` | JSON: openraft's vote / log ids |
//!
//! The `0x11` and `0x12` keys live in a node's Raft log store, a store of
//! their own for now (the engine's store is scanned whole by tests that
//! compare replicas); `0x10` lives in the engine's store.
//!
//! Sequence numbers come from one counter for the whole store and are never
//! reused, so a `(queue id, seq)` pair names one message forever, and queue
//! ids (drawn from the same counter) are never reused either.

pub const SEQ_RESERVATION: &[u8] = b"\x00seq";
pub const QUEUE_PREFIX: u8 = 0x01;
pub const BODY_PREFIX: u8 = 0x02;
pub const STATE_PREFIX: u8 = 0x03;
pub const TOPIC_PREFIX: u8 = 0x04;
pub const SUBSCRIPTION_PREFIX: u8 = 0x05;
pub const RAFT_APPLIED: &[u8] = b"\x10applied";
pub const RAFT_TIME_FLOOR: &[u8] = b"\x10floor";
pub const RAFT_CHAIN: &[u8] = b"\x10chain";
pub const RAFT_INSTALLING: &[u8] = b"\x10installing";
pub const RAFT_LOG_PREFIX: u8 = 0x11;
pub const RAFT_VOTE: &[u8] = b"\x12vote";
pub const RAFT_COMMITTED: &[u8] = b"\x12committed";
pub const RAFT_PURGED: &[u8] = b"\x12purged";

/// The key of the Raft log entry at `index`: byte order is index order.
pub fn raft_log(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = RAFT_LOG_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The end (exclusive) of every Raft log key.
pub const RAFT_LOG_END: &[u8] = &[RAFT_LOG_PREFIX + 1];

/// The index of a Raft log key.
pub fn decode_raft_log(key: &[u8]) -> Option<u64> {
    match key.split_first() {
        Some((&RAFT_LOG_PREFIX, rest)) => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

pub fn queue(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(QUEUE_PREFIX);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The queue name of a queue key.
pub fn decode_queue(key: &[u8]) -> Option<&str> {
    decode_name(QUEUE_PREFIX, key)
}

pub fn topic(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(TOPIC_PREFIX);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The topic name of a topic key.
pub fn decode_topic(key: &[u8]) -> Option<&str> {
    decode_name(TOPIC_PREFIX, key)
}

fn decode_name(prefix: u8, key: &[u8]) -> Option<&str> {
    match key.split_first() {
        Some((&p, name)) if p == prefix => std::str::from_utf8(name).ok(),
        _ => None,
    }
}

pub fn subscription(id: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = SUBSCRIPTION_PREFIX;
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

pub fn decode_subscription(key: &[u8]) -> Option<u64> {
    match key.split_first() {
        Some((&SUBSCRIPTION_PREFIX, id)) => Some(u64::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

fn message_key(prefix: u8, queue_id: u64, seq: u64) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = prefix;
    key[1..9].copy_from_slice(&queue_id.to_be_bytes());
    key[9..17].copy_from_slice(&seq.to_be_bytes());
    key
}

pub fn body(queue_id: u64, seq: u64) -> [u8; 17] {
    message_key(BODY_PREFIX, queue_id, seq)
}

pub fn state(queue_id: u64, seq: u64) -> [u8; 17] {
    message_key(STATE_PREFIX, queue_id, seq)
}

/// `(queue id, seq)` of a body or state key.
pub fn decode_message(key: &[u8]) -> Option<(u64, u64)> {
    if key.len() != 17 || !(key[0] == BODY_PREFIX || key[0] == STATE_PREFIX) {
        return None;
    }
    let queue_id = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let seq = u64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((queue_id, seq))
}

/// `[from, to)` covering every key of `prefix` kind of one queue.
pub fn queue_range(prefix: u8, queue_id: u64) -> ([u8; 17], [u8; 17]) {
    (
        message_key(prefix, queue_id, 0),
        message_key(prefix, queue_id + 1, 0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_queue_then_seq() {
        let keys = [
            state(1, 0),
            state(1, 1),
            state(1, 255),
            state(1, 256),
            state(1, u64::MAX),
            state(2, 0),
            state(256, 7),
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn kinds_do_not_interleave() {
        assert!(queue("zzz").as_slice() < body(0, 0).as_slice());
        assert!(body(u64::MAX, u64::MAX) < state(0, 0));
        assert!(SEQ_RESERVATION < queue("").as_slice());
        assert!(state(u64::MAX, u64::MAX).as_slice() < topic("").as_slice());
        assert!(topic("zzz").as_slice() < subscription(0).as_slice());
    }

    #[test]
    fn message_keys_round_trip() {
        for (q, s) in [(0, 0), (1, 2), (u64::MAX - 1, u64::MAX)] {
            assert_eq!(decode_message(&body(q, s)), Some((q, s)));
            assert_eq!(decode_message(&state(q, s)), Some((q, s)));
        }
        assert_eq!(decode_message(&queue("x")), None);
        assert_eq!(decode_queue(&queue("orders")), Some("orders"));
        assert_eq!(decode_topic(&topic("payments")), Some("payments"));
        assert_eq!(decode_queue(&topic("payments")), None);
        assert_eq!(decode_subscription(&subscription(77)), Some(77));
    }

    #[test]
    fn queue_range_covers_exactly_one_queue() {
        let (from, to) = queue_range(STATE_PREFIX, 5);
        assert!(from <= state(5, 0) && state(5, u64::MAX) < to);
        assert!(state(4, u64::MAX) < from && to <= state(6, 0));
    }
}
