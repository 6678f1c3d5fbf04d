//! Client configuration and the consistency levels a request can ask for.

use std::time::Duration;

use crate::proto;

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
    /// When true, every request goes to the first endpoint only and redirects
    /// are never followed: for observing one node's behaviour (for example the
    /// minority side of a partition).
    pub pin_endpoint: bool,
    /// The read level of read requests, unless overridden per client handle
    /// with [`crate::Client::with_read_level`].
    pub read_level: ReadLevel,
    /// The write level of write requests, unless overridden per client handle
    /// with [`crate::Client::with_write_level`].
    pub write_level: WriteLevel,
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
        }
    }
}

/// What a read guarantees. Only `Linearizable` exists so far; the other levels
/// of the design (session, bounded staleness, eventual) will be new variants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadLevel {
    /// Served after the leader confirmed its leadership with a quorum.
    #[default]
    Linearizable,
}

impl ReadLevel {
    /// The level as the protocol spells it.
    pub fn to_proto(self) -> proto::ReadConsistency {
        match self {
            ReadLevel::Linearizable => proto::ReadConsistency::Linearizable,
        }
    }
}

/// How a write is acknowledged. Only `Strong` exists so far; the other levels
/// of the design (local, strong-or-local) will be new variants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WriteLevel {
    /// Acknowledged once committed by a Raft majority and applied on the leader.
    #[default]
    Strong,
}

impl WriteLevel {
    /// The level as the protocol spells it.
    pub fn to_proto(self) -> proto::WriteConsistency {
        match self {
            WriteLevel::Strong => proto::WriteConsistency::Strong,
        }
    }
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
}
