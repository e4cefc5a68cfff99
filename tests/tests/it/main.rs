//! Integration tests over real gRPC, gathered into one test binary.
//!
//! Every test starts its own server (`broker_tests::TestServer`) on
//! `127.0.0.1:0` with a temporary data directory, so tests run in parallel
//! without sharing state. One module per feature of the API:
//!
//! - `admin`: the CLI's operator tools (`stats`/`top` rows, `peek` paging,
//!   `redrive --per-second`) against a real server
//! - `caps`: a queue's `max_messages` and the broker's `--max-messages`
//! - `consumer`: the client's `Consumer` and `Publisher` (pull and push)
//! - `queues`: create / get / list / update / delete / purge and their validation
//! - `send`: single and batch sends, sizes, attributes, delays
//! - `send_stream`: the publishing stream (`SendStream`): answers in order,
//!   per-message errors, the window, topics, closing and restarts
//! - `receive`: visibility timeouts, receipt handles, delete and change visibility
//! - `long_poll`: what wakes a waiting receive, and disconnects mid-wait
//! - `manifests`: the Kubernetes manifests of `deploy/kubernetes/` fit together
//! - `metrics`: Prometheus metrics at `/metrics` follow real operations
//! - `operations`: health checking, reflection, client deadlines, shutdown order
//! - `delivery`: a queue's receive rate limit and retry backoff
//! - `dead_letter`: redrive policies, dead-letter moves and `RedriveMessages`
//! - `peek`: `PeekMessages`, a read-only look at messages, paged
//! - `security`: TLS (server and client certificates), token authentication
//!   and permissions, and the connection / stream / long-poll / request-size limits
//! - `restart`: what survives a graceful restart on the same data directory,
//!   and a SIGKILLed server process
//! - `storage_faults`: a failed fsync or write (injected): UNAVAILABLE,
//!   nothing acknowledged after it, the broker stops, a restart recovers
//! - `stream`: push delivery over `StreamMessages`
//! - `topics`: topics and subscriptions, fan-out publishes, filter policies,
//!   raw and envelope delivery, atomicity, and what survives a restart
//!
//! Timings are short (1–2 s visibility timeouts and waits). Tests wait for an
//! event rather than sleep: a long-poll receive, a message from a consumer's
//! handler, a gauge of the server's metrics (a receive parked), or a
//! condition polled by `broker_tests::eventually`. A test sleeps only where
//! time passing is what it tests, and says so.

mod admin;
mod caps;
mod cluster;
mod consumer;
mod crash;
mod dead_letter;
mod delivery;
mod disk;
mod long_poll;
mod manifests;
mod metrics;
mod operations;
mod peek;
mod queues;
mod receive;
mod restart;
mod security;
mod send;
mod send_stream;
mod storage_faults;
mod stream;
mod topics;
