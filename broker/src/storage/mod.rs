//! The narrow storage interface, and the only module that imports `rocksdb`.
//!
//! The engine sees four operations: point reads ([`Store::get`],
//! [`Store::multi_get`]), ordered scans (of a prefix for recovery,
//! [`Store::scan_prefix`]; of a key range for paging, [`Store::scan_range`]),
//! and atomic writes ([`Store::write`]) whose durability is awaited
//! separately ([`Store::sync`]). Cluster snapshots read the whole store
//! at one point in time ([`Store::for_each_consistent`]) and make it
//! durable whatever the sync mode ([`Store::persist`]). The metrics read [`Store::stats`]: sizes
//! and write stalls, without RocksDB's names.
//!
//! # Atomicity
//! A [`Batch`] is applied with one RocksDB `WriteBatch`: after a crash at any
//! moment, either every put, delete and range delete of the batch is there or
//! none is.
//!
//! # Durability and group commit
//! [`Store::write`] appends the batch to the write-ahead log without `fsync`
//! and returns a [`Ticket`], a position in write order. [`Store::sync`]
//! returns once the WAL is synced up to that ticket. One syncer thread does
//! the syncing: each `fsync` covers every write applied before it started,
//! so concurrent writers share syncs (group commit) and throughput grows with
//! concurrency instead of being capped at one `fsync` per request. The
//! engine writes under its own lock (so WAL order is the order of its
//! decisions) and waits for the sync after releasing it.
//!
//! The [`SyncMode`] decides what `sync` promises: `Always` waits for the
//! `fsync`, `Batch` syncs in the background every interval and returns at
//! once, `None` leaves syncing to the OS.
//!
//! # Failures
//! A failed WAL sync, or a write that fails for any reason but a full file
//! system, fails the store for good ([`StorageError::Failed`]): that
//! call, every write after it and every sync still awaited fail, so nothing
//! written after the last good sync is ever acknowledged, even if a later
//! `fsync` would succeed (after a failed `fsync` the kernel may have dropped
//! the dirty pages it could not write, and a retry that succeeds proves
//! nothing about them). [`Store::failure`] tells the server, which stops the
//! broker: a restart recovers from what the WAL holds on disk. A full file
//! system is not a failure: RocksDB recovers from it by itself once space
//! is freed (`disk`). Reads that fail are reported, and fail nothing else.
//! Tests inject failures with [`faults::Faults`].

pub mod disk;
pub mod faults;
pub mod keys;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rocksdb::{
    BlockBasedOptions, DB, DBCompressionType, DBRecoveryMode, Direction, IteratorMode, Options,
    ReadOptions, WriteOptions,
};
use tokio::sync::watch;

/// Errors of the storage layer. Never caused by bad client input.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the data directory {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("storage failure: {0}")]
    Db(#[from] rocksdb::Error),
    /// The store failed (a sync or a write): see "Failures" above.
    #[error("the data dir's storage failed: {0}")]
    Failed(String),
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// What an acknowledged write promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Acknowledge after the WAL is synced (`fsync`); concurrent writes share syncs.
    Always,
    /// Acknowledge at once; a background thread syncs at least every interval.
    Batch(Duration),
    /// Acknowledge at once; the OS writes the WAL back when it likes.
    None,
}

/// A key and its value, as a scan yields them.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

/// A position in the order of writes; see [`Store::sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// A set of changes applied atomically by [`Store::write`].
#[derive(Default)]
pub struct Batch {
    inner: rocksdb::WriteBatch,
}

impl Batch {
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.inner.put(key, value);
    }
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.inner.delete(key);
    }
    /// Deletes every key in `[from, to)`: one range tombstone, O(1) to write.
    pub fn delete_range(&mut self, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        self.inner.delete_range(from.as_ref(), to.as_ref());
    }
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
    /// The batch's size in bytes, as RocksDB holds it.
    pub fn size_in_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }
}

