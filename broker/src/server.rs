//! The server: opens the engine, serves gRPC on a listener until a shutdown
//! future resolves, then shuts down in order.
//!
//! Security (before the database is opened, so that a bad setting fails
//! fast): TLS from `config.tls` (`crate::tls`), the token interceptor from
//! `config.auth_tokens` on both services (`crate::auth`), and the limits of
//! `config.limits` (`crate::limits`). Without a token file the broker warns
//! when it listens on a non-loopback address.
//!
//! Shutdown: stop accepting, end long polls (they return what they have),
//! let in-flight RPCs finish (bounded by `shutdown_timeout`), stop the
//! scheduler, and close the database (syncing the WAL) before returning, so
//! that the same data dir can be opened again at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use broker_proto::pb::queue_service_server::QueueServiceServer;
use broker_proto::pb::topic_service_server::TopicServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::auth::{Authenticator, Tokens};
use crate::config::ServerConfig;
use crate::error::Result;
use crate::queue::Engine;
use crate::service::queue::QueueApi;
use crate::service::topic::TopicApi;

/// The largest request or response: a batch of 100 messages of the largest
/// size (1 MiB each), with room for attributes and framing.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 128 * 1024 * 1024;

/// Serves on `listener` until `shutdown` resolves; returns once the
/// database is closed.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let authenticator = authenticator(&config, &listener)?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(crate::tls::server_tls_config(tls)?)
            .map_err(|e| crate::Error::Config(format!("cannot set up TLS: {e}")))?;
    }
    let engine = Arc::new(Engine::open(&config.data_dir, config.sync)?);
    let scheduler = tokio::spawn(engine.clone().run_scheduler());
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, data_dir = %config.data_dir.display(), "broker serving");

    let stopping = CancellationToken::new();
    let signal = {
        let (engine, stopping) = (engine.clone(), stopping.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down: ending long polls, finishing in-flight requests");
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
    let queues = InterceptedService::new(queues, authenticator.clone());
    let topics = InterceptedService::new(topics, authenticator);
    // `Server::tcp_nodelay` is ignored for a caller's listener: without
    // this, Nagle holds most responses back for the peer's delayed ACK (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // tonic (0.14) runs the TLS handshake on connections of a caller's
    // incoming stream too, after they are accepted here.
    let incoming = crate::limits::limit_connections(incoming, limits.max_connections);
    let serve = builder
        .add_service(queues)
        .add_service(topics)
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
    let _ = scheduler.await;
    close(engine).await;
    tracing::info!("database closed");
    Ok(())
}

/// The token interceptor: with `config.auth_tokens`, the tokens of that
/// file; without, everyone may do everything, and a non-loopback listener
/// is worth a warning.
fn authenticator(config: &ServerConfig, listener: &TcpListener) -> Result<Authenticator> {
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

/// Drops the last reference to the engine, which closes the database.
/// Connection tasks still finishing may hold references for a moment.
async fn close(mut engine: Arc<Engine>) {
    for _ in 0..500 {
        match Arc::try_unwrap(engine) {
            Ok(engine) => {
                drop(engine);
                return;
            }
            Err(shared) => engine = shared,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(
        "engine still referenced after shutdown; the database closes when the last request ends"
    );
}
