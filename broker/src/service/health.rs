//! Standard gRPC health checking (`grpc.health.v1.Health`), so that load
//! balancers, Kubernetes probes and `grpc_health_probe` work unchanged.
//!
//! The server registers it once the database is open, so every answer it
//! gives before shutdown is SERVING, for the whole server (`""`) and for
//! each broker service. When shutdown begins, the status turns NOT_SERVING
//! before new RPCs are refused; a `Watch` stream receives NOT_SERVING and
//! then ends, so that open watches never hold the graceful shutdown back
//! (tonic-health's own watches never end while the server lives).

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The services whose health can be asked for; `""` is the whole server.
const SERVICES: [&str; 3] = ["", "broker.v1.QueueService", "broker.v1.TopicService"];

/// Flips the served status; held by the server.
#[derive(Debug)]
pub struct HealthReporter {
    status: watch::Sender<ServingStatus>,
}

impl HealthReporter {
    /// Shutdown has begun: every service is NOT_SERVING from now on.
    pub fn set_not_serving(&self) {
        self.status.send_replace(ServingStatus::NotServing);
    }
}

/// The gRPC service and its reporter, SERVING.
pub fn health() -> (HealthReporter, HealthServer<HealthApi>) {
    let (status, _) = watch::channel(ServingStatus::Serving);
    let api = HealthApi {
        status: status.subscribe(),
    };
    (HealthReporter { status }, HealthServer::new(api))
}

/// The `grpc.health.v1.Health` adapter.
#[derive(Debug)]
pub struct HealthApi {
    status: watch::Receiver<ServingStatus>,
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
        Ok(Response::new(response(*self.status.borrow())))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if known(&request.get_ref().service).is_err() {
            // As the protocol asks: SERVICE_UNKNOWN, and the call stays open
            // (until shutdown) in case the service appears.
            let mut rx = self.status.clone();
            let stream =
                futures::stream::once(async { Ok(response(ServingStatus::ServiceUnknown)) }).chain(
                    futures::stream::once(async move {
                        let _ = rx.wait_for(|s| *s == ServingStatus::NotServing).await;
                        Ok(response(ServingStatus::NotServing))
                    }),
                );
            return Ok(Response::new(Box::pin(stream)));
        }
        // Yields the current status, then each change; ends after NOT_SERVING.
        let stream =
            futures::stream::unfold(Some((self.status.clone(), true)), |state| async move {
                let (mut rx, first) = state?;
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let status = *rx.borrow_and_update();
                let next = (status != ServingStatus::NotServing).then_some((rx, false));
                Some((Ok(response(status)), next))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
