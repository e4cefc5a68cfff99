//! Node-to-node traffic over gRPC: the client side (openraft's
//! `RaftNetwork`) and the server side ([`RaftService`]).
//!
//! One internal RPC, `/broker.cluster.Raft/Call`, carries every message
//! between nodes as a [`Frame`]: a kind (`append`, `vote`, `snapshot`,
//! `join`, `remove`, `ping`, `clock`) and openraft's serde form of the
//! request in postcard ([`super::codec`]); the reply is a frame holding
//! `Result<reply, error>`, also in postcard. It is served on the
//! cluster listener (`--cluster-listen`) beside the broker's own services,
//! and is not a public API: nodes of one cluster run the same version.
//!
//! Joining: a node started with `--join` sends `join` (its id and cluster
//! address) to a seed. A seed that does not lead passes the request on to
//! its leader. The leader adds the node as a learner, waits until it has
//! caught up, makes it a voter, and answers with the cluster id. A node id
//! already in the cluster under another address is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Response, Status};

use super::{Member, Raft, TypeConfig};

/// The largest frame between nodes (a batch of log entries).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// The path of the one internal RPC.
const PATH: &str = "/broker.cluster.Raft/Call";

/// One message between nodes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(string, tag = "1")]
    pub kind: String,
    /// The request or reply in postcard.
    #[prost(bytes = "vec", tag = "2")]
    pub body: Vec<u8>,
    /// The sender's cluster id; empty while it has none (joining).
    #[prost(string, tag = "3")]
    pub cluster_id: String,
}

/// A node's cluster id, once it has one (set at initialization or when
/// its join is answered).
pub type ClusterId = Arc<OnceLock<String>>;

fn id_of(cluster: &ClusterId) -> String {
    cluster.get().cloned().unwrap_or_default()
}

/// A node asking to join: its id, cluster address and client address.
/// A member asks too when the client address it starts with is not the
/// one the membership has (the leader then records the new one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub id: u64,
    pub addr: String,
    /// See [`Member::client_addr`].
    #[serde(default)]
    pub client_addr: String,
    /// The node has no log entry and no vote (a new or wiped data dir).
    pub empty_log: bool,
    /// Passed on by a node that does not lead: not passed on again.
    pub forwarded: bool,
}

/// How long the leader waits for a joining node to catch up as a learner
/// before it answers (the node asks again).
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// The answer to a join: the cluster's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub cluster_id: String,
}

/// A request to remove node `id` from the membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Remove {
    pub id: u64,
}

/// Why a removal was not made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Refused {
    NotFound(String),
    FailedPrecondition(String),
    Unavailable(String),
}

/// How long the leader waits for a voter's answer before it counts it as
/// not answering (a removal must leave a majority that answers).
const PING_WAIT: Duration = Duration::from_secs(1);

/// How this node connects to other nodes.
#[derive(Clone, Default)]
pub struct Dial {
    /// The IP connections leave from: this node's cluster listener IP
    /// (see [`source_ip`]).
    pub from: Option<IpAddr>,
    /// With cluster TLS (`--cluster-tls-*`): this node's certificate, which
    /// the other nodes require, and the CA their certificates must chain to.
    pub tls: Option<ClientTlsConfig>,
}

