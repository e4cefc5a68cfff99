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
    /// Cluster mode; `None`: a single node.
    pub cluster: Option<ClusterConfig>,
    /// Storage failures to inject (tests; a single node only); `None`:
    /// none, and never from settings.
    pub storage_faults: Option<std::sync::Arc<crate::storage::faults::Faults>>,
}

/// How a node takes part in a cluster (`broker serve --node-id ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster, at least 1.
    pub node_id: u64,
    /// Where the node serves other nodes (and requests forwarded to it).
    pub listen: SocketAddr,
    /// The address other nodes reach `listen` at; default: `listen`.
    pub advertise: Option<String>,
    /// The address clients reach the gRPC listener at, which other nodes
    /// tell clients to use; default: the gRPC listener's address, unless
    /// it is a wildcard (then none).
    pub client_advertise: Option<String>,
    /// Cluster addresses of nodes to join through; empty: start a new
    /// cluster (or restart as the member the data dir says).
    pub join: Vec<String>,
    /// Log entries applied between two snapshots of this node's engine;
    /// the log is purged up to `min(1000, snapshot_every)` entries before
    /// the last snapshot.
    pub snapshot_every: u64,
    /// How far this node's clock may be from the voters' median clock
    /// for it to stand for election (`cluster::clocks`), in ms.
    pub max_clock_skew_ms: u64,
    /// Tests only (`--test-clock-offset-ms`, hidden): ms added to this
    /// node's clock, to make a node whose clock is off.
    pub test_clock_offset_ms: i64,
    /// Mutual TLS between nodes (`--cluster-tls-*`): this node's
    /// certificate and key, and in `client_ca` the CA every node's
    /// certificate must chain to; `None`: plaintext.
    pub tls: Option<TlsConfig>,
}

impl ClusterConfig {
    /// The address other nodes reach this node at.
    pub fn address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }
}

/// Log format and filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter, e.g. `info` or `broker=debug,info`.
    pub filter: String,
}

#[derive(
    clap::ValueEnum, serde::Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
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
    /// Open `StreamMessages` and `SendStream` streams at once, over all connections.
    pub max_streams: usize,
    /// Long-polling receives waiting at once on one connection.
    pub max_long_polls_per_connection: usize,
    /// The largest request, checked before it is decoded.
    pub max_request_bytes: usize,
    /// Free bytes the data dir's file system keeps: below, sends,
    /// publishes and redrives are refused (`storage::disk`); 0: no floor.
    pub min_free_disk: u64,
    /// Messages the broker holds at most, over all queues: sends and
    /// publishes beyond are refused (`engine::room`); 0: no cap.
    pub max_messages: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            max_streams: 10_000,
            max_long_polls_per_connection: 1_000,
            max_request_bytes: broker_proto::limits::MAX_GRPC_MESSAGE_BYTES,
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            max_messages: 0,
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
            cluster: None,
            storage_faults: None,
        }
    }
}

