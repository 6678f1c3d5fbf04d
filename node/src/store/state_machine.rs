//! The replicated state machine on sled (openraft `RaftStateMachine`):
//! generic keys, sensor readings and the request-id table.
//!
//! Invariant: applying an entry reads only the entry and the current state:
//! no clock, no randomness, no node-local configuration. Every replica that
//! applies the same log holds byte-identical trees.
//!
//! Each `apply` call commits one sled transaction over every state tree,
//! including `last_applied`, so a crash never leaves half an entry applied and
//! re-applying after a restart starts exactly where the state ends.

use std::io::Cursor;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use serde::Deserialize;
use serde::Serialize;
use sled::transaction::ConflictableTransactionError;
use sled::transaction::TransactionError;
use sled::transaction::TransactionalTree;
use sled::Transactional;

use super::io_err;
use super::keys;
use super::keys::AppMeta;
use super::keys::RememberedRequest;
use super::keys::StoredReading;
use super::keys::StoredValue;
use crate::hlc::HybridClock;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::types::Version;
use crate::types::WriteCommand;
use crate::types::WriteOp;
use crate::types::WriteOutcome;

/// How many request ids the state machine remembers. Retention is by apply
/// order only (the oldest is forgotten first), so every replica forgets the
/// same ids. At ~100 bytes an id this bounds the table near 10 MB; a client
/// retrying a write older than the last 100k writes is not protected.
pub const MAX_REMEMBERED_REQUESTS: u64 = 100_000;

/// The layout version of snapshot data, checked on install.
const SNAPSHOT_FORMAT: u32 = 1;
const SNAPSHOT_FILE: &str = "current.snapshot";
/// Set in `sm_meta` while a snapshot is being installed; found at startup it
/// means the install was interrupted and is redone from the snapshot file.
const INSTALLING_KEY: &[u8] = b"installing_snapshot";
/// Rows per sled batch when loading a snapshot, to bound memory per batch.
const SNAPSHOT_LOAD_BATCH_ROWS: usize = 10_000;

/// The trees that make up the state. Cheap to clone.
#[derive(Clone, Debug)]
struct StateTrees {
    meta: sled::Tree,
    kv: sled::Tree,
    readings: sled::Tree,
    request_ids: sled::Tree,
    request_order: sled::Tree,
}

impl StateTrees {
    fn open(db: &sled::Db) -> Result<Self, StorageError> {
        let open = |name| {
            db.open_tree(name)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
        };
        Ok(Self {
            meta: open(keys::SM_META_TREE)?,
            kv: open(keys::KV_TREE)?,
            readings: open(keys::READINGS_TREE)?,
            request_ids: open(keys::REQUEST_IDS_TREE)?,
            request_order: open(keys::REQUEST_ORDER_TREE)?,
        })
    }

    /// The trees whose rows a snapshot carries verbatim.
    fn data_trees(&self) -> [(&'static str, &sled::Tree); 4] {
        [
            (keys::KV_TREE, &self.kv),
            (keys::READINGS_TREE, &self.readings),
            (keys::REQUEST_IDS_TREE, &self.request_ids),
            (keys::REQUEST_ORDER_TREE, &self.request_order),
        ]
    }
}

/// A snapshot as stored on disk: openraft's metadata plus our payload bytes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// A tree's rows as stored: (key, value).
type TreeRows = Vec<(Vec<u8>, Vec<u8>)>;

/// The state at one applied log id, tree by tree, rows as stored.
#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    format: u32,
    app: AppMeta,
    trees: Vec<(String, TreeRows)>,
}

pub struct StateMachineStore {
    db: sled::Db,
    trees: StateTrees,
    snapshot_dir: PathBuf,
    clock: Arc<HybridClock>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    app: AppMeta,
}

/// Read access to the applied state, for the services. Reads see whatever has
/// been applied; the caller decides (by consistency level) when to read.
#[derive(Clone, Debug)]
pub struct ReadView {
    trees: StateTrees,
}

type TxResult<T> = Result<T, ConflictableTransactionError<bincode::Error>>;

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e)
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn tx_decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> TxResult<T> {
    keys::decode(bytes).map_err(ConflictableTransactionError::Abort)
}

/// DESIGN.md's merge rule for a STRONG write: it always replaces the current
/// value, with version `max(entry_version, current_version + 1)`.
pub fn strong_write_version(entry_version: Version, current: Option<Version>) -> Version {
    match current {
        Some(current) => entry_version.max(current.successor(entry_version.origin_node)),
        None => entry_version,
    }
}

