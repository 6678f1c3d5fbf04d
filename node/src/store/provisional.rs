//! The provisional store: LOCAL writes this node accepted and has not yet
//! seen reconciled into the Raft log. Node-local: never replicated, never in
//! a snapshot.
//!
//! A LOCAL write is acknowledged only after it is flushed here, so it
//! survives `kill -9`. It stays until the reconciler has seen it committed
//! and applied on this node; only then is it removed, so an EVENTUAL read on
//! this node sees it without a gap.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::ErrorSubject;
use openraft::ErrorVerb;

use super::io_err;
use super::keys;
use super::keys::Indexed;
use super::keys::PendingWrite;
use super::keys::ReadingRow;
use super::keys::StoredReading;
use super::keys::StoredValue;
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

/// The most bytes of pending provisional writes (encoded, as in `prov_log`;
/// the indexes take about as much again). One write can be a 16 MiB batch of
/// readings, so the count limit alone does not bound the disk.
pub const MAX_PENDING_PROVISIONAL_BYTES: usize = 256 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ProvisionalStore {
    flusher: Flusher,
    log: sled::Tree,
    meta: sled::Tree,
    kv: sled::Tree,
    readings: sled::Tree,
    requests: sled::Tree,
    /// Held while a write is stamped and stored, so seq order and version
    /// order agree (not during the flush, which concurrent writes share).
    accepting: Arc<Mutex<()>>,
    /// Writes in `log`, kept here because sled's `len` walks the whole tree
    /// (with 35k pending it was 16% of a node's CPU under LOCAL load).
    pending: Arc<AtomicUsize>,
    /// The encoded bytes of the writes in `log`.
    pending_bytes: Arc<AtomicUsize>,
    /// [`MAX_PENDING_PROVISIONAL_BYTES`], lower in tests.
    max_pending_bytes: usize,
}

/// A LOCAL write as accepted: its seq and the version of each item.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub seq: u64,
    pub versions: Vec<Version>,
    /// True when the request id was already pending here (a retry).
    pub deduplicated: bool,
}

