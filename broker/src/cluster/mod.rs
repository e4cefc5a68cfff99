//! Cluster mode, steps 1 and 2 of `docs/cluster-design.md`: the engine's
//! commands replicated through an openraft 0.9 log, one shard that holds
//! everything, served by `broker serve --node-id ...` (`server`).
//!
//! # What is replicated
//! One log entry carries engine [`Command`]s, decided by the leader's own
//! engine one after the other (`engine::replication`: decisions are
//! pipelined, and what was decided during one Raft round is proposed as
//! the next entry, through [`RaftLog`]), each prost-encoded inside the
//! entry, with the id of the command they were decided after (see
//! [`Request`]). Every replica, the leader too, applies committed entries
//! in log order with [`Engine::apply_entry`]; replay is deterministic
//! (`engine::command`), so replicas that applied the same prefix of the log
//! hold the same store and index. Membership and blank entries change no
//! engine state; they only move the applied log id.
//!
//! # Where things are
//! - [`log_store`]: openraft's `RaftLogStorage` over a [`Store`]: entries
//!   (`storage::keys::raft_log`), vote, committed and last-purged ids.
//! - [`state_machine`]: openraft's `RaftStateMachine` over an [`Engine`].
//! - [`proposer`]: the engine's `Log` (where its decisions go) over a
//!   node's [`Raft`].
//! - [`node`]: a node's startup: identity in the data dir, stores, Raft,
//!   a new cluster or a join.
//! - [`network`]: node-to-node traffic (openraft's RPCs and joins) over
//!   one internal gRPC method on the cluster listener.
//! - [`forward`]: any node serves any request, by passing it to the
//!   leader.
//! - [`elections`]: each round of a candidate is put off by a wait drawn
//!   afresh, which openraft 0.9 does not do.
//!
//! # Invariants
//! - **An entry is applied at most once.** The command's batch and the new
//!   applied log id (`storage::keys::RAFT_APPLIED`, with the membership)
//!   are written in one RocksDB batch. A replica that restarts reads the
//!   applied id and openraft re-applies only the entries after it.
//! - **A replica acknowledges an append only once it is durable.** The log
//!   store is opened with `SyncMode::Always`; `append` calls openraft's
//!   flush callback after the batch of entries is `fsync`ed, so a replica
//!   counts towards a commit only with the entries on disk. Votes,
//!   truncations and purges are synced before returning too; the
//!   committed id is written unsynced (a hint: see `log_store`).
//!
//! # Crash at each step
//! - During an append, before the sync: the entries may be lost; they were
//!   not acknowledged, and the leader sends them again.
//! - After the append, before apply: the log has them; on restart openraft
//!   applies every committed entry after the recorded applied id.
//! - During apply: each entry's batch is atomic, so the engine holds either
//!   its commands and its applied id or none of them. The batch is not
//!   synced: a restart applies again the entries the engine lost.
//! - During a truncation or a purge: each is one batch (the range delete,
//!   and for a purge the new last-purged id), so it happened or not.
//! - While a snapshot is built or received: its files are temporary until
//!   complete and synced, and removed at startup. A built snapshot's scan
//!   is durable in the engine before it is taken. A received one is kept
//!   (synced, with its meta) before openraft hears of it, since openraft
//!   purges the log as soon as it starts installing. Installing first
//!   deletes every key and writes a marker (`keys::RAFT_INSTALLING`,
//!   synced), then the snapshot's keys in batches, then its applied
//!   record while removing the marker. A node that crashes before its
//!   engine holds the whole snapshot finds the marker, empties its engine
//!   and installs the kept snapshot again when it starts
//!   (`Engine::open_with_clock`, `StateMachine::open`).
//!
//! # Snapshots and the log's size
//! Every `--snapshot-every` applied entries (10,000) a replica writes a snapshot of
//! its engine ([`snapshot`]) and purges its log up to 1,000 entries
//! before it. A follower whose next entry was purged on the leader
//! (a new node, or one that was down for long) is sent the snapshot, and
//! replaces its engine's store with it, holding 16 MiB of it in memory at
//! a time (`snapshot::INSTALL_BATCH_BYTES`). The engine's store is
//! not synced per write, so a snapshot first makes it durable: what a
//! purge drops is on disk in the engine.
//!
//! # Not built yet
//! - A column family per group: the log lives in a store of its own, in
//!   its own directory, beside the engine's.
//! - More than one command per entry (the design's batching) needs them
//!   applied in one batch, to keep "at most once". Until then a shard
//!   commits one decision per Raft round.

// openraft's traits fix the error types (`StorageError`, `RPCError`: over
// 100 bytes); returning them unboxed is what the traits ask.
#![allow(clippy::result_large_err)]

pub mod clocks;
pub mod codec;
pub mod elections;
pub mod forward;
pub mod log_store;
pub mod network;
pub mod node;
pub mod proposer;
pub mod snapshot;
pub mod state_machine;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

use prost::Message as _;

use crate::engine::Engine;
use crate::engine::command::Command;
use crate::engine::replication::{CommandId, Proposal};
use crate::storage::Store;
pub use log_store::LogStore;
pub use proposer::RaftLog;
pub use state_machine::StateMachine;

