//! `capkv.v1.AdminService`: forming the cluster, membership, status.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use capkv_proto::v1;
use capkv_proto::v1::admin_service_server::AdminService;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::BasicNode;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::error::ApiError;
use super::role_name;
use super::to_proto_version;
use super::NodeContext;
use crate::store::keys::ConflictTarget;
use crate::store::state_machine::MAX_CONFLICT_RECORDS;
use crate::types::NodeId;
use crate::types::StoredMembership;

/// The most members a membership request may name. Raft clusters are 3 or 5
/// voters; learners add a few more.
pub const MAX_MEMBERS_PER_REQUEST: usize = 64;
/// Conflict records listed when the request does not say how many.
pub const DEFAULT_CONFLICTS_LISTED: u32 = 100;

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct AdminApi {
    ctx: Arc<NodeContext>,
}

impl AdminApi {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

fn member(id: NodeId, addr: &str) -> Result<(NodeId, BasicNode), ApiError> {
    if id == 0 {
        return Err(ApiError::invalid(
            "member id 0 is reserved for 'none'; ids start at 1",
        ));
    }
    addr.parse::<SocketAddr>().map_err(|e| {
        ApiError::invalid(format!("member {id} address {addr:?} is not ip:port: {e}"))
    })?;
    Ok((id, BasicNode::new(addr)))
}

fn members_of(membership: &StoredMembership) -> (Vec<v1::Member>, Vec<v1::Member>) {
    let config = membership.membership();
    let to_member = |id: NodeId| v1::Member {
        id,
        addr: config
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default(),
    };
    (
        config.voter_ids().map(to_member).collect(),
        config.learner_ids().map(to_member).collect(),
    )
}

impl AdminApi {
    fn membership_response(&self, log_index: u64) -> v1::MembershipResponse {
        let metrics = self.ctx.raft.metrics().borrow().clone();
        let (voters, learners) = members_of(&metrics.membership_config);
        v1::MembershipResponse {
            voters,
            learners,
            log_index,
        }
    }

