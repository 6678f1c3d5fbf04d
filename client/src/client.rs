//! The client: channels, leader discovery, routing by consistency level and
//! the one retry loop every call goes through.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::coalesce::Coalescer;
use crate::endpoint::{normalize_endpoint, normalize_endpoints};
use crate::error::{classify_status, AttemptFailure};
use crate::options::{read_options, write_options, ClientConfig, ReadLevel, WriteLevel};
use crate::proto;
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::kv_service_client::KvServiceClient;
use crate::proto::sensor_service_client::SensorServiceClient;
use crate::session::observe_meta;
use crate::Error;

/// Deadline of a [`Client::node_status`] call. Status reads local state on the
/// node, so a healthy node answers in milliseconds; a short limit keeps
/// `cluster status` quick when some nodes are down or cut off.
pub const NODE_STATUS_TIMEOUT_MS: u64 = 1_000;

/// HTTP/2 ping interval while a request is in flight. Without pings, a request
/// sent to a node that then vanishes behind a partition (packets dropped, no
/// reset) would hang until the call's deadline; with them, the connection is
/// declared dead after about interval + timeout and the client moves on.
const HTTP2_KEEPALIVE_INTERVAL_MS: u64 = 1_000;
/// How long a ping may go unanswered before the connection counts as dead.
const HTTP2_KEEPALIVE_TIMEOUT_MS: u64 = 1_000;

/// The largest response the client decodes. tonic's default of 4 MiB is less
/// than a full page of 10 000 readings with the maximum 16 tags each; 64 MiB
/// bounds memory per response while fitting every response the protocol allows
/// in practice.
const MAX_DECODING_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Leader addresses learned from redirects that are not configured endpoints.
/// A cluster has three or five nodes; the bound only stops a confused server
/// from growing the list without end.
const MAX_LEARNED_ADDRESSES: usize = 16;

/// Channels kept open at once. Configured endpoints, learned leaders and the
/// members `cluster_status` discovers fit easily; past the bound a channel is
/// used for its call and dropped instead of cached.
const MAX_CACHED_CHANNELS: usize = 64;

/// `RangeReadingsRequest.limit == 0` means this many readings per page.
const SERVER_DEFAULT_PAGE_LIMIT: u32 = 1_000;
/// The largest page the server accepts.
const MAX_PAGE_LIMIT: u32 = 10_000;
/// Empty pages that still carry a continuation token, in a row, before
/// `range_readings_all` gives up on a server that makes no progress.
const MAX_CONSECUTIVE_EMPTY_PAGES: u32 = 100;

/// A handle to a capkv cluster. Cheap to clone: clones share channels and the
/// remembered leader.
///
/// Every call has one deadline ([`ClientConfig::timeout`]) covering all its
/// attempts. Leader-routed calls (`STRONG` writes, compare-and-set,
/// `LINEARIZABLE` reads, membership changes) start at the last known leader,
/// follow "not leader" redirects at once, and move round robin over the
/// endpoints with jittered exponential backoff on transient failures. Calls
/// any node serves (`LOCAL` and `STRONG_OR_LOCAL` writes, `SESSION`,
/// `BOUNDED` and `EVENTUAL` reads, the conflict log) go to the preferred
/// endpoint (the first, until it fails) and move round robin the same way,
/// but never follow a redirect. With [`ClientConfig::pin_endpoint`] every call
/// goes to the first endpoint only. Writes carry one request id for all their
/// attempts, so the server applies a retried write once.
///
/// Reads and writes through a plain client carry no session token; see
/// [`Client::session`] for read-your-writes across nodes.
///
/// Channels are created on first use, so calls need a Tokio runtime.
#[derive(Clone, Debug)]
pub struct Client {
    shared: Arc<Shared>,
    read_level: ReadLevel,
    write_level: WriteLevel,
    /// The token of the [`crate::Session`] this handle belongs to: attached
    /// to every request and advanced by every response. `None` for a plain
    /// client.
    session: Option<Arc<Mutex<proto::SessionToken>>>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Normalized `host:port`, at least one, no duplicates.
    endpoints: Vec<String>,
    config: ClientConfig,
    channels: Mutex<HashMap<String, Channel>>,
    routing: Mutex<RoutingState>,
    /// The queues of [`ClientConfig::coalesce_puts`].
    pub(crate) coalescer: Coalescer,
}

#[derive(Debug)]
struct RoutingState {
    /// Where leader-routed calls start.
    leader: String,
    /// Where calls that any node serves start: the first endpoint until it
    /// fails, then the next one in the round robin.
    preferred: String,
    /// Leader addresses learned from redirects that are not configured
    /// endpoints; part of the round robin.
    learned: Vec<String>,
}

/// Where the attempts of one call go.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    /// Start at the remembered leader, follow redirects, rotate on failure.
    Leader,
    /// Start at the preferred endpoint, rotate on failure, never follow a
    /// redirect: for levels every node serves itself.
    Any,
    /// Only this node: retries stay on it and redirects are returned as errors.
    Node(String),
}

/// The route of a call: the pinned node if there is one, else the leader for
/// calls that need it, else any node.
pub(crate) fn choose_route(pinned: Option<&str>, leader_routed: bool) -> Route {
    match pinned {
        Some(addr) => Route::Node(addr.to_string()),
        None if leader_routed => Route::Leader,
        None => Route::Any,
    }
}