impl StateMachineStore {
    pub fn open(
        db: &sled::Db,
        snapshot_dir: &Path,
        clock: Arc<HybridClock>,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(sm_write_err)?;
        let trees = StateTrees::open(db)?;
        let read = |key: &[u8]| trees.meta.get(key).map_err(sm_read_err);
        let mut store = Self {
            db: db.clone(),
            snapshot_dir: snapshot_dir.to_path_buf(),
            clock,
            last_applied: match read(keys::LAST_APPLIED_KEY)? {
                Some(bytes) => keys::decode(&bytes).map_err(sm_read_err)?,
                None => None,
            },
            last_membership: match read(keys::LAST_MEMBERSHIP_KEY)? {
                Some(bytes) => keys::decode(&bytes).map_err(sm_read_err)?,
                None => StoredMembership::default(),
            },
            app: match read(keys::APP_META_KEY)? {
                Some(bytes) => keys::decode(&bytes).map_err(sm_read_err)?,
                None => AppMeta::default(),
            },
            trees,
        };
        if store
            .trees
            .meta
            .contains_key(INSTALLING_KEY)
            .map_err(sm_read_err)?
        {
            tracing::warn!(
                "an interrupted snapshot install was found; installing the snapshot again"
            );
            let snapshot = store.read_snapshot_file()?.ok_or_else(|| {
                sm_read_err(std::io::Error::other(
                    "snapshot install was interrupted and the snapshot file is missing",
                ))
            })?;
            store.load_snapshot(&snapshot.meta, &snapshot.data)?;
        }
        store.clock.observe(store.app.max_version);
        Ok(store)
    }

    pub fn read_view(&self) -> ReadView {
        ReadView {
            trees: self.trees.clone(),
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(SNAPSHOT_FILE)
    }

    fn read_snapshot_file(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let bytes = match std::fs::read(self.snapshot_path()) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)),
        };
        keys::decode(&bytes)
            .map(Some)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
    }

    /// Replaces the state with a snapshot's. Crash-safe through the
    /// `INSTALLING_KEY` marker: the snapshot file is written before the
    /// marker, and the marker removed only after the state is complete.
    fn load_snapshot(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let payload: SnapshotPayload =
            keys::decode(data).map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        if payload.format != SNAPSHOT_FORMAT {
            return Err(io_err(
                subject(),
                ErrorVerb::Read,
                std::io::Error::other(format!(
                    "snapshot format {} is not {SNAPSHOT_FORMAT}",
                    payload.format
                )),
            ));
        }
        self.trees
            .meta
            .insert(INSTALLING_KEY, &[])
            .map_err(sm_write_err)?;
        for (name, tree) in self.trees.data_trees() {
            tree.clear().map_err(sm_write_err)?;
            let Some((_, rows)) = payload.trees.iter().find(|(n, _)| n == name) else {
                continue;
            };
            for chunk in rows.chunks(SNAPSHOT_LOAD_BATCH_ROWS) {
                let mut batch = sled::Batch::default();
                for (key, value) in chunk {
                    batch.insert(key.as_slice(), value.as_slice());
                }
                tree.apply_batch(batch).map_err(sm_write_err)?;
            }
        }
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.app = payload.app;
        let mut batch = sled::Batch::default();
        batch.insert(keys::LAST_APPLIED_KEY, keys::encode(&self.last_applied));
        batch.insert(
            keys::LAST_MEMBERSHIP_KEY,
            keys::encode(&self.last_membership),
        );
        batch.insert(keys::APP_META_KEY, keys::encode(&self.app));
        batch.remove(INSTALLING_KEY);
        self.trees.meta.apply_batch(batch).map_err(sm_write_err)?;
        self.db.flush().map_err(sm_write_err)?;
        self.clock.observe(self.app.max_version);
        Ok(())
    }

    fn write_snapshot_file(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        SnapshotFileWriter {
            dir: self.snapshot_dir.clone(),
        }
        .write(snapshot)
    }

    /// Applies entries in one transaction and returns one result per entry.
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<Vec<CommandResult>, StorageError> {
        let t = &self.trees;
        let start_app = self.app.clone();
        let start_membership = self.last_membership.clone();
        let outcome = (
            &t.meta,
            &t.kv,
            &t.readings,
            &t.request_ids,
            &t.request_order,
        )
            .transaction(|(meta, kv, readings, request_ids, request_order)| {
                let mut app = start_app.clone();
                let mut membership = start_membership.clone();
                let mut last_applied = None;
                let mut results = Vec::with_capacity(entries.len());
                for entry in &entries {
                    last_applied = Some(entry.log_id);
                    let result = match &entry.payload {
                        EntryPayload::Blank => CommandResult::None,
                        EntryPayload::Membership(m) => {
                            membership = StoredMembership::new(Some(entry.log_id), m.clone());
                            CommandResult::None
                        }
                        EntryPayload::Normal(Command::Write(write)) => CommandResult::Write(
                            apply_write(kv, readings, request_ids, request_order, &mut app, write)?,
                        ),
                    };
                    results.push(result);
                }
                meta.insert(keys::LAST_APPLIED_KEY, keys::encode(&last_applied))?;
                meta.insert(keys::LAST_MEMBERSHIP_KEY, keys::encode(&membership))?;
                meta.insert(keys::APP_META_KEY, keys::encode(&app))?;
                Ok((results, app, membership, last_applied))
            });
        let (results, app, membership, last_applied) = outcome.map_err(|e| match e {
            TransactionError::Abort(e) => sm_write_err(e),
            TransactionError::Storage(e) => sm_write_err(e),
        })?;
        if last_applied.is_some() {
            self.last_applied = last_applied;
        }
        self.last_membership = membership;
        self.app = app;
        self.clock.observe(self.app.max_version);
        Ok(results)
    }

    /// A consistent copy of the state, taken between two `apply` calls.
    fn copy_state(&self) -> Result<SnapshotPayload, StorageError> {
        let mut trees = Vec::new();
        for (name, tree) in self.trees.data_trees() {
            let mut rows = Vec::with_capacity(tree.len());
            for row in tree.iter() {
                let (key, value) = row.map_err(sm_read_err)?;
                rows.push((key.to_vec(), value.to_vec()));
            }
            trees.push((name.to_string(), rows));
        }
        Ok(SnapshotPayload {
            format: SNAPSHOT_FORMAT,
            app: self.app.clone(),
            trees,
        })
    }
}

