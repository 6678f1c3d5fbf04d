//! One apply call's writes to the state trees: staged in memory while the
//! call runs, then committed atomically without a sled transaction.
//!
//! Why not a sled transaction: every sled transaction (and every
//! `apply_batch`) seals sled's current IO buffer twice (`pin_log`: before
//! and after its batch manifest) and hands each sealed buffer to sled's IO
//! pool, which writes it, calls `sync_file_range`, and wakes all seven pool
//! threads to take the job. A STRONG put load makes 200 to 450 apply calls a
//! second on every node; that pool work was 20 to 28% of a follower's CPU
//! (`docs/bench/profile-2026-11-21.md`, fifth session).
//!
//! How a commit stays atomic: [`Staged::commit`] first writes the call's
//! whole write set, final values only, as an *intent* (tree `sm_intent`:
//! chunks of at most [`INTENT_CHUNK_BYTES`], then a header naming them), and
//! then each write as a plain sled insert or remove. After a crash sled
//! recovers a prefix of its log: recovery stops at the end of the last
//! contiguous message (sled 0.34 `check_contiguity_in_unstable_tail`; its
//! own batch manifests rely on that). So if any write of a call survived, the call's
//! complete intent survived before it, and [`recover`] redoes that intent
//! when the store opens. Redoing writes final values, so it is idempotent.
//! The intent of a call whose writes had not started is left undone, which
//! is right: the call never happened, and openraft applies its entries
//! again from the log.
//!
//! Readers: while a call commits, a reader can see some of its writes and
//! not yet others (a sled transaction hid that). Every write of the call is
//! committed in the log and not yet acknowledged, so a read of one key stays
//! linearizable. `sm_meta` is written last, so whoever sees the call's
//! `last_applied` or `AppMeta` sees all its data. Range reads of readings
//! still never overlap an apply that writes readings (`ReadingsGate`).

use std::collections::HashMap;

use serde::Deserialize;
use serde::Serialize;

use super::blocks::BlockError;
use super::keys;

/// Most bytes of writes in one intent chunk row (a single bigger write gets
/// a chunk of its own). sled splits a leaf only past 16 entries and writes a
/// node above a quarter of its 512 KiB segment as a separate blob file, so
/// a leaf of 16 such chunks (96 KiB) stays in sled's log.
pub const INTENT_CHUNK_BYTES: usize = 6 * 1024;

/// A staged write's encoded size beyond its key and value (tree tag,
/// lengths, option tag), for [`INTENT_CHUNK_BYTES`].
const INTENT_WRITE_OVERHEAD_BYTES: usize = 32;

/// The trees an apply call writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateTree {
    Meta,
    Kv,
    Readings,
    Remembered,
    Conflicts,
}

impl StateTree {
    /// The order a commit writes the trees in: `sm_meta` last, so a reader
    /// that sees a call's `last_applied` or `AppMeta` (a SESSION read checks
    /// its token against `reconciled_seq`) also sees the call's data.
    const COMMIT_ORDER: [StateTree; 5] = [
        StateTree::Kv,
        StateTree::Readings,
        StateTree::Remembered,
        StateTree::Conflicts,
        StateTree::Meta,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// A staged write: a value to insert, or `None` to remove the key.
type Write = (StateTree, Vec<u8>, Option<Vec<u8>>);

const HEADER_KEY: &[u8] = b"header";

/// The intent header: which commit the chunks belong to, and how many.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct IntentHeader {
    commit: u64,
    chunks: u32,
}

/// One intent chunk: its commit and some of its writes.
#[derive(Deserialize)]
struct IntentChunk {
    commit: u64,
    writes: Vec<Write>,
}

fn chunk_key(chunk: u32) -> [u8; 4] {
    chunk.to_be_bytes()
}

/// Why reading or writing the state trees failed: in an apply call, its
/// recovery, or loading what the state machine keeps in memory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Storage(#[from] sled::Error),
    #[error("stored state that does not decode: {0}")]
    Decode(#[from] bincode::Error),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("inconsistent stored state: {0}")]
    Corrupt(String),
}

/// The state trees, with the intent tree, for staging and committing.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Trees {
    pub meta: sled::Tree,
    pub kv: sled::Tree,
    pub readings: sled::Tree,
    pub remembered: sled::Tree,
    pub conflicts: sled::Tree,
    /// `sm_intent`: the last commit's intent.
    pub intent: sled::Tree,
}

