//! Replicated sensor readings, stored in blocks: one sled row holds a run of
//! one sensor's readings, not one reading.
//!
//! Why: sled's insert is the floor of the apply cost (7 to 28 µs a row under
//! load, `docs/bench/profile-2026-11-21.md`). With one row per reading, a
//! batch of 100 readings cost 100 lookups and 100 inserts on every replica; in
//! blocks it costs one or two. Time-series stores do the same (OpenTSDB's row
//! per sensor-hour, Prometheus' chunks, Cassandra's wide partitions).
//!
//! Layout invariants (all checked by `check_layout` in the tests):
//! - A block's key is `reading_key(sensor, first)`: `first` is the lowest
//!   timestamp the block may hold. Every reading in it has `first <= ts <`
//!   the key timestamp of the sensor's next block.
//! - A block holds 1 to [`MAX_READINGS_PER_BLOCK`] readings, sorted by
//!   timestamp, one per timestamp, and at most [`MAX_BLOCK_BYTES`] encoded
//!   unless it holds a single reading.
//! - Blocks are never removed or re-keyed; they gain readings and split.
//! - Splits happen at the insert that overflows a block, so the layout after
//!   an entry depends only on the state before it and the entry, not on how
//!   entries were grouped into apply calls: replicas that start from the same
//!   blocks stay byte-identical. (A replica whose row-per-reading data was
//!   rebuilt into blocks at another log index holds the same readings in
//!   other blocks: logically identical, not byte-identical.)
//! - A split moves readings from one row to another, and a sled iterator is
//!   not a snapshot: a range read must not overlap an apply that splits, or it
//!   could see moved readings twice or not at all. `StateMachineStore`
//!   serializes them with its `ReadingsGate`.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::keys;
use super::keys::reading_key_at as key_at;
use super::keys::ReadingRow;
use super::keys::StoredReading;
use crate::types::Version;

/// The most readings a block holds. A write of one reading rewrites its
/// block, so this bounds that cost; a batch of 100 readings of one sensor
/// fills one or two blocks.
pub const MAX_READINGS_PER_BLOCK: usize = 64;

/// The most encoded bytes a block of more than one reading holds (readings
/// with many tags reach it before the count limit). One reading is at most
/// about 5.3 KiB (the API's tag limits), so a single reading always fits.
pub const MAX_BLOCK_BYTES: usize = 16 * 1024;

/// The most blocks [`rebuild`] holds in memory before writing them out.
const REBUILD_BATCH_BLOCKS: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Storage(#[from] sled::Error),
    #[error("undecodable reading block: {0}")]
    Decode(#[from] bincode::Error),
    #[error("malformed reading block key of {0} bytes")]
    Key(usize),
    #[error("the reading block (key of {0} bytes) its key range listed is gone")]
    Missing(usize),
}

pub type BlockResult<T> = Result<T, BlockError>;

/// The block's rows as stored: bincode of `Vec<ReadingRow>`.
fn decode_block(bytes: &[u8]) -> BlockResult<Vec<ReadingRow>> {
    Ok(keys::decode(bytes)?)
}

/// The encoded size of one row (bincode, fixed-width integers): timestamp,
/// value, tag count and tags, version.
fn row_bytes(row: &ReadingRow) -> usize {
    let tags: usize = row
        .reading
        .tags
        .iter()
        .map(|(k, v)| 16 + k.len() + v.len())
        .sum();
    8 + 8 + 8 + tags + 20
}

/// A block key's sensor prefix and timestamp.
fn split_key(key: &[u8]) -> BlockResult<(&[u8], u64)> {
    match keys::reading_key_timestamp(key) {
        Some(ts) if key.len() >= 2 + 8 => Ok((&key[..key.len() - 8], ts)),
        _ => Err(BlockError::Key(key.len())),
    }
}

/// The stored bytes of the block at `key`, a key the tree just listed.
fn block_bytes(tree: &sled::Tree, key: &[u8]) -> BlockResult<sled::IVec> {
    tree.get(key)?.ok_or(BlockError::Missing(key.len()))
}

/// A block loaded into a [`BlockWriter`].
struct Loaded {
    rows: Vec<ReadingRow>,
    bytes: usize,
    dirty: bool,
}

impl Loaded {
    fn new(rows: Vec<ReadingRow>, dirty: bool) -> Self {
        let bytes = 8 + rows.iter().map(row_bytes).sum::<usize>();
        Self { rows, bytes, dirty }
    }

    fn overflows(&self) -> bool {
        self.rows.len() > MAX_READINGS_PER_BLOCK
            || (self.rows.len() > 1 && self.bytes > MAX_BLOCK_BYTES)
    }

    /// Cuts off everything past the longest prefix that fits both limits
    /// (at least one row).
    fn split_off_overflow(&mut self) -> Vec<ReadingRow> {
        let mut bytes = 8;
        let mut keep = 0;
        for row in &self.rows {
            let next = bytes + row_bytes(row);
            if keep == MAX_READINGS_PER_BLOCK || (keep > 0 && next > MAX_BLOCK_BYTES) {
                break;
            }
            bytes = next;
            keep += 1;
        }
        let rest = self.rows.split_off(keep);
        self.bytes = bytes;
        rest
    }
}

/// The last block found, and where the next block of its sensor starts.
struct Span {
    prefix: Vec<u8>,
    key: Vec<u8>,
    next: Option<Vec<u8>>,
}

impl Span {
    fn contains(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix)
            && key >= self.key.as_slice()
            && self.next.as_deref().is_none_or(|next| key < next)
    }
}

