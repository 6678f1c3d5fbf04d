//! The provisional store: LOCAL writes this node accepted and has not yet
//! seen reconciled into the Raft log. Node-local: never replicated, never in
//! a snapshot.
//!
//! The truth is a write-ahead log of its own (`prov-log/`, the [`Wal`] of
//! the Raft log), one record per write by seq. A LOCAL write is
//! acknowledged only after its record is synced (`fdatasync`, shared by
//! every write queued meanwhile), so it survives `kill -9` and power loss.
//! The indexes (which pending write is the newest of each key and of each
//! reading, and which carries each request id) are maps in memory that hold
//! seqs, not values: a read of a pending value reads its record back. They
//! are rebuilt from the log at open.
//! Kept in sled and flushed per write, the same store cost its node ~18% of
//! its CPU in sled's I/O threads under LOCAL load; with its indexes in
//! unflushed sled trees (a row per reading, inserted under the store's
//! lock), LOCAL ingest ran at half the rate it does now (issue 5).
//!
//! A write stays until the reconciler has seen it committed and applied on
//! this node; only then is it removed, so an EVENTUAL read on this node sees
//! it without a gap. Writes are removed oldest first, so the pending writes
//! are always the seqs after `removed_upto`.
//!
//! Two invariants keep seqs unique, which reconciliation depends on (the
//! state machine skips every seq at or below an origin's high-water mark):
//! - The log keeps its newest record even once it is removed, so the next
//!   seq after a restart is past every seq ever given.
//! - The reconciler sees only synced writes ([`ProvisionalStore::oldest`]).
//!   A write proposed before its sync could be cut off as a torn tail after
//!   a crash, and its seq given again to a new write that reconciliation
//!   would then skip.

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::File;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::ErrorSubject;
use openraft::ErrorVerb;

use super::flusher::FlushThreadExit;
use super::io_err;
use super::keys;
use super::keys::PendingWrite;
use super::keys::ReadingRow;
use super::keys::StoredReading;
use super::keys::StoredValue;
use super::wal::Wal;
use super::Flusher;
use crate::types::ProvisionalWrite;
use crate::types::RequestId;
use crate::types::StorageError;
use crate::types::Version;
use crate::types::WriteOp;

/// The most provisional writes a node holds. Past it, LOCAL writes are
/// refused until reconciliation catches up: a partition that lasts long
/// enough cannot fill the disk. At ~200 bytes a write this is ~200 MB.
pub const MAX_PENDING_PROVISIONAL_WRITES: usize = 1_000_000;

/// The most bytes of pending provisional writes (encoded, as in the log).
/// One write can be a 16 MiB batch of readings, so the count limit alone
/// does not bound the disk. With [`MAX_PENDING_PROVISIONAL_WRITES`] it also
/// bounds the indexes' memory: ~36 bytes a reading (whose share of its
/// record is at least ~33), ~100 bytes plus the key for a key write and ~80
/// plus the id for a request id; at worst ~300 MB.
pub const MAX_PENDING_PROVISIONAL_BYTES: usize = 256 * 1024 * 1024;

/// Records read from the log per step when the indexes are rebuilt at open.
const REBUILD_BATCH_RECORDS: usize = 4_096;
/// Bytes read from the log per step when the indexes are rebuilt at open.
const REBUILD_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// The file in the log's directory that holds `removed_upto`: written (not
/// synced) at every removal, so after `kill -9` the node does not propose
/// writes again that it already saw reconciled. A stale value (power loss)
/// costs only that: the state machine skips those writes.
const REMOVED_UPTO_FILE: &str = "removed-upto";

/// The log of accepted writes and the index of the pending ones.
struct Log {
    wal: Wal,
    index: Index,
}

impl Log {
    /// The pending write `seq`, read back from its record.
    fn write(&self, seq: u64) -> Result<PendingWrite, StorageError> {
        let (_, bytes) = self
            .wal
            .read(seq..=seq)
            .map_err(read_err)?
            .pop()
            .ok_or_else(|| {
                read_err(std::io::Error::other(format!(
                    "provisional write {seq} is indexed but not in the provisional log"
                )))
            })?;
        keys::decode(&bytes).map_err(read_err)
    }

    /// The rows of `sensor_id` at `picks` (timestamp, seq of the write that
    /// holds it), each write's record read once.
    fn reading_rows(
        &self,
        sensor_id: &str,
        picks: Vec<(u64, u64)>,
    ) -> Result<Vec<ReadingRow>, StorageError> {
        let mut by_write: HashMap<u64, HashMap<u64, StoredReading>> = HashMap::new();
        let mut rows = Vec::with_capacity(picks.len());
        for (timestamp_ms, seq) in picks {
            let readings = match by_write.entry(seq) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => new.insert(readings_of(self.write(seq)?.write, sensor_id)),
            };
            let reading = readings.get(&timestamp_ms).cloned().ok_or_else(|| {
                read_err(std::io::Error::other(format!(
                    "provisional write {seq} is indexed for {sensor_id:?} at {timestamp_ms} but holds no such reading"
                )))
            })?;
            rows.push(ReadingRow {
                timestamp_ms,
                reading,
            });
        }
        Ok(rows)
    }
}

/// The readings of `sensor_id` a write carries, by timestamp (the last of
/// its batch where one timestamp is there twice, as the index has it).
fn readings_of(write: ProvisionalWrite, sensor_id: &str) -> HashMap<u64, StoredReading> {
    let WriteOp::PutReadings(batch) = write.op else {
        return HashMap::new();
    };
    batch
        .into_iter()
        .filter(|r| r.sensor_id == sensor_id)
        .map(|r| {
            let reading = StoredReading {
                value: r.value,
                tags: r.tags,
                version: write.version,
            };
            (r.timestamp_ms, reading)
        })
        .collect()
}

