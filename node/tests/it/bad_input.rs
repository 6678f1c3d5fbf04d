//! Bad input is answered with INVALID_ARGUMENT naming the field, and changes
//! nothing.

use std::collections::HashMap;

use capkv_proto::v1;

use crate::cluster::local_value;
use crate::cluster::TestCluster;

fn reading(sensor: &str, ts: i64, value: f64) -> v1::Reading {
    v1::Reading {
        sensor_id: sensor.into(),
        timestamp_ms: ts,
        value,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_request_is_invalid_argument_and_changes_nothing() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.settled_leader().await;
    let applied_before = cluster.applied_index(leader);
    let too_many_tags: HashMap<String, String> = (0..17)
        .map(|i| (format!("t{i}"), "v".to_string()))
        .collect();

    // (case, expected words in the message, the call's result)
    let mut outcomes: Vec<(&str, &str, Result<(), tonic::Status>)> = Vec::new();
    let mut sensors = cluster.sensors(leader).await;
    let mut kv = cluster.kv(leader).await;
    let readings_cases: Vec<(&str, &str, Vec<v1::Reading>)> = vec![
        (
            "empty sensor id",
            "readings[0].sensor_id is empty",
            vec![reading("", 1, 1.0)],
        ),
        (
            "long sensor id",
            "readings[0].sensor_id is 257 bytes",
            vec![reading(&"s".repeat(257), 1, 1.0)],
        ),
        (
            "NaN",
            "readings[1].value is NaN",
            vec![reading("ok", 1, 1.0), reading("ok", 2, f64::NAN)],
        ),
        (
            "infinity",
            "value is -inf",
            vec![reading("ok", 1, f64::NEG_INFINITY)],
        ),
        (
            "negative timestamp",
            "timestamp_ms is -5",
            vec![reading("ok", -5, 1.0)],
        ),
        (
            "timestamp after 9999",
            "outside",
            vec![reading("ok", 253_402_300_800_000, 1.0)],
        ),
        (
            "oversize batch",
            "more than the limit of 10000",
            vec![reading("ok", 1, 1.0); 10_001],
        ),
        ("empty batch", "readings is empty", vec![]),
        (
            "too many tags",
            "17 tags",
            vec![v1::Reading {
                tags: too_many_tags,
                ..reading("ok", 1, 1.0)
            }],
        ),
    ];
    for (case, expected, readings) in readings_cases {
        let result = sensors
            .put_readings(v1::PutReadingsRequest {
                readings,
                options: None,
            })
            .await
            .map(|_| ());
        outcomes.push((case, expected, result));
    }
    let put = |key: Vec<u8>, value: Vec<u8>| v1::PutRequest {
        key,
        value,
        options: None,
    };
    for (case, expected, request) in [
        ("empty key", "key is empty", put(vec![], b"v".to_vec())),
        (
            "long key",
            "key is 1025 bytes",
            put(vec![b'k'; 1025], b"v".to_vec()),
        ),
        (
            "long value",
            "value is 1048577 bytes",
            put(b"k".to_vec(), vec![0; 1024 * 1024 + 1]),
        ),
        (
            "unknown write level",
            "options.consistency 99",
            v1::PutRequest {
                options: Some(v1::WriteOptions {
                    consistency: 99,
                    ..Default::default()
                }),
                ..put(b"k".to_vec(), b"v".to_vec())
            },
        ),
    ] {
        outcomes.push((case, expected, kv.put(request).await.map(|_| ())));
    }
    let get = kv
        .get(v1::GetRequest {
            key: vec![],
            options: None,
        })
        .await
        .map(|_| ());
    outcomes.push(("get with empty key", "key is empty", get));
    let delete = kv
        .delete(v1::DeleteRequest {
            key: vec![b'k'; 2000],
            options: None,
        })
        .await
        .map(|_| ());
    outcomes.push(("delete with long key", "key is 2000 bytes", delete));
    let latest = sensors
        .latest_reading(v1::LatestReadingRequest {
            sensor_id: String::new(),
            options: None,
        })
        .await
        .map(|_| ());
    outcomes.push(("latest with empty sensor", "sensor_id is empty", latest));
    let range = sensors
        .range_readings(v1::RangeReadingsRequest {
            sensor_id: "ok".into(),
            limit: 10_001,
            ..Default::default()
        })
        .await
        .map(|_| ());
    outcomes.push(("range limit too high", "limit 10001", range));
    let token = sensors
        .range_readings(v1::RangeReadingsRequest {
            sensor_id: "ok".into(),
            page_token: vec![1, 2],
            ..Default::default()
        })
        .await
        .map(|_| ());
    outcomes.push(("garbage page token", "page_token is malformed", token));

    for (case, expected, result) in outcomes {
        let status = result.expect_err(case);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{case}: {status:?}"
        );
        assert!(
            status.message().contains(expected),
            "{case}: {:?} should contain {expected:?}",
            status.message()
        );
    }
    // Nothing was proposed: the log did not move and no reading exists.
    assert_eq!(cluster.applied_index(leader), applied_before);
    assert!(cluster
        .reads(leader)
        .latest_reading("ok")
        .unwrap()
        .is_none());
}

/// Sends `bytes` on a new connection to `addr` and waits for the node to
/// close it.
async fn closed_after(addr: std::net::SocketAddr, bytes: &[u8]) -> bool {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut rest)
        )
        .await,
        Ok(Ok(0))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_raft_frames_close_their_connection_and_change_nothing() {
    use capkv_node::network::wire::RpcKind;
    use capkv_node::network::wire::RAFT_PREFACE;

    let cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.settled_leader().await;
    let term = cluster.status_of(leader).await.term;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let frame = |kind: u8, len: u32, payload: &[u8]| {
        let mut bytes = RAFT_PREFACE.to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    };
    let cases = [
        ("unknown kind", frame(9, 0, b"")),
        (
            "length over the limit",
            frame(RpcKind::AppendEntries as u8, u32::MAX, b""),
        ),
        ("undecodable vote", frame(RpcKind::Vote as u8, 3, b"xyz")),
        (
            "undecodable append",
            frame(RpcKind::AppendEntries as u8, 1, b"\x07"),
        ),
    ];
    for (case, bytes) in cases {
        assert!(closed_after(cluster.addr(follower), &bytes).await, "{case}");
    }
    // The follower still follows the same leader and replicates.
    cluster.must_put(leader, "after-bad-frames", "v").await;
    cluster.wait_applied(cluster.applied_index(leader)).await;
    assert_eq!(
        local_value(&cluster.reads(follower), "after-bad-frames"),
        Some("v".to_string())
    );
    let status = cluster.status_of(follower).await;
    assert_eq!((status.term, cluster.leader().await), (term, leader));
}