impl Trees {
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            meta: db.open_tree(keys::SM_META_TREE)?,
            kv: db.open_tree(keys::KV_TREE)?,
            readings: db.open_tree(keys::READING_BLOCKS_TREE)?,
            remembered: db.open_tree(keys::REMEMBERED_TREE)?,
            conflicts: db.open_tree(keys::CONFLICTS_TREE)?,
            intent: db.open_tree(keys::SM_INTENT_TREE)?,
        })
    }

    fn tree(&self, tree: StateTree) -> &sled::Tree {
        match tree {
            StateTree::Meta => &self.meta,
            StateTree::Kv => &self.kv,
            StateTree::Readings => &self.readings,
            StateTree::Remembered => &self.remembered,
            StateTree::Conflicts => &self.conflicts,
        }
    }
}

/// One apply call's writes. Reads through it see the committed trees with
/// the call's own writes over them.
pub struct Staged<'a> {
    trees: &'a Trees,
    writes: [HashMap<Vec<u8>, Option<Vec<u8>>>; 5],
}

impl<'a> Staged<'a> {
    pub fn new(trees: &'a Trees) -> Self {
        Self {
            trees,
            writes: Default::default(),
        }
    }

    /// The value of `key` in `tree` as this call left it.
    pub fn get(&self, tree: StateTree, key: &[u8]) -> Result<Option<sled::IVec>, StateError> {
        match self.writes[tree.index()].get(key) {
            Some(staged) => Ok(staged.as_deref().map(sled::IVec::from)),
            None => Ok(self.trees.tree(tree).get(key)?),
        }
    }

    pub fn insert(&mut self, tree: StateTree, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.writes[tree.index()].insert(key.into(), Some(value));
    }

    /// Removes `key` and returns the value it had.
    pub fn remove(
        &mut self,
        tree: StateTree,
        key: &[u8],
    ) -> Result<Option<sled::IVec>, StateError> {
        let old = self.get(tree, key)?;
        self.writes[tree.index()].insert(key.to_vec(), None);
        Ok(old)
    }

    /// Writes the intent, then every write. `commit` numbers this commit
    /// among the store's commits since it opened (each a different number).
    pub fn commit(self, commit: u64) -> Result<(), StateError> {
        let trees = self.trees;
        let writes = self.into_writes();
        if writes.is_empty() {
            return Ok(());
        }
        write_intent(trees, commit, &writes)?;
        apply_writes(trees, writes)
    }

    /// A crash between the intent and the writes, for tests.
    #[cfg(test)]
    pub fn write_intent_only(self, commit: u64) -> Result<(), StateError> {
        let trees = self.trees;
        write_intent(trees, commit, &self.into_writes())
    }

    fn into_writes(mut self) -> Vec<Write> {
        let mut writes = Vec::new();
        for tree in StateTree::COMMIT_ORDER {
            let mut staged: Vec<_> = std::mem::take(&mut self.writes[tree.index()])
                .into_iter()
                .collect();
            if tree == StateTree::Readings {
                // A split leaves a block's head under its key and moves the
                // tail to a new block with a greater key. Greatest key first,
                // so the new block is there before its source is cut: a
                // reader of a sensor's last block (`latest`, which takes no
                // gate) never misses the tail.
                staged.sort_unstable_by(|a, b| b.0.cmp(&a.0));
            }
            writes.extend(staged.into_iter().map(|(key, value)| (tree, key, value)));
        }
        writes
    }
}

