//! Shared by the examples: a broker embedded in the example's process, on
//! a temp data dir, so an example runs with no server started beforehand.
//!
//! - [`EmbeddedBroker`]: a broker serving on an ephemeral port until dropped.
//! - [`payments`]: the logic of the `payments` example (topics, fan-out,
//!   filters, dead letters), a function so that the test suite runs it too.

pub mod payments;

use broker::config::ServerConfig;

/// A broker serving on an ephemeral port until dropped.
pub struct EmbeddedBroker {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl EmbeddedBroker {
    pub async fn start() -> anyhow::Result<EmbeddedBroker> {
        let dir = tempfile::tempdir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = ServerConfig::new(dir.path());
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = broker::server::run(listener, config, shutdown).await {
                eprintln!("embedded broker failed: {e}");
            }
        });
        Ok(EmbeddedBroker {
            addr,
            stop: Some(stop),
            _dir: dir,
        })
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
