//! Node-to-node traffic over gRPC: the client side (openraft's
//! `RaftNetwork`) and the server side ([`RaftService`]).
//!
//! One internal RPC, `/broker.cluster.Raft/Call`, carries every message
//! between nodes as a [`Frame`]: a kind (`append`, `vote`, `snapshot`,
//! `join`) and openraft's serde form of the request as JSON; the reply is a
//! frame holding `Result<reply, error>` as JSON. It is served on the
//! cluster listener (`--cluster-listen`) beside the broker's own services,
//! and is not a public API: nodes of one cluster run the same version.
//!
//! Joining: a node started with `--join` sends `join` (its id and cluster
//! address) to a seed. A seed that does not lead passes the request on to
//! its leader. The leader adds the node as a learner, waits until it has
//! caught up, makes it a voter, and answers with the cluster id. A node id
//! already in the cluster under another address is refused.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{Raft, TypeConfig};

/// The largest frame between nodes (a batch of log entries).
pub const MAX_FRAME_BYTES: usize = 256 * 1024 * 1024;

/// The path of the one internal RPC.
const PATH: &str = "/broker.cluster.Raft/Call";

/// One message between nodes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(bytes = "vec", tag = "2")]
    pub json: Vec<u8>,
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

/// A node asking to join: its id and cluster address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Join {
    pub id: u64,
    pub addr: String,
}

/// The answer to a join: the cluster's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Joined {
    pub cluster_id: String,
}

/// A lazily connected channel to a node's cluster address, leaving from
/// `from`: this node's cluster listener IP (see [`source_ip`]).
pub fn channel(addr: &str, from: Option<IpAddr>) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad cluster address {addr:?}: {e}"))
        .map(|e| {
            e.local_address(from)
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect_lazy()
        })
}

/// Sends `request` as a frame of `kind` to `channel`; the reply's JSON.
pub async fn call<Q: Serialize, A: DeserializeOwned>(
    channel: Channel,
    cluster: &ClusterId,
    kind: &str,
    request: &Q,
) -> Result<A, Status> {
    let json = serde_json::to_vec(request).map_err(|e| Status::internal(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_FRAME_BYTES)
        .max_encoding_message_size(MAX_FRAME_BYTES);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let frame = Frame {
        kind: kind.to_string(),
        json,
        cluster_id: id_of(cluster),
    };
    let reply: Response<Frame> = grpc
        .unary(
            Request::new(frame),
            http::uri::PathAndQuery::from_static(PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
    serde_json::from_slice(&reply.into_inner().json)
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
    pub from: Option<IpAddr>,
}

pub struct Connection {
    target: u64,
    channel: Result<Channel, String>,
    cluster: ClusterId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Connection {
        Connection {
            target,
            channel: channel(&node.addr, self.from),
            cluster: self.cluster.clone(),
        }
    }
}

impl Connection {
    async fn send<Q: Serialize, A: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &self,
        kind: &str,
        request: &Q,
        option: &RPCOption,
    ) -> Result<A, RPCError<u64, BasicNode, RaftError<u64, E>>> {
        let channel = self
            .channel
            .clone()
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let reply = tokio::time::timeout(
            option.hard_ttl(),
            call::<Q, Result<A, RaftError<u64, E>>>(channel, &self.cluster, kind, request),
        )
        .await
        .map_err(|_| {
            RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
                "no {kind} reply within {:?}",
                option.hard_ttl()
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
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.send("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send("vote", &rpc, &option).await
    }
}

/// The server side of [`PATH`] on the cluster listener.
#[derive(Clone)]
pub struct RaftService {
    pub raft: Raft,
    pub id: u64,
    pub cluster: ClusterId,
    pub from: Option<IpAddr>,
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
            let json = match frame.kind.as_str() {
                "append" => reply(raft.append_entries(decode(&frame)?).await),
                "vote" => reply(raft.vote(decode(&frame)?).await),
                "snapshot" => reply(raft.install_snapshot(decode(&frame)?).await),
                "join" => reply(service.join(decode(&frame)?).await),
                other => return Err(Status::unimplemented(format!("unknown frame {other:?}"))),
            }?;
            Ok(Response::new(Frame {
                kind: frame.kind,
                json,
                cluster_id: mine,
            }))
        })
    }
}

fn decode<T: DeserializeOwned>(frame: &Frame) -> Result<T, Status> {
    serde_json::from_slice(&frame.json)
        .map_err(|e| Status::invalid_argument(format!("a {} frame: {e}", frame.kind)))
}

fn reply<T: Serialize>(value: T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(&value).map_err(|e| Status::internal(e.to_string()))
}

impl RaftService {
    /// Adds node `join.id` at `join.addr`: on the leader, as a learner
    /// that is then made a voter; elsewhere, passed on to the leader.
    async fn join(&self, join: Join) -> Result<Joined, String> {
        let metrics = self.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(leader) if leader == self.id => {}
            Some(leader) => {
                let addr = metrics
                    .membership_config
                    .membership()
                    .get_node(&leader)
                    .map(|n| n.addr.clone())
                    .ok_or_else(|| format!("leader {leader} has no address in the membership"))?;
                let channel = channel(&addr, self.from)?;
                return call::<Join, Result<Joined, String>>(channel, &self.cluster, "join", &join)
                    .await
                    .map_err(|s| format!("passing the join to leader {leader} at {addr}: {s}"))?;
            }
            None => return Err(format!("node {} knows no leader yet; retry", self.id)),
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
            if membership.voter_ids().any(|v| v == join.id) {
                return Ok(Joined { cluster_id });
            }
        }
        let node = BasicNode {
            addr: join.addr.clone(),
        };
        self.raft
            .add_learner(join.id, node, true)
            .await
            .map_err(|e| format!("adding node {} as a learner: {e}", join.id))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([join.id])), false)
            .await
            .map_err(|e| format!("making node {} a voter: {e}", join.id))?;
        tracing::info!(node = join.id, addr = %join.addr, "node joined the cluster");
        Ok(Joined { cluster_id })
    }
}
