//! Receiving node-to-node calls: openraft's RPCs (decode, hand to the local
//! Raft, encode its `Result` so the sender sees the remote error as it was),
//! and capkv's own: forwarded proposals and read-index requests.

use std::sync::Arc;
use std::time::Instant;

use capkv_proto::v1::internal::raft_service_server::RaftService;
use capkv_proto::v1::internal::RaftMessage;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::Contact;
use super::ProposeReply;
use crate::service::NodeContext;
use crate::types::Command;
use crate::types::TypeConfig;

pub struct RaftServer {
    ctx: Arc<NodeContext>,
}

impl RaftServer {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    bincode::deserialize(&request.into_inner().payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = bincode::serialize(result)
        .map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        encode(&self.ctx.raft.vote(decode(request)?).await)
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let request: AppendEntriesRequest<TypeConfig> = decode(request)?;
        let contact = Contact {
            at: Instant::now(),
            term: request.vote.leader_id().term,
            leader_commit: request.leader_commit.map(|id| id.index).unwrap_or(0),
        };
        let result = self.ctx.raft.append_entries(request).await;
        if matches!(result, Ok(AppendEntriesResponse::Success)) {
            self.ctx.leader_contact.record(contact);
        }
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.ctx.raft.install_snapshot(decode(request)?).await)
    }

    async fn propose(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let command: Command = decode(request)?;
        let result = self
            .ctx
            .propose_as_leader(command)
            .await
            .map(|committed| ProposeReply {
                result: committed.result,
                log_index: committed.log_index,
            });
        encode(&result)
    }

    async fn read_index(
        &self,
        _request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.ctx.leader_read_index().await)
    }
}