/// A lazily connected channel to a node's cluster address, dialed as
/// `dial` says.
pub fn channel(addr: &str, dial: &Dial) -> Result<Channel, String> {
    let scheme = if dial.tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad cluster address {addr:?}: {e}"))?;
    if let Some(tls) = &dial.tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("cluster TLS to {addr:?}: {e}"))?;
    }
    Ok(endpoint
        .local_address(dial.from)
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Sends `request` as a frame of `kind` to `channel`; the reply.
pub async fn call<Q: Serialize, A: DeserializeOwned>(
    channel: Channel,
    cluster: &ClusterId,
    kind: &str,
    request: &Q,
) -> Result<A, Status> {
    call_sized(channel, cluster, kind, request, SMALL_FRAME).await
}

/// A frame's size, estimated, unless it carries log entries.
const SMALL_FRAME: usize = 256;

/// [`call`] with the size of `request` in postcard, estimated.
async fn call_sized<Q: Serialize, A: DeserializeOwned>(
    channel: Channel,
    cluster: &ClusterId,
    kind: &str,
    request: &Q,
    size: usize,
) -> Result<A, Status> {
    let body = super::codec::encode(request, size)
        .map_err(|e| Status::internal(format!("a {kind} frame: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_FRAME_BYTES)
        .max_encoding_message_size(MAX_FRAME_BYTES);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let frame = Frame {
        kind: kind.to_string(),
        body,
        cluster_id: id_of(cluster),
    };
    let reply: Response<Frame> = grpc
        .unary(
            Request::new(frame),
            http::uri::PathAndQuery::from_static(PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    super::codec::decode(&reply.into_inner().body)
        .map_err(|e| Status::internal(format!("a peer's {kind} reply: {e}")))
}

/// The IP a node's connections to other nodes leave from: the IP of its
/// cluster listener, unless that is unspecified (`0.0.0.0`), so that its
/// peers (and firewalls between them) see one address per node.
pub fn source_ip(listen: SocketAddr) -> Option<IpAddr> {
    (!listen.ip().is_unspecified()).then(|| listen.ip())
}

/// openraft's network: a [`Connection`] per target node.
#[derive(Clone)]
pub struct Network {
    pub cluster: ClusterId,
    pub dial: Dial,
    /// Told when a vote this node asked for is refused because the
    /// voter's log is longer (`elections`).
    pub shorter_log: Arc<tokio::sync::Notify>,
}

pub struct Connection {
    peer: Peer,
    shorter_log: Arc<tokio::sync::Notify>,
    /// The last append request that carried entries, while its reply may
    /// still be awaited by a retry.
    in_flight: Option<InFlight>,
}

/// Where a [`Connection`]'s requests go.
#[derive(Clone)]
struct Peer {
    target: u64,
    channel: Result<Channel, String>,
    cluster: ClusterId,
}

type AppendReply = Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>>;

/// An append request on its way, in a task of its own: openraft 0.9
/// gives each append request its heartbeat interval (100 ms) and drops it
/// then, and a request carrying more than a follower takes in (receive,
/// write, sync) in 100 ms would be sent again from the start every time,
/// and never get through. openraft's retry of the same entries from the
/// same point waits for this one instead of sending them again; the
/// heartbeats in between go on their own, so the leader keeps its lease.
struct InFlight {
    vote: openraft::Vote<u64>,
    prev: Option<openraft::LogId<u64>>,
    last: Option<openraft::LogId<u64>>,
    reply: futures::future::Shared<futures::future::BoxFuture<'static, Arc<AppendReply>>>,
}

/// `reply`, owned (openraft's response is not `Clone`).
fn owned(reply: &AppendReply) -> AppendReply {
    use AppendEntriesResponse::*;
    match reply {
        Ok(Success) => Ok(Success),
        Ok(PartialSuccess(matching)) => Ok(PartialSuccess(*matching)),
        Ok(Conflict) => Ok(Conflict),
        Ok(HigherVote(vote)) => Ok(HigherVote(*vote)),
        Err(e) => Err(e.clone()),
    }
}

/// How long an append request in flight (see [`InFlight`]) may take: a
/// command of the largest size, [`crate::engine::replication::COMMAND_BYTES_MAX`],
/// needs a few seconds on loopback; a follower that does not answer
/// within this is taken as unreachable.
const APPEND_TTL: Duration = Duration::from_secs(30);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &Member) -> Connection {
        Connection {
            peer: Peer {
                target,
                channel: channel(&node.addr, &self.dial),
                cluster: self.cluster.clone(),
            },
            shorter_log: self.shorter_log.clone(),
            in_flight: None,
        }
    }
}

impl Peer {
    async fn send<Q: Serialize, A: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        kind: &str,
        request: &Q,
        size: usize,
        ttl: Duration,
    ) -> Result<A, RPCError<u64, Member, RaftError<u64, E>>> {
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let reply = tokio::time::timeout(
            ttl,
            call_sized::<Q, Result<A, RaftError<u64, E>>>(
                channel,
                &self.cluster,
                kind,
                request,
                size,
            ),
        )
        .await
        .map_err(|_| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "no {kind} reply within {ttl:?}"
            ))))
        })?
        .map_err(|status| {
            RPCError::Unreachable(openraft::error::Unreachable::new(&std::io::Error::other(
                status.to_string(),
            )))
        })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> AppendReply {
        let wanted = rpc.entries.last().map(|e| e.log_id);
        let (keep, bytes) = entries_in_frame(rpc.entries.iter().map(entry_bytes));
        rpc.entries.truncate(keep);
        let size = SMALL_FRAME + bytes;
        let last = rpc.entries.last().map(|e| e.log_id);
        if last.is_none() {
            // A heartbeat: on its own, leaving any request in flight be.
            return (self.peer)
                .send("append", &rpc, SMALL_FRAME, option.hard_ttl())
                .await;
        }
        let (vote, leader_commit) = (rpc.vote, rpc.leader_commit);
        let (in_flight, joined) = match self.in_flight.take() {
            // The same point, and the entries in flight are the first of
            // these (openraft's retry, with what was appended meanwhile).
            Some(f) if f.vote == vote && f.prev == rpc.prev_log_id && f.last <= last => (f, true),
            _ => {
                let prev = rpc.prev_log_id;
                let peer = self.peer.clone();
                let task =
                    tokio::spawn(async move { peer.send("append", &rpc, size, APPEND_TTL).await });
                let reply = async move {
                    Arc::new(task.await.unwrap_or_else(|e| {
                        Err(RPCError::Network(NetworkError::new(
                            &std::io::Error::other(format!("the append request's task: {e}")),
                        )))
                    }))
                };
                let reply = futures::FutureExt::shared(futures::FutureExt::boxed(reply));
                (
                    InFlight {
                        vote,
                        prev,
                        last,
                        reply,
                    },
                    false,
                )
            }
        };
        let (sent, reply) = (in_flight.last, in_flight.reply.clone());
        // Dropped by openraft's timeout from here on, it is found again.
        self.in_flight = Some(in_flight);
        let reply = owned(&*reply.await);
        let delivered = reply.is_ok();
        let reply = match reply {
            // The follower took them in before this request was made, but
            // openraft dates its answer from now (the leader's lease): it
            // must be asked again, with a heartbeat, which it answers at once.
            Ok(AppendEntriesResponse::Success) if joined => {
                let beat = AppendEntriesRequest::<TypeConfig> {
                    vote,
                    prev_log_id: sent,
                    leader_commit,
                    entries: Vec::new(),
                };
                let ttl = option.hard_ttl();
                match self.peer.send("append", &beat, SMALL_FRAME, ttl).await {
                    Ok(AppendEntriesResponse::Conflict) => Err(RPCError::Network(
                        NetworkError::new(&std::io::Error::other(
                            "a follower that took entries in says it lacks them",
                        )),
                    )),
                    reply => reply,
                }
            }
            reply => reply,
        };
        if reply.is_ok() || !delivered {
            self.in_flight = None;
        }
        Ok(match reply? {
            // The rest goes in the next request.
            AppendEntriesResponse::Success if sent < wanted => {
                AppendEntriesResponse::PartialSuccess(sent)
            }
            reply => reply,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        let size = SMALL_FRAME + rpc.data.len();
        self.peer
            .send("snapshot", &rpc, size, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        let reply: VoteResponse<u64> = (self.peer)
            .send("vote", &rpc, SMALL_FRAME, option.hard_ttl())
            .await?;
        if !reply.vote_granted && reply.last_log_id > rpc.last_log_id {
            self.shorter_log.notify_one();
        }
        Ok(reply)
    }
}

/// The entries' bytes one append request carries, at most (estimated).
/// openraft 0.9 gives each append request its heartbeat interval (100 ms)
/// to be sent, written and synced by the follower, and answered; one that
/// takes longer goes on in the background ([`InFlight`]) and is answered
/// to openraft's retry. Small requests keep the heartbeats and the
/// commits of a follower that catches up flowing: measured on loopback on
/// 2 cores, an entry of 1 MiB commits in about 40 ms. A larger entry goes
/// alone.
const APPEND_BYTES: usize = 1 << 20;

// A command of the largest size replicated, alone in an entry, fits a frame.
const _: () = assert!(crate::engine::replication::COMMAND_BYTES_MAX + (1 << 20) < MAX_FRAME_BYTES);

/// How many entries of these estimated sizes one append request carries
/// (at least one, and no more once they pass [`APPEND_BYTES`]), and their
/// bytes. Sizes after the last one kept are not asked for.
fn entries_in_frame(sizes: impl Iterator<Item = usize>) -> (usize, usize) {
    let mut bytes = 0;
    let mut keep = 0;
    for size in sizes {
        if keep > 0 && bytes + size > APPEND_BYTES {
            break;
        }
        bytes += size;
        keep += 1;
    }
    (keep, bytes)
}

/// An entry's bytes in postcard, estimated: its commands' prost bytes,
/// plus the fields around them.
pub(super) fn entry_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    use openraft::EntryPayload;
    use prost::Message as _;
    const FIELDS: usize = 64;
    match &entry.payload {
        EntryPayload::Blank => FIELDS,
        EntryPayload::Normal(request) => request
            .0
            .commands
            .iter()
            .map(|c| c.encoded_len() + 8)
            .sum::<usize>()
            .saturating_add(FIELDS),
        EntryPayload::Membership(m) => {
            FIELDS
                + m.nodes()
                    .map(|(_, n)| n.addr.len() + n.client_addr.len() + 32)
                    .sum::<usize>()
        }
    }
}

/// The server side of [`PATH`] on the cluster listener.
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
    pub id: u64,
    pub cluster: ClusterId,
    pub dial: Dial,
    /// Where the leader's snapshot chunks go.
    pub snapshots: Arc<super::snapshot::Receiver>,
    /// This node's local clock, read by `clock` frames (`clocks`).
    pub clock: crate::clock::Clock,
    /// The other members' clocks as this node reads them.
    pub clocks: Arc<super::clocks::Clocks>,
    /// Set while this node, leading, hands its leadership over
    /// (`elections::Handover`): it changes no membership meanwhile.
    pub handing_over: Arc<std::sync::atomic::AtomicBool>,
}

