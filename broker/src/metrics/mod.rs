//! Prometheus metrics: one [`Metrics`] per server (no global registry, so
//! servers in one process, as in the integration tests, each report only
//! their own queues), served as OpenMetrics text at `/metrics` by [`http`].
//!
//! # Where values come from
//! - Queue counts and every per-queue and per-topic counter are read from
//!   the engine at scrape time ([`collector`]), in one snapshot under the
//!   engine lock: the counts are exact and current, not sampled. The engine
//!   bumps its counters inside the operations that already hold its lock.
//! - Per-RPC metrics are recorded by a tower layer around the gRPC services
//!   ([`rpc`]), when the call's status is known.
//! - Storage values are RocksDB properties, read at scrape time.
//!
//! Counters are not persisted: they start at 0 when the process starts, and
//! when a queue or topic is created (again); a deleted queue or topic drops
//! its series. Prometheus' `rate()` and `increase()` handle such resets.
//!
//! # Metrics
//! Queues (label `queue`):
//! - `broker_queue_messages{queue,state}` gauge: messages by `state`:
//!   `visible` (receivable now), `in_flight` (received and hidden: its
//!   visibility timeout, or a retry backoff, is running), `delayed` (sent
//!   with a delay not yet over, never received). The same counts as
//!   `GetQueue`'s stats.
//! - `broker_queue_oldest_message_age_seconds{queue}` gauge: age of the
//!   oldest message in the queue, whatever its state; 0 when empty.
//! - `broker_queue_sent_total{queue}` counter: messages added by a send, or
//!   as the copy of a topic publish.
//! - `broker_queue_received_total{queue}` counter: messages handed to
//!   receivers (pull or stream); each redelivery counts.
//! - `broker_queue_deleted_total{queue}` counter: messages deleted by
//!   receipt handle (acknowledged). Purges do not count.
//! - `broker_queue_dead_lettered_total{queue}` counter: messages moved from
//!   this queue to its dead-letter queue.
//! - `broker_queue_expired_total{queue}` counter: messages deleted because
//!   they outlived the queue's retention period.
//! - `broker_queue_redriven_total{queue}` counter: messages moved out of
//!   this (dead-letter) queue by `RedriveMessages`.
//!
//! Topics (label `topic`):
//! - `broker_topic_published_total{topic}` counter: messages published.
//! - `broker_topic_copies_delivered_total{topic}` counter: copies written
//!   into subscribed queues (one per queue whose filter matched).
//!
//! RPCs:
//! - `broker_rpc_requests_total{method,code}` counter: finished calls by
//!   method (`broker.v1.QueueService/SendMessage`; `other` for a path the
//!   server does not serve) and gRPC status code name (`OK`, `NOT_FOUND`,
//!   ...; `CANCELLED` when the client went away first).
//! - `broker_rpc_duration_seconds{method}` histogram: from the request to
//!   the call's status; for `StreamMessages`, the life of the stream.
//! - `broker_long_polls_open` gauge: `ReceiveMessages` calls in progress (a
//!   call that finds messages returns at once, so these are the waiting ones).
//! - `broker_streams_open` gauge: `StreamMessages` and `SendStream` streams
//!   open (what `max_streams` counts).
//!
//! Storage (RocksDB; bytes):
//! - `broker_storage_sst_files_bytes` gauge: all SST files on disk,
//!   including obsolete ones not deleted yet.
//! - `broker_storage_live_sst_files_bytes` gauge: SST files of the current
//!   version.
//! - `broker_storage_wal_bytes` gauge: write-ahead log files on disk.
//! - `broker_storage_memtable_bytes` gauge: memtables (memory, not disk).
//! - `broker_storage_pending_compaction_bytes` gauge: estimated bytes
//!   compaction must rewrite; growth means compaction falls behind.
//! - `broker_storage_write_stopped` gauge: 1 while writes are stopped
//!   (stalled) until compaction catches up, else 0.
//! - `broker_storage_delayed_write_rate_bytes_per_second` gauge: the rate
//!   writes are slowed to while delayed; 0 when they are not.
//!
//! Disk (the data dir's file system, read every second; `storage::disk`):
//! - `broker_disk_free_bytes` gauge: free space at the last reading.
//! - `broker_disk_min_free_bytes` gauge: `min_free_disk` (0: no floor).
//! - `broker_disk_low` gauge: 1 while below the floor (sends, publishes
//!   and redrives refused), else 0.
//! - `broker_max_messages` gauge: the broker's cap on queued messages over
//!   all queues (`--max-messages`; 0: none), against the sum of
//!   `broker_queue_messages`.
//!
//! Cluster mode (this node's view; `cluster`):
//! - `broker_cluster_node_id`, `broker_cluster_leader` (0: none known),
//!   `broker_cluster_is_leader` (0 or 1), `broker_cluster_term`,
//!   `broker_cluster_last_log_index`, `broker_cluster_committed_index`,
//!   `broker_cluster_applied_index`, `broker_cluster_apply_lag_entries`
//!   (committed, not yet applied), `broker_cluster_snapshot_index` (0:
//!   none), `broker_cluster_voters` gauges.
//! - `broker_cluster_quorum_ack_age_ms` gauge, on the leader: how long ago
//!   a majority last acknowledged it (its lease: 500 ms).
//! - `broker_cluster_replication_lag_entries{node}` gauge, on the leader:
//!   entries of its log each node has not confirmed yet.
//! - `broker_cluster_forwarded_requests_total` counter: client requests
//!   this node passed on to the leader (a client that follows the leader's
//!   address, as the Rust client does, makes few).
//! - `broker_cluster_clock_offset_ms{node}` gauge: another member's clock
//!   minus this node's, read every second (`cluster::clocks`);
//!   `broker_cluster_clock_skew_ms`: this node's clock minus the voters'
//!   median; `broker_cluster_max_clock_skew_ms`: the bound beyond which it
//!   does not stand for election.
//! - `broker_cluster_election_rounds_total` counter: rounds this node
//!   stood for election in (each a new term as a candidate).

