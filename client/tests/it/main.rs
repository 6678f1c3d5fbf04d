//! The SDK against tiny in-process fake servers: real gRPC over loopback TCP,
//! scripted answers, and a log of what each server received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use capkv_client::proto::admin_service_server::{AdminService, AdminServiceServer};
use capkv_client::proto::kv_service_server::{KvService, KvServiceServer};
use capkv_client::proto::sensor_service_server::{SensorService, SensorServiceServer};
use capkv_client::{
    proto, Client, ClientConfig, Error, Expected, RangeQuery, ReadLevel, Session, WriteLevel,
};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

mod cli;

/// Retries in these tests hit loopback servers; a short backoff keeps them
/// fast while still exercising the backoff path.
fn fast_config() -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(10),
        ..ClientConfig::default()
    }
}

/// Binds port 0 on loopback and serves `router` there in the background.
async fn serve(router: tonic::transport::server::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    addr.to_string()
}

/// An address where nothing listens: bound, then released.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    drop(listener);
    addr
}

// ----- a KV server that redirects or answers -------------------------------

#[derive(Clone, Debug, PartialEq)]
struct Seen {
    server: &'static str,
    method: &'static str,
    request_id: Vec<u8>,
    had_deadline: bool,
    /// The write or read level asked for (0 when the request had no options).
    consistency: i32,
    /// The session token the request carried.
    session: Option<proto::SessionToken>,
    /// WriteOptions.strong_budget_ms or ReadOptions.max_staleness_ms.
    level_ms: u64,
}

type Log = Arc<Mutex<Vec<Seen>>>;

#[derive(Clone)]
enum Behaviour {
    /// UNAVAILABLE with the leader's id and address in the metadata.
    RedirectTo {
        id: u64,
        addr: String,
    },
    /// UNAVAILABLE with this message and no leader.
    Unavailable(String),
    Answer,
}

/// What the fake puts into the metadata of its answers.
#[derive(Clone, Debug, Default)]
struct Reply {
    session: Option<proto::SessionToken>,
    provisional_write: Option<proto::WriteId>,
}

/// A value and its version.
type Stored = (Vec<u8>, proto::Version);

#[derive(Clone)]
struct FakeKv {
    name: &'static str,
    node_id: u64,
    behaviour: Arc<Mutex<Behaviour>>,
    log: Log,
    reply: Arc<Mutex<Reply>>,
    /// The one value this fake stores (whatever the key), for compare-and-set.
    stored: Arc<Mutex<Option<Stored>>>,
    /// The number of puts of each `PutMany` call, in order.
    put_many_calls: Arc<Mutex<Vec<usize>>>,
    /// When set, `PutMany` is UNIMPLEMENTED, as on a node older than it.
    no_put_many: Arc<Mutex<bool>>,
}

impl FakeKv {
    fn record_write<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
        options: Option<&proto::WriteOptions>,
    ) {
        self.log.lock().unwrap().push(Seen {
            server: self.name,
            method,
            request_id: options.map(|o| o.request_id.clone()).unwrap_or_default(),
            had_deadline: request.metadata().get("grpc-timeout").is_some(),
            consistency: options.map_or(0, |o| o.consistency),
            session: options.and_then(|o| o.session.clone()),
            level_ms: options.map_or(0, |o| o.strong_budget_ms),
        });
    }

    fn record_read<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
        options: Option<&proto::ReadOptions>,
    ) {
        self.log.lock().unwrap().push(Seen {
            server: self.name,
            method,
            request_id: Vec::new(),
            had_deadline: request.metadata().get("grpc-timeout").is_some(),
            consistency: options.map_or(0, |o| o.consistency),
            session: options.and_then(|o| o.session.clone()),
            level_ms: options.map_or(0, |o| o.max_staleness_ms),
        });
    }

    fn refuse(&self) -> Option<Status> {
        match &*self.behaviour.lock().unwrap() {
            Behaviour::Answer => None,
            Behaviour::Unavailable(message) => Some(Status::unavailable(message.clone())),
            Behaviour::RedirectTo { id, addr } => {
                let mut status =
                    Status::unavailable(format!("node {} is not the leader", self.node_id));
                let metadata = status.metadata_mut();
                metadata.insert(
                    capkv_client::metadata::LEADER_ID,
                    MetadataValue::try_from(id.to_string()).unwrap(),
                );
                metadata.insert(
                    capkv_client::metadata::LEADER_ADDR,
                    MetadataValue::try_from(addr.as_str()).unwrap(),
                );
                Some(status)
            }
        }
    }

    fn meta(&self) -> Option<proto::ResponseMeta> {
        let reply = self.reply.lock().unwrap().clone();
        Some(proto::ResponseMeta {
            served_by: self.node_id,
            session: reply.session,
            provisional_write: reply.provisional_write,
            ..proto::ResponseMeta::default()
        })
    }

    fn version(&self, physical_ms: u64) -> proto::Version {
        proto::Version {
            physical_ms,
            logical: 0,
            origin_node: self.node_id,
        }
    }
}

