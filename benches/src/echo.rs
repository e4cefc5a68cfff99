//! `--mode echo`: the ceiling of one unary gRPC call on this machine, to
//! hold the broker's `SendMessage` against (the speed issue: "bring the
//! broker's calls/s within 70 % of that ceiling").
//!
//! The server is bare tonic serving only gRPC health (`Check`, a request
//! and an answer of a few bytes): no broker, no layers (trace, metrics,
//! auth), no storage. It runs in this process on a runtime of its own
//! whose threads are named as the embedded broker's
//! ([`BROKER_THREAD_NAME`]), so that the report splits CPU between server
//! and generator as it does for an embedded broker. Producers call it in a
//! closed loop over `--connections` connections (default one per task, at
//! most 64), as the message producers do. Their requests' bodies are
//! wrapped as the broker's client wraps them ([`broker_client::Lookahead`]:
//! the data frame carries END_STREAM), so that a call costs the same
//! writes on both sides of the comparison.
//!
//! `--mode health` makes the same calls to the embedded broker's own health
//! service instead: through the broker's layers (trace span, metrics,
//! request-size check), without the engine. Echo, health and SendMessage
//! side by side split a broker call's cost into tonic's, the layers' and
//! the rest (auth, decoding, the engine).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::embedded::BROKER_THREAD_NAME;
use crate::load::{Latency, MAX_CONNECTIONS};
use crate::options::Mode;

/// A bare tonic health server on 127.0.0.1, on its own runtime.
pub struct EchoServer {
    addr: SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl EchoServer {
    /// Serves on an ephemeral port, on `worker_threads` threads.
    pub fn start(worker_threads: usize) -> anyhow::Result<EchoServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .thread_name(BROKER_THREAD_NAME)
            .enable_all()
            .build()
            .context("cannot start the echo server's runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(async move {
            let (_reporter, health) = tonic_health::server::health_reporter();
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(EchoServer {
            addr,
            runtime,
            stop,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let result = self.runtime.block_on(self.server);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the echo server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("the echo server panicked")),
        }
    }
}

/// What the callers counted.
pub struct EchoStats {
    /// Calls answered before the deadline.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    pub latency: Latency,
    /// Seconds measured.
    pub wall: f64,
}

impl EchoStats {
    /// The report's text.
    pub fn text(&self, mode: Mode, callers: u32, connections: usize) -> String {
        let what = match mode {
            Mode::Health => "the embedded broker's gRPC health Check, through its layers",
            _ => "bare tonic, gRPC health Check",
        };
        let p = |q: f64| self.latency.quantile_ms(q).unwrap_or(f64::NAN);
        format!(
            "{what}, on 127.0.0.1; {callers} callers over {connections} connections, closed loop, {:.0} s\n\
             calls          {:>8.0} calls/s  ({} calls)\n\
             call latency   p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms\n\
             errors         {}\n",
            self.wall,
            self.calls as f64 / self.wall,
            self.calls,
            p(0.5),
            p(0.99),
            p(0.999),
            self.errors,
        )
    }
}

/// Calls `Check` on `addr` from `callers` tasks in a closed loop for
/// `duration`, over `connections` connections (default: one per caller, at
/// most [`MAX_CONNECTIONS`]).
pub async fn run(
    addr: SocketAddr,
    callers: u32,
    connections: Option<u32>,
    duration: Duration,
) -> anyhow::Result<(EchoStats, usize)> {
    let most = connections.map_or(MAX_CONNECTIONS, |c| c as usize);
    let mut channels = Vec::new();
    for _ in 0..(callers as usize).clamp(1, most) {
        let channel: Channel = Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to the echo server at {addr}"))?;
        channels.push(channel);
    }
    let errors = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let deadline = began + duration;
    let tasks: Vec<_> = (0..callers as usize)
        .map(|i| {
            let channel = tower::util::MapRequest::new(
                channels[i % channels.len()].clone(),
                |request: http::Request<tonic::body::Body>| {
                    request.map(broker_client::Lookahead::wrap)
                },
            );
            let mut client = HealthClient::new(channel);
            let errors = errors.clone();
            tokio::spawn(async move {
                let (mut calls, mut latency) = (0u64, Latency::new());
                while Instant::now() < deadline {
                    let start = Instant::now();
                    match client.check(HealthCheckRequest::default()).await {
                        Ok(_) => {
                            calls += 1;
                            latency.record(start.elapsed());
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (calls, latency)
            })
        })
        .collect();
    let mut stats = EchoStats {
        calls: 0,
        errors: 0,
        latency: Latency::new(),
        wall: 0.0,
    };
    for task in tasks {
        let (calls, latency) = task.await.context("an echo caller panicked")?;
        stats.calls += calls;
        stats.latency.merge(&latency);
    }
    stats.wall = began.elapsed().as_secs_f64();
    stats.errors = errors.load(Ordering::Relaxed);
    Ok((stats, channels.len()))
}
