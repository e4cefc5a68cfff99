//! Server settings.
//!
//! [`ServerConfig`] is the resolved configuration a server runs with. `broker
//! serve` builds it from flags, `BROKER_*` environment variables and a TOML
//! file (in that order of precedence); tests and embedders build it in code
//! from [`ServerConfig::new`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::storage::SyncMode;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the gRPC listener binds (`broker serve` binds it; `server::run`
    /// is handed the bound listener).
    pub listen: SocketAddr,
    /// Where RocksDB keeps its files; created if missing.
    pub data_dir: PathBuf,
    /// What an acknowledged write promises.
    pub sync: SyncMode,
    /// How long in-flight RPCs may run on after shutdown begins.
    pub shutdown_timeout: Duration,
    /// Where Prometheus metrics are served (`/metrics`); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Log output.
    pub log: LogConfig,
    /// TLS for the gRPC and metrics listeners; `None`: plaintext.
    pub tls: Option<TlsConfig>,
    /// The token file; `None`: authentication is off.
    pub auth_tokens: Option<PathBuf>,
    /// Limits that protect the broker from one client.
    pub limits: Limits,
}

/// Log format and filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter, e.g. `info` or `broker=debug,info`.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// PEM files of the server's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to; `None`:
    /// client certificates are not asked for.
    pub client_ca: Option<PathBuf>,
}

/// Limits that protect the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Open `StreamMessages` streams at once, over all connections.
    pub max_streams: usize,
    /// Long-polling receives waiting at once on one connection.
    pub max_long_polls_per_connection: usize,
    /// The largest request, checked before it is decoded.
    pub max_request_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            max_streams: 10_000,
            max_long_polls_per_connection: 1_000,
            max_request_bytes: crate::server::MAX_GRPC_MESSAGE_BYTES,
        }
    }
}

impl ServerConfig {
    /// The defaults, with `data_dir`; listens on loopback, metrics off,
    /// plaintext, no authentication.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: data_dir.into(),
            sync: SyncMode::Always,
            shutdown_timeout: Duration::from_secs(10),
            metrics_listen: None,
            log: LogConfig {
                format: LogFormat::Text,
                filter: "info".to_string(),
            },
            tls: None,
            auth_tokens: None,
            limits: Limits::default(),
        }
    }
}
