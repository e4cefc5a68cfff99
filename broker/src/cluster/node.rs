//! A cluster node's startup: its identity in the data dir, its stores, its
//! Raft, and how it enters the cluster.
//!
//! # Data dir
//! - The engine's RocksDB is the data dir itself, as on a single node.
//! - `cluster/identity.json`: this node's id and its cluster's id. A node
//!   started with another `--node-id` than the one recorded is refused.
//! - `cluster/log/`: the Raft log, vote and committed id (a RocksDB of
//!   its own, synced per `--sync`). The engine's writes are not synced:
//!   after a crash the log has every committed entry after the applied id
//!   the engine recorded, and they are applied again.
//!
//! # Entering the cluster
//! - With a recorded cluster id, the node is a member already: it starts
//!   from its log and the cluster takes it back.
//! - Without `--join`: the node makes a new cluster of one voter (itself)
//!   and a new cluster id. An engine that already holds single-node data
//!   keeps it: the node snapshots it and purges its log before it serves,
//!   so every node that joins starts from that snapshot. Until that is
//!   done, `cluster/identity.json` says so (`snapshot_pending`), and a
//!   restart does it again.
//! - With `--join SEED,...`: once the node serves its cluster listener
//!   ([`join`] runs after), it asks the seeds in turn, until one answers,
//!   to add it (`network`'s join), and records the cluster id it is given.
//!   A joining node must start empty: the cluster's snapshot would replace
//!   whatever its data dir holds, so single-node data there is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clocks::Clocks;
use super::network::{
    ClusterId, Dial, Join, Joined, Network, RaftService, call, channel, source_ip,
};
use super::proposer::Lease;
use super::snapshot::Receiver;
use super::{Member, Raft, RaftLog, raft_config, storage};
use crate::config::ClusterConfig;
use crate::engine::Engine;
use crate::storage::{Store, SyncMode};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "the data dir {dir} belongs to node {recorded} (of cluster {cluster}); it was started as node {given}. Start it with --node-id {recorded}, or give node {given} a data dir of its own"
    )]
    OtherNode {
        dir: PathBuf,
        recorded: u64,
        given: u64,
        cluster: String,
    },
    #[error(
        "the data dir {dir} holds single-node data, and a joining node takes the cluster's data in place of its own. Start this node without --join to make it the first node of a new cluster with its data, or give it an empty data dir to join"
    )]
    SingleNodeData { dir: PathBuf },
    #[error("cluster identity file {path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("--node-id must be at least 1")]
    NodeIdZero,
    #[error(
        "the data dir {dir} belongs to node {node_id} of cluster {cluster}; start it with --node-id {node_id} and --cluster-listen, or start a single node on another data dir"
    )]
    Member {
        dir: PathBuf,
        node_id: u64,
        cluster: String,
    },
    #[error(transparent)]
    Storage(#[from] crate::Error),
    #[error(transparent)]
    Snapshot(#[from] super::snapshot::SnapshotError),
    #[error("cannot start Raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// What `cluster/identity.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
    cluster_id: Option<String>,
    /// A new cluster made from single-node data has not yet snapshotted
    /// it and purged its log (see the module docs).
    #[serde(default)]
    snapshot_pending: bool,
}

/// A started node.
pub struct Node {
    pub id: u64,
    /// How connections to other nodes are made.
    pub dial: Dial,
    /// The cluster listener's TLS (`--cluster-tls-*`); `None`: plaintext.
    pub server_tls: Option<tonic::transport::ServerTlsConfig>,
    pub raft: Raft,
    /// The age of `raft`'s metrics, for its leader lease.
    pub lease: Lease,
    pub engine: Arc<Engine>,
    pub cluster: ClusterId,
    /// Where clients reach this node (see [`Member::client_addr`]).
    client_addr: String,
    /// Rounds this node stood for election in (`broker_cluster_election_rounds_total`).
    pub election_rounds: Arc<std::sync::atomic::AtomicU64>,
    /// The index of the last entry known committed ([`LogStore::committed`]).
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    /// The other members' clocks as this node reads them (`clocks`).
    pub clocks: Arc<Clocks>,
    identity_path: PathBuf,
    snapshot_pending: bool,
    snapshots: Arc<Receiver>,
    /// Why the Raft log's store failed, once it has (`storage`,
    /// "Failures"): the server stops the node, as it does for the engine's.
    pub log_failure: tokio::sync::watch::Receiver<Option<String>>,
}

impl Node {
    /// Opens the node's stores in `data_dir` and starts its Raft; a node
    /// without a cluster and without seeds makes a new cluster of itself.
    /// Clients reach it at `client_addr` (empty: unknown). `faults`: storage
    /// failures to inject into both stores (tests).
    pub async fn start(
        config: &ClusterConfig,
        data_dir: &Path,
        sync: SyncMode,
        client_addr: String,
        faults: Option<Arc<crate::storage::faults::Faults>>,
    ) -> Result<Node, NodeError> {
        if config.node_id == 0 {
            return Err(NodeError::NodeIdZero);
        }
        let (server_tls, client_tls) = match &config.tls {
            Some(tls) => {
                let (server, client) = crate::tls::cluster_tls(tls)?;
                (Some(server), Some(client))
            }
            None => (None, None),
        };
        let dial = Dial {
            from: source_ip(config.listen),
            tls: client_tls,
        };
        let cluster_dir = data_dir.join("cluster");
        let identity_path = cluster_dir.join("identity.json");
        let identity = read_identity(&identity_path)?;
        if let Some(id) = &identity
            && id.node_id != config.node_id
        {
            return Err(NodeError::OtherNode {
                dir: data_dir.to_path_buf(),
                recorded: id.node_id,
                given: config.node_id,
                cluster: id.cluster_id.clone().unwrap_or_else(|| "none yet".into()),
            });
        }
        // The engine first: it refuses a non-empty directory without a
        // database, which `cluster/` would make of a new one.
        let engine = Arc::new(Engine::open_with_clock(
            data_dir,
            SyncMode::None,
            faults.clone(),
            crate::clock::Clock::new().shifted(config.test_clock_offset_ms),
        )?);
        std::fs::create_dir_all(&cluster_dir).map_err(|e| NodeError::Identity {
            path: cluster_dir.clone(),
            reason: e.to_string(),
        })?;
        let log = Arc::new(
            Store::open_log(&cluster_dir.join("log"), sync, faults).map_err(crate::Error::from)?,
        );
        let log_failure = log.failure();
        let cluster: ClusterId = Arc::default();
        let snapshot_pending = identity.as_ref().is_some_and(|i| i.snapshot_pending);
        let recorded = identity.and_then(|i| i.cluster_id);
        if let Some(c) = &recorded {
            let _ = cluster.set(c.clone());
        }
        // Data no log entry put there: a single node's. A new cluster
        // keeps it (below); a join would replace it.
        let single_node_data = !engine.is_empty()
            && engine
                .recorded(crate::storage::keys::RAFT_APPLIED)?
                .is_none();
        if single_node_data && recorded.is_none() && !config.join.is_empty() {
            return Err(NodeError::SingleNodeData {
                dir: data_dir.to_path_buf(),
            });
        }
        // From the store, not from openraft's metrics: they may not show
        // the log yet when `Raft::new` returns.
        let fresh_log = {
            use crate::storage::keys;
            log.get(keys::RAFT_VOTE)
                .map_err(crate::Error::from)?
                .is_none()
                && log
                    .get(keys::RAFT_PURGED)
                    .map_err(crate::Error::from)?
                    .is_none()
                && log.scan_prefix(&[keys::RAFT_LOG_PREFIX]).next().is_none()
        };
        let (ls, sm) = storage(log, engine.clone(), &cluster_dir.join("snapshots"))?;
        let committed = ls.committed();
        let snapshots = Arc::new(Receiver::new(sm.snapshots().clone()));
        let raft_config = Arc::new(
            raft_config(config.snapshot_every)
                .validate()
                .map_err(|e| NodeError::Raft(e.to_string()))?,
        );
        let shorter_log = Arc::new(tokio::sync::Notify::new());
        let network = Network {
            cluster: cluster.clone(),
            dial: dial.clone(),
            shorter_log: shorter_log.clone(),
        };
        let timeouts = raft_config.election_timeout_min..raft_config.election_timeout_max;
        let raft = Raft::new(config.node_id, raft_config, network, ls, sm)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let election_rounds = Arc::<std::sync::atomic::AtomicU64>::default();
        let clocks = Arc::new(Clocks::new(config.max_clock_skew_ms));
        let lease = Lease::watch(&raft);
        tokio::spawn(super::elections::jitter_rounds(
            raft.clone(),
            timeouts,
            election_rounds.clone(),
            shorter_log,
            clocks.within_bound(),
            lease.handing_over.clone(),
        ));
        tokio::spawn(super::clocks::probe(
            raft.clone(),
            config.node_id,
            engine.local_clock(),
            cluster.clone(),
            dial.clone(),
            clocks.clone(),
        ));
        engine.replicate_through(RaftLog::new(config.node_id, raft.clone(), lease.clone()));
        let node = Node {
            id: config.node_id,
            dial,
            server_tls,
            raft,
            lease,
            engine,
            cluster,
            client_addr,
            election_rounds,
            committed,
            clocks,
            identity_path,
            snapshot_pending: snapshot_pending || (single_node_data && recorded.is_none()),
            snapshots,
            log_failure,
        };
        if recorded.is_none() && config.join.is_empty() {
            // The id first: a crash after it restarts as this cluster's
            // member, and `initialize` below is then refused as done.
            let _ = node.cluster.set(uuid::Uuid::new_v4().to_string());
            node.write_identity()?;
        } else {
            node.write_identity()?;
        }
        if config.join.is_empty() && fresh_log {
            let members = BTreeMap::from([(
                config.node_id,
                Member {
                    addr: config.address(),
                    client_addr: node.client_addr.clone(),
                },
            )]);
            node.raft
                .initialize(members)
                .await
                .map_err(|e| NodeError::Raft(format!("initializing the cluster: {e}")))?;
            tracing::info!(
                node = node.id,
                cluster = %node.cluster.get().map_or("", |s| s),
                "started a new cluster"
            );
        }
        if node.snapshot_pending {
            return node.snapshot_single_node_data().await;
        }
        Ok(node)
    }

    /// A new cluster made from single-node data: once this node leads and
    /// has applied its log, snapshots its engine and purges the log, so
    /// that a node that joins is sent the snapshot (the data no entry
    /// holds) rather than the log from its start.
    async fn snapshot_single_node_data(mut self) -> Result<Node, NodeError> {
        let failed = |step: &str, e: &dyn std::fmt::Display| {
            NodeError::Raft(format!("snapshotting the single-node data ({step}): {e}"))
        };
        // Electing itself takes a second; the build scans all the data,
        // however long that takes (a restart would start it again).
        let wait = || self.raft.wait(None);
        let led = self
            .raft
            .wait(Some(Duration::from_secs(30)))
            .metrics(
                |m| {
                    m.current_leader == Some(self.id)
                        && m.last_applied.map(|l| l.index) == m.last_log_index
                },
                "this node leads and has applied its log",
            )
            .await
            .map_err(|e| failed("electing itself", &e))?;
        let index = led.last_applied.map_or(0, |l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| failed("building", &e))?;
        wait()
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= index),
                "a snapshot",
            )
            .await
            .map_err(|e| failed("building", &e))?;
        self.raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(|e| failed("purging the log", &e))?;
        wait()
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= index),
                "the log purged",
            )
            .await
            .map_err(|e| failed("purging the log", &e))?;
        self.snapshot_pending = false;
        self.write_identity()?;
        tracing::info!(
            index,
            "the single-node data is snapshotted: nodes that join start from it"
        );
        Ok(self)
    }

    /// Whether this node's Raft has nothing in its log and no vote: it was
    /// never initialized nor joined.
    async fn log_is_empty(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.last_log_index.is_none() && m.current_term == 0
    }

    /// Whether this node is ready to serve clients, or why not: it has
    /// joined and votes, knows a leader it is not cut off from, and has
    /// applied nearly all of its log (gRPC health says NOT_SERVING
    /// otherwise, see `service::health`).
    pub fn ready(&self) -> Result<(), String> {
        /// Entries in the log not yet applied: past this, catching up.
        const APPLY_LAG: u64 = 1_000;
        if self.must_join() {
            return Err("joining the cluster".into());
        }
        let m = self.raft.metrics().borrow().clone();
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == self.id)
        {
            return Err("not a voter (catching up, or removed)".into());
        }
        match super::proposer::leadership(self.id, &m, &self.lease) {
            super::proposer::Leadership::Leads | super::proposer::Leadership::Other(_) => {}
            super::proposer::Leadership::Held(why) | super::proposer::Leadership::Unknown(why) => {
                return Err(why);
            }
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        let lag = m.last_log_index.unwrap_or(0).saturating_sub(applied);
        if lag > APPLY_LAG {
            return Err(format!("catching up: {lag} log entries not yet applied"));
        }
        Ok(())
    }

    /// Whether this node still has to join (it has no cluster id).
    pub fn must_join(&self) -> bool {
        self.cluster.get().is_none()
    }

    /// The service other nodes call.
    pub fn service(&self) -> RaftService {
        RaftService {
            raft: self.raft.clone(),
            id: self.id,
            cluster: self.cluster.clone(),
            dial: self.dial.clone(),
            snapshots: self.snapshots.clone(),
            clock: self.engine.local_clock(),
            clocks: self.clocks.clone(),
            handing_over: self.lease.handing_over.clone(),
        }
    }

    /// Asks the seeds in turn to add this node, until one does (every
    /// second, until `stop`), then records the cluster id.
    pub async fn join(&self, config: &ClusterConfig, stop: impl Future<Output = ()>) {
        let request = self.join_request(config).await;
        let attempts = async {
            loop {
                for seed in &config.join {
                    let reply = match channel(seed, &self.dial) {
                        Ok(c) => {
                            call::<Join, Result<Joined, String>>(c, &self.cluster, "join", &request)
                                .await
                                .map_err(|s| s.message().to_string())
                                .and_then(|r| r)
                        }
                        Err(e) => Err(e),
                    };
                    match reply {
                        Ok(joined) => return joined,
                        Err(e) => tracing::info!(seed, error = %e, "join not done yet; retrying"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            joined = attempts => {
                let _ = self.cluster.set(joined.cluster_id.clone());
                match self.write_identity() {
                    Ok(()) => tracing::info!(node = self.id, cluster = %joined.cluster_id, "joined the cluster"),
                    Err(e) => tracing::error!(error = %e, "joined, but the identity was not recorded"),
                }
            }
            _ = stop => {}
        }
    }

    /// What this node asks when it joins or announces itself.
    async fn join_request(&self, config: &ClusterConfig) -> Join {
        Join {
            id: self.id,
            addr: config.address(),
            client_addr: self.client_addr.clone(),
            empty_log: self.log_is_empty().await,
            forwarded: false,
        }
    }

    /// A member that restarted with another client address than the
    /// membership records asks the leader to record it (every second,
    /// until done or `stop`), so that clients are sent to the right place.
    pub async fn announce(&self, config: &ClusterConfig, stop: impl Future<Output = ()>) {
        let request = self.join_request(config).await;
        let announce = async {
            loop {
                let recorded = {
                    let m = self.raft.metrics().borrow().clone();
                    m.membership_config
                        .membership()
                        .get_node(&self.id)
                        .map(|n| n.client_addr.clone())
                };
                match recorded {
                    // Removed, or not in the membership it knows yet.
                    None => {}
                    Some(addr) if addr == self.client_addr => return,
                    Some(_) => match self.service().join(request.clone()).await {
                        Ok(_) => return,
                        Err(e) => {
                            tracing::debug!(error = %e, "client address not recorded yet; retrying")
                        }
                    },
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            () = announce => {}
            () = stop => {}
        }
    }

    fn write_identity(&self) -> Result<(), NodeError> {
        let identity = Identity {
            node_id: self.id,
            cluster_id: self.cluster.get().cloned(),
            snapshot_pending: self.snapshot_pending,
        };
        let json = serde_json::to_vec_pretty(&identity).expect("an identity serializes");
        let tmp = self.identity_path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            std::fs::write(&tmp, &json)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &self.identity_path)
        };
        write().map_err(|e| NodeError::Identity {
            path: self.identity_path.clone(),
            reason: e.to_string(),
        })
    }
}

/// A single node refuses a data dir that belongs to a cluster node: it
/// would serve, and change, a replica on its own.
pub fn refuse_member_data_dir(data_dir: &Path) -> Result<(), NodeError> {
    match read_identity(&data_dir.join("cluster").join("identity.json"))? {
        None => Ok(()),
        Some(id) => Err(NodeError::Member {
            dir: data_dir.to_path_buf(),
            node_id: id.node_id,
            cluster: id.cluster_id.unwrap_or_else(|| "none yet".into()),
        }),
    }
}

fn read_identity(path: &Path) -> Result<Option<Identity>, NodeError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| NodeError::Identity {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::Identity {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}
