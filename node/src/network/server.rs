//! Receiving node-to-node calls: openraft's RPCs on Raft connections
//! ([`serve_raft_connection`]: decode, hand to the local Raft, encode its
//! `Result` so the sender sees the remote error as it was), and capkv's own
//! over gRPC ([`RaftServer`]): forwarded proposals and read-index requests.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use capkv_proto::v1::internal::raft_service_server::RaftService;
use capkv_proto::v1::internal::RaftMessage;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::wire;
use super::wire::FrameError;
use super::wire::RpcKind;
use super::Contact;
use super::ProposeReply;
use crate::service::NodeContext;
use crate::types::Command;
use crate::types::TypeConfig;

/// A Raft connection that carries no request for this long is closed. A
/// leader's replication connections carry a heartbeat at least every
/// heartbeat interval (100 ms by default); a dead peer's connection, which
/// a partition leaves without a FIN, goes after this.
pub const RAFT_CONNECTION_IDLE_MS: u64 = 10_000;
/// The read buffer of a Raft connection: a whole AppendEntries of a busy
/// leader (a few KiB) in one read; a bigger one is read past the buffer.
pub const RAFT_CONNECTION_READ_BUFFER_BYTES: usize = 16 * 1024;

/// Why a Raft connection was closed by this side.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("undecodable {kind:?} request: {error}")]
    Decode {
        kind: RpcKind,
        error: bincode::Error,
    },
    #[error("no request for {RAFT_CONNECTION_IDLE_MS} ms")]
    Idle,
}

/// Serves openraft's RPCs from one peer connection (after its preface), one
/// at a time, until the peer closes it, it stays idle for
/// [`RAFT_CONNECTION_IDLE_MS`], or a frame is bad.
pub async fn serve_raft_connection(
    ctx: Arc<NodeContext>,
    stream: TcpStream,
) -> Result<(), ConnectionError> {
    let mut stream = BufReader::with_capacity(RAFT_CONNECTION_READ_BUFFER_BYTES, stream);
    let mut buf = Vec::new();
    let idle = Duration::from_millis(RAFT_CONNECTION_IDLE_MS);
    loop {
        let kind = match tokio::time::timeout(idle, wire::read_request(&mut stream, &mut buf)).await
        {
            Err(_) => return Err(ConnectionError::Idle),
            Ok(Ok(Some(kind))) => kind,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        };
        answer(&ctx, kind, &mut buf).await?;
        stream
            .get_mut()
            .write_all(&buf)
            .await
            .map_err(FrameError::from)?;
    }
}

/// Hands the request in `buf` to the local Raft, then encodes its result
/// as the reply frame in `buf`.
async fn answer(
    ctx: &NodeContext,
    kind: RpcKind,
    buf: &mut Vec<u8>,
) -> Result<(), ConnectionError> {
    fn request<T: DeserializeOwned>(kind: RpcKind, payload: &[u8]) -> Result<T, ConnectionError> {
        bincode::deserialize(payload).map_err(|error| ConnectionError::Decode { kind, error })
    }
    // Encoding openraft's own result types does not fail; if it ever did,
    // the connection closes and the sender sees a network error.
    match kind {
        RpcKind::Vote => {
            let result = ctx.raft.vote(request(kind, buf)?).await;
            wire::encode_frame(buf, None, &result)?;
        }
        RpcKind::AppendEntries => {
            let request: AppendEntriesRequest<TypeConfig> = request(kind, buf)?;
            let contact = Contact {
                at: Instant::now(),
                term: request.vote.leader_id().term,
                leader_commit: request.leader_commit.map(|id| id.index).unwrap_or(0),
            };
            let result = ctx.raft.append_entries(request).await;
            if matches!(result, Ok(AppendEntriesResponse::Success)) {
                ctx.leader_contact.record(contact);
            }
            wire::encode_frame(buf, None, &result)?;
        }
        RpcKind::InstallSnapshot => {
            let result = ctx.raft.install_snapshot(request(kind, buf)?).await;
            wire::encode_frame(buf, None, &result)?;
        }
    }
    Ok(())
}

/// capkv's own node-to-node calls over gRPC.
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