/// The greatest block key of the sensor with `prefix` at or below `key`.
fn floor(tree: &sled::Tree, prefix: &[u8], key: &[u8]) -> BlockResult<Option<Vec<u8>>> {
    // Keys between `prefix` and `key` all belong to this sensor: sensor ids
    // are length-prefixed.
    match tree.range(prefix..=key).next_back() {
        Some(row) => Ok(Some(row?.0.to_vec())),
        None => Ok(None),
    }
}

/// The least block key of the sensor with `prefix` above `key`.
fn next(tree: &sled::Tree, prefix: &[u8], key: &[u8]) -> BlockResult<Option<Vec<u8>>> {
    match tree
        .range::<&[u8], _>((Bound::Excluded(key), Bound::Unbounded))
        .next()
    {
        Some(row) => Ok(Some(row?.0.to_vec()).filter(|k| k.starts_with(prefix))),
        None => Ok(None),
    }
}

/// Reads and changes blocks for one apply call: committed blocks are read
/// once, changed in memory, and handed back by [`BlockWriter::into_dirty`]
/// to be written with the apply's other writes.
pub struct BlockWriter<'a> {
    committed: &'a sled::Tree,
    blocks: BTreeMap<Vec<u8>, Loaded>,
    span: Option<Span>,
}

impl<'a> BlockWriter<'a> {
    pub fn new(committed: &'a sled::Tree) -> Self {
        Self {
            committed,
            blocks: BTreeMap::new(),
            span: None,
        }
    }

