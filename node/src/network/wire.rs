//! The framing of openraft's RPCs (Vote, AppendEntries, InstallSnapshot) on
//! a plain TCP connection between nodes, shared by [`super::client`] and
//! [`super::server`].
//!
//! A connection starts with [`RAFT_PREFACE`], which the listener tells
//! apart from HTTP/2's preface (`PRI * HTTP/2.0...`), so Raft traffic shares
//! the node's one port with gRPC. Then the sender writes one request and
//! waits for its reply, again and again; openraft keeps at most one RPC in
//! flight per connection (a replication stream sends its next AppendEntries
//! only after the last one's reply), so replies need no ids.
//!
//! - request: kind (1 byte, [`RpcKind`]), payload length (4 bytes, big
//!   endian), payload (bincode of the openraft request);
//! - reply: payload length (4 bytes, big endian), payload (bincode of
//!   `Result<Response, RaftError>`, so the sender sees a remote error as it
//!   was).
//!
//! A payload over [`MAX_RAFT_MESSAGE_BYTES`] is refused before it is read.
//! Any error (I/O, a timeout, an undecodable payload) ends the connection:
//! a late reply can then never be taken for the next request's.

use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;

use super::MAX_RAFT_MESSAGE_BYTES;

/// The first bytes a node sends on a Raft connection. Its version digit
/// changes if the framing does.
pub const RAFT_PREFACE: &[u8; 8] = b"CKVRAFT1";

/// Which openraft RPC a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RpcKind {
    Vote = 1,
    AppendEntries = 2,
    InstallSnapshot = 3,
}

impl RpcKind {
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Vote),
            2 => Some(Self::AppendEntries),
            3 => Some(Self::InstallSnapshot),
            _ => None,
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("a Raft message of {0} bytes is over the limit of {MAX_RAFT_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("unknown Raft RPC kind {0}")]
    UnknownKind(u8),
    #[error("encoding a Raft message: {0}")]
    Encode(#[from] bincode::Error),
}

/// Encodes `value` as one frame in `buf` (cleared): the request kind, if
/// any, the payload length and the bincode payload, with no copy between.
pub fn encode_frame<T: serde::Serialize>(
    buf: &mut Vec<u8>,
    kind: Option<RpcKind>,
    value: &T,
) -> Result<(), FrameError> {
    start_frame(buf, kind);
    bincode::serialize_into(&mut *buf, value)?;
    finish_frame(buf, kind)
}

/// Starts a frame in `buf` (cleared): the request kind, if any, and room for
/// the length, which [`finish_frame`] fills in once the payload is appended.
fn start_frame(buf: &mut Vec<u8>, kind: Option<RpcKind>) {
    buf.clear();
    if let Some(kind) = kind {
        buf.push(kind as u8);
    }
    buf.extend_from_slice(&[0; 4]);
}

/// Writes the payload length into a frame begun with [`start_frame`].
fn finish_frame(buf: &mut [u8], kind: Option<RpcKind>) -> Result<(), FrameError> {
    let at = usize::from(kind.is_some());
    let payload = buf.len() - at - 4;
    if payload > MAX_RAFT_MESSAGE_BYTES {
        return Err(FrameError::TooLarge(payload));
    }
    buf[at..at + 4].copy_from_slice(&(payload as u32).to_be_bytes());
    Ok(())
}

/// Reads a payload length and then the payload into `buf`.
pub async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let len = reader.read_u32().await? as usize;
    if len > MAX_RAFT_MESSAGE_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    buf.clear();
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    Ok(())
}

/// Reads one request: its kind, then its payload into `buf`. `Ok(None)` when
/// the sender closed the connection between requests.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<RpcKind>, FrameError> {
    let kind = match reader.read_u8().await {
        Ok(byte) => byte,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let kind = RpcKind::from_byte(kind).ok_or(FrameError::UnknownKind(kind))?;
    read_payload(reader, buf).await?;
    Ok(Some(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Option<RpcKind>, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        start_frame(&mut buf, kind);
        buf.extend_from_slice(payload);
        finish_frame(&mut buf, kind).unwrap();
        buf
    }

    #[tokio::test]
    async fn frames_read_back_as_written() {
        let mut bytes = frame(Some(RpcKind::AppendEntries), b"entries");
        bytes.extend(frame(Some(RpcKind::Vote), b""));
        let mut reader = &bytes[..];
        let mut buf = Vec::new();
        let kind = read_request(&mut reader, &mut buf).await.unwrap();
        assert_eq!(
            (kind, &buf[..]),
            (Some(RpcKind::AppendEntries), &b"entries"[..])
        );
        let kind = read_request(&mut reader, &mut buf).await.unwrap();
        assert_eq!((kind, &buf[..]), (Some(RpcKind::Vote), &b""[..]));
        // The sender closed between requests: a clean end, not an error.
        assert_eq!(read_request(&mut reader, &mut buf).await.unwrap(), None);

        let reply = frame(None, b"result");
        read_payload(&mut &reply[..], &mut buf).await.unwrap();
        assert_eq!(buf, b"result");
    }

    #[tokio::test]
    async fn bad_frames_are_refused() {
        let mut buf = Vec::new();
        let unknown = [9u8, 0, 0, 0, 0];
        assert!(matches!(
            read_request(&mut &unknown[..], &mut buf).await,
            Err(FrameError::UnknownKind(9))
        ));
        // A length over the limit is refused before anything is allocated.
        let mut huge = vec![RpcKind::AppendEntries as u8];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            read_request(&mut &huge[..], &mut buf).await,
            Err(FrameError::TooLarge(n)) if n == u32::MAX as usize
        ));
        assert!(buf.capacity() < 1024);
        // A request cut short is an error, not a clean end.
        let mut cut = frame(Some(RpcKind::Vote), b"vote");
        cut.truncate(cut.len() - 1);
        assert!(matches!(
            read_request(&mut &cut[..], &mut buf).await,
            Err(FrameError::Io(_))
        ));
        let mut oversized = vec![0u8; 4];
        oversized.resize(4 + MAX_RAFT_MESSAGE_BYTES + 1, 0);
        assert!(matches!(
            finish_frame(&mut oversized, None),
            Err(FrameError::TooLarge(_))
        ));
    }
}