/// Where the pending writes are: the seq of the newest pending write of
/// each key and of each reading, and of the write that carries each request
/// id. At most one entry per item of a pending write.
#[derive(Default)]
struct Index {
    keys: HashMap<Vec<u8>, u64>,
    /// Sensor -> timestamp -> seq.
    readings: HashMap<String, BTreeMap<u64, u64>>,
    requests: HashMap<RequestId, u64>,
}

impl Index {
    /// Points the entries of what `write` wrote at it.
    fn add(&mut self, write: &ProvisionalWrite) {
        let seq = write.seq;
        match &write.op {
            WriteOp::PutReadings(batch) => {
                for r in batch {
                    // Batches are usually of one sensor: its name is
                    // copied once, not per reading.
                    let times = match self.readings.get_mut(r.sensor_id.as_str()) {
                        Some(times) => times,
                        None => self.readings.entry(r.sensor_id.clone()).or_default(),
                    };
                    times.insert(r.timestamp_ms, seq);
                }
            }
            WriteOp::Put { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::CompareAndSet { key, .. } => {
                self.keys.insert(key.clone(), seq);
            }
        }
        if !write.request_id.is_empty() {
            self.requests.insert(write.request_id.clone(), seq);
        }
    }

    /// Drops the entries that still point at `write` (a newer pending write
    /// of the same key or reading keeps its own).
    fn remove(&mut self, write: &ProvisionalWrite) {
        let seq = write.seq;
        match &write.op {
            WriteOp::PutReadings(batch) => {
                for r in batch {
                    let Some(times) = self.readings.get_mut(r.sensor_id.as_str()) else {
                        continue;
                    };
                    if times.get(&r.timestamp_ms) == Some(&seq) {
                        times.remove(&r.timestamp_ms);
                    }
                    if times.is_empty() {
                        self.readings.remove(r.sensor_id.as_str());
                    }
                }
            }
            WriteOp::Put { key, .. }
            | WriteOp::Delete { key }
            | WriteOp::CompareAndSet { key, .. } => {
                if self.keys.get(key) == Some(&seq) {
                    self.keys.remove(key);
                }
            }
        }
        if self.requests.get(&write.request_id) == Some(&seq) {
            self.requests.remove(&write.request_id);
        }
    }

    /// Gives back the memory of maps that a drained backlog left mostly
    /// empty (a map keeps its capacity when entries are removed).
    fn shrink(&mut self) {
        fn shrink<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
            if map.len() < map.capacity() / 4 {
                map.shrink_to_fit();
            }
        }
        shrink(&mut self.keys);
        shrink(&mut self.readings);
        shrink(&mut self.requests);
    }
}

fn lock_log(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub struct ProvisionalStore {
    /// Its lock is also the store's critical section: a write is stamped,
    /// given its seq, logged and indexed under it, so seq order and version
    /// order agree (not during the sync, which concurrent writes share).
    log: Arc<Mutex<Log>>,
    /// Syncs the log's WAL.
    flusher: Flusher,
    /// The seq the next accepted write gets. Every seq below it was accepted.
    next_seq: Arc<AtomicU64>,
    /// Every seq at or below it is synced.
    synced_upto: Arc<AtomicU64>,
    /// Every seq at or below it is removed (reconciled and applied here).
    removed_upto: Arc<AtomicU64>,
    removed_upto_file: Arc<File>,
    /// The encoded bytes of the pending writes (their count needs no
    /// counter: the pending seqs are `removed_upto + 1 .. next_seq`).
    pending_bytes: Arc<AtomicUsize>,
    /// [`MAX_PENDING_PROVISIONAL_BYTES`], lower in tests.
    max_pending_bytes: usize,
}

impl std::fmt::Debug for ProvisionalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionalStore")
            .field("next_seq", &self.next_seq.load(Ordering::Relaxed))
            .field("removed_upto", &self.removed_upto.load(Ordering::Relaxed))
            .field("pending", &self.pending_count())
            .finish_non_exhaustive()
    }
}

/// A LOCAL write as accepted: its seq and the version of each item.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub seq: u64,
    pub versions: Vec<Version>,
    /// True when the request id was already pending here (a retry).
    pub deduplicated: bool,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("this node holds {MAX_PENDING_PROVISIONAL_WRITES} unreconciled LOCAL writes, its limit; retry after the partition heals or write STRONG")]
    Full,
    #[error("this node holds {pending} bytes of unreconciled LOCAL writes and this write adds {adding}, past its limit of {limit} bytes; retry after the partition heals or write STRONG")]
    FullBytes {
        pending: usize,
        adding: usize,
        limit: usize,
    },
    #[error(transparent)]
    Storage(Box<StorageError>),
}

impl From<StorageError> for AcceptError {
    fn from(error: StorageError) -> Self {
        AcceptError::Storage(Box::new(error))
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Store, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Store, ErrorVerb::Write, e)
}

/// The versions a write's items carry: one per reading, one for a key.
fn item_versions(op: &WriteOp, version: Version) -> Vec<Version> {
    match op {
        WriteOp::PutReadings(batch) => vec![version; batch.len()],
        _ => vec![version],
    }
}

