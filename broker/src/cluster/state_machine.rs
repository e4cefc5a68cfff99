//! The state machine: openraft's `RaftStateMachine` over an [`Engine`].
//!
//! `apply` hands each entry to [`Engine::apply_entry`]: a normal entry's
//! command is applied (if it was decided right after the entry before it)
//! with the entry's log id and the membership in force written in the
//! command's own batch (`storage::keys::RAFT_APPLIED`, JSON); otherwise
//! only that record is written. The reply says whether the command was
//! applied. Opening reads the record back, so openraft
//! re-applies exactly the committed entries after it.
//!
//! Snapshots are not supported yet: building or installing one returns a
//! storage error that says so, and [`super::raft_config`] never asks for
//! one.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use super::TypeConfig;
use crate::engine::Engine;
use crate::storage::keys;

type NodeId = u64;
type Membership = StoredMembership<NodeId, openraft::BasicNode>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// What `RAFT_APPLIED` holds.
type Applied = (Option<LogId<NodeId>>, Membership);

/// A replica's engine as openraft's state machine.
pub struct StateMachine {
    engine: Arc<Engine>,
    /// The last applied log id and membership, as recorded in the engine's
    /// store (kept here to answer `applied_state` without a read).
    applied: Applied,
}

fn sm_error(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snapshots_unsupported() -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        ErrorVerb::Write,
        AnyError::new(&std::io::Error::other(
            "snapshots are not supported yet (run with SnapshotPolicy::Never)",
        )),
    )
    .into()
}

impl StateMachine {
    /// The state machine over `engine`, at the applied id it recorded.
    pub fn open(engine: Arc<Engine>) -> crate::Result<StateMachine> {
        let applied: Applied = match engine.recorded(keys::RAFT_APPLIED)? {
            None => (None, Membership::default()),
            Some(v) => {
                serde_json::from_slice(&v).map_err(|e| crate::storage::StorageError::Corrupt {
                    key: format!("{:02x?}", keys::RAFT_APPLIED),
                    reason: e.to_string(),
                })?
            }
        };
        engine.start_at_entry(applied.0.map_or(0, |id| id.index));
        Ok(StateMachine { engine, applied })
    }

    /// The engine this state machine applies to.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

/// The snapshot builder: snapshots are not supported yet.
pub struct NoSnapshots;

impl RaftSnapshotBuilder<TypeConfig> for NoSnapshots {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        Err(snapshots_unsupported())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = NoSnapshots;

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
            let command = match &entry.payload {
                EntryPayload::Normal(request) => Some((request.base, &request.command)),
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            };
            let applied = self
                .engine
                .apply_entry(entry.log_id.index, command, keys::RAFT_APPLIED, &record)
                .await
                .map_err(|e| StorageIOError::apply(entry.log_id, AnyError::new(&e)))?;
            self.applied = next;
            replies.push(applied);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        NoSnapshots
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Err(snapshots_unsupported())
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        Err(snapshots_unsupported())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(None)
    }
}
