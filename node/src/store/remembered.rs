//! The request ids the state machine remembers (DESIGN.md: a retried write
//! gets the outcome of its first application), one sled row per log entry.
//!
//! Tree `remembered_requests`: every log entry that remembers request ids
//! writes one row, keyed by the sequence number of its first id (u64
//! big-endian), whose value is the entry's `(request id, outcome)` pairs in
//! apply order. Sequence numbers count remembered ids, so row `k` holds the
//! ids `k..k'`, where `k'` is the next row's key (or
//! `AppMeta::next_request_sequence` for the newest row).
//!
//! Retention is per id, by sequence number alone: an id is remembered while
//! its sequence is among the last [`MAX_REMEMBERED_REQUESTS`]
//! (`AppMeta::oldest_request_sequence` is the cutoff, moved at every id
//! remembered). Sequence numbers are the same on every replica, however the
//! ids were grouped into rows (a data directory migrated from the
//! row-per-id layout at another log index groups them differently), so
//! every replica remembers the same ids. A row is deleted once all its ids
//! are below the cutoff.
//!
//! The ids themselves are looked up in memory ([`RememberedIndex`]: id → row
//! key), which is rebuilt from the tree when the store opens and after a
//! snapshot install. A lookup reads the row only when the id is there: a
//! retry. Before this layout an apply did five tree operations per write
//! for the request ids (a lookup, two inserts and two removes); now it does
//! one insert per entry and about one remove per entry.
//!
//! An apply call sees and changes the index through a [`RememberedWriter`]
//! over its staged writes (`staged.rs`); the changes reach the index only
//! after the call's writes committed ([`RememberedIndex::publish`]).

use std::collections::HashMap;
use std::collections::VecDeque;

use super::keys;
use super::keys::AppMeta;
use super::staged::Staged;
use super::staged::StateError;
use super::staged::StateTree;
use crate::types::WriteOutcome;

/// How many request ids the state machine remembers: the last this many.
/// At ~100 bytes an id this bounds the table near 10 MB and the in-memory
/// index to a few MB (rows partly below the cutoff hold up to one entry's
/// ids more); a client retrying a write older than the last 100k writes is
/// not protected.
pub const MAX_REMEMBERED_REQUESTS: u64 = 100_000;

/// A row of `remembered_requests`: one entry's ids and their outcomes.
pub type RememberedRow = Vec<(Vec<u8>, WriteOutcome)>;

/// Where each remembered id is: its row's key. In memory, rebuilt from the
/// tree; changed only by [`RememberedIndex::publish`].
#[derive(Debug, Default)]
pub struct RememberedIndex {
    rows_of: HashMap<Box<[u8]>, u64>,
    /// The keys of the rows, oldest first.
    rows: VecDeque<u64>,
}

/// What one apply call changed, to publish once its writes committed.
#[derive(Debug, Default)]
pub struct RememberedChanges {
    /// Rows written, oldest first, with their ids.
    added: Vec<(u64, Vec<Vec<u8>>)>,
    /// Rows forgotten, oldest first (committed rows before rows of `added`),
    /// with their ids.
    forgotten: Vec<(u64, Vec<Vec<u8>>)>,
}

impl RememberedIndex {
    /// Reads every row of `tree`.
    pub fn load(tree: &sled::Tree) -> Result<Self, StateError> {
        let mut index = Self::default();
        for row in tree.iter() {
            let (key, value) = row?;
            let row_key = keys::decode_u64(&key).ok_or_else(|| {
                StateError::Corrupt(format!(
                    "a remembered-requests key that is not a sequence number: {key:?}"
                ))
            })?;
            let requests: RememberedRow = keys::decode(&value)?;
            for (id, _) in requests {
                index.rows_of.insert(id.into_boxed_slice(), row_key);
            }
            index.rows.push_back(row_key);
        }
        Ok(index)
    }

    /// Applies what an apply call changed, once its writes committed.
    pub fn publish(&mut self, changes: RememberedChanges) {
        for (row_key, ids) in changes.added {
            for id in ids {
                self.rows_of.insert(id.into_boxed_slice(), row_key);
            }
            self.rows.push_back(row_key);
        }
        for (row_key, ids) in changes.forgotten {
            debug_assert_eq!(self.rows.front(), Some(&row_key));
            self.rows.pop_front();
            for id in ids {
                // The id may be in a newer row already (remembered again
                // after it was forgotten, in the same apply call).
                if self.rows_of.get(id.as_slice()) == Some(&row_key) {
                    self.rows_of.remove(id.as_slice());
                }
            }
        }
    }
}

