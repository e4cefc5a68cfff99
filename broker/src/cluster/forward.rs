//! Any node serves any request: [`Forward`] wraps a broker service and
//! passes each request to the node that leads, unchanged (headers, the
//! client's deadline, streamed bodies), and its answer back. Long polls and
//! `StreamMessages` are forwarded like any other call.
//!
//! - This node leads: the request goes to the wrapped service.
//! - Another node leads: the request goes to that node's cluster address,
//!   marked [`FORWARDED`]. A node never forwards a request that is marked
//!   already (two nodes that each believe the other leads would bounce it):
//!   it answers UNAVAILABLE instead.
//! - This node leads but has not heard from a majority within its lease
//!   (it was elected a moment ago, or it is cut off): the request waits,
//!   up to [`LEASE_WAIT`], for an acknowledgement from a majority (or for
//!   another leader), then goes where the rule above sends it; if none
//!   comes, UNAVAILABLE, saying so. A cut-off leader thus answers no read
//!   from a state the majority may have moved past.
//! - No leader is known (an election, or this node cannot reach a
//!   majority): UNAVAILABLE, saying so. So is a leader that cannot be
//!   reached.
//!
//! Reads are forwarded too, so that every answer comes from the leader's
//! state, never from a replica that lags.
//!
//! The answer to a forwarded request carries the leader's client address
//! in [`LEADER_HEADER`] (when the membership has one), so that a client
//! can skip the hop from then on: the Rust client does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tower_service::Service;

pub use broker_proto::LEADER_HEADER;

use super::Raft;
use super::network::{Dial, channel};
use super::proposer::{Leadership, Lease, leadership};

/// The header that marks a forwarded request.
pub const FORWARDED: &str = "x-broker-forwarded";

/// Where requests go: this node's id and Raft, and a channel per leader.
#[derive(Clone)]
pub struct Leader {
    id: u64,
    raft: Raft,
    lease: Lease,
    dial: Dial,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Requests passed on to the leader (`broker_cluster_forwarded_requests_total`).
    pub forwarded: Arc<AtomicU64>,
}

/// How long a request waits for a leader's lease (see the module docs).
pub const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

enum Route {
    Here,
    /// The leader's channel, id and client address (for [`LEADER_HEADER`]).
    There(Channel, u64, Option<http::HeaderValue>),
    /// This node leads without its lease: why, if it does not come back.
    Wait(String),
    Nowhere(String),
}

impl Leader {
    pub fn new(id: u64, raft: Raft, lease: Lease, dial: Dial) -> Leader {
        Leader {
            id,
            raft,
            lease,
            dial,
            channels: Arc::default(),
            forwarded: Arc::default(),
        }
    }

    fn route(&self, forwarded: bool) -> Route {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = match leadership(self.id, &m, &self.lease) {
            Leadership::Leads => return Route::Here,
            Leadership::Held(reason) => return Route::Wait(reason),
            Leadership::Other(leader) => leader,
            Leadership::Unknown(reason) => return Route::Nowhere(reason),
        };
        if forwarded {
            return Route::Nowhere(format!(
                "node {} was forwarded a request but does not lead (node {leader} does); retry",
                self.id
            ));
        }
        let Some(node) = m.membership_config.membership().get_node(&leader) else {
            return Route::Nowhere(format!("leader {leader} has no address in the membership"));
        };
        let hint = http::HeaderValue::from_str(&node.client_addr)
            .ok()
            .filter(|v| !v.is_empty());
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(&node.addr) {
            return Route::There(c.clone(), leader, hint);
        }
        match channel(&node.addr, &self.dial) {
            Ok(c) => {
                channels.insert(node.addr.clone(), c.clone());
                Route::There(c, leader, hint)
            }
            Err(e) => Route::Nowhere(e),
        }
    }
}

/// A broker service, forwarded to the leader when this node does not lead.
#[derive(Clone)]
pub struct Forward<S> {
    inner: S,
    /// `None`: a single node, where every request is served here.
    leader: Option<Leader>,
}

impl<S> Forward<S> {
    pub fn new(inner: S, leader: Option<Leader>) -> Forward<S> {
        Forward { inner, leader }
    }
}

impl<S: NamedService> NamedService for Forward<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<Body>> for Forward<S>
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let forwarded = req.headers().contains_key(FORWARDED);
        // The ready clone serves this call (if it is served here); the
        // fresh one waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let leader = self.leader.clone();
        Box::pin(async move {
            let Some(leader) = leader else {
                return Ok(inner.call(req).await?.map(Body::new));
            };
            let mut route = leader.route(forwarded);
            let waited = tokio::time::Instant::now();
            while matches!(route, Route::Wait(_)) && waited.elapsed() < LEASE_WAIT {
                // Bounded polling: openraft's metrics need not change when
                // the time since the last majority ack does.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                route = leader.route(forwarded);
            }
            match route {
                Route::Here => Ok(inner.call(req).await?.map(Body::new)),
                Route::There(mut channel, leader_id, hint) => {
                    use tower::ServiceExt as _;
                    req.headers_mut()
                        .insert(FORWARDED, http::HeaderValue::from_static("1"));
                    leader.forwarded.fetch_add(1, Ordering::Relaxed);
                    let sent = match channel.ready().await {
                        Ok(ready) => ready.call(req).await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(mut response) => {
                            if let Some(hint) = hint {
                                response.headers_mut().insert(LEADER_HEADER, hint);
                            }
                            Ok(response)
                        }
                        Err(e) => Ok(unavailable(format!(
                            "the leader (node {leader_id}) could not be reached: {e}; retry"
                        ))),
                    }
                }
                Route::Wait(reason) | Route::Nowhere(reason) => Ok(unavailable(reason)),
            }
        })
    }
}

fn unavailable(message: String) -> http::Response<Body> {
    tonic::Status::unavailable(message).into_http()
}
