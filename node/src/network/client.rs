//! Sending openraft RPCs to peers (`RaftNetworkFactory` / `RaftNetwork`),
//! and capkv's own calls to the leader.
//!
//! openraft's RPCs go over a TCP connection per [`PeerConnection`] in the
//! framing of [`super::wire`]: a replication stream's AppendEntries is one
//! write and one read, with no HTTP/2 stream, headers or task hops.
//! Forwarded proposals and read-index requests, which many tasks send at
//! once, use one tonic channel per peer address (HTTP/2 multiplexes them).
//! Outgoing connections of both kinds bind the node's own listen IP, so a
//! partition rule on (source, destination) loopback addresses cuts exactly
//! the links it names.

use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

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
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::wire;
use super::wire::FrameError;
use super::wire::RpcKind;
use super::wire::RAFT_PREFACE;
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
/// HTTP/2 ping interval (and ping timeout) on the channels to the leader.
pub const PEER_KEEPALIVE_INTERVAL_MS: u64 = 500;
/// The read buffer of a Raft connection: a reply's length and payload
/// (an AppendEntries reply is a few dozen bytes) arrive in one read.
pub const PEER_READ_BUFFER_BYTES: usize = 8 * 1024;
/// Idle Raft connections kept per peer for the next [`PeerConnection`].
/// openraft makes a new client for every leadership check (one per
/// LINEARIZABLE read on the leader) and every vote: without reuse each
/// would open a TCP connection.
pub const MAX_IDLE_RAFT_CONNECTIONS_PER_PEER: usize = 16;
/// An idle Raft connection older than this is closed, not reused: well
/// under the peer's `RAFT_CONNECTION_IDLE_MS`, so a reused connection is
/// never one the peer is closing.
pub const RAFT_CONNECTION_REUSE_MS: u64 = 3_000;

/// Creates one [`PeerConnection`] per target; caches the channels to the
/// leader by address.
#[derive(Clone)]
pub struct NetworkFactory {
    node_id: NodeId,
    source_ip: Option<IpAddr>,
    links: Arc<LinkFilter>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    idle: Arc<IdleConnections>,
}

/// A Raft connection between two RPCs: after a whole reply, so the next
/// request can use it.
type RaftStream = BufReader<TcpStream>;

/// Idle Raft connections by peer address, newest last.
#[derive(Default)]
pub struct IdleConnections {
    by_addr: Mutex<HashMap<String, Vec<(RaftStream, Instant)>>>,
}

impl IdleConnections {
    fn take(&self, addr: &str) -> Option<RaftStream> {
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        let idle = by_addr.get_mut(addr)?;
        let reuse = Duration::from_millis(RAFT_CONNECTION_REUSE_MS);
        // Newest last: anything older than the newest stale one is stale too.
        if let Some(stale) = idle.iter().rposition(|(_, since)| since.elapsed() > reuse) {
            idle.drain(..=stale);
        }
        idle.pop().map(|(stream, _)| stream)
    }

    fn put(&self, addr: &str, stream: RaftStream) {
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        let idle = by_addr.entry(addr.to_string()).or_default();
        if idle.len() >= MAX_IDLE_RAFT_CONNECTIONS_PER_PEER {
            idle.remove(0);
        }
        idle.push((stream, Instant::now()));
    }

    /// Makes every idle connection `by` older, for tests.
    #[cfg(test)]
    fn age(&self, by: Duration) {
        let mut by_addr = self.by_addr.lock().unwrap_or_else(|e| e.into_inner());
        for (_, since) in by_addr.values_mut().flatten() {
            *since = since.checked_sub(by).expect("an instant that far back");
        }
    }
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
            idle: Arc::new(IdleConnections::default()),
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
            addr: node.addr.clone(),
            source_ip: self.source_ip,
            links: self.links.clone(),
            idle: self.idle.clone(),
            stream: None,
            buf: Vec::new(),
        }
    }
}

/// The openraft view of one peer: a TCP connection of its own (see
/// [`super::wire`]), taken from the idle ones or opened at the first RPC,
/// and again after any error; given back to the idle ones when openraft
/// drops the client. openraft calls it for one RPC at a time (`&mut self`).
pub struct PeerConnection {
    from: NodeId,
    target: NodeId,
    addr: String,
    source_ip: Option<IpAddr>,
    links: Arc<LinkFilter>,
    idle: Arc<IdleConnections>,
    stream: Option<RaftStream>,
    /// The last request's frame, then its reply's payload; kept to reuse its
    /// allocation.
    buf: Vec<u8>,
}