/// The settings of `broker serve` (and `broker config print`) as flags,
/// `BROKER_*` environment variables and keys of a TOML file: one struct for
/// all three, every field optional, so that precedence is one `or` per key:
/// flag, then environment (clap's `env`), then file, then the default.
/// [`Settings::resolve`] validates the merged values into a [`ServerConfig`].
#[derive(clap::Args, serde::Deserialize, serde::Serialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to serve gRPC on [default: 127.0.0.1:50051]
    #[arg(long, env = "BROKER_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Directory of the database; created if missing [default: broker-data]
    #[arg(long, env = "BROKER_DATA_DIR", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// What an acknowledged send or delete promises: `always` synced to disk
    /// (concurrent requests share syncs), `batch` synced within
    /// --sync-interval-ms, `none` left to the OS [default: always]
    #[arg(long, env = "BROKER_SYNC", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncPolicy>,
    /// With --sync batch: the longest time between two syncs, 1..=10000 [default: 10]
    #[arg(long, env = "BROKER_SYNC_INTERVAL_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_ms: Option<u64>,
    /// Seconds in-flight requests may run on after SIGINT/SIGTERM, 0..=3600 [default: 10]
    #[arg(long, env = "BROKER_SHUTDOWN_TIMEOUT", value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_timeout: Option<u64>,
    /// Address to serve Prometheus metrics on (`/metrics`), or `off` [default: 127.0.0.1:9464]
    #[arg(long, env = "BROKER_METRICS_LISTEN", value_name = "ADDR|off")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "BROKER_LOG_FORMAT", value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter, `RUST_LOG` style (e.g. `info` or `broker=debug,info`) [default: $RUST_LOG, else info]
    #[arg(long, env = "BROKER_LOG", value_name = "FILTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// PEM certificate chain: serve gRPC and metrics over TLS (with --tls-key)
    #[arg(long, env = "BROKER_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "BROKER_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: require client certificates signed by them
    #[arg(long, env = "BROKER_TLS_CLIENT_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Token file (TOML): turns authentication on
    #[arg(long, env = "BROKER_AUTH_TOKENS", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_tokens: Option<PathBuf>,
    /// Open connections at once, 1..=1000000 [default: 10000]
    #[arg(long, env = "BROKER_MAX_CONNECTIONS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Open streams (StreamMessages, SendStream) at once, 1..=1000000 [default: 10000]
    #[arg(long, env = "BROKER_MAX_STREAMS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<usize>,
    /// Long-polling receives waiting at once on one connection, 1..=1000000 [default: 1000]
    #[arg(long, env = "BROKER_MAX_LONG_POLLS_PER_CONNECTION", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_long_polls_per_connection: Option<usize>,
    /// The largest request in bytes, checked before decoding, 2097152..=1073741824 [default: 134217728]
    #[arg(long, env = "BROKER_MAX_REQUEST_BYTES", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<usize>,
    /// Free bytes to keep on the data dir's disk: below, sends, publishes and redrives get RESOURCE_EXHAUSTED while receives and deletes go on, 0 (off)..=1125899906842624 [default: 268435456]
    #[arg(long, env = "BROKER_MIN_FREE_DISK", value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_disk: Option<u64>,
    /// Messages the broker holds at most, over all queues (about 180 bytes of memory each): sends and publishes beyond get RESOURCE_EXHAUSTED, 0 (no cap)..=1000000000000 [default: 0]
    #[arg(long, env = "BROKER_MAX_MESSAGES", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u64>,
    /// Cluster mode: this node's id, 1 or more, unique in the cluster [default: single node]
    #[arg(long, env = "BROKER_NODE_ID", value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Cluster mode: address to serve other nodes (and forwarded requests) on
    #[arg(long, env = "BROKER_CLUSTER_LISTEN", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_listen: Option<SocketAddr>,
    /// Cluster mode: the address other nodes reach cluster_listen at [default: cluster_listen]
    #[arg(long, env = "BROKER_CLUSTER_ADVERTISE", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_advertise: Option<String>,
    /// Cluster mode: the address clients reach this node's gRPC listener at, given to clients by the other nodes [default: listen, unless 0.0.0.0 or [::]]
    #[arg(long, env = "BROKER_CLIENT_ADVERTISE", value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_advertise: Option<String>,
    /// Cluster mode: cluster addresses of nodes to join through, comma-separated [default: start a new cluster]
    #[arg(
        long,
        env = "BROKER_JOIN",
        value_name = "ADDR,...",
        value_delimiter = ','
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<String>>,
    /// Cluster mode: log entries applied between two snapshots (each a scan of the whole engine) [default: 10000]
    #[arg(long, env = "BROKER_SNAPSHOT_EVERY", value_name = "ENTRIES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_every: Option<u64>,
    /// Cluster mode: how far this node's clock may be from the median clock of the voters (measured every second) for it to stand for election; a new leader releases in-flight messages early by at most twice this, 10..=60000 [default: 500]
    #[arg(long, env = "BROKER_MAX_CLOCK_SKEW_MS", value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clock_skew_ms: Option<u64>,
    /// Cluster mode: PEM certificate chain of this node for mutual TLS between nodes (with --cluster-tls-key and --cluster-tls-ca); it must name the host of --cluster-advertise [default: plaintext]
    #[arg(long, env = "BROKER_CLUSTER_TLS_CERT", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// Cluster mode: PEM private key of --cluster-tls-cert
    #[arg(long, env = "BROKER_CLUSTER_TLS_KEY", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_tls_key: Option<PathBuf>,
    /// Cluster mode: PEM CA certificates that every node's certificate must chain to; a connection with no such certificate is refused, either way
    #[arg(long, env = "BROKER_CLUSTER_TLS_CA", value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// Tests only: ms added to this node's clock (a node whose clock is off)
    #[arg(long, hide = true, allow_hyphen_values = true, value_name = "MS")]
    #[serde(skip)]
    pub test_clock_offset_ms: Option<i64>,
}

