//! The Raft log store: openraft's `RaftLogStorage` over a [`Store`].
//!
//! Keys (`storage::keys`): an entry at `raft_log(index)`, and
//! `RAFT_VOTE`, `RAFT_COMMITTED`, `RAFT_PURGED`; entries are postcard
//! ([`super::codec`]), the others JSON (openraft's serde types). Every write is one batch, awaited until `fsync`ed (the
//! store must be opened with `SyncMode::Always`), before it is reported
//! done: an append calls openraft's flush callback only then. The one
//! exception is the committed id, an optional hint (`save_committed`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};

use super::TypeConfig;
use crate::storage::{Batch, Store, keys};

type NodeId = u64;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

/// A node's Raft log. Cheap to clone: the log reader is a clone.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
    /// The index of the last entry known committed (0: none), as openraft
    /// last saved it: `broker_cluster_committed_index`.
    committed: Arc<AtomicU64>,
}

fn io(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

impl LogStore {
    /// The log in `store`, which must sync every write (`SyncMode::Always`).
    pub fn new(store: Arc<Store>) -> LogStore {
        LogStore {
            store,
            committed: Arc::default(),
        }
    }

    /// The index of the last entry known committed, shared with the
    /// store's clones: openraft saves it on every commit, on the leader
    /// and on followers.
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// Records `committed` as the last entry known committed, unless an
    /// entry after it already is.
    fn note_committed(&self, committed: Option<LogId<NodeId>>) {
        let index = committed.map_or(0, |c| c.index);
        self.committed.fetch_max(index, Ordering::Relaxed);
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>> {
        match self
            .store
            .get(key)
            .map_err(|e| io(subject.clone(), ErrorVerb::Read, e))?
        {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| io(subject, ErrorVerb::Read, e)),
        }
    }

    /// Writes `batch` and waits until it is synced.
    async fn write_synced(&self, batch: Batch, subject: ErrorSubject<NodeId>) -> Result<()> {
        let ticket = self
            .store
            .write(batch)
            .map_err(|e| io(subject.clone(), ErrorVerb::Write, e))?;
        self.store
            .sync(ticket)
            .await
            .map_err(|e| io(subject, ErrorVerb::Write, e))
    }

    async fn put_json<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<()> {
        let json =
            serde_json::to_vec(value).map_err(|e| io(subject.clone(), ErrorVerb::Write, e))?;
        let mut batch = Batch::default();
        batch.put(key, json);
        self.write_synced(batch, subject).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let from = match range.start_bound() {
            Bound::Included(&i) => keys::raft_log(i),
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => keys::raft_log(i),
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => keys::raft_log(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => match i.checked_add(1) {
                Some(i) => keys::raft_log(i).to_vec(),
                None => keys::RAFT_LOG_END.to_vec(),
            },
            Bound::Excluded(&i) => keys::raft_log(i).to_vec(),
            Bound::Unbounded => keys::RAFT_LOG_END.to_vec(),
        };
        if from.as_slice() >= end.as_slice() {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for item in self.store.scan_range(&from, &end) {
            let (key, value) = item.map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let entry: Entry<TypeConfig> = super::codec::decode_entry(&value)
                .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            if keys::decode_raft_log(&key) != Some(entry.log_id.index) {
                return Err(io(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    std::io::Error::other(format!(
                        "log key {key:02x?} holds the entry of index {}",
                        entry.log_id.index
                    )),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> =
            self.read_json(keys::RAFT_PURGED, ErrorSubject::Logs)?;
        let last = self
            .store
            .last_in_range(&keys::raft_log(0), keys::RAFT_LOG_END)
            .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = match last {
            None => last_purged_log_id,
            Some((_, value)) => {
                let entry: Entry<TypeConfig> = super::codec::decode_entry(&value)
                    .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Some(entry.log_id)
            }
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.put_json(keys::RAFT_VOTE, vote, ErrorSubject::Vote)
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.read_json(keys::RAFT_VOTE, ErrorSubject::Vote)
    }

    /// Written, not synced: it is on the path of every commit, and losing
    /// it costs nothing but time. A node that restarts with an older
    /// committed id applies less at once and learns the rest from the
    /// leader; the engine's own applied record says what it holds, and a
    /// replica serves nothing but what its leader role decides (after it
    /// has applied its whole log, `engine::replication`).
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let json = serde_json::to_vec(&committed)
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let mut batch = Batch::default();
        batch.put(keys::RAFT_COMMITTED, json);
        self.store
            .write(batch)
            .map_err(|e| io(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.note_committed(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        let committed = self
            .read_json::<Option<LogId<NodeId>>>(keys::RAFT_COMMITTED, ErrorSubject::Store)?
            .flatten();
        self.note_committed(committed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::default();
        for entry in entries {
            let bytes = super::codec::encode_entry(&entry, super::network::entry_bytes(&entry))
                .map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.put(keys::raft_log(entry.log_id.index), bytes);
        }
        // Acknowledged only once on disk: a replica counts towards a commit
        // with the entries synced.
        let synced = self.write_synced(batch, ErrorSubject::Logs).await;
        callback.log_io_completed(
            synced
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        synced
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let mut batch = Batch::default();
        batch.delete_range(keys::raft_log(log_id.index), keys::RAFT_LOG_END);
        self.write_synced(batch, ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let json =
            serde_json::to_vec(&log_id).map_err(|e| io(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        let mut batch = Batch::default();
        batch.put(keys::RAFT_PURGED, json);
        match log_id.index.checked_add(1) {
            Some(end) => batch.delete_range(keys::raft_log(0), keys::raft_log(end)),
            None => batch.delete_range(keys::raft_log(0), keys::RAFT_LOG_END),
        }
        self.write_synced(batch, ErrorSubject::Logs).await
    }
}