#[derive(Clone, Debug)]
pub(crate) struct CallPlan {
    pub(crate) route: Route,
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
}

/// One page (or, for [`Client::range_readings_all`], a run of pages) of a
/// sensor's readings in a time range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub sensor_id: String,
    /// Inclusive lower bound, epoch ms; `None` = from the first reading.
    pub from_ms: Option<i64>,
    /// Inclusive upper bound, epoch ms; `None` = up to the last reading.
    pub to_ms: Option<i64>,
    /// Readings per page, 1 to 10 000; 0 = the server default (1 000).
    pub limit: u32,
    /// Newest first.
    pub descending: bool,
    /// The previous page's `next_page_token`, empty for the first page.
    pub page_token: Vec<u8>,
}

impl RangeQuery {
    /// All readings of a sensor, oldest first, default page size.
    pub fn new(sensor_id: impl Into<String>) -> Self {
        RangeQuery {
            sensor_id: sensor_id.into(),
            ..RangeQuery::default()
        }
    }
}

/// What [`Client::compare_and_set`] compares the key's current state with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// The key's current version, exactly (from a previous read or write).
    Version(proto::Version),
    /// The key has no live value (never written, or deleted).
    Absent,
}

impl Expected {
    fn to_proto(self) -> proto::compare_and_set_request::Expected {
        match self {
            Expected::Version(version) => {
                proto::compare_and_set_request::Expected::ExpectedVersion(version)
            }
            Expected::Absent => proto::compare_and_set_request::Expected::ExpectedAbsent(true),
        }
    }
}

/// Responses that carry [`proto::ResponseMeta`], so a session can learn from
/// them.
trait HasMeta {
    fn meta(&self) -> Option<&proto::ResponseMeta>;
}

macro_rules! has_meta {
    ($($response:ty),* $(,)?) => {
        $(impl HasMeta for $response {
            fn meta(&self) -> Option<&proto::ResponseMeta> {
                self.meta.as_ref()
            }
        })*
    };
}

has_meta!(
    proto::PutReadingsResponse,
    proto::LatestReadingResponse,
    proto::RangeReadingsResponse,
    proto::PutResponse,
    proto::GetResponse,
    proto::DeleteResponse,
    proto::CompareAndSetResponse,
);

