//! The replicated state machine on sled (openraft `RaftStateMachine`):
//! generic keys, sensor readings and the remembered request ids.
//!
//! Invariant: applying an entry reads only the entry and the current state:
//! no clock, no randomness, no node-local configuration. Every replica that
//! applies the same log holds byte-identical trees.
//!
//! Each `apply` call stages its writes to every state tree, including
//! `last_applied`, and commits them atomically (`staged.rs`: an intent, then
//! plain sled writes, redone at open if a crash cut them), so a crash never
//! leaves half an entry applied and re-applying after a restart starts
//! exactly where the state ends.
//!
//! Readings are stored in blocks of one sensor's readings (`blocks.rs`): an
//! apply call reads each block it touches once and writes it once. Request
//! ids are remembered in one row per log entry, found through an in-memory
//! index (`remembered.rs`).

use std::io::Cursor;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::RwLock;

use super::blocks;
use super::blocks::BlockError;
use super::blocks::BlockWriter;
use super::io_err;
use super::keys;
use super::keys::AppMeta;
use super::keys::ConflictRecord;
use super::keys::ConflictTarget;
use super::keys::ReadingRow;
use super::keys::StoredReading;
use super::keys::StoredValue;
use super::remembered;
use super::remembered::RememberedIndex;
use super::remembered::RememberedWriter;
use super::staged;
use super::staged::Staged;
use super::staged::StateError;
use super::staged::StateTree;
use super::Flusher;
use crate::hlc::HybridClock;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Entry;
use crate::types::Expected;
use crate::types::LogId;
use crate::types::NodeId;
use crate::types::ProvisionalWrite;
use crate::types::ReconcileOutcome;
use crate::types::SnapshotMeta;
use crate::types::StorageError;
use crate::types::StoredMembership;
use crate::types::TypeConfig;
use crate::types::Version;
use crate::types::WriteCommand;
use crate::types::WriteOp;
use crate::types::WriteOutcome;
use openraft::storage::RaftStateMachine;
use openraft::storage::Snapshot;
use openraft::EntryPayload;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use serde::Deserialize;
use serde::Serialize;

pub use super::remembered::MAX_REMEMBERED_REQUESTS;

/// How many conflict records the state machine keeps (the newest). Dropped
/// by apply order, so every replica keeps the same ones; `conflicts_total`
/// still counts all of them.
pub const MAX_CONFLICT_RECORDS: u64 = 10_000;

/// The layout version of snapshot data, checked on install. Format 4 has
/// request ids in one row per entry (`remembered_requests`). Older formats
/// are still installed: format 3 (readings in blocks, request ids in
/// `request_ids`) and format 2 (one row per reading as well), their rows
/// rebuilt into today's layout.
const SNAPSHOT_FORMAT: u32 = 4;
const OLDEST_SNAPSHOT_FORMAT: u32 = 2;
const SNAPSHOT_FILE: &str = "current.snapshot";
/// Set in `sm_meta` while a snapshot is being installed; found at startup it
/// means the install was interrupted and is redone from the snapshot file.
const INSTALLING_KEY: &[u8] = b"installing_snapshot";
/// Rows per sled batch when loading a snapshot, to bound memory per batch.
const SNAPSHOT_LOAD_BATCH_ROWS: usize = 10_000;

/// Held for writing while an apply that writes readings (or a snapshot
/// install) changes `reading_blocks`, and for reading during a range read of
/// it: a split moves readings between rows and a sled iterator is not a
/// snapshot, so an overlapping range read could see moved readings twice or
/// not at all. Point reads (`latest`) read one row and need no gate.
type ReadingsGate = Arc<RwLock<()>>;

/// The trees that make up the state, and what guards reading them. Cheap to
/// clone.
#[derive(Clone, Debug)]
struct StateTrees {
    state: staged::Trees,
    readings_gate: ReadingsGate,
    /// Set when an apply call's commit failed part-way: the trees may hold
    /// part of it until the open redoes it, so reads refuse from then on.
    failed: Arc<AtomicBool>,
}

impl StateTrees {
    fn open(db: &sled::Db) -> Result<Self, StorageError> {
        Ok(Self {
            state: staged::Trees::open(db)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?,
            readings_gate: ReadingsGate::default(),
            failed: Arc::default(),
        })
    }

    /// The trees whose rows a snapshot carries verbatim.
    fn data_trees(&self) -> [(&'static str, &sled::Tree); 4] {
        let state = &self.state;
        [
            (keys::KV_TREE, &state.kv),
            (keys::READING_BLOCKS_TREE, &state.readings),
            (keys::REMEMBERED_TREE, &state.remembered),
            (keys::CONFLICTS_TREE, &state.conflicts),
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
    flusher: Flusher,
    trees: StateTrees,
    snapshot_dir: PathBuf,
    clock: Arc<HybridClock>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    app: AppMeta,
    /// Where each remembered request id is (rebuilt at open and install).
    remembered: RememberedIndex,
    /// [`MAX_REMEMBERED_REQUESTS`], smaller in tests.
    remembered_limit: u64,
    /// Apply calls committed since the store opened (numbers their intents).
    commits: u64,
    /// Tests: apply calls stop after their intent, as if the node crashed.
    #[cfg(test)]
    crash_before_writes: bool,
}

/// Read access to the applied state, for the services. Reads see whatever has
/// been applied; the caller decides (by consistency level) when to read.
#[derive(Clone, Debug)]
pub struct ReadView {
    trees: StateTrees,
}

type ApplyResult<T> = Result<T, StateError>;

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e)
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e)
}

fn write_gate(gate: &RwLock<()>) -> std::sync::RwLockWriteGuard<'_, ()> {
    gate.write().unwrap_or_else(|e| e.into_inner())
}

/// DESIGN.md's merge rule for a STRONG write: it always replaces the current
/// value, with version `max(entry_version, current_version + 1)`.
pub fn strong_write_version(entry_version: Version, current: Option<Version>) -> Version {
    match current {
        Some(current) => entry_version.max(current.successor(entry_version.origin_node)),
        None => entry_version,
    }
}

