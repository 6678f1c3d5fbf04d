//! The `capkv` binary against an in-memory fake node: output formats and exit
//! codes as a user or a script sees them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use capkv_client::proto;
use capkv_client::proto::admin_service_server::{AdminService, AdminServiceServer};
use capkv_client::proto::kv_service_server::{KvService, KvServiceServer};
use capkv_client::proto::sensor_service_server::{SensorService, SensorServiceServer};
use serde_json::Value;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

use super::{dead_address, serve};

/// One node that stores keys and readings in memory and says it leads.
///
/// It pretends to be a cluster without a quorum for STRONG_OR_LOCAL: those
/// writes fall back to LOCAL. STRONG writes advance its commit index, LOCAL
/// ones its provisional seq; every answer carries a session token saying so.
#[derive(Clone, Default)]
struct FakeNode {
    keys: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
    /// Per key, the version compare-and-set compares with.
    versions: Arc<Mutex<HashMap<Vec<u8>, proto::Version>>>,
    /// (sensor, timestamp) -> reading
    readings: Arc<Mutex<BTreeMap<(String, i64), proto::Reading>>>,
    commit_index: Arc<Mutex<u64>>,
    provisional_seq: Arc<Mutex<u64>>,
    /// What every data request asked for, in order.
    asked: Arc<Mutex<Vec<Asked>>>,
}

#[derive(Clone, Debug, PartialEq)]
struct Asked {
    method: &'static str,
    consistency: i32,
    session: Option<proto::SessionToken>,
    /// strong_budget_ms or max_staleness_ms.
    level_ms: u64,
}

const NODE_ID: u64 = 1;

fn session_token(commit_index: u64, provisional: &[(u64, u64)]) -> proto::SessionToken {
    proto::SessionToken {
        commit_index,
        provisional_seq: provisional.iter().copied().collect(),
    }
}

impl FakeNode {
    fn write_meta(
        &self,
        method: &'static str,
        options: Option<&proto::WriteOptions>,
    ) -> Option<proto::ResponseMeta> {
        let requested = options.map_or(0, |o| o.consistency);
        self.asked.lock().unwrap().push(Asked {
            method,
            consistency: requested,
            session: options.and_then(|o| o.session.clone()),
            level_ms: options.map_or(0, |o| o.strong_budget_ms),
        });
        let local = requested == proto::WriteConsistency::Local as i32
            || requested == proto::WriteConsistency::StrongOrLocal as i32;
        let commit_index = *self.commit_index.lock().unwrap();
        let (provided, provisional_write, session) = if local {
            let mut seq = self.provisional_seq.lock().unwrap();
            *seq += 1;
            (
                proto::WriteConsistency::Local,
                Some(proto::WriteId {
                    origin_node: NODE_ID,
                    seq: *seq,
                }),
                session_token(commit_index, &[(NODE_ID, *seq)]),
            )
        } else {
            let mut commit_index = self.commit_index.lock().unwrap();
            *commit_index += 1;
            (
                proto::WriteConsistency::Strong,
                None,
                session_token(*commit_index, &[]),
            )
        };
        Some(proto::ResponseMeta {
            served_by: NODE_ID,
            write_consistency: provided as i32,
            applied_index: 42,
            term: 3,
            staleness_ms: Some(0),
            session: Some(session),
            provisional_write,
            ..proto::ResponseMeta::default()
        })
    }

    fn read_meta(
        &self,
        method: &'static str,
        options: Option<&proto::ReadOptions>,
    ) -> Option<proto::ResponseMeta> {
        let requested = match options.map_or(0, |o| o.consistency) {
            0 => proto::ReadConsistency::Linearizable as i32,
            level => level,
        };
        self.asked.lock().unwrap().push(Asked {
            method,
            consistency: requested,
            session: options.and_then(|o| o.session.clone()),
            level_ms: options.map_or(0, |o| o.max_staleness_ms),
        });
        let linearizable = requested == proto::ReadConsistency::Linearizable as i32;
        Some(proto::ResponseMeta {
            served_by: NODE_ID,
            read_consistency: requested,
            applied_index: 42,
            term: 3,
            staleness_ms: linearizable.then_some(0),
            includes_provisional: requested == proto::ReadConsistency::Eventual as i32,
            session: Some(session_token(*self.commit_index.lock().unwrap(), &[])),
            ..proto::ResponseMeta::default()
        })
    }

    fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

fn version(physical_ms: u64) -> Option<proto::Version> {
    Some(proto::Version {
        physical_ms,
        logical: 0,
        origin_node: NODE_ID,
    })
}

#[tonic::async_trait]
impl KvService for FakeNode {
    async fn put(
        &self,
        request: Request<proto::PutRequest>,
    ) -> Result<Response<proto::PutResponse>, Status> {
        let meta = self.write_meta("put", request.get_ref().options.as_ref());
        let request = request.into_inner();
        self.versions
            .lock()
            .unwrap()
            .insert(request.key.clone(), version(7).unwrap());
        self.keys.lock().unwrap().insert(request.key, request.value);
        Ok(Response::new(proto::PutResponse {
            meta,
            version: version(7),
        }))
    }

    async fn put_many(
        &self,
        _request: Request<proto::PutManyRequest>,
    ) -> Result<Response<proto::PutManyResponse>, Status> {
        Err(Status::unimplemented("the CLI sends no PutMany"))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let meta = self.read_meta("get", request.get_ref().options.as_ref());
        let key = request.into_inner().key;
        let value = self.keys.lock().unwrap().get(&key).cloned();
        Ok(Response::new(proto::GetResponse {
            meta,
            found: value.is_some(),
            value: value.unwrap_or_default(),
            version: version(7),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let meta = self.write_meta("delete", request.get_ref().options.as_ref());
        let key = request.into_inner().key;
        self.versions
            .lock()
            .unwrap()
            .insert(key.clone(), version(8).unwrap());
        let existed = self.keys.lock().unwrap().remove(&key).is_some();
        Ok(Response::new(proto::DeleteResponse {
            meta,
            version: version(8),
            existed,
        }))
    }

    async fn compare_and_set(
        &self,
        request: Request<proto::CompareAndSetRequest>,
    ) -> Result<Response<proto::CompareAndSetResponse>, Status> {
        let meta = self.write_meta("cas", request.get_ref().options.as_ref());
        let request = request.into_inner();
        let mut keys = self.keys.lock().unwrap();
        let mut versions = self.versions.lock().unwrap();
        let current = versions.get(&request.key).copied();
        let live = keys.get(&request.key).cloned();
        let matches = match request.expected {
            Some(proto::compare_and_set_request::Expected::ExpectedVersion(v)) => {
                current == Some(v)
            }
            Some(proto::compare_and_set_request::Expected::ExpectedAbsent(true)) => live.is_none(),
            _ => return Err(Status::invalid_argument("expected is required")),
        };
        if !matches {
            return Ok(Response::new(proto::CompareAndSetResponse {
                meta,
                succeeded: false,
                version: current,
                current_found: live.is_some(),
                current_value: live.unwrap_or_default(),
            }));
        }
        let new_version = version(current.map_or(1, |v| v.physical_ms + 1)).unwrap();
        versions.insert(request.key.clone(), new_version);
        keys.insert(request.key, request.value);
        Ok(Response::new(proto::CompareAndSetResponse {
            meta,
            succeeded: true,
            version: Some(new_version),
            current_found: false,
            current_value: Vec::new(),
        }))
    }
}

#[tonic::async_trait]
impl SensorService for FakeNode {
    async fn put_readings(
        &self,
        request: Request<proto::PutReadingsRequest>,
    ) -> Result<Response<proto::PutReadingsResponse>, Status> {
        let meta = self.write_meta("put_readings", request.get_ref().options.as_ref());
        let request = request.into_inner();
        if request.readings.iter().any(|r| !r.value.is_finite()) {
            return Err(Status::invalid_argument("value must be finite"));
        }
        let mut versions = Vec::new();
        let mut readings = self.readings.lock().unwrap();
        for mut reading in request.readings {
            reading.version = version(reading.timestamp_ms as u64);
            versions.push(reading.version.unwrap());
            readings.insert((reading.sensor_id.clone(), reading.timestamp_ms), reading);
        }
        Ok(Response::new(proto::PutReadingsResponse { meta, versions }))
    }

    async fn latest_reading(
        &self,
        request: Request<proto::LatestReadingRequest>,
    ) -> Result<Response<proto::LatestReadingResponse>, Status> {
        let meta = self.read_meta("latest", request.get_ref().options.as_ref());
        let sensor = request.into_inner().sensor_id;
        let reading = self
            .readings
            .lock()
            .unwrap()
            .values()
            .rfind(|r| r.sensor_id == sensor)
            .cloned();
        Ok(Response::new(proto::LatestReadingResponse {
            meta,
            reading,
        }))
    }

    /// One reading per page, so the CLI has to follow tokens.
    async fn range_readings(
        &self,
        request: Request<proto::RangeReadingsRequest>,
    ) -> Result<Response<proto::RangeReadingsResponse>, Status> {
        let meta = self.read_meta("range", request.get_ref().options.as_ref());
        let request = request.into_inner();
        let after: Option<i64> = String::from_utf8_lossy(&request.page_token).parse().ok();
        let matching: Vec<proto::Reading> = self
            .readings
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.sensor_id == request.sensor_id)
            .filter(|r| request.from_ms.is_none_or(|from| r.timestamp_ms >= from))
            .filter(|r| request.to_ms.is_none_or(|to| r.timestamp_ms <= to))
            .filter(|r| after.is_none_or(|after| r.timestamp_ms > after))
            .cloned()
            .collect();
        let page: Vec<proto::Reading> = matching.iter().take(1).cloned().collect();
        let next_page_token = match page.first() {
            Some(last) if matching.len() > 1 => last.timestamp_ms.to_string().into_bytes(),
            _ => Vec::new(),
        };
        Ok(Response::new(proto::RangeReadingsResponse {
            meta,
            readings: page,
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl AdminService for FakeNode {
    async fn init(
        &self,
        request: Request<proto::InitRequest>,
    ) -> Result<Response<proto::InitResponse>, Status> {
        let members = request.into_inner().members;
        Ok(Response::new(proto::InitResponse {
            already_initialized: members.is_empty(),
            voters: members,
        }))
    }

    async fn add_learner(
        &self,
        _request: Request<proto::AddLearnerRequest>,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        Err(Status::failed_precondition("cluster is not initialized"))
    }

    async fn change_membership(
        &self,
        request: Request<proto::ChangeMembershipRequest>,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        let voters = request
            .into_inner()
            .voters
            .into_iter()
            .map(|id| proto::Member {
                id,
                addr: format!("n{id}:700{id}"),
            })
            .collect();
        Ok(Response::new(proto::MembershipResponse {
            voters,
            learners: Vec::new(),
            log_index: 12,
        }))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::NodeStatus>, Status> {
        Ok(Response::new(proto::NodeStatus {
            id: NODE_ID,
            role: "leader".into(),
            term: 3,
            leader_id: NODE_ID,
            last_log_index: 42,
            commit_index: 42,
            applied_index: 42,
            pending_provisional: 3,
            oldest_pending_age_ms: Some(1_250),
            conflicts_recorded: 5,
            reconciled_seq: HashMap::from([(2, 11), (1, 4)]),
            leader_contact_age_ms: Some(0),
            ..proto::NodeStatus::default()
        }))
    }

    /// A key that lost to a STRONG write and a reading that lost to another
    /// node's LOCAL write; five recorded ever.
    async fn list_conflicts(
        &self,
        request: Request<proto::ListConflictsRequest>,
    ) -> Result<Response<proto::ListConflictsResponse>, Status> {
        let conflicts = vec![
            proto::Conflict {
                key: b"config/mode".to_vec(),
                loser: version(1_795_255_200_100),
                loser_write: Some(proto::WriteId {
                    origin_node: 3,
                    seq: 7,
                }),
                winner: Some(proto::Version {
                    physical_ms: 1_795_255_200_200,
                    logical: 1,
                    origin_node: 2,
                }),
                log_index: 57,
                ..proto::Conflict::default()
            },
            proto::Conflict {
                sensor_id: "boiler-7".into(),
                timestamp_ms: 1_795_255_200_123,
                loser: version(1_795_255_200_300),
                loser_write: Some(proto::WriteId {
                    origin_node: 3,
                    seq: 9,
                }),
                winner: version(1_795_255_200_400),
                log_index: 61,
                ..proto::Conflict::default()
            },
        ];
        let limit = usize::try_from(request.into_inner().limit).unwrap_or(usize::MAX);
        Ok(Response::new(proto::ListConflictsResponse {
            conflicts: conflicts.into_iter().take(limit).collect(),
            total: 5,
        }))
    }
}

async fn start_node() -> (String, FakeNode) {
    let node = FakeNode::default();
    let addr = serve(
        Server::builder()
            .add_service(KvServiceServer::new(node.clone()))
            .add_service(SensorServiceServer::new(node.clone()))
            .add_service(AdminServiceServer::new(node.clone())),
    )
    .await;
    (addr, node)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn capkv(endpoints: &str, args: &[&str]) -> Run {
    let mut all = vec!["--endpoints", endpoints];
    all.extend_from_slice(args);
    capkv_with(&all).await
}

/// Runs capkv with exactly these arguments (plus a short timeout).
async fn capkv_with(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_capkv"))
        .args(["--timeout-ms", "2000"])
        .args(args)
        .env_remove("CAPKV_ENDPOINTS")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run capkv");
    Run {
        code: output.status.code().expect("exited"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", run.stdout))
}

#[tokio::test]
async fn cli_keys_text_and_json() {
    let (node, _fake) = start_node().await;

    let run = capkv(&node, &["get", "mode"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "(not found)\n"),
        "{}",
        run.stderr
    );

    let run = capkv(&node, &["put", "mode", "eco"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "ok version=7.0@1\n"),
        "{}",
        run.stderr
    );

    let run = capkv(&node, &["get", "mode"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "eco\n"));

    let run = capkv(&node, &["--output", "json", "get", "mode"]).await;
    let value = json(&run);
    assert_eq!(value["value"], "eco");
    assert_eq!(value["found"], true);
    assert_eq!(value["version"]["origin_node"], 1);
    assert_eq!(value["meta"]["served_by"], 1);
    assert_eq!(value["meta"]["read_consistency"], "LINEARIZABLE");
    assert_eq!(value["meta"]["staleness_ms"], 0);

    let run = capkv(&node, &["delete", "mode", "--output", "json"]).await;
    let value = json(&run);
    assert_eq!(value["existed"], true);
    assert_eq!(value["meta"]["write_consistency"], "STRONG");
}

#[tokio::test]
async fn cli_readings_put_latest_and_range() {
    let (node, _fake) = start_node().await;
    for (ts, value) in [
        ("2026-11-21T10:00:00.123Z", "81.5"),
        ("2026-11-21T10:01:00Z", "-2"),
    ] {
        let run = capkv(
            &node,
            &[
                "reading",
                "put",
                "boiler-7",
                value,
                "--ts",
                ts,
                "--tag",
                "site=north",
            ],
        )
        .await;
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let run = capkv(&node, &["reading", "latest", "boiler-7"]).await;
    assert_eq!(
        run.stdout,
        "boiler-7 2026-11-21T10:01:00.000Z -2 site=north version=1795255260000.0@1\n"
    );

    let run = capkv(
        &node,
        &["reading", "range", "boiler-7", "--from", "1795255200000"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert!(run
        .stdout
        .starts_with("boiler-7 2026-11-21T10:00:00.123Z 81.5 site=north"));

    let run = capkv(
        &node,
        &[
            "--output", "json", "reading", "range", "boiler-7", "--limit", "1",
        ],
    )
    .await;
    let value = json(&run);
    assert_eq!(value["count"], 1);
    assert_eq!(value["more"], true);
    assert_eq!(value["readings"][0]["timestamp_ms"], 1_795_255_200_123_i64);
    assert_eq!(value["readings"][0]["tags"]["site"], "north");

    let run = capkv(&node, &["reading", "latest", "no-such-sensor"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "(no readings)\n"));
}

#[tokio::test]
async fn cli_cluster_commands() {
    let (node, _fake) = start_node().await;
    let dead = dead_address().await;
    let endpoints = format!("{node},{dead}");

    let run = capkv(&endpoints, &["cluster", "status"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("leader: 1  term: 3\n"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("unreachable"), "{}", run.stdout);

    let run = capkv(&endpoints, &["--output", "json", "cluster", "status"]).await;
    let value = json(&run);
    assert_eq!(value["leader"], 1);
    assert_eq!(value["nodes"].as_array().map(Vec::len), Some(2));
    assert_eq!(value["nodes"][0]["reachable"], true);
    assert_eq!(value["nodes"][0]["applied_index"], 42);
    assert_eq!(value["nodes"][1]["reachable"], false);
    assert!(value["nodes"][1]["error"].is_string());

    let run = capkv(&node, &["cluster", "init"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "already initialized; voters: (none)\n")
    );
    let run = capkv(
        &node,
        &[
            "cluster",
            "init",
            "--members",
            "1=127.0.0.11:7001,2=127.0.0.12:7002",
        ],
    )
    .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (
            0,
            "initialized; voters: 1=127.0.0.11:7001, 2=127.0.0.12:7002\n"
        )
    );

    let run = capkv(&node, &["cluster", "change-membership", "1", "2"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("log_index: 12"), "{}", run.stdout);
}

#[tokio::test]
async fn cli_errors_go_to_stderr_with_exit_code_1_and_usage_errors_exit_2() {
    let (node, _fake) = start_node().await;
    let run = capkv(&node, &["cluster", "add-learner", "4", "n4:7004"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "error: failed precondition: cluster is not initialized\n"
    );

    let run = capkv(&dead_address().await, &["get", "k"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);

    let run = capkv(&node, &["reading", "put", "s", "NaN"]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("not a finite number"), "{}", run.stderr);
}

/// A session file path in a fresh directory of its own.
fn session_path(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("capkv-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("session.json")
}

fn read_json_file(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).expect("session file written");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn cli_cas_exits_3_when_the_comparison_fails() {
    let (node, fake) = start_node().await;
    let run = capkv(&node, &["put", "mode", "eco"]).await;
    assert_eq!(run.stdout, "ok version=7.0@1\n", "{}", run.stderr);

    let run = capkv(
        &node,
        &["cas", "mode", "comfort", "--expect-version", "7.0@1"],
    )
    .await;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (0, "ok version=8.0@1\n", "")
    );

    // The same expectation again is stale now.
    let run = capkv(&node, &["cas", "mode", "off", "--expect-version", "7.0@1"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str(), run.stderr.as_str()),
        (
            3,
            "",
            "compare failed: current version 8.0@1 (value \"comfort\")\n"
        )
    );

    let run = capkv(&node, &["cas", "fresh", "1", "--expect-absent"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "ok version=1.0@1\n"));
    let run = capkv(
        &node,
        &["--output", "json", "cas", "fresh", "2", "--expect-absent"],
    )
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        run.stderr,
        "compare failed: current version 1.0@1 (value \"1\")\n"
    );
    let value = json(&run);
    assert_eq!(value["succeeded"], false);
    assert_eq!(value["current_found"], true);
    assert_eq!(value["current_value"], "1");
    assert_eq!(value["version"]["physical_ms"], 1);
    assert_eq!(value["meta"]["write_consistency"], "STRONG");

    let run = capkv(&node, &["delete", "fresh"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = capkv(&node, &["cas", "fresh", "3", "--expect-version", "7.0@1"]).await;
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (3, "compare failed: current version 8.0@1 (deleted)\n")
    );

    let strong = proto::WriteConsistency::Strong as i32;
    assert!(fake
        .asked()
        .iter()
        .filter(|a| a.method == "cas")
        .all(|a| a.consistency == strong && a.session.is_none()));

    // A malformed version is a usage error.
    let run = capkv(&node, &["cas", "mode", "x", "--expect-version", "8@1"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("physical_ms.logical@origin_node"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn cli_session_file_carries_the_merged_token_across_commands() {
    let (node, fake) = start_node().await;
    let path = session_path("session");
    let file = path.to_str().expect("utf-8 path");

    // Two STRONG writes elsewhere first: commit index 2.
    for _ in 0..2 {
        assert_eq!(capkv(&node, &["put", "other", "x"]).await.code, 0);
    }
    let run = capkv(
        &node,
        &[
            "--session-file",
            file,
            "put",
            "mode",
            "eco",
            "--consistency",
            "local",
        ],
    )
    .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "ok version=7.0@1 (provisional write 1:1)\n"),
        "{}",
        run.stderr
    );
    assert_eq!(
        read_json_file(&path),
        serde_json::json!({"commit_index": 2, "provisional_seq": {"1": 1}})
    );

    // A STRONG write through the session moves the commit index.
    let run = capkv(&node, &["--session-file", file, "put", "mode", "comfort"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        read_json_file(&path),
        serde_json::json!({"commit_index": 3, "provisional_seq": {"1": 1}})
    );

    // Reads with the session file default to SESSION and carry the token.
    let run = capkv(&node, &["--session-file", file, "get", "mode"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "comfort\n"));
    let run = capkv(
        &node,
        &[
            "--session-file",
            file,
            "get",
            "mode",
            "--consistency",
            "eventual",
        ],
    )
    .await;
    assert_eq!(run.stdout, "comfort\n");
    assert_eq!(run.stderr, "(includes provisional data)\n");
    // Without it: LINEARIZABLE, no token.
    let run = capkv(&node, &["get", "mode"]).await;
    assert_eq!(run.code, 0);

    let asked = fake.asked();
    let gets: Vec<(i32, Option<proto::SessionToken>)> = asked
        .iter()
        .filter(|a| a.method == "get")
        .map(|a| (a.consistency, a.session.clone()))
        .collect();
    assert_eq!(
        gets,
        [
            (
                proto::ReadConsistency::Session as i32,
                Some(session_token(3, &[(1, 1)]))
            ),
            (
                proto::ReadConsistency::Eventual as i32,
                Some(session_token(3, &[(1, 1)]))
            ),
            (proto::ReadConsistency::Linearizable as i32, None),
        ]
    );
    let puts: Vec<Option<proto::SessionToken>> = asked
        .iter()
        .filter(|a| a.method == "put")
        .map(|a| a.session.clone())
        .collect();
    assert_eq!(
        puts,
        [
            None,
            None,
            Some(session_token(0, &[])),
            Some(session_token(2, &[(1, 1)]))
        ]
    );

    // A failed command leaves the file alone.
    let before = std::fs::read_to_string(&path).expect("file");
    let run = capkv(
        &dead_address().await,
        &["--session-file", file, "put", "mode", "off"],
    )
    .await;
    assert_eq!(run.code, 1);
    assert_eq!(std::fs::read_to_string(&path).expect("file"), before);

    // A corrupt file is an error, not a silently fresh session.
    std::fs::write(&path, "{\"commit_index\": \"many\"}").expect("write");
    let run = capkv(&node, &["--session-file", file, "get", "mode"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("commit_index"), "{}", run.stderr);
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

#[tokio::test]
async fn cli_levels_reach_the_node_and_show_in_the_output() {
    let (node, fake) = start_node().await;

    // --endpoint: exactly that node.
    let run = capkv_with(&[
        "--endpoint",
        &node,
        "put",
        "mode",
        "eco",
        "--consistency",
        "strong-or-local:50",
    ])
    .await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (
            0,
            "ok version=7.0@1 (stored as LOCAL: no quorum within budget) (provisional write 1:1)\n"
        ),
        "{}",
        run.stderr
    );

    let run = capkv_with(&[
        "--endpoint",
        &node,
        "--output",
        "json",
        "reading",
        "put",
        "boiler-7",
        "81.5",
        "--ts",
        "1795255200123",
        "--consistency",
        "local",
    ])
    .await;
    let value = json(&run);
    assert_eq!(value["meta"]["write_consistency"], "LOCAL");
    assert_eq!(
        value["meta"]["provisional_write"],
        serde_json::json!({"origin_node": 1, "seq": 2})
    );
    assert_eq!(
        value["meta"]["session"],
        serde_json::json!({"commit_index": 0, "provisional_seq": {"1": 2}})
    );

    let run = capkv(
        &node,
        &["reading", "latest", "boiler-7", "--consistency", "eventual"],
    )
    .await;
    assert_eq!(
        run.stdout,
        "boiler-7 2026-11-21T10:00:00.123Z 81.5 version=1795255200123.0@1\n"
    );
    assert_eq!(run.stderr, "(includes provisional data)\n");

    let run = capkv(
        &node,
        &[
            "--output",
            "json",
            "reading",
            "range",
            "boiler-7",
            "--consistency",
            "bounded:250",
        ],
    )
    .await;
    let value = json(&run);
    assert_eq!(value["count"], 1);
    assert_eq!(value["meta"]["read_consistency"], "BOUNDED");
    assert_eq!(value["meta"]["staleness_ms"], Value::Null);
    assert_eq!(value["meta"]["includes_provisional"], false);
    assert_eq!(value["meta"]["provisional_write"], Value::Null);

    let run = capkv(&node, &["delete", "mode", "--consistency", "local"]).await;
    assert_eq!(
        run.stdout,
        "deleted tombstone version=8.0@1 (provisional write 1:3)\n"
    );

    use proto::ReadConsistency as R;
    use proto::WriteConsistency as W;
    let asked: Vec<(&str, i32, u64)> = fake
        .asked()
        .iter()
        .map(|a| (a.method, a.consistency, a.level_ms))
        .collect();
    assert_eq!(
        asked,
        [
            ("put", W::StrongOrLocal as i32, 50),
            ("put_readings", W::Local as i32, 0),
            ("latest", R::Eventual as i32, 0),
            ("range", R::Bounded as i32, 250),
            ("delete", W::Local as i32, 0),
        ]
    );

    // A bad level is a usage error that lists the accepted ones.
    let run = capkv(&node, &["get", "mode", "--consistency", "local"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("linearizable, session, bounded:<ms>"),
        "{}",
        run.stderr
    );
    let run = capkv_with(&["--endpoint", &node, "--endpoints", &node, "get", "k"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}

#[tokio::test]
async fn cli_cluster_conflicts_and_reconciliation_status() {
    let (node, _fake) = start_node().await;
    let run = capkv(&node, &["cluster", "conflicts"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "config/mode loser=1795255200100.0@1 (write 3:7) winner=1795255200200.1@2 log_index=57\n\
         boiler-7@2026-11-21T10:00:00.123Z loser=1795255200300.0@1 (write 3:9) \
         winner=1795255200400.0@1 log_index=61\n\
         total: 5 (showing the 2 most recent)\n"
    );

    let run = capkv(
        &node,
        &["--output", "json", "cluster", "conflicts", "--limit", "1"],
    )
    .await;
    let value = json(&run);
    assert_eq!(value["total"], 5);
    assert_eq!(
        value["conflicts"],
        serde_json::json!([{
            "key": "config/mode",
            "sensor_id": null,
            "timestamp_ms": null,
            "loser": {"physical_ms": 1_795_255_200_100_u64, "logical": 0, "origin_node": 1},
            "loser_write": {"origin_node": 3, "seq": 7},
            "winner": {"physical_ms": 1_795_255_200_200_u64, "logical": 1, "origin_node": 2},
            "log_index": 57,
        }])
    );

    let run = capkv(&node, &["cluster", "status"]).await;
    let mut lines = run.stdout.lines().skip(1);
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    let row: Vec<&str> = lines.next().expect("row").split_whitespace().collect();
    let column = |name: &str| row[header.iter().position(|h| *h == name).expect(name)];
    assert_eq!(
        (column("pending"), column("oldest_ms"), column("conflicts")),
        ("3", "1250", "5")
    );

    let run = capkv(&node, &["--output", "json", "cluster", "status"]).await;
    let value = json(&run);
    let status = &value["nodes"][0];
    assert_eq!(status["pending_provisional"], 3);
    assert_eq!(status["oldest_pending_age_ms"], 1250);
    assert_eq!(status["conflicts_recorded"], 5);
    assert_eq!(status["leader_contact_age_ms"], 0);
    assert_eq!(
        status["reconciled_seq"],
        serde_json::json!({"1": 4, "2": 11})
    );

    let dead = dead_address().await;
    let run = capkv_with(&["--endpoint", &dead, "cluster", "conflicts"]).await;
    assert_eq!(run.code, 1);
}