impl Client {
    /// A client with the default [`ClientConfig`]. Endpoints are `host:port`.
    /// No connection is made yet; an empty list or a malformed address is
    /// [`Error::InvalidEndpoint`].
    pub fn connect<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::with_config(endpoints, ClientConfig::default())
    }

    /// A client with an explicit configuration.
    pub fn with_config<I, S>(endpoints: I, config: ClientConfig) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        validate_config(&config)?;
        let endpoints = normalize_endpoints(endpoints)?;
        let first = endpoints[0].clone();
        let (read_level, write_level) = (config.read_level, config.write_level);
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints,
                config,
                channels: Mutex::new(HashMap::new()),
                routing: Mutex::new(RoutingState {
                    leader: first.clone(),
                    preferred: first,
                    learned: Vec::new(),
                }),
                coalescer: Coalescer::default(),
            }),
            read_level,
            write_level,
            session: None,
        })
    }

    /// A handle that sends reads at `level`; shares everything else. A
    /// [`ReadLevel::Bounded`] below 1 ms makes its reads fail with
    /// [`Error::InvalidConfig`] (see [`ReadLevel::validate`]).
    pub fn with_read_level(&self, level: ReadLevel) -> Client {
        Client {
            read_level: level,
            ..self.clone()
        }
    }

    /// A handle that sends writes at `level`; shares everything else. A
    /// [`WriteLevel::StrongOrLocal`] budget below 1 ms makes its writes fail
    /// with [`Error::InvalidConfig`] (see [`WriteLevel::validate`]).
    pub fn with_write_level(&self, level: WriteLevel) -> Client {
        Client {
            write_level: level,
            ..self.clone()
        }
    }

    /// The level this handle's reads ask for.
    pub fn read_level(&self) -> ReadLevel {
        self.read_level
    }

    /// The level this handle's writes ask for.
    pub fn write_level(&self) -> WriteLevel {
        self.write_level
    }

    /// A handle whose requests carry `token` and whose responses advance it.
    pub(crate) fn with_session_token(&self, token: Arc<Mutex<proto::SessionToken>>) -> Client {
        Client {
            session: Some(token),
            ..self.clone()
        }
    }

    pub(crate) fn session_token(&self) -> Option<&Arc<Mutex<proto::SessionToken>>> {
        self.session.as_ref()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A plain handle (configured levels, no session) on `shared`.
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Client {
        let (read_level, write_level) = (shared.config.read_level, shared.config.write_level);
        Client {
            shared,
            read_level,
            write_level,
            session: None,
        }
    }

    /// The configured endpoints, normalized to `host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.shared.endpoints
    }

    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// The address leader-routed calls will try first.
    pub fn leader_address(&self) -> String {
        self.routing().leader.clone()
    }

    /// The address calls any node serves will try first.
    pub fn preferred_address(&self) -> String {
        self.routing().preferred.clone()
    }

    // ----- sensor readings -------------------------------------------------

    /// Stores a batch of readings as one Raft entry (all or nothing).
    pub async fn put_readings(
        &self,
        readings: Vec<proto::Reading>,
    ) -> Result<proto::PutReadingsResponse, Error> {
        let request = proto::PutReadingsRequest {
            readings,
            options: Some(self.write_options()?),
        };
        self.data_call(self.write_plan(), request, |channel, request| async move {
            sensor_client(channel).put_readings(request).await
        })
        .await
    }

    /// Stores one reading.
    pub async fn put_reading(
        &self,
        sensor_id: impl Into<String>,
        timestamp_ms: i64,
        value: f64,
        tags: HashMap<String, String>,
    ) -> Result<proto::PutReadingsResponse, Error> {
        let reading = proto::Reading {
            sensor_id: sensor_id.into(),
            timestamp_ms,
            value,
            tags,
            version: None,
        };
        self.put_readings(vec![reading]).await
    }

    /// The newest reading of a sensor (`reading` is `None` when it has none).
    pub async fn latest_reading(
        &self,
        sensor_id: impl Into<String>,
    ) -> Result<proto::LatestReadingResponse, Error> {
        let request = proto::LatestReadingRequest {
            sensor_id: sensor_id.into(),
            options: Some(self.read_options()?),
        };
        self.data_call(self.read_plan(), request, |channel, request| async move {
            sensor_client(channel).latest_reading(request).await
        })
        .await
    }

    /// One page of readings. Pass the response's `next_page_token` as the next
    /// query's `page_token`; an empty token means this was the last page.
    pub async fn range_readings(
        &self,
        query: RangeQuery,
    ) -> Result<proto::RangeReadingsResponse, Error> {
        let request = proto::RangeReadingsRequest {
            sensor_id: query.sensor_id,
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            limit: query.limit,
            page_token: query.page_token,
            descending: query.descending,
            options: Some(self.read_options()?),
        };
        self.data_call(self.read_plan(), request, |channel, request| async move {
            sensor_client(channel).range_readings(request).await
        })
        .await
    }

    /// Follows pages from `query` until the range is exhausted or `max_total`
    /// readings were collected. The result holds every reading, the last
    /// page's `meta`, and the token to continue from (empty when the range is
    /// exhausted). Each page is one call with its own deadline; pages are read
    /// at different moments, so the whole is not one snapshot.
    pub async fn range_readings_all(
        &self,
        query: RangeQuery,
        max_total: usize,
    ) -> Result<proto::RangeReadingsResponse, Error> {
        let page_size = match query.limit {
            0 => SERVER_DEFAULT_PAGE_LIMIT,
            limit => limit.min(MAX_PAGE_LIMIT),
        };
        let mut query = query;
        let mut all = proto::RangeReadingsResponse::default();
        let mut consecutive_empty_pages = 0;
        loop {
            let wanted = max_total.saturating_sub(all.readings.len());
            if wanted == 0 {
                // Stopped by max_total: hand back the token that continues.
                all.next_page_token = query.page_token;
                return Ok(all);
            }
            // Never ask for more than is still wanted, so the continuation
            // token stays exact.
            query.limit = page_size.min(u32::try_from(wanted).unwrap_or(u32::MAX));
            let sent_token = query.page_token.clone();
            let page = self.range_readings(query.clone()).await?;
            all.meta = page.meta;
            let page_len = page.readings.len();
            all.readings.extend(page.readings.into_iter().take(wanted));
            if page.next_page_token.is_empty() {
                all.next_page_token.clear();
                return Ok(all);
            }
            if page.next_page_token == sent_token {
                return Err(Error::InvalidResponse(
                    "the server returned the page token it was sent; paging makes no progress"
                        .to_string(),
                ));
            }
            consecutive_empty_pages = if page_len == 0 {
                consecutive_empty_pages + 1
            } else {
                0
            };
            if consecutive_empty_pages > MAX_CONSECUTIVE_EMPTY_PAGES {
                return Err(Error::InvalidResponse(format!(
                    "{MAX_CONSECUTIVE_EMPTY_PAGES} empty pages in a row; paging makes no progress"
                )));
            }
            query.page_token = page.next_page_token;
        }
    }

    // ----- generic keys ----------------------------------------------------

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<proto::PutResponse, Error> {
        let request = proto::PutRequest {
            key: key.into(),
            value: value.into(),
            options: Some(self.write_options()?),
        };
        if self.shared.config.coalesce_puts {
            return self.put_coalesced(self.write_plan(), request).await;
        }
        self.put_alone(self.write_plan(), request).await
    }

    /// One put in a `Put` call of its own.
    pub(crate) async fn put_alone(
        &self,
        plan: CallPlan,
        request: proto::PutRequest,
    ) -> Result<proto::PutResponse, Error> {
        self.data_call(plan, request, |channel, request| async move {
            kv_client(channel).put(request).await
        })
        .await
    }

    /// `found` is false for a key never written or deleted.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<proto::GetResponse, Error> {
        let request = proto::GetRequest {
            key: key.into(),
            options: Some(self.read_options()?),
        };
        self.data_call(self.read_plan(), request, |channel, request| async move {
            kv_client(channel).get(request).await
        })
        .await
    }

    /// Writes a tombstone; `existed` says whether a live value was replaced.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<proto::DeleteResponse, Error> {
        let request = proto::DeleteRequest {
            key: key.into(),
            options: Some(self.write_options()?),
        };
        self.data_call(self.write_plan(), request, |channel, request| async move {
            kv_client(channel).delete(request).await
        })
        .await
    }

    /// Writes `value` only if the key's current state is `expected`, in one
    /// step in the Raft log. A failed comparison is an answer, not an error:
    /// `succeeded` is false and the response carries the current version (and
    /// value, when the key has a live one).
    ///
    /// Always leader-routed, with one request id for all retries. Only
    /// [`WriteLevel::Strong`] can compare-and-set: at any other level of this
    /// handle the server answers [`Error::FailedPrecondition`].
    pub async fn compare_and_set(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Expected,
        value: impl Into<Vec<u8>>,
    ) -> Result<proto::CompareAndSetResponse, Error> {
        let request = proto::CompareAndSetRequest {
            key: key.into(),
            expected: Some(expected.to_proto()),
            value: value.into(),
            options: Some(self.write_options()?),
        };
        self.data_call(self.leader_plan(), request, |channel, request| async move {
            kv_client(channel).compare_and_set(request).await
        })
        .await
    }

    // ----- administration --------------------------------------------------

    /// Forms the cluster with these voters `(id, host:port)`; an empty list
    /// means the voters configured with `--peers` on the node. Sent to the
    /// first endpoint only (init is not leader-routed); safe to repeat.
    pub async fn init(&self, members: Vec<(u64, String)>) -> Result<proto::InitResponse, Error> {
        let request = proto::InitRequest {
            members: members
                .into_iter()
                .map(|(id, addr)| proto::Member { id, addr })
                .collect(),
        };
        let plan = CallPlan {
            route: Route::Node(self.shared.endpoints[0].clone()),
            timeout: self.shared.config.timeout,
            max_attempts: self.shared.config.max_attempts,
        };
        self.call(plan, request, |channel, request| async move {
            admin_client(channel).init(request).await
        })
        .await
    }

    /// Adds a non-voting member; with `blocking`, waits until it caught up.
    pub async fn add_learner(
        &self,
        id: u64,
        addr: impl Into<String>,
        blocking: bool,
    ) -> Result<proto::MembershipResponse, Error> {
        let request = proto::AddLearnerRequest {
            member: Some(proto::Member {
                id,
                addr: addr.into(),
            }),
            blocking,
        };
        self.call(self.leader_plan(), request, |channel, request| async move {
            admin_client(channel).add_learner(request).await
        })
        .await
    }

    /// Sets the complete voter set; with `retain`, removed voters stay
    /// learners.
    pub async fn change_membership(
        &self,
        voters: Vec<u64>,
        retain: bool,
    ) -> Result<proto::MembershipResponse, Error> {
        let request = proto::ChangeMembershipRequest { voters, retain };
        self.call(self.leader_plan(), request, |channel, request| async move {
            admin_client(channel).change_membership(request).await
        })
        .await
    }

    /// The status of exactly the node at `addr`: one attempt, a short
    /// deadline ([`NODE_STATUS_TIMEOUT_MS`], or the configured timeout if
    /// shorter), no redirect.
    pub async fn node_status(&self, addr: &str) -> Result<proto::NodeStatus, Error> {
        let addr = normalize_endpoint(addr)?;
        let plan = CallPlan {
            route: Route::Node(addr),
            timeout: self
                .shared
                .config
                .timeout
                .min(Duration::from_millis(NODE_STATUS_TIMEOUT_MS)),
            max_attempts: 1,
        };
        self.call(
            plan,
            proto::StatusRequest {},
            |channel, request| async move { admin_client(channel).status(request).await },
        )
        .await
    }

    /// The conflict log: provisional writes that lost to a newer version when
    /// they were reconciled, most recent first, at most `limit` (0 means the
    /// server's default of 100). The log is replicated, so any node answers.
    pub async fn list_conflicts(&self, limit: u32) -> Result<proto::ListConflictsResponse, Error> {
        let plan = self.plan(choose_route(self.pinned(), false));
        self.call(
            plan,
            proto::ListConflictsRequest { limit },
            |channel, request| async move { admin_client(channel).list_conflicts(request).await },
        )
        .await
    }

    // ----- the retry loop --------------------------------------------------

    /// [`Client::call`] for data operations: a session's token learns from
    /// the response.
    async fn data_call<Req, Resp, F, Fut>(
        &self,
        plan: CallPlan,
        message: Req,
        rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: HasMeta,
        F: FnMut(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let response = self.call(plan, message, rpc).await?;
        if let (Some(token), Some(meta)) = (&self.session, response.meta()) {
            observe_meta(token, meta);
        }
        Ok(response)
    }

    /// Runs one logical call: sends `message` (cloned per attempt, so a
    /// write's request id is the same in every attempt) through `rpc`, and
    /// retries, redirects and backs off as `plan` allows.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        plan: CallPlan,
        message: Req,
        mut rpc: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(Channel, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + plan.timeout;
        let follow_leader = matches!(plan.route, Route::Leader);
        let mut target = match &plan.route {
            Route::Leader => self.leader_address(),
            Route::Any => self.preferred_address(),
            Route::Node(addr) => addr.clone(),
        };
        let mut attempts: u32 = 0;
        let mut backoffs: u32 = 0;
        // Nodes that redirected this call: a redirect back to one of them means
        // the nodes disagree about the leader (an election is under way), so
        // the client backs off before following.
        let mut redirected_by: Vec<String> = Vec::new();
        let mut last_error: Option<Error> = None;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::DeadlineExceeded {
                    attempts,
                    last_error: describe(last_error.as_ref()),
                });
            }
            attempts += 1;
            let channel = self.channel(&target)?;
            let mut request = Request::new(message.clone());
            // Tells the server how long the client will wait, so it can give up
            // (or fail fast) instead of working for nobody.
            request.set_timeout(remaining);
            let status = match tokio::time::timeout(remaining, rpc(channel, request)).await {
                Ok(Ok(response)) => {
                    if follow_leader {
                        self.remember_leader(&target);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_elapsed) => {
                    last_error = Some(Error::Transport(format!(
                        "{target}: no answer before the deadline"
                    )));
                    continue; // The deadline check above ends the call.
                }
            };
            tracing::debug!(attempt = attempts, node = %target, %status, "attempt failed");
            let retryable = match classify_status(&status) {
                AttemptFailure::Fatal(error) => return Err(error),
                AttemptFailure::Redirect {
                    leader_id,
                    leader_addr,
                    message,
                } => {
                    let error = Error::Unavailable {
                        message: format!("{target}: {message}"),
                        leader: Some((leader_id, leader_addr.clone())),
                    };
                    match plan.route {
                        // Pinned: the caller wants this node's answer.
                        Route::Node(_) => return Err(error),
                        // Levels every node serves itself are never
                        // redirected by a current server; if one does, the
                        // node cannot serve now: try the next one, like any
                        // UNAVAILABLE.
                        Route::Any => error,
                        // The node names itself yet cannot serve (for example
                        // a leader that lost its quorum): treat as transient.
                        Route::Leader if leader_addr == target => error,
                        Route::Leader => {
                            if attempts >= plan.max_attempts {
                                return Err(error);
                            }
                            last_error = Some(error);
                            self.remember_leader(&leader_addr);
                            let disagreement = redirected_by.contains(&leader_addr);
                            redirected_by.push(std::mem::replace(&mut target, leader_addr));
                            if disagreement {
                                self.sleep_backoff(&mut backoffs, deadline).await;
                            }
                            continue;
                        }
                    }
                }
                AttemptFailure::Retryable(error) => with_node(error, &target),
            };
            if attempts >= plan.max_attempts {
                return Err(match retryable {
                    Error::DeadlineExceeded { last_error, .. } => Error::DeadlineExceeded {
                        attempts,
                        last_error,
                    },
                    other => other,
                });
            }
            last_error = Some(retryable);
            self.sleep_backoff(&mut backoffs, deadline).await;
            if !matches!(plan.route, Route::Node(_)) {
                target = self.rotate_from(&target, &plan.route);
            }
        }
    }

    /// Sleeps a jittered backoff, never past the call's deadline.
    async fn sleep_backoff(&self, backoffs: &mut u32, deadline: Instant) {
        let config = &self.shared.config;
        let delay = backoff_delay(*backoffs, config.backoff_initial, config.backoff_max);
        *backoffs = backoffs.saturating_add(1);
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(delay.min(remaining)).await;
    }

    /// The pinned endpoint, when [`ClientConfig::pin_endpoint`] is set.
    fn pinned(&self) -> Option<&str> {
        self.shared
            .config
            .pin_endpoint
            .then(|| self.shared.endpoints[0].as_str())
    }

    fn plan(&self, route: Route) -> CallPlan {
        let config = &self.shared.config;
        CallPlan {
            route,
            timeout: config.timeout,
            max_attempts: config.max_attempts,
        }
    }

    /// For calls only the leader serves (or the pinned node).
    fn leader_plan(&self) -> CallPlan {
        self.plan(choose_route(self.pinned(), true))
    }

    /// For writes at this handle's level.
    fn write_plan(&self) -> CallPlan {
        self.plan(choose_route(
            self.pinned(),
            self.write_level.is_leader_routed(),
        ))
    }

    /// For reads at this handle's level.
    fn read_plan(&self) -> CallPlan {
        self.plan(choose_route(
            self.pinned(),
            self.read_level.is_leader_routed(),
        ))
    }

    /// A copy of the session token, for a request of a session.
    fn token_to_send(&self) -> Option<proto::SessionToken> {
        self.session.as_ref().map(|token| lock(token).clone())
    }

    /// Options for one logical write: a fresh request id that every retry
    /// reuses, and the session's token.
    fn write_options(&self) -> Result<proto::WriteOptions, Error> {
        write_options(self.write_level, new_request_id(), self.token_to_send())
    }

    fn read_options(&self) -> Result<proto::ReadOptions, Error> {
        read_options(self.read_level, self.token_to_send())
    }

    // ----- channels and routing state --------------------------------------

    /// The cached channel to `addr` (a normalized `host:port`), created on
    /// first use. Creating one does not connect; the first request does.
    fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut channels = lock(&self.shared.channels);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let config = &self.shared.config;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|error| Error::InvalidEndpoint(format!("{addr:?}: {error}")))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(HTTP2_KEEPALIVE_INTERVAL_MS))
            .keep_alive_timeout(Duration::from_millis(HTTP2_KEEPALIVE_TIMEOUT_MS))
            .keep_alive_while_idle(false)
            .connect_lazy();
        if channels.len() < MAX_CACHED_CHANNELS {
            channels.insert(addr.to_string(), channel.clone());
        }
        Ok(channel)
    }

    fn routing(&self) -> MutexGuard<'_, RoutingState> {
        lock(&self.shared.routing)
    }

    /// Makes `addr` the first stop of later leader-routed calls, and part of
    /// the round robin if it is not a configured endpoint.
    fn remember_leader(&self, addr: &str) {
        let mut routing = self.routing();
        routing.leader = addr.to_string();
        let known = self.shared.endpoints.iter().any(|e| e == addr)
            || routing.learned.iter().any(|e| e == addr);
        if !known {
            if routing.learned.len() >= MAX_LEARNED_ADDRESSES {
                routing.learned.remove(0);
            }
            routing.learned.push(addr.to_string());
        }
    }

    /// The next address after `failed` in the round robin over configured
    /// endpoints and learned leaders. If `failed` was where calls of `route`
    /// start (the remembered leader, or the preferred endpoint), the next
    /// address takes its place, so later calls do not start at a node that
    /// just failed.
    fn rotate_from(&self, failed: &str, route: &Route) -> String {
        let mut routing = self.routing();
        let candidates: Vec<&String> = self
            .shared
            .endpoints
            .iter()
            .chain(routing.learned.iter())
            .collect();
        let next = match candidates.iter().position(|c| c.as_str() == failed) {
            Some(index) => candidates[(index + 1) % candidates.len()].clone(),
            None => candidates[0].clone(),
        };
        let start = match route {
            Route::Leader => &mut routing.leader,
            Route::Any => &mut routing.preferred,
            Route::Node(_) => return failed.to_string(),
        };
        if start == failed {
            *start = next.clone();
        }
        next
    }
}

