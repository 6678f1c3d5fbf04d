//! Client configuration and the consistency levels a request can ask for.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{proto, Error};

/// The whole budget of one call, retries included. Five seconds covers an
/// election (about one to two seconds with openraft's default timeouts) plus a
/// few redirects and backoff sleeps, while still failing a human's CLI command
/// quickly enough to notice.
pub const DEFAULT_TIMEOUT_MS: u64 = 5_000;

/// How long to wait for a TCP + HTTP/2 connection to one node. A node on the
/// same network answers in well under a millisecond; one second leaves room
/// for a loaded machine while letting the client move on to another node long
/// before the call's deadline.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Attempts per call, redirects included. A three or five node cluster needs
/// at most a couple of redirects and one or two backoff rounds during an
/// election; ten bounds the work one call can cause on a sick cluster.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// The first backoff ceiling: short enough that a retry after a leader change
/// is not felt, long enough not to spin on a node that is restarting.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 50;

/// The largest backoff ceiling: about one election timeout, so a retry never
/// sleeps much past the moment a new leader can exist.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 1_000;

/// How a client talks to the cluster. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The whole deadline of one call, including every retry. Each attempt is
    /// sent with the remaining time as its gRPC deadline, so the server sees it.
    pub timeout: Duration,
    /// The limit for establishing a connection to one node.
    pub connect_timeout: Duration,
    /// The most attempts one call makes (at least 1). A redirect to the leader
    /// counts as an attempt.
    pub max_attempts: u32,
    /// The backoff ceiling before the first retry; it doubles per retry.
    pub backoff_initial: Duration,
    /// The backoff ceiling never grows past this.
    pub backoff_max: Duration,
    /// When true, every request goes to the first endpoint only: redirects are
    /// never followed and failures never rotate to another node. For
    /// observing or writing to one chosen node (for example `LOCAL` writes on
    /// the minority side of a partition). `cluster_status` then asks only
    /// that node.
    pub pin_endpoint: bool,
    /// The read level of read requests, unless overridden per client handle
    /// with [`crate::Client::with_read_level`].
    pub read_level: ReadLevel,
    /// The write level of write requests, unless overridden per client handle
    /// with [`crate::Client::with_write_level`].
    pub write_level: WriteLevel,
    /// When true, concurrent [`crate::Client::put`] calls of this client
    /// (all its handles) share `PutMany` calls, at most two in flight per
    /// route: fewer calls for the client and the server to handle. Each put
    /// keeps its own level, request id and answer. An idle client's put is
    /// sent at once; a put that finds both calls in flight waits for one to
    /// return. That pays off with hundreds of concurrent writers (+16% STRONG
    /// puts at 256 concurrent puts, half the client's CPU); with tens it
    /// was anywhere from -13% to +22% on the benchmark machine. Off by
    /// default.
    pub coalesce_puts: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_initial: Duration::from_millis(DEFAULT_BACKOFF_INITIAL_MS),
            backoff_max: Duration::from_millis(DEFAULT_BACKOFF_MAX_MS),
            pin_endpoint: false,
            read_level: ReadLevel::default(),
            write_level: WriteLevel::default(),
            coalesce_puts: false,
        }
    }
}

/// What a read guarantees, per request. Levels other than `Linearizable` are
/// served by whichever node receives them (the server never redirects them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadLevel {
    /// Served after the leader confirmed its leadership with a quorum (read
    /// index) and the serving node applied up to it; a follower fetches the
    /// read index from the leader.
    #[default]
    Linearizable,
    /// Served once the node has applied everything the request's session
    /// token covers (read-your-writes across nodes). Without a token (a plain
    /// [`crate::Client`]) the node serves at once.
    Session,
    /// Served when the node can prove it is at most `max_staleness` behind the
    /// leader. `max_staleness` must be at least 1 ms.
    Bounded { max_staleness: Duration },
    /// Always served, from the node's applied state merged with its own
    /// provisional (not yet reconciled) writes.
    Eventual,
}

