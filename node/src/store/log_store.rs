//! The Raft log, vote and commit index on sled (openraft `RaftLogStorage`).
//!
//! An entry is acknowledged to openraft only after sled has flushed it to
//! disk, so a majority ack means a majority of disks hold the entry.

use std::fmt::Debug;
use std::ops::Bound;
use std::ops::RangeBounds;

use openraft::storage::LogFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::Vote;

use super::io_err;
use super::keys;
use super::Flusher;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::StorageError;
use crate::types::TypeConfig;

/// Cheap to clone: sled trees are reference-counted handles.
#[derive(Clone, Debug)]
pub struct LogStore {
    flusher: Flusher,
    log: sled::Tree,
    state: sled::Tree,
}

impl LogStore {
    pub fn open(db: &sled::Db, flusher: Flusher) -> Result<Self, StorageError> {
        let open = |name| {
            db.open_tree(name)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
        };
        Ok(Self {
            flusher,
            log: open(keys::RAFT_LOG_TREE)?,
            state: open(keys::RAFT_STATE_TREE)?,
        })
    }

    /// Writes everything to disk: the log, and the state machine's trees,
    /// which share this database.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.flush_for(ErrorSubject::Store).await
    }

    async fn flush_for(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.flusher
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

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(keys::log_index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(keys::log_index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(keys::log_index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(keys::log_index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, bytes) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let entry: Entry =
                keys::decode(&bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_state(keys::LAST_PURGED_KEY)?.flatten();
        let last = self
            .log
            .last()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = match last {
            Some((_, bytes)) => {
                let entry: Entry = keys::decode(&bytes)
                    .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
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
        self.flush_for(ErrorSubject::Vote).await
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(
                &keys::log_index_key(entry.log_id.index),
                keys::encode(&entry),
            );
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // Group commit: openraft goes on (and may append more) while the
        // flush thread makes this batch durable with whatever else is queued;
        // the entries count as written only when the callback fires.
        self.flusher
            .then(move |flushed| callback.log_io_completed(flushed))
            .await;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Removes [log_id.index, +oo): entries that conflict with the leader's.
        let mut batch = sled::Batch::default();
        for item in self.log.range(keys::log_index_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        self.flush_for(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves entries that
        // are merely ignored, never a gap openraft cannot explain.
        self.write_state(keys::LAST_PURGED_KEY, &Some(log_id))?;
        self.flush_for(ErrorSubject::Store).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=keys::log_index_key(log_id.index)) {
            let (key, _) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            batch.remove(key);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        Ok(())
    }
}
