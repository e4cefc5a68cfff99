//! Snapshots of a replica's engine: the files, and their format.
//!
//! A snapshot is every key of the engine's store and its value at one
//! point in time ([`Engine::export`]), written to a file; the store's
//! record of the last applied entry (`storage::keys::RAFT_APPLIED`) is one
//! of those keys, and the snapshot's openraft meta (last log id,
//! membership) is read from it, so the data and the meta always agree.
//!
//! # Files (`data_dir/cluster/snapshots/`)
//! - `NAME.snap`: the data. `BRKSNAP1`, then per key a u32 BE key length,
//!   the key, a u32 BE value length, the value; then `u32::MAX` and the
//!   number of keys as a u64 BE, so that a file cut short is an error,
//!   never a smaller state.
//! - `NAME.meta`: openraft's `SnapshotMeta` as JSON, written (through a
//!   temporary file, renamed) after its data file is synced: a snapshot
//!   exists once its meta does.
//! - `*.tmp`: a snapshot being built or received; removed at startup.
//!
//! Only the newest snapshot is kept; the older ones are removed once a
//! newer one is complete. A file removed while openraft still streams it
//! to a follower stays readable through the open handle; one removed
//! between reading its meta and opening it is looked up again
//! (`StateMachine::get_current_snapshot`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::{LogId, SnapshotMeta, StoredMembership};

use crate::engine::Engine;
use crate::storage::keys;

type NodeId = u64;
pub type Meta = SnapshotMeta<NodeId, super::Member>;
type Membership = StoredMembership<NodeId, super::Member>;

const MAGIC: &[u8; 8] = b"BRKSNAP1";
const END: u32 = u32::MAX;

/// Why a snapshot could not be built, kept or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot file {path} is not a snapshot: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Engine(#[from] crate::Error),
}

/// The snapshots directory of one replica.
pub struct Snapshots {
    dir: PathBuf,
    /// Makes names unique within a process (with the time across them).
    next: AtomicU64,
    /// Held while a snapshot is made the newest and the others removed.
    keeping: std::sync::Mutex<()>,
}

