//! An append-only, segmented write-ahead log on plain files: the Raft log's
//! (`log_store.rs`) and the provisional store's (`provisional.rs`, LOCAL
//! writes by their seq).
//!
//! The hot path of a STRONG write is "append, then make it durable". In sled
//! that meant sealing an I/O buffer per flush and waking sled's whole I/O
//! pool to write it: under load over half of the leader's CPU (profiled with
//! `perf`, issue 5). Here an append is one `write` to the active segment and
//! durability is one `fdatasync` shared by every append queued meanwhile (the
//! [`super::Flusher`] thread runs [`Wal::take_unsynced`]).
//!
//! Layout: `dir/<first index, 20 digits>.wal`, each a sequence of records
//!
//! ```text
//! | payload length u32 LE | crc32 u32 LE of (index ++ payload) | index u64 LE | payload |
//! ```
//!
//! with strictly consecutive indexes. A new segment starts when the active one
//! passes [`WAL_SEGMENT_BYTES`], and only after the closed one is synced, so
//! a crash can tear only the last segment. At open every segment is read and
//! checked; a torn or corrupt tail of the *last* segment (a crash during a
//! write that was never acknowledged) is cut off, anything wrong elsewhere is
//! an error.
//! Readers get records with `pread`, so they never block on a sync.
//!
//! Segments are written over zeros: an append that passes the zeroed end of
//! the file first extends it with [`WAL_ZERO_AHEAD_BYTES`] of zeros, and
//! records are written in place. Appending to a file changes its size, so
//! every `fdatasync` had to commit ext4's journal, and in ordered mode that
//! commit waits for other files' new blocks (sled's); writing over blocks
//! the file already has needs no journal commit. A zero tail (no header can
//! be all zeros: its checksum would not match) is the end of a segment's
//! records wherever it is; any other bad tail is torn or corrupt, as above.

use std::collections::BTreeMap;
use std::fs::File;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

/// A segment is closed (and a new one started) once it is this large.
pub const WAL_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The largest payload a record may carry (an entry is bounded far below
/// this by the gRPC message limits; a larger length field means corruption).
pub const WAL_MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;

/// How far ahead of the last record a segment is filled with zeros.
pub const WAL_ZERO_AHEAD_BYTES: u64 = 1024 * 1024;

const HEADER_BYTES: u64 = 16;
const SEGMENT_SUFFIX: &str = ".wal";

/// Where a record lives.
#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes of records; after them the file holds zeros up to `zeroed`.
    len: u64,
    zeroed: u64,
}

pub struct Wal {
    /// What the log holds, in messages ("Raft log", "provisional log").
    name: &'static str,
    dir: PathBuf,
    /// By first index; the last one is the active segment.
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<u64, Location>,
    /// Files written since the last sync, and whether the directory changed.
    unsynced: Vec<Arc<File>>,
    dir_changed: bool,
}

fn corrupt(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn checksum(index: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

fn encode_record(name: &str, buf: &mut Vec<u8>, index: u64, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= WAL_MAX_RECORD_BYTES)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{name} record {index} is {} bytes, over the WAL record limit of {WAL_MAX_RECORD_BYTES}",
                    payload.len()
                ),
            )
        })?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    Ok(())
}

