//! The log store against openraft's storage suite, and three in-process
//! nodes over an in-memory network replicating engine commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::StorageError;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::engine::{AttributeChanges, NewMessage, ReceiveOptions};
use crate::storage::SyncMode;

/// Opens a node's log store and state machine in `dir`.
fn open_node_storage(dir: &Path) -> (Arc<Store>, Arc<Engine>) {
    let log = Arc::new(Store::open(&dir.join("raft"), SyncMode::Always).expect("open the log"));
    let engine =
        Arc::new(Engine::open(&dir.join("engine"), SyncMode::Always).expect("open the engine"));
    (log, engine)
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, engine) = open_node_storage(dir.path());
        let (ls, sm) = storage(log, engine, &dir.path().join("snapshots")).expect("storage");
        Ok((dir, ls, sm))
    }
}

type TheSuite = Suite<TypeConfig, LogStore, StateMachine, Builder, tempfile::TempDir>;

/// openraft's storage suite, whole: the log store, the state machine and
/// its snapshots (built, transferred, installed).
#[test]
fn the_storage_passes_openraft_s_storage_suite() {
    TheSuite::test_all(Builder).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn vote_committed_and_purge_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vote = openraft::Vote::new_committed(3, 2);
    let purged = openraft::LogId::new(openraft::CommittedLeaderId::new(3, 2), 7);
    {
        let mut ls = LogStore::new(Arc::new(Store::open(dir.path(), SyncMode::Always).unwrap()));
        ls.save_vote(&vote).await.unwrap();
        ls.save_committed(Some(purged)).await.unwrap();
        ls.purge(purged).await.unwrap();
    }
    let mut ls = LogStore::new(Arc::new(Store::open(dir.path(), SyncMode::Always).unwrap()));
    assert_eq!(ls.read_vote().await.unwrap(), Some(vote));
    assert_eq!(ls.read_committed().await.unwrap(), Some(purged));
    let state = ls.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(purged));
    assert_eq!(state.last_log_id, Some(purged), "no entry after the purge");
}

/// The nodes of an in-memory network, by id; a node not in it is down.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<u64, Raft>>>,
}

/// A connection to one node through the [`Router`].
struct Connection {
    router: Router,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &Member) -> Connection {
        Connection {
            router: self.clone(),
            target,
        }
    }
}