#[derive(Debug, thiserror::Error)]
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
    pub fn open(db: &sled::Db, flusher: Flusher) -> Result<Self, StorageError> {
        let open = |name| db.open_tree(name).map_err(read_err);
        let store = Self {
            flusher,
            log: open(keys::PROV_LOG_TREE)?,
            meta: open(keys::PROV_META_TREE)?,
            kv: open(keys::PROV_KV_TREE)?,
            readings: open(keys::PROV_READINGS_TREE)?,
            requests: open(keys::PROV_REQUESTS_TREE)?,
            accepting: Arc::new(Mutex::new(())),
            pending: Arc::new(AtomicUsize::new(0)),
            pending_bytes: Arc::new(AtomicUsize::new(0)),
            max_pending_bytes: MAX_PENDING_PROVISIONAL_BYTES,
        };
        store.rebuild_indexes()?;
        Ok(store)
    }

    /// The seq the next accepted write gets. Every seq below it was accepted.
    pub fn next_seq(&self) -> u64 {
        self.meta
            .get(keys::NEXT_SEQ_KEY)
            .ok()
            .flatten()
            .and_then(|v| keys::decode_u64(&v))
            .unwrap_or(1)
    }

    /// Stores a LOCAL write durably and returns its seq. `make_version` is
    /// called once, inside the store's critical section, so seq order and
    /// version order agree. A retry (same request id, still pending) gets the
    /// first acceptance back.
    pub async fn accept(
        &self,
        request_id: RequestId,
        op: WriteOp,
        make_version: impl Fn() -> Version,
        accepted_at_ms: u64,
    ) -> Result<Accepted, AcceptError> {
        if let WriteOp::CompareAndSet { .. } = op {
            // The API refuses LOCAL compare-and-set before it gets here.
            return Err(write_err(std::io::Error::other(
                "compare-and-set cannot be provisional",
            ))
            .into());
        }
        let accepted = {
            let _accepting = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
            match self.pending_retry(&request_id)? {
                Some(accepted) => accepted,
                None => {
                    let version = make_version();
                    let seq = self.next_seq();
                    let write = ProvisionalWrite {
                        seq,
                        request_id: request_id.clone(),
                        version,
                        op,
                    };
                    // The log entry is the truth; the indexes are derived from it
                    // (and rebuilt from it at startup), so a crash between these
                    // writes leaves nothing inconsistent behind.
                    let pending = PendingWrite {
                        write,
                        accepted_at_ms,
                    };
                    let encoded = keys::encode(&pending);
                    let adding = encoded.len();
                    self.check_room(adding)?;
                    self.meta
                        .insert(keys::NEXT_SEQ_KEY, &keys::log_index_key(seq + 1))
                        .map_err(write_err)?;
                    self.log
                        .insert(keys::log_index_key(seq), encoded)
                        .map_err(write_err)?;
                    self.index(&pending.write)?;
                    self.pending.fetch_add(1, Ordering::Relaxed);
                    self.pending_bytes.fetch_add(adding, Ordering::Relaxed);
                    Accepted {
                        seq,
                        versions: item_versions(&pending.write.op, version),
                        deduplicated: false,
                    }
                }
            }
        };
        self.flusher.flush().await.map_err(write_err)?;
        Ok(accepted)
    }

    /// Whether a new write of `adding` encoded bytes fits both limits. Called
    /// under `accepting`, which every change of the counts holds, so the
    /// limits are exact; a retry of a pending write is not a new write and is
    /// answered even when the store is full.
    fn check_room(&self, adding: usize) -> Result<(), AcceptError> {
        if self.pending_count() >= MAX_PENDING_PROVISIONAL_WRITES {
            return Err(AcceptError::Full);
        }
        let pending = self.pending_bytes();
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
    fn pending_retry(&self, request_id: &[u8]) -> Result<Option<Accepted>, StorageError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let Some(seq) = self.requests.get(request_id).map_err(read_err)? else {
            return Ok(None);
        };
        let seq = keys::decode_u64(&seq).unwrap_or(0);
        let Some(bytes) = self.log.get(keys::log_index_key(seq)).map_err(read_err)? else {
            return Ok(None);
        };
        let pending: PendingWrite = keys::decode(&bytes).map_err(read_err)?;
        let versions = item_versions(&pending.write.op, pending.write.version);
        Ok(Some(Accepted {
            seq,
            versions,
            deduplicated: true,
        }))
    }

    /// Points the indexes (key, reading, request id) at `write`.
    fn index(&self, write: &ProvisionalWrite) -> Result<(), StorageError> {
        let (seq, version) = (write.seq, write.version);
        match &write.op {
            WriteOp::PutReadings(batch) => {
                for r in batch {
                    let value = StoredReading {
                        value: r.value,
                        tags: r.tags.clone(),
                        version,
                    };
                    self.readings
                        .insert(
                            keys::reading_key(&r.sensor_id, r.timestamp_ms),
                            keys::encode(&Indexed { seq, value }),
                        )
                        .map_err(write_err)?;
                }
            }
            WriteOp::Put { key, value } => {
                let value = StoredValue {
                    value: Some(value.clone()),
                    version,
                };
                self.kv
                    .insert(key.as_slice(), keys::encode(&Indexed { seq, value }))
                    .map_err(write_err)?;
            }
            WriteOp::Delete { key } | WriteOp::CompareAndSet { key, .. } => {
                let value = StoredValue {
                    value: None,
                    version,
                };
                self.kv
                    .insert(key.as_slice(), keys::encode(&Indexed { seq, value }))
                    .map_err(write_err)?;
            }
        }
        if !write.request_id.is_empty() {
            self.requests
                .insert(write.request_id.as_slice(), &keys::log_index_key(seq))
                .map_err(write_err)?;
        }
        Ok(())
    }

    /// Rebuilds the indexes from the pending writes (at startup: the log is
    /// the truth, the indexes may be behind it after a crash).
    fn rebuild_indexes(&self) -> Result<(), StorageError> {
        for tree in [&self.kv, &self.readings, &self.requests] {
            tree.clear().map_err(write_err)?;
        }
        let (mut count, mut bytes) = (0, 0);
        for row in self.log.iter() {
            let (_, value) = row.map_err(read_err)?;
            let pending: PendingWrite = keys::decode(&value).map_err(read_err)?;
            self.index(&pending.write)?;
            count += 1;
            bytes += value.len();
        }
        self.pending.store(count, Ordering::Relaxed);
        self.pending_bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// The oldest pending writes in seq order: at most `max_writes`, and at
    /// most about `max_bytes` encoded (always at least one).
    pub fn oldest(
        &self,
        max_writes: usize,
        max_bytes: usize,
    ) -> Result<Vec<ProvisionalWrite>, StorageError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for row in self.log.iter() {
            let (_, value) = row.map_err(read_err)?;
            if !batch.is_empty() && (batch.len() >= max_writes || bytes + value.len() > max_bytes) {
                break;
            }
            bytes += value.len();
            let pending: PendingWrite = keys::decode(&value).map_err(read_err)?;
            batch.push(pending.write);
        }
        Ok(batch)
    }

    /// Removes writes that are committed and applied on this node. An index
    /// entry is removed only by the write that put it there.
    pub fn remove(&self, writes: &[ProvisionalWrite]) -> Result<(), StorageError> {
        let _accepting = self.accepting.lock().unwrap_or_else(|e| e.into_inner());
        // `seq` is the first field of `Indexed`: decoding just it says which
        // write an index entry belongs to.
        let owned_by = |entry: Option<sled::IVec>, seq: u64| {
            entry.is_some_and(|bytes| {
                keys::decode::<u64>(&bytes)
                    .map(|s| s == seq)
                    .unwrap_or(false)
            })
        };
        for write in writes {
            match &write.op {
                WriteOp::PutReadings(batch) => {
                    for r in batch {
                        let key = keys::reading_key(&r.sensor_id, r.timestamp_ms);
                        if owned_by(self.readings.get(&key).map_err(read_err)?, write.seq) {
                            self.readings.remove(key).map_err(write_err)?;
                        }
                    }
                }
                WriteOp::Put { key, .. }
                | WriteOp::Delete { key }
                | WriteOp::CompareAndSet { key, .. } => {
                    if owned_by(self.kv.get(key).map_err(read_err)?, write.seq) {
                        self.kv.remove(key.as_slice()).map_err(write_err)?;
                    }
                }
            }
            let seq_key = keys::log_index_key(write.seq);
            if !write.request_id.is_empty()
                && self
                    .requests
                    .get(&write.request_id)
                    .map_err(read_err)?
                    .is_some_and(|s| *s == seq_key)
            {
                self.requests
                    .remove(write.request_id.as_slice())
                    .map_err(write_err)?;
            }
            if let Some(removed) = self.log.remove(seq_key).map_err(write_err)? {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                self.pending_bytes
                    .fetch_sub(removed.len(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    pub fn pending_count(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// The encoded bytes of the pending writes (see
    /// [`MAX_PENDING_PROVISIONAL_BYTES`]).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// When the oldest pending write was accepted (node wall clock, ms).
    pub fn oldest_accepted_at_ms(&self) -> Option<u64> {
        let (_, value) = self.log.first().ok().flatten()?;
        keys::decode::<PendingWrite>(&value)
            .ok()
            .map(|p| p.accepted_at_ms)
    }

    /// The newest pending value of a key, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageError> {
        match self.kv.get(key).map_err(read_err)? {
            Some(bytes) => Ok(Some(
                keys::decode::<Indexed<StoredValue>>(&bytes)
                    .map_err(read_err)?
                    .value,
            )),
            None => Ok(None),
        }
    }

    pub fn latest_reading(&self, sensor_id: &str) -> Result<Option<ReadingRow>, StorageError> {
        latest_row(&self.readings, sensor_id)
    }

    /// Pending readings of a sensor in `[from_ms, to_ms]`, in time order.
    pub fn range_readings(
        &self,
        sensor_id: &str,
        (from_ms, to_ms): (u64, u64),
        limit: usize,
        descending: bool,
    ) -> Result<Vec<ReadingRow>, StorageError> {
        range_rows(
            &self.readings,
            sensor_id,
            (from_ms, to_ms),
            limit,
            descending,
        )
    }
}

/// The newest row of `prov_readings` of a sensor.
fn latest_row(tree: &sled::Tree, sensor_id: &str) -> Result<Option<ReadingRow>, StorageError> {
    tree.scan_prefix(keys::sensor_prefix(sensor_id))
        .next_back()
        .map(decode_row)
        .transpose()
}

/// Up to `limit` rows of `prov_readings` of a sensor with
/// `from_ms <= ts <= to_ms`, in time order (newest first when `descending`).
fn range_rows(
    tree: &sled::Tree,
    sensor_id: &str,
    (from_ms, to_ms): (u64, u64),
    limit: usize,
    descending: bool,
) -> Result<Vec<ReadingRow>, StorageError> {
    if from_ms > to_ms {
        return Ok(Vec::new());
    }
    let range =
        tree.range(keys::reading_key(sensor_id, from_ms)..=keys::reading_key(sensor_id, to_ms));
    let rows: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    rows.take(limit).map(decode_row).collect()
}

fn decode_row(row: sled::Result<(sled::IVec, sled::IVec)>) -> Result<ReadingRow, StorageError> {
    let (key, value) = row.map_err(read_err)?;
    let timestamp_ms = keys::reading_key_timestamp(&key).ok_or_else(|| {
        read_err(std::io::Error::other(
            "reading key shorter than its timestamp",
        ))
    })?;
    Ok(ReadingRow {
        timestamp_ms,
        reading: keys::decode::<Indexed<StoredReading>>(&value)
            .map_err(read_err)?
            .value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FlushThreadExit;

    fn put(key: &str) -> WriteOp {
        WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
        }
    }

    /// A sled database at `path` with its flush thread, and the store on it.
    fn open_store(path: &std::path::Path) -> (sled::Db, ProvisionalStore, FlushThreadExit) {
        let db = sled::Config::new().path(path).open().expect("open");
        let (flusher, exit) = Flusher::for_sled(db.clone()).expect("flusher");
        let store = ProvisionalStore::open(&db, flusher).expect("store");
        (db, store, exit)
    }

    #[tokio::test]
    async fn the_pending_count_and_bytes_follow_accepts_retries_removals_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let version = || Version::default();
        let written = {
            let (db, store, exit) = open_store(&path);
            let mut written = Vec::new();
            for i in 0..5 {
                let accepted = store
                    .accept(
                        format!("r{i}").into_bytes(),
                        put(&format!("k{i}")),
                        version,
                        0,
                    )
                    .await
                    .expect("accept");
                written.push(accepted.seq);
            }
            // A retry is not a new pending write.
            let retry = store
                .accept(b"r0".to_vec(), put("k0"), version, 0)
                .await
                .expect("retry");
            assert!(retry.deduplicated);
            assert_eq!(store.pending_count(), 5);
            let oldest = store.oldest(2, usize::MAX).expect("oldest");
            store.remove(&oldest).expect("remove");
            // Removing twice changes nothing.
            store.remove(&oldest).expect("remove again");
            assert_eq!(store.pending_count(), 3);
            assert_eq!(store.pending_count(), store.log.len());
            assert_eq!(store.pending_bytes(), log_bytes(&store));
            drop(store);
            drop(db);
            exit.wait().await;
            written
        };
        let (_db, store, _exit) = open_store(&path);
        assert_eq!(store.pending_count(), 3);
        assert_eq!(store.pending_bytes(), log_bytes(&store));
        assert!(store.pending_bytes() > 0);
        assert_eq!(written.len(), 5);
    }

    fn log_bytes(store: &ProvisionalStore) -> usize {
        store.log.iter().map(|row| row.expect("row").1.len()).sum()
    }

    /// Past the byte limit a LOCAL write is refused, saying how full the store
    /// is; stored nothing; and once writes are reconciled (removed) writes
    /// are accepted again.
    #[tokio::test]
    async fn writes_past_the_byte_limit_are_refused_until_some_are_reconciled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_db, mut store, _exit) = open_store(&dir.path().join("db"));
        store.max_pending_bytes = 1_200; // three writes of 368 bytes fit
        let big = |key: &str| WriteOp::Put {
            key: key.as_bytes().to_vec(),
            value: vec![7; 300],
        };
        let accept = |i: usize| {
            let store = store.clone();
            async move {
                store
                    .accept(
                        format!("b{i}").into_bytes(),
                        big(&format!("k{i}")),
                        Version::default,
                        0,
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
        assert!(store.kv.get(b"k3").expect("get").is_none());
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