/// Whether [`merge_decision`] replaces whatever the key holds with
/// `incoming`'s own version, when every stored version is at most
/// `max_stored`, so that the key need not be read. A STRONG write stamped at
/// or past `max_stored`'s successor is past every current version's
/// successor ([`strong_write_version`]); a reconciled write past every
/// stored version wins last-writer-wins outright.
pub fn write_ignores_current(rule: Merge, incoming: Version, max_stored: Version) -> bool {
    match rule {
        Merge::Strong => incoming >= max_stored.successor(incoming.origin_node),
        Merge::LastWriterWins => incoming > max_stored,
    }
}

/// How an entry's write meets the current value of one key or reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// A STRONG write: follows log order.
    Strong,
    /// A reconciled provisional write: last writer wins on the version.
    LastWriterWins,
}

/// The outcome of merging one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeDecision {
    /// Store the item with this version.
    Replace(Version),
    /// Keep the current value; the incoming write lost to `winner`.
    Superseded { winner: Version },
}

/// DESIGN.md's merge rule, for one item. Reads nothing but its arguments.
pub fn merge_decision(rule: Merge, incoming: Version, current: Option<Version>) -> MergeDecision {
    match (rule, current) {
        (Merge::Strong, current) => MergeDecision::Replace(strong_write_version(incoming, current)),
        (Merge::LastWriterWins, Some(current)) if current >= incoming => {
            MergeDecision::Superseded { winner: current }
        }
        (Merge::LastWriterWins, _) => MergeDecision::Replace(incoming),
    }
}

impl StateMachineStore {
    pub fn open(
        db: &sled::Db,
        flusher: Flusher,
        snapshot_dir: &Path,
        clock: Arc<HybridClock>,
    ) -> Result<Self, StorageError> {
        std::fs::create_dir_all(snapshot_dir).map_err(sm_write_err)?;
        let trees = StateTrees::open(db)?;
        // Before anything reads the state. (An interrupted snapshot install,
        // below, is redone over whatever this leaves.)
        let redone = staged::recover(&trees.state).map_err(sm_write_err)?;
        if redone > 0 {
            tracing::info!(
                writes = redone,
                "completed the last apply, which a crash had cut short"
            );
        }
        let read = |key: &[u8]| trees.state.meta.get(key).map_err(sm_read_err);
        let mut store = Self {
            db: db.clone(),
            flusher,
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
            remembered: RememberedIndex::default(),
            remembered_limit: MAX_REMEMBERED_REQUESTS,
            commits: 0,
            #[cfg(test)]
            crash_before_writes: false,
            trees,
        };
        if store
            .trees
            .state
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
        store.migrate_legacy_readings()?;
        store.migrate_legacy_requests()?;
        store.remembered =
            RememberedIndex::load(&store.trees.state.remembered).map_err(sm_read_err)?;
        store.clock.observe(store.app.max_version);
        Ok(store)
    }

