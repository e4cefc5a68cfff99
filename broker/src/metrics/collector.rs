//! The engine's metrics, read at scrape time: queue counts and counters,
//! topic counters, open long polls and streams, storage. One
//! [`Engine::snapshot`] per scrape, so every queue series is of the same
//! instant. A family with no series (no queues yet) is left out whole.

use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::engine::Engine;
use crate::engine::counters::{QueueCounters, TopicCounters};

/// Reads the engine on each scrape; reports nothing once it is gone.
#[derive(Debug)]
pub struct EngineCollector {
    engine: Weak<Engine>,
}

impl EngineCollector {
    pub fn new(engine: Weak<Engine>) -> EngineCollector {
        EngineCollector { engine }
    }
}

/// A metric read from a value: (name, help, how to read it).
type Field<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The queue counters.
const QUEUE_COUNTERS: [Field<QueueCounters>; 6] = [
    (
        "broker_queue_sent",
        "Messages added to the queue by a send or as a topic's copy.",
        |c| c.sent,
    ),
    (
        "broker_queue_received",
        "Messages handed to receivers; each redelivery counts.",
        |c| c.received,
    ),
    (
        "broker_queue_deleted",
        "Messages deleted by receipt handle.",
        |c| c.deleted,
    ),
    (
        "broker_queue_dead_lettered",
        "Messages moved from the queue to its dead-letter queue.",
        |c| c.dead_lettered,
    ),
    (
        "broker_queue_expired",
        "Messages deleted at the end of the queue's retention period.",
        |c| c.expired,
    ),
    (
        "broker_queue_redriven",
        "Messages moved out of the queue by RedriveMessages.",
        |c| c.redriven,
    ),
];

/// The topic counters.
const TOPIC_COUNTERS: [Field<TopicCounters>; 2] = [
    (
        "broker_topic_published",
        "Messages published to the topic.",
        |c| c.published,
    ),
    (
        "broker_topic_copies_delivered",
        "Copies of published messages written into subscribed queues.",
        |c| c.delivered,
    ),
];

impl Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(engine) = self.engine.upgrade() else {
            return Ok(());
        };
        let snapshot = engine.snapshot();
        let queues = &snapshot.queues;
        if !queues.is_empty() {
            let mut m = encoder.encode_descriptor(
                "broker_queue_messages",
                "Messages in the queue by state: visible, in_flight, delayed.",
                None,
                MetricType::Gauge,
            )?;
            for q in queues {
                let s = &q.stats;
                for (state, value) in [
                    ("visible", s.visible),
                    ("in_flight", s.in_flight),
                    ("delayed", s.delayed),
                ] {
                    m.encode_family(&[("queue", q.name.as_str()), ("state", state)])?
                        .encode_gauge(&value)?;
                }
            }
            gauges(
                &mut encoder,
                "broker_queue_oldest_message_age",
                "Age of the oldest message in the queue; 0 when it is empty.",
                Some(&Unit::Seconds),
                queues.iter().map(|q| {
                    (
                        [("queue", q.name.as_str())],
                        q.stats.oldest_message_age_seconds,
                    )
                }),
            )?;
            for (name, help, field) in QUEUE_COUNTERS {
                counters(
                    &mut encoder,
                    name,
                    help,
                    queues
                        .iter()
                        .map(|q| ([("queue", q.name.as_str())], field(&q.counters))),
                )?;
            }
        }
        if !snapshot.topics.is_empty() {
            for (name, help, field) in TOPIC_COUNTERS {
                counters(
                    &mut encoder,
                    name,
                    help,
                    snapshot
                        .topics
                        .iter()
                        .map(|t| ([("topic", t.name.as_str())], field(&t.counters))),
                )?;
            }
        }

        gauge(
            &mut encoder,
            "broker_long_polls_open",
            "ReceiveMessages calls in progress (waiting for messages).",
            None,
            engine.long_polls_open(),
        )?;
        gauge(
            &mut encoder,
            "broker_streams_open",
            "StreamMessages and SendStream streams open (what max_streams counts).",
            None,
            engine.streams_open(),
        )?;

        let s = engine.storage_stats();
        let storage: [(&str, &str, u64); 5] = [
            (
                "broker_storage_sst_files",
                "Size of all RocksDB SST files, obsolete ones not yet deleted included.",
                s.sst_files_bytes,
            ),
            (
                "broker_storage_live_sst_files",
                "Size of the SST files of RocksDB's current version.",
                s.live_sst_files_bytes,
            ),
            (
                "broker_storage_wal",
                "Size of the write-ahead log files.",
                s.wal_bytes,
            ),
            (
                "broker_storage_memtable",
                "Size of RocksDB's memtables (memory).",
                s.memtable_bytes,
            ),
            (
                "broker_storage_pending_compaction",
                "Bytes RocksDB estimates compaction must rewrite.",
                s.pending_compaction_bytes,
            ),
        ];
        for (name, help, value) in storage {
            gauge(&mut encoder, name, help, Some(&Unit::Bytes), value)?;
        }
        gauge(
            &mut encoder,
            "broker_storage_write_stopped",
            "1 while RocksDB stops writes until compaction catches up, else 0.",
            None,
            u64::from(s.write_stopped),
        )?;
        let disk = engine.disk();
        if let Some(free) = disk.free() {
            gauge(
                &mut encoder,
                "broker_disk_free",
                "Free space on the data dir's file system at the last reading (every second).",
                Some(&Unit::Bytes),
                free,
            )?;
        }
        gauge(
            &mut encoder,
            "broker_disk_min_free",
            "min_free_disk: below it, sends, publishes and redrives are refused; 0: no floor.",
            Some(&Unit::Bytes),
            disk.floor(),
        )?;
        gauge(
            &mut encoder,
            "broker_disk_low",
            "1 while the data dir's free space is below min_free_disk (sends refused), else 0.",
            None,
            u64::from(disk.is_low()),
        )?;
        gauge(
            &mut encoder,
            "broker_max_messages",
            "max_messages: messages the broker holds at most over all queues; 0: no cap.",
            None,
            engine.broker_cap().get(),
        )?;
        gauge(
            &mut encoder,
            "broker_storage_delayed_write_rate",
            "The rate RocksDB slows writes to while delayed; 0 when not delayed.",
            Some(&Unit::Other("bytes_per_second".into())),
            s.delayed_write_rate_bytes_per_second,
        )?;
        Ok(())
    }
}