/// `--sync`: see [`SyncMode`].
#[derive(
    clap::ValueEnum, serde::Deserialize, serde::Serialize, Clone, Copy, Debug, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    Always,
    Batch,
    None,
}

/// A setting with a wrong value: names the key, the value and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value}: {allowed} ({})", origin(key))]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{key} is not set: {why} ({})", origin(key))]
    Missing { key: &'static str, why: String },
}

/// Where a key's value may come from, for error messages.
fn origin(key: &str) -> String {
    format!(
        "flag --{}, environment BROKER_{}, or key {key} of the config file",
        key.replace('_', "-"),
        key.to_uppercase()
    )
}

/// Ranges of the numeric settings: (key, min, max).
const SYNC_INTERVAL_MS: (&str, u64, u64) = ("sync_interval_ms", 1, 10_000);
const SHUTDOWN_TIMEOUT: (&str, u64, u64) = ("shutdown_timeout", 0, 3600);
const SNAPSHOT_EVERY: (&str, u64, u64) = ("snapshot_every", 10, 100_000_000);
const MAX_CLOCK_SKEW_MS: (&str, u64, u64) = ("max_clock_skew_ms", 10, 60_000);
/// Default of `max_clock_skew_ms`.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 500;
/// Default of `snapshot_every`.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
const MAX_CONNECTIONS: (&str, u64, u64) = ("max_connections", 1, 1_000_000);
const MAX_STREAMS: (&str, u64, u64) = ("max_streams", 1, 1_000_000);
const MAX_LONG_POLLS: (&str, u64, u64) = ("max_long_polls_per_connection", 1, 1_000_000);
/// At least one message of the largest size (1 MiB) with its framing.
const MAX_REQUEST_BYTES: (&str, u64, u64) = ("max_request_bytes", 2 << 20, 1 << 30);
const MIN_FREE_DISK: (&str, u64, u64) = ("min_free_disk", 0, 1 << 50);
const MAX_MESSAGES: (&str, u64, u64) = ("max_messages", 0, 1_000_000_000_000);
/// Default of `min_free_disk`: 256 MiB.
pub const DEFAULT_MIN_FREE_DISK: u64 = 256 << 20;

/// The metrics address `broker serve` uses when none is given.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

