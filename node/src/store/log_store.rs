//! The Raft log (in the write-ahead log of [`super::wal`]), the vote and the
//! commit index (in sled's `raft_state` tree): openraft `RaftLogStorage`.
//!
//! An entry is acknowledged to openraft only after the WAL's flush thread has
//! synced it to disk, so a majority ack means a majority of disks hold the
//! entry. Appends do not wait for that sync: openraft goes on while the disk
//! works, and many appends share one `fdatasync` (group commit).

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::Vote;

use super::flusher::FlushThreadExit;
use super::io_err;
use super::keys;
use super::wal::lock;
use super::wal::Wal;
use super::Flusher;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::StorageError;
use crate::types::TypeConfig;

/// Cheap to clone: every field is a shared handle.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    /// Syncs the WAL (log entries).
    wal_flusher: Flusher,
    state: sled::Tree,
    /// Flushes sled (vote, purge point).
    sled_flusher: Flusher,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn log_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, verb, e)
}

impl LogStore {
    /// Opens the WAL in `wal_dir` and the state tree of `db`, and starts the
    /// WAL's flush thread (whose end the caller awaits at shutdown).
    pub fn open(
        db: &sled::Db,
        wal_dir: &Path,
        sled_flusher: Flusher,
    ) -> Result<(Self, FlushThreadExit), StorageError> {
        let open = |name| {
            db.open_tree(name)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
        };
        let state = open(keys::RAFT_STATE_TREE)?;
        let mut wal = Wal::open(wal_dir).map_err(|e| log_err(ErrorVerb::Read, e))?;
        migrate_sled_log(&open(keys::RAFT_LOG_TREE)?, &mut wal)?;
        let wal = Arc::new(Mutex::new(wal));
        let sync_wal = wal.clone();
        let (wal_flusher, exit) = Flusher::start("capkv-wal-sync", move || {
            let pending = lock(&sync_wal).take_unsynced();
            pending.run()
        })
        .map_err(|e| log_err(ErrorVerb::Write, e))?;
        let store = Self {
            wal,
            wal_flusher,
            state,
            sled_flusher,
        };
        // Segments may still hold records before the purge point (a purge
        // deletes whole segments only); forget them again.
        if let Some(purged) = store
            .read_state::<Option<LogId>>(keys::LAST_PURGED_KEY)?
            .flatten()
        {
            store
                .wal()
                .purge_upto(purged.index)
                .map_err(|e| log_err(ErrorVerb::Delete, e))?;
        }
        Ok((store, exit))
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        lock(&self.wal)
    }

    /// Makes everything durable: the log, and sled (the vote, and the state
    /// machine's trees, which share that database).
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.wal_flusher
            .flush()
            .await
            .map_err(|e| log_err(ErrorVerb::Write, e))?;
        self.flush_sled(ErrorSubject::Store).await
    }

    async fn flush_sled(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.sled_flusher
            .flush()
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }

    fn read_state<T: for<'de> serde::Deserialize<'de>>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self
            .state
            .get(key)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        keys::decode(&bytes)
            .map(Some)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    fn write_state<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        self.state
            .insert(key, keys::encode(value))
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    /// The commit index last saved by openraft (for status reports).
    pub fn committed_index(&self) -> Option<u64> {
        self.read_state::<Option<LogId>>(keys::COMMITTED_KEY)
            .ok()
            .flatten()
            .flatten()
            .map(|id| id.index)
    }
}

/// Data directories written before the WAL kept the log in sled's
/// `raft_log` tree: move those entries into the WAL once, durably.
fn migrate_sled_log(tree: &sled::Tree, wal: &mut Wal) -> Result<(), StorageError> {
    if tree.is_empty() || !wal.is_empty() {
        return Ok(());
    }
    let mut records = Vec::new();
    for item in tree.iter() {
        let (key, bytes) = item.map_err(|e| log_err(ErrorVerb::Read, e))?;
        let index = keys::decode_u64(&key)
            .ok_or_else(|| log_err(ErrorVerb::Read, std::io::Error::other("bad log key")))?;
        records.push((index, bytes.to_vec()));
    }
    wal.append(&records)
        .and_then(|()| wal.take_unsynced().run())
        .map_err(|e| log_err(ErrorVerb::Write, e))?;
    tree.clear().map_err(|e| log_err(ErrorVerb::Delete, e))?;
    tracing::info!(
        entries = records.len(),
        "moved the Raft log from sled into the WAL"
    );
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let records = self
            .wal()
            .read(bounds)
            .map_err(|e| log_err(ErrorVerb::Read, e))?;
        records
            .iter()
            .map(|(_, bytes)| keys::decode(bytes).map_err(|e| log_err(ErrorVerb::Read, e)))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_state(keys::LAST_PURGED_KEY)?.flatten();
        let last = {
            let wal = self.wal();
            match wal.last_index() {
                Some(last) => wal
                    .read(last..=last)
                    .map_err(|e| log_err(ErrorVerb::Read, e))?
                    .pop(),
                None => None,
            }
        };
        let last_log_id = match last {
            Some((_, bytes)) => {
                let entry: Entry = keys::decode(&bytes).map_err(|e| log_err(ErrorVerb::Read, e))?;
                Some(entry.log_id)
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_state(keys::VOTE_KEY, vote)?;
        self.flush_sled(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_state(keys::VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only makes a restarted node re-learn the
        // commit index from the leader; the entries themselves are flushed.
        self.write_state(keys::COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_state::<Option<LogId>>(keys::COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index, keys::encode(&entry)))
            .collect();
        self.wal()
            .append(&records)
            .map_err(|e| log_err(ErrorVerb::Write, e))?;
        // Group commit: openraft goes on (and may append more) while the
        // flush thread syncs this batch with whatever else is queued; the
        // entries count as written only when the callback fires.
        self.wal_flusher
            .then(move |synced| callback.log_io_completed(synced))
            .await;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes [log_id.index, +oo): entries that conflict with the leader's.
        self.wal()
            .truncate_from(log_id.index)
            .map_err(|e| log_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves entries that
        // are merely ignored (and purged again at open), never a gap openraft
        // cannot explain.
        self.write_state(keys::LAST_PURGED_KEY, &Some(log_id))?;
        self.flush_sled(ErrorSubject::Store).await?;
        self.wal()
            .purge_upto(log_id.index)
            .map_err(|e| log_err(ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;
    use openraft::EntryPayload;

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn a_log_kept_in_sled_moves_into_the_wal_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("open");
        let old = db.open_tree(keys::RAFT_LOG_TREE).expect("tree");
        for i in 1..=5 {
            old.insert(keys::log_index_key(i), keys::encode(&entry(i)))
                .expect("insert");
        }
        let (sled_flusher, _sled_exit) = Flusher::for_sled(db.clone()).expect("flusher");
        let wal_dir = dir.path().join("raft-log");
        let (mut store, _exit) =
            LogStore::open(&db, &wal_dir, sled_flusher.clone()).expect("open store");
        assert!(old.is_empty(), "the sled copy is gone");
        let entries = store.try_get_log_entries(1..=5).await.expect("read");
        assert_eq!(entries, (1..=5).map(entry).collect::<Vec<_>>());
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|id| id.index), Some(5));
        drop(store);
        // The WAL alone holds it now.
        let (mut store, _exit) = LogStore::open(&db, &wal_dir, sled_flusher).expect("reopen");
        assert_eq!(store.try_get_log_entries(..).await.expect("read").len(), 5);
    }
}
