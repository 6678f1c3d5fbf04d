//! The client-facing gRPC services: sensor readings, generic keys, admin.
//!
//! Every handler validates the whole request first, then writes at the
//! requested level ([`write`]) or obtains a permit for the requested read
//! level ([`read`]), then answers with `ResponseMeta` saying what it got.

pub mod admin;
pub mod batcher;
pub mod error;
pub mod kv;
pub mod read;
pub mod read_index;
pub mod sensor;
pub mod validate;
pub mod write;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use capkv_proto::v1;
use openraft::ServerState;
use tokio::sync::Notify;

use crate::hlc::HybridClock;
use crate::network::client::NetworkFactory;
use crate::network::LeaderContact;
use crate::store::LogStore;
use crate::store::ProvisionalStore;
use crate::store::ReadView;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::Version;
use error::ApiError;

/// The largest client request or response a node accepts. A maximal
/// PutReadings batch of typical readings is ~1 MB; a 1 MiB value plus key fits.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// How long a request without a gRPC deadline may wait for its level
/// (SESSION catching up, a follower applying a read index).
pub const DEFAULT_SERVER_WAIT_MS: u64 = 5_000;
/// The most a request may make the node wait, whatever its deadline says.
pub const MAX_SERVER_WAIT_MS: u64 = 60_000;
/// Answer this long before the client's deadline, so the client gets our
/// explanation rather than its own DEADLINE_EXCEEDED.
pub const DEADLINE_MARGIN_MS: u64 = 50;

/// Raft timing the services need to decide when a quorum is lost.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_max_ms: u64,
}

/// What every service handler needs. Shared, immutable after start.
pub struct NodeContext {
    pub id: NodeId,
    pub addr: String,
    pub raft: Raft,
    pub reads: ReadView,
    pub provisional: ProvisionalStore,
    pub clock: Arc<HybridClock>,
    pub log: LogStore,
    pub network: NetworkFactory,
    pub leader_contact: Arc<LeaderContact>,
    /// Woken when a LOCAL write is accepted, so the reconciler starts at once.
    pub reconcile_wakeup: Arc<Notify>,
    pub timing: Timing,
    /// The initial members given with `--peers`, used by Init without members.
    pub peers: BTreeMap<NodeId, String>,
    /// Batches STRONG writes into shared log entries on the leader.
    pub batcher: batcher::WriteBatcher,
    /// Shares leadership checks between LINEARIZABLE reads on the leader.
    pub read_index: read_index::ReadIndexBatcher,
}

pub fn to_proto_version(version: Version) -> v1::Version {
    v1::Version {
        physical_ms: version.physical_ms,
        logical: version.logical,
        origin_node: version.origin_node,
    }
}

pub fn from_proto_version(version: &v1::Version) -> Version {
    Version {
        physical_ms: version.physical_ms,
        logical: version.logical,
        origin_node: version.origin_node,
    }
}

/// When the node must answer a request by: the client's gRPC deadline less a
/// margin, bounded by `MAX_SERVER_WAIT_MS`; `DEFAULT_SERVER_WAIT_MS` without one.
pub fn request_deadline<T>(request: &tonic::Request<T>) -> Instant {
    let wait_ms = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout_ms)
        .map(|ms| ms.saturating_sub(DEADLINE_MARGIN_MS))
        .unwrap_or(DEFAULT_SERVER_WAIT_MS)
        .min(MAX_SERVER_WAIT_MS);
    Instant::now() + Duration::from_millis(wait_ms)
}

/// Parses gRPC's `grpc-timeout` header (at most 8 digits and a unit).
fn parse_grpc_timeout_ms(text: &str) -> Option<u64> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => value.saturating_mul(3_600_000),
        "M" => value.saturating_mul(60_000),
        "S" => value.saturating_mul(1_000),
        "m" => value,
        "u" => value / 1_000,
        "n" => value / 1_000_000,
        _ => return None,
    })
}