impl Settings {
    /// Reads a TOML file of settings; unknown keys are errors (a typo must
    /// not be ignored silently).
    pub fn from_file(path: &std::path::Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Each key of `self`, or of `fallback` where `self` has none.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            listen: self.listen.or(fallback.listen),
            data_dir: self.data_dir.or(fallback.data_dir),
            sync: self.sync.or(fallback.sync),
            sync_interval_ms: self.sync_interval_ms.or(fallback.sync_interval_ms),
            shutdown_timeout: self.shutdown_timeout.or(fallback.shutdown_timeout),
            metrics_listen: self.metrics_listen.or(fallback.metrics_listen),
            log_format: self.log_format.or(fallback.log_format),
            log: self.log.or(fallback.log),
            tls_cert: self.tls_cert.or(fallback.tls_cert),
            tls_key: self.tls_key.or(fallback.tls_key),
            tls_client_ca: self.tls_client_ca.or(fallback.tls_client_ca),
            auth_tokens: self.auth_tokens.or(fallback.auth_tokens),
            max_connections: self.max_connections.or(fallback.max_connections),
            max_streams: self.max_streams.or(fallback.max_streams),
            max_long_polls_per_connection: self
                .max_long_polls_per_connection
                .or(fallback.max_long_polls_per_connection),
            max_request_bytes: self.max_request_bytes.or(fallback.max_request_bytes),
            min_free_disk: self.min_free_disk.or(fallback.min_free_disk),
            max_messages: self.max_messages.or(fallback.max_messages),
            node_id: self.node_id.or(fallback.node_id),
            cluster_listen: self.cluster_listen.or(fallback.cluster_listen),
            cluster_advertise: self.cluster_advertise.or(fallback.cluster_advertise),
            client_advertise: self.client_advertise.or(fallback.client_advertise),
            join: self.join.or(fallback.join),
            snapshot_every: self.snapshot_every.or(fallback.snapshot_every),
            max_clock_skew_ms: self.max_clock_skew_ms.or(fallback.max_clock_skew_ms),
            cluster_tls_cert: self.cluster_tls_cert.or(fallback.cluster_tls_cert),
            cluster_tls_key: self.cluster_tls_key.or(fallback.cluster_tls_key),
            cluster_tls_ca: self.cluster_tls_ca.or(fallback.cluster_tls_ca),
            test_clock_offset_ms: self.test_clock_offset_ms.or(fallback.test_clock_offset_ms),
        }
    }

    /// The effective configuration: `self` (flags and environment), then
    /// the TOML file at `file`, then the defaults; validated.
    pub fn load(
        self,
        file: Option<&std::path::Path>,
        rust_log: Option<String>,
    ) -> Result<ServerConfig, ConfigError> {
        let from_file = match file {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        self.or(from_file).resolve(rust_log)
    }

    /// Validates the settings and fills in defaults. `rust_log` is the
    /// value of `RUST_LOG`, the filter when `log` is not set.
    pub fn resolve(self, rust_log: Option<String>) -> Result<ServerConfig, ConfigError> {
        let defaults = ServerConfig::new("broker-data");
        let sync_interval = in_range(SYNC_INTERVAL_MS, self.sync_interval_ms, 10)?;
        let sync = match self.sync.unwrap_or(SyncPolicy::Always) {
            SyncPolicy::Always => SyncMode::Always,
            SyncPolicy::Batch => SyncMode::Batch(Duration::from_millis(sync_interval)),
            SyncPolicy::None => SyncMode::None,
        };
        let metrics_listen = match self
            .metrics_listen
            .as_deref()
            .unwrap_or(DEFAULT_METRICS_LISTEN)
        {
            "off" => None,
            addr => Some(addr.parse().map_err(|_| ConfigError::Invalid {
                key: "metrics_listen",
                value: format!("{addr:?}"),
                allowed: "must be an address such as 127.0.0.1:9464, or off".into(),
            })?),
        };
        let filter = self
            .log
            .or(rust_log)
            .unwrap_or_else(|| defaults.log.filter.clone());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&filter) {
            return Err(ConfigError::Invalid {
                key: "log",
                value: format!("{filter:?}"),
                allowed: format!(
                    "must be a RUST_LOG-style filter such as info or broker=debug,info ({e})"
                ),
            });
        }
        let tls = match (self.tls_cert, self.tls_key, self.tls_client_ca) {
            (None, None, None) => None,
            (Some(cert), Some(key), client_ca) => Some(TlsConfig {
                cert,
                key,
                client_ca,
            }),
            (cert, _, _) => {
                let (key, set) = match cert {
                    Some(_) => ("tls_key", "tls_cert"),
                    None => ("tls_cert", "tls_key or tls_client_ca"),
                };
                return Err(ConfigError::Missing {
                    key,
                    why: format!("{set} is set, and TLS needs both tls_cert and tls_key"),
                });
            }
        };
        let data_dir = self.data_dir.unwrap_or(defaults.data_dir);
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir",
                value: "\"\"".into(),
                allowed: "must be a directory path".into(),
            });
        }
        let limits = Limits {
            max_connections: in_range(
                MAX_CONNECTIONS,
                self.max_connections,
                defaults.limits.max_connections,
            )?,
            max_streams: in_range(MAX_STREAMS, self.max_streams, defaults.limits.max_streams)?,
            max_long_polls_per_connection: in_range(
                MAX_LONG_POLLS,
                self.max_long_polls_per_connection,
                defaults.limits.max_long_polls_per_connection,
            )?,
            max_request_bytes: in_range(
                MAX_REQUEST_BYTES,
                self.max_request_bytes,
                defaults.limits.max_request_bytes,
            )?,
            min_free_disk: in_range(
                MIN_FREE_DISK,
                self.min_free_disk,
                defaults.limits.min_free_disk,
            )?,
            max_messages: in_range(
                MAX_MESSAGES,
                self.max_messages,
                defaults.limits.max_messages,
            )?,
        };
        let cluster_tls = match (
            self.cluster_tls_cert,
            self.cluster_tls_key,
            self.cluster_tls_ca,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsConfig {
                cert,
                key,
                client_ca: Some(ca),
            }),
            (cert, key, _) => {
                let missing = match (cert, key) {
                    (None, _) => "cluster_tls_cert",
                    (_, None) => "cluster_tls_key",
                    _ => "cluster_tls_ca",
                };
                return Err(ConfigError::Missing {
                    key: missing,
                    why: "cluster TLS needs cluster_tls_cert, cluster_tls_key and cluster_tls_ca"
                        .into(),
                });
            }
        };
        let cluster = match (self.node_id, self.cluster_listen) {
            (None, None) => {
                for (key, set) in [
                    ("cluster_advertise", self.cluster_advertise.is_some()),
                    ("client_advertise", self.client_advertise.is_some()),
                    ("join", self.join.is_some()),
                    ("snapshot_every", self.snapshot_every.is_some()),
                    ("max_clock_skew_ms", self.max_clock_skew_ms.is_some()),
                    ("cluster_tls_cert", cluster_tls.is_some()),
                    ("test_clock_offset_ms", self.test_clock_offset_ms.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::Missing {
                            key: "node_id",
                            why: format!(
                                "{key} is set, and cluster mode needs node_id and cluster_listen"
                            ),
                        });
                    }
                }
                None
            }
            (Some(0), _) => {
                return Err(ConfigError::Invalid {
                    key: "node_id",
                    value: "0".into(),
                    allowed: "must be 1 or more".into(),
                });
            }
            (Some(node_id), Some(listen)) => Some(ClusterConfig {
                node_id,
                listen,
                advertise: self.cluster_advertise,
                client_advertise: self.client_advertise,
                join: self.join.unwrap_or_default(),
                snapshot_every: in_range(
                    SNAPSHOT_EVERY,
                    self.snapshot_every,
                    DEFAULT_SNAPSHOT_EVERY,
                )?,
                max_clock_skew_ms: in_range(
                    MAX_CLOCK_SKEW_MS,
                    self.max_clock_skew_ms,
                    DEFAULT_MAX_CLOCK_SKEW_MS,
                )?,
                test_clock_offset_ms: self.test_clock_offset_ms.unwrap_or(0),
                tls: cluster_tls,
            }),
            (node_id, _) => {
                let (key, set) = match node_id {
                    Some(_) => ("cluster_listen", "node_id"),
                    None => ("node_id", "cluster_listen"),
                };
                return Err(ConfigError::Missing {
                    key,
                    why: format!("{set} is set, and cluster mode needs node_id and cluster_listen"),
                });
            }
        };
        Ok(ServerConfig {
            listen: self.listen.unwrap_or(defaults.listen),
            data_dir,
            sync,
            shutdown_timeout: Duration::from_secs(in_range(
                SHUTDOWN_TIMEOUT,
                self.shutdown_timeout,
                10,
            )?),
            metrics_listen,
            log: LogConfig {
                format: self.log_format.unwrap_or(LogFormat::Text),
                filter,
            },
            tls,
            auth_tokens: self.auth_tokens,
            limits,
            cluster,
            storage_faults: None,
        })
    }
}

