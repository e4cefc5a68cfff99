//! broker: a durable message broker with Amazon SQS semantics, served over
//! gRPC and persisted in RocksDB.
//!
//! Layout (a module uses only modules below it in this list):
//! - [`server`]: `run(listener, config, shutdown)`: the gRPC server and the engine's background task; `StartupError`.
//! - [`metrics`]: Prometheus metrics of the engine, storage and RPCs, and the `/metrics` endpoint.
//! - [`service`]: thin gRPC adapters: protobuf in, engine call, protobuf or status out; the token interceptor; `service::status`, the one table from every layer's errors to gRPC statuses.
//! - [`cluster`]: cluster mode: the engine's commands replicated over openraft (log store, state machine, snapshots), node-to-node gRPC, joining, forwarding requests to the leader, and whether a node is ready to serve.
//! - [`engine`]: queues (send, receive, visibility, long polling, dead letters, retention) and topics with their fan-out, as commands decided and applied over the store; its module docs map where each behaviour lives.
//! - [`tls`], [`auth`], [`limits`]: TLS for the listeners, token authentication and permissions, limits that protect the broker.
//! - [`config`]: server settings (flags, environment, TOML file).
//! - [`storage`]: the narrow storage interface; the only module that imports RocksDB.
//! - [`clock`]: wall-clock time that follows tokio's clock.
//!
//! The `broker` binary (`src/main.rs`) runs `serve` and `config print` with
//! this library and every other subcommand with the `broker-cli` crate, a
//! client of the broker: this library never depends on the client.

pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod service;
pub mod storage;
pub mod tls;

pub use engine::{Error, Result};
