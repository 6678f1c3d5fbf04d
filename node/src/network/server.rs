//! Receiving openraft RPCs from peers: decode, hand to the local Raft, encode
//! its `Result` so the sender sees the remote error as it was.

use capkv_proto::v1::internal::raft_service_server::RaftService;
use capkv_proto::v1::internal::RaftMessage;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::types::Raft;

pub struct RaftServer {
    raft: Raft,
}

impl RaftServer {
    pub fn new(raft: Raft) -> Self {
        Self { raft }
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
        encode(&self.raft.vote(decode(request)?).await)
    }

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.append_entries(decode(request)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        encode(&self.raft.install_snapshot(decode(request)?).await)
    }
}
