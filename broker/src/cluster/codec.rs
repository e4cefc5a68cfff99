//! The binary form of what nodes write to their Raft log and send each
//! other: openraft's serde types as postcard.
//!
//! JSON carried a command's bytes as base64 inside a string, which the
//! writer grew by doubling and the reader unescaped: most of a leader's
//! CPU on 25 MiB entries went there, and the followers fell behind the
//! heartbeats. In postcard a command is its prost bytes, length first; a
//! reader borrows them from the buffer and decodes the command straight
//! from it ([`super::Request`]).
//!
//! - **Log entries** (`log_store`): a format byte, [`ENTRY_POSTCARD`], then
//!   the entry. An entry written as JSON by an earlier version starts with
//!   `{` and is still read.
//! - **Frames** (`network`): postcard, both ways; nodes of one cluster run
//!   the same version.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of a log entry written as postcard.
pub const ENTRY_POSTCARD: u8 = 1;

/// `value` as postcard, into a buffer of `capacity` bytes to start with
/// (an estimate of its size: a buffer grown by doubling copies a large
/// entry several times).
pub fn encode<T: Serialize>(value: &T, capacity: usize) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(value, Vec::with_capacity(capacity))
}

/// A `T` from postcard `bytes`, all of which it must use.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

/// A log entry's bytes: [`ENTRY_POSTCARD`], then `entry`.
pub fn encode_entry<T: Serialize>(entry: &T, capacity: usize) -> Result<Vec<u8>, postcard::Error> {
    let mut out = Vec::with_capacity(capacity.saturating_add(1));
    out.push(ENTRY_POSTCARD);
    postcard::to_extend(entry, out)
}

/// Why a log entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("a log entry in postcard: {0}")]
    Postcard(#[from] postcard::Error),
    #[error("a log entry in JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a log entry of unknown format {0:#04x}")]
    Format(u8),
    #[error("an empty log entry")]
    Empty,
}

/// A log entry from its bytes, as [`encode_entry`] wrote them or as JSON.
pub fn decode_entry<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EntryError> {
    match bytes.first() {
        Some(&ENTRY_POSTCARD) => Ok(decode(&bytes[1..])?),
        Some(b'{') => Ok(serde_json::from_slice(bytes)?),
        Some(&other) => Err(EntryError::Format(other)),
        None => Err(EntryError::Empty),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::cluster::{Member, Request, TypeConfig, network::entry_bytes};
    use crate::engine::command::{Command, Enqueue, Op, Send};
    use crate::engine::records::BodyRecord;
    use crate::engine::replication::{CommandId, Proposal};
    use crate::engine::{AttributeChanges, Engine};
    use crate::storage::SyncMode;

    fn read(bytes: &[u8]) -> Result<Entry<TypeConfig>, EntryError> {
        decode_entry(bytes)
    }

    /// Entries of real commands (a message of 1 MiB among them) and of a
    /// membership round-trip through postcard, a command's bytes carried
    /// as they are; entries an earlier version wrote as JSON are still
    /// read; anything else is an error, never a guess.
    #[tokio::test]
    async fn entries_round_trip_and_json_ones_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), SyncMode::None).unwrap();
        engine
            .create_queue("q", &AttributeChanges::default())
            .await
            .unwrap();
        let body = bytes::Bytes::from(vec![7u8; 1 << 20]);
        let send = Command::new(
            1_700_000_000_000,
            Some(64),
            Op::Send(Send {
                messages: vec![Enqueue {
                    queue_id: 1,
                    seq: 2,
                    body: BodyRecord {
                        message_id: "m".into(),
                        body: body.clone(),
                        ..Default::default()
                    },
                    visible_at_ms: 1_700_000_000_000,
                }],
            }),
        );
        let mut commands = engine.journal();
        assert!(!commands.is_empty(), "the create was journaled");
        commands.push(send);
        let log_id = LogId::new(CommittedLeaderId::new(3, 2), 9);
        let normal = Entry::<TypeConfig> {
            log_id,
            payload: EntryPayload::Normal(Request(Proposal {
                after: CommandId { term: 3, n: 1 },
                first: CommandId { term: 3, n: 2 },
                commands,
            })),
        };
        let member = |n: u64| Member {
            addr: format!("10.0.0.{n}:7100"),
            client_addr: format!("10.0.0.{n}:50051"),
        };
        let membership = Entry::<TypeConfig> {
            log_id,
            payload: EntryPayload::Membership(openraft::Membership::new(
                vec![BTreeSet::from([1, 2])],
                BTreeMap::from([(1, member(1)), (2, member(2))]),
            )),
        };
        assert!(
            entry_bytes(&normal) > body.len(),
            "the message is in the entry"
        );
        for entry in [normal, membership] {
            let bytes = encode_entry(&entry, entry_bytes(&entry)).unwrap();
            assert_eq!(bytes[0], ENTRY_POSTCARD);
            assert!(
                bytes.len() <= entry_bytes(&entry) + 1,
                "{} bytes, {} estimated: the estimate sizes the buffer",
                bytes.len(),
                entry_bytes(&entry)
            );
            let want = format!("{entry:?}");
            assert_eq!(format!("{:?}", read(&bytes).unwrap()), want);
            let json = serde_json::to_vec(&entry).unwrap();
            assert_eq!(format!("{:?}", read(&json).unwrap()), want);

            let mut longer = bytes.clone();
            longer.push(0);
            for (damage, bytes) in [
                ("cut short", &bytes[..bytes.len() - 1]),
                ("longer", &longer),
            ] {
                assert!(
                    matches!(read(bytes), Err(EntryError::Postcard(_))),
                    "{damage}"
                );
            }
        }
        let blank = Entry::<TypeConfig> {
            log_id,
            payload: EntryPayload::Blank,
        };
        let bytes = encode_entry(&blank, 0).unwrap();
        assert_eq!(format!("{:?}", read(&bytes).unwrap()), format!("{blank:?}"));
        assert!(matches!(read(&[9, 1, 2]), Err(EntryError::Format(9))));
        assert!(matches!(read(&[]), Err(EntryError::Empty)));
    }
}
