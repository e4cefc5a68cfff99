//! Standard gRPC health checking (`grpc.health.v1.Health`), so that load
//! balancers, Kubernetes probes and `grpc_health_probe` work unchanged.
//!
//! The server registers it once the database is open. A single node is
//! SERVING from then until shutdown, for the whole server (`""`) and for
//! each broker service. A cluster node is NOT_SERVING while it is not
//! ready to serve ([`HealthReporter::set_ready`]: joining, catching up, or
//! without a leader it can reach; see `cluster::node`), so that a load
//! balancer sends clients to the nodes that can answer them. When shutdown
//! begins, the status turns NOT_SERVING for good before new RPCs are
//! refused; a `Watch` stream receives NOT_SERVING and then ends, so that
//! open watches never hold the graceful shutdown back (tonic-health's own
//! watches never end while the server lives).

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The services whose health can be asked for; `""` is the whole server.
const SERVICES: [&str; 3] = ["", "broker.v1.QueueService", "broker.v1.TopicService"];

/// What the served status is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    ready: bool,
    stopping: bool,
}

impl State {
    fn status(self) -> ServingStatus {
        if self.ready && !self.stopping {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

/// Flips the served status; held by the server.
#[derive(Debug, Clone)]
pub struct HealthReporter {
    state: watch::Sender<State>,
}

impl HealthReporter {
    /// Shutdown has begun: every service is NOT_SERVING from now on.
    pub fn set_not_serving(&self) {
        self.state.send_modify(|s| s.stopping = true);
    }

    /// Whether the node is ready to serve (until shutdown). Returns whether
    /// that changed.
    pub fn set_ready(&self, ready: bool) -> bool {
        self.state.send_if_modified(|s| {
            let changed = s.ready != ready;
            s.ready = ready;
            changed
        })
    }
}

/// The gRPC service and its reporter, SERVING if `ready`.
pub fn health(ready: bool) -> (HealthReporter, HealthServer<HealthApi>) {
    let (state, _) = watch::channel(State {
        ready,
        stopping: false,
    });
    let api = HealthApi {
        state: state.subscribe(),
    };
    (HealthReporter { state }, HealthServer::new(api))
}

/// The `grpc.health.v1.Health` adapter.
#[derive(Debug)]
pub struct HealthApi {
    state: watch::Receiver<State>,
}

/// A refused health check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// `Check` of a service this server does not serve (NOT_FOUND).
    #[error(
        "unknown service {service:?}; known: \"\" (the whole server), broker.v1.QueueService, broker.v1.TopicService"
    )]
    UnknownService { service: String },
}

fn known(service: &str) -> Result<(), HealthError> {
    if SERVICES.contains(&service) {
        Ok(())
    } else {
        Err(HealthError::UnknownService {
            service: service.to_string(),
        })
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        known(&request.get_ref().service)?;
        Ok(Response::new(response(self.state.borrow().status())))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if known(&request.get_ref().service).is_err() {
            // As the protocol asks: SERVICE_UNKNOWN, and the call stays open
            // (until shutdown) in case the service appears.
            let mut rx = self.state.clone();
            let stream =
                futures::stream::once(async { Ok(response(ServingStatus::ServiceUnknown)) }).chain(
                    futures::stream::once(async move {
                        let _ = rx.wait_for(|s| s.stopping).await;
                        Ok(response(ServingStatus::NotServing))
                    }),
                );
            return Ok(Response::new(Box::pin(stream)));
        }
        // Yields the current status, then each change; ends once shutdown
        // has begun.
        let stream =
            futures::stream::unfold(Some((self.state.clone(), None)), |state| async move {
                let (mut rx, last) = state?;
                loop {
                    if last.is_some() && rx.changed().await.is_err() {
                        return None;
                    }
                    let now = *rx.borrow_and_update();
                    if last == Some(now.status()) && !now.stopping {
                        continue;
                    }
                    let next = (!now.stopping).then_some((rx, Some(now.status())));
                    return Some((Ok(response(now.status())), next));
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_follows_readiness_and_ends_at_shutdown() {
        let (reporter, _) = health(false);
        let api = HealthApi {
            state: reporter.state.subscribe(),
        };
        let request = || Request::new(HealthCheckRequest::default());
        let status = |r: Option<Result<HealthCheckResponse, Status>>| {
            ServingStatus::try_from(r.expect("an answer").expect("ok").status).unwrap()
        };
        let mut watch = api.watch(request()).await.unwrap().into_inner();
        assert_eq!(status(watch.next().await), ServingStatus::NotServing);
        assert!(reporter.set_ready(true));
        assert!(!reporter.set_ready(true), "no change");
        assert_eq!(status(watch.next().await), ServingStatus::Serving);
        let checked = api.check(request()).await.unwrap().into_inner().status;
        assert_eq!(checked, ServingStatus::Serving as i32);
        assert!(reporter.set_ready(false));
        assert_eq!(status(watch.next().await), ServingStatus::NotServing);
        assert!(reporter.set_ready(true));
        assert_eq!(status(watch.next().await), ServingStatus::Serving);

        reporter.set_not_serving();
        assert_eq!(status(watch.next().await), ServingStatus::NotServing);
        assert!(watch.next().await.is_none(), "the watch ends at shutdown");
        // Readiness no longer matters.
        reporter.set_ready(true);
        let checked = api.check(request()).await.unwrap().into_inner().status;
        assert_eq!(checked, ServingStatus::NotServing as i32);
    }
}