impl Drop for PeerConnection {
    fn drop(&mut self) {
        // Only a connection between two RPCs is here (see `call`).
        if let Some(stream) = self.stream.take() {
            self.idle.put(&self.addr, stream);
        }
    }
}

/// capkv's own calls to the leader.
#[derive(Clone, Copy)]
enum LeaderRpc {
    Propose,
    ReadIndex,
}

type RaftRpcError<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn unreachable<E: std::error::Error>(error: impl std::fmt::Display) -> RaftRpcError<E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(error.to_string())))
}

impl PeerConnection {
    /// Opens the connection: binds the node's own IP (so a partition rule on
    /// source and destination cuts exactly the links it names), connects
    /// within [`PEER_CONNECT_TIMEOUT_MS`] and sends the preface.
    async fn connect(&self) -> std::io::Result<RaftStream> {
        let addr = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} resolves to nothing", self.addr)))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.source_ip {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let connect = socket.connect(addr);
        let mut stream =
            tokio::time::timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {PEER_CONNECT_TIMEOUT_MS} ms"),
                    )
                })??;
        stream.set_nodelay(true)?;
        stream.write_all(RAFT_PREFACE).await?;
        Ok(BufReader::with_capacity(PEER_READ_BUFFER_BYTES, stream))
    }

    /// Writes the request in `self.buf` and reads the reply's payload into
    /// it, on the open connection or a new one.
    async fn exchange(&mut self) -> Result<RaftStream, FrameError> {
        let mut stream = match self.stream.take().or_else(|| self.idle.take(&self.addr)) {
            Some(stream) => stream,
            None => self.connect().await?,
        };
        stream.get_mut().write_all(&self.buf).await?;
        wire::read_payload(&mut stream, &mut self.buf).await?;
        Ok(stream)
    }

    /// Sends one RPC and decodes `Result<Resp, RaftError<E>>` from the peer.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RaftRpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if !self.links.allows(self.from, self.target) {
            self.stream = None;
            return Err(unreachable(format!(
                "the link from node {} to node {} is cut",
                self.from, self.target
            )));
        }
        wire::encode_frame(&mut self.buf, Some(kind), request)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // The connection is taken out for the exchange and put back only
        // after a whole reply: a timeout or an error (or this future being
        // dropped) closes it, so no late reply is read as the next one's.
        let ttl = option.hard_ttl();
        let stream = match tokio::time::timeout(ttl, self.exchange()).await {
            Ok(Ok(stream)) => stream,
            // Connection-level failures: openraft backs off from unreachable peers.
            Ok(Err(FrameError::Io(e))) => {
                return Err(unreachable(format!("node {}: {e}", self.target)))
            }
            Ok(Err(e)) => return Err(RPCError::Network(NetworkError::new(&e))),
            Err(_) => {
                let late = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "node {} did not answer within {} ms",
                        self.target,
                        ttl.as_millis()
                    ),
                );
                return Err(RPCError::Network(NetworkError::new(&late)));
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&self.buf)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.stream = Some(stream);
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
            self.call(RpcKind::AppendEntries, &request, &option).await?;
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
        self.call(RpcKind::InstallSnapshot, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &request, &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::Vote;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A peer that reads each connection's preface and first request, then
    /// answers it with `granted` after `delay` (the connection's index picks
    /// both).
    async fn fake_peer(listener: TcpListener, answers: Vec<(Duration, bool)>) {
        for (delay, granted) in answers {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut preface = [0u8; RAFT_PREFACE.len()];
                stream.read_exact(&mut preface).await.unwrap();
                assert_eq!(&preface, RAFT_PREFACE);
                let mut buf = Vec::new();
                let kind = wire::read_request(&mut stream, &mut buf).await.unwrap();
                assert_eq!(kind, Some(RpcKind::Vote));
                let request: VoteRequest<NodeId> = bincode::deserialize(&buf).unwrap();
                tokio::time::sleep(delay).await;
                let reply: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                    Ok(VoteResponse::new(request.vote, None, granted));
                wire::encode_frame(&mut buf, None, &reply).unwrap();
                // The sender may have gone already (the late reply).
                let _ = stream.write_all(&buf).await;
                let _ = stream.read_u8().await;
            });
        }
    }

    fn connection(addr: SocketAddr, links: Arc<LinkFilter>) -> PeerConnection {
        PeerConnection {
            from: 1,
            target: 2,
            addr: addr.to_string(),
            source_ip: None,
            links,
            idle: Arc::new(IdleConnections::default()),
            stream: None,
            buf: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_late_reply_is_never_taken_for_the_next_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The first connection answers "not granted" too late; the second
        // answers "granted" at once.
        tokio::spawn(fake_peer(
            listener,
            vec![(Duration::from_millis(300), false), (Duration::ZERO, true)],
        ));
        let mut peer = connection(addr, Arc::new(LinkFilter::default()));
        let request = VoteRequest::new(Vote::new(3, 1), None);
        let option = RPCOption::new(Duration::from_millis(100));
        let late = peer.vote(request.clone(), option.clone()).await;
        assert!(matches!(late, Err(RPCError::Network(_))), "{late:?}");
        // Had the connection been kept, this would read the late "not granted".
        tokio::time::sleep(Duration::from_millis(300)).await;
        let granted = peer.vote(request, option).await.unwrap();
        assert!(granted.vote_granted);
    }

    /// A peer that grants every vote on every connection; counts connections.
    async fn granting_peer(listener: TcpListener, accepted: Arc<std::sync::atomic::AtomicUsize>) {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut preface = [0u8; RAFT_PREFACE.len()];
                stream.read_exact(&mut preface).await.unwrap();
                let mut buf = Vec::new();
                while let Ok(Some(_)) = wire::read_request(&mut stream, &mut buf).await {
                    let request: VoteRequest<NodeId> = bincode::deserialize(&buf).unwrap();
                    let reply: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                        Ok(VoteResponse::new(request.vote, None, true));
                    wire::encode_frame(&mut buf, None, &reply).unwrap();
                    if stream.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn clients_reuse_idle_connections_while_they_are_fresh() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(granting_peer(listener, accepted.clone()));
        let idle = Arc::new(IdleConnections::default());
        let client = || {
            let mut peer = connection(addr, Arc::new(LinkFilter::default()));
            peer.idle = idle.clone();
            peer
        };
        let request = VoteRequest::new(Vote::new(3, 1), None);
        let option = RPCOption::new(Duration::from_millis(1000));
        // One client after another (openraft's leadership checks): one
        // connection for all of them.
        for _ in 0..5 {
            let mut peer = client();
            assert!(
                peer.vote(request.clone(), option.clone())
                    .await
                    .unwrap()
                    .vote_granted
            );
        }
        let count = || accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(count(), 1);
        // Two at once need two; both are kept for later.
        let (mut a, mut b) = (client(), client());
        let (ra, rb) = tokio::join!(
            a.vote(request.clone(), option.clone()),
            b.vote(request.clone(), option.clone())
        );
        assert!(ra.unwrap().vote_granted && rb.unwrap().vote_granted);
        drop((a, b));
        assert_eq!(count(), 2);
        let mut c = client();
        c.vote(request.clone(), option.clone()).await.unwrap();
        assert_eq!(count(), 2);
        drop(c);
        // An idle connection past its reuse age is closed, not used.
        idle.age(Duration::from_millis(RAFT_CONNECTION_REUSE_MS + 1));
        client().vote(request, option).await.unwrap();
        assert_eq!(count(), 3);
    }

    #[tokio::test]
    async fn a_cut_link_is_unreachable_without_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let links = Arc::new(LinkFilter::default());
        links.cut_one_way(2, 1);
        let mut peer = connection(listener.local_addr().unwrap(), links);
        let request = VoteRequest::new(Vote::new(3, 1), None);
        let cut = peer
            .vote(request, RPCOption::new(Duration::from_millis(100)))
            .await;
        assert!(matches!(cut, Err(RPCError::Unreachable(_))), "{cut:?}");
        // Nothing connected.
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err());
    }

    #[tokio::test]
    async fn a_closed_peer_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut peer = connection(addr, Arc::new(LinkFilter::default()));
        let request = VoteRequest::new(Vote::new(3, 1), None);
        let refused = peer
            .vote(request, RPCOption::new(Duration::from_millis(1000)))
            .await;
        assert!(
            matches!(refused, Err(RPCError::Unreachable(_))),
            "{refused:?}"
        );
    }
}