/// The records of one segment file that check out, and the length of that
/// valid prefix (`None` when the whole file is valid).
fn scan(bytes: &[u8]) -> (Vec<(u64, u64, u32)>, Option<u64>) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header_end = at + HEADER_BYTES as usize;
        if header_end > bytes.len() {
            return (records, Some(at as u64));
        }
        let field = |from: usize, n: usize| &bytes[at + from..at + from + n];
        let len = u32::from_le_bytes(field(0, 4).try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(field(4, 4).try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(field(8, 8).try_into().expect("8 bytes"));
        let end = header_end + len as usize;
        if len > WAL_MAX_RECORD_BYTES || end > bytes.len() {
            return (records, Some(at as u64));
        }
        if checksum(index, &bytes[header_end..end]) != crc {
            return (records, Some(at as u64));
        }
        records.push((index, header_end as u64, len));
        at = end;
    }
    (records, None)
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the Raft log in `dir`, checking every record.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_as(dir, "Raft log")
    }

    /// Opens (or creates) the log in `dir`, checking every record; `name`
    /// says what it holds in messages.
    pub fn open_as(dir: &Path, name: &'static str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
                continue;
            };
            let first: u64 = stem
                .parse()
                .map_err(|_| corrupt(format!("unexpected file {}", path.display())))?;
            names.push((first, path));
        }
        names.sort();
        let mut wal = Wal {
            name,
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            unsynced: Vec::new(),
            dir_changed: false,
        };
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let bytes = std::fs::read(&path)?;
            let (records, valid_len) = scan(&bytes);
            let is_last = i + 1 == count;
            let zero_tail =
                valid_len.is_some_and(|valid| bytes[valid as usize..].iter().all(|b| *b == 0));
            let (len, zeroed) = match valid_len {
                None => (bytes.len() as u64, bytes.len() as u64),
                Some(valid) if zero_tail => (valid, bytes.len() as u64),
                Some(valid) if is_last => {
                    tracing::warn!(
                        segment = %path.display(),
                        cut_bytes = bytes.len() as u64 - valid,
                        "cutting a torn tail off the {name} (a write that was never acknowledged)"
                    );
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(valid)?;
                    file.sync_all()?;
                    (valid, valid)
                }
                Some(valid) => {
                    return Err(corrupt(format!(
                        "{name} segment {} is corrupt at byte {valid} and is not the last segment",
                        path.display()
                    )))
                }
            };
            for (index, offset, len) in records {
                if let Some((&last, _)) = wal.index.last_key_value() {
                    if index != last + 1 {
                        return Err(corrupt(format!(
                            "{name} segment {} holds record {index} after record {last}",
                            path.display()
                        )));
                    }
                }
                wal.index.insert(
                    index,
                    Location {
                        segment: first,
                        offset,
                        len,
                    },
                );
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            wal.segments.insert(
                first,
                Segment {
                    file: Arc::new(file),
                    path,
                    len,
                    zeroed,
                },
            );
        }
        Ok(wal)
    }

    pub fn first_index(&self) -> Option<u64> {
        self.index.first_key_value().map(|(i, _)| *i)
    }

    pub fn last_index(&self) -> Option<u64> {
        self.index.last_key_value().map(|(i, _)| *i)
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Appends records with consecutive indexes after the last one. Written
    /// to the OS at once (readable right away); durable after the [`PendingSync`] taken next has run.
    pub fn append(&mut self, records: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
        let Some((first, _)) = records.first() else {
            return Ok(());
        };
        let next = match self.last_index() {
            Some(last) => last + 1,
            None => *first,
        };
        for ((index, _), expected) in records.iter().zip(next..) {
            if *index != expected {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "appending {} record {index} where {expected} comes next",
                        self.name
                    ),
                ));
            }
        }
        let needs_new_segment = match self.segments.last_key_value() {
            None => true,
            Some((_, active)) => active.len >= WAL_SEGMENT_BYTES,
        };
        if needs_new_segment {
            if let Some((_, closed)) = self.segments.last_key_value() {
                // Durable before the next segment holds a record: otherwise
                // the kernel could write the new segment's records back and
                // not the closed one's tail, and after a crash open would
                // find a gap between segments, not a torn last segment.
                let closed = closed.file.clone();
                closed.sync_data()?;
                self.forget_unsynced(&closed);
            }
            let path = self.dir.join(segment_name(*first));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            self.segments.insert(
                *first,
                Segment {
                    file: Arc::new(file),
                    path,
                    len: 0,
                    zeroed: 0,
                },
            );
            self.dir_changed = true;
        }
        let (&segment_first, active) = self
            .segments
            .last_key_value()
            .expect("an active segment exists");
        let mut buf = Vec::with_capacity(
            records
                .iter()
                .map(|(_, p)| p.len() + HEADER_BYTES as usize)
                .sum(),
        );
        let mut locations = Vec::with_capacity(records.len());
        for (index, payload) in records {
            let offset = active.len + buf.len() as u64 + HEADER_BYTES;
            encode_record(self.name, &mut buf, *index, payload)?;
            locations.push((
                *index,
                Location {
                    segment: segment_first,
                    offset,
                    len: payload.len() as u32,
                },
            ));
        }
        let file = active.file.clone();
        let end = active.len + buf.len() as u64;
        file.write_all_at(&buf, active.len)?;
        let mut zeroed = active.zeroed;
        if end > zeroed {
            // The next megabyte of appends will write over these zeros.
            let to = (end / WAL_ZERO_AHEAD_BYTES + 1) * WAL_ZERO_AHEAD_BYTES;
            file.write_all_at(&vec![0u8; (to - end) as usize], end)?;
            zeroed = to;
        }
        if let Some(active) = self.segments.get_mut(&segment_first) {
            active.len = end;
            active.zeroed = zeroed;
        }
        self.index.extend(locations);
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            self.unsynced.push(file);
        }
        Ok(())
    }

    /// The payloads of the records in `range` that exist, in index order.
    pub fn read(
        &self,
        range: impl std::ops::RangeBounds<u64>,
    ) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
        self.read_batch(range, usize::MAX, usize::MAX)
    }

    /// Like [`Wal::read`], but at most `max_records`, and no more records
    /// once `max_bytes` of payload are read (the first is always read).
    pub fn read_batch(
        &self,
        range: impl std::ops::RangeBounds<u64>,
        max_records: usize,
        max_bytes: usize,
    ) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (index, at) in self.index.range(range).take(max_records) {
            if !out.is_empty() && bytes + at.len as usize > max_bytes {
                break;
            }
            bytes += at.len as usize;
            out.push((*index, self.read_record(*index, at)?));
        }
        Ok(out)
    }

    fn read_record(&self, index: u64, at: &Location) -> std::io::Result<Vec<u8>> {
        let segment = self.segments.get(&at.segment).ok_or_else(|| {
            corrupt(format!(
                "{} record {index} points at a missing segment",
                self.name
            ))
        })?;
        let mut payload = vec![0u8; at.len as usize];
        segment.file.read_exact_at(&mut payload, at.offset)?;
        Ok(payload)
    }

    /// The payload bytes of the records in `range`.
    pub fn payload_bytes(&self, range: impl std::ops::RangeBounds<u64>) -> u64 {
        self.index
            .range(range)
            .map(|(_, at)| u64::from(at.len))
            .sum()
    }

    /// Makes every segment durable, whoever wrote it: at open, records a
    /// process wrote before it died may be in the page cache only.
    pub fn sync(&mut self) -> std::io::Result<()> {
        for segment in self.segments.values() {
            segment.file.sync_data()?;
        }
        self.unsynced.clear();
        self.dir_changed = false;
        sync_dir(&self.dir)
    }

    /// What the flush thread must make durable: taken under the lock, synced
    /// outside it so appends go on meanwhile.
    pub fn take_unsynced(&mut self) -> PendingSync {
        PendingSync {
            files: std::mem::take(&mut self.unsynced),
            dir: std::mem::take(&mut self.dir_changed).then(|| self.dir.clone()),
        }
    }

    /// Removes every record at or after `from` (entries that conflict with
    /// the leader's). Durable before it returns.
    pub fn truncate_from(&mut self, from: u64) -> std::io::Result<()> {
        let Some(at) = self.index.get(&from).copied() else {
            return Ok(());
        };
        self.index.split_off(&from);
        let later: Vec<u64> = self
            .segments
            .range(at.segment + 1..)
            .map(|(first, _)| *first)
            .collect();
        for first in later {
            self.remove_segment(first)?;
        }
        let cut_at = at.offset - HEADER_BYTES;
        if cut_at == 0 {
            self.remove_segment(at.segment)?;
        } else if let Some(segment) = self.segments.get_mut(&at.segment) {
            segment.file.set_len(cut_at)?;
            segment.file.sync_all()?;
            segment.len = cut_at;
            segment.zeroed = cut_at;
        }
        sync_dir(&self.dir)
    }

    /// Forgets every record at or before `upto` and deletes the segments
    /// that hold nothing else.
    pub fn purge_upto(&mut self, upto: u64) -> std::io::Result<()> {
        self.index = self.index.split_off(&(upto + 1));
        let keep_from = self.index.first_key_value().map(|(_, at)| at.segment);
        let dead: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|first| keep_from.is_none_or(|keep| *first < keep))
            .collect();
        for first in dead {
            self.remove_segment(first)?;
        }
        Ok(())
    }

    /// `file` no longer needs the next [`PendingSync`] (synced, or removed).
    fn forget_unsynced(&mut self, file: &Arc<File>) {
        self.unsynced.retain(|f| !Arc::ptr_eq(f, file));
    }

    fn remove_segment(&mut self, first: u64) -> std::io::Result<()> {
        if let Some(segment) = self.segments.remove(&first) {
            self.forget_unsynced(&segment.file);
            std::fs::remove_file(&segment.path)?;
            self.dir_changed = true;
        }
        Ok(())
    }
}