/// `value` (or `default` when unset) if it lies in the key's range.
fn in_range<T>(
    range: (&'static str, u64, u64),
    value: Option<T>,
    default: T,
) -> Result<T, ConfigError>
where
    T: Copy + TryInto<u64> + std::fmt::Display,
{
    let (key, min, max) = range;
    let Some(value) = value else {
        return Ok(default);
    };
    match value.try_into() {
        Ok(v) if (min..=max).contains(&v) => Ok(value),
        _ => Err(ConfigError::Invalid {
            key,
            value: value.to_string(),
            allowed: format!("must be in {min}..={max}"),
        }),
    }
}

impl From<&ServerConfig> for Settings {
    /// Every key set, to the value `config` runs with: what `broker config
    /// print` shows.
    fn from(config: &ServerConfig) -> Settings {
        let (sync, interval) = match config.sync {
            SyncMode::Always => (SyncPolicy::Always, None),
            SyncMode::Batch(interval) => (SyncPolicy::Batch, Some(interval)),
            SyncMode::None => (SyncPolicy::None, None),
        };
        let cluster_tls = config.cluster.as_ref().and_then(|c| c.tls.as_ref());
        Settings {
            listen: Some(config.listen),
            data_dir: Some(config.data_dir.clone()),
            sync: Some(sync),
            sync_interval_ms: Some(interval.map_or(10, |i| i.as_millis() as u64)),
            shutdown_timeout: Some(config.shutdown_timeout.as_secs()),
            metrics_listen: Some(
                config
                    .metrics_listen
                    .map_or("off".to_string(), |a| a.to_string()),
            ),
            log_format: Some(config.log.format),
            log: Some(config.log.filter.clone()),
            tls_cert: config.tls.as_ref().map(|t| t.cert.clone()),
            tls_key: config.tls.as_ref().map(|t| t.key.clone()),
            tls_client_ca: config.tls.as_ref().and_then(|t| t.client_ca.clone()),
            auth_tokens: config.auth_tokens.clone(),
            max_connections: Some(config.limits.max_connections),
            max_streams: Some(config.limits.max_streams),
            max_long_polls_per_connection: Some(config.limits.max_long_polls_per_connection),
            max_request_bytes: Some(config.limits.max_request_bytes),
            min_free_disk: Some(config.limits.min_free_disk),
            max_messages: Some(config.limits.max_messages),
            node_id: config.cluster.as_ref().map(|c| c.node_id),
            cluster_listen: config.cluster.as_ref().map(|c| c.listen),
            cluster_advertise: config.cluster.as_ref().and_then(|c| c.advertise.clone()),
            client_advertise: config
                .cluster
                .as_ref()
                .and_then(|c| c.client_advertise.clone()),
            join: config
                .cluster
                .as_ref()
                .map(|c| c.join.clone())
                .filter(|j| !j.is_empty()),
            snapshot_every: config.cluster.as_ref().map(|c| c.snapshot_every),
            max_clock_skew_ms: config.cluster.as_ref().map(|c| c.max_clock_skew_ms),
            cluster_tls_cert: cluster_tls.map(|t| t.cert.clone()),
            cluster_tls_key: cluster_tls.map(|t| t.key.clone()),
            cluster_tls_ca: cluster_tls.and_then(|t| t.client_ca.clone()),
            test_clock_offset_ms: config
                .cluster
                .as_ref()
                .map(|c| c.test_clock_offset_ms)
                .filter(|&ms| ms != 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Operator-supplied: any config text loads or is refused naming
        /// the key, never a panic.
        #[test]
        fn any_config_text_loads_or_is_refused(
            junk in "\\PC{0,200}",
            key in proptest::sample::select(vec![
                "listen", "data_dir", "sync", "sync_interval_ms", "shutdown_timeout",
                "metrics_listen", "log_format", "log", "max_connections", "max_streams",
                "max_long_polls_per_connection", "max_request_bytes", "min_free_disk", "max_messages", "node_id",
                "cluster_listen", "cluster_advertise", "client_advertise", "join",
                "snapshot_every", "max_clock_skew_ms", "tls_cert", "tls_key", "auth_tokens",
                "cluster_tls_cert", "cluster_tls_key", "cluster_tls_ca",
            ]),
            value in "-?[0-9]{1,22}|true|false|\"[a-z0-9:./\\[\\]-]{0,24}\"|\\[\"[0-9.:]{0,16}\"\\]|\\PC{0,12}",
        ) {
            for text in [junk, format!("{key} = {value}\n")] {
                if let Ok(settings) = toml::from_str::<Settings>(&text) {
                    let _ = settings.resolve(None);
                }
            }
        }
    }

    fn invalid(settings: Settings) -> String {
        settings.resolve(None).unwrap_err().to_string()
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let text = include_str!("../../examples/broker.toml");
        let example: Settings = toml::from_str(text).expect("examples/broker.toml parses");
        let defaults = Settings::from(&Settings::default().resolve(None).unwrap());
        assert_eq!(example, defaults);
        for key in [
            "tls_cert",
            "tls_key",
            "tls_client_ca",
            "auth_tokens",
            "node_id",
            "cluster_listen",
            "cluster_advertise",
            "client_advertise",
            "join",
            "snapshot_every",
            "max_clock_skew_ms",
            "cluster_tls_cert",
            "cluster_tls_key",
            "cluster_tls_ca",
        ] {
            assert!(text.contains(&format!("# {key} = ")), "{key} is documented");
        }
    }

    #[test]
    fn a_flag_or_environment_value_beats_the_file_which_beats_the_default() {
        let flags = Settings {
            max_streams: Some(7),
            ..Settings::default()
        };
        let file = Settings {
            max_streams: Some(5),
            listen: Some("0.0.0.0:6000".parse().unwrap()),
            ..Settings::default()
        };
        let config = flags.or(file).resolve(None).unwrap();
        assert_eq!(config.limits.max_streams, 7);
        assert_eq!(config.listen, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(
            config.limits.max_connections,
            Limits::default().max_connections
        );
    }

    #[test]
    fn the_log_key_beats_rust_log_which_beats_info() {
        let rust_log = Some("warn".to_string());
        assert_eq!(
            Settings::default().resolve(None).unwrap().log.filter,
            "info"
        );
        assert_eq!(
            Settings::default()
                .resolve(rust_log.clone())
                .unwrap()
                .log
                .filter,
            "warn"
        );
        let settings = Settings {
            log: Some("debug".into()),
            ..Settings::default()
        };
        assert_eq!(settings.resolve(rust_log).unwrap().log.filter, "debug");
    }

    #[test]
    fn out_of_range_numbers_name_the_key_the_value_and_the_range() {
        let cases: [(Settings, &str); 6] = [
            (
                Settings {
                    sync_interval_ms: Some(0),
                    ..Default::default()
                },
                "sync_interval_ms = 0: must be in 1..=10000",
            ),
            (
                Settings {
                    shutdown_timeout: Some(3601),
                    ..Default::default()
                },
                "shutdown_timeout = 3601: must be in 0..=3600",
            ),
            (
                Settings {
                    max_connections: Some(0),
                    ..Default::default()
                },
                "max_connections = 0: must be in 1..=1000000",
            ),
            (
                Settings {
                    max_streams: Some(1_000_001),
                    ..Default::default()
                },
                "max_streams = 1000001: must be in 1..=1000000",
            ),
            (
                Settings {
                    max_long_polls_per_connection: Some(0),
                    ..Default::default()
                },
                "max_long_polls_per_connection = 0: must be in 1..=1000000",
            ),
            (
                Settings {
                    max_request_bytes: Some(1024),
                    ..Default::default()
                },
                "max_request_bytes = 1024: must be in 2097152..=1073741824",
            ),
        ];
        for (settings, expected) in cases {
            let message = invalid(settings);
            assert!(message.starts_with(expected), "{message}");
            assert!(message.contains("environment BROKER_"), "{message}");
        }
    }

    #[test]
    fn wrong_values_name_the_key_and_what_is_allowed() {
        let message = invalid(Settings {
            metrics_listen: Some("nope".into()),
            ..Default::default()
        });
        assert!(
            message.starts_with(
                "metrics_listen = \"nope\": must be an address such as 127.0.0.1:9464, or off"
            ),
            "{message}"
        );
        let message = invalid(Settings {
            log: Some("broker=[".into()),
            ..Default::default()
        });
        assert!(
            message.starts_with("log = \"broker=[\": must be a RUST_LOG-style filter"),
            "{message}"
        );
        let message = invalid(Settings {
            data_dir: Some(PathBuf::new()),
            ..Default::default()
        });
        assert!(
            message.starts_with("data_dir = \"\": must be a directory path"),
            "{message}"
        );
        let message = invalid(Settings {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        });
        assert!(
            message.starts_with("tls_key is not set: tls_cert is set, and TLS needs both"),
            "{message}"
        );
        let message = invalid(Settings {
            tls_client_ca: Some("ca.pem".into()),
            ..Default::default()
        });
        assert!(message.starts_with("tls_cert is not set"), "{message}");
    }

    #[test]
    fn cluster_tls_takes_its_three_keys_together_and_cluster_mode() {
        let node = || Settings {
            node_id: Some(1),
            cluster_listen: Some("127.0.0.1:7001".parse().unwrap()),
            cluster_tls_cert: Some("n.pem".into()),
            cluster_tls_key: Some("n-key.pem".into()),
            cluster_tls_ca: Some("ca.pem".into()),
            ..Settings::default()
        };
        let config = node().resolve(None).unwrap();
        let tls = config.cluster.as_ref().unwrap().tls.clone().unwrap();
        assert_eq!(
            (tls.cert, tls.key, tls.client_ca),
            ("n.pem".into(), "n-key.pem".into(), Some("ca.pem".into()))
        );
        assert_eq!(config.tls, None, "the client listener stays plaintext");
        // `broker config print` shows them.
        let printed = Settings::from(&config);
        assert_eq!(
            (printed.cluster_tls_cert, printed.cluster_tls_ca),
            (Some("n.pem".into()), Some("ca.pem".into()))
        );
        let message = invalid(Settings {
            cluster_tls_ca: None,
            ..node()
        });
        assert!(
            message.starts_with("cluster_tls_ca is not set: cluster TLS needs cluster_tls_cert, cluster_tls_key and cluster_tls_ca"),
            "{message}"
        );
        let message = invalid(Settings {
            cluster_tls_cert: None,
            ..node()
        });
        assert!(
            message.starts_with("cluster_tls_cert is not set"),
            "{message}"
        );
        let message = invalid(Settings {
            node_id: None,
            cluster_listen: None,
            ..node()
        });
        assert!(
            message
                .starts_with("node_id is not set: cluster_tls_cert is set, and cluster mode needs"),
            "{message}"
        );
    }

    #[test]
    fn metrics_can_be_turned_off_and_tls_is_built_from_its_three_keys() {
        let config = Settings {
            metrics_listen: Some("off".into()),
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_client_ca: Some("ca.pem".into()),
            sync: Some(SyncPolicy::Batch),
            sync_interval_ms: Some(50),
            ..Settings::default()
        }
        .resolve(None)
        .unwrap();
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.sync, SyncMode::Batch(Duration::from_millis(50)));
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(
            (tls.cert.to_str(), tls.key.to_str()),
            (Some("c.pem"), Some("k.pem"))
        );
        assert_eq!(
            tls.client_ca.as_deref().and_then(|p| p.to_str()),
            Some("ca.pem")
        );
        // What `config print` shows resolves to the same configuration.
        let printed = toml::to_string(&Settings::from(&config)).unwrap();
        let reread: Settings = toml::from_str(&printed).unwrap();
        assert_eq!(
            Settings::from(&reread.resolve(None).unwrap()),
            Settings::from(&config)
        );
    }

    #[test]
    fn unknown_keys_and_unreadable_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let message = Settings::from_file(&path).unwrap_err().to_string();
        assert!(
            message.contains("broker.toml") && message.contains("unknown field `lisen`"),
            "{message}"
        );
        let message = Settings::from_file(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("cannot read the configuration file")
                && message.contains("missing.toml"),
            "{message}"
        );
    }
}
