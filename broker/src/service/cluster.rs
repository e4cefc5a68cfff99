//! `broker.v1.ClusterService`: a node's view of the cluster, read from its
//! Raft's metrics. Answered by the node it reaches (never forwarded).

use broker_proto::pb;
use tonic::{Request, Response, Status};

use crate::auth;
use crate::cluster::network::{RaftService, Refused};

/// The service over this node's side of the cluster; `None` on a single
/// node.
pub struct ClusterApi {
    node: Option<RaftService>,
}

impl ClusterApi {
    pub fn new(node: Option<RaftService>) -> ClusterApi {
        ClusterApi { node }
    }

    fn node(&self) -> Result<&RaftService, Status> {
        self.node.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this broker is a single node (started without --node-id): it has no cluster",
            )
        })
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for ClusterApi {
    async fn get_cluster_status(
        &self,
        req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::GetClusterStatusResponse>, Status> {
        auth::require_admin(&req)?;
        let RaftService {
            id,
            raft,
            cluster,
            clocks,
            ..
        } = self.node()?;
        let offsets = clocks.offsets();
        let m = raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let nodes = membership
            .nodes()
            .map(|(node, member)| pb::ClusterNode {
                id: *node,
                address: member.addr.clone(),
                client_address: member.client_addr.clone(),
                voter: voters.contains(node),
                lag: m.replication.as_ref().and_then(|r| {
                    let matched = r.get(node)?.map_or(0, |l| l.index);
                    Some(last_log_index.saturating_sub(matched))
                }),
                clock_offset_ms: offsets.get(node).map(|o| o.ms),
            })
            .collect();
        Ok(Response::new(pb::GetClusterStatusResponse {
            cluster_id: cluster.get().cloned().unwrap_or_default(),
            node_id: *id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            nodes,
            clock_skew_ms: clocks.skew_ms(),
            max_clock_skew_ms: clocks.max_skew_ms,
        }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        auth::require_admin(&req)?;
        let node = self.node()?;
        match node.remove(req.into_inner().node_id).await {
            Ok(voters) => Ok(Response::new(pb::RemoveNodeResponse { voters })),
            Err(Refused::NotFound(m)) => Err(Status::not_found(m)),
            Err(Refused::FailedPrecondition(m)) => Err(Status::failed_precondition(m)),
            Err(Refused::Unavailable(m)) => Err(Status::unavailable(m)),
        }
    }
}
