//! The client-facing gRPC services: sensor readings, generic keys, admin.
//!
//! Every handler validates the whole request first, then proposes (writes)
//! or confirms its read level (reads), then answers with `ResponseMeta`.

pub mod admin;
pub mod error;
pub mod kv;
pub mod sensor;
pub mod validate;

use std::collections::BTreeMap;
use std::sync::Arc;

use capkv_proto::v1;
use openraft::ServerState;

use crate::hlc::HybridClock;
use crate::store::LogStore;
use crate::store::ReadView;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::Version;
use crate::types::WriteCommand;
use crate::types::WriteOp;
use crate::types::WriteOutcome;
use error::ApiError;

/// The largest client request or response a node accepts. A maximal
/// PutReadings batch of typical readings is ~1 MB; a 1 MiB value plus key fits.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What every service handler needs. Shared, immutable after start.
pub struct NodeContext {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub reads: ReadView,
    pub clock: Arc<HybridClock>,
    pub log: LogStore,
    /// The initial members given with `--peers`, used by Init without members.
    pub peers: BTreeMap<NodeId, String>,
}

/// A committed write: its outcome and the log index it was committed at.
pub struct Committed {
    pub outcome: WriteOutcome,
    pub log_index: u64,
}

pub fn to_proto_version(version: Version) -> v1::Version {
    v1::Version {
        physical_ms: version.physical_ms,
        logical: version.logical,
        origin_node: version.origin_node,
    }
}

impl NodeContext {
    /// Proposes a STRONG write and waits until it is committed and applied
    /// here (the leader).
    pub async fn propose(&self, request_id: Vec<u8>, op: WriteOp) -> Result<Committed, ApiError> {
        let command = Command::Write(WriteCommand {
            request_id,
            version: self.clock.now(),
            op,
        });
        let response = self
            .raft
            .client_write(command)
            .await
            .map_err(|e| ApiError::from_write(self.id, e))?;
        match response.data {
            CommandResult::Write(outcome) => Ok(Committed {
                outcome,
                log_index: response.log_id.index,
            }),
            other => Err(ApiError::Storage {
                node: self.id,
                detail: format!("a write entry applied as {other:?}, not as a write"),
            }),
        }
    }

    /// Waits until a LINEARIZABLE read may be served here: this node is the
    /// leader, confirmed it with a quorum, and applied up to the read index.
    /// Returns the read index.
    pub async fn linearizable_barrier(&self) -> Result<u64, ApiError> {
        let read_log_id = self
            .raft
            .ensure_linearizable()
            .await
            .map_err(|e| ApiError::from_read(self.id, e))?;
        Ok(read_log_id.map(|id| id.index).unwrap_or(0))
    }

    fn meta(&self, observed_index: u64) -> v1::ResponseMeta {
        let metrics = self.raft.metrics().borrow().clone();
        let applied_index = metrics.last_applied.map(|id| id.index).unwrap_or(0);
        v1::ResponseMeta {
            served_by: self.id,
            applied_index,
            term: metrics.current_term,
            includes_provisional: false,
            session: Some(v1::SessionToken {
                commit_index: observed_index,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn write_meta(&self, log_index: u64) -> v1::ResponseMeta {
        v1::ResponseMeta {
            write_consistency: v1::WriteConsistency::Strong as i32,
            ..self.meta(log_index)
        }
    }

    pub fn linearizable_meta(&self, read_index: u64) -> v1::ResponseMeta {
        v1::ResponseMeta {
            read_consistency: v1::ReadConsistency::Linearizable as i32,
            staleness_ms: Some(0),
            ..self.meta(read_index)
        }
    }
}

pub fn role_name(state: ServerState, is_voter: bool) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
        ServerState::Follower if is_voter => "follower",
        ServerState::Follower | ServerState::Learner => "learner",
    }
}
