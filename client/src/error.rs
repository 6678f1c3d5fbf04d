//! The SDK's error type, and the one place where a gRPC status becomes one.

use std::fmt::Write as _;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use crate::endpoint::normalize_endpoint;

/// Everything a call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server rejected the request as malformed; the server's message.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// No node could serve the request. `leader` is the leader the last node
    /// named, `(id, host:port)`, when it knew one.
    #[error("unavailable: {message}{}", leader_suffix(.leader))]
    Unavailable {
        message: String,
        leader: Option<(u64, String)>,
    },

    /// The call's deadline passed (or a node reported its deadline exceeded on
    /// the last allowed attempt).
    #[error("deadline exceeded after {attempts} attempt(s); last error: {last_error}")]
    DeadlineExceeded { attempts: u32, last_error: String },

    /// The cluster is not in a state that allows the request (for example not
    /// initialized yet); the server's message.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),

    /// An endpoint address is not `host:port`, or the list is empty.
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),

    /// A [`crate::ClientConfig`] value is out of range.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),

    /// The request did not reach a server, or its connection broke.
    #[error("transport error: {0}")]
    Transport(String),

    /// The server answered something the client cannot use (for example a
    /// paging loop that makes no progress).
    #[error("invalid response: {0}")]
    InvalidResponse(String),

    /// Any other gRPC status the server returned.
    #[error("{}: {message}", code_name(*.code))]
    Server { code: Code, message: String },
}

impl Error {
    /// The gRPC code closest to this error, for callers that branch on codes.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::InvalidEndpoint(_) | Error::InvalidConfig(_) => {
                Code::InvalidArgument
            }
            Error::Unavailable { .. } | Error::Transport(_) => Code::Unavailable,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::InvalidResponse(_) => Code::Internal,
            Error::Server { code, .. } => *code,
        }
    }

    /// The leader a node named in its last `UNAVAILABLE` answer, if any.
    pub fn leader(&self) -> Option<(u64, &str)> {
        match self {
            Error::Unavailable {
                leader: Some((id, addr)),
                ..
            } => Some((*id, addr.as_str())),
            _ => None,
        }
    }
}

fn leader_suffix(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!(" (leader is node {id} at {addr})"),
        None => String::new(),
    }
}

/// The canonical upper-case gRPC name of a code (`NOT_FOUND`), as the gRPC
/// specification and grpcurl spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What the retry loop should do after one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptFailure {
    /// The node is not the leader and named it: try there at once.
    Redirect {
        leader_id: u64,
        leader_addr: String,
        message: String,
    },
    /// Worth another attempt on another node after a backoff.
    Retryable(Error),
    /// Retrying cannot help: return this to the caller.
    Fatal(Error),
}

/// Classifies the status of one failed attempt. This is the only place that
/// maps gRPC statuses to [`Error`]s.
pub(crate) fn classify_status(status: &Status) -> AttemptFailure {
    // A status that carries a source error was made by tonic on this side
    // (connect refused, connection reset, HTTP/2 error): the request may not
    // have reached a server at all. Statuses decoded from a server's answer
    // never carry a source. Writes carry a request id, so retrying is safe
    // either way.
    let generated_locally = std::error::Error::source(status).is_some()
        || status.message().starts_with("Service was not ready");
    if generated_locally {
        return AttemptFailure::Retryable(Error::Transport(status_text(status)));
    }
    let message = status.message().to_string();
    match status.code() {
        Code::Unavailable => match parse_leader_hint(status.metadata()) {
            Some((leader_id, leader_addr)) => AttemptFailure::Redirect {
                leader_id,
                leader_addr,
                message,
            },
            None => AttemptFailure::Retryable(Error::Unavailable {
                message,
                leader: None,
            }),
        },
        Code::DeadlineExceeded => AttemptFailure::Retryable(Error::DeadlineExceeded {
            attempts: 1,
            last_error: format!("DEADLINE_EXCEEDED: {message}"),
        }),
        Code::InvalidArgument => AttemptFailure::Fatal(Error::InvalidArgument(message)),
        Code::FailedPrecondition => AttemptFailure::Fatal(Error::FailedPrecondition(message)),
        code => AttemptFailure::Fatal(Error::Server { code, message }),
    }
}

/// Reads the leader a node names on a "not leader" answer. Both keys must be
/// present and valid: an id of 0 means "no leader" in capkv, and an address
/// the client could not dial is no use to follow.
pub(crate) fn parse_leader_hint(metadata: &MetadataMap) -> Option<(u64, String)> {
    let id = metadata
        .get(capkv_proto::metadata::LEADER_ID)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|id| *id != 0)?;
    let addr = metadata
        .get(capkv_proto::metadata::LEADER_ADDR)?
        .to_str()
        .ok()?;
    let addr = normalize_endpoint(addr).ok()?;
    Some((id, addr))
}

