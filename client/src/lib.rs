//! The capkv client SDK.
//!
//! ```no_run
//! # async fn demo() -> Result<(), capkv_client::Error> {
//! use capkv_client::{Client, RangeQuery};
//!
//! let client = Client::connect(["127.0.0.11:7001", "127.0.0.12:7002", "127.0.0.13:7003"])?;
//! client.put_reading("boiler-7", 1_795_255_200_123, 81.5, Default::default()).await?;
//! let latest = client.latest_reading("boiler-7").await?;
//! let page = client.range_readings(RangeQuery::new("boiler-7")).await?;
//! client.put("config/mode", "eco").await?;
//! let value = client.get("config/mode").await?;
//! # let _ = (latest, page, value);
//! # Ok(())
//! # }
//! ```
//!
//! What a call does:
//! - Leader-routed calls (`STRONG` writes, compare-and-set, `LINEARIZABLE`
//!   reads, membership changes) go to the last known leader. A node that is
//!   not the leader answers `UNAVAILABLE` with the leader in the
//!   `capkv-leader-id` / `capkv-leader-addr` metadata; the client retries
//!   there at once and remembers it. (A follower may also serve a
//!   `LINEARIZABLE` read itself, after fetching the read index.)
//! - Calls every node serves itself (`LOCAL` and `STRONG_OR_LOCAL` writes,
//!   `SESSION`, `BOUNDED` and `EVENTUAL` reads, the conflict log) go to the
//!   preferred endpoint: the first one, until it fails. They never follow a
//!   redirect.
//! - With [`ClientConfig::pin_endpoint`], every call goes to the first
//!   endpoint only: no redirect, no other node.
//! - Transient failures (`UNAVAILABLE` without a leader, transport errors, an
//!   attempt's `DEADLINE_EXCEEDED`) move to the next endpoint after a
//!   jittered exponential backoff, within [`ClientConfig::max_attempts`] and
//!   one deadline for the whole call ([`ClientConfig::timeout`]), which every
//!   attempt also sends to the server.
//! - Every write carries one random request id for all its attempts; the
//!   server applies an id once, so retrying a write never applies it twice.
//! - Other errors (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, ...) return at
//!   once, typed as [`Error`].
//! - A [`Session`] ([`Client::session`]) attaches its token to every request
//!   and merges the token of every response, so its `SESSION` reads see its
//!   own writes on any node.
//!
//! Responses are the protocol's types, re-exported as [`proto`]; their `meta`
//! says which node served the call, at what level, at which applied index,
//! whether provisional data is included, and which provisional write id a
//! `LOCAL` write got.

mod client;
mod coalesce;
mod endpoint;
mod error;
mod options;
mod session;
mod status;
pub mod time;

/// The metadata keys of a "not leader" answer.
pub use capkv_proto::metadata;
/// The generated protocol types and gRPC stubs (`capkv_proto::v1`).
pub use capkv_proto::v1 as proto;

pub use client::{Client, Expected, RangeQuery, MAX_CALL_TIMEOUT_MS, NODE_STATUS_TIMEOUT_MS};
pub use coalesce::{
    MAX_COALESCED_CALLS_IN_FLIGHT, MAX_COALESCED_CALL_BYTES, MAX_PUTS_PER_COALESCED_CALL,
    MAX_QUEUED_PUTS,
};
pub use error::{code_name, Error};
pub use options::{
    read_consistency_name, write_consistency_name, ClientConfig, ParseLevelError, ReadLevel,
    WriteLevel, DEFAULT_BACKOFF_INITIAL_MS, DEFAULT_BACKOFF_MAX_MS, DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_MS, READ_LEVEL_FORMS, WRITE_LEVEL_FORMS,
};
pub use session::{merge_token, Session};
pub use status::{ClusterStatus, NodeReport};