/// One apply call's access to the remembered requests, through its staged
/// writes. Lookups see the committed index plus what this call wrote and
/// minus what it forgot.
pub struct RememberedWriter<'a> {
    index: &'a RememberedIndex,
    limit: u64,
    /// Ids remembered by this call: id → row key.
    added: HashMap<Vec<u8>, u64>,
    /// The entry being applied: its row so far (key, requests).
    open: Option<(u64, RememberedRow)>,
    changes: RememberedChanges,
}

impl<'a> RememberedWriter<'a> {
    /// `limit` is [`MAX_REMEMBERED_REQUESTS`] except in tests.
    pub fn new(index: &'a RememberedIndex, limit: u64) -> Self {
        Self {
            index,
            limit,
            added: HashMap::new(),
            open: None,
            changes: RememberedChanges::default(),
        }
    }

    /// The outcome remembered for `request_id`, if it is remembered. An
    /// empty id is never remembered.
    pub fn lookup(
        &self,
        staged: &Staged,
        request_id: &[u8],
        app: &AppMeta,
    ) -> Result<Option<WriteOutcome>, StateError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let Some(&row_key) = self
            .added
            .get(request_id)
            .or_else(|| self.index.rows_of.get(request_id))
        else {
            return Ok(None);
        };
        // The id's sequence is its row's key plus its place in the row: the
        // last place, as an id forgotten within one entry (a small limit)
        // can be remembered again in the same row.
        let remembered =
            |row: &RememberedRow| match row.iter().rposition(|(id, _)| id == request_id) {
                Some(place) if row_key + place as u64 >= app.oldest_request_sequence => {
                    Ok(Some(row[place].1.clone()))
                }
                Some(_) => Ok(None),
                None => Err(StateError::Corrupt(format!(
                    "remembered-requests row {row_key} does not hold an id indexed in it"
                ))),
            };
        if let Some((open_key, row)) = &self.open {
            if *open_key == row_key {
                return remembered(row);
            }
        }
        let Some(bytes) = staged.get(StateTree::Remembered, &keys::log_index_key(row_key))? else {
            // Deleted by this call: all its ids were below the cutoff.
            if row_key < app.oldest_request_sequence {
                return Ok(None);
            }
            return Err(StateError::Corrupt(format!(
                "remembered-requests row {row_key} is indexed but missing"
            )));
        };
        remembered(&keys::decode::<RememberedRow>(&bytes)?)
    }

    /// Remembers `request_id`'s outcome in the current entry's row. The
    /// caller has checked with [`lookup`](Self::lookup) that it is not
    /// remembered yet. An empty id is not remembered.
    pub fn remember(&mut self, request_id: &[u8], outcome: &WriteOutcome, app: &mut AppMeta) {
        if request_id.is_empty() {
            return;
        }
        let (row_key, row) = self
            .open
            .get_or_insert_with(|| (app.next_request_sequence, Vec::new()));
        row.push((request_id.to_vec(), outcome.clone()));
        self.added.insert(request_id.to_vec(), *row_key);
        app.next_request_sequence += 1;
        app.oldest_request_sequence = app
            .oldest_request_sequence
            .max(app.next_request_sequence.saturating_sub(self.limit));
    }

    /// Ends an entry: writes its row, if it remembered anything, then
    /// deletes the oldest rows whose ids are all below the cutoff.
    pub fn end_entry(&mut self, staged: &mut Staged, app: &mut AppMeta) -> Result<(), StateError> {
        if let Some((row_key, row)) = self.open.take() {
            staged.insert(
                StateTree::Remembered,
                keys::log_index_key(row_key),
                keys::encode(&row),
            );
            let ids = row.into_iter().map(|(id, _)| id).collect();
            self.changes.added.push((row_key, ids));
        }
        loop {
            let forgotten = self.changes.forgotten.len();
            let Some(oldest) = self.row_key(forgotten) else {
                break;
            };
            // The row holds the sequences up to the next row's key.
            let end = self
                .row_key(forgotten + 1)
                .unwrap_or(app.next_request_sequence);
            if end > app.oldest_request_sequence {
                break;
            }
            let Some(bytes) = staged.remove(StateTree::Remembered, &keys::log_index_key(oldest))?
            else {
                return Err(StateError::Corrupt(format!(
                    "remembered-requests row {oldest} is indexed but missing"
                )));
            };
            let ids = keys::decode::<RememberedRow>(&bytes)?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            self.changes.forgotten.push((oldest, ids));
        }
        Ok(())
    }

    /// The key of the `i`-th row, oldest first, of the committed rows
    /// followed by the rows this call wrote.
    fn row_key(&self, i: usize) -> Option<u64> {
        let committed = self.index.rows.len();
        if i < committed {
            self.index.rows.get(i).copied()
        } else {
            self.changes.added.get(i - committed).map(|(key, _)| *key)
        }
    }

    /// What this call changed, for [`RememberedIndex::publish`] after the
    /// call's writes commit. Every entry must have been ended.
    pub fn into_changes(self) -> RememberedChanges {
        debug_assert!(self.open.is_none(), "an entry was not ended");
        self.changes
    }
}

