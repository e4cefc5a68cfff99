//! The server: opens the engine, serves gRPC on a listener until a shutdown
//! future resolves, then shuts down in order.
//!
//! Served: `broker.v1.QueueService`, `broker.v1.TopicService`,
//! `broker.v1.ClusterService` (cluster mode; a single node answers it
//! FAILED_PRECONDITION), gRPC health
//! checking (`grpc.health.v1.Health`) and server reflection (v1 and
//! v1alpha, so that `grpcurl` works without the .proto files). Every RPC
//! runs in a span (`service::trace`) and is counted and timed
//! (`metrics::rpc`). Deadlines that clients send (`grpc-timeout`) are
//! enforced by tonic: the handler is dropped and the client gets CANCELLED;
//! handlers are cancel-safe.
//!
//! Shutdown: health turns NOT_SERVING (and health watches end), new RPCs are
//! refused (HTTP/2 GOAWAY), long polls and streams end (they return what
//! they have), in-flight RPCs finish (bounded by `shutdown_timeout`), the
//! scheduler and the metrics endpoint stop, and the database closes (syncing
//! the WAL) before `run` returns, so that the same data dir can be opened
//! again at once.
//!
//! Metrics: with `metrics_listen`, [`run`] binds it and serves `/metrics`
//! there ([`crate::metrics`]); [`run_with_metrics_listener`] takes that
//! listener already bound, so that a caller (a test) can bind port 0 and
//! know the port before the server starts.
//!
//! Security (checked before the database is opened, so that a bad setting
//! fails fast): TLS from `config.tls` for the gRPC and metrics listeners
//! (`crate::tls`), the token interceptor from `config.auth_tokens` on both
//! broker services (`crate::auth`; health and reflection stay open), and
//! the limits of `config.limits` (`crate::limits`). Without a token file the
//! broker warns when it listens on a non-loopback address.
//!
//! Errors: whatever keeps the server from starting is a [`StartupError`]
//! (a listener, a TLS or token file, the database), returned by [`run`]
//! before anything is served. Once serving, errors go to clients through
//! `service::status`, with one exception: when the storage fails (an I/O
//! error writing or syncing; `storage`, "Failures"), the server shuts down
//! as above at once (health NOT_SERVING first) and [`run`] returns
//! [`StartupError::StorageFailed`]: `broker serve` exits with an error, and
//! its supervisor restarts it once the disk is fixed. It does not go on
//! serving reads: what a failed store holds in memory may differ from what
//! its disk holds.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use broker_proto::limits::MAX_GRPC_MESSAGE_BYTES;
use broker_proto::pb::cluster_service_server::ClusterServiceServer;
use broker_proto::pb::queue_service_server::QueueServiceServer;
use broker_proto::pb::topic_service_server::TopicServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::auth::{Authenticator, TokenFileError, Tokens};
use crate::cluster::forward::{Forward, Leader};
use crate::cluster::node::{Node, NodeError};
use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::service::Authenticate;
use crate::service::cluster::ClusterApi;
use crate::service::health::{HealthReporter, health};
use crate::service::queue::QueueApi;
use crate::service::topic::TopicApi;
use crate::service::trace::TraceLayer;
use crate::tls::TlsError;

/// Why the server could not start. Never sent to a client.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `metrics_listen` could not be bound.
    #[error("cannot serve metrics on metrics_listen = {addr}: {error}")]
    MetricsListen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// A TLS file is missing or unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// tonic refused the TLS settings.
    #[error("cannot set up TLS: {error}")]
    TlsSetup { error: tonic::transport::Error },
    /// The token file (`auth_tokens`) is missing or unusable.
    #[error(transparent)]
    TokenFile(#[from] TokenFileError),
    /// The database could not be opened (locked, corrupt, not a database).
    #[error(transparent)]
    Database(#[from] crate::Error),
    /// `cluster_listen` could not be bound.
    #[error("cannot serve other nodes on cluster_listen = {addr}: {error}")]
    ClusterListen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// The node could not start (its identity, its stores, its Raft).
    #[error(transparent)]
    Cluster(#[from] NodeError),
    /// Not at startup: the storage failed while serving, and the broker
    /// stopped (see the module docs).
    #[error(
        "stopped: the data dir's storage failed ({reason}); restart the broker once the disk is fixed (every acknowledged write is in its write-ahead log)"
    )]
    StorageFailed { reason: String },
}