    /// The first key of the sensor's blocks after `key`, committed or in
    /// memory.
    fn next_block(&self, prefix: &[u8], key: &[u8]) -> BlockResult<Option<Vec<u8>>> {
        let committed = next(self.committed, prefix, key)?;
        let in_memory = self
            .blocks
            .range::<[u8], _>((Bound::Excluded(key), Bound::Unbounded))
            .next()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with(prefix));
        Ok([committed, in_memory].into_iter().flatten().min())
    }

    /// The key of the block that holds (or would hold) `ts` of the sensor
    /// with `prefix`, loaded into memory; `None` if `ts` is before every
    /// block of the sensor.
    fn locate(&mut self, prefix: &[u8], ts: u64) -> BlockResult<Option<Vec<u8>>> {
        let key = key_at(prefix, ts);
        if let Some(span) = &self.span {
            if span.contains(&key) {
                return Ok(Some(span.key.clone()));
            }
        }
        let committed = floor(self.committed, prefix, &key)?;
        let in_memory = self
            .blocks
            .range::<[u8], _>((Bound::Included(prefix), Bound::Included(key.as_slice())))
            .next_back()
            .map(|(k, _)| k.clone());
        let Some(found) = committed.max(in_memory) else {
            self.span = None;
            return Ok(None);
        };
        if !self.blocks.contains_key(&found) {
            let rows = decode_block(&block_bytes(self.committed, &found)?)?;
            self.blocks.insert(found.clone(), Loaded::new(rows, false));
        }
        self.span = Some(Span {
            prefix: prefix.to_vec(),
            next: self.next_block(prefix, &found)?,
            key: found.clone(),
        });
        Ok(Some(found))
    }

    /// The stored reading of the sensor with `prefix` at `ts`.
    pub fn get(&mut self, prefix: &[u8], ts: u64) -> BlockResult<Option<&StoredReading>> {
        let Some(key) = self.locate(prefix, ts)? else {
            return Ok(None);
        };
        let block = &self.blocks[&key];
        Ok(block
            .rows
            .binary_search_by_key(&ts, |row| row.timestamp_ms)
            .ok()
            .map(|at| &block.rows[at].reading))
    }

    /// The version stored for the sensor with `prefix` at `ts`.
    pub fn version(&mut self, prefix: &[u8], ts: u64) -> BlockResult<Option<Version>> {
        Ok(self.get(prefix, ts)?.map(|reading| reading.version))
    }

    /// Stores a reading (replacing one at the same timestamp), splitting its
    /// block if it overflows.
    pub fn put(&mut self, prefix: &[u8], row: ReadingRow) -> BlockResult<()> {
        let Some(key) = self.locate(prefix, row.timestamp_ms)? else {
            // Before every block of the sensor: a new first block.
            self.blocks.insert(
                key_at(prefix, row.timestamp_ms),
                Loaded::new(vec![row], true),
            );
            self.span = None;
            return Ok(());
        };
        let block = self
            .blocks
            .get_mut(&key)
            .expect("locate loads the block it returns");
        block.dirty = true;
        match block
            .rows
            .binary_search_by_key(&row.timestamp_ms, |r| r.timestamp_ms)
        {
            Ok(at) => {
                block.bytes = block.bytes + row_bytes(&row) - row_bytes(&block.rows[at]);
                block.rows[at] = row;
            }
            Err(at) => {
                block.bytes += row_bytes(&row);
                block.rows.insert(at, row);
            }
        }
        if !block.overflows() {
            return Ok(());
        }
        // Split: the block keeps what fits, the rest goes into new blocks
        // keyed by their first timestamp (each piece fits in turn).
        let mut rest = block.split_off_overflow();
        while !rest.is_empty() {
            let mut piece = Loaded::new(rest, true);
            rest = if piece.overflows() {
                piece.split_off_overflow()
            } else {
                Vec::new()
            };
            self.blocks
                .insert(key_at(prefix, piece.rows[0].timestamp_ms), piece);
        }
        self.span = None;
        Ok(())
    }

    /// The changed blocks, encoded, in key order.
    pub fn into_dirty(self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
        self.blocks
            .into_iter()
            .filter(|(_, block)| block.dirty)
            .map(|(key, block)| (key, keys::encode(&block.rows)))
    }
}

/// The newest reading of the sensor with `prefix`.
pub fn latest(tree: &sled::Tree, prefix: &[u8]) -> BlockResult<Option<ReadingRow>> {
    match tree.scan_prefix(prefix).next_back() {
        Some(row) => Ok(decode_block(&row?.1)?.pop()),
        None => Ok(None),
    }
}