pub mod cluster;
pub mod collector;
pub mod http;
pub mod rpc;

use std::sync::{Arc, Weak};

use prometheus_client::registry::Registry;

use crate::engine::Engine;

/// The metrics of one server: a registry whose collectors read the engine
/// and the RPC recorder. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Only collectors are registered: every value is read at scrape time.
    registry: Arc<Registry>,
    /// Recorded by the [`rpc::RpcMetricsLayer`] on the gRPC server.
    rpc: Arc<rpc::RpcMetrics>,
}

impl Metrics {
    /// Metrics over `engine`. A weak reference, so that metrics (and a
    /// scrape in progress) never keep the database open past shutdown: once
    /// the engine is gone, only the RPC metrics are reported.
    pub fn new(engine: Weak<Engine>) -> Metrics {
        Metrics::with_cluster(engine, None)
    }

    /// [`Metrics::new`], with the `broker_cluster_*` metrics of a cluster
    /// node.
    pub fn with_cluster(
        engine: Weak<Engine>,
        cluster: Option<cluster::ClusterCollector>,
    ) -> Metrics {
        let rpc = Arc::new(rpc::RpcMetrics::new());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector::EngineCollector::new(engine)));
        if let Some(cluster) = cluster {
            registry.register_collector(Box::new(cluster));
        }
        registry.register_collector(Box::new(rpc.clone()));
        Metrics {
            registry: Arc::new(registry),
            rpc,
        }
    }

    /// The tower layer that records `broker_rpc_*` for every gRPC call.
    pub fn rpc_layer(&self) -> rpc::RpcMetricsLayer {
        rpc::RpcMetricsLayer::new(self.rpc.clone())
    }

    /// Every metric in the OpenMetrics text format (with `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}
