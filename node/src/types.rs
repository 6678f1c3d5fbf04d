//! The types every part of the node shares: the openraft type configuration,
//! the commands carried in the Raft log, and what applying them returns.

use std::fmt;
use std::io::Cursor;

use serde::Deserialize;
use serde::Serialize;

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// capkv's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A value's version: a hybrid logical clock stamp and the node that stamped
/// it. The derived order compares fields top to bottom, which is the total
/// order `(hlc, origin_node)` of DESIGN.md.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct Version {
    pub physical_ms: u64,
    pub logical: u32,
    pub origin_node: NodeId,
}

impl Version {
    /// The smallest stamp greater than `self`'s clock part, attributed to
    /// `origin_node`. A STRONG write over an existing value gets at least this,
    /// so versions of a CP key follow log order.
    pub fn successor(self, origin_node: NodeId) -> Version {
        match self.logical.checked_add(1) {
            Some(logical) => Version {
                physical_ms: self.physical_ms,
                logical,
                origin_node,
            },
            None => Version {
                physical_ms: self.physical_ms + 1,
                logical: 0,
                origin_node,
            },
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}@{}",
            self.physical_ms, self.logical, self.origin_node
        )
    }
}

/// A client-generated id of one logical write; retries reuse it.
pub type RequestId = Vec<u8>;

/// What a Raft log entry asks the state machine to do.
///
/// Applying a command reads nothing but the command and the current state:
/// the version was stamped by the proposing node before proposal.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    /// A client write acknowledged once committed (STRONG).
    Write(WriteCommand),
    /// The STRONG client writes (one or more) the leader's proposal batcher
    /// put in one entry (`service/batcher.rs`). Applied in order, exactly as
    /// consecutive `Write` entries would be; one outcome each.
    Writes(Vec<WriteCommand>),
    /// Provisional (LOCAL) writes accepted by `origin`, in increasing `seq`
    /// order, proposed by its reconciler. Applied last-writer-wins; a write
    /// whose `seq` is at or below the origin's reconciled high-water mark was
    /// applied before and changes nothing.
    Reconcile {
        origin: NodeId,
        writes: Vec<ProvisionalWrite>,
    },
}

/// A write a node accepted as LOCAL, as it travels in a `Reconcile` entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProvisionalWrite {
    /// Increasing per origin node, never reused.
    pub seq: u64,
    pub request_id: RequestId,
    /// Stamped by the origin's clock when it accepted the write.
    pub version: Version,
    pub op: WriteOp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WriteCommand {
    pub request_id: RequestId,
    /// Stamped by the node that proposed the write.
    pub version: Version,
    pub op: WriteOp,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum WriteOp {
    /// All readings are applied together: one entry, all or nothing.
    PutReadings(Vec<ReadingWrite>),
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Writes `value` only if the key's current state is `expected`. Only in
    /// STRONG writes: a compare needs the single order of the log.
    CompareAndSet {
        key: Vec<u8>,
        expected: Expected,
        value: Vec<u8>,
    },
}

/// What a compare-and-set expects to find.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub enum Expected {
    /// No live value: never written, or deleted.
    Absent,
    /// Exactly this version.
    Version(Version),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReadingWrite {
    pub sensor_id: String,
    pub timestamp_ms: u64,
    pub value: f64,
    /// Sorted by key, so the encoding of a reading is deterministic.
    pub tags: Vec<(String, String)>,
}

/// The result of applying one log entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub enum CommandResult {
    /// Blank and membership entries.
    #[default]
    None,
    Write(WriteOutcome),
    /// One outcome per write of a `Command::Writes`, in order.
    Writes(Vec<WriteOutcome>),
    Reconciled(ReconcileOutcome),
}

/// What applying a `Reconcile` entry did, write by write.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ReconcileOutcome {
    /// Writes whose every item was stored.
    pub applied: u64,
    /// Items that lost to a newer version (recorded in the conflict log).
    pub superseded: u64,
    /// Writes applied before (seq at or below the high-water mark, or a
    /// request id already remembered).
    pub skipped: u64,
}

/// What a write did. Remembered per request id, so a retried write is
/// answered with the outcome of its first application.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct WriteOutcome {
    /// The version each written item was stored with, in request order.
    pub versions: Vec<Version>,
    /// For a delete: whether the key had a live value before.
    pub existed: bool,
    /// True when this outcome was answered from the request-id table.
    pub deduplicated: bool,
    /// For a compare-and-set whose comparison failed: the key's state then
    /// (value, or `None` for a tombstone; `versions` holds its version).
    pub compare_failed: Option<Option<Vec<u8>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_order_is_hlc_then_origin() {
        let v = |p, l, o| Version {
            physical_ms: p,
            logical: l,
            origin_node: o,
        };
        let ordered = [v(1, 0, 3), v(1, 1, 1), v(1, 1, 2), v(2, 0, 1)];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1], "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn successor_is_greater_and_carries_origin() {
        let base = Version {
            physical_ms: 5,
            logical: 7,
            origin_node: 9,
        };
        let next = base.successor(1);
        assert!(next > base);
        assert_eq!(
            next,
            Version {
                physical_ms: 5,
                logical: 8,
                origin_node: 1
            }
        );
        let full = Version {
            physical_ms: 5,
            logical: u32::MAX,
            origin_node: 1,
        };
        assert_eq!(
            full.successor(2),
            Version {
                physical_ms: 6,
                logical: 0,
                origin_node: 2
            }
        );
    }
}
