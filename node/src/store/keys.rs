//! The sled key layout. Every tree, key and value encoding lives here.
//!
//! | tree            | key                                        | value                         |
//! |-----------------|--------------------------------------------|-------------------------------|
//! | `raft_log`      | log index, u64 big-endian (legacy: the log now lives in the WAL, `wal.rs`; moved out at open) | bincode `Entry` |
//! | `raft_state`    | `vote`, `committed`, `last_purged`         | bincode of the openraft type  |
//! | `sm_meta`       | `last_applied`, `last_membership`, `app`   | bincode (`AppMeta` for `app`) |
//! | `kv`            | the user key bytes                         | bincode `StoredValue`         |
//! | `reading_blocks`| u16 BE len(sensor) ++ sensor ++ u64 BE ts of the block's first possible reading (`blocks.rs`) | bincode `Vec<ReadingRow>`, sorted by ts |
//! | `remembered_requests` | sequence number of the row's first request id, u64 big-endian (one row per log entry, `remembered.rs`) | bincode `Vec<(request id, WriteOutcome)>` |
//! | `conflicts`     | conflict sequence number, u64 big-endian   | bincode `ConflictRecord`      |
//! | `sm_intent`     | `header`, or chunk number u32 big-endian   | the last apply call's writes (`staged.rs`) |
//!
//! Node-local trees of older builds (never replicated, not in snapshots).
//! The provisional store of LOCAL writes this node accepted and has not yet
//! seen reconciled keeps its writes (bincode `PendingWrite` by seq) in the
//! provisional log (`prov-log/`) and its indexes in memory
//! (`provisional.rs`); these trees are only read or dropped at open.
//!
//! | tree            | key                                        | value                         |
//! |-----------------|--------------------------------------------|-------------------------------|
//! | `prov_log`      | provisional seq, u64 big-endian (legacy: moved into `prov-log/` at open) | bincode `PendingWrite` |
//! | `prov_meta`     | `next_seq` (legacy: read at open, never written) | u64 big-endian          |
//! | `prov_kv`       | the user key bytes (legacy: dropped at open) | bincode `(seq, StoredValue)` |
//! | `prov_readings` | u16 BE len(sensor) ++ sensor ++ u64 BE ts (legacy: dropped at open) | bincode `(seq, StoredReading)` |
//! | `prov_requests` | the request id bytes (legacy: dropped at open) | provisional seq, u64 BE |
//!
//! Big-endian integers sort numerically as bytes, so a range of log indexes,
//! or of one sensor's timestamps (or blocks), is one ordered sled range. Prefixing the
//! sensor id with its length keeps `a` and `ab` apart: all readings of a sensor
//! share a prefix no other sensor has.

use serde::Deserialize;
use serde::Serialize;

use std::collections::BTreeMap;

use crate::types::NodeId;
use crate::types::ProvisionalWrite;
use crate::types::Version;
use crate::types::WriteOutcome;

pub const RAFT_LOG_TREE: &str = "raft_log";
pub const RAFT_STATE_TREE: &str = "raft_state";
pub const SM_META_TREE: &str = "sm_meta";
pub const KV_TREE: &str = "kv";
pub const READING_BLOCKS_TREE: &str = "reading_blocks";
/// One row per reading: the layout before blocks. Found at open, it is
/// rebuilt into `reading_blocks` and dropped.
pub const LEGACY_READINGS_TREE: &str = "readings";
pub const REMEMBERED_TREE: &str = "remembered_requests";
/// The intent of the last apply call (`staged.rs`).
pub const SM_INTENT_TREE: &str = "sm_intent";
/// One row per request id, and their order: the layout before
/// `remembered_requests`. Found at open, they are rebuilt into it and
/// dropped.
pub const LEGACY_REQUEST_IDS_TREE: &str = "request_ids";
pub const LEGACY_REQUEST_ORDER_TREE: &str = "request_order";
pub const CONFLICTS_TREE: &str = "conflicts";
pub const PROV_LOG_TREE: &str = "prov_log";
pub const PROV_META_TREE: &str = "prov_meta";
pub const PROV_KV_TREE: &str = "prov_kv";
pub const PROV_READINGS_TREE: &str = "prov_readings";
pub const PROV_REQUESTS_TREE: &str = "prov_requests";
pub const NEXT_SEQ_KEY: &[u8] = b"next_seq";

pub const VOTE_KEY: &[u8] = b"vote";
pub const COMMITTED_KEY: &[u8] = b"committed";
pub const LAST_PURGED_KEY: &[u8] = b"last_purged";
pub const LAST_APPLIED_KEY: &[u8] = b"last_applied";
pub const LAST_MEMBERSHIP_KEY: &[u8] = b"last_membership";
pub const APP_META_KEY: &[u8] = b"app";