/// The longest call deadline a client accepts. Far beyond any sensible
/// request (a blocking add-learner on a large log takes minutes), and small
/// enough that deadline arithmetic and the gRPC timeout header cannot overflow.
pub const MAX_CALL_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1_000;

fn validate_config(config: &ClientConfig) -> Result<(), Error> {
    let max_timeout = Duration::from_millis(MAX_CALL_TIMEOUT_MS);
    if config.timeout > max_timeout || config.connect_timeout > max_timeout {
        return Err(Error::InvalidConfig(format!(
            "timeouts must be at most {MAX_CALL_TIMEOUT_MS} ms"
        )));
    }
    if config.max_attempts == 0 {
        return Err(Error::InvalidConfig(
            "max_attempts must be at least 1".to_string(),
        ));
    }
    if config.timeout.is_zero() {
        return Err(Error::InvalidConfig(
            "timeout must be greater than zero".to_string(),
        ));
    }
    if config.connect_timeout.is_zero() {
        return Err(Error::InvalidConfig(
            "connect_timeout must be greater than zero".to_string(),
        ));
    }
    config.read_level.validate()?;
    config.write_level.validate()?;
    Ok(())
}

/// Locks a mutex, ignoring poisoning: the guarded maps stay consistent even
/// if a holder panicked, and a client must not panic because another thread
/// did.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// 16 random bytes (a v4 UUID): unique enough that two logical writes never
/// share an id, and within the protocol's 1 to 64 bytes.
fn new_request_id() -> Vec<u8> {
    uuid::Uuid::new_v4().into_bytes().to_vec()
}