/// The log behind its lock; a poisoned lock is taken as it is, as the
/// log store always has.
pub fn lock(wal: &Mutex<Wal>) -> MutexGuard<'_, Wal> {
    wal.lock().unwrap_or_else(|e| e.into_inner())
}

/// Files (and maybe the directory) to `fdatasync`, taken from the log.
pub struct PendingSync {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
}

impl PendingSync {
    pub fn run(self) -> std::io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some(dir) = self.dir {
            sync_dir(&dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry-{i}")
            .repeat((i % 7 + 1) as usize)
            .into_bytes()
    }

    fn append_range(wal: &mut Wal, from: u64, to: u64) {
        let records: Vec<_> = (from..=to).map(|i| (i, payload(i))).collect();
        wal.append(&records).expect("append");
        wal.take_unsynced().run().expect("sync");
    }

    /// Makes the active segment full, so the next append starts a new one.
    fn close_active_segment(wal: &mut Wal) {
        wal.segments.last_entry().expect("active").get_mut().len = WAL_SEGMENT_BYTES;
    }

    /// Edits the bytes of `segment`, a segment that is not the last, and
    /// checks that the log in `dir` no longer opens.
    fn assert_open_refuses_after(dir: &Path, segment: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(segment).expect("read");
        edit(&mut bytes);
        std::fs::write(segment, bytes).expect("write");
        let err = Wal::open(dir).err().expect("corrupt segment refused");
        assert!(err.to_string().contains("is corrupt"), "{err}");
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut wal = Wal::open(dir.path()).expect("open");
            append_range(&mut wal, 1, 50);
            append_range(&mut wal, 51, 60);
        }
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!((wal.first_index(), wal.last_index()), (Some(1), Some(60)));
        let read = wal.read(10..=12).expect("read");
        assert_eq!(
            read,
            vec![(10, payload(10)), (11, payload(11)), (12, payload(12))]
        );
    }