impl ProvisionalStore {
    /// Opens the log in `dir` (moving the writes of an older data directory's
    /// `prov_log` tree into it), rebuilds the indexes, and starts the
    /// log's flush thread (whose end the caller awaits at shutdown).
    pub fn open(db: &sled::Db, dir: &Path) -> Result<(Self, FlushThreadExit), StorageError> {
        let open = |name| db.open_tree(name).map_err(read_err);
        let mut wal = Wal::open_as(dir, "provisional log").map_err(read_err)?;
        // Records written before a crash may be in the page cache only; the
        // reconciler treats every record found here as synced.
        wal.sync().map_err(write_err)?;
        let legacy_next_seq = migrate_sled_log(db, &open(keys::PROV_LOG_TREE)?, &mut wal)?;
        let removed_upto_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(REMOVED_UPTO_FILE))
            .map_err(read_err)?;
        let removed_upto = read_removed_upto(&removed_upto_file);
        let last = wal.last_index().unwrap_or(0);
        let next_seq = (last + 1).max(legacy_next_seq).max(removed_upto + 1);
        // Nothing before the log's first record is pending, nor anything at
        // all when it is empty.
        let removed_upto = match wal.first_index() {
            Some(first) => removed_upto.max(first - 1),
            None => next_seq - 1,
        };
        purge_removed(&mut wal, removed_upto)?;
        // Older builds kept the indexes in sled.
        for tree in [
            keys::PROV_KV_TREE,
            keys::PROV_READINGS_TREE,
            keys::PROV_REQUESTS_TREE,
        ] {
            db.drop_tree(tree).map_err(write_err)?;
        }
        let log = Arc::new(Mutex::new(Log {
            wal,
            index: Index::default(),
        }));
        let sync_log = log.clone();
        let (flusher, exit) = Flusher::start("capkv-prov-sync", move || {
            let pending = lock_log(&sync_log).wal.take_unsynced();
            pending.run()
        })
        .map_err(write_err)?;
        let store = Self {
            log,
            flusher,
            next_seq: Arc::new(AtomicU64::new(next_seq)),
            synced_upto: Arc::new(AtomicU64::new(last)),
            removed_upto: Arc::new(AtomicU64::new(removed_upto)),
            removed_upto_file: Arc::new(removed_upto_file),
            pending_bytes: Arc::new(AtomicUsize::new(0)),
            max_pending_bytes: MAX_PENDING_PROVISIONAL_BYTES,
        };
        store.rebuild_indexes()?;
        Ok((store, exit))
    }

    /// The seq the next accepted write gets. Every seq below it was accepted.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// Stores LOCAL writes durably (one `Put`, or the LOCAL puts of one
    /// `PutMany` call): one critical section, one log append and one sync for
    /// all of them, and an answer for each, in order: its seq and versions.
    /// `make_version` is called once per new write, inside the critical
    /// section, so seq order and version order agree. A retry (same request
    /// id, still pending, or carried by an earlier write of the same call)
    /// gets the first acceptance back.
    pub async fn accept_many(
        &self,
        writes: Vec<(RequestId, WriteOp)>,
        make_version: impl Fn() -> Version,
        accepted_at_ms: u64,
    ) -> Vec<Result<Accepted, AcceptError>> {
        /// Where a write's answer comes from.
        enum Answer {
            Now(Result<Accepted, AcceptError>),
            /// The `n`th new write of this call.
            New(usize),
            /// The answer of write `i` of this call, as a retry.
            Retry(usize),
        }
        let mut answers = Vec::with_capacity(writes.len());
        let mut new: Vec<PendingWrite> = Vec::new();
        let stored = {
            let mut log = lock_log(&self.log);
            let first_seq = self.next_seq();
            let mut records = Vec::new();
            let mut adding = 0;
            let count = writes.len();
            let mut ids_here: HashMap<RequestId, usize> = HashMap::new();
            for (i, (request_id, op)) in writes.into_iter().enumerate() {
                if let WriteOp::CompareAndSet { .. } = op {
                    // The API refuses LOCAL compare-and-set before it gets here.
                    answers.push(Answer::Now(Err(write_err(std::io::Error::other(
                        "compare-and-set cannot be provisional",
                    ))
                    .into())));
                    continue;
                }
                if let Some(&first) = ids_here.get(&request_id) {
                    answers.push(Answer::Retry(first));
                    continue;
                }
                match self.pending_retry(&log, &request_id) {
                    Ok(None) => {}
                    Ok(Some(accepted)) => {
                        answers.push(Answer::Now(Ok(accepted)));
                        continue;
                    }
                    Err(e) => {
                        answers.push(Answer::Now(Err(e.into())));
                        continue;
                    }
                }
                let seq = first_seq + new.len() as u64;
                let pending = PendingWrite {
                    write: ProvisionalWrite {
                        seq,
                        request_id,
                        version: make_version(),
                        op,
                    },
                    accepted_at_ms,
                };
                let encoded = keys::encode(&pending);
                if let Err(full) = self.check_room(new.len(), adding, encoded.len()) {
                    answers.push(Answer::Now(Err(full)));
                    continue;
                }
                // Only a later write of this call can repeat the id.
                if i + 1 < count && !pending.write.request_id.is_empty() {
                    ids_here.insert(pending.write.request_id.clone(), answers.len());
                }
                adding += encoded.len();
                records.push((seq, encoded));
                answers.push(Answer::New(new.len()));
                new.push(pending);
            }
            // The log records are the truth; the indexes are derived from
            // them (and rebuilt from them at open).
            match new.last() {
                None => Ok(None),
                Some(last) => log.wal.append(&records).map(|()| {
                    self.next_seq
                        .store(first_seq + new.len() as u64, Ordering::Release);
                    for pending in &new {
                        log.index.add(&pending.write);
                    }
                    self.pending_bytes.fetch_add(adding, Ordering::Relaxed);
                    Some(last.write.seq)
                }),
            }
        };
        let stored = match stored {
            Ok(Some(last)) => self.flusher.flush().await.map(|()| {
                // This sync began after the writes were logged, and every
                // smaller seq was logged before them.
                self.synced_upto.fetch_max(last, Ordering::AcqRel);
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
        .map_err(|e| AcceptError::from(write_err(e)));
        let mut done: Vec<Result<Accepted, AcceptError>> = Vec::with_capacity(answers.len());
        for answer in answers {
            let result = match answer {
                Answer::Now(result) => result,
                Answer::New(n) => stored.clone().map(|()| {
                    let write = &new[n].write;
                    Accepted {
                        seq: write.seq,
                        versions: item_versions(&write.op, write.version),
                        deduplicated: false,
                    }
                }),
                Answer::Retry(first) => done[first].clone().map(|accepted| Accepted {
                    deduplicated: true,
                    ..accepted
                }),
            };
            done.push(result);
        }
        done
    }

    /// Whether a new write of `adding` encoded bytes fits both limits, after
    /// `before` writes of `before_bytes` that the same call adds. Called in
    /// the critical section, which every change of the counts holds, so the
    /// limits are exact; a retry of a pending write is not a new write and
    /// is answered even when the store is full.
    fn check_room(
        &self,
        before: usize,
        before_bytes: usize,
        adding: usize,
    ) -> Result<(), AcceptError> {
        if self.pending_count() + before >= MAX_PENDING_PROVISIONAL_WRITES {
            return Err(AcceptError::Full);
        }
        let pending = self.pending_bytes() + before_bytes;
        if pending + adding > self.max_pending_bytes {
            return Err(AcceptError::FullBytes {
                pending,
                adding,
                limit: self.max_pending_bytes,
            });
        }
        Ok(())
    }

    /// The earlier acceptance of a retried write still pending here.
    fn pending_retry(
        &self,
        log: &Log,
        request_id: &[u8],
    ) -> Result<Option<Accepted>, StorageError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let Some(&seq) = log.index.requests.get(request_id) else {
            return Ok(None);
        };
        let pending = log.write(seq)?;
        let versions = item_versions(&pending.write.op, pending.write.version);
        Ok(Some(Accepted {
            seq,
            versions,
            deduplicated: true,
        }))
    }

    /// Rebuilds the indexes from the pending writes (at open: the log is the
    /// truth, the indexes live in memory).
    fn rebuild_indexes(&self) -> Result<(), StorageError> {
        let mut log = lock_log(&self.log);
        log.index = Index::default();
        let mut bytes = 0;
        let mut from = self.removed_upto.load(Ordering::Acquire) + 1;
        loop {
            let records = log
                .wal
                .read_batch(from.., REBUILD_BATCH_RECORDS, REBUILD_BATCH_BYTES)
                .map_err(read_err)?;
            let Some((last, _)) = records.last() else {
                break;
            };
            from = last + 1;
            for (_, value) in records {
                let pending: PendingWrite = keys::decode(&value).map_err(read_err)?;
                log.index.add(&pending.write);
                bytes += value.len();
            }
        }
        self.pending_bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// The oldest pending writes that are synced, in seq order: at most
    /// `max_writes`, and at most about `max_bytes` encoded (always at least
    /// one, if any is pending and synced).
    pub fn oldest(
        &self,
        max_writes: usize,
        max_bytes: usize,
    ) -> Result<Vec<ProvisionalWrite>, StorageError> {
        let from = self.removed_upto.load(Ordering::Acquire) + 1;
        let upto = self.synced_upto.load(Ordering::Acquire);
        if upto < from {
            return Ok(Vec::new());
        }
        let records = lock_log(&self.log)
            .wal
            .read_batch(from..=upto, max_writes, max_bytes)
            .map_err(read_err)?;
        records
            .iter()
            .map(|(_, value)| Ok(keys::decode::<PendingWrite>(value).map_err(read_err)?.write))
            .collect()
    }

    /// Removes writes that are committed and applied on this node: the
    /// oldest pending ones, as [`ProvisionalStore::oldest`] gave them.
    /// Writes already removed are skipped. An index entry is removed only by
    /// the write that put it there.
    pub fn remove(&self, writes: &[ProvisionalWrite]) -> Result<(), StorageError> {
        let mut log = lock_log(&self.log);
        let removed_upto = self.removed_upto.load(Ordering::Acquire);
        let writes: Vec<&ProvisionalWrite> =
            writes.iter().filter(|w| w.seq > removed_upto).collect();
        let Some(last) = writes.last().map(|w| w.seq) else {
            return Ok(());
        };
        if writes.iter().map(|w| w.seq).ne(removed_upto + 1..=last) {
            return Err(write_err(std::io::Error::other(format!(
                "removing provisional writes {:?} out of order: the oldest pending is {}",
                writes.iter().map(|w| w.seq).collect::<Vec<_>>(),
                removed_upto + 1
            ))));
        }
        for write in &writes {
            log.index.remove(write);
        }
        log.index.shrink();
        let bytes = log.wal.payload_bytes(removed_upto + 1..=last);
        self.removed_upto.store(last, Ordering::Release);
        self.pending_bytes
            .fetch_sub(bytes as usize, Ordering::Relaxed);
        write_removed_upto(&self.removed_upto_file, last).map_err(write_err)?;
        purge_removed(&mut log.wal, last)
    }

    pub fn pending_count(&self) -> usize {
        // Every seq below `next_seq` was accepted, and removals go oldest
        // first; both change in the critical section.
        let removed_upto = self.removed_upto.load(Ordering::Acquire);
        let pending = (self.next_seq() - 1).saturating_sub(removed_upto);
        usize::try_from(pending).unwrap_or(usize::MAX)
    }

    /// The encoded bytes of the pending writes (see
    /// [`MAX_PENDING_PROVISIONAL_BYTES`]).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// When the oldest pending write was accepted (node wall clock, ms).
    pub fn oldest_accepted_at_ms(&self) -> Option<u64> {
        let from = self.removed_upto.load(Ordering::Acquire) + 1;
        let (_, value) = lock_log(&self.log)
            .wal
            .read_batch(from.., 1, 0)
            .ok()?
            .pop()?;
        keys::decode::<PendingWrite>(&value)
            .ok()
            .map(|p| p.accepted_at_ms)
    }

    /// The newest pending value of a key, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageError> {
        let log = lock_log(&self.log);
        let Some(&seq) = log.index.keys.get(key) else {
            return Ok(None);
        };
        let write = log.write(seq)?.write;
        let value = match write.op {
            WriteOp::Put { value, .. } => Some(value),
            WriteOp::Delete { .. } => None,
            op => {
                return Err(read_err(std::io::Error::other(format!(
                    "provisional write {seq} is indexed for a key but is {op:?}"
                ))))
            }
        };
        Ok(Some(StoredValue {
            value,
            version: write.version,
        }))
    }

    /// The pending reading of a sensor with the highest timestamp, if any.
    pub fn latest_reading(&self, sensor_id: &str) -> Result<Option<ReadingRow>, StorageError> {
        let log = lock_log(&self.log);
        let Some((&timestamp_ms, &seq)) = log
            .index
            .readings
            .get(sensor_id)
            .and_then(|times| times.last_key_value())
        else {
            return Ok(None);
        };
        Ok(log
            .reading_rows(sensor_id, vec![(timestamp_ms, seq)])?
            .pop())
    }

    /// Pending readings of a sensor in `[from_ms, to_ms]`, in time order
    /// (newest first when `descending`), at most `limit`.
    pub fn range_readings(
        &self,
        sensor_id: &str,
        (from_ms, to_ms): (u64, u64),
        limit: usize,
        descending: bool,
    ) -> Result<Vec<ReadingRow>, StorageError> {
        let log = lock_log(&self.log);
        let Some(times) = log.index.readings.get(sensor_id) else {
            return Ok(Vec::new());
        };
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let range = times.range(from_ms..=to_ms).map(|(&ts, &seq)| (ts, seq));
        let picks: Vec<(u64, u64)> = if descending {
            range.rev().take(limit).collect()
        } else {
            range.take(limit).collect()
        };
        log.reading_rows(sensor_id, picks)
    }
}

/// Forgets the removed records up to `removed_upto` and deletes the log
/// segments that hold nothing else, except the newest record: it keeps the
/// next seq over a restart.
fn purge_removed(wal: &mut Wal, removed_upto: u64) -> Result<(), StorageError> {
    let newest = wal.last_index().unwrap_or(0);
    wal.purge_upto(removed_upto.min(newest.saturating_sub(1)))
        .map_err(write_err)
}

/// `removed_upto` as last written, or 0 when the file is new or its
/// checksum does not match (a torn write): writes are then proposed again,
/// and skipped by the state machine.
fn read_removed_upto(file: &File) -> u64 {
    let mut bytes = [0u8; 12];
    if file.read_exact_at(&mut bytes, 0).is_err() {
        return 0;
    }
    let (value, crc) = bytes.split_at(8);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(value) != crc {
        return 0;
    }
    u64::from_le_bytes(value.try_into().expect("8 bytes"))
}

fn write_removed_upto(file: &File, upto: u64) -> std::io::Result<()> {
    let value = upto.to_le_bytes();
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&value);
    bytes[8..].copy_from_slice(&crc32fast::hash(&value).to_le_bytes());
    file.write_all_at(&bytes, 0)
}