/// One client write inside the apply transaction.
fn apply_write(
    kv: &TransactionalTree,
    readings: &TransactionalTree,
    request_ids: &TransactionalTree,
    request_order: &TransactionalTree,
    app: &mut AppMeta,
    write: &WriteCommand,
) -> TxResult<WriteOutcome> {
    if !write.request_id.is_empty() {
        if let Some(bytes) = request_ids.get(&write.request_id)? {
            let remembered: RememberedRequest = tx_decode(&bytes)?;
            return Ok(WriteOutcome {
                deduplicated: true,
                ..remembered.outcome
            });
        }
    }
    let mut outcome = WriteOutcome::default();
    match &write.op {
        WriteOp::PutReadings(batch) => {
            for reading in batch {
                let key = keys::reading_key(&reading.sensor_id, reading.timestamp_ms);
                let current = match readings.get(&key)? {
                    Some(bytes) => Some(tx_decode::<StoredReading>(&bytes)?.version),
                    None => None,
                };
                let version = strong_write_version(write.version, current);
                let stored = StoredReading {
                    value: reading.value,
                    tags: reading.tags.clone(),
                    version,
                };
                readings.insert(key, keys::encode(&stored))?;
                outcome.versions.push(version);
            }
        }
        WriteOp::Put { key, value } => {
            let current = match kv.get(key)? {
                Some(bytes) => Some(tx_decode::<StoredValue>(&bytes)?),
                None => None,
            };
            let version = strong_write_version(write.version, current.as_ref().map(|c| c.version));
            outcome.existed = current.is_some_and(|c| c.value.is_some());
            kv.insert(
                key.as_slice(),
                keys::encode(&StoredValue {
                    value: Some(value.clone()),
                    version,
                }),
            )?;
            outcome.versions.push(version);
        }
        WriteOp::Delete { key } => {
            let current = match kv.get(key)? {
                Some(bytes) => Some(tx_decode::<StoredValue>(&bytes)?),
                None => None,
            };
            let version = strong_write_version(write.version, current.as_ref().map(|c| c.version));
            outcome.existed = current.is_some_and(|c| c.value.is_some());
            kv.insert(
                key.as_slice(),
                keys::encode(&StoredValue {
                    value: None,
                    version,
                }),
            )?;
            outcome.versions.push(version);
        }
    }
    if let Some(max) = outcome.versions.iter().max() {
        app.max_version = app.max_version.max(*max);
    }
    if !write.request_id.is_empty() {
        remember_request(request_ids, request_order, app, &write.request_id, &outcome)?;
    }
    Ok(outcome)
}