impl Snapshots {
    /// The snapshots in `dir` (created if missing); leftovers of a build or
    /// a transfer cut short by a crash are removed.
    pub fn open(dir: &Path) -> Result<Snapshots, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        // A data file without its meta: a crash inside `keep`.
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "snap")
                && !path.with_extension("meta").exists()
            {
                std::fs::remove_file(&path).map_err(io)?;
            }
        }
        Ok(Snapshots {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(0),
            keeping: std::sync::Mutex::new(()),
        })
    }

    /// A new, unique path for a file being written.
    pub fn temporary(&self) -> PathBuf {
        self.dir.join(format!("{}.tmp", self.stamp()))
    }

    /// `{nanoseconds since the epoch:020}-{n:020}`: unique, and later
    /// stamps sort after earlier ones (while the clock does not step back).
    fn stamp(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{nanos:020}-{n:020}")
    }

    /// The newest complete snapshot: its meta and its data file.
    pub fn latest(&self) -> Result<Option<(Meta, PathBuf)>, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut best: Option<(Meta, PathBuf)> = None;
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_none_or(|e| e != "meta") {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                // Pruned meanwhile: a newer one is there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(SnapshotError::Io { path, source }),
            };
            let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Format {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            // Of two snapshots of one entry, the one kept last: its name
            // sorts after the other's (`keep`).
            let data = path.with_extension("snap");
            if best
                .as_ref()
                .is_none_or(|(b, p)| (meta.last_log_id, &data) > (b.last_log_id, p))
            {
                best = Some((meta, data));
            }
        }
        Ok(best)
    }

    /// Writes a snapshot of `engine` (blocking: a scan of its whole store)
    /// and keeps it as the newest.
    pub fn build(&self, engine: &Engine) -> Result<(Meta, PathBuf), SnapshotError> {
        let tmp = self.temporary();
        let io = |source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        };
        let mut out = BufWriter::new(File::create(&tmp).map_err(io)?);
        out.write_all(MAGIC).map_err(io)?;
        let mut count = 0u64;
        let mut applied = None;
        engine.export(|key, value| -> Result<(), SnapshotError> {
            if key == keys::RAFT_APPLIED {
                applied = Some(value.to_vec());
            }
            count += 1;
            write_field(&mut out, key)
                .and_then(|()| write_field(&mut out, value))
                .map_err(io)
        })?;
        out.write_all(&END.to_be_bytes()).map_err(io)?;
        out.write_all(&count.to_be_bytes()).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        let (last_log_id, last_membership) =
            match applied {
                None => (None, Membership::default()),
                Some(v) => serde_json::from_slice::<(Option<LogId<NodeId>>, Membership)>(&v)
                    .map_err(|e| SnapshotError::Format {
                        path: tmp.clone(),
                        reason: format!("the applied record: {e}"),
                    })?,
            };
        let index = last_log_id.map_or(0, |id| id.index);
        let meta = Meta {
            last_log_id,
            last_membership,
            snapshot_id: format!("{index}-{}", self.next.fetch_add(1, Ordering::Relaxed)),
        };
        let path = self.keep(&meta, &tmp)?;
        Ok((meta, path))
    }

    /// Makes the complete data file `data` the snapshot `meta` and the
    /// newest one; removes the others. Returns the data file's new path.
    ///
    /// The files are named `{index:020}-{time kept}-{n}`: of two snapshots
    /// of one entry, the one kept last stays, and [`latest`](Self::latest)
    /// picks it.
    pub fn keep(&self, meta: &Meta, data: &Path) -> Result<PathBuf, SnapshotError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, source }
        };
        File::open(data)
            .and_then(|f| f.sync_all())
            .map_err(io(data))?;
        let _keeping = self.keeping.lock().unwrap_or_else(|e| e.into_inner());
        let index = meta.last_log_id.map_or(0, |id| id.index);
        let stem = format!("{index:020}-{}", self.stamp());
        let snap = self.dir.join(format!("{stem}.snap"));
        let meta_path = self.dir.join(format!("{stem}.meta"));
        std::fs::rename(data, &snap).map_err(io(data))?;
        let tmp = self.temporary();
        let json = serde_json::to_vec(meta).map_err(|e| SnapshotError::Format {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, json)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &meta_path).map_err(io(&meta_path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.prune(meta, &snap)?;
        Ok(snap)
    }

    /// Removes every snapshot but the newest (under `keeping`); of two
    /// snapshots of the newest entry, `kept` stays.
    fn prune(&self, kept_meta: &Meta, kept: &Path) -> Result<(), SnapshotError> {
        let Some((meta, newest)) = self.latest()? else {
            return Ok(());
        };
        let newest = if meta.last_log_id == kept_meta.last_log_id {
            kept
        } else {
            &newest
        };
        let io = |source| SnapshotError::Io {
            path: self.dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let stale = path.file_stem() != newest.file_stem()
                && path.extension().is_some_and(|e| e == "meta");
            if stale {
                // The meta first: a data file without its meta is ignored.
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(path.with_extension("snap"));
            }
        }
        Ok(())
    }
}

/// A snapshot being received from the leader, chunk by chunk.
struct Incoming {
    id: String,
    path: PathBuf,
    file: tokio::fs::File,
    len: u64,
}

/// Receives the leader's snapshot chunks into a file of [`Snapshots`] and
/// keeps it (synced, with its meta) once whole, *before* openraft is told
/// (`network`): openraft purges the log as soon as it starts installing,
/// so the snapshot must already be on disk, where
/// `StateMachine::open` finds it if the install did not finish.
pub struct Receiver {
    snapshots: Arc<Snapshots>,
    incoming: tokio::sync::Mutex<Option<Incoming>>,
}

/// Why a chunk was refused: the one openraft's leader knows, which makes
/// it send the snapshot again from its start.
pub type Mismatch = openraft::error::SnapshotMismatch;

impl Receiver {
    pub fn new(snapshots: Arc<Snapshots>) -> Receiver {
        Receiver {
            snapshots,
            incoming: tokio::sync::Mutex::new(None),
        }
    }