/// One gauge without labels.
pub(super) fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(name, help, unit, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// A gauge family: one series per label set.
pub(super) fn gauges<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl Iterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        m.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A counter family (the encoder appends `_total`): one series per label set.
fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use crate::engine::{AttributeChanges, Engine, NewMessage};
    use crate::metrics::Metrics;
    use crate::storage::SyncMode;

    #[tokio::test(start_paused = true)]
    async fn scrape_reports_exact_counts_and_expired_messages() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), SyncMode::None).unwrap());
        let scheduler = tokio::spawn(engine.clone().run_scheduler());
        let metrics = Metrics::new(Arc::downgrade(&engine));
        let changes = AttributeChanges {
            message_retention_seconds: Some(60),
            ..Default::default()
        };
        engine.create_queue("orders", &changes).await.unwrap();
        let message = NewMessage {
            body: Bytes::from_static(b"m"),
            ..Default::default()
        };
        let delayed = NewMessage {
            delay_seconds: Some(10),
            ..message.clone()
        };
        engine.send("orders", vec![message, delayed]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;

        let text = metrics.encode().unwrap();
        for line in [
            "# TYPE broker_queue_messages gauge",
            "broker_queue_messages{queue=\"orders\",state=\"visible\"} 1",
            "broker_queue_messages{queue=\"orders\",state=\"delayed\"} 1",
            "broker_queue_oldest_message_age_seconds{queue=\"orders\"} 5",
            "# TYPE broker_queue_sent counter",
            "broker_queue_sent_total{queue=\"orders\"} 2",
            "broker_long_polls_open 0",
            "broker_storage_write_stopped 0",
            "# TYPE broker_storage_wal_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));

        // Both outlive the 60 s retention period.
        tokio::time::sleep(Duration::from_secs(61)).await;
        let text = metrics.encode().unwrap();
        assert!(
            text.lines()
                .any(|l| l == "broker_queue_expired_total{queue=\"orders\"} 2"),
            "{text}"
        );
        assert!(text.contains("broker_queue_messages{queue=\"orders\",state=\"visible\"} 0"));

        // Without the engine, only what does not need it is reported.
        engine.shutdown();
        scheduler.await.unwrap();
        drop(engine);
        let text = metrics.encode().unwrap();
        assert!(!text.contains("broker_queue"), "{text}");
    }
}