/// The backoff ceiling before retry number `retry` (0-based):
/// `initial * 2^retry`, capped at `max`, without overflow.
pub(crate) fn backoff_ceiling(retry: u32, initial: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
    initial
        .checked_mul(factor)
        .unwrap_or(Duration::MAX)
        .min(max)
}

/// A "full jitter" backoff: uniform between zero and the ceiling, so clients
/// that failed together do not retry together.
pub(crate) fn backoff_delay(retry: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = backoff_ceiling(retry, initial, max);
    let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rand::thread_rng().gen_range(0..=ceiling_us))
}

/// Prefixes a transient error with the node it came from, so the final error
/// of a call says where things went wrong.
fn with_node(error: Error, node: &str) -> Error {
    match error {
        Error::Unavailable { message, leader } => Error::Unavailable {
            message: format!("{node}: {message}"),
            leader,
        },
        Error::DeadlineExceeded {
            attempts,
            last_error,
        } => Error::DeadlineExceeded {
            attempts,
            last_error: format!("{node}: {last_error}"),
        },
        Error::Transport(message) => Error::Transport(format!("{node}: {message}")),
        other => other,
    }
}

fn describe(error: Option<&Error>) -> String {
    match error {
        Some(error) => error.to_string(),
        None => "no attempt was made".to_string(),
    }
}