/// The store's size and health, for the metrics. Sizes in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Every SST file, including obsolete ones not deleted yet.
    pub sst_files_bytes: u64,
    /// The SST files of the current version (what compaction keeps).
    pub live_sst_files_bytes: u64,
    /// The write-ahead log files.
    pub wal_bytes: u64,
    /// Memtables, active and immutable (in memory, not on disk).
    pub memtable_bytes: u64,
    /// What compaction estimates it must rewrite to reach its targets.
    pub pending_compaction_bytes: u64,
    /// Writes are stopped (stalled) until compaction catches up.
    pub write_stopped: bool,
    /// The rate writes are slowed to while delayed; 0 when not delayed.
    pub delayed_write_rate_bytes_per_second: u64,
}

/// The database, and the syncer thread that makes its writes durable.
pub struct Store {
    db: Arc<DB>,
    /// The data directory: its WAL files are summed for [`Store::stats`].
    path: PathBuf,
    sync: Arc<SyncShared>,
    mode: SyncMode,
    syncer: Option<JoinHandle<()>>,
}

/// State shared between writers and the syncer thread.
struct SyncShared {
    /// Tickets handed out: the number of writes applied so far.
    written: AtomicU64,
    /// Set by a writer that waits for a sync; the syncer sleeps on `wake`.
    wanted: Mutex<bool>,
    wake: Condvar,
    /// Highest ticket known durable, or the error that stopped syncing.
    synced: watch::Sender<Result<u64, String>>,
    /// Why the store failed, once it has (see "Failures").
    failed: watch::Sender<Option<String>>,
    stop: AtomicBool,
    /// Failures to inject (tests only), for writers and the syncer.
    faults: Option<Arc<faults::Faults>>,
}

impl SyncShared {
    /// Fails the store for good; the first reason is kept.
    fn fail(&self, reason: String) -> StorageError {
        self.failed.send_if_modified(|failed| {
            if failed.is_some() {
                return false;
            }
            tracing::error!(%reason, "storage failed: acknowledging no more writes");
            *failed = Some(reason.clone());
            true
        });
        StorageError::Failed(reason)
    }
}

impl Store {
    /// Opens (creating if missing) the database in `path`. A directory
    /// locked by another process or with corrupt files is an error, never a
    /// silently empty store.
    pub fn open(path: &Path, mode: SyncMode) -> Result<Store, StorageError> {
        Store::open_with(path, mode, None)
    }

    /// [`Store::open`], with failures to inject (tests).
    pub fn open_with(
        path: &Path,
        mode: SyncMode,
        faults: Option<Arc<faults::Faults>>,
    ) -> Result<Store, StorageError> {
        Store::open_compressed(path, mode, faults, DBCompressionType::Snappy)
    }

    /// [`Store::open_with`] for a Raft log (`cluster::log_store`): its
    /// tables are not compressed. A leader reads each entry it appended
    /// back to send it, again for each follower and each retry, and
    /// entries are short-lived (purged after the next snapshot): snappy
    /// decompression of 25 MiB entries took half of a leader's CPU.
    /// Tables an earlier version compressed are still read.
    pub fn open_log(
        path: &Path,
        mode: SyncMode,
        faults: Option<Arc<faults::Faults>>,
    ) -> Result<Store, StorageError> {
        Store::open_compressed(path, mode, faults, DBCompressionType::None)
    }