/// tonic's wrapper error adds nothing a user can act on.
const GENERIC_TRANSPORT_CAUSE: &str = "transport error";

/// The status message followed by every cause in its source chain that the
/// message does not already contain ("tcp connect error: Connection refused").
fn status_text(status: &Status) -> String {
    let mut text = status.message().to_string();
    if text.is_empty() {
        text = code_name(status.code()).to_string();
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != GENERIC_TRANSPORT_CAUSE && !text.contains(&cause_text) {
            let _ = write!(text, ": {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    fn unavailable_with(id: Option<&'static str>, addr: Option<&'static str>) -> Status {
        let mut metadata = MetadataMap::new();
        if let Some(id) = id {
            metadata.insert(
                capkv_proto::metadata::LEADER_ID,
                MetadataValue::from_static(id),
            );
        }
        if let Some(addr) = addr {
            metadata.insert(
                capkv_proto::metadata::LEADER_ADDR,
                MetadataValue::from_static(addr),
            );
        }
        Status::with_metadata(Code::Unavailable, "not leader", metadata)
    }

    #[test]
    fn redirect_metadata_is_followed_when_complete() {
        let status = unavailable_with(Some("2"), Some("127.0.0.12:7002"));
        assert_eq!(
            classify_status(&status),
            AttemptFailure::Redirect {
                leader_id: 2,
                leader_addr: "127.0.0.12:7002".to_string(),
                message: "not leader".to_string(),
            }
        );
    }

    #[test]
    fn incomplete_or_invalid_redirect_metadata_is_a_plain_retry() {
        let cases = [
            (Some("2"), None),
            (None, Some("127.0.0.12:7002")),
            (Some("0"), Some("127.0.0.12:7002")),
            (Some("two"), Some("127.0.0.12:7002")),
            (Some("-2"), Some("127.0.0.12:7002")),
            (Some("2"), Some("no-port")),
            (Some("2"), Some("")),
        ];
        for (id, addr) in cases {
            let status = unavailable_with(id, addr);
            assert_eq!(
                parse_leader_hint(status.metadata()),
                None,
                "{id:?} {addr:?}"
            );
            assert!(
                matches!(
                    classify_status(&status),
                    AttemptFailure::Retryable(Error::Unavailable { leader: None, .. })
                ),
                "{id:?} {addr:?}"
            );
        }
    }

    #[test]
    fn leader_hint_tolerates_whitespace_and_scheme() {
        let status = unavailable_with(Some(" 3 "), Some("http://node-3:7003"));
        assert_eq!(
            parse_leader_hint(status.metadata()),
            Some((3, "node-3:7003".to_string()))
        );
    }

    #[test]
    fn codes_map_to_typed_errors() {
        let check = |code: Code, expected: AttemptFailure| {
            assert_eq!(classify_status(&Status::new(code, "why")), expected);
        };
        check(
            Code::InvalidArgument,
            AttemptFailure::Fatal(Error::InvalidArgument("why".into())),
        );
        check(
            Code::FailedPrecondition,
            AttemptFailure::Fatal(Error::FailedPrecondition("why".into())),
        );
        check(
            Code::NotFound,
            AttemptFailure::Fatal(Error::Server {
                code: Code::NotFound,
                message: "why".into(),
            }),
        );
        check(
            Code::Internal,
            AttemptFailure::Fatal(Error::Server {
                code: Code::Internal,
                message: "why".into(),
            }),
        );
        check(
            Code::Unavailable,
            AttemptFailure::Retryable(Error::Unavailable {
                message: "why".into(),
                leader: None,
            }),
        );
        assert!(matches!(
            classify_status(&Status::new(Code::DeadlineExceeded, "slow")),
            AttemptFailure::Retryable(Error::DeadlineExceeded { .. })
        ));
    }

    #[test]
    fn error_display_names_the_leader_and_the_code() {
        let error = Error::Unavailable {
            message: "not leader".into(),
            leader: Some((2, "127.0.0.12:7002".into())),
        };
        assert_eq!(
            error.to_string(),
            "unavailable: not leader (leader is node 2 at 127.0.0.12:7002)"
        );
        assert_eq!(error.leader(), Some((2, "127.0.0.12:7002")));
        let error = Error::Server {
            code: Code::NotFound,
            message: "no such key".into(),
        };
        assert_eq!(error.to_string(), "NOT_FOUND: no such key");
        assert_eq!(error.code(), Code::NotFound);
    }
}
