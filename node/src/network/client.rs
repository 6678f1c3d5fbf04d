//! Sending openraft RPCs to peers (`RaftNetworkFactory` / `RaftNetwork`).
//!
//! One tonic channel per peer address, shared by every stream to that peer
//! (HTTP/2 multiplexes them over one connection). Outgoing connections bind
//! the node's own listen IP, so a partition rule on (source, destination)
//! loopback addresses cuts exactly the links it names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use capkv_proto::v1::internal::raft_service_client::RaftServiceClient;
use capkv_proto::v1::internal::RaftMessage;
use openraft::error::InstallSnapshotError;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::RaftError;
use openraft::error::RemoteError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetwork;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::InstallSnapshotRequest;
use openraft::raft::InstallSnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::LinkFilter;
use super::ProposeReply;
use super::MAX_APPEND_ENTRIES_PAYLOAD_BYTES;
use super::MAX_RAFT_MESSAGE_BYTES;
use crate::service::error::ApiError;
use crate::types::Command;
use crate::types::NodeId;
use crate::types::TypeConfig;

/// How long to wait for a TCP connection to a peer. Short: a peer that does
/// not accept within this is treated as unreachable and retried by openraft.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 500;
/// HTTP/2 ping interval (and ping timeout) on peer connections.
pub const PEER_KEEPALIVE_INTERVAL_MS: u64 = 500;

/// Creates one [`PeerConnection`] per target; caches channels by address.
#[derive(Clone)]
pub struct NetworkFactory {
    node_id: NodeId,
    source_ip: Option<IpAddr>,
    links: Arc<LinkFilter>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkFactory {
    /// `source_ip`: the address outgoing connections bind; `None` lets the
    /// OS choose (for wildcard listen addresses).
    pub fn new(node_id: NodeId, source_ip: Option<IpAddr>, links: Arc<LinkFilter>) -> Self {
        Self {
            node_id,
            source_ip,
            links,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn raft_client(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<RaftServiceClient<Channel>, ApiError> {
        if !self.links.allows(self.node_id, target) {
            return Err(self.unreachable(target, "the link is cut"));
        }
        let channel = self
            .channel(addr)
            .map_err(|e| self.unreachable(target, e))?;
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES))
    }

    /// Sends one of capkv's own calls to the leader and decodes its
    /// `Result<T, ApiError>`. Any transport failure is "no quorum": this
    /// node cannot get the leader to act.
    async fn leader_call<T: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        payload: Vec<u8>,
        timeout: Duration,
        rpc: LeaderRpc,
    ) -> Result<T, ApiError> {
        let mut client = self.raft_client(target, addr)?;
        let mut request = tonic::Request::new(RaftMessage { payload });
        request.set_timeout(timeout);
        let call = async {
            match rpc {
                LeaderRpc::Propose => client.propose(request).await,
                LeaderRpc::ReadIndex => client.read_index(request).await,
            }
        };
        let reply = tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| {
                self.unreachable(
                    target,
                    format!("no answer within {} ms", timeout.as_millis()),
                )
            })?
            .map_err(|status| self.unreachable(target, status.message()))?;
        let result: Result<T, ApiError> = bincode::deserialize(&reply.into_inner().payload)
            .map_err(|e| self.unreachable(target, e))?;
        result
    }

    /// Asks the leader (`target` at `addr`) to propose `command`; returns
    /// what applying it gave and its log index.
    pub async fn propose(
        &self,
        target: NodeId,
        addr: &str,
        command: &Command,
        timeout: Duration,
    ) -> Result<ProposeReply, ApiError> {
        let payload = bincode::serialize(command).map_err(|e| self.unreachable(target, e))?;
        self.leader_call(target, addr, payload, timeout, LeaderRpc::Propose)
            .await
    }

    /// Asks the leader for a read index: it confirms its leadership with a
    /// quorum and answers the commit index a linearizable read must see.
    pub async fn read_index(
        &self,
        target: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<u64, ApiError> {
        self.leader_call(target, addr, Vec::new(), timeout, LeaderRpc::ReadIndex)
            .await
    }

    fn unreachable(&self, target: NodeId, detail: impl std::fmt::Display) -> ApiError {
        ApiError::NoQuorum {
            node: self.node_id,
            detail: format!("the leader (node {target}) did not answer: {detail}"),
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, NetworkError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| NetworkError::new(&e))?
            .connect_timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS))
            // A partition drops packets without closing connections: pings
            // find a dead connection within about two intervals, so the
            // channel reconnects (and works again soon after a heal) instead
            // of waiting out TCP's retransmission backoff.
            .http2_keep_alive_interval(Duration::from_millis(PEER_KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(PEER_KEEPALIVE_INTERVAL_MS))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .local_address(self.source_ip);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerConnection {
            from: self.node_id,
            target,
            links: self.links.clone(),
            channel: self.channel(&node.addr),
        }
    }
}

/// The openraft view of one peer.
pub struct PeerConnection {
    from: NodeId,
    target: NodeId,
    links: Arc<LinkFilter>,
    channel: Result<Channel, NetworkError>,
}

/// capkv's own calls to the leader.
#[derive(Clone, Copy)]
enum LeaderRpc {
    Propose,
    ReadIndex,
}

/// Which RPC of the Raft service to call.
#[derive(Clone, Copy)]
enum RaftRpc {
    Vote,
    AppendEntries,
    InstallSnapshot,
}

impl PeerConnection {
    /// Sends one RPC and decodes `Result<Resp, RaftError<E>>` from the peer.
    async fn call<Req, Resp, E>(
        &self,
        rpc: RaftRpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if !self.links.allows(self.from, self.target) {
            let cut = std::io::Error::other(format!(
                "the link from node {} to node {} is cut",
                self.from, self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&cut)));
        }
        let channel = self.channel.clone().map_err(RPCError::Network)?;
        let payload =
            bincode::serialize(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftMessage { payload });
        message.set_timeout(option.hard_ttl());
        let mut client = RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let reply = match rpc {
            RaftRpc::Vote => client.vote(message).await,
            RaftRpc::AppendEntries => client.append_entries(message).await,
            RaftRpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            // Connection-level failures: openraft backs off from unreachable peers.
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Cuts `entries` to the longest prefix (at least one entry) whose encoded
/// size fits the AppendEntries byte budget. Returns how many entries to keep.
fn entries_within_budget(entries: &[crate::types::Entry]) -> usize {
    let mut total = 0u64;
    for (kept, entry) in entries.iter().enumerate() {
        total += bincode::serialized_size(entry).unwrap_or(u64::MAX);
        if total > MAX_APPEND_ENTRIES_PAYLOAD_BYTES && kept > 0 {
            return kept;
        }
    }
    entries.len()
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let keep = entries_within_budget(&request.entries);
        let truncated = keep < request.entries.len();
        request.entries.truncate(keep);
        let last_sent = request.entries.last().map(|e| e.log_id);
        let response: AppendEntriesResponse<NodeId> =
            self.call(RaftRpc::AppendEntries, &request, &option).await?;
        // The follower accepted only what we sent: report it as partial, so
        // openraft sends the rest next.
        Ok(match response {
            AppendEntriesResponse::Success if truncated => {
                AppendEntriesResponse::PartialSuccess(last_sent)
            }
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftRpc::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpc::Vote, &request, &option).await
    }
}
