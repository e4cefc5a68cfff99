//! Benchmarks of the broker (an unpublished crate).
//!
//! - `benches/engine.rs`: criterion benches of the engine's hot paths
//!   (send, receive + delete, fan-out), without gRPC.
//! - `src/bin/broker-bench.rs`: the load generator, over gRPC, against a
//!   running broker or one it embeds; see `benches/README.md` for the
//!   measured figures and the commands that produced them.
//!
//! The load generator's parts:
//! - [`options`]: its command-line flags and their bounds.
//! - [`embedded`]: a broker served from this process, on its own runtime
//!   and a temp data dir, for runs without `--server`.
//! - [`echo`]: `--mode echo`, the ceiling of a bare tonic unary call.
//! - [`load`]: the workload: queues or a topic, preload, producers,
//!   consumers, and what each of them counted and timed.
//! - [`procfs`]: CPU time and peak RSS of a process, from `/proc`.
//! - [`report`]: the results, as text or as one JSON object.

pub mod echo;
pub mod embedded;
pub mod load;
pub mod options;
pub mod procfs;
pub mod report;