pub fn log_index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The prefix shared by every reading of `sensor_id`. Sensor ids are at most
/// `MAX_SENSOR_ID_BYTES` (checked at the API), far below u16::MAX.
pub fn sensor_prefix(sensor_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + sensor_id.len() + 8);
    key.extend_from_slice(&(sensor_id.len() as u16).to_be_bytes());
    key.extend_from_slice(sensor_id.as_bytes());
    key
}

/// Makes `prefix` the [`sensor_prefix`] of `sensor_id`, rebuilding it only
/// when it is another sensor's (batches are usually of one sensor). Returns
/// whether it changed.
pub fn set_sensor_prefix(prefix: &mut Vec<u8>, sensor_id: &str) -> bool {
    if prefix.get(2..) == Some(sensor_id.as_bytes()) {
        return false;
    }
    *prefix = sensor_prefix(sensor_id);
    true
}

pub fn reading_key(sensor_id: &str, timestamp_ms: u64) -> Vec<u8> {
    reading_key_at(&sensor_prefix(sensor_id), timestamp_ms)
}

/// [`reading_key`] from the sensor's prefix.
pub fn reading_key_at(prefix: &[u8], timestamp_ms: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&timestamp_ms.to_be_bytes());
    key
}

/// The timestamp of a key made by [`reading_key`].
pub fn reading_key_timestamp(key: &[u8]) -> Option<u64> {
    decode_u64(key.get(key.len().checked_sub(8)?..)?)
}

/// A generic key's current value. `value: None` is a tombstone: deletes are
/// versioned like writes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StoredValue {
    pub value: Option<Vec<u8>>,
    pub version: Version,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StoredReading {
    pub value: f64,
    pub tags: Vec<(String, String)>,
    pub version: Version,
}

/// One reading with its timestamp: as the read API returns it, and as a
/// reading block (`blocks.rs`) stores it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReadingRow {
    pub timestamp_ms: u64,
    pub reading: StoredReading,
}

/// A row of the request-id table of older builds (`request_ids`): the
/// outcome of the first application and its place in the retention order.
/// Read only to rebuild such a table into `remembered_requests`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RememberedRequest {
    pub sequence: u64,
    pub outcome: WriteOutcome,
}

/// State-machine bookkeeping that is not openraft's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AppMeta {
    /// The sequence number the next remembered request id gets.
    pub next_request_sequence: u64,
    /// The oldest sequence number still remembered: the key of the oldest
    /// `remembered_requests` row (`next_request_sequence` if none).
    pub oldest_request_sequence: u64,
    /// The greatest version applied so far; a restarted node's clock starts
    /// past it.
    pub max_version: Version,
    /// Per origin node, the highest provisional seq applied: reconciliation
    /// is idempotent below it, and SESSION reads compare tokens with it.
    pub reconciled_seq: BTreeMap<NodeId, u64>,
    /// Superseded provisional writes, ever (the conflict log keeps the last
    /// `MAX_CONFLICT_RECORDS`).
    pub conflicts_total: u64,
    /// The sequence number the oldest conflict record still kept has.
    pub oldest_conflict_sequence: u64,
}

/// What a conflict record is about.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ConflictTarget {
    Key(Vec<u8>),
    Reading {
        sensor_id: String,
        timestamp_ms: u64,
    },
}

/// A provisional write's item that lost to a newer version on reconciliation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConflictRecord {
    pub target: ConflictTarget,
    pub loser: Version,
    /// (origin node, seq) of the provisional write that lost.
    pub loser_write: (NodeId, u64),
    pub winner: Version,
    /// The reconciliation entry's log index.
    pub log_index: u64,
}

/// A LOCAL write in the provisional store, with when it was accepted
/// (node-local wall clock, for the age shown in status).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PendingWrite {
    pub write: ProvisionalWrite,
    pub accepted_at_ms: u64,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // bincode only fails on types serde cannot represent, which ours are not.
    bincode::serialize(value).expect("bincode encodes plain data")
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_keys_of_one_sensor_sort_by_time_and_share_a_prefix() {
        let early = reading_key("a", 5);
        let late = reading_key("a", 300);
        assert!(early < late);
        assert!(early.starts_with(&sensor_prefix("a")));
        // A sensor whose id extends another's is not inside its range.
        assert!(!reading_key("ab", 1).starts_with(&sensor_prefix("a")));
        assert_eq!(reading_key_timestamp(&late), Some(300));
    }

    #[test]
    fn log_keys_sort_numerically() {
        assert!(log_index_key(255) < log_index_key(256));
        assert_eq!(decode_u64(&log_index_key(42)), Some(42));
        assert_eq!(decode_u64(b"short"), None);
    }
}
