//! Node-to-node traffic. [`client`] sends openraft's RPCs to peers on Raft
//! connections ([`wire`]: bincode-encoded openraft types in length-prefixed
//! frames on plain TCP), and capkv's own calls to the leader over gRPC
//! (`capkv.v1.internal.RaftService`). [`listener`] tells the two kinds of
//! connection apart on the node's one port; [`server`] answers both.

pub mod client;
pub mod listener;
pub mod server;
pub mod wire;

/// The largest Raft message a node sends or accepts. Bounds memory per
/// message; one entry is bounded by the client API's message limit, far below.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// AppendEntries requests are cut to at most this many payload bytes (but at
/// least one entry), keeping every message under `MAX_RAFT_MESSAGE_BYTES`.
/// openraft 0.9 gives an AppendEntries the heartbeat interval (100 ms) to
/// complete, and sends it again after a timeout: a message must be small
/// enough to encode, send, decode and append well within that on a loaded
/// machine. (It was 32 MiB; etcd's default is 1 MiB.)
pub const MAX_APPEND_ENTRIES_PAYLOAD_BYTES: u64 = 4 * 1024 * 1024;
/// Entries openraft reads from the log for one AppendEntries, before the
/// byte budget above cuts the message. Entries are at most ~1 MiB (batches of
/// writes and reconciliations are cut there), so one read stays near the
/// budget; with openraft's default of 300, one read of 4 MiB reconciliation
/// entries could hold 1.2 GB. (This alone did not remove the 1.1 to 1.9 GiB
/// peaks seen under LOCAL ingest; see docs/bench/profile-2026-11-21.md.)
pub const MAX_ENTRIES_PER_APPEND: u64 = 32;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

use crate::types::CommandResult;
use crate::types::NodeId;

/// Links between nodes that are cut, consulted before every node-to-node
/// RPC. Production nodes keep it empty; in-process tests cut links with it
/// the way `scripts/partition.sh` does with iptables. As with TCP under an
/// iptables rule, a link cut in either direction fails requests both ways
/// (a request needs its answer).
#[derive(Debug, Default)]
pub struct LinkFilter {
    cut: Mutex<BTreeSet<(NodeId, NodeId)>>,
}

impl LinkFilter {
    fn links(&self) -> std::sync::MutexGuard<'_, BTreeSet<(NodeId, NodeId)>> {
        self.cut.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops traffic from `from` to `to`.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.links().insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Cuts `node` from every node in `others`.
    pub fn isolate(&self, node: NodeId, others: impl IntoIterator<Item = NodeId>) {
        for other in others {
            if other != node {
                self.cut(node, other);
            }
        }
    }

    pub fn heal(&self) {
        self.links().clear();
    }

    /// Whether a request from `from` to `to` can get through and be answered.
    pub fn allows(&self, from: NodeId, to: NodeId) -> bool {
        let links = self.links();
        !links.contains(&(from, to)) && !links.contains(&(to, from))
    }
}

/// When a follower last heard from the leader (a successful AppendEntries,
/// heartbeats included), and the leader's commit index then. A follower that
/// has applied that commit index is at most `now - at` behind the leader:
/// the bound BOUNDED reads check.
#[derive(Debug, Default)]
pub struct LeaderContact {
    last: Mutex<Option<Contact>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    pub at: Instant,
    pub term: u64,
    pub leader_commit: u64,
}

impl LeaderContact {
    pub fn record(&self, contact: Contact) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(contact);
    }

    pub fn last(&self) -> Option<Contact> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The leader's answer to a forwarded proposal: the applied result and the
/// entry's log index.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProposeReply {
    pub result: CommandResult,
    pub log_index: u64,
}