/// Data directories written before the provisional log kept the writes in
/// sled's `prov_log` tree and the next seq in `prov_meta`: moves the writes
/// into the log once, durably, and returns that next seq (1 when none was
/// kept). `prov_meta` is left as it is and read at every open.
fn migrate_sled_log(db: &sled::Db, tree: &sled::Tree, wal: &mut Wal) -> Result<u64, StorageError> {
    let legacy_next_seq = db
        .open_tree(keys::PROV_META_TREE)
        .map_err(read_err)?
        .get(keys::NEXT_SEQ_KEY)
        .map_err(read_err)?
        .and_then(|v| keys::decode_u64(&v))
        .unwrap_or(1);
    if tree.is_empty() {
        return Ok(legacy_next_seq);
    }
    let after = wal.last_index().unwrap_or(0);
    let mut records = Vec::new();
    for row in tree.iter() {
        let (key, value) = row.map_err(read_err)?;
        let seq = keys::decode_u64(&key)
            .ok_or_else(|| read_err(std::io::Error::other("a prov_log key is not a seq")))?;
        if seq > after {
            records.push((seq, value.to_vec()));
        }
    }
    let moved = records.len();
    wal.append(&records).map_err(write_err)?;
    wal.take_unsynced().run().map_err(write_err)?;
    tree.clear().map_err(write_err)?;
    db.flush().map_err(write_err)?;
    tracing::info!(
        writes = moved,
        "moved the provisional writes from sled into their log"
    );
    Ok(legacy_next_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> WriteOp {
        WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        }
    }

    fn readings(items: &[(&str, u64, f64)]) -> WriteOp {
        WriteOp::PutReadings(
            items
                .iter()
                .map(|&(sensor, ts, value)| crate::types::ReadingWrite {
                    sensor_id: sensor.to_string(),
                    timestamp_ms: ts,
                    value,
                    tags: vec![("at".to_string(), value.to_string())],
                })
                .collect(),
        )
    }

    fn version(physical_ms: u64) -> Version {
        Version {
            physical_ms,
            logical: 0,
            origin_node: 1,
        }
    }

    /// What the store answers for the items the index test writes: key `k`,
    /// key `j`, the newest reading of `s` and `s2`, `s`'s readings at 1..=4
    /// as (ts, value, version ms), and the newest two of them.
    type Answers = (
        Option<StoredValue>,
        Option<StoredValue>,
        Option<(u64, f64)>,
        Option<(u64, f64)>,
        Vec<(u64, f64, u64)>,
        Vec<u64>,
    );

    fn answers(store: &ProvisionalStore) -> Answers {
        let latest = |sensor: &str| {
            store
                .latest_reading(sensor)
                .expect("latest")
                .map(|row| (row.timestamp_ms, row.reading.value))
        };
        let rows = store.range_readings("s", (1, 4), 10, false).expect("range");
        for row in &rows {
            // Tags come back from the record as they were written.
            assert_eq!(row.reading.tags[0].1, row.reading.value.to_string());
        }
        let newest_two = store.range_readings("s", (1, 4), 2, true).expect("range");
        (
            store.get(b"k").expect("get"),
            store.get(b"j").expect("get"),
            latest("s"),
            latest("s2"),
            rows.iter()
                .map(|r| {
                    (
                        r.timestamp_ms,
                        r.reading.value,
                        r.reading.version.physical_ms,
                    )
                })
                .collect(),
            newest_two.iter().map(|r| r.timestamp_ms).collect(),
        )
    }

    #[tokio::test]
    async fn reads_see_the_newest_pending_write_of_each_item_until_it_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, store, exit) = open_store(dir.path()).await;
        let writes = [
            put("k"),
            readings(&[("s", 1, 1.0), ("s", 2, 2.0), ("s", 3, 3.0), ("s2", 1, 10.0)]),
            WriteOp::Put {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
            },
            WriteOp::Delete { key: b"j".to_vec() },
            // Rewrites s at 3 (the same timestamp twice in one batch: the
            // last one counts) and adds 4.
            readings(&[("s", 3, 0.5), ("s", 3, 30.0), ("s", 4, 40.0)]),
        ];
        for (i, op) in writes.into_iter().enumerate() {
            let ms = 100 + i as u64;
            accept_one(&store, format!("r{i}").into_bytes(), op, move || {
                version(ms)
            })
            .await
            .expect("accept");
        }
        let all_pending = (
            Some(StoredValue {
                value: Some(b"v2".to_vec()),
                version: version(102),
            }),
            Some(StoredValue {
                value: None,
                version: version(103),
            }),
            Some((4, 40.0)),
            Some((1, 10.0)),
            vec![(1, 1.0, 101), (2, 2.0, 101), (3, 30.0, 104), (4, 40.0, 104)],
            vec![4, 3],
        );
        assert_eq!(answers(&store), all_pending);
        assert!(store
            .range_readings("s", (3, 2), 10, false)
            .expect("range")
            .is_empty());
        assert!(store.get(b"other").expect("get").is_none());
        assert!(store.latest_reading("other").expect("latest").is_none());

        // The indexes are rebuilt from the log at open.
        close(db, store, exit).await;
        let (db, store, exit) = open_store(dir.path()).await;
        assert_eq!(answers(&store), all_pending);

        // Removing the first two writes keeps what the later ones wrote over
        // them: k's newer value and s at 3.
        let oldest = store.oldest(2, usize::MAX).expect("oldest");
        store.remove(&oldest).expect("remove");
        let (k, j, latest_s, latest_s2, rows, newest_two) = answers(&store);
        assert_eq!((k, j), (all_pending.0.clone(), all_pending.1.clone()));
        assert_eq!((latest_s, latest_s2), (Some((4, 40.0)), None));
        assert_eq!(rows, vec![(3, 30.0, 104), (4, 40.0, 104)]);
        assert_eq!(newest_two, vec![4, 3]);

        let rest = store.oldest(10, usize::MAX).expect("oldest");
        store.remove(&rest).expect("remove");
        assert_eq!(answers(&store), (None, None, None, None, vec![], vec![]));
        close(db, store, exit).await;
    }

    /// A sled database under `dir` and the store on it, its log beside it.
    /// Waits for sled's file lock: the handles of the last open (sled's own
    /// threads among them) can outlive their drop by a few ms.
    async fn open_store(dir: &Path) -> (sled::Db, ProvisionalStore, FlushThreadExit) {
        let released =
            crate::store::wait_until_released(dir, std::time::Duration::from_secs(10)).await;
        assert!(released, "sled's lock on {} is still held", dir.display());
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .expect("open");
        let (store, exit) = ProvisionalStore::open(&db, &dir.join("prov-log")).expect("store");
        (db, store, exit)
    }

    /// Closes the store so the same directory can be opened again.
    async fn close(db: sled::Db, store: ProvisionalStore, exit: FlushThreadExit) {
        drop(store);
        drop(db);
        exit.wait().await;
    }

    /// One write, as a `Put` stores it.
    async fn accept_one(
        store: &ProvisionalStore,
        request_id: Vec<u8>,
        op: WriteOp,
        make_version: impl Fn() -> Version,
    ) -> Result<Accepted, AcceptError> {
        store
            .accept_many(vec![(request_id, op)], make_version, 0)
            .await
            .pop()
            .expect("one answer per write")
    }

    async fn accept(store: &ProvisionalStore, request_id: &str, key: &str) -> Accepted {
        accept_one(
            store,
            request_id.as_bytes().to_vec(),
            put(key),
            Version::default,
        )
        .await
        .expect("accept")
    }

    /// Accepts a Put of `k<i>` with request id `r<i>` for each `i`.
    async fn accept_each(store: &ProvisionalStore, range: std::ops::Range<u64>) {
        for i in range {
            accept(store, &format!("r{i}"), &format!("k{i}")).await;
        }
    }

    /// The seqs the reconciler would be given now.
    fn reconcilable_seqs(store: &ProvisionalStore) -> Vec<u64> {
        let oldest = store.oldest(100, usize::MAX).expect("oldest");
        oldest.iter().map(|w| w.seq).collect()
    }

    /// The bytes of the pending records, counted from the log itself.
    fn log_bytes(store: &ProvisionalStore) -> usize {
        let from = store.removed_upto.load(Ordering::Acquire) + 1;
        lock_log(&store.log).wal.payload_bytes(from..) as usize
    }

    #[tokio::test]
    async fn the_pending_count_and_bytes_follow_accepts_retries_removals_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (db, store, exit) = open_store(dir.path()).await;
            for i in 0..5 {
                let accepted = accept(&store, &format!("r{i}"), &format!("k{i}")).await;
                assert_eq!(accepted.seq, i + 1);
            }
            // A retry is not a new pending write.
            assert!(accept(&store, "r0", "k0").await.deduplicated);
            assert_eq!(store.pending_count(), 5);
            let oldest = store.oldest(2, usize::MAX).expect("oldest");
            store.remove(&oldest).expect("remove");
            // Removing twice changes nothing.
            store.remove(&oldest).expect("remove again");
            assert_eq!(store.pending_count(), 3);
            assert_eq!(store.pending_bytes(), log_bytes(&store));
            // A removed write's request id is free again: a new write.
            assert!(!accept(&store, "r0", "k0").await.deduplicated);
            close(db, store, exit).await;
        }
        let (_db, store, _exit) = open_store(dir.path()).await;
        assert_eq!(store.pending_count(), 4);
        assert_eq!(store.pending_bytes(), log_bytes(&store));
        assert!(store.pending_bytes() > 0);
        assert_eq!(store.next_seq(), 7);
        // The indexes were rebuilt from the log: the pending keys and request
        // ids are there, the removed key is not.
        assert!(store.get(b"k2").expect("get").is_some());
        assert!(store.get(b"k1").expect("get").is_none());
        assert!(accept(&store, "r4", "k4").await.deduplicated);
        let seqs = reconcilable_seqs(&store);
        assert_eq!(seqs, vec![3, 4, 5, 6]);
    }

    /// Once every write is removed, a restart neither gives a seq again (the
    /// state machine would skip the new write as reconciled) nor proposes the
    /// removed writes again; without the removed-upto file (a stale one after
    /// power loss) the removed writes come back as pending, which costs a
    /// proposal the state machine skips, and seqs still go on.
    #[tokio::test]
    async fn seqs_go_on_after_everything_was_removed_and_the_node_restarted() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (db, store, exit) = open_store(dir.path()).await;
            accept_each(&store, 0..3).await;
            let all = store.oldest(100, usize::MAX).expect("oldest");
            store.remove(&all).expect("remove");
            assert_eq!(store.pending_count(), 0);
            close(db, store, exit).await;
        }
        {
            let (db, store, exit) = open_store(dir.path()).await;
            assert_eq!(store.pending_count(), 0);
            assert!(reconcilable_seqs(&store).is_empty());
            assert_eq!(accept(&store, "r3", "k3").await.seq, 4);
            let all = store.oldest(100, usize::MAX).expect("oldest");
            store.remove(&all).expect("remove");
            close(db, store, exit).await;
        }
        std::fs::remove_file(dir.path().join("prov-log").join(REMOVED_UPTO_FILE)).expect("rm");
        let (_db, store, _exit) = open_store(dir.path()).await;
        assert_eq!(store.next_seq(), 5);
        let again = reconcilable_seqs(&store);
        assert_eq!(again, vec![1, 2, 3, 4], "the log still holds them");
        assert_eq!(accept(&store, "r5", "k5").await.seq, 5);
    }

    /// A write logged but not yet synced is not handed to the reconciler: a
    /// crash could cut it off the log and its seq be given again.
    #[tokio::test]
    async fn the_reconciler_is_given_only_synced_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, store, _exit) = open_store(dir.path()).await;
        accept(&store, "r1", "k1").await;
        // What `accept` does before its sync returns.
        lock_log(&store.log)
            .wal
            .append(&[(2, keys::encode(&pending_write(2)))])
            .expect("append");
        store.next_seq.store(3, Ordering::Release);
        let seqs = reconcilable_seqs(&store);
        assert_eq!(seqs, vec![1]);
        // The next write's sync covers it.
        accept(&store, "r3", "k3").await;
        assert_eq!(reconcilable_seqs(&store), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn removing_writes_that_are_not_the_oldest_pending_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, store, _exit) = open_store(dir.path()).await;
        accept_each(&store, 0..3).await;
        let all = store.oldest(100, usize::MAX).expect("oldest");
        let error = store.remove(&all[1..]).expect_err("seq 1 is still pending");
        assert!(error.to_string().contains("out of order"), "{error}");
        assert_eq!(store.pending_count(), 3);
        assert!(store.get(b"k1").expect("get").is_some());
    }

    /// A pending Put of `k<seq>` with request id `r<seq>`.
    fn pending_write(seq: u64) -> PendingWrite {
        PendingWrite {
            write: ProvisionalWrite {
                seq,
                request_id: format!("r{seq}").into_bytes(),
                version: Version::default(),
                op: put(&format!("k{seq}")),
            },
            accepted_at_ms: 0,
        }
    }

    /// The sled database of an older build under `dir`: `seqs` pending in
    /// `prov_log`, `next_seq` in `prov_meta`.
    fn legacy_data_dir(dir: &Path, seqs: &[u64], next_seq: u64) {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .open()
            .expect("open");
        let log = db.open_tree(keys::PROV_LOG_TREE).expect("tree");
        for seq in seqs {
            log.insert(
                keys::log_index_key(*seq),
                keys::encode(&pending_write(*seq)),
            )
            .expect("insert");
        }
        db.open_tree(keys::PROV_META_TREE)
            .expect("tree")
            .insert(keys::NEXT_SEQ_KEY, &keys::log_index_key(next_seq))
            .expect("insert");
        // The index trees of older builds, with a stale row each.
        for tree in [
            keys::PROV_KV_TREE,
            keys::PROV_READINGS_TREE,
            keys::PROV_REQUESTS_TREE,
        ] {
            db.open_tree(tree)
                .expect("tree")
                .insert(b"stale", b"row")
                .expect("insert");
        }
        db.flush().expect("flush");
    }

    /// A data directory of an older build kept the writes in sled's
    /// `prov_log` and the next seq in `prov_meta`; they move into the log.
    #[tokio::test]
    async fn writes_of_an_older_data_directory_move_from_sled_into_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        legacy_data_dir(dir.path(), &[8, 9], 10);
        {
            let (db, store, exit) = open_store(dir.path()).await;
            assert_eq!(store.pending_count(), 2);
            assert!(store.get(b"k9").expect("get").is_some());
            assert!(accept(&store, "r8", "k8").await.deduplicated);
            assert_eq!(accept(&store, "r10", "k10").await.seq, 10);
            assert!(db.open_tree(keys::PROV_LOG_TREE).expect("tree").is_empty());
            let names = db.tree_names();
            for tree in [
                keys::PROV_KV_TREE,
                keys::PROV_READINGS_TREE,
                keys::PROV_REQUESTS_TREE,
            ] {
                assert!(
                    !names.iter().any(|n| n == tree.as_bytes()),
                    "{tree} dropped"
                );
            }
            let all = store.oldest(100, usize::MAX).expect("oldest");
            store.remove(&all).expect("remove");
            close(db, store, exit).await;
        }
        // The legacy next seq holds even where the log has nothing after it.
        let dir2 = tempfile::tempdir().expect("tempdir");
        legacy_data_dir(dir2.path(), &[], 42);
        let (_db, store, _exit) = open_store(dir2.path()).await;
        assert_eq!(store.pending_count(), 0);
        assert_eq!(accept(&store, "r", "k").await.seq, 42);
        assert_eq!(store.pending_count(), 1);
    }

    /// Past the byte limit a LOCAL write is refused, saying how full the store
    /// is; stored nothing; and once writes are reconciled (removed) writes
    /// are accepted again.
    #[tokio::test]
    async fn writes_stored_together_are_answered_each_as_if_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, mut store, exit) = open_store(dir.path()).await;
        let first = accept(&store, "r0", "k0").await;
        // Room for two writes the size of this one (a Put of `k<i>` with id
        // `r<i>`), not three.
        let limit = log_bytes(&store) * 5 / 2;
        store.max_pending_bytes = limit;
        let put_with = |id: &str, key: &str| (id.as_bytes().to_vec(), put(key));
        let answers = store
            .accept_many(
                vec![
                    put_with("r1", "k1"),
                    // A retry of a write of an earlier call.
                    put_with("r0", "k0"),
                    (
                        b"c".to_vec(),
                        WriteOp::CompareAndSet {
                            key: b"k".to_vec(),
                            expected: crate::types::Expected::Absent,
                            value: b"v".to_vec(),
                        },
                    ),
                    // A retry of a write of this call.
                    put_with("r1", "k1"),
                    // Past the byte limit, counting this call's writes.
                    put_with("r2", "k2"),
                ],
                Version::default,
                0,
            )
            .await;
        let seqs: Vec<Result<(u64, bool), String>> = answers
            .into_iter()
            .map(|a| {
                a.map(|a| (a.seq, a.deduplicated))
                    .map_err(|e| e.to_string())
            })
            .collect();
        assert_eq!(seqs[0], Ok((first.seq + 1, false)));
        assert_eq!(seqs[1], Ok((first.seq, true)));
        assert!(
            seqs[2]
                .as_ref()
                .is_err_and(|e| e.contains("compare-and-set")),
            "{:?}",
            seqs[2]
        );
        assert_eq!(seqs[3], Ok((first.seq + 1, true)));
        let past_limit = format!("limit of {limit} bytes");
        assert!(
            seqs[4].as_ref().is_err_and(|e| e.contains(&past_limit)),
            "{:?}",
            seqs[4]
        );
        assert_eq!(store.pending_count(), 2);
        assert_eq!(store.pending_bytes(), log_bytes(&store));
        assert_eq!(reconcilable_seqs(&store), vec![first.seq, first.seq + 1]);
        assert!(store.get(b"k1").expect("get").is_some());
        // Stored durably: there after a reopen.
        close(db, store, exit).await;
        let (_db, store, _exit) = open_store(dir.path()).await;
        assert_eq!(reconcilable_seqs(&store), vec![first.seq, first.seq + 1]);
        assert!(accept(&store, "r1", "k1").await.deduplicated);
    }

    #[tokio::test]
    async fn writes_past_the_byte_limit_are_refused_until_some_are_reconciled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, mut store, _exit) = open_store(dir.path()).await;
        store.max_pending_bytes = 1_200; // three writes of 368 bytes fit
        let big = |key: &str| WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: vec![7; 300],
        };
        let accept = |i: usize| {
            let store = store.clone();
            async move {
                accept_one(
                    &store,
                    format!("b{i}").into_bytes(),
                    big(&format!("k{i}")),
                    Version::default,
                )
                .await
            }
        };
        for i in 0..3 {
            accept(i).await.expect("under the limit");
        }
        let error = accept(3).await.expect_err("past the byte limit");
        assert!(matches!(error, AcceptError::FullBytes { .. }), "{error}");
        assert!(error.to_string().contains("limit of 1200 bytes"), "{error}");
        assert_eq!(store.pending_count(), 3);
        assert!(store.get(b"k3").expect("get").is_none());
        // A retry of a pending write is no new write: answered even when full.
        assert!(accept(0).await.expect("a retry while full").deduplicated);
        let oldest = store.oldest(1, usize::MAX).expect("oldest");
        store.remove(&oldest).expect("remove");
        accept(3)
            .await
            .expect("accepted after a write was reconciled");
        assert_eq!(store.pending_bytes(), log_bytes(&store));
    }
}