    /// Rebuilds a data directory's one-row-per-reading tree (the layout
    /// before blocks) into blocks, then drops it. Crash-safe: the old tree
    /// is dropped only after the blocks are flushed, and an interrupted
    /// rebuild starts over from an empty block tree.
    fn migrate_legacy_readings(&mut self) -> Result<(), StorageError> {
        if !self.has_legacy_readings() {
            return Ok(());
        }
        let legacy = keys::LEGACY_READINGS_TREE;
        let old = self.db.open_tree(legacy).map_err(sm_read_err)?;
        self.trees.state.readings.clear().map_err(sm_write_err)?;
        let count = blocks::rebuild(
            &self.trees.state.readings,
            old.iter()
                .map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec()))),
        )
        .map_err(sm_write_err)?;
        self.db.flush().map_err(sm_write_err)?;
        self.db.drop_tree(legacy).map_err(sm_write_err)?;
        self.db.flush().map_err(sm_write_err)?;
        tracing::info!(
            readings = count,
            "rebuilt the readings of an older data directory into blocks"
        );
        Ok(())
    }

    /// Rebuilds the request-id table of an older data directory (one row
    /// per id, plus an order tree) into one row per id of
    /// `remembered_requests`, then drops the old trees. Crash-safe as
    /// [`migrate_legacy_readings`](Self::migrate_legacy_readings).
    fn migrate_legacy_requests(&mut self) -> Result<(), StorageError> {
        if !self.has_tree(keys::LEGACY_REQUEST_IDS_TREE) {
            return Ok(());
        }
        let old = self
            .db
            .open_tree(keys::LEGACY_REQUEST_IDS_TREE)
            .map_err(sm_read_err)?;
        self.trees.state.remembered.clear().map_err(sm_write_err)?;
        let rows = remembered::rows_from_legacy(
            old.iter()
                .map(|row| row.map(|(k, v)| (k.to_vec(), v.to_vec()))),
        )
        .map_err(sm_read_err)?;
        let count = rows.len();
        load_remembered_rows(&self.trees.state.remembered, rows)?;
        self.db.flush().map_err(sm_write_err)?;
        self.drop_legacy_request_trees()?;
        self.db.flush().map_err(sm_write_err)?;
        tracing::info!(
            request_ids = count,
            "rebuilt the request ids of an older data directory into remembered_requests"
        );
        Ok(())
    }

    fn drop_legacy_request_trees(&self) -> Result<(), StorageError> {
        // `request_ids` last: while it exists the migration runs again and
        // drops whatever is left.
        for legacy in [
            keys::LEGACY_REQUEST_ORDER_TREE,
            keys::LEGACY_REQUEST_IDS_TREE,
        ] {
            if self.has_tree(legacy) {
                self.db.drop_tree(legacy).map_err(sm_write_err)?;
            }
        }
        Ok(())
    }

    /// Whether an older build's one-row-per-reading tree is in the database.
    fn has_legacy_readings(&self) -> bool {
        self.has_tree(keys::LEGACY_READINGS_TREE)
    }

    fn has_tree(&self, name: &str) -> bool {
        self.db
            .tree_names()
            .iter()
            .any(|tree| tree == name.as_bytes())
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
        let mut payload: SnapshotPayload =
            keys::decode(data).map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        if !(OLDEST_SNAPSHOT_FORMAT..=SNAPSHOT_FORMAT).contains(&payload.format) {
            return Err(io_err(
                subject(),
                ErrorVerb::Read,
                std::io::Error::other(format!(
                    "snapshot format {} is not one this build installs ({OLDEST_SNAPSHOT_FORMAT} to {SNAPSHOT_FORMAT})",
                    payload.format
                )),
            ));
        }
        let gate = self.trees.readings_gate.clone();
        let _gate = write_gate(&gate);
        self.trees
            .state
            .meta
            .insert(INSTALLING_KEY, &[])
            .map_err(sm_write_err)?;
        // An apply's intent is about the state replaced here: redoing it at
        // the next open would write an old apply over the snapshot.
        staged::discard(&self.trees.state).map_err(sm_write_err)?;
        for (name, tree) in self.trees.data_trees() {
            tree.clear().map_err(sm_write_err)?;
            let Some((_, rows)) = payload.trees.iter().find(|(n, _)| n == name) else {
                continue;
            };
            insert_in_batches(tree, rows.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        }
        if let Some(at) = payload
            .trees
            .iter()
            .position(|(name, _)| name == keys::LEGACY_READINGS_TREE)
        {
            let (_, rows) = payload.trees.swap_remove(at);
            blocks::rebuild(
                &self.trees.state.readings,
                rows.into_iter().map(Ok::<_, BlockError>),
            )
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        }
        if let Some(at) = payload
            .trees
            .iter()
            .position(|(name, _)| name == keys::LEGACY_REQUEST_IDS_TREE)
        {
            let (_, rows) = payload.trees.swap_remove(at);
            let rows = remembered::rows_from_legacy(rows.into_iter().map(Ok))
                .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
            load_remembered_rows(&self.trees.state.remembered, rows)?;
        }
        // Trees an older build left are superseded by the snapshot; dropped
        // before the marker, so a crash here redoes the install rather than
        // rebuilding an old tree over the snapshot at the next open.
        if self.has_legacy_readings() {
            self.db
                .drop_tree(keys::LEGACY_READINGS_TREE)
                .map_err(sm_write_err)?;
        }
        self.drop_legacy_request_trees()?;
        self.remembered =
            RememberedIndex::load(&self.trees.state.remembered).map_err(sm_read_err)?;
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
        self.trees
            .state
            .meta
            .apply_batch(batch)
            .map_err(sm_write_err)?;
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

    /// Applies entries as one staged commit and returns one result per
    /// entry.
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<Vec<CommandResult>, StorageError> {
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        let last_applied = Some(last.log_id);
        let t = &self.trees;
        let writes_readings = entries.iter().any(entry_writes_readings);
        let _gate = writes_readings.then(|| write_gate(&t.readings_gate));
        let mut applier = Applier {
            staged: Staged::new(&t.state),
            readings: BlockWriter::new(&t.state.readings),
            remembered: RememberedWriter::new(&self.remembered, self.remembered_limit),
            app: self.app.clone(),
            log_index: 0,
        };
        let mut membership = self.last_membership.clone();
        let mut results = Vec::with_capacity(entries.len());
        for entry in &entries {
            applier.log_index = entry.log_id.index;
            let result = match &entry.payload {
                EntryPayload::Blank => Ok(CommandResult::None),
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Ok(CommandResult::None)
                }
                EntryPayload::Normal(Command::Write(write)) => {
                    applier.strong_write(write).map(CommandResult::Write)
                }
                EntryPayload::Normal(Command::Writes(writes)) => writes
                    .iter()
                    .map(|write| applier.strong_write(write))
                    .collect::<Result<_, _>>()
                    .map(CommandResult::Writes),
                EntryPayload::Normal(Command::Reconcile { origin, writes }) => applier
                    .reconcile(*origin, writes)
                    .map(CommandResult::Reconciled),
            };
            results.push(result.map_err(sm_write_err)?);
            applier
                .remembered
                .end_entry(&mut applier.staged, &mut applier.app)
                .map_err(sm_write_err)?;
        }
        let Applier {
            mut staged,
            readings: blocks,
            remembered,
            app,
            ..
        } = applier;
        for (key, block) in blocks.into_dirty() {
            staged.insert(StateTree::Readings, key, block);
        }
        staged.insert(
            StateTree::Meta,
            keys::LAST_APPLIED_KEY,
            keys::encode(&last_applied),
        );
        staged.insert(
            StateTree::Meta,
            keys::LAST_MEMBERSHIP_KEY,
            keys::encode(&membership),
        );
        staged.insert(StateTree::Meta, keys::APP_META_KEY, keys::encode(&app));
        let changes = remembered.into_changes();
        self.commits += 1;
        #[cfg(test)]
        if self.crash_before_writes {
            staged
                .write_intent_only(self.commits)
                .map_err(sm_write_err)?;
            return Err(sm_write_err(std::io::Error::other("simulated crash")));
        }
        if let Err(error) = staged.commit(self.commits) {
            // openraft stops on this error; until the node restarts (and
            // the open redoes the intent) no read may see the half commit.
            self.trees.failed.store(true, Ordering::Release);
            return Err(sm_write_err(error));
        }
        self.last_applied = last_applied;
        self.last_membership = membership;
        self.app = app;
        self.remembered.publish(changes);
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

/// Writes rows into `tree`, [`SNAPSHOT_LOAD_BATCH_ROWS`] per sled batch.
fn insert_in_batches<K, V>(
    tree: &sled::Tree,
    rows: impl IntoIterator<Item = (K, V)>,
) -> Result<(), StorageError>
where
    K: Into<sled::IVec>,
    V: Into<sled::IVec>,
{
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut batch = sled::Batch::default();
        for (key, value) in rows.by_ref().take(SNAPSHOT_LOAD_BATCH_ROWS) {
            batch.insert(key, value);
        }
        tree.apply_batch(batch).map_err(sm_write_err)?;
    }
    Ok(())
}

/// Writes rebuilt remembered-request rows (a migration or an older
/// snapshot).
fn load_remembered_rows(
    tree: &sled::Tree,
    rows: Vec<(u64, remembered::RememberedRow)>,
) -> Result<(), StorageError> {
    insert_in_batches(
        tree,
        rows.iter()
            .map(|(sequence, row)| (keys::log_index_key(*sequence).to_vec(), keys::encode(row))),
    )
}

/// Whether applying the entry may write readings.
fn entry_writes_readings(entry: &Entry) -> bool {
    let is_readings = |op: &WriteOp| matches!(op, WriteOp::PutReadings(_));
    match &entry.payload {
        EntryPayload::Normal(Command::Write(write)) => is_readings(&write.op),
        EntryPayload::Normal(Command::Writes(writes)) => writes.iter().any(|w| is_readings(&w.op)),
        EntryPayload::Normal(Command::Reconcile { writes, .. }) => {
            writes.iter().any(|w| is_readings(&w.op))
        }
        _ => false,
    }
}

/// Applies commands of one apply call into its staged writes. Reading
/// blocks are changed in memory and staged at the end of the call.
struct Applier<'a> {
    staged: Staged<'a>,
    readings: BlockWriter<'a>,
    remembered: RememberedWriter<'a>,
    app: AppMeta,
    /// The index of the entry being applied.
    log_index: u64,
}