/// One intent chunk as written: a slice of the writes, not a copy.
#[derive(Serialize)]
struct IntentChunkRef<'w> {
    commit: u64,
    writes: &'w [Write],
}

/// Writes `writes` as chunks of at most [`INTENT_CHUNK_BYTES`] (or one
/// write), then the header that names them.
fn write_intent(trees: &Trees, commit: u64, writes: &[Write]) -> Result<(), StateError> {
    let intent = &trees.intent;
    let mut chunks = 0u32;
    let mut write_chunk = |writes: &[Write]| -> Result<(), StateError> {
        let row = IntentChunkRef { commit, writes };
        intent.insert(chunk_key(chunks), keys::encode(&row))?;
        chunks += 1;
        Ok(())
    };
    let mut start = 0;
    let mut bytes = 0;
    for (i, (_, key, value)) in writes.iter().enumerate() {
        let size = INTENT_WRITE_OVERHEAD_BYTES + key.len() + value.as_ref().map_or(0, Vec::len);
        if bytes + size > INTENT_CHUNK_BYTES && i > start {
            write_chunk(&writes[start..i])?;
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    write_chunk(&writes[start..])?;
    intent.insert(HEADER_KEY, keys::encode(&IntentHeader { commit, chunks }))?;
    Ok(())
}

fn apply_writes(trees: &Trees, writes: Vec<Write>) -> Result<(), StateError> {
    for (tree, key, value) in writes {
        let tree = trees.tree(tree);
        match value {
            Some(value) => tree.insert(key, value)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

/// At open: redoes the intent of the last commit if all of it is there (see
/// the module doc), then empties the intent tree, so commit numbers can
/// start over. Returns the number of writes redone.
pub fn recover(trees: &Trees) -> Result<usize, StateError> {
    let writes = complete_intent(&trees.intent)?.unwrap_or_default();
    let redone = writes.len();
    apply_writes(trees, writes)?;
    trees.intent.clear()?;
    Ok(redone)
}

/// The writes of the intent the header names, if every chunk of it is
/// there. A chunk of another commit means a later commit's chunks were
/// being written: the header's commit was complete before they started.
fn complete_intent(intent: &sled::Tree) -> Result<Option<Vec<Write>>, StateError> {
    let Some(header) = intent.get(HEADER_KEY)? else {
        return Ok(None);
    };
    let header: IntentHeader = keys::decode(&header)?;
    let mut writes = Vec::new();
    for chunk in 0..header.chunks {
        let Some(bytes) = intent.get(chunk_key(chunk))? else {
            return Ok(None);
        };
        let chunk: IntentChunk = keys::decode(&bytes)?;
        if chunk.commit != header.commit {
            return Ok(None);
        }
        writes.extend(chunk.writes);
    }
    Ok(Some(writes))
}

/// Forgets any intent: a snapshot install replaces the state it was about.
pub fn discard(trees: &Trees) -> Result<(), StateError> {
    trees.intent.clear()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trees(db: &sled::Db) -> Trees {
        Trees::open(db).expect("trees")
    }

    fn kv(trees: &Trees) -> Vec<(Vec<u8>, Vec<u8>)> {
        trees
            .tree(StateTree::Kv)
            .iter()
            .map(|row| {
                let (k, v) = row.expect("row");
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn reads_see_the_calls_own_writes_and_commit_writes_them() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let trees = trees(&db);
        trees
            .tree(StateTree::Kv)
            .insert("a", "old")
            .expect("insert");
        trees
            .tree(StateTree::Kv)
            .insert("gone", "x")
            .expect("insert");
        let mut staged = Staged::new(&trees);
        staged.insert(StateTree::Kv, b"a".to_vec(), b"new".to_vec());
        let removed = staged.remove(StateTree::Kv, b"gone").expect("remove");
        assert_eq!(removed.as_deref(), Some(&b"x"[..]));
        assert_eq!(
            staged.get(StateTree::Kv, b"a").expect("get").as_deref(),
            Some(&b"new"[..])
        );
        assert_eq!(staged.get(StateTree::Kv, b"gone").expect("get"), None);
        // Nothing reaches the trees before the commit.
        assert_eq!(kv(&trees).len(), 2);
        staged.commit(1).expect("commit");
        assert_eq!(kv(&trees), vec![(b"a".to_vec(), b"new".to_vec())]);
    }

    /// A crash after the intent and part of the writes: the open redoes the
    /// rest. A crash in the middle of a later intent: the earlier commit is
    /// not redone over newer state, and nothing half-written is applied.
    #[test]
    fn recover_redoes_a_complete_intent_and_ignores_a_torn_one() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let trees = trees(&db);
        // A big commit, so that the intent has several chunks.
        let mut staged = Staged::new(&trees);
        for i in 0..40u32 {
            staged.insert(StateTree::Kv, i.to_be_bytes().to_vec(), vec![7; 4096]);
        }
        staged.insert(StateTree::Meta, b"last".to_vec(), b"40".to_vec());
        staged.commit(1).expect("commit");
        let header: IntentHeader =
            keys::decode(&trees.intent.get(HEADER_KEY).expect("get").expect("header"))
                .expect("decode");
        assert!(header.chunks > 1, "{header:?}");
        // Simulate the crash: the intent survived, some writes did not.
        trees.tree(StateTree::Kv).clear().expect("clear");
        trees.tree(StateTree::Meta).clear().expect("clear");
        assert_eq!(recover(&trees).expect("recover"), 41);
        assert_eq!(kv(&trees).len(), 40);
        assert_eq!(
            trees
                .tree(StateTree::Meta)
                .get("last")
                .expect("get")
                .as_deref(),
            Some(&b"40"[..])
        );
        assert!(trees.intent.is_empty(), "the intent is cleared");

        // Commit 2 wrote its first chunk over commit 1's, then crashed
        // before its header: commit 1's header now names a torn intent.
        let mut staged = Staged::new(&trees);
        for i in 0..40u32 {
            staged.insert(StateTree::Kv, i.to_be_bytes().to_vec(), vec![8; 4096]);
        }
        staged.commit(1).expect("commit");
        let chunk = IntentChunkRef {
            commit: 2,
            writes: &[(StateTree::Kv, b"half".to_vec(), Some(b"x".to_vec()))],
        };
        trees
            .intent
            .insert(chunk_key(0), keys::encode(&chunk))
            .expect("insert");
        assert_eq!(recover(&trees).expect("recover"), 0);
        assert!(
            kv(&trees).iter().all(|(k, _)| k != b"half"),
            "no torn write"
        );
    }

    #[test]
    fn reading_blocks_are_written_greatest_key_first_and_meta_last() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let trees = trees(&db);
        let mut staged = Staged::new(&trees);
        staged.insert(StateTree::Meta, b"last".to_vec(), vec![1]);
        for key in [3u8, 9, 1, 7] {
            staged.insert(StateTree::Readings, vec![key], vec![key]);
        }
        staged.insert(StateTree::Kv, b"k".to_vec(), vec![2]);
        let writes = staged.into_writes();
        let order: Vec<_> = writes
            .iter()
            .map(|(tree, key, _)| (*tree, key.clone()))
            .collect();
        assert_eq!(
            order,
            vec![
                (StateTree::Kv, b"k".to_vec()),
                (StateTree::Readings, vec![9]),
                (StateTree::Readings, vec![7]),
                (StateTree::Readings, vec![3]),
                (StateTree::Readings, vec![1]),
                (StateTree::Meta, b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn an_empty_call_writes_nothing() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let trees = trees(&db);
        Staged::new(&trees).commit(1).expect("commit");
        assert!(trees.intent.is_empty());
        assert_eq!(recover(&trees).expect("recover"), 0);
    }
}
