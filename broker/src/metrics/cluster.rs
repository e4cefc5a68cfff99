//! Cluster mode: this node's view of the cluster, read from openraft's
//! metrics at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::collector::{gauge, gauges};
use crate::cluster::Raft;

/// Reads a node's Raft metrics on each scrape.
pub struct ClusterCollector {
    pub id: u64,
    pub raft: Raft,
    /// Requests this node passed on to the leader (`forward::Leader`).
    pub forwarded: Arc<AtomicU64>,
    /// Rounds this node stood for election in (`cluster::elections`).
    pub election_rounds: Arc<AtomicU64>,
    /// The index of the last entry this node knows committed
    /// (`LogStore::committed`).
    pub committed: Arc<AtomicU64>,
    /// The other members' clocks as this node reads them.
    pub clocks: Arc<crate::cluster::clocks::Clocks>,
    /// The age of `raft`'s metrics, for `broker_cluster_quorum_ack_age_ms`.
    pub lease: crate::cluster::proposer::Lease,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCollector")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.raft.metrics().borrow().clone();
        let last_log = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let committed = self.committed.load(Ordering::Relaxed);
        let rows: [(&str, &str, u64); 10] = [
            ("broker_cluster_node_id", "This node's id.", self.id),
            (
                "broker_cluster_leader",
                "The id of the leader this node knows; 0 while it knows none.",
                m.current_leader.unwrap_or(0),
            ),
            (
                "broker_cluster_is_leader",
                "1 while this node leads, else 0.",
                u64::from(m.state.is_leader()),
            ),
            ("broker_cluster_term", "The Raft term.", m.current_term),
            (
                "broker_cluster_last_log_index",
                "The index of the last entry in this node's log.",
                last_log,
            ),
            (
                "broker_cluster_committed_index",
                "The index of the last entry this node knows committed.",
                committed,
            ),
            (
                "broker_cluster_applied_index",
                "The index of the last entry this node applied.",
                applied,
            ),
            (
                "broker_cluster_apply_lag_entries",
                "Entries this node knows committed but has not applied yet.",
                committed.saturating_sub(applied),
            ),
            (
                "broker_cluster_snapshot_index",
                "The index of the last entry in this node's latest snapshot; 0: none.",
                m.snapshot.map_or(0, |l| l.index),
            ),
            (
                "broker_cluster_voters",
                "Voters in the membership this node knows.",
                m.membership_config.membership().voter_ids().count() as u64,
            ),
        ];
        for (name, help, value) in rows {
            gauge(&mut encoder, name, help, None, value)?;
        }
        for (name, help, value) in [
            (
                "broker_cluster_forwarded_requests",
                "Client requests this node passed on to the leader.",
                &self.forwarded,
            ),
            (
                "broker_cluster_election_rounds",
                "Rounds this node stood for election in.",
                &self.election_rounds,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value.load(Ordering::Relaxed), None)?;
        }
        gauges(
            &mut encoder,
            "broker_cluster_clock_offset_ms",
            "Another member's clock minus this node's, as last read (within half a round trip; readings older than 10 s are left out).",
            None,
            self.clocks.offsets().into_iter().map(|(node, o)| {
                (
                    NodeLabel {
                        node: node.to_string(),
                    },
                    o.ms,
                )
            }),
        )?;
        if let Some(skew) = self.clocks.skew_ms() {
            encoder
                .encode_descriptor(
                    "broker_cluster_clock_skew_ms",
                    "This node's clock minus the voters' median clock; beyond --max-clock-skew-ms either way, it does not stand for election.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&skew)?;
        }
        gauge(
            &mut encoder,
            "broker_cluster_max_clock_skew_ms",
            "--max-clock-skew-ms: how far this node's clock may be from the voters' median clock for it to stand for election.",
            None,
            self.clocks.max_skew_ms,
        )?;
        if let Some(ms) = self.lease.quorum_ack_age_ms(&m) {
            gauge(
                &mut encoder,
                "broker_cluster_quorum_ack_age_ms",
                "On the leader: how long ago a majority last acknowledged it; beyond 500 ms it decides and serves nothing (its lease).",
                None,
                ms,
            )?;
        }
        if let Some(replication) = &m.replication {
            gauges(
                &mut encoder,
                "broker_cluster_replication_lag_entries",
                "On the leader: entries of its log a node has not confirmed yet.",
                None,
                replication.iter().map(|(node, matched)| {
                    let matched = matched.map_or(0, |l| l.index);
                    (
                        NodeLabel {
                            node: node.to_string(),
                        },
                        last_log.saturating_sub(matched),
                    )
                }),
            )?;
        }
        Ok(())
    }
}
