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
#[derive(Clone, Default)]
struct FakeNode {
    keys: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
    /// (sensor, timestamp) -> reading
    readings: Arc<Mutex<BTreeMap<(String, i64), proto::Reading>>>,
}

const NODE_ID: u64 = 1;

fn meta() -> Option<proto::ResponseMeta> {
    Some(proto::ResponseMeta {
        served_by: NODE_ID,
        write_consistency: proto::WriteConsistency::Strong as i32,
        read_consistency: proto::ReadConsistency::Linearizable as i32,
        applied_index: 42,
        term: 3,
        staleness_ms: Some(0),
        ..proto::ResponseMeta::default()
    })
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
        let request = request.into_inner();
        self.keys.lock().unwrap().insert(request.key, request.value);
        Ok(Response::new(proto::PutResponse {
            meta: meta(),
            version: version(7),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let key = request.into_inner().key;
        let value = self.keys.lock().unwrap().get(&key).cloned();
        Ok(Response::new(proto::GetResponse {
            meta: meta(),
            found: value.is_some(),
            value: value.unwrap_or_default(),
            version: version(7),
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let existed = self
            .keys
            .lock()
            .unwrap()
            .remove(&request.into_inner().key)
            .is_some();
        Ok(Response::new(proto::DeleteResponse {
            meta: meta(),
            version: version(8),
            existed,
        }))
    }
}

#[tonic::async_trait]
impl SensorService for FakeNode {
    async fn put_readings(
        &self,
        request: Request<proto::PutReadingsRequest>,
    ) -> Result<Response<proto::PutReadingsResponse>, Status> {
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
        Ok(Response::new(proto::PutReadingsResponse {
            meta: meta(),
            versions,
        }))
    }

    async fn latest_reading(
        &self,
        request: Request<proto::LatestReadingRequest>,
    ) -> Result<Response<proto::LatestReadingResponse>, Status> {
        let sensor = request.into_inner().sensor_id;
        let reading = self
            .readings
            .lock()
            .unwrap()
            .values()
            .rfind(|r| r.sensor_id == sensor)
            .cloned();
        Ok(Response::new(proto::LatestReadingResponse {
            meta: meta(),
            reading,
        }))
    }

    /// One reading per page, so the CLI has to follow tokens.
    async fn range_readings(
        &self,
        request: Request<proto::RangeReadingsRequest>,
    ) -> Result<Response<proto::RangeReadingsResponse>, Status> {
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
            meta: meta(),
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
            ..proto::NodeStatus::default()
        }))
    }
}

async fn start_node() -> String {
    let node = FakeNode::default();
    serve(
        Server::builder()
            .add_service(KvServiceServer::new(node.clone()))
            .add_service(SensorServiceServer::new(node.clone()))
            .add_service(AdminServiceServer::new(node)),
    )
    .await
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn capkv(endpoints: &str, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_capkv"))
        .args(["--endpoints", endpoints, "--timeout-ms", "2000"])
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
    let node = start_node().await;

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
    let node = start_node().await;
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
    let node = start_node().await;
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
    let node = start_node().await;
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