impl NamedService for RaftService {
    const NAME: &'static str = "broker.cluster.Raft";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<http::Request<Body>> for RaftService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
                .apply_max_message_size_config(Some(MAX_FRAME_BYTES), Some(MAX_FRAME_BYTES));
            Ok(grpc.unary(Handler(service), req).await)
        })
    }
}

struct Handler(RaftService);

impl tonic::server::UnaryService<Frame> for Handler {
    type Response = Frame;
    type Future = BoxFuture<Result<Response<Frame>, Status>>;

    fn call(&mut self, request: Request<Frame>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let frame = request.into_inner();
            let mine = id_of(&service.cluster);
            if !mine.is_empty() && !frame.cluster_id.is_empty() && frame.cluster_id != mine {
                return Err(Status::failed_precondition(format!(
                    "node {} belongs to cluster {mine}; the {} frame came from cluster {}",
                    service.id, frame.kind, frame.cluster_id
                )));
            }
            let raft = &service.raft;
            let body = match frame.kind.as_str() {
                "append" => reply(raft.append_entries(decode(&frame)?).await),
                "vote" => reply(raft.vote(decode(&frame)?).await),
                "snapshot" => reply(service.receive_snapshot(decode(&frame)?).await),
                "join" => reply(service.join(decode(&frame)?).await),
                "remove" => {
                    let remove: Remove = decode(&frame)?;
                    reply(service.remove(remove.id).await)
                }
                "ping" => reply(service.id),
                "clock" => reply(service.clock.now_ms()),
                other => return Err(Status::unimplemented(format!("unknown frame {other:?}"))),
            }?;
            Ok(Response::new(Frame {
                kind: frame.kind,
                body,
                cluster_id: mine,
            }))
        })
    }
}

