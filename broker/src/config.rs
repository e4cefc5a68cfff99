//! Server settings.

use std::path::PathBuf;
use std::time::Duration;

use crate::storage::SyncMode;

/// How a server runs; built by `broker serve` from its flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where RocksDB keeps its files; created if missing.
    pub data_dir: PathBuf,
    /// What an acknowledged write promises.
    pub sync: SyncMode,
    /// How long in-flight RPCs may run on after shutdown begins.
    pub shutdown_timeout: Duration,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            sync: SyncMode::Always,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}
