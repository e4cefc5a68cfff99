//! A broker served from the generator's own process, for runs without
//! `--server`.
//!
//! It runs on a runtime of its own whose threads are named
//! [`BROKER_THREAD_NAME`], apart from the generator's runtime, so that the
//! two compete for the cores much as two processes would, and so that the
//! process's CPU time can be split between them by thread (see
//! [`crate::procfs::threads_cpu_seconds`]). The data dir is a temp dir,
//! removed once the broker has closed its database.

use std::net::SocketAddr;

use anyhow::Context as _;
use broker::config::ServerConfig;
use broker::storage::SyncMode;

/// Name of the embedded broker's runtime threads (at most 15 bytes: Linux
/// truncates thread names there).
pub const BROKER_THREAD_NAME: &str = "broker-rt";

/// A broker serving on 127.0.0.1 on an ephemeral port until [`stop`](Self::stop)ped.
pub struct EmbeddedBroker {
    /// Where it listens.
    addr: SocketAddr,
    /// Runs the server and its connections.
    runtime: tokio::runtime::Runtime,
    /// Resolving it begins the server's graceful shutdown.
    stop: tokio::sync::oneshot::Sender<()>,
    /// The server task; it ends once the database is closed.
    server: tokio::task::JoinHandle<Result<(), broker::server::StartupError>>,
    /// The data dir, removed on drop: after the database is closed.
    dir: tempfile::TempDir,
}

impl EmbeddedBroker {
    /// Starts a broker with `sync` on a temp data dir, on its own runtime
    /// of `worker_threads` threads.
    pub fn start(sync: SyncMode, worker_threads: usize) -> anyhow::Result<EmbeddedBroker> {
        let dir = tempfile::tempdir().context("cannot create a temp data dir")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .thread_name(BROKER_THREAD_NAME)
            .enable_all()
            .build()
            .context("cannot start the broker's runtime")?;
        // The listener must belong to the runtime that serves it. It has
        // TCP_NODELAY set because Linux copies it to accepted connections:
        // `broker::server::run` asks tonic for `tcp_nodelay(true)`, but tonic
        // ignores that setting for a listener passed in (as `run` does), so
        // without this every response would wait for the peer's delayed ACK
        // (about 40 ms). See benches/README.md.
        let listener = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_nodelay(true)?;
                socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
                socket.listen(1024)
            })
            .context("cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ServerConfig {
            sync,
            ..ServerConfig::new(dir.path())
        };
        let server = runtime.spawn(broker::server::run(listener, config, async {
            let _ = stopped.await;
        }));
        Ok(EmbeddedBroker {
            addr,
            runtime,
            stop,
            server,
            dir,
        })
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the broker down, waits for its database to close, then removes
    /// the data dir.
    pub fn stop(self) -> anyhow::Result<()> {
        let EmbeddedBroker {
            runtime,
            stop,
            server,
            dir,
            ..
        } = self;
        let _ = stop.send(());
        let result = runtime.block_on(server);
        drop(runtime);
        drop(dir);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the embedded broker failed")),
            Err(e) => Err(anyhow::Error::new(e).context("the embedded broker panicked")),
        }
    }
}
