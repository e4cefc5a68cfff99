//! The state machine: openraft's `RaftStateMachine` over an [`Engine`].
//!
//! `apply` hands each entry to [`Engine::apply_entry`]: a normal entry's
//! commands are applied if they were decided on the state the entry finds
//! (the entry names the command it follows, and every replica has applied
//! the same chain of command ids; see `engine::replication`), with the
//! entry's log id and the membership in force written in the same batch
//! (`storage::keys::RAFT_APPLIED`, JSON); otherwise only that record is
//! written. The reply says whether the commands were applied. Opening
//! reads the record back, so openraft re-applies exactly the committed
//! entries after it.
//!
//! Snapshots ([`super::snapshot`]): the builder writes every key of the
//! engine's store, as of one moment, to a file, the applied record among
//! them, which is where the snapshot's meta comes from. Installing one
//! replaces the engine's whole store with it, a batch at a time
//! ([`Engine::install`]: a marker key says an install is under way, and an
//! install cut short is done again at `open`), and rebuilds the index.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};

use super::TypeConfig;
use super::snapshot::{Meta, SnapshotError, Snapshots};
use crate::engine::Engine;
use crate::storage::keys;

type NodeId = u64;
type Membership = StoredMembership<NodeId, super::Member>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What `RAFT_APPLIED` holds.
type Applied = (Option<LogId<NodeId>>, Membership);

/// A replica's engine as openraft's state machine.
pub struct StateMachine {
    engine: Arc<Engine>,
    /// The last applied log id and membership, as recorded in the engine's
    /// store (kept here to answer `applied_state` without a read).
    applied: Applied,
    snapshots: Arc<Snapshots>,
    /// The file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
}

fn sm_error(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

/// A snapshot's storage error, as openraft reports it.
pub(super) fn snapshot_error(
    meta: Option<&Meta>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::Snapshot(meta.map(|m| m.signature())),
        verb,
        AnyError::new(&e),
    )
    .into()
}

impl StateMachine {
    /// The state machine over `engine`, at the applied id it recorded,
    /// with its snapshots in `snapshots`.
    pub fn open(
        engine: Arc<Engine>,
        snapshots: &Path,
    ) -> std::result::Result<StateMachine, SnapshotError> {
        let applied: Applied = match engine.recorded(keys::RAFT_APPLIED)? {
            None => (None, Membership::default()),
            Some(v) => {
                serde_json::from_slice(&v).map_err(|e| crate::storage::StorageError::Corrupt {
                    key: format!("{:02x?}", keys::RAFT_APPLIED),
                    reason: e.to_string(),
                })?
            }
        };
        let snapshots = Arc::new(Snapshots::open(snapshots)?);
        // A snapshot kept but not (wholly) installed before a crash: the
        // log may be purged up to it already, so it is installed now. (An
        // install cut short leaves its marker, and no applied record.)
        let installing = engine.recorded(keys::RAFT_INSTALLING)?.is_some();
        let applied = match snapshots.latest()? {
            Some((meta, path)) if meta.last_log_id > applied.0 || installing => {
                let index = meta.last_log_id.map_or(0, |id| id.index);
                super::snapshot::install(&engine, index, &path)?;
                tracing::info!(index, "installed the snapshot a crash interrupted");
                (meta.last_log_id, meta.last_membership)
            }
            _ => applied,
        };
        engine.start_at_entry(applied.0.map_or(0, |id| id.index))?;
        Ok(StateMachine {
            engine,
            applied,
            snapshots,
            receiving: None,
        })
    }

    /// Where this replica keeps its snapshots (the network's snapshot
    /// receiver writes there too).
    pub fn snapshots(&self) -> &Arc<Snapshots> {
        &self.snapshots
    }

