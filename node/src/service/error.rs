//! The errors a client can act on, and their mapping to gRPC status codes.
//! This is the only place that builds a `tonic::Status` from a node error.

use capkv_proto::metadata;
use openraft::error::CheckIsLeaderError;
use openraft::error::ClientWriteError;
use openraft::error::Fatal;
use openraft::error::ForwardToLeader;
use openraft::error::RaftError;
use openraft::BasicNode;
use tonic::Status;

use crate::types::NodeId;

/// Serializable: a leader's refusal of a forwarded proposal travels back to
/// the follower as it was.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApiError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request needs the leader and this node knows who it is.
    #[error("node {node} is not the leader; the leader is node {leader_id} at {leader_addr}")]
    NotLeader {
        node: NodeId,
        leader_id: NodeId,
        leader_addr: String,
    },
    /// The request needs the leader and this node knows of none.
    #[error("node {node} knows no leader: an election is in progress or this node cannot reach a quorum")]
    NoLeader { node: NodeId },
    /// The leader could not confirm its leadership with a quorum.
    #[error("node {node} could not reach a quorum: {detail}")]
    NoQuorum { node: NodeId, detail: String },
    /// A read cannot be served at the level it asked for; never silently
    /// weaker.
    #[error("node {node} cannot serve a {level} read: {reason}; an EVENTUAL read would be served by this node")]
    LevelNotMet {
        node: NodeId,
        level: String,
        reason: String,
    },
    /// A bounded queue is full; the message says which and what to do.
    #[error("{0}")]
    Overloaded(String),
    /// The request is valid but the cluster's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("node {node} is shutting down")]
    ShuttingDown { node: NodeId },
    #[error("storage failure on node {node}: {detail}")]
    Storage { node: NodeId, detail: String },
}

impl ApiError {
    /// Errors that mean "this node cannot get a quorum to act now": the ones
    /// STRONG_OR_LOCAL falls back to LOCAL on.
    pub fn is_unavailability(&self) -> bool {
        matches!(
            self,
            ApiError::NotLeader { .. } | ApiError::NoLeader { .. } | ApiError::NoQuorum { .. }
        )
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::InvalidArgument(message.into())
    }

    fn forward(node: NodeId, forward: ForwardToLeader<NodeId, BasicNode>) -> Self {
        match (forward.leader_id, forward.leader_node) {
            (Some(leader_id), Some(leader)) if leader_id != node => ApiError::NotLeader {
                node,
                leader_id,
                leader_addr: leader.addr,
            },
            _ => ApiError::NoLeader { node },
        }
    }

    fn fatal(node: NodeId, fatal: Fatal<NodeId>) -> Self {
        match fatal {
            Fatal::Stopped => ApiError::ShuttingDown { node },
            other => ApiError::Storage {
                node,
                detail: other.to_string(),
            },
        }
    }

    pub fn from_write(
        node: NodeId,
        error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> Self {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                Self::forward(node, forward)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                ApiError::FailedPrecondition(e.to_string())
            }
            RaftError::Fatal(fatal) => Self::fatal(node, fatal),
        }
    }

    pub fn from_read(
        node: NodeId,
        error: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>,
    ) -> Self {
        match error {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
                Self::forward(node, forward)
            }
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)) => ApiError::NoQuorum {
                node,
                detail: e.to_string(),
            },
            RaftError::Fatal(fatal) => Self::fatal(node, fatal),
        }
    }

    pub fn from_fatal(node: NodeId, fatal: Fatal<NodeId>) -> Self {
        Self::fatal(node, fatal)
    }

    pub fn from_storage(node: NodeId, error: crate::types::StorageError) -> Self {
        ApiError::Storage {
            node,
            detail: error.to_string(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let message = error.to_string();
        match error {
            ApiError::InvalidArgument(_) => Status::invalid_argument(message),
            ApiError::NotLeader {
                leader_id,
                leader_addr,
                ..
            } => {
                let mut status = Status::unavailable(message);
                let md = status.metadata_mut();
                if let Ok(value) = leader_id.to_string().parse() {
                    md.insert(metadata::LEADER_ID, value);
                }
                if let Ok(value) = leader_addr.parse() {
                    md.insert(metadata::LEADER_ADDR, value);
                }
                status
            }
            ApiError::NoLeader { .. }
            | ApiError::NoQuorum { .. }
            | ApiError::ShuttingDown { .. }
            | ApiError::LevelNotMet { .. } => Status::unavailable(message),
            ApiError::Overloaded(_) => Status::resource_exhausted(message),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(message),
            ApiError::Storage { .. } => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_carries_the_leader_in_metadata() {
        let status = Status::from(ApiError::NotLeader {
            node: 3,
            leader_id: 1,
            leader_addr: "127.0.0.11:7001".into(),
        });
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.metadata().get(metadata::LEADER_ID).unwrap(), "1");
        assert_eq!(
            status.metadata().get(metadata::LEADER_ADDR).unwrap(),
            "127.0.0.11:7001"
        );
        assert!(
            status.message().contains("leader is node 1"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn forward_to_self_or_unknown_means_no_leader() {
        let unknown = ForwardToLeader::<NodeId, BasicNode>::empty();
        assert!(matches!(
            ApiError::forward(2, unknown),
            ApiError::NoLeader { node: 2 }
        ));
    }
}
