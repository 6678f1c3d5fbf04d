//! The node's one port: accepts TCP connections and tells Raft connections,
//! which start with [`RAFT_PREFACE`], from gRPC ones (HTTP/2, which starts
//! with `PRI * HTTP/2.0`). Raft connections are served here
//! ([`serve_raft_connection`]); gRPC connections go to tonic through the
//! stream [`spawn`] returns. One port keeps a node's address (in the
//! configuration, the membership and the partition scripts) one address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use super::server::serve_raft_connection;
use super::wire::RAFT_PREFACE;
use crate::service::NodeContext;

/// How long a new connection may take to send its first bytes (an HTTP/2
/// client sends its preface at once, a node its [`RAFT_PREFACE`]).
pub const PREFACE_TIMEOUT_MS: u64 = 5_000;
/// Raft connections served at once. A peer keeps one per replication
/// stream, one per leadership check in flight (LINEARIZABLE reads share
/// them) and vote, and up to `MAX_IDLE_RAFT_CONNECTIONS_PER_PEER` idle.
pub const MAX_RAFT_CONNECTIONS: usize = 256;
/// Connections held by the listener at once: Raft connections and new
/// connections not yet told apart. Past it, new connections are closed.
pub const MAX_LISTENER_CONNECTIONS: usize = 512;
/// gRPC connections accepted and not yet taken by tonic.
pub const ACCEPTED_GRPC_QUEUE_MAX: usize = 128;
/// Pause after a failed accept (out of file descriptors, say), so the
/// listener does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// Pause between looks at a connection that has sent part of a preface.
const PREFACE_RECHECK_MS: u64 = 1;

/// The incoming gRPC connections, for tonic's `serve_with_incoming`.
pub type GrpcIncoming = ReceiverStream<std::io::Result<TcpStream>>;

/// Starts accepting on `listener` until `stop` turns true (or its sender
/// goes). The task's end closes the Raft connections and the listener.
pub fn spawn(
    listener: TcpListener,
    ctx: Arc<NodeContext>,
    stop: watch::Receiver<bool>,
) -> (GrpcIncoming, JoinHandle<()>) {
    let (grpc, incoming) = mpsc::channel(ACCEPTED_GRPC_QUEUE_MAX);
    let task = tokio::spawn(accept_loop(listener, ctx, grpc, stop));
    (ReceiverStream::new(incoming), task)
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<NodeContext>,
    grpc: mpsc::Sender<std::io::Result<TcpStream>>,
    mut stop: watch::Receiver<bool>,
) {
    let raft_slots = Arc::new(Semaphore::new(MAX_RAFT_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= MAX_LISTENER_CONNECTIONS {
                        tracing::warn!(%peer, "closing a new connection: {MAX_LISTENER_CONNECTIONS} connections are being served or told apart");
                        continue;
                    }
                    connections.spawn(route(stream, peer, ctx.clone(), grpc.clone(), raft_slots.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                }
            }
        }
    }
    // Dropping `connections` aborts the Raft connections (and the handles
    // to the node they hold); dropping `grpc` ends tonic's incoming stream.
}

/// What a connection's first bytes say it is.
#[derive(Debug, PartialEq)]
enum Speaks {
    Raft,
    Grpc,
    /// Closed before sending a byte.
    Nothing,
}

/// Looks at a connection's first bytes without taking them, so a gRPC
/// connection reaches tonic whole.
async fn classify(stream: &TcpStream) -> std::io::Result<Speaks> {
    let mut head = [0u8; RAFT_PREFACE.len()];
    loop {
        let seen = stream.peek(&mut head).await?;
        if seen == 0 {
            return Ok(Speaks::Nothing);
        }
        if head[..seen] != RAFT_PREFACE[..seen] {
            return Ok(Speaks::Grpc);
        }
        if seen == RAFT_PREFACE.len() {
            return Ok(Speaks::Raft);
        }
        // Part of a Raft preface: `peek` would return at once with the same
        // bytes, so wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(PREFACE_RECHECK_MS)).await;
    }
}

async fn route(
    mut stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<NodeContext>,
    grpc: mpsc::Sender<std::io::Result<TcpStream>>,
    raft_slots: Arc<Semaphore>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
    }
    let timeout = Duration::from_millis(PREFACE_TIMEOUT_MS);
    match tokio::time::timeout(timeout, classify(&stream)).await {
        Ok(Ok(Speaks::Grpc)) => {
            // Fails only when tonic has stopped taking connections.
            let _ = grpc.send(Ok(stream)).await;
        }
        Ok(Ok(Speaks::Raft)) => {
            drop(grpc);
            let Ok(_slot) = raft_slots.try_acquire_owned() else {
                tracing::warn!(%peer, "closing a Raft connection: {MAX_RAFT_CONNECTIONS} are open");
                return;
            };
            let mut preface = [0u8; RAFT_PREFACE.len()];
            if stream.read_exact(&mut preface).await.is_err() {
                return;
            }
            if let Err(e) = serve_raft_connection(ctx, stream).await {
                tracing::debug!(%peer, error = %e, "closed a Raft connection");
            }
        }
        Ok(Ok(Speaks::Nothing)) => {}
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "a new connection failed"),
        Err(_) => {
            tracing::debug!(%peer, "closing a connection that sent nothing within {PREFACE_TIMEOUT_MS} ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn connections_are_told_apart_by_their_first_bytes() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(classify(&server).await.unwrap(), Speaks::Grpc);
        // Nothing was taken: tonic gets the whole HTTP/2 preface.
        let mut head = [0u8; 3];
        let mut server = server;
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"PRI");

        // A Raft preface that arrives in two pieces.
        let (mut client, server) = pair().await;
        client.write_all(&RAFT_PREFACE[..3]).await.unwrap();
        let told = tokio::spawn(async move { classify(&server).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&RAFT_PREFACE[3..]).await.unwrap();
        assert_eq!(told.await.unwrap(), Speaks::Raft);

        // Starts like a Raft preface, then differs.
        let (mut client, server) = pair().await;
        client.write_all(b"CKVRAFT9").await.unwrap();
        assert_eq!(classify(&server).await.unwrap(), Speaks::Grpc);

        let (client, server) = pair().await;
        drop(client);
        assert_eq!(classify(&server).await.unwrap(), Speaks::Nothing);
    }
}