    fn current_voters(&self) -> Vec<v1::Member> {
        members_of(&self.ctx.raft.metrics().borrow().membership_config).0
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn init(
        &self,
        request: Request<v1::InitRequest>,
    ) -> Result<Response<v1::InitResponse>, Status> {
        let request = request.into_inner();
        let ctx = &self.ctx;
        if request.members.len() > MAX_MEMBERS_PER_REQUEST {
            return Err(ApiError::invalid(format!(
                "members has more than {MAX_MEMBERS_PER_REQUEST} entries"
            ))
            .into());
        }
        let requested: Vec<(NodeId, String)> = if request.members.is_empty() {
            ctx.peers
                .iter()
                .map(|(id, addr)| (*id, addr.clone()))
                .collect()
        } else {
            request
                .members
                .iter()
                .map(|m| (m.id, m.addr.clone()))
                .collect()
        };
        if requested.is_empty() {
            return Err(ApiError::invalid(
                "members is empty and this node was started without --peers",
            )
            .into());
        }
        let mut members = BTreeMap::new();
        for (id, addr) in &requested {
            let (id, node) = member(*id, addr)?;
            if members.insert(id, node).is_some() {
                return Err(ApiError::invalid(format!("member {id} is named twice")).into());
            }
        }
        if !members.contains_key(&ctx.id) {
            return Err(
                ApiError::invalid(format!("members must include this node ({})", ctx.id)).into(),
            );
        }
        if ctx
            .raft
            .is_initialized()
            .await
            .map_err(|e| ApiError::from_fatal(ctx.id, e))?
        {
            return Ok(Response::new(v1::InitResponse {
                voters: self.current_voters(),
                already_initialized: true,
            }));
        }
        // Answer with what was set: the metrics may not show it yet.
        let voters = members
            .iter()
            .map(|(id, node)| v1::Member {
                id: *id,
                addr: node.addr.clone(),
            })
            .collect();
        match ctx.raft.initialize(members).await {
            Ok(()) => Ok(Response::new(v1::InitResponse {
                voters,
                already_initialized: false,
            })),
            // Someone initialized it between our check and now: fine.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Ok(Response::new(v1::InitResponse {
                    voters: self.current_voters(),
                    already_initialized: true,
                }))
            }
            Err(RaftError::APIError(e @ InitializeError::NotInMembers(_))) => {
                Err(ApiError::invalid(e.to_string()).into())
            }
            Err(RaftError::Fatal(e)) => Err(ApiError::from_fatal(ctx.id, e).into()),
        }
    }

    async fn add_learner(
        &self,
        request: Request<v1::AddLearnerRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let request = request.into_inner();
        let Some(m) = request.member else {
            return Err(ApiError::invalid("member is missing").into());
        };
        let (id, node) = member(m.id, &m.addr)?;
        let response = self
            .ctx
            .raft
            .add_learner(id, node, request.blocking)
            .await
            .map_err(|e| ApiError::from_write(self.ctx.id, e))?;
        Ok(Response::new(
            self.membership_response(response.log_id.index),
        ))
    }

    async fn change_membership(
        &self,
        request: Request<v1::ChangeMembershipRequest>,
    ) -> Result<Response<v1::MembershipResponse>, Status> {
        let request = request.into_inner();
        if request.voters.is_empty() {
            return Err(
                ApiError::invalid("voters is empty: a cluster needs at least one voter").into(),
            );
        }
        if request.voters.len() > MAX_MEMBERS_PER_REQUEST {
            return Err(ApiError::invalid(format!(
                "voters has more than {MAX_MEMBERS_PER_REQUEST} entries"
            ))
            .into());
        }
        let voters: BTreeSet<NodeId> = request.voters.iter().copied().collect();
        let response = self
            .ctx
            .raft
            .change_membership(voters, request.retain)
            .await
            .map_err(|e| ApiError::from_write(self.ctx.id, e))?;
        Ok(Response::new(
            self.membership_response(response.log_id.index),
        ))
    }

    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::NodeStatus>, Status> {
        let ctx = &self.ctx;
        let metrics = ctx.raft.metrics().borrow().clone();
        let (voters, learners) = members_of(&metrics.membership_config);
        let leader_id = metrics.current_leader.unwrap_or(0);
        let leader_addr = metrics
            .current_leader
            .and_then(|id| {
                metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        let replication = metrics
            .replication
            .iter()
            .flatten()
            .map(|(id, matched)| v1::ReplicationProgress {
                node_id: *id,
                matched_index: matched.map(|l| l.index).unwrap_or(0),
            })
            .collect();
        let is_voter = voters.iter().any(|m| m.id == ctx.id);
        let app = ctx
            .reads
            .app_meta()
            .map_err(|e| ApiError::from_storage(ctx.id, e))?;
        Ok(Response::new(v1::NodeStatus {
            id: ctx.id,
            addr: ctx.addr.clone(),
            role: role_name(metrics.state, is_voter).to_string(),
            term: metrics.current_term,
            leader_id,
            leader_addr,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index: ctx.log.committed_index().unwrap_or(0),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
            voters,
            learners,
            replication,
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            pending_provisional: ctx.provisional.pending_count() as u64,
            oldest_pending_age_ms: ctx
                .provisional
                .oldest_accepted_at_ms()
                .map(|at| wall_clock_ms().saturating_sub(at)),
            conflicts_recorded: app.conflicts_total,
            reconciled_seq: app.reconciled_seq.into_iter().collect(),
            leader_contact_age_ms: if metrics.state == openraft::ServerState::Leader {
                metrics.millis_since_quorum_ack
            } else {
                ctx.leader_contact
                    .last()
                    .map(|c| c.at.elapsed().as_millis() as u64)
            },
        }))
    }

    async fn list_conflicts(
        &self,
        request: Request<v1::ListConflictsRequest>,
    ) -> Result<Response<v1::ListConflictsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => DEFAULT_CONFLICTS_LISTED,
            n if n as u64 > MAX_CONFLICT_RECORDS => {
                return Err(ApiError::invalid(format!(
                    "limit {n} is more than the maximum of {MAX_CONFLICT_RECORDS}"
                ))
                .into())
            }
            n => n,
        };
        let storage = |e| ApiError::from_storage(self.ctx.id, e);
        let app = self.ctx.reads.app_meta().map_err(storage)?;
        let records = self.ctx.reads.conflicts(limit as usize).map_err(storage)?;
        let conflicts = records
            .into_iter()
            .map(|record| {
                let (key, sensor_id, timestamp_ms) = match record.target {
                    ConflictTarget::Key(key) => (key, String::new(), 0),
                    ConflictTarget::Reading {
                        sensor_id,
                        timestamp_ms,
                    } => (Vec::new(), sensor_id, timestamp_ms as i64),
                };
                v1::Conflict {
                    key,
                    sensor_id,
                    timestamp_ms,
                    loser: Some(to_proto_version(record.loser)),
                    loser_write: Some(v1::WriteId {
                        origin_node: record.loser_write.0,
                        seq: record.loser_write.1,
                    }),
                    winner: Some(to_proto_version(record.winner)),
                    log_index: record.log_index,
                }
            })
            .collect();
        Ok(Response::new(v1::ListConflictsResponse {
            conflicts,
            total: app.conflicts_total,
        }))
    }
}