/// Rows for the request-id table of older builds (`request_ids`: id →
/// `RememberedRequest { sequence, outcome }`): each id becomes a row of its
/// own, keyed by its sequence, which keeps the retention order.
pub fn rows_from_legacy(
    legacy: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), sled::Error>>,
) -> Result<Vec<(u64, RememberedRow)>, StateError> {
    let mut rows = Vec::new();
    for row in legacy {
        let (id, value) = row?;
        let remembered: keys::RememberedRequest = keys::decode(&value)?;
        rows.push((remembered.sequence, vec![(id, remembered.outcome)]));
    }
    rows.sort_unstable_by_key(|(sequence, _)| *sequence);
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand::SeedableRng;

    use crate::store::staged;

    fn outcome(n: u64) -> WriteOutcome {
        WriteOutcome {
            versions: vec![crate::types::Version {
                physical_ms: n,
                logical: 0,
                origin_node: 1,
            }],
            ..WriteOutcome::default()
        }
    }

    /// The documented rule, written plainly: every remembered id with its
    /// sequence; an id is remembered while its sequence is among the last
    /// `limit`.
    struct Model {
        limit: u64,
        next: u64,
        ids: Vec<(Vec<u8>, u64, u64)>,
    }

    impl Model {
        fn lookup(&self, id: &[u8]) -> Option<u64> {
            let cutoff = self.next.saturating_sub(self.limit);
            self.ids
                .iter()
                .rev()
                .find(|(known, sequence, _)| known == id && *sequence >= cutoff)
                .map(|(_, _, n)| *n)
        }

        fn remember(&mut self, id: &[u8], n: u64) {
            self.ids.push((id.to_vec(), self.next, n));
            self.next += 1;
        }
    }

    struct Store {
        _db: sled::Db,
        trees: staged::Trees,
        tree: sled::Tree,
        index: RememberedIndex,
        app: AppMeta,
        limit: u64,
        commits: u64,
    }

    impl Store {
        fn new(limit: u64) -> Self {
            let db = sled::Config::new().temporary(true).open().expect("db");
            let trees = staged::Trees::open(&db).expect("trees");
            Self {
                tree: trees.remembered.clone(),
                trees,
                _db: db,
                index: RememberedIndex::default(),
                app: AppMeta::default(),
                limit,
                commits: 0,
            }
        }

        /// Applies one call: a list of entries, each a list of (id, outcome
        /// number). Returns what each write's lookup found.
        fn apply(&mut self, call: &[Vec<(Vec<u8>, u64)>]) -> Vec<Option<u64>> {
            let mut staged = Staged::new(&self.trees);
            let mut app = self.app.clone();
            let mut writer = RememberedWriter::new(&self.index, self.limit);
            let mut found = Vec::new();
            for entry in call {
                for (id, n) in entry {
                    let hit = writer.lookup(&staged, id, &app).expect("lookup");
                    found.push(hit.as_ref().map(|o| o.versions[0].physical_ms));
                    if hit.is_none() {
                        writer.remember(id, &outcome(*n), &mut app);
                    }
                }
                writer.end_entry(&mut staged, &mut app).expect("end entry");
            }
            let changes = writer.into_changes();
            self.commits += 1;
            staged.commit(self.commits).expect("commit");
            self.index.publish(changes);
            self.app = app;
            found
        }
    }

    /// Random ids from a small pool, in entries of 0 to 5 writes, in apply
    /// calls of 1 to 4 entries: every lookup answers as the model does,
    /// whatever the grouping into calls, and an index rebuilt from the tree
    /// (a restart) equals the one kept up to date.
    #[test]
    fn lookups_follow_the_retention_rule_whatever_the_apply_calls() {
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let limit = rng.gen_range(1..12u64);
            let mut store = Store::new(limit);
            let mut model = Model {
                limit,
                next: 0,
                ids: Vec::new(),
            };
            let mut n = 0;
            for _ in 0..150 {
                let call: Vec<Vec<(Vec<u8>, u64)>> = (0..rng.gen_range(1..=4))
                    .map(|_| {
                        (0..rng.gen_range(0..=5))
                            .map(|_| {
                                n += 1;
                                (vec![rng.gen_range(0..30u8)], n)
                            })
                            .collect()
                    })
                    .collect();
                let mut expected = Vec::new();
                for (id, n) in call.iter().flatten() {
                    let hit = model.lookup(id);
                    expected.push(hit);
                    if hit.is_none() {
                        model.remember(id, *n);
                    }
                }
                assert_eq!(store.apply(&call), expected, "seed {seed}");
                assert_eq!(store.app.next_request_sequence, model.next);
                assert_eq!(
                    store.app.oldest_request_sequence,
                    model.next.saturating_sub(limit)
                );
                // Rows go once all their ids are forgotten: at most one
                // entry's ids (5) beyond the limit stay indexed.
                assert!(
                    store.index.rows_of.len() < limit as usize + 5,
                    "seed {seed}"
                );
            }
            let reloaded = RememberedIndex::load(&store.tree).expect("load");
            assert_eq!(reloaded.rows_of, store.index.rows_of, "seed {seed}");
            assert_eq!(reloaded.rows, store.index.rows, "seed {seed}");
            assert_eq!(store.tree.len(), store.index.rows.len());
        }
    }

    /// Ids are forgotten one by one, by sequence, even while their row is
    /// kept for younger ids; the row goes once all its ids are forgotten.
    #[test]
    fn ids_are_forgotten_one_by_one_and_rows_once_all_their_ids_are() {
        let mut store = Store::new(4);
        let ids = |names: &[(&str, u64)]| -> Vec<(Vec<u8>, u64)> {
            names
                .iter()
                .map(|(id, n)| (id.as_bytes().to_vec(), *n))
                .collect()
        };
        // Sequences a=0 b=1 c=2 (row 0), d=3 e=4 (row 3): "a" is forgotten.
        store.apply(&[
            ids(&[("a", 10), ("b", 11), ("c", 12)]),
            ids(&[("d", 13), ("e", 14)]),
        ]);
        assert_eq!(store.app.oldest_request_sequence, 1);
        // "a" is applied again (sequence 5, so "b" goes); "c" is still known.
        assert_eq!(
            store.apply(&[ids(&[("a", 20), ("c", 21)])]),
            vec![None, Some(12)]
        );
        assert_eq!(store.index.rows.len(), 3, "row 0 still holds c");
        assert_eq!(store.apply(&[ids(&[("b", 30)])]), vec![None]);
        // Sequence 6 moved the cutoff to 3: all of row 0 is forgotten.
        assert_eq!(store.index.rows, [3, 5, 6]);
        assert_eq!(
            store.apply(&[ids(&[("a", 40), ("c", 41)])]),
            vec![Some(20), None]
        );
    }

    /// A row that the index names but the tree lacks is an error, not a
    /// silent "not remembered" (that would apply a retried write twice).
    #[test]
    fn an_indexed_row_missing_from_the_tree_is_an_error() {
        let store = Store::new(10);
        let mut index = RememberedIndex::default();
        index.rows_of.insert(b"x".to_vec().into_boxed_slice(), 0);
        index.rows.push_back(0);
        let staged = Staged::new(&store.trees);
        let writer = RememberedWriter::new(&index, 10);
        let error = writer
            .lookup(&staged, b"x", &AppMeta::default())
            .expect_err("missing row");
        assert!(error.to_string().contains("indexed but missing"), "{error}");
    }

    #[test]
    fn legacy_rows_become_one_row_per_id_in_sequence_order() {
        let legacy = [(b"late".to_vec(), 7u64), (b"early".to_vec(), 3)]
            .into_iter()
            .map(|(id, sequence)| {
                let value = keys::encode(&keys::RememberedRequest {
                    sequence,
                    outcome: outcome(sequence),
                });
                Ok((id, value))
            });
        let rows = rows_from_legacy(legacy).expect("rows");
        assert_eq!(
            rows,
            vec![
                (3, vec![(b"early".to_vec(), outcome(3))]),
                (7, vec![(b"late".to_vec(), outcome(7))]),
            ]
        );
    }
}