    fn open_compressed(
        path: &Path,
        mode: SyncMode,
        faults: Option<Arc<faults::Faults>>,
        compression: DBCompressionType,
    ) -> Result<Store, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|e| open_err(e.to_string()))?;
        // RocksDB would create a fresh, empty database in a directory that
        // lost its CURRENT file: refuse anything but an empty directory or
        // one that holds a database.
        let has_entries = std::fs::read_dir(path)
            .map_err(|e| open_err(e.to_string()))?
            .next()
            .is_some();
        if has_entries && !path.join("CURRENT").exists() {
            return Err(open_err(
                "it is not empty but holds no database (no CURRENT file): refusing to start an empty broker over it; \
                 restore the directory, or point --data-dir at an empty or new directory"
                    .into(),
            ));
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        opts.set_paranoid_checks(true);
        // Memtables: 16 MiB each (RocksDB's default is 64 MiB), at most two.
        // Message records are small and short-lived, so larger memtables buy
        // little; this keeps the broker's memory (1 M queued messages in
        // under 300 MiB, benches/README.md) below the default's by ~90 MiB.
        opts.set_write_buffer_size(16 << 20);
        opts.set_max_write_buffer_number(2);
        // Bloom filters (10 bits a key, ~1 % false positives): a receive
        // reads old bodies by key, and without filters that read searches
        // every L0 file whose key range spans it (all of them: each flush
        // holds bodies and states from both ends of the queue). Keys always
        // exist when read, so the last level, where most of them are, needs
        // no filter (`optimize_filters_for_hits`): a few MiB per million
        // messages.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.set_optimize_filters_for_hits(true);
        // Snappy (or none), RocksDB's default, set here because it is the
        // only compression the build compiles in (the workspace's `rocksdb`
        // features): a data dir written with another one could not be read.
        opts.set_compression_type(compression);
        // A record cut short at the end of the log is what a crash during a
        // write leaves (that write was never acknowledged): recover up to
        // it. Corruption anywhere else is an error, never a silent loss of
        // the records after it (RocksDB's default, point-in-time recovery).
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        let db = DB::open(&opts, path).map_err(|e| {
            let reason = e.to_string();
            if reason.contains("LOCK") {
                open_err(format!(
                    "it is in use by another process (is another broker running on it?): {reason}"
                ))
            } else {
                open_err(reason)
            }
        })?;
        let db = Arc::new(db);
        let (synced, _) = watch::channel(Ok(0));
        let sync = Arc::new(SyncShared {
            written: AtomicU64::new(0),
            wanted: Mutex::new(false),
            wake: Condvar::new(),
            synced,
            failed: watch::Sender::new(None),
            stop: AtomicBool::new(false),
            faults,
        });
        let syncer = match mode {
            SyncMode::None => None,
            SyncMode::Always | SyncMode::Batch(_) => {
                let (db, sync) = (db.clone(), sync.clone());
                let interval = match mode {
                    SyncMode::Batch(every) => Some(every),
                    _ => None,
                };
                Some(
                    std::thread::Builder::new()
                        .name("wal-sync".into())
                        .spawn(move || sync_loop(&db, &sync, interval))
                        .map_err(|e| open_err(e.to_string()))?,
                )
            }
        };
        Ok(Store {
            db,
            path: path.to_path_buf(),
            sync,
            mode,
            syncer,
        })
    }

    /// Why the store failed, once it has: the server stops the broker.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.sync.failed.subscribe()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get(key)?)
    }

    /// Point reads of several keys at once, in order.
    pub fn multi_get(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|r| r.map_err(StorageError::from))
            .collect()
    }

    /// Every key starting with `prefix`, in key order, with its value.
    pub fn scan_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = Result<KeyValue, StorageError>> + 'a {
        self.db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
            .map(|r| r.map_err(StorageError::from))
            .take_while(move |r| match r {
                Ok((k, _)) => k.starts_with(prefix),
                Err(_) => true,
            })
    }

    /// Every key in `[from, to)`, in key order, with its value. The scan
    /// starts at `from` (no cost for the keys before it) and RocksDB stops
    /// at `to` (an upper bound, so it does not step over what follows), so
    /// taking `n` items costs O(n). It reads a consistent snapshot taken
    /// when it starts.
    pub fn scan_range<'a>(
        &'a self,
        from: &[u8],
        to: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, StorageError>> + 'a {
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(to);
        self.db
            .iterator_opt(IteratorMode::From(from, Direction::Forward), opts)
            .map(|r| r.map_err(StorageError::from))
    }

    /// The last key in `[from, to)` with its value, if any (a reverse seek:
    /// the Raft log's last entry).
    pub fn last_in_range(&self, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let mut opts = ReadOptions::default();
        opts.set_iterate_lower_bound(from);
        opts.set_iterate_upper_bound(to);
        Ok(self
            .db
            .iterator_opt(IteratorMode::End, opts)
            .next()
            .transpose()?)
    }

    /// Calls `f` with every key and its value, in key order, as of one
    /// consistent point in time (a RocksDB snapshot taken when it starts,
    /// while what `hold` returns is held: a caller's lock that keeps
    /// writes that belong together from being seen in part), made durable
    /// first whatever the [`SyncMode`] (the WAL is synced after the point
    /// is taken): writes made meanwhile are not seen. Stops at `f`'s first
    /// error.
    pub fn for_each_consistent<G, E: From<StorageError>>(
        &self,
        hold: impl FnOnce() -> G,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let snapshot = {
            let _held = hold();
            self.db.snapshot()
        };
        self.persist()?;
        for item in snapshot.iterator(IteratorMode::Start) {
            let (key, value) = item.map_err(StorageError::from)?;
            f(&key, &value)?;
        }
        Ok(())
    }

    /// Makes every write applied so far durable (`fsync` of the WAL),
    /// whatever the [`SyncMode`]: a store opened with `None` calls this
    /// before something else (a purged Raft log) stops holding its writes.
    pub fn persist(&self) -> Result<(), StorageError> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Applies `batch` atomically, not yet synced; [`Store::sync`] with the
    /// returned ticket waits until it is durable.
    pub fn write(&self, batch: Batch) -> Result<Ticket, StorageError> {
        if let Some(reason) = &*self.sync.failed.borrow() {
            return Err(StorageError::Failed(format!(
                "{reason} (earlier; no write is made since)"
            )));
        }
        if self.sync.faults.as_ref().is_some_and(|f| f.write_fails()) {
            return Err(self.sync.fail("write: injected I/O error".into()));
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        if let Err(e) = self.db.write_opt(batch.inner, &opts) {
            if disk::is_no_space(e.as_ref()) {
                return Err(e.into());
            }
            return Err(self.sync.fail(format!("write: {e}")));
        }
        Ok(Ticket(self.sync.written.fetch_add(1, Ordering::SeqCst) + 1))
    }

    /// The ticket of the latest write: [`Store::sync`] with it waits for
    /// every write made so far.
    pub fn last_written(&self) -> Ticket {
        Ticket(self.sync.written.load(Ordering::SeqCst))
    }

    /// Returns once the write of `ticket` is as durable as the [`SyncMode`]
    /// promises: for `Always`, synced to disk.
    pub async fn sync(&self, ticket: Ticket) -> Result<(), StorageError> {
        if self.mode != SyncMode::Always {
            return Ok(());
        }
        let mut rx = self.sync.synced.subscribe();
        if matches!(*rx.borrow(), Ok(n) if n >= ticket.0) {
            return Ok(());
        }
        {
            let mut wanted = self.sync.wanted.lock().unwrap_or_else(|e| e.into_inner());
            *wanted = true;
            self.sync.wake.notify_one();
        }
        let state = rx
            .wait_for(|s| !matches!(s, Ok(n) if *n < ticket.0))
            .await
            .map_err(|_| StorageError::Failed("the WAL syncer thread stopped".into()))?;
        match &*state {
            Ok(_) => Ok(()),
            Err(e) => Err(StorageError::Failed(e.clone())),
        }
    }

    /// The sizes and write stalls of the database. RocksDB keeps these
    /// properties current; reading them takes no disk I/O, and the WAL size
    /// is one directory listing (the WAL is a few files).
    pub fn stats(&self) -> StorageStats {
        let int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        StorageStats {
            sst_files_bytes: int("rocksdb.total-sst-files-size"),
            live_sst_files_bytes: int("rocksdb.live-sst-files-size"),
            wal_bytes: self.wal_bytes(),
            memtable_bytes: int("rocksdb.size-all-mem-tables"),
            pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes"),
            write_stopped: int("rocksdb.is-write-stopped") != 0,
            delayed_write_rate_bytes_per_second: int("rocksdb.actual-delayed-write-rate"),
        }
    }

    /// The size of the WAL files (`*.log`; RocksDB's own log is `LOG`).
    fn wal_bytes(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.sync.stop.store(true, Ordering::SeqCst);
        {
            let _wanted = self.sync.wanted.lock().unwrap_or_else(|e| e.into_inner());
            self.sync.wake.notify_one();
        }
        if let Some(handle) = self.syncer.take() {
            let _ = handle.join();
        }
        if let Err(e) = self.db.flush_wal(true) {
            tracing::error!(error = %e, "final WAL sync failed");
        }
    }
}