/// Who wrote an item: how it merges, and for a provisional write its id
/// (origin, seq), recorded in the conflict log when it loses.
#[derive(Clone, Copy)]
struct Writer {
    rule: Merge,
    write_id: Option<(NodeId, u64)>,
}

impl Applier<'_> {
    fn remembered(&self, request_id: &[u8]) -> ApplyResult<Option<WriteOutcome>> {
        self.remembered.lookup(&self.staged, request_id, &self.app)
    }

    fn remember(&mut self, request_id: &[u8], outcome: &WriteOutcome) {
        self.remembered.remember(request_id, outcome, &mut self.app);
    }

    /// A STRONG write (including compare-and-set), deduplicated by request id.
    fn strong_write(&mut self, write: &WriteCommand) -> ApplyResult<WriteOutcome> {
        if let Some(outcome) = self.remembered(&write.request_id)? {
            return Ok(WriteOutcome {
                deduplicated: true,
                ..outcome
            });
        }
        let writer = Writer {
            rule: Merge::Strong,
            write_id: None,
        };
        let outcome = self.write_op(&write.op, write.version, writer)?;
        self.remember(&write.request_id, &outcome);
        Ok(outcome)
    }

    /// A batch of provisional writes from `origin`, in seq order. Idempotent:
    /// a write at or below the origin's high-water mark, or whose request id
    /// is remembered, was applied before and is skipped.
    fn reconcile(
        &mut self,
        origin: NodeId,
        writes: &[ProvisionalWrite],
    ) -> ApplyResult<ReconcileOutcome> {
        let mut outcome = ReconcileOutcome::default();
        for write in writes {
            let high_water = self.app.reconciled_seq.get(&origin).copied().unwrap_or(0);
            if write.seq <= high_water {
                outcome.skipped += 1;
                continue;
            }
            self.app.reconciled_seq.insert(origin, write.seq);
            // The same logical write may be committed already: through a
            // STRONG attempt, or through another node's provisional store.
            if self.remembered(&write.request_id)?.is_some() {
                outcome.skipped += 1;
                continue;
            }
            let conflicts_before = self.app.conflicts_total;
            let writer = Writer {
                rule: Merge::LastWriterWins,
                write_id: Some((origin, write.seq)),
            };
            let result = self.write_op(&write.op, write.version, writer)?;
            self.remember(&write.request_id, &result);
            let lost = self.app.conflicts_total - conflicts_before;
            outcome.superseded += lost;
            if lost == 0 {
                outcome.applied += 1;
            }
        }
        Ok(outcome)
    }

    fn write_op(
        &mut self,
        op: &WriteOp,
        version: Version,
        writer: Writer,
    ) -> ApplyResult<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        match op {
            WriteOp::PutReadings(batch) => {
                let mut prefix = Vec::new();
                for reading in batch {
                    keys::set_sensor_prefix(&mut prefix, &reading.sensor_id);
                    let ts = reading.timestamp_ms;
                    let current = self.readings.version(&prefix, ts)?;
                    let kept = match merge_decision(writer.rule, version, current) {
                        MergeDecision::Replace(version) => {
                            let row = ReadingRow {
                                timestamp_ms: ts,
                                reading: StoredReading {
                                    value: reading.value,
                                    tags: reading.tags.clone(),
                                    version,
                                },
                            };
                            self.readings.put(&prefix, row)?;
                            version
                        }
                        MergeDecision::Superseded { winner } => {
                            let target = ConflictTarget::Reading {
                                sensor_id: reading.sensor_id.clone(),
                                timestamp_ms: reading.timestamp_ms,
                            };
                            self.record_conflict(target, version, winner, writer)?;
                            winner
                        }
                    };
                    outcome.versions.push(kept);
                }
            }
            WriteOp::Put { key, value } => {
                // `existed` is reported for deletes only, so a put the
                // rule gives its own version anyway does not read the key.
                let current = if write_ignores_current(writer.rule, version, self.app.max_version) {
                    None
                } else {
                    self.current_value(key)?
                };
                self.write_key(key, Some(value), version, writer, current, &mut outcome)?
            }
            WriteOp::Delete { key } => {
                let current = self.current_value(key)?;
                self.write_key(key, None, version, writer, current, &mut outcome)?
            }
            WriteOp::CompareAndSet {
                key,
                expected,
                value,
            } => {
                let current = self.current_value(key)?;
                let matches = match (expected, &current) {
                    (Expected::Absent, None) => true,
                    (Expected::Absent, Some(current)) => current.value.is_none(),
                    (Expected::Version(expected), Some(current)) => current.version == *expected,
                    (Expected::Version(_), None) => false,
                };
                if matches {
                    self.write_key(key, Some(value), version, writer, current, &mut outcome)?;
                } else {
                    outcome.versions.extend(current.as_ref().map(|c| c.version));
                    outcome.existed = current.as_ref().is_some_and(|c| c.value.is_some());
                    outcome.compare_failed = Some(current.and_then(|c| c.value));
                }
            }
        }
        if let Some(max) = outcome.versions.iter().max() {
            self.app.max_version = self.app.max_version.max(*max);
        }
        Ok(outcome)
    }

    fn current_value(&self, key: &[u8]) -> ApplyResult<Option<StoredValue>> {
        match self.staged.get(StateTree::Kv, key)? {
            Some(bytes) => Ok(Some(keys::decode::<StoredValue>(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Puts (`Some`) or deletes (`None`: a tombstone) one generic key whose
    /// value the caller read as `current` (`None` for absent, or not needed).
    fn write_key(
        &mut self,
        key: &[u8],
        value: Option<&Vec<u8>>,
        version: Version,
        writer: Writer,
        current: Option<StoredValue>,
        outcome: &mut WriteOutcome,
    ) -> ApplyResult<()> {
        outcome.existed = current.as_ref().is_some_and(|c| c.value.is_some());
        match merge_decision(writer.rule, version, current.map(|c| c.version)) {
            MergeDecision::Replace(version) => {
                self.staged.insert(
                    StateTree::Kv,
                    key,
                    keys::encode(&StoredValue {
                        value: value.cloned(),
                        version,
                    }),
                );
                outcome.versions.push(version);
            }
            MergeDecision::Superseded { winner } => {
                self.record_conflict(ConflictTarget::Key(key.to_vec()), version, winner, writer)?;
                outcome.versions.push(winner);
            }
        }
        Ok(())
    }

    /// Appends to the conflict log and drops the oldest records beyond
    /// `MAX_CONFLICT_RECORDS`. Deterministic: driven by apply order alone.
    fn record_conflict(
        &mut self,
        target: ConflictTarget,
        loser: Version,
        winner: Version,
        writer: Writer,
    ) -> ApplyResult<()> {
        let record = ConflictRecord {
            target,
            loser,
            loser_write: writer.write_id.unwrap_or((loser.origin_node, 0)),
            winner,
            log_index: self.log_index,
        };
        let sequence = self.app.conflicts_total;
        self.staged.insert(
            StateTree::Conflicts,
            keys::log_index_key(sequence),
            keys::encode(&record),
        );
        self.app.conflicts_total += 1;
        while self.app.conflicts_total - self.app.oldest_conflict_sequence > MAX_CONFLICT_RECORDS {
            self.staged.remove(
                StateTree::Conflicts,
                &keys::log_index_key(self.app.oldest_conflict_sequence),
            )?;
            self.app.oldest_conflict_sequence += 1;
        }
        Ok(())
    }
}

/// Builds snapshots from a copy taken on the state machine task (so it is
/// consistent with one applied log id) and persists them as a file.
pub struct SnapshotBuilder {
    flusher: Flusher,
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
        self.flusher.flush().await.map_err(sm_write_err)?;
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
            flusher: self.flusher.clone(),
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

impl ReadView {
    /// An error once an apply failed part-way through its commit.
    fn usable(&self) -> Result<(), StorageError> {
        if self.trees.failed.load(Ordering::Acquire) {
            return Err(sm_read_err(std::io::Error::other(
                "an apply failed part-way through writing the state; restart the node to complete it",
            )));
        }
        Ok(())
    }

    /// The state machine's own bookkeeping (reconciled seqs, conflict count).
    pub fn app_meta(&self) -> Result<AppMeta, StorageError> {
        self.usable()?;
        match self
            .trees
            .state
            .meta
            .get(keys::APP_META_KEY)
            .map_err(sm_read_err)?
        {
            Some(bytes) => keys::decode(&bytes).map_err(sm_read_err),
            None => Ok(AppMeta::default()),
        }
    }

    /// The newest `limit` conflict records, newest first.
    pub fn conflicts(&self, limit: usize) -> Result<Vec<ConflictRecord>, StorageError> {
        self.usable()?;
        self.trees
            .state
            .conflicts
            .iter()
            .rev()
            .take(limit)
            .map(|row| {
                let (_, value) = row.map_err(sm_read_err)?;
                keys::decode(&value).map_err(sm_read_err)
            })
            .collect()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<StoredValue>, StorageError> {
        self.usable()?;
        match self.trees.state.kv.get(key).map_err(sm_read_err)? {
            Some(bytes) => keys::decode(&bytes).map(Some).map_err(sm_read_err),
            None => Ok(None),
        }
    }

    pub fn latest_reading(&self, sensor_id: &str) -> Result<Option<ReadingRow>, StorageError> {
        self.usable()?;
        blocks::latest(&self.trees.state.readings, &keys::sensor_prefix(sensor_id))
            .map_err(sm_read_err)
    }

    /// Up to `limit` readings of a sensor with `from_ms <= ts <= to_ms`, in
    /// time order (newest first when `descending`).
    pub fn range_readings(
        &self,
        sensor_id: &str,
        (from_ms, to_ms): (u64, u64),
        limit: usize,
        descending: bool,
    ) -> Result<Vec<ReadingRow>, StorageError> {
        self.usable()?;
        let _gate = self
            .trees
            .readings_gate
            .read()
            .unwrap_or_else(|e| e.into_inner());
        blocks::range(
            &self.trees.state.readings,
            &keys::sensor_prefix(sensor_id),
            (from_ms, to_ms),
            limit,
            descending,
        )
        .map_err(sm_read_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_db(dir: &Path) -> sled::Db {
        sled::Config::new()
            .path(dir.join("db"))
            .open()
            .expect("open")
    }

    fn open_store(
        db: &sled::Db,
        snapshot_dir: &Path,
    ) -> (StateMachineStore, super::super::FlushThreadExit) {
        let (flusher, exit) = super::super::Flusher::for_sled(db.clone()).expect("flusher");
        let clock = Arc::new(HybridClock::new(1));
        let store = StateMachineStore::open(db, flusher, snapshot_dir, clock).expect("store");
        (store, exit)
    }

    /// An older build's one-row-per-reading tree holding `timestamps` of "s".
    fn write_legacy_readings(db: &sled::Db, timestamps: std::ops::Range<u64>) {
        let legacy = db.open_tree(keys::LEGACY_READINGS_TREE).expect("tree");
        for ts in timestamps {
            let (key, value) = reading(ts);
            legacy.insert(key, value).expect("insert");
        }
    }

    /// An older build's (format 2) snapshot payload with `timestamps` of "s".
    fn legacy_snapshot(timestamps: std::ops::Range<u64>) -> Vec<u8> {
        keys::encode(&SnapshotPayload {
            format: OLDEST_SNAPSHOT_FORMAT, // 2: one row per reading
            app: AppMeta::default(),
            trees: vec![(
                keys::LEGACY_READINGS_TREE.to_string(),
                timestamps.map(reading).collect(),
            )],
        })
    }

    /// The timestamps of every replicated reading of "s".
    fn stored_timestamps(store: &StateMachineStore) -> Vec<u64> {
        store
            .read_view()
            .range_readings("s", (0, u64::MAX), 1000, false)
            .expect("range")
            .iter()
            .map(|row| row.timestamp_ms)
            .collect()
    }

    fn reading(ts: u64) -> (Vec<u8>, Vec<u8>) {
        let stored = StoredReading {
            value: ts as f64,
            tags: Vec::new(),
            version: v(ts, 0, 1),
        };
        (keys::reading_key("s", ts), keys::encode(&stored))
    }

    /// Range reads running while applies split blocks see every reading
    /// applied before they started, once, in order (the readings gate).
    #[tokio::test]
    async fn range_reads_during_splitting_applies_neither_repeat_nor_lose_readings() {
        use crate::types::ReadingWrite;
        use rand::Rng;
        use rand::SeedableRng;
        use std::sync::atomic::AtomicBool;
        use std::sync::atomic::AtomicUsize;
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path());
        let (mut store, _exit) = open_store(&db, &dir.path().join("snap"));
        let view = store.read_view();
        let applied = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = [false, true]
            .into_iter()
            .map(|descending| {
                let (view, applied, done) = (view.clone(), applied.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) {
                        let before = applied.load(Ordering::Acquire);
                        let rows = view
                            .range_readings("s", (0, u64::MAX), usize::MAX, descending)
                            .expect("range");
                        let mut ts: Vec<u64> = rows.iter().map(|r| r.timestamp_ms).collect();
                        if descending {
                            ts.reverse();
                        }
                        assert!(ts.windows(2).all(|w| w[0] < w[1]), "a reading seen twice");
                        assert!(
                            ts.len() >= before,
                            "{} readings, {before} applied",
                            ts.len()
                        );
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        // Random timestamps: most inserts land inside full blocks and split them.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut distinct = std::collections::BTreeSet::new();
        for index in 1..=400u64 {
            let batch: Vec<ReadingWrite> = (0..25)
                .map(|_| ReadingWrite {
                    sensor_id: "s".into(),
                    timestamp_ms: rng.gen_range(0..1_000_000),
                    value: 1.0,
                    tags: Vec::new(),
                })
                .collect();
            distinct.extend(batch.iter().map(|r| r.timestamp_ms));
            let entry = Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Command::Write(WriteCommand {
                    request_id: Vec::new(),
                    version: v(index, 0, 1),
                    op: WriteOp::PutReadings(batch),
                })),
            };
            store.apply_entries(vec![entry]).expect("apply");
            applied.store(distinct.len(), Ordering::Release);
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.join().expect("no violation") > 0);
        }
    }

    /// An older build crashed while installing a format-2 snapshot: the
    /// marker and a half-loaded row-per-reading tree are on disk. The install
    /// is redone from the snapshot, and the half-loaded tree does not replace
    /// the snapshot's readings.
    #[tokio::test]
    async fn an_interrupted_install_by_an_older_build_is_redone_from_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path());
        write_legacy_readings(&db, 0..10);
        let meta_tree = db.open_tree(keys::SM_META_TREE).expect("tree");
        meta_tree.insert(INSTALLING_KEY, &[]).expect("marker");
        let snapshot_dir = dir.path().join("snap");
        std::fs::create_dir_all(&snapshot_dir).expect("dir");
        SnapshotFileWriter {
            dir: snapshot_dir.clone(),
        }
        .write(&StoredSnapshot {
            meta: SnapshotMeta::default(),
            data: legacy_snapshot(100..200),
        })
        .expect("snapshot file");
        let (store, _exit) = open_store(&db, &snapshot_dir);
        assert_eq!(stored_timestamps(&store), (100..200).collect::<Vec<_>>());
        assert!(!meta_tree.contains_key(INSTALLING_KEY).expect("read"));
    }

    /// A data directory or a snapshot from before reading blocks (one row per
    /// reading) is rebuilt into blocks: every reading still reads back.
    #[tokio::test]
    async fn readings_of_the_row_per_reading_layout_are_rebuilt_into_blocks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path());
        write_legacy_readings(&db, 0..300);
        let (mut store, _exit) = open_store(&db, &dir.path().join("snap"));
        assert_eq!(stored_timestamps(&store), (0..300).collect::<Vec<_>>());
        assert!(!db
            .tree_names()
            .iter()
            .any(|name| name == keys::LEGACY_READINGS_TREE.as_bytes()));

        // A format-2 snapshot names the row-per-reading tree.
        store
            .load_snapshot(&SnapshotMeta::default(), &legacy_snapshot(500..700))
            .expect("install");
        assert_eq!(stored_timestamps(&store), (500..700).collect::<Vec<_>>());
        let newest = store.read_view().latest_reading("s").expect("latest");
        assert_eq!(newest.map(|row| row.timestamp_ms), Some(699));
    }

    /// An entry at `index` of `writes`.
    fn writes_entry(index: u64, writes: Vec<WriteCommand>) -> Entry {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Writes(writes)),
        }
    }

    /// Applies `entry`, one `Command::Writes`, and returns its outcomes.
    fn apply_writes(store: &mut StateMachineStore, entry: Entry) -> Vec<WriteOutcome> {
        let results = store.apply_entries(vec![entry]).expect("apply");
        match <[CommandResult; 1]>::try_from(results) {
            Ok([CommandResult::Writes(outcomes)]) => outcomes,
            other => panic!("one Writes result, got {other:?}"),
        }
    }

    /// An entry at `index` of puts, each with its request id.
    fn puts_entry(index: u64, request_ids: &[&str]) -> Entry {
        let writes = request_ids
            .iter()
            .map(|id| WriteCommand {
                request_id: id.as_bytes().to_vec(),
                version: v(index, 0, 1),
                op: WriteOp::Put {
                    key: id.as_bytes().to_vec(),
                    value: index.to_be_bytes().to_vec(),
                },
            })
            .collect();
        writes_entry(index, writes)
    }

    /// For each write of the entry: whether it was answered from the
    /// remembered requests, and the version it reports.
    fn apply_puts(
        store: &mut StateMachineStore,
        index: u64,
        request_ids: &[&str],
    ) -> Vec<(bool, Version)> {
        apply_writes(store, puts_entry(index, request_ids))
            .iter()
            .map(|o| (o.deduplicated, o.versions[0]))
            .collect()
    }

    /// Request ids stay remembered across a restart (the index is rebuilt
    /// from the tree) and a snapshot install (another store), including
    /// two writes of one id in one entry.
    #[tokio::test]
    async fn remembered_requests_survive_a_restart_and_a_snapshot_install() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = dir.path().join("snap");
        let payload = {
            let db = open_db(dir.path());
            let (mut store, _exit) = open_store(&db, &snap);
            assert_eq!(
                apply_puts(&mut store, 1, &["a", "b", "a"]),
                vec![(false, v(1, 0, 1)), (false, v(1, 0, 1)), (true, v(1, 0, 1))]
            );
            drop(store);
            let (mut store, _exit) = open_store(&db, &snap);
            assert_eq!(
                apply_puts(&mut store, 2, &["b", "c"]),
                vec![(true, v(1, 0, 1)), (false, v(2, 0, 1))]
            );
            keys::encode(&store.copy_state().expect("copy"))
        };
        let other = tempfile::tempdir().expect("tempdir");
        let db = open_db(other.path());
        let (mut store, _exit) = open_store(&db, &other.path().join("snap"));
        store
            .load_snapshot(&SnapshotMeta::default(), &payload)
            .expect("install");
        assert_eq!(
            apply_puts(&mut store, 3, &["a", "c", "d"]),
            vec![(true, v(1, 0, 1)), (true, v(2, 0, 1)), (false, v(3, 0, 1))]
        );
    }

    /// A crash after an apply call's intent and before its writes: the next
    /// open completes the call (its writes, `last_applied`, its request
    /// ids). After a snapshot install, an intent from before it is not
    /// redone over the snapshot.
    #[tokio::test]
    async fn an_apply_cut_short_is_completed_at_open_unless_a_snapshot_replaced_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snap = dir.path().join("snap");
        let db = open_db(dir.path());
        let (mut store, _exit) = open_store(&db, &snap);
        apply_puts(&mut store, 1, &["a"]);
        store.crash_before_writes = true;
        assert!(store
            .apply_entries(vec![puts_entry(2, &["b", "d"])])
            .is_err());
        let get = |store: &StateMachineStore, key: &str| {
            let value = store.read_view().get(key.as_bytes()).expect("get");
            value.map(|v| v.version)
        };
        assert_eq!(get(&store, "b"), None, "nothing written before the crash");
        drop(store);
        let (mut store, _exit) = open_store(&db, &snap);
        assert_eq!(store.last_applied.map(|id| id.index), Some(2));
        assert_eq!(get(&store, "b"), Some(v(2, 0, 1)));
        assert_eq!(get(&store, "d"), Some(v(2, 0, 1)));
        assert_eq!(
            apply_puts(&mut store, 3, &["b"]),
            vec![(true, v(2, 0, 1))],
            "the completed call's request ids are remembered"
        );

        let other = tempfile::tempdir().expect("tempdir");
        let other_db = open_db(other.path());
        let (mut source, _other_exit) = open_store(&other_db, &other.path().join("snap"));
        apply_puts(&mut source, 1, &["z"]);
        let payload = keys::encode(&source.copy_state().expect("copy"));
        store.crash_before_writes = true;
        assert!(store.apply_entries(vec![puts_entry(4, &["c"])]).is_err());
        store.crash_before_writes = false;
        store
            .load_snapshot(&SnapshotMeta::default(), &payload)
            .expect("install");
        drop(store);
        let (store, _exit) = open_store(&db, &snap);
        assert_eq!(get(&store, "c"), None, "the old intent was discarded");
        assert_eq!(get(&store, "a"), None);
        assert_eq!(get(&store, "z"), Some(v(1, 0, 1)));
    }

    /// The request-id table of older builds (a data directory, or a
    /// format-3 snapshot) is rebuilt into `remembered_requests`: its ids are
    /// still answered, the retention order goes on from its sequences, and
    /// the old trees are gone.
    #[tokio::test]
    async fn request_ids_of_older_builds_stay_remembered() {
        let legacy_outcome = |n: u64| WriteOutcome {
            versions: vec![v(n, 0, 1)],
            ..WriteOutcome::default()
        };
        let legacy_rows = |ids: &[(&str, u64)]| -> TreeRows {
            ids.iter()
                .map(|(id, sequence)| {
                    let row = keys::RememberedRequest {
                        sequence: *sequence,
                        outcome: legacy_outcome(*sequence),
                    };
                    (id.as_bytes().to_vec(), keys::encode(&row))
                })
                .collect()
        };
        let legacy_app = AppMeta {
            next_request_sequence: 7,
            oldest_request_sequence: 5,
            ..AppMeta::default()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path());
        let ids = db.open_tree(keys::LEGACY_REQUEST_IDS_TREE).expect("tree");
        let order = db.open_tree(keys::LEGACY_REQUEST_ORDER_TREE).expect("tree");
        for (id, value) in legacy_rows(&[("old-5", 5), ("old-6", 6)]) {
            ids.insert(&id, value).expect("insert");
        }
        order
            .insert(keys::log_index_key(5), "old-5")
            .expect("insert");
        order
            .insert(keys::log_index_key(6), "old-6")
            .expect("insert");
        let meta = db.open_tree(keys::SM_META_TREE).expect("tree");
        meta.insert(keys::APP_META_KEY, keys::encode(&legacy_app))
            .expect("insert");
        drop((ids, order, meta));
        let (mut store, _exit) = open_store(&db, &dir.path().join("snap"));
        for legacy in [
            keys::LEGACY_REQUEST_IDS_TREE,
            keys::LEGACY_REQUEST_ORDER_TREE,
        ] {
            assert!(!store.has_tree(legacy), "{legacy} dropped");
        }
        assert_eq!(
            apply_puts(&mut store, 9, &["old-6", "new"]),
            vec![(true, v(6, 0, 1)), (false, v(9, 0, 1))]
        );
        assert_eq!(store.app.next_request_sequence, 8);
        assert_eq!(store.app.oldest_request_sequence, 5);

        let format_3 = keys::encode(&SnapshotPayload {
            format: 3,
            app: legacy_app,
            trees: vec![
                (
                    keys::LEGACY_REQUEST_IDS_TREE.to_string(),
                    legacy_rows(&[("snap-5", 5), ("snap-6", 6)]),
                ),
                (
                    keys::LEGACY_REQUEST_ORDER_TREE.to_string(),
                    vec![(keys::log_index_key(5).to_vec(), b"snap-5".to_vec())],
                ),
            ],
        });
        store
            .load_snapshot(&SnapshotMeta::default(), &format_3)
            .expect("install");
        assert_eq!(
            apply_puts(&mut store, 10, &["snap-5", "old-6"]),
            vec![(true, v(5, 0, 1)), (false, v(10, 0, 1))]
        );
    }

    /// A STRONG put skips reading its key only when its stamp is at or past
    /// the successor of every stored version; otherwise the key's version
    /// decides (`strong_write_version`), as on the read path.
    #[tokio::test]
    async fn strong_puts_follow_the_merge_rule_with_or_without_reading_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path());
        let (mut store, _exit) = open_store(&db, &dir.path().join("snap"));
        let mut apply =
            |index: u64, request_id: &str, key: &str, op_value: Option<&str>, version| {
                let op = match op_value {
                    Some(value) => WriteOp::Put {
                        key: key.as_bytes().to_vec(),
                        value: value.as_bytes().to_vec(),
                    },
                    None => WriteOp::Delete {
                        key: key.as_bytes().to_vec(),
                    },
                };
                let write = WriteCommand {
                    request_id: request_id.as_bytes().to_vec(),
                    version,
                    op,
                };
                let outcomes = apply_writes(&mut store, writes_entry(index, vec![write]));
                (outcomes[0].versions[0], outcomes[0].existed)
            };
        // Past everything stored: its own version.
        assert_eq!(apply(1, "r1", "a", Some("1"), v(100, 0, 1)).0, v(100, 0, 1));
        assert_eq!(apply(2, "r2", "a", Some("2"), v(500, 0, 2)).0, v(500, 0, 2));
        // Behind the key's version: its successor, attributed to the writer.
        assert_eq!(apply(3, "r3", "a", Some("3"), v(200, 0, 1)).0, v(500, 1, 1));
        // Greater than the key's version but not past its successor.
        assert_eq!(apply(4, "r4", "a", Some("4"), v(500, 1, 3)).0, v(500, 2, 3));
        // Another key is not held back by "a"'s version.
        assert_eq!(apply(5, "r5", "b", Some("5"), v(300, 0, 1)).0, v(300, 0, 1));
        assert_eq!(apply(6, "r6", "a", Some("6"), v(900, 0, 1)).0, v(900, 0, 1));
        // A delete still reads the key: it reports whether a value was there.
        assert_eq!(
            apply(7, "r7", "a", None, v(950, 0, 1)),
            (v(950, 0, 1), true)
        );
        assert_eq!(
            apply(8, "r8", "a", None, v(960, 0, 1)),
            (v(960, 0, 1), false)
        );
        let stored = store
            .read_view()
            .get(b"a")
            .expect("get")
            .expect("tombstone");
        assert_eq!((stored.value, stored.version), (None, v(960, 0, 1)));
        let stored = store.read_view().get(b"b").expect("get").expect("value");
        assert_eq!(stored.value.as_deref(), Some(&b"5"[..]));
    }

    fn v(physical_ms: u64, logical: u32, origin_node: u64) -> Version {
        Version {
            physical_ms,
            logical,
            origin_node,
        }
    }

    /// DESIGN.md's merge rule, case by case: (rule, incoming, current, decision).
    #[test]
    fn the_merge_rule_as_a_table() {
        use Merge::*;
        use MergeDecision::*;
        let cases = [
            // A STRONG write always replaces, and follows log order.
            (Strong, v(10, 0, 1), None, Replace(v(10, 0, 1))),
            (Strong, v(10, 0, 1), Some(v(5, 0, 2)), Replace(v(10, 0, 1))),
            // ... even over a newer version: current + 1, attributed to the writer.
            (Strong, v(10, 0, 1), Some(v(20, 3, 2)), Replace(v(20, 4, 1))),
            (Strong, v(10, 0, 1), Some(v(10, 0, 1)), Replace(v(10, 1, 1))),
            // A reconciled provisional write wins only with a greater version.
            (LastWriterWins, v(10, 0, 3), None, Replace(v(10, 0, 3))),
            (
                LastWriterWins,
                v(10, 0, 3),
                Some(v(9, 9, 9)),
                Replace(v(10, 0, 3)),
            ),
            (
                LastWriterWins,
                v(10, 0, 3),
                Some(v(10, 1, 1)),
                Superseded {
                    winner: v(10, 1, 1),
                },
            ),
            // Same clock: the origin node breaks the tie, the same on every replica.
            (
                LastWriterWins,
                v(10, 0, 3),
                Some(v(10, 0, 2)),
                Replace(v(10, 0, 3)),
            ),
            (
                LastWriterWins,
                v(10, 0, 2),
                Some(v(10, 0, 3)),
                Superseded {
                    winner: v(10, 0, 3),
                },
            ),
            // The same version again (a write applied twice) never replaces.
            (
                LastWriterWins,
                v(10, 0, 3),
                Some(v(10, 0, 3)),
                Superseded {
                    winner: v(10, 0, 3),
                },
            ),
        ];
        for (rule, incoming, current, expected) in cases {
            assert_eq!(
                merge_decision(rule, incoming, current),
                expected,
                "{rule:?} {incoming} over {current:?}"
            );
        }
        // Where a rule may skip the key, every current version up to the
        // stored maximum (or none) gives the entry its own version.
        let stamps = [
            v(9, 9, 9),
            v(10, 0, 1),
            v(10, 0, 2),
            v(10, 0, 3),
            v(10, 1, 1),
            v(10, 1, 2),
        ];
        let max_stored = v(10, 0, 2);
        for (rule, skips_from) in [(Strong, v(10, 1, 0)), (LastWriterWins, v(10, 0, 3))] {
            for entry in stamps {
                let skips = write_ignores_current(rule, entry, max_stored);
                assert_eq!(skips, entry >= skips_from, "{rule:?} {entry}");
                let stored = stamps.into_iter().filter(|c| *c <= max_stored).map(Some);
                for current in stored.chain([None]) {
                    if skips {
                        assert_eq!(
                            merge_decision(rule, entry, current),
                            Replace(entry),
                            "{rule:?} {entry} over {current:?}"
                        );
                    }
                }
            }
        }
    }
}