impl ReadLevel {
    /// The level as the protocol spells it.
    pub fn to_proto(self) -> proto::ReadConsistency {
        match self {
            ReadLevel::Linearizable => proto::ReadConsistency::Linearizable,
            ReadLevel::Session => proto::ReadConsistency::Session,
            ReadLevel::Bounded { .. } => proto::ReadConsistency::Bounded,
            ReadLevel::Eventual => proto::ReadConsistency::Eventual,
        }
    }

    /// Whether the read starts at the leader (and follows redirects); every
    /// other level is served by the node that receives it.
    pub fn is_leader_routed(self) -> bool {
        matches!(self, ReadLevel::Linearizable)
    }

    /// Checks the level's parameters: a bound below 1 ms is
    /// [`Error::InvalidConfig`] (the protocol cannot express it).
    pub fn validate(self) -> Result<(), Error> {
        match self {
            ReadLevel::Bounded { max_staleness } if max_staleness < MIN_LEVEL_DURATION => {
                Err(Error::InvalidConfig(format!(
                    "BOUNDED read needs max_staleness of at least 1 ms, got {max_staleness:?}"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// `linearizable`, `session`, `bounded:<ms>`, `eventual`: the form
/// [`ReadLevel::from_str`](std::str::FromStr) accepts.
impl fmt::Display for ReadLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadLevel::Linearizable => f.write_str("linearizable"),
            ReadLevel::Session => f.write_str("session"),
            ReadLevel::Bounded { max_staleness } => {
                write!(f, "bounded:{}", saturating_ms(*max_staleness))
            }
            ReadLevel::Eventual => f.write_str("eventual"),
        }
    }
}

/// The read levels as a user types them, for error messages.
pub const READ_LEVEL_FORMS: &str = "linearizable, session, bounded:<ms> (ms >= 1) or eventual";

/// The write levels as a user types them, for error messages.
pub const WRITE_LEVEL_FORMS: &str =
    "strong, local, strong-or-local or strong-or-local:<ms> (budget ms >= 1)";

/// Why a level could not be parsed; the message lists the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} level {input:?}: {reason}; expected {forms}")]
pub struct ParseLevelError {
    what: &'static str,
    input: String,
    reason: String,
    forms: &'static str,
}

impl FromStr for ReadLevel {
    type Err = ParseLevelError;

    /// Case-insensitive; `_` may stand for `-`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseLevelError {
            what: "read",
            input: input.to_string(),
            reason: reason.to_string(),
            forms: READ_LEVEL_FORMS,
        };
        let (name, parameter) = split_level(input);
        match (name.as_str(), parameter) {
            ("linearizable", None) => Ok(ReadLevel::Linearizable),
            ("session", None) => Ok(ReadLevel::Session),
            ("eventual", None) => Ok(ReadLevel::Eventual),
            ("bounded", Some(ms)) => Ok(ReadLevel::Bounded {
                max_staleness: parse_level_ms(ms).map_err(|reason| fail(&reason))?,
            }),
            ("bounded", None) => Err(fail("bounded needs a staleness bound in ms")),
            ("linearizable" | "session" | "eventual", Some(_)) => {
                Err(fail("this level takes no parameter"))
            }
            _ => Err(fail("unknown level")),
        }
    }
}

/// How a write is acknowledged, per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WriteLevel {
    /// Acknowledged once committed by a Raft majority and applied on the
    /// leader. Leader-routed.
    #[default]
    Strong,
    /// Acknowledged once durably stored on the node that received it, as a
    /// provisional write that the node reconciles into the Raft log later
    /// (last writer wins). Served by whichever node receives it.
    Local,
    /// `Strong` if a quorum answers within `budget`, else stored as `Local`;
    /// the response's `meta.write_consistency` says which happened. `None`
    /// leaves the budget to the server (half the request's deadline). A
    /// budget must be at least 1 ms. Served by whichever node receives it.
    StrongOrLocal { budget: Option<Duration> },
}

impl WriteLevel {
    /// The level as the protocol spells it.
    pub fn to_proto(self) -> proto::WriteConsistency {
        match self {
            WriteLevel::Strong => proto::WriteConsistency::Strong,
            WriteLevel::Local => proto::WriteConsistency::Local,
            WriteLevel::StrongOrLocal { .. } => proto::WriteConsistency::StrongOrLocal,
        }
    }