    /// The engine this state machine applies to.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// Builds snapshots beside the state machine (openraft runs it in a task
/// of its own while entries go on being applied).
pub struct Builder {
    engine: Arc<Engine>,
    snapshots: Arc<Snapshots>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (engine, snapshots) = (self.engine.clone(), self.snapshots.clone());
        let (meta, path) = tokio::task::spawn_blocking(move || snapshots.build(&engine))
            .await
            .map_err(|e| snapshot_error(None, ErrorVerb::Write, e))?
            .map_err(|e| snapshot_error(None, ErrorVerb::Write, e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snapshot_error(Some(&meta), ErrorVerb::Read, e))?;
        let bytes = file.metadata().await.map_or(0, |m| m.len());
        tracing::info!(
            index = meta.last_log_id.map_or(0, |id| id.index),
            bytes,
            "built a snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<Applied> {
        Ok(self.applied.clone())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<bool>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let mut next = (Some(entry.log_id), self.applied.1.clone());
            if let EntryPayload::Membership(m) = &entry.payload {
                next.1 = StoredMembership::new(Some(entry.log_id), m.clone());
            }
            let record = serde_json::to_vec(&next).map_err(|e| sm_error(ErrorVerb::Write, e))?;
            let proposal = match &entry.payload {
                EntryPayload::Normal(request) => Some(&request.0),
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            };
            let applied = self
                .engine
                .apply_entry(entry.log_id.index, proposal, keys::RAFT_APPLIED, &record)
                .map_err(|e| StorageIOError::apply(entry.log_id, AnyError::new(&e)))?;
            self.applied = next;
            replies.push(applied);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            engine: self.engine.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>> {
        if let Some(r) = self.receiving.take() {
            let _ = tokio::fs::remove_file(r).await;
        }
        let path = self.snapshots.temporary();
        // Read back by `install_snapshot`.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snapshot_error(None, ErrorVerb::Write, e))?;
        self.receiving = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<()> {
        use tokio::io::AsyncWriteExt as _;
        fn failed(
            meta: &Meta,
            verb: ErrorVerb,
            e: impl std::error::Error + 'static,
        ) -> StorageError<NodeId> {
            snapshot_error(Some(meta), verb, e)
        }
        snapshot
            .flush()
            .await
            .map_err(|e| failed(meta, ErrorVerb::Write, e))?;
        let mut received = snapshot.into_std().await;
        if let Some(r) = self.receiving.take() {
            let _ = tokio::fs::remove_file(r).await;
        }
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let (engine, snapshots, owned) =
            (self.engine.clone(), self.snapshots.clone(), meta.clone());
        tokio::task::spawn_blocking(move || -> std::result::Result<(), SnapshotError> {
            // Kept (synced, with its meta) before the engine changes: a
            // crash during the install finds it at `open`. The network's
            // receiver keeps it before openraft hears of it; a handle from
            // elsewhere is copied to a file of our own first.
            let path = match snapshots.latest()? {
                Some((m, path)) if m == owned => path,
                _ => {
                    let path = snapshots.temporary();
                    let io = |source| SnapshotError::Io {
                        path: path.clone(),
                        source,
                    };
                    received.seek(SeekFrom::Start(0)).map_err(io)?;
                    let mut copy = std::fs::File::create(&path).map_err(io)?;
                    std::io::copy(&mut received, &mut copy).map_err(io)?;
                    drop(copy);
                    snapshots.keep(&owned, &path)?
                }
            };
            drop(received);
            super::snapshot::install(&engine, index, &path)
        })
        .await
        .map_err(|e| failed(meta, ErrorVerb::Write, e))?
        .map_err(|e| failed(meta, ErrorVerb::Write, e))?;
        self.applied = (meta.last_log_id, meta.last_membership.clone());
        tracing::info!(index, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        // A newer snapshot may replace the newest between the look and the
        // open (its files are then gone): look again.
        let mut tries = 0;
        loop {
            let Some((meta, path)) = self
                .snapshots
                .latest()
                .map_err(|e| snapshot_error(None, ErrorVerb::Read, e))?
            else {
                return Ok(None);
            };
            match tokio::fs::File::open(&path).await {
                Ok(file) => {
                    return Ok(Some(Snapshot {
                        meta,
                        snapshot: Box::new(file),
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => tries += 1,
                Err(e) => return Err(snapshot_error(Some(&meta), ErrorVerb::Read, e)),
            }
        }
    }
}
