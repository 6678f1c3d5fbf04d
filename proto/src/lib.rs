//! capkv's gRPC API, generated from `proto/capkv/v1/*.proto`.
//!
//! Shared by the node (servers) and the client SDK (clients); it depends on
//! neither of them.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("capkv.v1");

    /// Node-to-node Raft messages. Not for clients.
    pub mod internal {
        tonic::include_proto!("capkv.v1.internal");
    }
}

/// The encoded `FileDescriptorSet` of every capkv service, for gRPC server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("capkv_descriptor");

/// Metadata keys a node sets on an error response when it is not the leader
/// and knows who is; the SDK follows them.
pub mod metadata {
    /// The leader's node id, decimal.
    pub const LEADER_ID: &str = "capkv-leader-id";
    /// The leader's gRPC address, `host:port`.
    pub const LEADER_ADDR: &str = "capkv-leader-addr";
}