/// Serves on `listener` until `shutdown` resolves; returns once the
/// database is closed. Binds `config.metrics_listen` if set: failing to is
/// an error naming the address, before anything else starts.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|error| StartupError::MetricsListen { addr, error })?,
        ),
        None => None,
    };
    run_with_metrics_listener(listener, metrics_listener, config, shutdown).await
}

/// As [`run`], with the metrics listener bound by the caller: `/metrics` is
/// served on `metrics_listener` if it is `Some` (`config.metrics_listen` is
/// not looked at).
pub async fn run_with_metrics_listener(
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let authenticator = authenticator(&config, &listener)?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(crate::tls::server_tls_config(tls)?)
            .map_err(|error| StartupError::TlsSetup { error })?;
    }
    let metrics_tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let cluster_listener = match &config.cluster {
        Some(c) => Some(TcpListener::bind(c.listen).await.map_err(|error| {
            StartupError::ClusterListen {
                addr: c.listen,
                error,
            }
        })?),
        None => None,
    };
    let node = match &config.cluster {
        Some(c) => Some(Arc::new(
            Node::start(
                c,
                &config.data_dir,
                config.sync,
                client_address(c, &listener),
                config.storage_faults.clone(),
            )
            .await?,
        )),
        None => {
            crate::cluster::node::refuse_member_data_dir(&config.data_dir)?;
            None
        }
    };
    let engine = match &node {
        Some(node) => node.engine.clone(),
        None => Arc::new(Engine::open_with(
            &config.data_dir,
            config.sync,
            config.storage_faults.clone(),
        )?),
    };
    let leader = node
        .as_ref()
        .map(|n| Leader::new(n.id, n.raft.clone(), n.lease.clone(), n.dial.clone()));
    let metrics = Metrics::with_cluster(
        Arc::downgrade(&engine),
        node.as_ref().zip(leader.as_ref()).map(|(n, l)| {
            crate::metrics::cluster::ClusterCollector {
                id: n.id,
                raft: n.raft.clone(),
                forwarded: l.forwarded.clone(),
                election_rounds: n.election_rounds.clone(),
                committed: n.committed.clone(),
                clocks: n.clocks.clone(),
                lease: n.lease.clone(),
            }
        }),
    );
    let metrics_stop = CancellationToken::new();
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(addr = ?l.local_addr().ok(), "serving metrics at /metrics");
        tokio::spawn(crate::metrics::http::serve(
            l,
            metrics.clone(),
            metrics_tls,
            metrics_stop.clone(),
        ))
    });
    let scheduler = tokio::spawn(engine.clone().run_scheduler());
    let addr = listener
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "broker serving");

    // The descriptor sets are compiled in; every test server builds these.
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the compiled-in descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the compiled-in descriptor sets are valid");

    let stopping = CancellationToken::new();
    // The broker's cap on queued messages (`engine::room`).
    engine.broker_cap().set(config.limits.max_messages);
    // The data dir's free space, read every second: below min_free_disk,
    // sends, publishes and redrives are refused (`storage::disk`).
    engine.disk().set_floor(config.limits.min_free_disk);
    let disk_watch = {
        let (disk, dir, stop) = (
            engine.disk().clone(),
            config.data_dir.clone(),
            stopping.clone(),
        );
        tokio::spawn(async move { disk.watch(dir, stop.cancelled_owned()).await })
    };
    // A cluster node serves once it is ready (`Node::ready`); the task
    // ends at shutdown.
    let (health_reporter, health_service) = health(node.is_none());
    if let Some(node) = node.clone() {
        let (reporter, stop) = (health_reporter.clone(), stopping.clone());
        tokio::spawn(async move { report_health(&node, &reporter, stop.cancelled()).await });
    }
    // The stores whose failure stops the broker: the engine's, and in
    // cluster mode the Raft log's.
    let failures: Vec<_> = std::iter::once(engine.storage_failure())
        .chain(node.as_ref().map(|n| n.log_failure.clone()))
        .collect();
    let signal = {
        let (engine, stopping, mut watched) = (engine.clone(), stopping.clone(), failures.clone());
        async move {
            let failed = futures::future::select_all(watched.iter_mut().map(|f| {
                Box::pin(async move {
                    // A store closed (its sender dropped) has not failed.
                    if f.wait_for(Option::is_some).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
            }));
            tokio::select! {
                () = shutdown => tracing::info!(
                    "shutting down: health NOT_SERVING, refusing new requests, ending long polls, finishing in-flight requests"
                ),
                _ = failed => tracing::error!(
                    "the storage failed: stopping the broker (health NOT_SERVING, refusing new requests); restart it once the data dir's disk is fixed"
                ),
            }
            health_reporter.set_not_serving();
            stopping.cancel();
            engine.shutdown();
        }
    };
    let limits = config.limits;
    // The decoding limit is checked against a message's length prefix,
    // before the message is buffered.
    let queues = QueueServiceServer::new(QueueApi::with_limits(engine.clone(), &limits))
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    let topics = TopicServiceServer::new(TopicApi::new(engine.clone()))
        .max_decoding_message_size(limits.max_request_bytes)
        .max_encoding_message_size(MAX_GRPC_MESSAGE_BYTES);
    // Only the broker's own services need a token (not health/reflection).
    let cluster_api =
        ClusterServiceServer::new(ClusterApi::new(node.as_ref().map(|n| n.service())));
    let cluster_api = InterceptedService::new(cluster_api, Authenticate(authenticator.clone()));
    let queues = InterceptedService::new(queues, Authenticate(authenticator.clone()));
    let topics = InterceptedService::new(topics, Authenticate(authenticator));
    // In cluster mode, requests go to the leader from any node.
    let queues = Forward::new(queues, leader.clone());
    let topics = Forward::new(topics, leader);
    let cluster_server = match (&node, cluster_listener) {
        (Some(node), Some(listener)) => {
            tracing::info!(addr = ?listener.local_addr().ok(), node = node.id, "serving other nodes");
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = node.server_tls.clone() {
                builder = builder
                    .tls_config(tls)
                    .map_err(|error| StartupError::TlsSetup { error })?;
            }
            let serve = builder
                .add_service(node.service())
                .add_service(queues.clone())
                .add_service(topics.clone())
                .serve_with_incoming_shutdown(incoming, stopping.clone().cancelled_owned());
            let joining = {
                let (node, config, stop) = (
                    node.clone(),
                    config.cluster.clone().expect("a node has a cluster config"),
                    stopping.clone(),
                );
                tokio::spawn(async move {
                    if node.must_join() {
                        node.join(&config, stop.cancelled()).await
                    } else {
                        node.announce(&config, stop.cancelled()).await
                    }
                })
            };
            Some((tokio::spawn(serve), joining))
        }
        _ => None,
    };
    // `Server::tcp_nodelay` is ignored for a caller's listener: without
    // this, Nagle holds most responses back for the peer's delayed ACK (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // tonic (0.14) runs the TLS handshake on connections of a caller's
    // incoming stream too, after they are accepted here.
    let incoming = crate::limits::limit_connections(incoming, limits.max_connections);
    let serve = builder
        .layer(TraceLayer)
        .layer(metrics.rpc_layer())
        .layer(tower::util::MapResponseLayer::new(
            crate::service::status::oversize_as_resource_exhausted(limits.max_request_bytes),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(queues)
        .add_service(topics)
        .add_service(cluster_api)
        .serve_with_incoming_shutdown(incoming, signal);
    let deadline = async {
        stopping.cancelled().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::select! {
        result = serve => {
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }
        _ = deadline => tracing::warn!("shutdown timeout reached; abandoning in-flight requests"),
    }
    engine.shutdown();
    stopping.cancel();
    if let Some((server, joining)) = cluster_server {
        let _ = joining.await;
        // Bounded: a request it still serves (a join) waits on Raft, which
        // shuts down after this.
        if tokio::time::timeout(config.shutdown_timeout, server)
            .await
            .is_err()
        {
            tracing::warn!("the cluster listener did not drain in time; shutting down Raft");
        }
    }
    if let Some(node) = node {
        if let Err(e) = node.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
        drop(node);
    }
    let _ = scheduler.await;
    let _ = disk_watch.await;
    metrics_stop.cancel();
    if let Some(task) = metrics_server {
        let _ = task.await;
    }
    close(engine).await;
    tracing::info!("database closed");
    match failures.iter().find_map(|f| f.borrow().clone()) {
        Some(reason) => Err(StartupError::StorageFailed { reason }),
        None => Ok(()),
    }
}

/// Server reflection over the broker's and the health service's descriptors.
/// Where clients reach this node, for the membership: `client_advertise`,
/// else the address the gRPC listener is bound to unless it is a wildcard
/// (`0.0.0.0`, `[::]`: no address others could use); empty: unknown, and
/// nodes that pass requests on do not send clients here.
fn client_address(cluster: &crate::config::ClusterConfig, listener: &TcpListener) -> String {
    if let Some(addr) = &cluster.client_advertise {
        return addr.clone();
    }
    match listener.local_addr() {
        Ok(addr) if !addr.ip().is_unspecified() => addr.to_string(),
        _ => String::new(),
    }
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(broker_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The token interceptor: with `config.auth_tokens`, the tokens of that
/// file; without, everyone may do everything, and a non-loopback listener
/// is worth a warning.
fn authenticator(
    config: &ServerConfig,
    listener: &TcpListener,
) -> Result<Authenticator, StartupError> {
    match &config.auth_tokens {
        Some(path) => {
            let tokens = Tokens::load(path)?;
            tracing::info!(tokens = tokens.len(), file = %path.display(), "authentication on");
            Ok(Authenticator::new(tokens))
        }
        None => {
            if let Ok(addr) = listener.local_addr()
                && !addr.ip().is_loopback()
            {
                tracing::warn!(
                    %addr,
                    "authentication is off (no --auth-tokens) and the broker listens on a \
                     non-loopback address: anyone who can reach it may do everything"
                );
            }
            Ok(Authenticator::off())
        }
    }
}

/// Drops this reference to the engine and waits until the last one is
/// dropped, which closes the database. Connection tasks still finishing
/// may hold references for a moment; after [`CLOSE_WAIT`] the database
/// is left to close when the last of them ends.
async fn close(engine: Arc<Engine>) {
    let closed = engine.closed();
    drop(engine);
    if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
        tracing::warn!(
            "engine still referenced after shutdown; the database closes when the last request ends"
        );
    }
}

/// How long [`close`] waits for the last reference to the engine.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Keeps `health` saying whether `node` is ready ([`Node::ready`], checked
/// every 200 ms), logging each change with its reason, until `stop`.
async fn report_health(node: &Node, health: &HealthReporter, stop: impl Future<Output = ()>) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = every.tick() => {}
        }
        let ready = node.ready();
        if health.set_ready(ready.is_ok()) {
            match &ready {
                Ok(()) => tracing::info!(node = node.id, "ready: health SERVING"),
                Err(why) => {
                    tracing::warn!(node = node.id, reason = %why, "not ready: health NOT_SERVING")
                }
            }
        }
    }
}