    /// Whether the write starts at the leader (and follows redirects); the
    /// other levels are accepted by the node that receives them.
    pub fn is_leader_routed(self) -> bool {
        matches!(self, WriteLevel::Strong)
    }

    /// Checks the level's parameters: a budget below 1 ms is
    /// [`Error::InvalidConfig`] (0 would mean "the server's default").
    pub fn validate(self) -> Result<(), Error> {
        match self {
            WriteLevel::StrongOrLocal {
                budget: Some(budget),
            } if budget < MIN_LEVEL_DURATION => Err(Error::InvalidConfig(format!(
                "STRONG_OR_LOCAL budget must be at least 1 ms, got {budget:?}"
            ))),
            _ => Ok(()),
        }
    }
}

/// `strong`, `local`, `strong-or-local`, `strong-or-local:<ms>`: the form
/// [`WriteLevel::from_str`](std::str::FromStr) accepts.
impl fmt::Display for WriteLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteLevel::Strong => f.write_str("strong"),
            WriteLevel::Local => f.write_str("local"),
            WriteLevel::StrongOrLocal { budget: None } => f.write_str("strong-or-local"),
            WriteLevel::StrongOrLocal {
                budget: Some(budget),
            } => write!(f, "strong-or-local:{}", saturating_ms(*budget)),
        }
    }
}

impl FromStr for WriteLevel {
    type Err = ParseLevelError;

    /// Case-insensitive; `_` may stand for `-`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason: &str| ParseLevelError {
            what: "write",
            input: input.to_string(),
            reason: reason.to_string(),
            forms: WRITE_LEVEL_FORMS,
        };
        let (name, parameter) = split_level(input);
        match (name.as_str(), parameter) {
            ("strong", None) => Ok(WriteLevel::Strong),
            ("local", None) => Ok(WriteLevel::Local),
            ("strong-or-local", None) => Ok(WriteLevel::StrongOrLocal { budget: None }),
            ("strong-or-local", Some(ms)) => Ok(WriteLevel::StrongOrLocal {
                budget: Some(parse_level_ms(ms).map_err(|reason| fail(&reason))?),
            }),
            ("strong" | "local", Some(_)) => Err(fail("this level takes no parameter")),
            _ => Err(fail("unknown level")),
        }
    }
}

/// The smallest staleness bound or budget the protocol can express: it counts
/// whole milliseconds, and 0 means "unset".
const MIN_LEVEL_DURATION: Duration = Duration::from_millis(1);

/// Whole milliseconds, saturating: a bound of more than 584 million years is
/// the same as no bound.
fn saturating_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `name` or `name:parameter`, the name lower-cased with `_` as `-`.
fn split_level(input: &str) -> (String, Option<&str>) {
    let input = input.trim();
    let (name, parameter) = match input.split_once(':') {
        Some((name, parameter)) => (name, Some(parameter.trim())),
        None => (input, None),
    };
    (
        name.trim().to_ascii_lowercase().replace('_', "-"),
        parameter,
    )
}

/// A level's millisecond parameter: an integer of at least 1.
fn parse_level_ms(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(ms) if ms >= 1 => Ok(Duration::from_millis(ms)),
        Ok(_) => Err("the milliseconds must be at least 1".to_string()),
        Err(_) => Err(format!("{text:?} is not a whole number of milliseconds")),
    }
}

/// The protocol's options for a read at `level`, carrying `session` (a
/// session's token, or `None` for a plain client). Checks the level first.
pub(crate) fn read_options(
    level: ReadLevel,
    session: Option<proto::SessionToken>,
) -> Result<proto::ReadOptions, Error> {
    level.validate()?;
    let max_staleness_ms = match level {
        ReadLevel::Bounded { max_staleness } => saturating_ms(max_staleness),
        _ => 0,
    };
    Ok(proto::ReadOptions {
        consistency: level.to_proto() as i32,
        session,
        max_staleness_ms,
    })
}