/// Up to `limit` readings of the sensor with `prefix` with
/// `from_ms <= ts <= to_ms`, in time order (newest first when `descending`).
pub fn range(
    tree: &sled::Tree,
    prefix: &[u8],
    (from_ms, to_ms): (u64, u64),
    limit: usize,
    descending: bool,
) -> BlockResult<Vec<ReadingRow>> {
    let mut out = Vec::new();
    if from_ms > to_ms || limit == 0 {
        return Ok(out);
    }
    let in_range = |row: &ReadingRow| (from_ms..=to_ms).contains(&row.timestamp_ms);
    // Blocks keyed up to `to_ms`; the one holding `from_ms` may be keyed
    // below it, so start from the sensor's first block and skip.
    let blocks = tree.range(prefix..=key_at(prefix, to_ms).as_slice());
    if descending {
        for block in blocks.rev() {
            let (key, value) = block?;
            for row in decode_block(&value)?.into_iter().rev().filter(in_range) {
                out.push(row);
                if out.len() == limit {
                    return Ok(out);
                }
            }
            if split_key(&key)?.1 <= from_ms {
                break;
            }
        }
    } else {
        // The block that holds `from_ms` is the last one keyed at or below it.
        let first =
            floor(tree, prefix, &key_at(prefix, from_ms))?.unwrap_or_else(|| prefix.to_vec());
        for block in tree.range(first.as_slice()..=key_at(prefix, to_ms).as_slice()) {
            let (_, value) = block?;
            for row in decode_block(&value)?.into_iter().filter(in_range) {
                out.push(row);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Fills the empty `tree` with blocks made of one-row-per-reading rows
/// (keyed by `keys::reading_key`, value bincode `StoredReading`): the layout
/// before blocks, found in old data directories and old snapshots. Rows may
/// come in any order; memory is bounded by writing the blocks out every
/// `REBUILD_BATCH_BLOCKS` blocks. Returns how many readings it stored.
pub fn rebuild<E>(
    tree: &sled::Tree,
    rows: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
) -> BlockResult<usize>
where
    BlockError: From<E>,
{
    let mut writer = BlockWriter::new(tree);
    let mut count = 0;
    for row in rows {
        let (key, value) = row?;
        let (prefix, timestamp_ms) = split_key(&key)?;
        let reading: StoredReading = keys::decode(&value)?;
        writer.put(
            prefix,
            ReadingRow {
                timestamp_ms,
                reading,
            },
        )?;
        count += 1;
        if writer.blocks.len() >= REBUILD_BATCH_BLOCKS {
            write_out(tree, writer)?;
            writer = BlockWriter::new(tree);
        }
    }
    write_out(tree, writer)?;
    Ok(count)
}

fn write_out(tree: &sled::Tree, writer: BlockWriter<'_>) -> BlockResult<()> {
    let mut batch = sled::Batch::default();
    for (key, value) in writer.into_dirty() {
        batch.insert(key, value);
    }
    tree.apply_batch(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::Rng;
    use rand::SeedableRng;

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().expect("open");
        db.open_tree("blocks").expect("tree")
    }

    fn reading(value: f64, tags: usize) -> StoredReading {
        StoredReading {
            value,
            tags: (0..tags)
                .map(|i| (format!("tag{i}"), "x".repeat(200)))
                .collect(),
            version: Version {
                physical_ms: value as u64,
                logical: 0,
                origin_node: 1,
            },
        }
    }

    fn row(ts: u64, value: f64) -> ReadingRow {
        ReadingRow {
            timestamp_ms: ts,
            reading: reading(value, 0),
        }
    }

    /// Applies puts in groups (one writer per group, as one apply call).
    fn apply(tree: &sled::Tree, groups: &[Vec<(&str, ReadingRow)>]) {
        for group in groups {
            let mut writer = BlockWriter::new(tree);
            for (sensor, row) in group {
                writer
                    .put(&keys::sensor_prefix(sensor), row.clone())
                    .expect("put");
            }
            write_out(tree, writer).expect("write");
        }
    }

    /// Every invariant of the module docs; returns the rows of all blocks.
    fn check_layout(tree: &sled::Tree) -> Vec<(Vec<u8>, ReadingRow)> {
        let mut all = Vec::new();
        let blocks: Vec<_> = tree.iter().map(|r| r.expect("row")).collect();
        for (i, (key, value)) in blocks.iter().enumerate() {
            let (prefix, first) = split_key(key).expect("key");
            let rows = decode_block(value).expect("block");
            assert!(!rows.is_empty(), "empty block");
            assert!(rows.len() <= MAX_READINGS_PER_BLOCK, "{} rows", rows.len());
            let bytes = Loaded::new(rows.clone(), false).bytes;
            assert_eq!(bytes, value.len(), "row_bytes is the encoded size");
            assert!(rows.len() == 1 || bytes <= MAX_BLOCK_BYTES, "{bytes} bytes");
            let next = blocks
                .get(i + 1)
                .map(|(k, _)| split_key(k).expect("key"))
                .filter(|(p, _)| *p == prefix)
                .map(|(_, ts)| ts);
            for pair in rows.windows(2) {
                assert!(pair[0].timestamp_ms < pair[1].timestamp_ms, "unsorted");
            }
            for row in &rows {
                assert!(row.timestamp_ms >= first, "row before its block key");
                assert!(next.is_none_or(|n| row.timestamp_ms < n), "row past next");
                all.push((prefix.to_vec(), row.clone()));
            }
        }
        all
    }

    #[test]
    fn appends_fill_blocks_and_reads_see_every_reading() {
        let tree = tree();
        let group: Vec<_> = (0..1000).map(|ts| ("s", row(ts, ts as f64))).collect();
        apply(&tree, &[group]);
        let rows = check_layout(&tree);
        assert_eq!(rows.len(), 1000);
        // Appends leave full blocks behind.
        assert_eq!(tree.len(), 1000_usize.div_ceil(MAX_READINGS_PER_BLOCK));
        let prefix = keys::sensor_prefix("s");
        let newest = latest(&tree, &prefix).expect("latest").expect("some");
        assert_eq!(newest.timestamp_ms, 999);
        let asc = range(&tree, &prefix, (100, 400), 1000, false).expect("range");
        assert_eq!(asc.len(), 301);
        assert_eq!((asc[0].timestamp_ms, asc[300].timestamp_ms), (100, 400));
        let desc = range(&tree, &prefix, (100, 400), 50, true).expect("range");
        assert_eq!(desc.len(), 50);
        assert_eq!((desc[0].timestamp_ms, desc[49].timestamp_ms), (400, 351));
        assert!(range(&tree, &prefix, (5, 4), 10, false)
            .expect("range")
            .is_empty());
        assert!(latest(&tree, &keys::sensor_prefix("other"))
            .expect("latest")
            .is_none());
    }

    /// Random puts of several sensors (out of order, overwrites, big tags),
    /// in groups of several sizes, against a model: reads agree, the layout
    /// holds, and the bytes stored do not depend on the grouping.
    #[test]
    fn random_puts_match_a_model_whatever_the_grouping() {
        let mut rng = StdRng::seed_from_u64(7);
        let sensors = ["a", "ab", "b"];
        let puts: Vec<(&str, ReadingRow)> = (0..3000)
            .map(|i| {
                let sensor = sensors[rng.gen_range(0..sensors.len())];
                let ts = rng.gen_range(0..600_u64) * 10;
                let tags = if rng.gen_ratio(1, 10) { 16 } else { 0 };
                (
                    sensor,
                    ReadingRow {
                        timestamp_ms: ts,
                        reading: reading(i as f64, tags),
                    },
                )
            })
            .collect();
        let mut model: BTreeMap<(&str, u64), StoredReading> = BTreeMap::new();
        for (sensor, row) in &puts {
            model.insert((sensor, row.timestamp_ms), row.reading.clone());
        }
        let mut stored = Vec::new();
        for group_size in [1, 7, 3000] {
            let tree = tree();
            let groups: Vec<_> = puts.chunks(group_size).map(|g| g.to_vec()).collect();
            apply(&tree, &groups);
            assert_eq!(check_layout(&tree).len(), model.len());
            for sensor in sensors {
                let prefix = keys::sensor_prefix(sensor);
                let expected: Vec<_> = model
                    .range((sensor, 0)..=(sensor, u64::MAX))
                    .map(|((_, ts), r)| (*ts, r.clone()))
                    .collect();
                let got: Vec<_> = range(&tree, &prefix, (0, u64::MAX), usize::MAX, false)
                    .expect("range")
                    .into_iter()
                    .map(|r| (r.timestamp_ms, r.reading))
                    .collect();
                assert_eq!(got, expected, "sensor {sensor}");
                let (lo, hi) = (1234, 4321);
                let mut want: Vec<_> = expected
                    .iter()
                    .filter(|(ts, _)| (lo..=hi).contains(ts))
                    .map(|(ts, _)| *ts)
                    .collect();
                want.reverse();
                want.truncate(25);
                let got: Vec<_> = range(&tree, &prefix, (lo, hi), 25, true)
                    .expect("range")
                    .iter()
                    .map(|r| r.timestamp_ms)
                    .collect();
                assert_eq!(got, want, "descending page of {sensor}");
                let mut writer = BlockWriter::new(&tree);
                for (ts, reading) in &expected {
                    assert_eq!(writer.get(&prefix, *ts).expect("get"), Some(reading));
                    assert_eq!(writer.get(&prefix, ts + 1).expect("get"), None);
                }
            }
            stored.push(tree.iter().map(|r| r.expect("row")).collect::<Vec<_>>());
        }
        assert!(
            stored.windows(2).all(|w| w[0] == w[1]),
            "grouping changed the bytes"
        );
    }

    #[test]
    fn rebuild_from_rows_of_single_readings() {
        let old = tree();
        for ts in (0..500).rev() {
            old.insert(
                keys::reading_key("s", ts),
                keys::encode(&reading(ts as f64, 0)),
            )
            .expect("insert");
        }
        let new = tree();
        let count = rebuild(
            &new,
            old.iter().map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec()))),
        )
        .expect("rebuild");
        assert_eq!(count, 500);
        let rows = check_layout(&new);
        assert_eq!(rows.len(), 500);
        assert_eq!(rows[499].1.timestamp_ms, 499);
        let bad = [Ok::<_, BlockError>((b"short".to_vec(), Vec::new()))];
        assert!(matches!(rebuild(&tree(), bad), Err(BlockError::Key(5))));
    }
}
