//! What the engine tells the metrics: per-queue and per-topic operation
//! counters, a consistent snapshot of them with every queue's exact counts,
//! the number of open long polls and streams, and the store's statistics.
//!
//! # Invariants
//! - Counters are plain `u64` fields of the in-memory queue and topic, bumped
//!   by the operation that already holds the engine lock, after its write was
//!   applied: no extra locking or hashing per message, and a counter never
//!   counts a write that failed.
//! - They are not persisted: they start at 0 when the process starts (and
//!   when a queue or topic is created again), the usual semantics of
//!   Prometheus counters; a deleted queue or topic takes its counters along.
//! - [`Engine::snapshot`] reads everything under one lock, so the counts of
//!   all queues and all counters are of the same instant.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Engine, QueueStats};
use crate::storage::StorageStats;

/// Operations on one queue since the process started (or the queue was
/// created). Each counts messages, not calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Added by a send, or as the copy of a topic publish.
    pub sent: u64,
    /// Handed to a receiver (pull or stream); a redelivery counts again.
    pub received: u64,
    /// Deleted by receipt handle (acknowledged). Purges do not count.
    pub deleted: u64,
    /// Moved from this queue to its dead-letter queue.
    pub dead_lettered: u64,
    /// Deleted by the retention sweep.
    pub expired: u64,
    /// Moved out of this (dead-letter) queue by `RedriveMessages`.
    pub redriven: u64,
}

/// Publishes to one topic since the process started (or it was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCounters {
    /// Messages published (a message that failed alone does not count).
    pub published: u64,
    /// Copies written into subscribed queues.
    pub delivered: u64,
}

/// One queue in an [`EngineSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub name: String,
    pub stats: QueueStats,
    pub counters: QueueCounters,
}

/// One topic in an [`EngineSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSnapshot {
    pub name: String,
    pub counters: TopicCounters,
}

/// Every queue and topic at one instant, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    pub queues: Vec<QueueSnapshot>,
    pub topics: Vec<TopicSnapshot>,
}

/// Calls that hold a client's attention: counted while they run.
#[derive(Debug, Default)]
pub(super) struct Activity {
    long_polls: AtomicU64,
    streams: AtomicU64,
}