#[tonic::async_trait]
impl KvService for FakeKv {
    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        self.record_write("put", &request, request.get_ref().options.as_ref());
        if let Some(status) = self.refuse() {
            return Err(status);
        }
        Ok(Response::new(proto::PutResponse {
            meta: self.meta(),
            version: Some(proto::Version {
                physical_ms: 1,
                logical: 0,
                origin_node: self.node_id,
            }),
        }))
    }

    /// Each put is logged as `put_many`. A key starting with `bad` fails
    /// alone with INVALID_ARGUMENT, one starting with `busy` with UNAVAILABLE
    /// (no leader named); the rest are answered as `put` answers them.
    async fn put_many(
        &self,
        request: Request<proto::PutManyRequest>,
    ) -> Result<Response<proto::PutManyResponse>, Status> {
        for put in &request.get_ref().puts {
            self.record_write("put_many", &request, put.options.as_ref());
        }
        if *self.no_put_many.lock().unwrap() {
            return Err(Status::unimplemented("unknown method PutMany"));
        }
        if let Some(status) = self.refuse() {
            return Err(status);
        }
        let puts = request.into_inner().puts;
        self.put_many_calls.lock().unwrap().push(puts.len());
        let error = |code: tonic::Code, message: &str| {
            proto::put_outcome::Outcome::Error(proto::CallError {
                code: code as i32,
                message: message.to_string(),
            })
        };
        let outcomes = puts
            .iter()
            .map(|put| {
                let outcome = if put.key.starts_with(b"bad") {
                    error(tonic::Code::InvalidArgument, "key: refused by the fake")
                } else if put.key.starts_with(b"busy") {
                    error(tonic::Code::Unavailable, "busy for a moment")
                } else {
                    proto::put_outcome::Outcome::Ok(proto::PutResponse {
                        meta: self.meta(),
                        version: Some(self.version(put.value.len() as u64)),
                    })
                };
                proto::PutOutcome {
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(proto::PutManyResponse { outcomes }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        self.record_read("get", &request, request.get_ref().options.as_ref());
        if let Some(status) = self.refuse() {
            return Err(status);
        }
        if request.get_ref().key.is_empty() {
            return Err(Status::invalid_argument("key must be 1 byte to 1 KiB"));
        }
        Ok(Response::new(proto::GetResponse {
            meta: self.meta(),
            found: true,
            value: b"v".to_vec(),
            version: None,
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        self.record_write("delete", &request, request.get_ref().options.as_ref());
        Err(Status::unimplemented("not in this fake"))
    }

    /// Compares with the one stored value; only STRONG, like the server.
    async fn compare_and_set(
        &self,
        request: Request<proto::CompareAndSetRequest>,
    ) -> Result<Response<proto::CompareAndSetResponse>, Status> {
        self.record_write("cas", &request, request.get_ref().options.as_ref());
        if let Some(status) = self.refuse() {
            return Err(status);
        }
        let request = request.into_inner();
        let consistency = request.options.as_ref().map_or(0, |o| o.consistency);
        if consistency != proto::WriteConsistency::Strong as i32 {
            return Err(Status::failed_precondition(
                "compare-and-set needs STRONG; LOCAL writes have no single order",
            ));
        }
        let mut stored = self.stored.lock().unwrap();
        let current_version = stored.as_ref().map(|(_, version)| *version);
        let matches = match request.expected {
            Some(proto::compare_and_set_request::Expected::ExpectedVersion(expected)) => {
                current_version == Some(expected)
            }
            Some(proto::compare_and_set_request::Expected::ExpectedAbsent(true)) => {
                stored.is_none()
            }
            _ => return Err(Status::invalid_argument("expected is required")),
        };
        if !matches {
            return Ok(Response::new(proto::CompareAndSetResponse {
                meta: self.meta(),
                succeeded: false,
                version: current_version,
                current_found: stored.is_some(),
                current_value: stored.as_ref().map(|(v, _)| v.clone()).unwrap_or_default(),
            }));
        }
        let version = self.version(current_version.map_or(1, |v| v.physical_ms + 1));
        *stored = Some((request.value, version));
        Ok(Response::new(proto::CompareAndSetResponse {
            meta: self.meta(),
            succeeded: true,
            version: Some(version),
            current_found: false,
            current_value: Vec::new(),
        }))
    }
}

async fn kv_server(
    name: &'static str,
    node_id: u64,
    behaviour: Behaviour,
    log: &Log,
) -> (String, FakeKv) {
    let fake = FakeKv {
        name,
        node_id,
        behaviour: Arc::new(Mutex::new(behaviour)),
        log: Arc::clone(log),
        reply: Arc::default(),
        stored: Arc::default(),
        put_many_calls: Arc::default(),
        no_put_many: Arc::default(),
    };
    let addr = serve(Server::builder().add_service(KvServiceServer::new(fake.clone()))).await;
    (addr, fake)
}

/// Node 2, the leader, and node 1, which redirects every call to it:
/// `(leader address, leader, follower address)`.
async fn leader_and_follower(log: &Log) -> (String, FakeKv, String) {
    let (leader_addr, leader) = kv_server("leader", 2, Behaviour::Answer, log).await;
    let (follower_addr, _follower) = kv_server(
        "follower",
        1,
        Behaviour::RedirectTo {
            id: 2,
            addr: leader_addr.clone(),
        },
        log,
    )
    .await;
    (leader_addr, leader, follower_addr)
}

#[tokio::test]
async fn follows_leader_redirect_and_reuses_the_request_id() {
    let log = Log::default();
    let (leader_addr, _leader, follower_addr) = leader_and_follower(&log).await;
    // Only the follower is configured: the leader is learned from the redirect.
    let client = Client::with_config([follower_addr.as_str()], fast_config()).expect("valid");

    let response = client
        .put("k", "v")
        .await
        .expect("put succeeds via the leader");
    assert_eq!(response.meta.expect("meta").served_by, 2);

    let seen = log.lock().unwrap().clone();
    let servers: Vec<&str> = seen.iter().map(|s| s.server).collect();
    assert_eq!(servers, ["follower", "leader"]);
    assert_eq!(seen[0].request_id.len(), 16, "a 16-byte request id");
    assert_eq!(
        seen[0].request_id, seen[1].request_id,
        "the retry of one logical write reuses its request id"
    );
    assert!(
        seen.iter().all(|s| s.had_deadline),
        "every attempt carries grpc-timeout"
    );

    // The leader is remembered: the next write goes straight there, with a
    // fresh request id because it is a different logical write.
    assert_eq!(client.leader_address(), leader_addr);
    client.put("k", "v2").await.expect("second put");
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].server, "leader");
    assert_ne!(seen[2].request_id, seen[0].request_id);
}

#[tokio::test]
async fn redirect_ping_pong_is_bounded_by_max_attempts() {
    let log = Log::default();
    let (a_addr, a) = kv_server("a", 1, Behaviour::Answer, &log).await;
    let (b_addr, _b) = kv_server(
        "b",
        2,
        Behaviour::RedirectTo {
            id: 1,
            addr: a_addr.clone(),
        },
        &log,
    )
    .await;
    // Now make a point back at b: the nodes disagree forever.
    *a.behaviour.lock().unwrap() = Behaviour::RedirectTo {
        id: 2,
        addr: b_addr.clone(),
    };
    let config = ClientConfig {
        max_attempts: 5,
        ..fast_config()
    };
    let client = Client::with_config([a_addr.as_str()], config).expect("valid");
    let error = client.put("k", "v").await.expect_err("no node serves");
    match &error {
        Error::Unavailable {
            leader: Some((id, _)),
            ..
        } => assert!(*id == 1 || *id == 2),
        other => panic!("expected Unavailable with a leader, got {other:?}"),
    }
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "exactly max_attempts attempts");
    let first_id = &seen[0].request_id;
    assert!(seen.iter().all(|s| &s.request_id == first_id));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_skipped() {
    let log = Log::default();
    let dead = dead_address().await;
    let (live_addr, _live) = kv_server("live", 3, Behaviour::Answer, &log).await;
    let client =
        Client::with_config([dead.as_str(), live_addr.as_str()], fast_config()).expect("valid");

    let response = client
        .get("k")
        .await
        .expect("get succeeds on the live node");
    assert!(response.found);
    assert_eq!(client.leader_address(), live_addr);
    let servers: Vec<&str> = log.lock().unwrap().iter().map(|s| s.server).collect();
    assert_eq!(servers, ["live"]);
}

#[tokio::test]
async fn all_endpoints_down_is_a_transport_error_after_max_attempts() {
    let dead_a = dead_address().await;
    let dead_b = dead_address().await;
    let config = ClientConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let client = Client::with_config([dead_a, dead_b], config).expect("valid");
    let error = client.get("k").await.expect_err("nothing listens");
    assert!(matches!(error, Error::Transport(_)), "{error:?}");
    assert_eq!(error.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn server_rejections_are_typed_and_not_retried() {
    let log = Log::default();
    let (addr, _server) = kv_server("only", 1, Behaviour::Answer, &log).await;
    let client = Client::with_config([addr.as_str()], fast_config()).expect("valid");
    let error = client.get(Vec::new()).await.expect_err("empty key");
    assert_eq!(
        error,
        Error::InvalidArgument("key must be 1 byte to 1 KiB".into())
    );
    let error = client.delete("k").await.expect_err("unimplemented");
    assert_eq!(error.code(), tonic::Code::Unimplemented);
    assert_eq!(log.lock().unwrap().len(), 2, "one attempt each");
}

// ----- paging --------------------------------------------------------------

/// Serves readings 0..total of one sensor; the page token is the decimal
/// offset of the next reading.
struct FakeSensor {
    total: i64,
    pages_served: Arc<Mutex<u32>>,
}

#[tonic::async_trait]
impl SensorService for FakeSensor {
    async fn put_readings(
        &self,
        _request: Request<proto::PutReadingsRequest>,
    ) -> Result<Response<proto::PutReadingsResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn latest_reading(
        &self,
        _request: Request<proto::LatestReadingRequest>,
    ) -> Result<Response<proto::LatestReadingResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn range_readings(
        &self,
        request: Request<proto::RangeReadingsRequest>,
    ) -> Result<Response<proto::RangeReadingsResponse>, Status> {
        *self.pages_served.lock().unwrap() += 1;
        let request = request.into_inner();
        let start: i64 = if request.page_token.is_empty() {
            0
        } else {
            String::from_utf8_lossy(&request.page_token)
                .parse()
                .map_err(|_| Status::invalid_argument("bad page token"))?
        };
        let limit = if request.limit == 0 {
            1000
        } else {
            i64::from(request.limit)
        };
        let end = (start + limit).min(self.total);
        let readings = (start..end)
            .map(|ts| proto::Reading {
                sensor_id: request.sensor_id.clone(),
                timestamp_ms: ts,
                value: ts as f64,
                tags: HashMap::new(),
                version: None,
            })
            .collect();
        let next_page_token = if end < self.total {
            end.to_string().into_bytes()
        } else {
            Vec::new()
        };
        Ok(Response::new(proto::RangeReadingsResponse {
            meta: None,
            readings,
            next_page_token,
        }))
    }
}

#[tokio::test]
async fn range_readings_all_follows_pages_up_to_max_total() {
    let pages_served = Arc::new(Mutex::new(0));
    let fake = FakeSensor {
        total: 25,
        pages_served: Arc::clone(&pages_served),
    };
    let addr = serve(Server::builder().add_service(SensorServiceServer::new(fake))).await;
    let client = Client::with_config([addr.as_str()], fast_config()).expect("valid");
    let query = RangeQuery {
        limit: 10,
        ..RangeQuery::new("boiler-7")
    };

    let all = client
        .range_readings_all(query.clone(), usize::MAX)
        .await
        .expect("all pages");
    let timestamps: Vec<i64> = all.readings.iter().map(|r| r.timestamp_ms).collect();
    assert_eq!(timestamps, (0..25).collect::<Vec<_>>());
    assert!(all.next_page_token.is_empty());
    assert_eq!(*pages_served.lock().unwrap(), 3);

    // Stopping at 15 asks for exactly 15 and hands back the exact token.
    let first = client
        .range_readings_all(query.clone(), 15)
        .await
        .expect("15");
    assert_eq!(first.readings.len(), 15);
    assert_eq!(first.next_page_token, b"15");
    let rest = client
        .range_readings_all(
            RangeQuery {
                page_token: first.next_page_token.clone(),
                ..query.clone()
            },
            usize::MAX,
        )
        .await
        .expect("rest");
    assert_eq!(rest.readings.first().map(|r| r.timestamp_ms), Some(15));
    assert_eq!(rest.readings.len(), 10);

    let none = client.range_readings_all(query, 0).await.expect("zero");
    assert!(none.readings.is_empty());
}

// ----- cluster status ------------------------------------------------------

struct FakeAdmin {
    status: proto::NodeStatus,
}

#[tonic::async_trait]
impl AdminService for FakeAdmin {
    async fn init(
        &self,
        _request: Request<proto::InitRequest>,
    ) -> Result<Response<proto::InitResponse>, Status> {
        Ok(Response::new(proto::InitResponse {
            voters: self.status.voters.clone(),
            already_initialized: true,
        }))
    }

    async fn add_learner(
        &self,
        _request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn change_membership(
        &self,
        _request: Request<proto::ChangeMembershipRequest>,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::NodeStatus>, Status> {
        Ok(Response::new(self.status.clone()))
    }

    /// One conflict whose log index echoes the limit asked for, so a test
    /// sees what was sent; the total is this node's id times ten.
    async fn list_conflicts(
        &self,
        request: Request<proto::ListConflictsRequest>,
    ) -> Result<Response<proto::ListConflictsResponse>, Status> {
        Ok(Response::new(proto::ListConflictsResponse {
            conflicts: vec![proto::Conflict {
                key: b"k".to_vec(),
                log_index: u64::from(request.into_inner().limit),
                ..proto::Conflict::default()
            }],
            total: self.status.id * 10,
        }))
    }
}

/// Reserves a port for a server started later, so member lists can name it.
async fn reserve() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    (listener, addr)
}

#[tokio::test]
async fn cluster_status_discovers_members_and_reports_unreachable_ones() {
    let (listener_1, addr_1) = reserve().await;
    let (listener_2, addr_2) = reserve().await;
    let dead_3 = dead_address().await;
    let voters = vec![
        proto::Member {
            id: 1,
            addr: addr_1.clone(),
        },
        proto::Member {
            id: 2,
            addr: addr_2.clone(),
        },
        proto::Member {
            id: 3,
            addr: dead_3.clone(),
        },
    ];
    let node_status = |id: u64, role: &str| proto::NodeStatus {
        id,
        role: role.to_string(),
        term: 7,
        leader_id: 1,
        voters: voters.clone(),
        ..proto::NodeStatus::default()
    };
    for (listener, status) in [
        (listener_1, node_status(1, "leader")),
        (listener_2, node_status(2, "follower")),
    ] {
        let router = Server::builder().add_service(AdminServiceServer::new(FakeAdmin { status }));
        tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    }
    // Only node 1 is configured; nodes 2 and 3 come from its voter list.
    let client = Client::with_config([addr_1.as_str()], fast_config()).expect("valid");
    let cluster = client.cluster_status().await.expect("node 1 answers");

    assert_eq!(cluster.leader, Some(1));
    assert_eq!(cluster.term, 7);
    let summary: Vec<(Option<u64>, String, bool)> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.addr.clone(), n.reachable()))
        .collect();
    assert_eq!(
        summary,
        [
            (Some(1), addr_1.clone(), true),
            (Some(2), addr_2, true),
            (Some(3), dead_3, false),
        ]
    );
    assert!(cluster.nodes[2].error.is_some());

    // A pinned client asks only its node: no discovery of the others.
    let pinned = Client::with_config(
        [addr_1.as_str()],
        ClientConfig {
            pin_endpoint: true,
            ..fast_config()
        },
    )
    .expect("valid");
    let cluster = pinned.cluster_status().await.expect("node 1 answers");
    assert_eq!(cluster.nodes.len(), 1);
    assert_eq!(cluster.leader, Some(1));

    // init goes to the first endpoint and reports "already initialized".
    let init = client.init(Vec::new()).await.expect("init");
    assert!(init.already_initialized);
    assert_eq!(init.voters.len(), 3);
}

#[tokio::test]
async fn cluster_status_fails_only_when_no_node_answers() {
    let client = Client::with_config([dead_address().await, dead_address().await], fast_config())
        .expect("valid");
    let error = client.cluster_status().await.expect_err("nobody home");
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
}

#[tokio::test]
async fn list_conflicts_goes_to_the_preferred_node() {
    let status = proto::NodeStatus {
        id: 2,
        role: "follower".into(),
        ..proto::NodeStatus::default()
    };
    let addr =
        serve(Server::builder().add_service(AdminServiceServer::new(FakeAdmin { status }))).await;
    let client = Client::with_config([addr.as_str()], fast_config()).expect("valid");
    let response = client.list_conflicts(25).await.expect("any node answers");
    assert_eq!(response.total, 20);
    assert_eq!(response.conflicts[0].log_index, 25, "the limit is sent");
}

// ----- consistency levels, routing and sessions ------------------------------

fn token(commit_index: u64, provisional: &[(u64, u64)]) -> proto::SessionToken {
    proto::SessionToken {
        commit_index,
        provisional_seq: provisional.iter().copied().collect(),
    }
}

fn write_id(origin_node: u64, seq: u64) -> Option<proto::WriteId> {
    Some(proto::WriteId { origin_node, seq })
}

/// The log's entries from `start` on, as (server, method, consistency).
fn calls(log: &Log, start: usize) -> Vec<(&'static str, &'static str, i32)> {
    log.lock().unwrap()[start..]
        .iter()
        .map(|s| (s.server, s.method, s.consistency))
        .collect()
}

#[tokio::test]
async fn a_session_attaches_its_token_and_merges_the_tokens_it_gets_back() {
    let log = Log::default();
    let (addr, node) = kv_server("n3", 3, Behaviour::Answer, &log).await;
    let client = Client::with_config([addr.as_str()], fast_config()).expect("valid");
    let session = client.session();
    assert_eq!(session.read_level(), ReadLevel::Session);
    assert_eq!(session.write_level(), WriteLevel::Strong);

    // A LOCAL write: the node answers with a higher commit index and the
    // write's provisional seq.
    *node.reply.lock().unwrap() = Reply {
        session: Some(token(10, &[(3, 7)])),
        provisional_write: write_id(3, 7),
    };
    session
        .with_write_level(WriteLevel::Local)
        .put("k", "v")
        .await
        .expect("put");
    assert_eq!(
        session.token(),
        token(10, &[(3, 7)]),
        "handles share the token"
    );

    // A node that is behind answers with less: nothing moves back, the new
    // origin is added.
    *node.reply.lock().unwrap() = Reply {
        session: Some(token(4, &[(1, 2), (3, 5)])),
        provisional_write: None,
    };
    session.get("k").await.expect("get");
    assert_eq!(session.token(), token(10, &[(1, 2), (3, 7)]));

    // The next request carries the merged token.
    session.get("k").await.expect("get");

    // A plain client sends no token and learns nothing.
    client.get("k").await.expect("plain get");

    // A resumed session starts from its saved token.
    let resumed = Session::from_token(&client, token(20, &[(2, 1)]));
    resumed.get("k").await.expect("resumed get");
    assert_eq!(resumed.token(), token(20, &[(1, 2), (2, 1), (3, 5)]));
    assert_eq!(
        session.token(),
        token(10, &[(1, 2), (3, 7)]),
        "separate tokens"
    );

    let seen = log.lock().unwrap().clone();
    let sent: Vec<(&str, i32, Option<proto::SessionToken>)> = seen
        .iter()
        .map(|s| (s.method, s.consistency, s.session.clone()))
        .collect();
    let local = proto::WriteConsistency::Local as i32;
    let session_read = proto::ReadConsistency::Session as i32;
    let linearizable = proto::ReadConsistency::Linearizable as i32;
    assert_eq!(
        sent,
        [
            ("put", local, Some(token(0, &[]))),
            ("get", session_read, Some(token(10, &[(3, 7)]))),
            ("get", session_read, Some(token(10, &[(1, 2), (3, 7)]))),
            ("get", linearizable, None),
            ("get", session_read, Some(token(20, &[(2, 1)]))),
        ]
    );
}

#[tokio::test]
async fn a_session_learns_from_provisional_write_ids() {
    let log = Log::default();
    let (addr, node) = kv_server("n2", 2, Behaviour::Answer, &log).await;
    let client = Client::with_config([addr.as_str()], fast_config()).expect("valid");
    let session = client.session().with_write_level(WriteLevel::Local);
    // A server that reports the write id but no token still advances it.
    *node.reply.lock().unwrap() = Reply {
        session: None,
        provisional_write: write_id(2, 4),
    };
    session.put("k", "v").await.expect("put");
    assert_eq!(session.token(), token(0, &[(2, 4)]));
}

#[tokio::test]
async fn local_writes_with_a_pinned_endpoint_never_follow_a_redirect() {
    let log = Log::default();
    let (leader_addr, _leader) = kv_server("leader", 2, Behaviour::Answer, &log).await;
    let (pinned_addr, _pinned) = kv_server(
        "pinned",
        1,
        Behaviour::RedirectTo {
            id: 2,
            addr: leader_addr.clone(),
        },
        &log,
    )
    .await;
    let config = ClientConfig {
        pin_endpoint: true,
        ..fast_config()
    };
    let client = Client::with_config([pinned_addr.as_str(), leader_addr.as_str()], config)
        .expect("valid")
        .with_write_level(WriteLevel::Local);

    let error = client
        .put("k", "v")
        .await
        .expect_err("the pinned node refuses");
    assert_eq!(
        error,
        Error::Unavailable {
            message: format!("{pinned_addr}: node 1 is not the leader"),
            leader: Some((2, leader_addr.clone())),
        }
    );
    // Reads at any level and STRONG writes stay on the pinned node too.
    client.get("k").await.expect_err("pinned linearizable read");
    client
        .with_write_level(WriteLevel::Strong)
        .put("k", "v")
        .await
        .expect_err("pinned strong write");
    let local = proto::WriteConsistency::Local as i32;
    let strong = proto::WriteConsistency::Strong as i32;
    let linearizable = proto::ReadConsistency::Linearizable as i32;
    assert_eq!(
        calls(&log, 0),
        [
            ("pinned", "put", local),
            ("pinned", "get", linearizable),
            ("pinned", "put", strong),
        ],
        "the leader is never called"
    );
    assert_eq!(client.leader_address(), pinned_addr);
}

#[tokio::test]
async fn any_node_levels_go_to_the_preferred_endpoint_and_strong_ones_to_the_leader() {
    let log = Log::default();
    let (leader_addr, _leader) = kv_server("leader", 2, Behaviour::Answer, &log).await;
    let (follower_addr, follower) = kv_server(
        "follower",
        1,
        Behaviour::RedirectTo {
            id: 2,
            addr: leader_addr.clone(),
        },
        &log,
    )
    .await;
    let client = Client::with_config(
        [follower_addr.as_str(), leader_addr.as_str()],
        fast_config(),
    )
    .expect("valid");

    // A STRONG write finds the leader.
    client.put("k", "v").await.expect("strong put");
    assert_eq!(client.leader_address(), leader_addr);
    assert_eq!(client.preferred_address(), follower_addr);
    // From now on the follower serves what it can serve itself.
    *follower.behaviour.lock().unwrap() = Behaviour::Answer;
    let start = log.lock().unwrap().len();

    let ms = Duration::from_millis;
    let budget = WriteLevel::StrongOrLocal {
        budget: Some(ms(40)),
    };
    let bounded = ReadLevel::Bounded {
        max_staleness: ms(100),
    };
    client
        .with_write_level(WriteLevel::Local)
        .put("k", "1")
        .await
        .expect("local");
    client
        .with_write_level(budget)
        .put("k", "2")
        .await
        .expect("strong-or-local");
    client
        .with_read_level(ReadLevel::Session)
        .get("k")
        .await
        .expect("session");
    client
        .with_read_level(bounded)
        .get("k")
        .await
        .expect("bounded");
    client
        .with_read_level(ReadLevel::Eventual)
        .get("k")
        .await
        .expect("eventual");
    client.get("k").await.expect("linearizable");
    client.put("k", "3").await.expect("strong");

    use proto::ReadConsistency as R;
    use proto::WriteConsistency as W;
    assert_eq!(
        calls(&log, start),
        [
            ("follower", "put", W::Local as i32),
            ("follower", "put", W::StrongOrLocal as i32),
            ("follower", "get", R::Session as i32),
            ("follower", "get", R::Bounded as i32),
            ("follower", "get", R::Eventual as i32),
            ("leader", "get", R::Linearizable as i32),
            ("leader", "put", W::Strong as i32),
        ]
    );
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen[start + 1].level_ms, 40, "strong_budget_ms");
    assert_eq!(seen[start + 3].level_ms, 100, "max_staleness_ms");
}

#[tokio::test]
async fn a_linearizable_read_served_by_a_follower_needs_no_redirect() {
    let log = Log::default();
    let (follower_addr, _follower) = kv_server("follower", 1, Behaviour::Answer, &log).await;
    let (leader_addr, _leader) = kv_server("leader", 2, Behaviour::Answer, &log).await;
    let client = Client::with_config(
        [follower_addr.as_str(), leader_addr.as_str()],
        fast_config(),
    )
    .expect("valid");
    let response = client.get("k").await.expect("served by the follower");
    assert_eq!(response.meta.expect("meta").served_by, 1);
    assert_eq!(calls(&log, 0).len(), 1);
}

#[tokio::test]
async fn any_node_levels_move_on_from_a_refusing_node_without_following_its_hint() {
    let log = Log::default();
    let (hinted_addr, _hinted) = kv_server("hinted", 3, Behaviour::Answer, &log).await;
    let (first_addr, _first) = kv_server(
        "first",
        1,
        Behaviour::RedirectTo {
            id: 3,
            addr: hinted_addr.clone(),
        },
        &log,
    )
    .await;
    let (second_addr, _second) = kv_server(
        "second",
        2,
        Behaviour::Unavailable("BOUNDED(100 ms) not met: last leader contact 350 ms ago".into()),
        &log,
    )
    .await;
    let config = ClientConfig {
        max_attempts: 2,
        ..fast_config()
    };
    let client = Client::with_config([first_addr.as_str(), second_addr.as_str()], config)
        .expect("valid")
        .with_read_level(ReadLevel::Bounded {
            max_staleness: Duration::from_millis(100),
        });
    let error = client.get("k").await.expect_err("no node meets the bound");
    // The last node's explanation comes through intact, after its address.
    assert_eq!(
        error,
        Error::Unavailable {
            message: format!(
                "{second_addr}: BOUNDED(100 ms) not met: last leader contact 350 ms ago"
            ),
            leader: None,
        }
    );
    let servers: Vec<&str> = calls(&log, 0).iter().map(|c| c.0).collect();
    assert_eq!(servers, ["first", "second"], "the hint is not followed");
    assert_eq!(client.preferred_address(), second_addr);
    assert_eq!(client.leader_address(), first_addr, "nothing learned");
}

#[tokio::test]
async fn a_failed_comparison_is_an_answer_not_an_error() {
    let log = Log::default();
    let (_, _leader, follower_addr) = leader_and_follower(&log).await;
    let client = Client::with_config([follower_addr.as_str()], fast_config()).expect("valid");

    let created = client
        .compare_and_set("k", Expected::Absent, "v1")
        .await
        .expect("absent: stored");
    assert!(created.succeeded);
    let v1 = created.version.expect("new version");
    // The redirect's retry reused the request id.
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|s| s.server).collect::<Vec<_>>(),
        ["follower", "leader"]
    );
    assert_eq!(seen[0].request_id, seen[1].request_id);
    assert_eq!(seen[1].consistency, proto::WriteConsistency::Strong as i32);

    let again = client
        .compare_and_set("k", Expected::Absent, "other")
        .await
        .expect("a failed comparison is Ok");
    assert!(!again.succeeded);
    assert!(again.current_found);
    assert_eq!(again.current_value, b"v1");
    assert_eq!(again.version, Some(v1));

    let updated = client
        .compare_and_set("k", Expected::Version(v1), "v2")
        .await
        .expect("version matches");
    assert!(updated.succeeded);
    let stale = client
        .compare_and_set("k", Expected::Version(v1), "v3")
        .await
        .expect("stale version: Ok");
    assert!(!stale.succeeded);
    assert_eq!(stale.version, updated.version);
    assert_eq!(stale.current_value, b"v2");

    // A session's compare-and-set learns its token like any write.
    let session = client.session();
    _leader.reply.lock().unwrap().session = Some(token(33, &[]));
    session
        .compare_and_set("k", Expected::Absent, "x")
        .await
        .expect("answer");
    assert_eq!(session.token(), token(33, &[]));
}

#[tokio::test]
async fn a_local_compare_and_set_is_a_failed_precondition() {
    let log = Log::default();
    let (addr, _node) = kv_server("only", 1, Behaviour::Answer, &log).await;
    let client = Client::with_config([addr.as_str()], fast_config())
        .expect("valid")
        .with_write_level(WriteLevel::Local);
    let error = client
        .compare_and_set("k", Expected::Absent, "v")
        .await
        .expect_err("LOCAL cannot compare-and-set");
    assert_eq!(
        error,
        Error::FailedPrecondition(
            "compare-and-set needs STRONG; LOCAL writes have no single order".into()
        )
    );
    assert_eq!(calls(&log, 0).len(), 1, "not retried");
}

// ----- put coalescing -------------------------------------------------------

fn coalescing_config() -> ClientConfig {
    ClientConfig {
        coalesce_puts: true,
        ..fast_config()
    }
}

/// Keys `{prefix}-{i}` with values of `i + 1` bytes, `i` in `0..count`.
fn numbered_puts(prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| (format!("{prefix}-{i}"), vec![b'x'; i + 1]))
        .collect()
}

/// Runs `puts` concurrently through `client`, returning their results in
/// order.
async fn concurrent_puts(
    client: &Client,
    puts: Vec<(String, Vec<u8>)>,
) -> Vec<Result<proto::PutResponse, Error>> {
    let tasks: Vec<_> = puts
        .into_iter()
        .map(|(key, value)| {
            let client = client.clone();
            tokio::spawn(async move { client.put(key, value).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("put task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_puts_share_calls_and_each_gets_its_own_answer() {
    let log = Log::default();
    let (leader_addr, leader, follower_addr) = leader_and_follower(&log).await;
    // The follower first: the first call is redirected as a whole.
    let client = Client::with_config([follower_addr.as_str()], coalescing_config()).expect("valid");
    let puts = 200;
    let results = concurrent_puts(&client, numbered_puts("k", puts)).await;
    for (i, result) in results.iter().enumerate() {
        // The fake's version is the value's length: each put got its own.
        let version = result.as_ref().expect("put").version.expect("version");
        assert_eq!(version.physical_ms, i as u64 + 1, "put {i}");
    }
    let calls = leader.put_many_calls.lock().unwrap().clone();
    assert_eq!(calls.iter().sum::<usize>(), puts, "{calls:?}");
    assert!(
        calls.len() < puts / 2 && calls.iter().all(|&n| n <= 256),
        "{puts} concurrent puts in {} calls: {calls:?}",
        calls.len()
    );
    let seen = log.lock().unwrap().clone();
    assert!(seen
        .iter()
        .all(|s| s.method == "put_many" && s.had_deadline));
    let answered: Vec<&Seen> = seen.iter().filter(|s| s.server == "leader").collect();
    let ids: std::collections::HashSet<&Vec<u8>> = answered.iter().map(|s| &s.request_id).collect();
    assert_eq!(ids.len(), puts, "every put keeps a request id of its own");
    // The redirected call's puts were resent with their request ids.
    for refused in seen.iter().filter(|s| s.server == "follower") {
        assert!(ids.contains(&refused.request_id));
    }
    assert_eq!(client.leader_address(), leader_addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_put_that_fails_alone_is_answered_alone() {
    let log = Log::default();
    let (addr, fake) = kv_server("leader", 1, Behaviour::Answer, &log).await;
    let client = Client::with_config([addr.as_str()], coalescing_config()).expect("valid");
    let keys = ["ok-1", "bad-1", "busy-1", "ok-2"];
    let puts = Vec::from(keys.map(|key| (key.to_string(), b"v".to_vec())));
    let results = concurrent_puts(&client, puts).await;
    assert!(results[0].is_ok() && results[3].is_ok(), "{results:?}");
    assert_eq!(
        results[1],
        Err(Error::InvalidArgument("key: refused by the fake".into()))
    );
    // UNAVAILABLE for one put: it was sent again alone (as a Put, with its
    // request id), and the fake's Put took it.
    assert!(results[2].is_ok(), "{:?}", results[2]);
    let seen = log.lock().unwrap().clone();
    let alone: Vec<&Seen> = seen.iter().filter(|s| s.method == "put").collect();
    assert_eq!(alone.len(), 1, "only the busy put went alone: {seen:?}");
    assert!(seen
        .iter()
        .any(|s| s.method == "put_many" && s.request_id == alone[0].request_id));

    // A node without PutMany: every put goes alone and succeeds.
    *fake.no_put_many.lock().unwrap() = true;
    let results = concurrent_puts(&client, numbered_puts("old", 20)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let alone = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "put")
        .count();
    assert_eq!(alone, 1 + 20);
}

#[tokio::test]
async fn a_coalesced_put_keeps_its_deadline_when_no_node_answers() {
    let dead = dead_address().await;
    let config = ClientConfig {
        timeout: Duration::from_millis(300),
        ..coalescing_config()
    };
    let client = Client::with_config([dead.as_str()], config).expect("valid");
    let started = std::time::Instant::now();
    let results = concurrent_puts(&client, numbered_puts("k", 5)).await;
    assert!(results.iter().all(Result::is_err), "{results:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the puts ended {:?} after they started",
        started.elapsed()
    );
}