/// The protocol's options for one logical write at `level`: its request id
/// (reused by every retry) and `session`. Checks the level first.
pub(crate) fn write_options(
    level: WriteLevel,
    request_id: Vec<u8>,
    session: Option<proto::SessionToken>,
) -> Result<proto::WriteOptions, Error> {
    level.validate()?;
    let strong_budget_ms = match level {
        WriteLevel::StrongOrLocal {
            budget: Some(budget),
        } => saturating_ms(budget),
        _ => 0,
    };
    Ok(proto::WriteOptions {
        consistency: level.to_proto() as i32,
        request_id,
        session,
        strong_budget_ms,
    })
}

/// The short name of a write level reported by a server (`STRONG`), or
/// `UNKNOWN(n)` for a value this client does not know.
pub fn write_consistency_name(value: i32) -> String {
    match proto::WriteConsistency::try_from(value) {
        Ok(level) => strip_prefix(level.as_str_name(), "WRITE_CONSISTENCY_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

/// The short name of a read level reported by a server (`LINEARIZABLE`), or
/// `UNKNOWN(n)` for a value this client does not know.
pub fn read_consistency_name(value: i32) -> String {
    match proto::ReadConsistency::try_from(value) {
        Ok(level) => strip_prefix(level.as_str_name(), "READ_CONSISTENCY_"),
        Err(_) => format!("UNKNOWN({value})"),
    }
}

fn strip_prefix(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_names_are_short_and_total() {
        assert_eq!(write_consistency_name(1), "STRONG");
        assert_eq!(write_consistency_name(0), "UNSPECIFIED");
        assert_eq!(write_consistency_name(99), "UNKNOWN(99)");
        assert_eq!(read_consistency_name(1), "LINEARIZABLE");
        assert_eq!(write_consistency_name(2), "LOCAL");
        assert_eq!(write_consistency_name(3), "STRONG_OR_LOCAL");
        assert_eq!(read_consistency_name(2), "SESSION");
        assert_eq!(read_consistency_name(3), "BOUNDED");
        assert_eq!(read_consistency_name(4), "EVENTUAL");
        assert_eq!(read_consistency_name(-1), "UNKNOWN(-1)");
    }

    #[test]
    fn default_levels_are_the_strongest() {
        let config = ClientConfig::default();
        assert_eq!(
            config.read_level.to_proto(),
            proto::ReadConsistency::Linearizable
        );
        assert_eq!(
            config.write_level.to_proto(),
            proto::WriteConsistency::Strong
        );
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.max_attempts, 10);
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn read_levels_map_to_proto_options() {
        let token = proto::SessionToken {
            commit_index: 9,
            provisional_seq: [(3, 7)].into(),
        };
        // (level, consistency, max_staleness_ms)
        let cases = [
            (
                ReadLevel::Linearizable,
                proto::ReadConsistency::Linearizable,
                0,
            ),
            (ReadLevel::Session, proto::ReadConsistency::Session, 0),
            (
                ReadLevel::Bounded {
                    max_staleness: 250 * MS,
                },
                proto::ReadConsistency::Bounded,
                250,
            ),
            (
                ReadLevel::Bounded {
                    max_staleness: Duration::from_micros(1_999),
                },
                proto::ReadConsistency::Bounded,
                1,
            ),
            (
                ReadLevel::Bounded {
                    max_staleness: Duration::MAX,
                },
                proto::ReadConsistency::Bounded,
                u64::MAX,
            ),
            (ReadLevel::Eventual, proto::ReadConsistency::Eventual, 0),
        ];
        for (level, consistency, max_staleness_ms) in cases {
            let options = read_options(level, Some(token.clone())).expect("valid level");
            assert_eq!(
                options,
                proto::ReadOptions {
                    consistency: consistency as i32,
                    session: Some(token.clone()),
                    max_staleness_ms,
                },
                "{level:?}"
            );
            assert_eq!(
                read_options(level, None).expect("valid").session,
                None,
                "{level:?}"
            );
        }
        for bad in [Duration::ZERO, Duration::from_micros(999)] {
            assert!(matches!(
                read_options(ReadLevel::Bounded { max_staleness: bad }, None),
                Err(Error::InvalidConfig(_))
            ));
        }
    }

    #[test]
    fn write_levels_map_to_proto_options() {
        // (level, consistency, strong_budget_ms)
        let cases = [
            (WriteLevel::Strong, proto::WriteConsistency::Strong, 0),
            (WriteLevel::Local, proto::WriteConsistency::Local, 0),
            (
                WriteLevel::StrongOrLocal { budget: None },
                proto::WriteConsistency::StrongOrLocal,
                0,
            ),
            (
                WriteLevel::StrongOrLocal {
                    budget: Some(300 * MS),
                },
                proto::WriteConsistency::StrongOrLocal,
                300,
            ),
        ];
        for (level, consistency, strong_budget_ms) in cases {
            let options = write_options(level, b"id".to_vec(), None).expect("valid level");
            assert_eq!(
                options,
                proto::WriteOptions {
                    consistency: consistency as i32,
                    request_id: b"id".to_vec(),
                    session: None,
                    strong_budget_ms,
                },
                "{level:?}"
            );
        }
        assert!(matches!(
            write_options(
                WriteLevel::StrongOrLocal {
                    budget: Some(Duration::ZERO)
                },
                b"id".to_vec(),
                None
            ),
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn only_strong_writes_and_linearizable_reads_are_leader_routed() {
        assert!(WriteLevel::Strong.is_leader_routed());
        assert!(!WriteLevel::Local.is_leader_routed());
        assert!(!WriteLevel::StrongOrLocal { budget: None }.is_leader_routed());
        assert!(ReadLevel::Linearizable.is_leader_routed());
        for level in [
            ReadLevel::Session,
            ReadLevel::Bounded { max_staleness: MS },
            ReadLevel::Eventual,
        ] {
            assert!(!level.is_leader_routed(), "{level:?}");
        }
    }

    #[test]
    fn levels_parse_from_their_text_and_print_back() {
        let reads = [
            ("linearizable", ReadLevel::Linearizable),
            ("LINEARIZABLE", ReadLevel::Linearizable),
            ("session", ReadLevel::Session),
            (" eventual ", ReadLevel::Eventual),
            (
                "bounded:100",
                ReadLevel::Bounded {
                    max_staleness: 100 * MS,
                },
            ),
            ("Bounded: 1", ReadLevel::Bounded { max_staleness: MS }),
        ];
        for (text, level) in reads {
            assert_eq!(text.parse::<ReadLevel>(), Ok(level), "{text:?}");
            assert_eq!(level.to_string().parse::<ReadLevel>(), Ok(level));
        }
        let writes = [
            ("strong", WriteLevel::Strong),
            ("Local", WriteLevel::Local),
            (
                "strong-or-local",
                WriteLevel::StrongOrLocal { budget: None },
            ),
            (
                "STRONG_OR_LOCAL",
                WriteLevel::StrongOrLocal { budget: None },
            ),
            (
                "strong-or-local:250",
                WriteLevel::StrongOrLocal {
                    budget: Some(250 * MS),
                },
            ),
        ];
        for (text, level) in writes {
            assert_eq!(text.parse::<WriteLevel>(), Ok(level), "{text:?}");
            assert_eq!(level.to_string().parse::<WriteLevel>(), Ok(level));
        }
    }

    #[test]
    fn bad_levels_are_rejected_with_the_accepted_forms() {
        for text in [
            "",
            "strong",
            "local",
            "bounded",
            "bounded:",
            "bounded:0",
            "bounded:-5",
            "bounded:1.5",
            "bounded:100ms",
            "session:3",
            "eventually",
        ] {
            let error = text.parse::<ReadLevel>().expect_err(text);
            assert!(
                error.to_string().contains(READ_LEVEL_FORMS),
                "{text:?}: {error}"
            );
        }
        for text in [
            "",
            "linearizable",
            "eventual",
            "strong-or-local:",
            "strong-or-local:0",
            "strong-or-local:x",
            "strong:5",
            "all",
        ] {
            let error = text.parse::<WriteLevel>().expect_err(text);
            assert!(
                error.to_string().contains(WRITE_LEVEL_FORMS),
                "{text:?}: {error}"
            );
        }
    }
}