/// The syncer thread: syncs when a writer waits (`interval: None`) or every
/// `interval`, and publishes the highest ticket each sync covered.
fn sync_loop(db: &DB, sync: &SyncShared, interval: Option<Duration>) {
    loop {
        {
            let mut wanted = sync.wanted.lock().unwrap_or_else(|e| e.into_inner());
            while !*wanted && !sync.stop.load(Ordering::SeqCst) {
                match interval {
                    None => wanted = sync.wake.wait(wanted).unwrap_or_else(|e| e.into_inner()),
                    Some(every) => {
                        let (guard, timeout) = sync
                            .wake
                            .wait_timeout(wanted, every)
                            .unwrap_or_else(|e| e.into_inner());
                        wanted = guard;
                        if timeout.timed_out() {
                            break;
                        }
                    }
                }
            }
            *wanted = false;
        }
        if sync.stop.load(Ordering::SeqCst) {
            return;
        }
        // Every write that got its ticket before this load is in the WAL
        // before the sync below starts, so the sync covers it.
        let covered = sync.written.load(Ordering::SeqCst);
        if covered == *sync.synced.borrow().as_ref().unwrap_or(&u64::MAX) {
            continue;
        }
        let synced = if sync.faults.as_ref().is_some_and(|f| f.sync_fails()) {
            Err("injected I/O error".to_string())
        } else {
            db.flush_wal(true).map_err(|e| e.to_string())
        };
        match synced {
            Ok(()) => {
                let _ = sync.synced.send_replace(Ok(covered));
            }
            Err(e) => {
                let reason = format!("WAL sync (fsync): {e}");
                sync.fail(reason.clone());
                let _ = sync.synced.send_replace(Err(reason));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_range_starts_at_from_and_stops_before_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), SyncMode::None).unwrap();
        let mut batch = Batch::default();
        for key in [&b"a1"[..], b"a2", b"a3", b"b1"] {
            batch.put(key, b"v");
        }
        batch.delete(b"a3");
        store.write(batch).unwrap();
        let keys = |from: &[u8], to: &[u8]| -> Vec<Vec<u8>> {
            store
                .scan_range(from, to)
                .map(|item| item.unwrap().0.to_vec())
                .collect()
        };
        assert_eq!(keys(b"a2", b"b"), [b"a2".to_vec()], "deleted a3 is skipped");
        assert_eq!(
            keys(b"a", b"b2"),
            [b"a1".to_vec(), b"a2".to_vec(), b"b1".to_vec()]
        );
        assert_eq!(keys(b"a15", b"a2"), Vec::<Vec<u8>>::new());
    }

    fn one_put(key: &[u8]) -> Batch {
        let mut batch = Batch::default();
        batch.put(key, b"v");
        batch
    }

    #[tokio::test]
    async fn after_a_failed_sync_nothing_is_acknowledged_though_syncs_would_work_again() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(faults::Faults::default());
        let store = Store::open_with(dir.path(), SyncMode::Always, Some(faults.clone())).unwrap();
        let failure = store.failure();
        let ticket = store.write(one_put(b"a")).unwrap();
        store.sync(ticket).await.unwrap();
        assert!(failure.borrow().is_none());

        faults.fail_syncs(1);
        let ticket = store.write(one_put(b"b")).unwrap();
        let failed = store.sync(ticket).await.unwrap_err();
        assert!(
            matches!(&failed, StorageError::Failed(r) if r.contains("injected")),
            "{failed}"
        );
        assert!(
            failure
                .borrow()
                .as_deref()
                .is_some_and(|r| r.contains("WAL sync"))
        );
        // The fault is used up, yet the store stays failed: no later write
        // is made, so none can be acknowledged.
        let refused = store.write(one_put(b"c")).unwrap_err();
        assert!(matches!(refused, StorageError::Failed(_)), "{refused}");
        assert_eq!(store.get(b"c").unwrap(), None);
    }

    #[test]
    fn a_failed_write_fails_the_store_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(faults::Faults::default());
        let store = Store::open_with(dir.path(), SyncMode::None, Some(faults.clone())).unwrap();
        faults.fail_writes(1);
        assert!(matches!(
            store.write(one_put(b"a")),
            Err(StorageError::Failed(_))
        ));
        assert!(matches!(
            store.write(one_put(b"b")),
            Err(StorageError::Failed(_))
        ));
        assert_eq!(store.get(b"a").unwrap(), None);
        assert!(store.failure().borrow().is_some());
    }
}