fn decode<T: DeserializeOwned>(frame: &Frame) -> Result<T, Status> {
    super::codec::decode(&frame.body)
        .map_err(|e| Status::invalid_argument(format!("a {} frame: {e}", frame.kind)))
}

fn reply<T: Serialize>(value: T) -> Result<Vec<u8>, Status> {
    super::codec::encode(&value, SMALL_FRAME).map_err(|e| Status::internal(e.to_string()))
}

impl RaftService {
    /// openraft's chunked snapshot transfer, received here rather than by
    /// `Raft::install_snapshot`: the whole snapshot is kept on disk before
    /// openraft is handed it (`snapshot::Receiver` says why).
    async fn receive_snapshot(
        &self,
        req: openraft::raft::InstallSnapshotRequest<super::TypeConfig>,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<u64>,
        openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
    > {
        use openraft::error::{InstallSnapshotError, RaftError};
        let mine = self.raft.metrics().borrow().vote;
        if req.vote < mine {
            // A leader of an older term: it learns of the newer one.
            return Ok(openraft::raft::InstallSnapshotResponse { vote: mine });
        }
        let stored = |e: super::snapshot::SnapshotError| {
            RaftError::Fatal(openraft::error::Fatal::StorageError(
                super::state_machine::snapshot_error(
                    Some(&req.meta),
                    openraft::ErrorVerb::Write,
                    e,
                ),
            ))
        };
        let kept = match self
            .snapshots
            .chunk(&req.meta, req.offset, &req.data, req.done)
            .await
            .map_err(stored)?
        {
            Err(mismatch) => {
                return Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                    mismatch,
                )));
            }
            Ok(None) => return Ok(openraft::raft::InstallSnapshotResponse { vote: mine }),
            Ok(Some(kept)) => kept,
        };
        let file = tokio::fs::File::open(&kept).await.map_err(|e| {
            stored(super::snapshot::SnapshotError::Io {
                path: kept.clone(),
                source: e,
            })
        })?;
        let snapshot = openraft::storage::Snapshot {
            meta: req.meta.clone(),
            snapshot: Box::new(file),
        };
        let response = self
            .raft
            .install_full_snapshot(req.vote, snapshot)
            .await
            .map_err(RaftError::Fatal)?;
        Ok(openraft::raft::InstallSnapshotResponse {
            vote: response.vote,
        })
    }

    /// Removes node `id` from the membership: on the leader, once the
    /// voters that remain have a majority that answers; elsewhere, passed
    /// on to the leader. Returns the voters that remain.
    pub async fn remove(&self, id: u64) -> Result<Vec<u64>, Refused> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        match metrics.current_leader {
            Some(leader) if leader == self.id && self.handing_over() => {
                return Err(Refused::Unavailable(super::proposer::handing_over(self.id)));
            }
            Some(leader) if leader == self.id => {}
            Some(leader) => {
                let addr = membership
                    .get_node(&leader)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| {
                        Refused::Unavailable(format!(
                            "leader {leader} has no address in the membership"
                        ))
                    })?;
                let channel = channel(&addr, &self.dial).map_err(Refused::Unavailable)?;
                let remove = Remove { id };
                return call::<Remove, Result<Vec<u64>, Refused>>(
                    channel,
                    &self.cluster,
                    "remove",
                    &remove,
                )
                .await
                .map_err(|s| {
                    Refused::Unavailable(format!(
                        "passing the removal to leader {leader} at {addr}: {}",
                        s.message()
                    ))
                })?;
            }
            None => {
                return Err(Refused::Unavailable(format!(
                    "node {} knows no leader: an election is under way, or it cannot reach a \
                     majority; retry",
                    self.id
                )));
            }
        }
        if membership.get_node(&id).is_none() {
            let members: Vec<u64> = membership.nodes().map(|(n, _)| *n).collect();
            return Err(Refused::NotFound(format!(
                "node {id} is not a member of this cluster (members: {members:?})"
            )));
        }
        let voter = membership.voter_ids().any(|v| v == id);
        let remaining: Vec<u64> = membership.voter_ids().filter(|&v| v != id).collect();
        if voter {
            if remaining.is_empty() {
                return Err(Refused::FailedPrecondition(format!(
                    "node {id} is the only voter: removing it would leave the cluster none"
                )));
            }
            let mut silent = Vec::new();
            for &v in &remaining {
                if v != self.id && !self.answers(&membership, v).await {
                    silent.push(v);
                }
            }
            let majority = remaining.len() / 2 + 1;
            if remaining.len() - silent.len() < majority {
                return Err(Refused::FailedPrecondition(format!(
                    "removing node {id} would leave voters {remaining:?}, of which {silent:?} \
                     do not answer: fewer than a majority ({majority}) would; bring them back \
                     or remove them first"
                )));
            }
        }
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| Refused::Unavailable(format!("removing node {id}: {e}")))?;
        tracing::info!(node = id, voters = ?remaining, "node removed from the cluster");
        Ok(remaining)
    }

    fn handing_over(&self) -> bool {
        self.handing_over.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether node `id` answers a ping within [`PING_WAIT`].
    async fn answers(&self, membership: &openraft::Membership<u64, Member>, id: u64) -> bool {
        let Some(node) = membership.get_node(&id) else {
            return false;
        };
        let Ok(channel) = channel(&node.addr, &self.dial) else {
            return false;
        };
        let ping = call::<(), u64>(channel, &self.cluster, "ping", &());
        matches!(tokio::time::timeout(PING_WAIT, ping).await, Ok(Ok(answered)) if answered == id)
    }

    /// Adds node `join.id` at `join.addr`: on the leader, as a learner
    /// that is then made a voter; elsewhere, passed on to the leader. A
    /// member's new client address replaces its old one.
    pub(super) async fn join(&self, join: Join) -> Result<Joined, String> {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(leader) if leader == self.id && self.handing_over() => {
                return Err(super::proposer::handing_over(self.id));
            }
            Some(leader) if leader == self.id => {}
            Some(leader) if !join.forwarded => {
                let addr = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| format!("leader {leader} has no address in the membership"))?;
                let channel = channel(&addr, &self.dial)?;
                let join = Join {
                    forwarded: true,
                    ..join
                };
                return call::<Join, Result<Joined, String>>(channel, &self.cluster, "join", &join)
                    .await
                    .map_err(|s| format!("passing the join to leader {leader} at {addr}: {s}"))?;
            }
            _ => return Err(format!("node {} knows no leader yet; retry", self.id)),
        }
        let cluster_id =
            self.cluster.get().cloned().ok_or_else(|| {
                format!("node {} leads but has no cluster id yet; retry", self.id)
            })?;
        let membership = metrics.membership_config.membership().clone();
        if let Some(node) = membership.get_node(&join.id) {
            if node.addr != join.addr {
                return Err(format!(
                    "node id {} is already a member of this cluster at {}; each node needs its own id",
                    join.id, node.addr
                ));
            }
            let voter = membership.voter_ids().any(|v| v == join.id);
            if voter && join.empty_log {
                // It would vote and count as a copy with nothing: two
                // leaders in a term, or a committed entry lost.
                return Err(format!(
                    "node {} is a voter of this cluster but came back with an empty log (a \
                     new or wiped data dir): remove it first (broker cluster remove-node {}), \
                     then join it again",
                    join.id, join.id
                ));
            }
            if node.client_addr != join.client_addr {
                let node = Member {
                    addr: join.addr.clone(),
                    client_addr: join.client_addr.clone(),
                };
                self.raft
                    .change_membership(
                        ChangeMembers::SetNodes(BTreeMap::from([(join.id, node)])),
                        false,
                    )
                    .await
                    .map_err(|e| format!("recording node {}'s client address: {e}", join.id))?;
                tracing::info!(node = join.id, client_addr = %join.client_addr, "node's client address recorded");
            }
            if voter {
                return Ok(Joined { cluster_id });
            }
        }
        let node = Member {
            addr: join.addr.clone(),
            client_addr: join.client_addr.clone(),
        };
        tokio::time::timeout(JOIN_WAIT, self.raft.add_learner(join.id, node, true))
            .await
            .map_err(|_| {
                format!(
                    "node {} has not caught up as a learner within {} s; it will ask again",
                    join.id,
                    JOIN_WAIT.as_secs()
                )
            })?
            .map_err(|e| format!("adding node {} as a learner: {e}", join.id))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([join.id])), false)
            .await
            .map_err(|e| format!("making node {} a voter: {e}", join.id))?;
        tracing::info!(node = join.id, addr = %join.addr, "node joined the cluster");
        Ok(Joined { cluster_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_request_carries_what_fits_a_mebibyte_and_at_least_one_entry() {
        const MB: usize = 1 << 20;
        assert_eq!(entries_in_frame(std::iter::repeat_n(MB, 300)), (1, MB));
        assert_eq!(
            entries_in_frame(std::iter::repeat_n(100_000, 300)),
            (10, 1_000_000)
        );
        assert_eq!(entries_in_frame([200 * MB, 1].into_iter()), (1, 200 * MB));
        assert_eq!(entries_in_frame([MB, 200 * MB].into_iter()), (1, MB));
        assert_eq!(
            entries_in_frame(std::iter::repeat_n(1_000, 300)),
            (300, 300_000)
        );
        assert_eq!(entries_in_frame(std::iter::empty()), (0, 0));
        // Only the sizes up to the first left out are asked for.
        let mut asked = 0;
        let sizes = std::iter::repeat_n(MB / 2, 300).inspect(|_| asked += 1);
        assert_eq!(entries_in_frame(sizes), (2, MB));
        assert_eq!(asked, 3);
    }
}