    /// Writes one chunk. Returns the kept snapshot's data file once the
    /// last chunk is in.
    pub async fn chunk(
        &self,
        meta: &Meta,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<Result<Option<PathBuf>, Mismatch>, SnapshotError> {
        use tokio::io::AsyncWriteExt as _;
        let mut incoming = self.incoming.lock().await;
        if offset == 0 {
            if let Some(old) = incoming.take() {
                let _ = tokio::fs::remove_file(&old.path).await;
            }
            let path = self.snapshots.temporary();
            let file =
                tokio::fs::File::create(&path)
                    .await
                    .map_err(|source| SnapshotError::Io {
                        path: path.clone(),
                        source,
                    })?;
            *incoming = Some(Incoming {
                id: meta.snapshot_id.clone(),
                path,
                file,
                len: 0,
            });
        }
        let expect = incoming.as_ref().map(|i| openraft::SnapshotSegmentId {
            id: i.id.clone(),
            offset: i.len,
        });
        let Some(inc) = incoming
            .as_mut()
            .filter(|i| i.id == meta.snapshot_id && i.len == offset)
        else {
            return Ok(Err(Mismatch {
                expect: expect.unwrap_or(openraft::SnapshotSegmentId {
                    id: meta.snapshot_id.clone(),
                    offset: 0,
                }),
                got: openraft::SnapshotSegmentId {
                    id: meta.snapshot_id.clone(),
                    offset,
                },
            }));
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, source }
        };
        inc.file.write_all(data).await.map_err(io(&inc.path))?;
        inc.len += data.len() as u64;
        if !done {
            return Ok(Ok(None));
        }
        let inc = incoming.take().expect("checked above");
        let mut file = inc.file;
        file.flush().await.map_err(io(&inc.path))?;
        drop(file);
        let (snapshots, meta, path) = (self.snapshots.clone(), meta.clone(), inc.path);
        let kept = tokio::task::spawn_blocking(move || snapshots.keep(&meta, &path))
            .await
            .map_err(|e| SnapshotError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(Ok(Some(kept)))
    }
}

fn write_field(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l != END)
        .ok_or_else(|| std::io::Error::other("a key or value of 4 GiB or more"))?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

/// How much of a snapshot an install holds in memory at once: one write
/// batch of about this many bytes.
pub const INSTALL_BATCH_BYTES: usize = 16 << 20;

/// Installs the snapshot data file at `path`, taken after entry `index`,
/// into `engine` ([`Engine::install`]): the file is read through once to
/// check that it is whole, then again into the store, a batch of
/// [`INSTALL_BATCH_BYTES`] at a time. A file that is not a whole snapshot
/// is an error that leaves the store as it was, never a smaller state.
pub fn install(engine: &Engine, index: u64, path: &Path) -> Result<(), SnapshotError> {
    read_each(path, |_, _| Ok(()))?;
    engine.install(index, INSTALL_BATCH_BYTES, |put| read_each(path, put))
}

/// Calls `f` with each key of the snapshot data file at `path` and its
/// value, in order. A file that is not a whole snapshot is an error, once
/// the keys before the damage were given.
pub fn read_each(
    path: &Path,
    mut f: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let format = |reason: String| SnapshotError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut input = BufReader::new(File::open(path).map_err(io)?);
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|e| format(format!("no header: {e}")))?;
    if &magic != MAGIC {
        return Err(format(format!("header {magic:02x?}, not {MAGIC:02x?}")));
    }
    let mut count = 0u64;
    let field =
        |input: &mut BufReader<File>, count: u64| -> Result<Option<Vec<u8>>, SnapshotError> {
            let mut len = [0u8; 4];
            input
                .read_exact(&mut len)
                .map_err(|e| format(format!("cut short after {count} keys: {e}")))?;
            let len = u32::from_be_bytes(len);
            if len == END {
                return Ok(None);
            }
            let mut bytes = vec![0u8; len as usize];
            input
                .read_exact(&mut bytes)
                .map_err(|e| format(format!("cut short after {count} keys: {e}")))?;
            Ok(Some(bytes))
        };
    while let Some(key) = field(&mut input, count)? {
        let value = field(&mut input, count)?
            .ok_or_else(|| format(format!("key {key:02x?} has no value")))?;
        f(key, value)?;
        count += 1;
    }
    let mut trailer = [0u8; 8];
    input
        .read_exact(&mut trailer)
        .map_err(|e| format(format!("no key count at the end: {e}")))?;
    let recorded = u64::from_be_bytes(trailer);
    if recorded != count {
        return Err(format(format!(
            "{count} keys read, the file says {recorded}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{AttributeChanges, NewMessage};
    use crate::storage::SyncMode;

    /// Two snapshots of one entry (one built here, one received, say): the
    /// one kept last is the one that stays and that `latest` gives, however
    /// the directory lists them; a newer entry's snapshot outlives an older
    /// one kept after it.
    #[tokio::test]
    async fn of_two_snapshots_of_one_entry_the_one_kept_last_stays() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("e"), SyncMode::None).unwrap();
        let snapshots = Snapshots::open(&dir.path().join("snapshots")).unwrap();
        let (first_meta, first) = snapshots.build(&engine).unwrap();
        for round in 0..20 {
            let copy = snapshots.temporary();
            std::fs::copy(newest_data(&snapshots), &copy).unwrap();
            let kept = snapshots.keep(&first_meta, &copy).unwrap();
            assert!(kept.exists(), "round {round}: the file just kept is gone");
            assert_eq!(
                snapshots.latest().unwrap().unwrap().1,
                kept,
                "round {round}"
            );
        }
        assert!(!first.exists(), "the first one is pruned");

        let newer = Meta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), 7)),
            ..first_meta.clone()
        };
        let copy = snapshots.temporary();
        std::fs::copy(newest_data(&snapshots), &copy).unwrap();
        let newest = snapshots.keep(&newer, &copy).unwrap();
        let copy = snapshots.temporary();
        std::fs::copy(&newest, &copy).unwrap();
        let older = snapshots.keep(&first_meta, &copy).unwrap();
        assert!(!older.exists(), "an older entry's snapshot is not kept");
        assert_eq!(snapshots.latest().unwrap().unwrap(), (newer, newest));
    }

    fn newest_data(snapshots: &Snapshots) -> PathBuf {
        snapshots.latest().unwrap().unwrap().1
    }

    /// A snapshot read back into another engine gives the same store, in
    /// batches however small; a file that is not a whole snapshot is an
    /// error that leaves the store as it was, never a smaller state; and an
    /// install cut short (a crash) is done again when the replica opens.
    #[tokio::test]
    async fn a_snapshot_round_trips_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = Engine::open(&dir.path().join("a"), SyncMode::None).unwrap();
        source
            .create_queue("q", &AttributeChanges::default())
            .await
            .unwrap();
        let message = |i: usize| NewMessage {
            body: bytes::Bytes::from(format!("m{i}")),
            attributes: Default::default(),
            delay_seconds: None,
        };
        source
            .send("q", (0..5).map(message).collect())
            .await
            .unwrap();
        let snapshots = Snapshots::open(&dir.path().join("snapshots")).unwrap();
        let (meta, path) = snapshots.build(&source).unwrap();
        assert_eq!(meta.last_log_id, None, "a single node has applied no entry");
        assert_eq!(snapshots.latest().unwrap().unwrap().1, path);
        let now = source.now_ms();

        // One key per batch.
        let target = Engine::open(&dir.path().join("b"), SyncMode::None).unwrap();
        target
            .create_queue("other", &AttributeChanges::default())
            .await
            .unwrap();
        target
            .install(0, 1, |put| read_each(&path, put))
            .map_err(|e: SnapshotError| e)
            .unwrap();
        assert_eq!(target.dump(now), source.dump(now));
        assert_eq!(target.recorded(keys::RAFT_INSTALLING).unwrap(), None);

        let before = target.dump(now);
        let bytes = std::fs::read(&path).unwrap();
        let mut wrong = bytes.clone();
        wrong[0] = b'X';
        for (damage, data, says) in [
            ("cut short", &bytes[..bytes.len() - 3], "no key count"),
            ("no trailer", &bytes[..bytes.len() - 12], "cut short"),
            ("wrong header", &wrong[..], "header"),
        ] {
            let damaged = dir.path().join("damaged");
            std::fs::write(&damaged, data).unwrap();
            let error = install(&target, 0, &damaged).unwrap_err();
            assert!(
                matches!(error, SnapshotError::Format { .. }) && error.to_string().contains(says),
                "{damage}: {error}"
            );
            assert_eq!(target.dump(now), before, "{damage}: the store changed");
        }

        // Cut short by a crash after two keys: the replica opens empty, and
        // its state machine installs the kept snapshot again.
        let crashed_dir = dir.path().join("c");
        {
            let crashed = Engine::open(&crashed_dir, SyncMode::None).unwrap();
            crashed
                .create_queue("other", &AttributeChanges::default())
                .await
                .unwrap();
            let mut given = 0;
            let cut = crashed.install(0, 1, |put| {
                read_each(&path, |key, value| {
                    given += 1;
                    if given > 2 {
                        return Err(SnapshotError::Format {
                            path: path.clone(),
                            reason: "the process died".into(),
                        });
                    }
                    put(key, value)
                })
            });
            assert!(cut.is_err());
        }
        let reopened = Arc::new(Engine::open(&crashed_dir, SyncMode::None).unwrap());
        assert!(reopened.is_empty(), "the part installed is gone");
        assert!(reopened.recorded(keys::RAFT_INSTALLING).unwrap().is_some());
        super::super::state_machine::StateMachine::open(
            reopened.clone(),
            &dir.path().join("snapshots"),
        )
        .unwrap();
        assert_eq!(reopened.dump(now), source.dump(now));
        assert_eq!(reopened.recorded(keys::RAFT_INSTALLING).unwrap(), None);
    }
}