/// Records a request id's outcome and forgets the oldest ids beyond
/// `MAX_REMEMBERED_REQUESTS`. Deterministic: driven by apply order alone.
fn remember_request(
    request_ids: &TransactionalTree,
    request_order: &TransactionalTree,
    app: &mut AppMeta,
    request_id: &[u8],
    outcome: &WriteOutcome,
) -> TxResult<()> {
    let sequence = app.next_request_sequence;
    let remembered = RememberedRequest {
        sequence,
        outcome: outcome.clone(),
    };
    request_ids.insert(request_id, keys::encode(&remembered))?;
    request_order.insert(&keys::log_index_key(sequence), request_id)?;
    app.next_request_sequence += 1;
    while app.next_request_sequence - app.oldest_request_sequence > MAX_REMEMBERED_REQUESTS {
        if let Some(old_id) =
            request_order.remove(&keys::log_index_key(app.oldest_request_sequence))?
        {
            request_ids.remove(old_id)?;
        }
        app.oldest_request_sequence += 1;
    }
    Ok(())
}

/// Builds snapshots from a copy taken on the state machine task (so it is
/// consistent with one applied log id) and persists them as a file.
pub struct SnapshotBuilder {
    db: sled::Db,
    store_dir: PathBuf,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    payload: Result<SnapshotPayload, StorageError>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let payload = std::mem::replace(
            &mut self.payload,
            Err(sm_read_err(std::io::Error::other("snapshot already built"))),
        )?;
        let data = keys::encode(&payload);
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{unique}", id.leader_id.term, id.index),
            None => format!("0-0-{unique}"),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // The state the snapshot covers must be on disk before openraft purges
        // the log entries it replaces.
        self.db.flush_async().await.map_err(sm_write_err)?;
        let writer = SnapshotFileWriter {
            dir: self.store_dir.clone(),
        };
        writer.write(&stored)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

/// Writes snapshot files atomically (temporary file, fsync, rename, fsync dir).
struct SnapshotFileWriter {
    dir: PathBuf,
}

impl SnapshotFileWriter {
    fn write(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        use std::io::Write;
        let err = |e: std::io::Error| {
            io_err(
                ErrorSubject::Snapshot(Some(snapshot.meta.signature())),
                ErrorVerb::Write,
                e,
            )
        };
        let temporary = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let mut file = std::fs::File::create(&temporary).map_err(err)?;
        file.write_all(&keys::encode(snapshot)).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&temporary, self.dir.join(SNAPSHOT_FILE)).map_err(err)?;
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries.into_iter().collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            store_dir: self.snapshot_dir.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            payload: self.copy_state(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        self.write_snapshot_file(&stored)?;
        self.load_snapshot(meta, &stored.data)?;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.read_snapshot_file()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// One reading as the read API returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadingRow {
    pub timestamp_ms: u64,
    pub reading: StoredReading,
}

impl ReadView {
    pub fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageError> {
        match self.trees.kv.get(key).map_err(sm_read_err)? {
            Some(bytes) => keys::decode(&bytes).map(Some).map_err(sm_read_err),
            None => Ok(None),
        }
    }

    pub fn latest_reading(&self, sensor_id: &str) -> Result<Option<ReadingRow>, StorageError> {
        match self
            .trees
            .readings
            .scan_prefix(keys::sensor_prefix(sensor_id))
            .next_back()
        {
            Some(row) => decode_reading_row(row).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` readings of a sensor with `from_ms <= ts <= to_ms`, in
    /// time order (newest first when `descending`).
    pub fn range_readings(
        &self,
        sensor_id: &str,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<ReadingRow>, StorageError> {
        if from_ms > to_ms {
            return Ok(Vec::new());
        }
        let range = self
            .trees
            .readings
            .range(keys::reading_key(sensor_id, from_ms)..=keys::reading_key(sensor_id, to_ms));
        let rows: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if descending {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        rows.take(limit).map(decode_reading_row).collect()
    }
}

fn decode_reading_row(
    row: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<ReadingRow, StorageError> {
    let (key, value) = row.map_err(sm_read_err)?;
    let timestamp_ms = keys::reading_key_timestamp(&key).ok_or_else(|| {
        sm_read_err(std::io::Error::other(
            "reading key shorter than its timestamp",
        ))
    })?;
    Ok(ReadingRow {
        timestamp_ms,
        reading: keys::decode(&value).map_err(sm_read_err)?,
    })
}
