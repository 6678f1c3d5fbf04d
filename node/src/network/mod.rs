//! Node-to-node Raft traffic over tonic: [`client`] sends openraft's RPCs to
//! peers, [`server`] receives them. Payloads are bincode-encoded openraft
//! types inside `capkv.v1.internal.RaftMessage`.

pub mod client;
pub mod server;

/// The largest Raft message a node sends or accepts. Bounds memory per
/// message; one entry is bounded by the client API's message limit, far below.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// AppendEntries requests are cut to at most this many payload bytes (but at
/// least one entry), keeping every message under `MAX_RAFT_MESSAGE_BYTES`.
pub const MAX_APPEND_ENTRIES_PAYLOAD_BYTES: u64 = 32 * 1024 * 1024;
