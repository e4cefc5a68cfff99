//! Where a client's calls go: to the address it connected to (the entry: a
//! broker, a cluster node, or a load balancer in front of a cluster), or
//! straight to a cluster's leader once it knows where that is.
//!
//! A cluster node that passes a call on to the leader answers with the
//! leader's client address in [`LEADER_HEADER`]. [`Route`] then opens a
//! channel there (lazily, with the client's TLS settings and token) and
//! sends the next calls to it, saving a hop. It follows leader changes the
//! same way: a call the old leader passes on comes back with the new
//! leader's address. When a call to the leader fails to connect or is
//! answered UNAVAILABLE (the node died, was cut off, or no longer leads),
//! calls go back to the entry, and that address is not followed again for
//! [`AVOID`] (so an address the client cannot reach, e.g. a pod address
//! behind a load balancer, costs one failed call per [`AVOID`], not one
//! per call). The failed call itself is not retried here: it returns its
//! error, as any UNAVAILABLE, and the `Publisher` and `Consumer` retry it.
//! `ClusterService` calls always go to the entry: they answer for the
//! node reached.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use broker_proto::LEADER_HEADER;
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

use crate::lookahead::Lookahead;

/// The service whose calls are answered by the node reached, never
/// passed on: they go to the entry.
const NODE_SERVICE: &str = "/broker.v1.ClusterService/";

/// How long an address whose call failed is not followed again.
pub(crate) const AVOID: Duration = Duration::from_secs(5);

/// Opens a lazily connected channel to a `host:port` a node gave.
pub(crate) type Connect = Box<dyn Fn(&str) -> Option<Channel> + Send + Sync>;

/// The transport under a client's stubs. Cheap to clone: clones share
/// where calls go.
#[derive(Clone)]
pub(crate) struct Route {
    inner: Arc<Inner>,
}

struct Inner {
    entry: Channel,
    /// `None`: calls always go to the entry.
    connect: Option<Connect>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The leader's client address and a channel to it.
    leader: Option<(String, Channel)>,
    /// The last address whose call failed, and when.
    failed: Option<(String, Instant)>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("follows_leader", &self.inner.connect.is_some())
            .field("leader", &self.leader())
            .finish()
    }
}

impl Route {
    /// Calls go to `entry`, and to the leader when `connect` is given.
    pub(crate) fn new(entry: Channel, connect: Option<Connect>) -> Route {
        Route {
            inner: Arc::new(Inner {
                entry,
                connect,
                state: Mutex::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leader's address calls go to, if not the entry.
    pub(crate) fn leader(&self) -> Option<String> {
        self.state().leader.as_ref().map(|(addr, _)| addr.clone())
    }

    /// The channel for the next call, and the leader's address when it is
    /// the leader's.
    fn pick(&self) -> (Channel, Option<String>) {
        match &self.state().leader {
            Some((addr, channel)) => (channel.clone(), Some(addr.clone())),
            None => (self.inner.entry.clone(), None),
        }
    }

    /// A node said the leader is at `addr`.
    fn hint(&self, addr: &str) {
        let Some(connect) = &self.inner.connect else {
            return;
        };
        let mut state = self.state();
        if state.leader.as_ref().is_some_and(|(a, _)| a == addr)
            || state
                .failed
                .as_ref()
                .is_some_and(|(a, at)| a == addr && at.elapsed() < AVOID)
        {
            return;
        }
        if let Some(channel) = connect(addr) {
            tracing::debug!(leader = addr, "calls go to the cluster's leader");
            state.leader = Some((addr.to_owned(), channel));
        }
    }

    /// A call to the leader at `addr` failed: back to the entry.
    fn failed(&self, addr: &str) {
        let mut state = self.state();
        if state.leader.as_ref().is_some_and(|(a, _)| a == addr) {
            tracing::debug!(leader = addr, "calls go back to the entry address");
            state.leader = None;
        }
        state.failed = Some((addr.to_owned(), Instant::now()));
    }
}

/// Whether a response is a gRPC UNAVAILABLE without a body (how a node
/// that cannot serve a call answers).
fn unavailable(response: &http::Response<Body>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == b"14")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for Route {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel is picked per call, and made ready in the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let request = request.map(Lookahead::wrap);
        // `ClusterService` answers for the node reached: always the entry.
        let (mut channel, leader) = if request.uri().path().starts_with(NODE_SERVICE) {
            (self.inner.entry.clone(), None)
        } else {
            self.pick()
        };
        let route = self.clone();
        Box::pin(async move {
            let result = match std::future::poll_fn(|cx| channel.poll_ready(cx)).await {
                Ok(()) => channel.call(request).await,
                Err(e) => Err(e),
            };
            match (&result, &leader) {
                (Err(_), Some(leader)) => route.failed(leader),
                (Ok(response), Some(leader)) if unavailable(response) => route.failed(leader),
                (Ok(response), _) => {
                    if let Some(hint) = response
                        .headers()
                        .get(LEADER_HEADER)
                        .and_then(|v| v.to_str().ok())
                    {
                        route.hint(hint);
                    }
                }
                (Err(_), None) => {}
            }
            result
        })
    }
}