/// Counts one open call until dropped, so a call whose future is dropped
/// (the client went away) is uncounted too.
#[must_use = "the call is counted as open only while the guard lives"]
#[derive(Debug)]
pub struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    fn open(count: &'a AtomicU64) -> OpenGuard<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        OpenGuard(count)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Engine {
    /// Every queue's exact counts and counters, and every topic's counters,
    /// read under one lock (due timers are applied first, as for `get_queue`).
    pub fn snapshot(&self) -> EngineSnapshot {
        let now = self.now_ms();
        let mut st = self.lock();
        st.promote_due(now);
        let queues = st
            .names
            .iter()
            .map(|(name, id)| {
                let q = &st.queues[id];
                QueueSnapshot {
                    name: name.clone(),
                    stats: q.stats(now),
                    counters: q.counters,
                }
            })
            .collect();
        let topics = st
            .topics
            .iter()
            .map(|(name, t)| TopicSnapshot {
                name: name.clone(),
                counters: t.counters,
            })
            .collect();
        EngineSnapshot { queues, topics }
    }

    /// Counts a `ReceiveMessages` call as an open long poll while the guard lives.
    pub fn long_poll_opened(&self) -> OpenGuard<'_> {
        OpenGuard::open(&self.activity.long_polls)
    }

    /// Counts a stream (`StreamMessages` or `SendStream`) as open while the
    /// guard lives.
    pub fn stream_opened(&self) -> OpenGuard<'_> {
        OpenGuard::open(&self.activity.streams)
    }

    /// `ReceiveMessages` calls in progress.
    pub fn long_polls_open(&self) -> u64 {
        self.activity.long_polls.load(Ordering::Relaxed)
    }

    /// Streams open (`StreamMessages` and `SendStream`).
    pub fn streams_open(&self) -> u64 {
        self.activity.streams.load(Ordering::Relaxed)
    }

    /// The store's size on disk, compaction debt and write stalls.
    pub fn storage_stats(&self) -> StorageStats {
        self.store.stats()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::engine::{
        AttributeChanges, NewMessage, NewPublication, ReceiveOptions, RedrivePolicy,
    };
    use crate::storage::SyncMode;

    fn msg() -> NewMessage {
        NewMessage {
            body: Bytes::from_static(b"m"),
            ..Default::default()
        }
    }

    fn now(wait: u32) -> ReceiveOptions {
        ReceiveOptions {
            max_messages: 10,
            visibility_timeout_seconds: Some(0),
            wait_time_seconds: Some(wait),
            ..ReceiveOptions::default()
        }
    }

    fn queue<'a>(s: &'a EngineSnapshot, name: &str) -> &'a QueueSnapshot {
        s.queues.iter().find(|q| q.name == name).expect("queue")
    }

    #[tokio::test(start_paused = true)]
    async fn counters_follow_every_operation() {
        let dir = tempfile::tempdir().unwrap();
        let e = Arc::new(Engine::open(dir.path(), SyncMode::None).unwrap());
        tokio::spawn(e.clone().run_scheduler());
        e.create_queue("dlq", &AttributeChanges::default())
            .await
            .unwrap();
        let changes = AttributeChanges {
            message_retention_seconds: Some(60),
            redrive_policy: Some(Some(RedrivePolicy {
                dead_letter_queue: "dlq".into(),
                max_receive_count: 1,
            })),
            ..Default::default()
        };
        e.create_queue("q", &changes).await.unwrap();
        e.send("q", vec![msg(), msg(), msg()]).await.unwrap();
        // One receive of all three (visibility 0), then the second receive
        // moves them to the dead-letter queue instead.
        let got = e.receive("q", now(0)).await.unwrap();
        assert_eq!(got.len(), 3);
        assert!(e.receive("q", now(0)).await.unwrap().is_empty());
        assert_eq!(e.redrive("dlq", "", 2).await.unwrap(), 2);
        let again = e.receive("q", now(0)).await.unwrap();
        let handles: Vec<&str> = again.iter().map(|m| m.receipt_handle.as_str()).collect();
        e.delete("q", &handles[..1]).await.unwrap();
        // The other redriven message expires with the retention period.
        tokio::time::sleep(Duration::from_secs(61)).await;

        let s = e.snapshot();
        assert_eq!(
            queue(&s, "q").counters,
            QueueCounters {
                sent: 3,
                received: 5,
                deleted: 1,
                dead_lettered: 3,
                expired: 1,
                redriven: 0,
            }
        );
        assert_eq!(queue(&s, "q").stats, QueueStats::default());
        assert_eq!(queue(&s, "dlq").counters.redriven, 2);
        assert_eq!(queue(&s, "dlq").stats.visible, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn topic_counters_count_publishes_and_copies() {
        let dir = tempfile::tempdir().unwrap();
        let e = Arc::new(Engine::open(dir.path(), SyncMode::None).unwrap());
        e.create_topic("t").await.unwrap();
        for q in ["a", "b"] {
            e.create_queue(q, &AttributeChanges::default())
                .await
                .unwrap();
            e.subscribe("t", q, "", true).await.unwrap();
        }
        let publication = NewPublication {
            body: Bytes::from_static(b"p"),
            ..Default::default()
        };
        e.publish("t", vec![publication.clone(), publication])
            .await
            .unwrap();
        let s = e.snapshot();
        assert_eq!(
            s.topics[0].counters,
            TopicCounters {
                published: 2,
                delivered: 4
            }
        );
        assert_eq!(queue(&s, "a").counters.sent, 2);
        e.delete_queue("a").await.unwrap();
        assert!(e.snapshot().queues.iter().all(|q| q.name != "a"));
    }

    #[tokio::test]
    async fn open_guards_count_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), SyncMode::None).unwrap();
        let poll = e.long_poll_opened();
        let stream = e.stream_opened();
        assert_eq!((e.long_polls_open(), e.streams_open()), (1, 1));
        drop(poll);
        drop(stream);
        assert_eq!((e.long_polls_open(), e.streams_open()), (0, 0));
    }
}