impl Connection {
    fn raft<E: std::error::Error>(&self) -> Result<Raft, RPCError<u64, Member, E>> {
        self.router
            .nodes
            .lock()
            .unwrap()
            .get(&self.target)
            .cloned()
            .ok_or_else(|| {
                RPCError::Unreachable(Unreachable::new(&std::io::Error::other("node is down")))
            })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let raft = self.raft()?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        let raft = self.raft()?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let raft = self.raft()?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Starts node `id` over the storage in `dir` and joins it to `router`.
async fn start(id: u64, dir: &Path, router: &Router) -> (Raft, Arc<Engine>) {
    // A restarted node's stores may still be held by its stopped Raft's
    // tasks for a moment: retry the open until they let go.
    let mut tries = 0;
    let (log, engine) = loop {
        let opened = Store::open(&dir.join("raft"), SyncMode::Always)
            .map(|log| (log, Engine::open(&dir.join("engine"), SyncMode::Always)));
        match opened {
            Ok((log, Ok(engine))) => break (Arc::new(log), Arc::new(engine)),
            _ if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => panic!("node {id}'s stores stay locked"),
        }
    };
    let (ls, sm) = storage(log, engine.clone(), &dir.join("snapshots")).unwrap();
    let config = Arc::new(
        raft_config(crate::config::DEFAULT_SNAPSHOT_EVERY)
            .validate()
            .unwrap(),
    );
    let raft = Raft::new(id, config, router.clone(), ls, sm).await.unwrap();
    engine.replicate_through(RaftLog::new(
        id,
        raft.clone(),
        super::proposer::Lease::watch(&raft),
    ));
    router.nodes.lock().unwrap().insert(id, raft.clone());
    (raft, engine)
}

/// Creates `queue`, sends to it, receives two and deletes one, through
/// the leader's engine (its decisions go through the log).
async fn work(leader: &Engine, queue: &str, sends: usize) {
    leader
        .create_queue(queue, &AttributeChanges::default())
        .await
        .unwrap();
    for i in 0..sends {
        let message = NewMessage {
            body: Bytes::from(format!("message {i}")),
            attributes: Default::default(),
            delay_seconds: None,
        };
        leader.send(queue, vec![message]).await.unwrap();
    }
    let got = leader
        .receive(
            queue,
            ReceiveOptions {
                max_messages: 2,
                visibility_timeout_seconds: Some(30),
                wait_time_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "the leader received what it sent");
    let handle = got[0].receipt_handle.clone();
    leader.delete(queue, &[handle.as_str()]).await.unwrap();
}

/// The index of the last entry in `raft`'s log.
fn last_index(raft: &Raft) -> u64 {
    raft.metrics().borrow().last_log_index.unwrap_or(0)
}

async fn wait_applied(raft: &Raft, index: u64) {
    raft.wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", raft.metrics().borrow().running_state));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_apply_the_leader_s_commands_and_a_restarted_node_catches_up_from_a_snapshot() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let router = Router::default();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        nodes.push(start(i as u64 + 1, dir.path(), &router).await);
    }
    let members: BTreeMap<u64, Member> = (1..=3).map(|id| (id, Member::default())).collect();
    nodes[0].0.initialize(members).await.unwrap();
    let metrics = nodes[0]
        .0
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap();
    let leader = metrics.current_leader.unwrap();
    for (raft, _) in &nodes {
        raft.wait(Some(Duration::from_secs(10)))
            .current_leader(leader, "every node knows the leader")
            .await
            .unwrap();
    }
    let (leader_raft, leader_engine) = nodes[leader as usize - 1].clone();

    // A follower refuses to decide, and says who leads.
    let follower = &nodes[(1..=3).find(|&id| id != leader).unwrap() as usize - 1].1;
    let refused = follower
        .create_queue("q", &AttributeChanges::default())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains(&format!("node {leader} does")),
        "{refused}"
    );

    work(&leader_engine, "q", 5).await;
    let mut last = last_index(&leader_raft);
    for (raft, _) in &nodes {
        wait_applied(raft, last).await;
    }
    let now = nodes.iter().map(|(_, e)| e.now_ms()).max().unwrap();
    let first = nodes[0].1.dump(now);
    assert!(first.contains("\"q\""), "the queue was created: {first}");
    for (_, engine) in &nodes[1..] {
        assert_eq!(engine.dump(now), first, "a replica differs");
    }

    // Stop a follower, commit more without it, snapshot the leader and
    // purge its log: the follower, restarted over its stores, can only
    // catch up from the snapshot.
    let down = (1..=3).find(|&id| id != leader).unwrap();
    let (raft, engine) = nodes.remove(down as usize - 1);
    router.nodes.lock().unwrap().remove(&down);
    raft.shutdown().await.unwrap();
    drop((raft, engine));
    work(&leader_engine, "r", 3).await;
    last = last_index(&leader_raft);
    wait_applied(&leader_raft, last).await;
    leader_raft.trigger().snapshot().await.unwrap();
    let wait = || leader_raft.wait(Some(Duration::from_secs(10)));
    wait()
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= last),
            "a snapshot",
        )
        .await
        .unwrap();
    leader_raft.trigger().purge_log(last).await.unwrap();
    wait()
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= last),
            "the log purged",
        )
        .await
        .unwrap();
    let restarted = start(down, dirs[down as usize - 1].path(), &router).await;
    wait_applied(&restarted.0, last).await;
    let installed = restarted.0.metrics().borrow().snapshot;
    assert!(
        installed.is_some_and(|s| s.index >= last),
        "the restarted node installed the leader's snapshot: {installed:?}"
    );
    for (raft, _) in &nodes {
        wait_applied(raft, last).await;
    }
    let now = nodes
        .iter()
        .map(|(_, e)| e.now_ms())
        .chain([restarted.1.now_ms()])
        .max()
        .unwrap();
    let want = restarted.1.dump(now);
    assert!(
        want.contains("\"r\""),
        "the restarted node has the queue made while it was down"
    );
    for (_, engine) in &nodes {
        assert_eq!(engine.dump(now), want, "the restarted node differs");
    }
    drop(leader_engine);
    for (raft, _) in nodes.iter().chain([&restarted]) {
        raft.shutdown().await.unwrap();
    }
}

/// A replica that crashed after keeping the leader's snapshot but before
/// its engine held it (openraft may have purged the log up to it already)
/// installs it when its state machine opens.
#[tokio::test]
async fn a_kept_snapshot_newer_than_the_engine_is_installed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Engine::open(&dir.path().join("leader"), SyncMode::None).unwrap();
    leader
        .create_queue("q", &AttributeChanges::default())
        .await
        .unwrap();
    let cmd = leader.journal().pop().expect("the create was journaled");
    // A replica that applied it as entry 1 of a log.
    let replica = Engine::open(&dir.path().join("replica"), SyncMode::None).unwrap();
    let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 1);
    let record = serde_json::to_vec(&(
        Some(log_id),
        openraft::StoredMembership::<u64, Member>::default(),
    ))
    .unwrap();
    assert!(
        replica
            .apply_entry(
                1,
                Some(&crate::engine::replication::Proposal::first_of_log(cmd)),
                crate::storage::keys::RAFT_APPLIED,
                &record
            )
            .unwrap()
    );
    let kept = dir.path().join("kept");
    let (meta, _) = snapshot::Snapshots::open(&kept)
        .unwrap()
        .build(&replica)
        .unwrap();
    assert_eq!(meta.last_log_id, Some(log_id));

    // An empty engine that crashed with that snapshot kept.
    let crashed = Arc::new(Engine::open(&dir.path().join("crashed"), SyncMode::None).unwrap());
    let sm = StateMachine::open(crashed.clone(), &kept).unwrap();
    let mut sm = sm;
    use openraft::storage::RaftStateMachine as _;
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id));
    let now = replica.now_ms();
    assert_eq!(crashed.dump(now), replica.dump(now));
}