pub(crate) fn kv_client(channel: Channel) -> KvServiceClient<Channel> {
    KvServiceClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES)
}

fn sensor_client(channel: Channel) -> SensorServiceClient<Channel> {
    SensorServiceClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES)
}

fn admin_client(channel: Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_ceiling_doubles_then_stays_at_the_cap() {
        let initial = 50 * MS;
        let cap = 1_000 * MS;
        let ceilings: Vec<Duration> = (0..8).map(|r| backoff_ceiling(r, initial, cap)).collect();
        assert_eq!(
            ceilings,
            [50, 100, 200, 400, 800, 1000, 1000, 1000].map(|ms| ms * MS)
        );
        for retry in [31, 32, 64, 1_000, u32::MAX] {
            assert_eq!(backoff_ceiling(retry, initial, cap), cap, "retry {retry}");
        }
        // A cap below the initial value wins.
        assert_eq!(backoff_ceiling(0, initial, 10 * MS), 10 * MS);
        // Huge values saturate instead of overflowing.
        assert_eq!(
            backoff_ceiling(40, Duration::MAX, Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn backoff_delay_never_exceeds_the_ceiling_and_grows() {
        let initial = 50 * MS;
        let cap = 1_000 * MS;
        for retry in 0..40 {
            let ceiling = backoff_ceiling(retry, initial, cap);
            for _ in 0..200 {
                let delay = backoff_delay(retry, initial, cap);
                assert!(delay <= ceiling, "retry {retry}: {delay:?} > {ceiling:?}");
                assert!(delay <= cap);
            }
        }
        // Jitter is uniform over [0, ceiling], so the mean grows with the
        // ceiling until the cap: compare the first retry with a capped one.
        let mean = |retry: u32| -> Duration {
            let total: Duration = (0..2_000).map(|_| backoff_delay(retry, initial, cap)).sum();
            total / 2_000
        };
        assert!(mean(0) < 40 * MS, "{:?}", mean(0));
        assert!(mean(10) > 300 * MS, "{:?}", mean(10));
    }

    #[test]
    fn request_ids_are_sixteen_random_bytes() {
        let first = new_request_id();
        let second = new_request_id();
        assert_eq!(first.len(), 16);
        assert_ne!(first, second);
    }

    #[test]
    fn round_robin_covers_endpoints_and_learned_leaders() {
        let client = Client::connect(["a:1", "b:2", "c:3"]).expect("valid endpoints");
        let leader = Route::Leader;
        assert_eq!(client.leader_address(), "a:1");
        assert_eq!(client.rotate_from("a:1", &leader), "b:2");
        // The failed remembered leader is replaced by the next address; the
        // preferred endpoint of any-node calls is not.
        assert_eq!(client.leader_address(), "b:2");
        assert_eq!(client.preferred_address(), "a:1");
        assert_eq!(client.rotate_from("c:3", &leader), "a:1");
        client.remember_leader("d:4");
        assert_eq!(client.leader_address(), "d:4");
        assert_eq!(client.rotate_from("c:3", &leader), "d:4");
        assert_eq!(client.rotate_from("d:4", &leader), "a:1");
        assert_eq!(client.rotate_from("unknown:9", &leader), "a:1");
    }

    #[test]
    fn any_node_calls_rotate_their_own_starting_point() {
        let client = Client::connect(["a:1", "b:2"]).expect("valid endpoints");
        client.remember_leader("b:2");
        assert_eq!(client.preferred_address(), "a:1");
        assert_eq!(client.rotate_from("a:1", &Route::Any), "b:2");
        assert_eq!(client.preferred_address(), "b:2");
        assert_eq!(client.leader_address(), "b:2");
        // A pinned call never moves.
        assert_eq!(client.rotate_from("b:2", &Route::Node("b:2".into())), "b:2");
        assert_eq!(client.preferred_address(), "b:2");
    }

    #[test]
    fn routes_follow_the_level_and_the_pin() {
        let any = Route::Any;
        let leader = Route::Leader;
        let pinned = Route::Node("a:1".into());
        let bounded = ReadLevel::Bounded {
            max_staleness: Duration::from_millis(5),
        };
        // (pin_endpoint, write level, read level, write route, read route)
        let cases = [
            (
                false,
                WriteLevel::Strong,
                ReadLevel::Linearizable,
                &leader,
                &leader,
            ),
            (false, WriteLevel::Local, ReadLevel::Session, &any, &any),
            (
                false,
                WriteLevel::StrongOrLocal { budget: None },
                bounded,
                &any,
                &any,
            ),
            (
                false,
                WriteLevel::Strong,
                ReadLevel::Eventual,
                &leader,
                &any,
            ),
            (
                true,
                WriteLevel::Strong,
                ReadLevel::Linearizable,
                &pinned,
                &pinned,
            ),
            (
                true,
                WriteLevel::Local,
                ReadLevel::Eventual,
                &pinned,
                &pinned,
            ),
        ];
        for (pin_endpoint, write_level, read_level, write_route, read_route) in cases {
            let config = ClientConfig {
                pin_endpoint,
                ..ClientConfig::default()
            };
            let client = Client::with_config(["a:1", "b:2"], config)
                .expect("valid")
                .with_write_level(write_level)
                .with_read_level(read_level);
            let case = format!("pinned={pin_endpoint} {write_level} {read_level}");
            assert_eq!(&client.write_plan().route, write_route, "{case}");
            assert_eq!(&client.read_plan().route, read_route, "{case}");
            // Compare-and-set and membership changes need the leader at any
            // level (or go to the pinned node).
            let expected_leader_route = if pin_endpoint { &pinned } else { &leader };
            assert_eq!(&client.leader_plan().route, expected_leader_route, "{case}");
        }
    }

    #[tokio::test]
    async fn invalid_levels_fail_before_any_request() {
        let client = Client::connect(["a:1"]).expect("valid");
        let error = client
            .with_read_level(ReadLevel::Bounded {
                max_staleness: Duration::ZERO,
            })
            .get("k")
            .await
            .expect_err("a zero bound");
        assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
        let error = client
            .with_write_level(WriteLevel::StrongOrLocal {
                budget: Some(Duration::from_micros(10)),
            })
            .put("k", "v")
            .await
            .expect_err("a sub-millisecond budget");
        assert!(matches!(error, Error::InvalidConfig(_)), "{error:?}");
    }

    #[test]
    fn learned_addresses_are_bounded() {
        let client = Client::connect(["a:1"]).expect("valid endpoint");
        for port in 0..(MAX_LEARNED_ADDRESSES as u16 * 2) {
            client.remember_leader(&format!("n:{}", port + 10));
        }
        assert_eq!(client.routing().learned.len(), MAX_LEARNED_ADDRESSES);
    }

    #[test]
    fn config_is_validated() {
        let bad = [
            ClientConfig {
                max_attempts: 0,
                ..ClientConfig::default()
            },
            ClientConfig {
                timeout: Duration::ZERO,
                ..ClientConfig::default()
            },
            ClientConfig {
                connect_timeout: Duration::ZERO,
                ..ClientConfig::default()
            },
            ClientConfig {
                timeout: Duration::MAX,
                ..ClientConfig::default()
            },
            ClientConfig {
                read_level: ReadLevel::Bounded {
                    max_staleness: Duration::ZERO,
                },
                ..ClientConfig::default()
            },
            ClientConfig {
                write_level: WriteLevel::StrongOrLocal {
                    budget: Some(Duration::ZERO),
                },
                ..ClientConfig::default()
            },
        ];
        for config in bad {
            assert!(matches!(
                Client::with_config(["a:1"], config),
                Err(Error::InvalidConfig(_))
            ));
        }
        assert!(matches!(
            Client::connect(Vec::<String>::new()),
            Err(Error::InvalidEndpoint(_))
        ));
        assert!(matches!(
            Client::connect(["a:1", "b"]),
            Err(Error::InvalidEndpoint(_))
        ));
    }

    /// A server that never answers: the call must end at its deadline, with
    /// the attempts it made, and sleep no wall-clock time (paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_hanging_attempt_ends_at_the_call_deadline() {
        let config = ClientConfig {
            timeout: Duration::from_secs(3),
            ..ClientConfig::default()
        };
        let client = Client::with_config(["a:1"], config).expect("valid");
        let started = Instant::now();
        let result: Result<(), Error> = client
            .call(
                client.leader_plan(),
                (),
                |_channel, _request: Request<()>| async {
                    std::future::pending::<Result<Response<()>, Status>>().await
                },
            )
            .await;
        assert!(
            matches!(result, Err(Error::DeadlineExceeded { attempts: 1, .. })),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    /// Transient failures rotate over the endpoints with backoff and stop at
    /// max_attempts; the request seen by every attempt is the same message
    /// and carries the remaining deadline.
    #[tokio::test(start_paused = true)]
    async fn transient_failures_rotate_and_stop_at_max_attempts() {
        let config = ClientConfig {
            max_attempts: 4,
            ..ClientConfig::default()
        };
        let client = Client::with_config(["a:1", "b:2", "c:3"], config).expect("valid");
        let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let result: Result<(), Error> = client
            .call(
                client.leader_plan(),
                "same".to_string(),
                |_channel, request| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let has_deadline = request.metadata().get("grpc-timeout").is_some();
                        lock(&seen).push((request.into_inner(), has_deadline));
                        Err(Status::unavailable("no leader yet"))
                    }
                },
            )
            .await;
        match result {
            Err(Error::Unavailable { message, leader }) => {
                assert_eq!(leader, None);
                // The 4th attempt went to a:1 again after b:2 and c:3.
                assert_eq!(message, "a:1: no leader yet");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        let seen = lock(&seen).clone();
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|(m, deadline)| m == "same" && *deadline));
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_codes_return_after_one_attempt() {
        let client = Client::connect(["a:1", "b:2"]).expect("valid");
        let attempts = Arc::new(Mutex::new(0u32));
        let result: Result<(), Error> = client
            .call(client.leader_plan(), (), |_channel, _request| {
                let attempts = Arc::clone(&attempts);
                async move {
                    *lock(&attempts) += 1;
                    Err(Status::invalid_argument("value must be finite"))
                }
            })
            .await;
        assert_eq!(
            result,
            Err(Error::InvalidArgument("value must be finite".into()))
        );
        assert_eq!(*lock(&attempts), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_clients_do_not_follow_redirects() {
        let config = ClientConfig {
            pin_endpoint: true,
            ..ClientConfig::default()
        };
        let client = Client::with_config(["a:1", "b:2"], config).expect("valid");
        let result: Result<(), Error> = client
            .call(client.leader_plan(), (), |_channel, _request| async {
                let mut status = Status::unavailable("not leader");
                status.metadata_mut().insert(
                    capkv_proto::metadata::LEADER_ID,
                    tonic::metadata::MetadataValue::from_static("2"),
                );
                status.metadata_mut().insert(
                    capkv_proto::metadata::LEADER_ADDR,
                    tonic::metadata::MetadataValue::from_static("b:2"),
                );
                Err(status)
            })
            .await;
        assert_eq!(
            result,
            Err(Error::Unavailable {
                message: "a:1: not leader".into(),
                leader: Some((2, "b:2".into())),
            })
        );
        assert_eq!(client.leader_address(), "a:1");
    }
}