/// Merges what a response observed into the client's session token.
pub fn merge_token(
    token: &mut v1::SessionToken,
    commit_index: u64,
    provisional: Option<(NodeId, u64)>,
) {
    token.commit_index = token.commit_index.max(commit_index);
    if let Some((origin, seq)) = provisional {
        let entry = token.provisional_seq.entry(origin).or_insert(0);
        *entry = (*entry).max(seq);
    }
}

impl NodeContext {
    /// Reads openraft's metrics in place. A clone copies maps of replication
    /// and heartbeat progress, which showed in the leader's profile when the
    /// write path cloned them per request.
    pub fn with_metrics<T>(
        &self,
        read: impl FnOnce(&openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> T,
    ) -> T {
        read(&self.raft.metrics().borrow())
    }

    pub fn applied_index(&self) -> u64 {
        self.with_metrics(|m| m.last_applied.map(|l| l.index).unwrap_or(0))
    }

    /// The leader this node knows of, with its address.
    pub fn known_leader(&self) -> Option<(NodeId, String)> {
        self.with_metrics(|m| {
            let leader = m.current_leader?;
            let node = m.membership_config.membership().get_node(&leader)?;
            Some((leader, node.addr.clone()))
        })
    }

    /// The error for a request that needs the leader, on a node that is not.
    fn not_leader(&self) -> ApiError {
        match self.known_leader() {
            Some((leader_id, leader_addr)) if leader_id != self.id => ApiError::NotLeader {
                node: self.id,
                leader_id,
                leader_addr,
            },
            _ => ApiError::NoLeader { node: self.id },
        }
    }

    /// Ok when this node is the leader and heard from a quorum within an
    /// election timeout; otherwise the error a client should see at once.
    pub fn check_leader_quorum(&self) -> Result<(), ApiError> {
        let (state, millis_since_quorum_ack) =
            self.with_metrics(|m| (m.state, m.millis_since_quorum_ack));
        if state != ServerState::Leader {
            return Err(self.not_leader());
        }
        match millis_since_quorum_ack {
            Some(ms) if ms > self.timing.election_timeout_max_ms => Err(ApiError::NoQuorum {
                node: self.id,
                detail: format!(
                    "this leader has not heard from a quorum for {ms} ms (election timeout {} ms)",
                    self.timing.election_timeout_max_ms
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The base of every response's metadata.
    fn meta(&self, session: v1::SessionToken) -> v1::ResponseMeta {
        let (applied_index, term) = self.with_metrics(|m| {
            let applied = m.last_applied.map(|id| id.index).unwrap_or(0);
            (applied, m.current_term)
        });
        v1::ResponseMeta {
            served_by: self.id,
            applied_index,
            term,
            session: Some(session),
            ..Default::default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        for (text, ms) in [
            ("5S", Some(5_000)),
            ("250m", Some(250)),
            ("2M", Some(120_000)),
            ("1H", Some(3_600_000)),
        ] {
            assert_eq!(parse_grpc_timeout_ms(text), ms, "{text}");
        }
        assert_eq!(parse_grpc_timeout_ms("7000u"), Some(7));
        assert_eq!(parse_grpc_timeout_ms("9000000n"), Some(9));
        for bad in ["", "5", "S", "123456789S", "5x", "-5S"] {
            assert_eq!(parse_grpc_timeout_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn tokens_merge_by_maximum() {
        let mut token = v1::SessionToken {
            commit_index: 10,
            provisional_seq: [(3, 7)].into_iter().collect(),
        };
        merge_token(&mut token, 8, Some((3, 5)));
        assert_eq!(token.commit_index, 10);
        assert_eq!(token.provisional_seq[&3], 7);
        merge_token(&mut token, 12, Some((2, 1)));
        assert_eq!(token.commit_index, 12);
        assert_eq!(token.provisional_seq[&2], 1);
    }
}
