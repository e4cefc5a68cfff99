//! broker: a durable message broker with Amazon SQS semantics, served over
//! gRPC and persisted in RocksDB.
//!
//! Layout (dependencies point down the list):
//! - [`server`]: `run(listener, config, shutdown)`: the gRPC server and the engine's background task; `StartupError`.
//! - [`service`]: thin gRPC adapters: protobuf in, engine call, protobuf or status out; `service::status`, the one table from every layer's errors to gRPC statuses.
//! - [`metrics`]: Prometheus metrics of the engine, storage and RPCs, and the `/metrics` endpoint.
//! - [`queue`]: the engine: queues (send, receive, visibility, long polling, dead letters) and the fan-out of topics.
//! - [`topic`]: topic records, filter policies, the JSON envelope of copies.
//! - [`storage`]: the narrow storage interface; the only module that imports RocksDB.
//! - [`config`]: server settings.
//! - [`tls`], [`auth`], [`limits`]: TLS for the listeners, token authentication and permissions, limits that protect the broker.
//! - [`clock`]: wall-clock time that follows tokio's clock.
//! - [`error`]: the engine's error type, and which error each layer has.
//!
//! The `broker` binary (`src/main.rs`) runs `serve` and `config print` with
//! this library and every other subcommand with the `broker-cli` crate, a
//! client of the broker: this library never depends on the client.

pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod service;
pub mod storage;
pub mod tls;
pub mod topic;

pub use error::{Error, Result};
