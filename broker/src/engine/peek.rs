//! Peek: a look at a queue's messages without receiving them, for
//! operators (what is stuck in a dead-letter queue, what is in flight).
//!
//! # Invariants
//! - Read-only: no write, and no change to the index (not even promoting due
//!   timers), so a peek never changes a receive count, a visibility deadline
//!   or which receipt handle is current, and it never wakes a receiver.
//! - Queue order: messages come in seq order, the order in which receive
//!   takes visible ones; hidden ones appear where they will be taken.
//! - Cost O(`max_messages`), not O(backlog): the state keys of the queue
//!   are scanned from just after the page token's seq (`storage::keys` puts
//!   one queue's keys together, in seq order), the index is looked up per
//!   seq under the lock, and the bodies are read by point lookups after it.
//!   (RocksDB also steps over the tombstones of messages deleted since the
//!   last compaction; compaction bounds those.)
//! - Consistency: the scan runs without the engine lock, so a message
//!   deleted or moved between the scan and the lookups is left out of the
//!   page (a page may hold fewer than `max_messages` while more follow; the
//!   next page token says whether they do). A message sent after the scan
//!   started shows on a later page.

use std::collections::HashMap;

use broker_proto::limits::{PEEK_MESSAGES_DEFAULT, PEEK_MESSAGES_MAX};
use bytes::Bytes;

use super::Engine;
use super::ids::Seq;
use super::records::{self, BodyRecord};
use crate::engine::error::{Error, Result};
use crate::storage::keys;

/// Where a peeked message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// A receive would take it now.
    Visible,
    /// Received, hidden until its visibility timeout (and retry backoff) lapses.
    InFlight,
    /// Never received, hidden until its delay lapses.
    Delayed,
}

/// A message as a peek shows it.
#[derive(Debug, Clone)]
pub struct Peeked {
    pub message_id: String,
    pub body: Bytes,
    pub attributes: HashMap<String, String>,
    pub receive_count: u32,
    pub sent_at_ms: u64,
    /// 0 if never received.
    pub first_received_at_ms: u64,
    pub state: MessageState,
    /// When it became (visible) or becomes (hidden) visible.
    pub visible_at_ms: u64,
    /// The queue it died in, if it was dead-lettered; else empty.
    pub dead_letter_source: String,
}

/// A page position: the queue id (so that a token of another queue, or of
/// a deleted queue of the same name, is refused rather than misread) and
/// the last seq of the previous page, as 32 hex digits.
fn encode_token(queue_id: u64, seq: u64) -> String {
    format!("{queue_id:016x}{seq:016x}")
}

fn decode_token(token: &str) -> Result<(u64, u64)> {
    let parsed = (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| {
            Some((
                u64::from_str_radix(&token[..16], 16).ok()?,
                u64::from_str_radix(&token[16..], 16).ok()?,
            ))
        })
        .flatten();
    match parsed {
        Some(position) => Ok(position),
        None => Err(Error::invalid(
            "page_token",
            "is malformed: pass the next_page_token of the previous PeekMessages response, or empty for the first page",
        )),
    }
}

/// `max_messages` of a request: 0 means [`PEEK_MESSAGES_DEFAULT`].
fn page_size(max_messages: u32) -> Result<usize> {
    match max_messages {
        0 => Ok(PEEK_MESSAGES_DEFAULT as usize),
        n if n > PEEK_MESSAGES_MAX => Err(Error::invalid(
            "max_messages",
            format!(
                "must be in 1..={PEEK_MESSAGES_MAX} (0 means {PEEK_MESSAGES_DEFAULT}); got {n}"
            ),
        )),
        n => Ok(n as usize),
    }
}