    /// A batch stops at its record limit, or before the record that would
    /// pass its byte limit, but always holds one record; the bytes of a
    /// range are the payloads'.
    #[test]
    fn batches_stop_at_their_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::open(dir.path()).expect("open");
        append_range(&mut wal, 1, 10);
        let indexes = |batch: Vec<(u64, Vec<u8>)>| batch.into_iter().map(|(i, _)| i).collect();
        let by_count: Vec<u64> = indexes(wal.read_batch(3.., 4, usize::MAX).expect("read"));
        assert_eq!(by_count, vec![3, 4, 5, 6]);
        let bytes: usize = (3..=5).map(|i| payload(i).len()).sum();
        assert_eq!(wal.payload_bytes(3..=5), bytes as u64);
        let by_bytes: Vec<u64> = indexes(wal.read_batch(3.., 100, bytes).expect("read"));
        assert_eq!(by_bytes, vec![3, 4, 5]);
        let one: Vec<u64> = indexes(wal.read_batch(3.., 100, 0).expect("read"));
        assert_eq!(one, vec![3]);
        assert_eq!(
            wal.read_batch(3..=5, 100, usize::MAX).expect("read").len(),
            3
        );
    }

    #[test]
    fn appends_must_be_consecutive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::open(dir.path()).expect("open");
        append_range(&mut wal, 5, 6);
        let err = wal.append(&[(8, vec![1])]).expect_err("gap");
        assert!(err.to_string().contains("8 where 7 comes next"), "{err}");
        assert_eq!(wal.last_index(), Some(6));
    }

    #[test]
    fn torn_tail_of_last_segment_is_cut_and_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = {
            let mut wal = Wal::open(dir.path()).expect("open");
            append_range(&mut wal, 1, 3);
            wal.segments[&1].len
        };
        let path = dir.path().join(segment_name(1));
        // A crash in the middle of writing record 3 (the zeros after it are
        // gone too: the write tore the file's end).
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(full - 2)
            .expect("cut");
        {
            let mut wal = Wal::open(dir.path()).expect("reopen after torn write");
            assert_eq!(wal.last_index(), Some(2));
            append_range(&mut wal, 3, 4);
            assert_eq!(wal.read(3..=4).expect("read").len(), 2);
        }
        // A flipped byte in a segment that is not the last is corruption.
        {
            let mut wal = Wal::open(dir.path()).expect("reopen");
            close_active_segment(&mut wal);
            append_range(&mut wal, 5, 6);
            assert_eq!(wal.segments.len(), 2);
        }
        assert_open_refuses_after(dir.path(), &path, |bytes| {
            bytes[HEADER_BYTES as usize] ^= 0xff;
        });
    }

    #[test]
    fn segments_are_written_over_zeros_and_a_zero_tail_ends_any_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = dir.path().join(segment_name(1));
        {
            let mut wal = Wal::open(dir.path()).expect("open");
            append_range(&mut wal, 1, 10);
            let segment = &wal.segments[&1];
            assert!(segment.len < WAL_ZERO_AHEAD_BYTES);
            assert_eq!(segment.zeroed, WAL_ZERO_AHEAD_BYTES);
            let size = std::fs::metadata(&first).expect("meta").len();
            assert_eq!(size, WAL_ZERO_AHEAD_BYTES, "zeros ahead of the records");
            // Appends in the zeroed range do not change the file's size.
            append_range(&mut wal, 11, 20);
            assert_eq!(std::fs::metadata(&first).expect("meta").len(), size);
            // An append that passes the zeroed end extends it.
            let big = vec![7u8; WAL_ZERO_AHEAD_BYTES as usize];
            wal.append(&[(21, big.clone())]).expect("append");
            wal.take_unsynced().run().expect("sync");
            assert_eq!(wal.segments[&1].zeroed, 2 * WAL_ZERO_AHEAD_BYTES);
            assert_eq!(wal.read(21..=21).expect("read"), vec![(21, big)]);
            // Close this segment with its zero tail; the next one starts.
            close_active_segment(&mut wal);
            append_range(&mut wal, 22, 23);
            assert_eq!(wal.segments.len(), 2);
        }
        // The zero tail of the first (not last) segment is not corruption,
        // and the last segment's zeros are kept for the next appends.
        {
            let mut wal = Wal::open(dir.path()).expect("reopen");
            assert_eq!((wal.first_index(), wal.last_index()), (Some(1), Some(23)));
            let last = wal.segments.last_key_value().expect("active").1;
            assert!(last.zeroed > last.len);
            append_range(&mut wal, 24, 30);
        }
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!(wal.last_index(), Some(30));
        assert_eq!(wal.read(24..=24).expect("read"), vec![(24, payload(24))]);
        assert_eq!(wal.read(5..=5).expect("read"), vec![(5, payload(5))]);
        drop(wal);
        // A byte that is not zero in that tail is corruption.
        assert_open_refuses_after(dir.path(), &first, |bytes| {
            let last = bytes.len() - 1;
            bytes[last] = 1;
        });
    }

    #[test]
    fn a_closed_segment_is_synced_before_the_next_one_holds_a_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::open(dir.path()).expect("open");
        wal.append(&[(1, payload(1)), (2, payload(2))])
            .expect("append");
        let closed = wal.segments[&1].file.clone();
        assert!(wal.unsynced.iter().any(|f| Arc::ptr_eq(f, &closed)));
        // Close segment 1 with records 1 and 2 not yet synced.
        close_active_segment(&mut wal);
        wal.append(&[(3, payload(3))]).expect("append");
        assert_eq!(wal.segments.len(), 2);
        // The rotation synced segment 1 itself: what is left to sync is the
        // new segment (and the directory that now names it), never the
        // closed segment after the new one's records.
        let pending = wal.take_unsynced();
        let new = &wal.segments[&3].file;
        assert_eq!(pending.files.len(), 1);
        assert!(Arc::ptr_eq(&pending.files[0], new));
        assert!(pending.dir.is_some());
        pending.run().expect("sync");
        drop(wal);
        let wal = Wal::open(dir.path()).expect("reopen");
        assert_eq!((wal.first_index(), wal.last_index()), (Some(1), Some(3)));
    }

    #[test]
    fn truncate_and_purge_across_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = Wal::open(dir.path()).expect("open");
        for start in [1u64, 11, 21, 31] {
            append_range(&mut wal, start, start + 9);
            // Force a new segment for the next batch.
            close_active_segment(&mut wal);
        }
        assert_eq!(wal.segments.len(), 4);
        wal.truncate_from(25).expect("truncate");
        assert_eq!(wal.last_index(), Some(24));
        assert_eq!(wal.segments.len(), 3);
        append_range(&mut wal, 25, 27);
        wal.purge_upto(15).expect("purge");
        assert_eq!(wal.first_index(), Some(16));
        assert_eq!(wal.segments.len(), 2, "segment 11.. still holds 16..=20");
        wal.purge_upto(21).expect("purge");
        assert_eq!(wal.first_index(), Some(22));
        assert_eq!(wal.segments.len(), 1);
        drop(wal);
        let wal = Wal::open(dir.path()).expect("reopen");
        // Purged records in surviving segments come back at open; the log
        // store purges them again from its saved purge point.
        assert_eq!(wal.last_index(), Some(27));
        let read = wal.read(22..).expect("read");
        assert_eq!(read.first().map(|r| r.0), Some(22));
        assert_eq!(read.last(), Some(&(27, payload(27))));
        // Truncating at the first record of a segment removes the segment;
        // the next append starts a new one.
        let mut wal = wal;
        wal.truncate_from(21).expect("truncate");
        assert_eq!((wal.last_index(), wal.segments.len()), (None, 0));
        append_range(&mut wal, 21, 22);
        assert_eq!(wal.read(..).expect("read").len(), 2);
    }
}