openraft::declare_raft_types!(
    /// The openraft types of a broker node.
    pub TypeConfig:
        D = Request,
        R = bool,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft of a broker node.
pub type Raft = openraft::Raft<TypeConfig>;

/// A node as the membership records it: where other nodes reach it, and
/// where clients do. Recorded in the log (postcard, [`codec`]) and in
/// snapshots (JSON); a JSON entry written without `client_addr` reads as
/// none.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The node's cluster address (`--cluster-advertise`, else
    /// `--cluster-listen`).
    pub addr: String,
    /// The address clients reach its gRPC listener at
    /// (`--client-advertise`, else `--listen` unless it is a wildcard);
    /// empty: none known, and clients are not sent there.
    #[serde(default)]
    pub client_addr: String,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        if !self.client_addr.is_empty() {
            write!(f, " (clients: {})", self.client_addr)?;
        }
        Ok(())
    }
}

/// The application data of a log entry: engine commands decided one after
/// the other, and the command they were decided after (the chain: they
/// apply only right after it, see `engine::replication`). openraft's
/// entries are serde types; each command inside stays prost-encoded (its
/// own versioned format): bytes in [`codec`]'s postcard, a base64 string
/// in JSON (log entries written by an earlier version).
#[derive(Debug, Clone, PartialEq)]
pub struct Request(pub Proposal);

/// [`Request`] on the wire: command ids as `[term, count]`; `C`, one
/// command as the format carries it.
#[derive(serde::Serialize, serde::Deserialize)]
struct WireRequest<C> {
    after: (u64, u64),
    first: (u64, u64),
    commands: Vec<C>,
}

impl<C> WireRequest<C> {
    fn new(p: &Proposal, commands: Vec<C>) -> Self {
        WireRequest {
            after: (p.after.term, p.after.n),
            first: (p.first.term, p.first.n),
            commands,
        }
    }

    /// The request, its commands made from the wire's by `command`.
    fn into_request<E>(self, command: impl FnMut(C) -> Result<Command, E>) -> Result<Request, E> {
        let id = |(term, n)| CommandId { term, n };
        Ok(Request(Proposal {
            after: id(self.after),
            first: id(self.first),
            commands: self
                .commands
                .into_iter()
                .map(command)
                .collect::<Result<_, E>>()?,
        }))
    }
}

/// A command as a byte string: its prost encoding.
struct Encoded<'a>(&'a Command);

impl serde::Serialize for Encoded<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

/// A command read from a byte string, decoded from the reader's buffer
/// when it lends it.
struct Decoded(Command);

impl<'de> serde::Deserialize<'de> for Decoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Decoded;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a prost-encoded command")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Decoded, E> {
                Command::decode(bytes).map(Decoded).map_err(E::custom)
            }
        }
        d.deserialize_bytes(Visitor)
    }
}

impl serde::Serialize for Request {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        let p = &self.0;
        if s.is_human_readable() {
            let base64 =
                |c: &Command| base64::engine::general_purpose::STANDARD.encode(c.encode_to_vec());
            WireRequest::new(p, p.commands.iter().map(base64).collect()).serialize(s)
        } else {
            WireRequest::new(p, p.commands.iter().map(Encoded).collect()).serialize(s)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Request {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        use serde::de::Error as _;
        if !d.is_human_readable() {
            return WireRequest::<Decoded>::deserialize(d)?.into_request(|Decoded(c)| Ok(c));
        }
        WireRequest::<String>::deserialize(d)?.into_request(|c| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(c)
                .map_err(D::Error::custom)?;
            Command::decode(bytes.as_slice()).map_err(D::Error::custom)
        })
    }
}

/// The openraft settings every node uses: a snapshot every
/// `snapshot_every` applied entries (`--snapshot-every`, a scan of the
/// whole engine), after which the log is purged but for the last
/// `min(1000, snapshot_every)` entries (a follower that lags by less
/// catches up from the log, one that lags by more gets the snapshot); a
/// follower waits at least 1.1 s without a heartbeat before it stands for
/// election (openraft's leader lease, `election_timeout_max`, 0.7 s, then
/// its election timeout of 0.4 to 0.7 s), longer than the leader's lease
/// ([`proposer::LEASE_MS`]), so that a leader cut off stops deciding
/// before another can be elected.
///
/// The timeouts are short because openraft 0.9 scales every wait of an
/// election by them: a node whose log was found shorter than another's in
/// an earlier election waits `2 × election_timeout_max` more before it
/// stands, a flag kept until it stands again (so it can hold back the
/// node that now has the longest log, seen here: 4.6 s before it stood
/// with 0.75 to 1.25 s timeouts). With 0.4 to 0.7 s the worst such case
/// stands after 2.8 s.
pub fn raft_config(snapshot_every: u64) -> openraft::Config {
    openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every.min(1_000),
        // A joining node is made a voter once its log is within this many
        // entries of the leader's (openraft's blocking `add_learner`). While
        // the membership changes, its acks count for every commit (in the
        // joint configuration of a second node, they are needed), so it
        // should not be far behind: with 2 × --snapshot-every (2,000 in that
        // run), a second node was made a voter 975 entries of 100 KiB behind,
        // and the first node committed nothing for the 31 s it took to catch up.
        replication_lag_threshold: 200,
        // Each chunk is one frame (postcard: a byte a byte), given
        // 30 s to be sent and, for the last one, kept and installed.
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 30_000,
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 700,
        ..Default::default()
    }
}

/// A node's storage for one group: its log store, and its state machine
/// with its snapshots in `snapshots`.
pub fn storage(
    log: Arc<Store>,
    engine: Arc<Engine>,
    snapshots: &Path,
) -> Result<(LogStore, StateMachine), snapshot::SnapshotError> {
    Ok((LogStore::new(log), StateMachine::open(engine, snapshots)?))
}