impl Engine {
    /// Up to `max_messages` (0: [`PEEK_MESSAGES_DEFAULT`], at most
    /// [`PEEK_MESSAGES_MAX`]) messages of `queue` in queue order, after
    /// `page_token` (empty: from the first); and the token of the next
    /// page, empty on the last one. See the module docs.
    pub fn peek(
        &self,
        queue: &str,
        max_messages: u32,
        page_token: &str,
    ) -> Result<(Vec<Peeked>, String)> {
        let max = page_size(max_messages)?;
        let id = self.lock().queue_id("queue", queue)?;
        let first_seq = match page_token {
            "" => 0,
            token => match decode_token(token)? {
                (token_queue, seq) if token_queue == id.0 => match seq.checked_add(1) {
                    Some(next) => next,
                    // Nothing can follow the largest seq.
                    None => return Ok((Vec::new(), String::new())),
                },
                _ => {
                    return Err(Error::invalid(
                        "page_token",
                        format!(
                            "belongs to another queue than {queue:?} (or to a deleted queue of that name); start again with an empty page_token"
                        ),
                    ));
                }
            },
        };

        // One more than a page: whether it exists decides the next token.
        let (_, end) = keys::queue_range(keys::STATE_PREFIX, id.0);
        let mut seqs = Vec::with_capacity(max + 1);
        for item in self
            .store
            .scan_range(&keys::state(id.0, first_seq), &end)
            .take(max + 1)
        {
            let (key, _) = item?;
            if let Some((_, seq)) = keys::decode_message(&key) {
                seqs.push(seq);
            }
        }
        let next_page_token = if seqs.len() > max {
            seqs.truncate(max);
            encode_token(id.0, seqs[max - 1])
        } else {
            String::new()
        };

        let now = self.now_ms();
        let found: Vec<_> = {
            let st = self.lock();
            let Some(q) = st.queues.get(&id) else {
                return Err(Error::QueueDeletedDuringPeek {
                    queue: queue.to_string(),
                });
            };
            seqs.iter()
                .filter_map(|&seq| {
                    let slot = q.index.slots.get(&Seq(seq))?;
                    // A due timer the scheduler has not fired yet is visible
                    // already: the next receive promotes it first.
                    let state = if slot.ready || slot.due_at <= now {
                        MessageState::Visible
                    } else if slot.state.receive_count > 0 {
                        MessageState::InFlight
                    } else {
                        MessageState::Delayed
                    };
                    Some((seq, slot.state, state, slot.due_at))
                })
                .collect()
        };

        let body_keys: Vec<Vec<u8>> = found
            .iter()
            .map(|&(seq, ..)| keys::body(id.0, seq).to_vec())
            .collect();
        let bodies = self.store.multi_get(&body_keys)?;
        let mut page = Vec::with_capacity(found.len());
        for ((seq, record, state, due_at), raw) in found.into_iter().zip(bodies) {
            // Deleted since the lookup: leave it out, as if peeked a moment later.
            let Some(raw) = raw else { continue };
            let body: BodyRecord = records::decode(&keys::body(id.0, seq), &raw)?;
            page.push(Peeked {
                message_id: body.message_id,
                body: body.body,
                attributes: body.attributes,
                receive_count: record.receive_count,
                sent_at_ms: body.sent_at_ms,
                first_received_at_ms: record.first_received_at_ms,
                state,
                visible_at_ms: due_at,
                dead_letter_source: body.dead_letter_source,
            });
        }
        Ok((page, next_page_token))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::{AttributeChanges, NewMessage, ReceiveOptions, RetryPolicy};
    use crate::storage::SyncMode;

    /// A backoff counts as in flight until it lapses; a lapsed one is shown
    /// visible at once, and the peek leaves the promotion to the next
    /// receive (or the scheduler, not running here): the index is untouched.
    #[tokio::test(start_paused = true)]
    async fn peek_follows_the_clock_without_touching_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), SyncMode::None).unwrap();
        let retry = AttributeChanges {
            retry_policy: Some(Some(RetryPolicy {
                min_backoff_seconds: 5,
                max_backoff_seconds: 5,
            })),
            ..Default::default()
        };
        e.create_queue("q", &retry).await.unwrap();
        let message = NewMessage {
            body: Bytes::from_static(b"a"),
            ..Default::default()
        };
        e.send("q", vec![message]).await.unwrap();
        let opts = ReceiveOptions {
            max_messages: 1,
            visibility_timeout_seconds: Some(0),
            wait_time_seconds: Some(0),
            ..ReceiveOptions::default()
        };
        let released_at = e.now_ms();
        assert_eq!(e.receive("q", opts).await.unwrap().len(), 1);

        let (page, _) = e.peek("q", 0, "").unwrap();
        assert_eq!(page[0].state, MessageState::InFlight);
        assert_eq!(page[0].visible_at_ms, released_at + 5_000);
        assert_eq!(page[0].receive_count, 1);

        tokio::time::advance(Duration::from_secs(5)).await;
        let (page, _) = e.peek("q", 0, "").unwrap();
        assert_eq!(page[0].state, MessageState::Visible);
        let ready = |e: &Engine| e.lock().queue("queue", "q").unwrap().index.ready.len();
        assert_eq!(ready(&e), 0, "peek promoted nothing");
        assert_eq!(e.receive("q", opts).await.unwrap()[0].receive_count, 2);
    }

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let token = encode_token(7, u64::MAX);
        assert_eq!(token.len(), 32);
        assert_eq!(decode_token(&token).unwrap(), (7, u64::MAX));
        for bad in ["x", "zz", &"g".repeat(32), &"0".repeat(31), &"0".repeat(33)] {
            let err = decode_token(bad).unwrap_err();
            assert!(err.to_string().contains("page_token"), "{bad:?}: {err}");
        }
    }

    proptest::proptest! {
        /// Client-supplied: any text decodes or is refused naming the
        /// field, never a panic; every position round-trips.
        #[test]
        fn any_page_token_decodes_or_is_refused(s in "\\PC{0,40}|[0-9a-fA-F]{32}", q: u64, seq: u64) {
            if let Err(e) = decode_token(&s) {
                proptest::prop_assert!(e.to_string().contains("page_token"));
            }
            proptest::prop_assert_eq!(decode_token(&encode_token(q, seq)).unwrap(), (q, seq));
        }
    }

    #[test]
    fn page_size_defaults_and_is_bounded() {
        assert_eq!(page_size(0).unwrap(), PEEK_MESSAGES_DEFAULT as usize);
        assert_eq!(page_size(1).unwrap(), 1);
        let max = PEEK_MESSAGES_MAX;
        assert_eq!(page_size(max).unwrap(), max as usize);
        let err = page_size(max + 1).unwrap_err().to_string();
        assert_eq!(err, "max_messages must be in 1..=100 (0 means 10); got 101");
    }
}
