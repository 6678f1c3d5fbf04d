//! Each row of DESIGN.md's write and read tables, on in-process clusters
//! partitioned through the shared link filter.

use std::time::Duration;
use std::time::Instant;

use capkv_node::types::Command;
use capkv_node::types::CommandResult;
use capkv_node::types::ProvisionalWrite;
use capkv_node::types::Version;
use capkv_node::types::WriteOp;
use capkv_proto::v1;
use capkv_proto::v1::compare_and_set_request::Expected;
use capkv_proto::v1::ReadConsistency as R;
use capkv_proto::v1::WriteConsistency as W;

use crate::cluster::eventually;
use crate::cluster::read_at;
use crate::cluster::write_at;
use crate::cluster::TestCluster;

/// The client deadline the fail-fast tests give their requests: failing
/// "fast" means well under it.
const CLIENT_DEADLINE: Duration = Duration::from_secs(20);

fn with_deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CLIENT_DEADLINE);
    request
}

/// A 3-node cluster with node `minority` cut off and a leader elected among
/// the other two. Returns the majority's leader.
async fn partitioned(minority: u64) -> (TestCluster, u64) {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.isolate(minority);
    let leader = cluster.leader_among_others(minority).await;
    (cluster, leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_on_an_isolated_follower_fails_fast() {
    let (cluster, _leader) = partitioned(3).await;
    let started = Instant::now();
    let request = v1::PutRequest {
        key: "k".into(),
        value: "v".into(),
        options: Some(write_at(W::Strong, None)),
    };
    let error = cluster
        .kv(3)
        .await
        .put(with_deadline(request))
        .await
        .expect_err("no quorum on node 3");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "failed after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_on_an_isolated_leader_fails_within_an_election_timeout() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let old_leader = cluster.leader().await;
    cluster.isolate(old_leader);
    // Sent at once: the old leader still believes in itself and proposes;
    // the quorum watchdog must end the wait, not the client deadline.
    let started = Instant::now();
    let request = v1::PutRequest {
        key: "k".into(),
        value: "v".into(),
        options: Some(write_at(W::Strong, None)),
    };
    let error = cluster
        .kv(old_leader)
        .await
        .put(with_deadline(request))
        .await
        .expect_err("no quorum");
    let elapsed = started.elapsed();
    assert_eq!(error.code(), tonic::Code::Unavailable, "{error:?}");
    assert!(error.message().contains("quorum"), "{}", error.message());
    assert!(
        elapsed < Duration::from_secs(5),
        "failed after {elapsed:?}, deadline {CLIENT_DEADLINE:?}"
    );
    // STRONG writes continue on the majority side.
    let new_leader = cluster.leader_among_others(old_leader).await;
    cluster
        .put_on(new_leader, "majority", "ok", write_at(W::Strong, None))
        .await
        .expect("majority write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_writes_succeed_on_both_sides_and_eventual_sees_them_at_once() {
    let (cluster, leader) = partitioned(3).await;
    let minority = cluster
        .put_on(3, "left", "from-3", write_at(W::Local, None))
        .await
        .expect("LOCAL on the minority");
    let majority = cluster
        .put_on(leader, "right", "from-majority", write_at(W::Local, None))
        .await
        .expect("LOCAL");
    for (response, node) in [(&minority, 3), (&majority, leader)] {
        let meta = response.meta.clone().unwrap();
        assert_eq!(meta.write_consistency, W::Local as i32);
        assert_eq!(meta.provisional_write.unwrap().origin_node, node);
        assert!(meta.session.unwrap().provisional_seq.contains_key(&node));
    }
    let seen = cluster
        .get_on(3, "left", read_at(R::Eventual))
        .await
        .unwrap();
    assert!(seen.found);
    assert_eq!(seen.value, b"from-3");
    let meta = seen.meta.unwrap();
    assert!(meta.includes_provisional);
    assert_eq!(meta.read_consistency, R::Eventual as i32);
    // The majority does not have it.
    let linearizable = cluster
        .get_on(leader, "left", read_at(R::Linearizable))
        .await
        .unwrap();
    assert!(!linearizable.found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_or_local_says_which_it_got() {
    let (cluster, leader) = partitioned(3).await;
    let degraded = v1::WriteOptions {
        strong_budget_ms: 300,
        ..write_at(W::StrongOrLocal, None)
    };
    let started = Instant::now();
    let minority = cluster
        .put_on(3, "sol", "minority", degraded.clone())
        .await
        .expect("degrades to LOCAL");
    assert_eq!(minority.meta.unwrap().write_consistency, W::Local as i32);
    assert!(started.elapsed() < Duration::from_secs(3));
    let majority = cluster
        .put_on(leader, "sol-2", "majority", degraded)
        .await
        .expect("STRONG");
    assert_eq!(majority.meta.unwrap().write_consistency, W::Strong as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_heal_every_node_converges_and_the_lww_winner_is_everywhere() {
    let (cluster, leader) = partitioned(3).await;
    let mut keys = Vec::new();
    for i in 0..5 {
        cluster
            .put_on(3, &format!("m{i}"), "minority", write_at(W::Local, None))
            .await
            .unwrap();
        cluster
            .put_on(
                leader,
                &format!("s{i}"),
                "strong",
                write_at(W::Strong, None),
            )
            .await
            .unwrap();
        keys.extend([format!("m{i}"), format!("s{i}")]);
    }
    // One key written LOCAL on both sides: the higher version must win.
    let first = cluster
        .put_on(3, "contested", "minority", write_at(W::Local, None))
        .await
        .unwrap();
    let second = cluster
        .put_on(leader, "contested", "majority", write_at(W::Local, None))
        .await
        .unwrap();
    keys.push("contested".into());
    let as_tuple = |v: &v1::Version| (v.physical_ms, v.logical, v.origin_node);
    let (v_min, v_maj) = (first.version.unwrap(), second.version.unwrap());
    let (winner, loser, winning_value) = if as_tuple(&v_min) > as_tuple(&v_maj) {
        (v_min, v_maj, "minority")
    } else {
        (v_maj, v_min, "majority")
    };

    let healed = Instant::now();
    cluster.heal();
    cluster.wait_converged().await;
    println!("heal to convergence: {} ms", healed.elapsed().as_millis());

    for key in &keys {
        let values: Vec<_> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.reads(id).get(key.as_bytes()).unwrap())
            .collect();
        assert!(values[0].is_some(), "{key} is present");
        assert!(
            values.windows(2).all(|w| w[0] == w[1]),
            "{key} identical on every node: {values:?}"
        );
    }
    let contested = cluster.reads(1).get(b"contested").unwrap().unwrap();
    assert_eq!(contested.value.as_deref(), Some(winning_value.as_bytes()));
    assert_eq!(
        as_tuple(&capkv_node::service::to_proto_version(contested.version)),
        as_tuple(&winner)
    );

    // The loser is in the conflict log of every node, identically.
    for id in cluster.ids() {
        let listed = cluster
            .admin(id)
            .await
            .list_conflicts(v1::ListConflictsRequest { limit: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.total, 1, "node {id}");
        let conflict = &listed.conflicts[0];
        assert_eq!(conflict.key, b"contested");
        assert_eq!(
            conflict.loser.as_ref().map(as_tuple),
            Some(as_tuple(&loser))
        );
        assert_eq!(
            conflict.winner.as_ref().map(as_tuple),
            Some(as_tuple(&winner))
        );
        assert_eq!(cluster.status_of(id).await.conflicts_recorded, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reads_see_a_local_write_made_on_another_node() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let written = cluster
        .put_on(3, "mine", "v1", write_at(W::Local, None))
        .await
        .unwrap();
    let token = written.meta.unwrap().session.unwrap();
    assert!(token.provisional_seq[&3] >= 1);
    let options = v1::ReadOptions {
        session: Some(token.clone()),
        ..read_at(R::Session)
    };
    let read = cluster
        .get_on(1, "mine", options)
        .await
        .expect("SESSION read through node 1");
    assert!(read.found, "read-your-writes across nodes");
    assert_eq!(read.value, b"v1");
    assert_eq!(read.meta.unwrap().read_consistency, R::Session as i32);

    // Cut node 3 off before it can reconcile the next write: node 1 cannot
    // serve the session, and says why instead of answering stale.
    cluster.isolate(3);
    let written = cluster
        .put_on(3, "mine", "v2", write_at(W::Local, Some(token)))
        .await
        .unwrap();
    let token = written.meta.unwrap().session.unwrap();
    let options = v1::ReadOptions {
        session: Some(token.clone()),
        ..read_at(R::Session)
    };
    let mut request = tonic::Request::new(v1::GetRequest {
        key: "mine".into(),
        options: Some(options.clone()),
    });
    request.set_timeout(Duration::from_millis(800));
    let error = cluster
        .kv(1)
        .await
        .get(request)
        .await
        .expect_err("node 1 lacks the session's write");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("SESSION") && error.message().contains("node 3"),
        "{}",
        error.message()
    );
    // Node 3 itself serves it: its own provisional write is visible there.
    let read = cluster
        .get_on(3, "mine", options.clone())
        .await
        .expect("SESSION on the accepting node");
    assert_eq!(read.value, b"v2");
    assert!(read.meta.unwrap().includes_provisional);
    // After the heal node 1 catches up and serves it.
    cluster.heal();
    let read = cluster
        .get_on(1, "mine", options)
        .await
        .expect("SESSION after heal");
    assert_eq!(read.value, b"v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_reads_are_refused_when_the_node_may_be_too_stale() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.leader().await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    cluster.must_put(leader, "b", "1").await;
    // The follower must hold the write before it is cut off (a BOUNDED read
    // below only promises freshness, not this write).
    cluster.wait_applied(cluster.applied_index(leader)).await;
    let bounded = |ms| v1::ReadOptions {
        max_staleness_ms: ms,
        ..read_at(R::Bounded)
    };
    // A healthy follower hears from the leader every heartbeat (50 ms).
    let read = eventually("a healthy follower to serve BOUNDED(500)", || async {
        cluster.get_on(follower, "b", bounded(500)).await.ok()
    })
    .await;
    let meta = read.meta.unwrap();
    assert_eq!(meta.read_consistency, R::Bounded as i32);
    assert!(meta.staleness_ms.unwrap() <= 500);

    cluster.isolate(follower);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let error = cluster
        .get_on(follower, "b", bounded(200))
        .await
        .expect_err("too stale");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("BOUNDED(200 ms)") && error.message().contains("EVENTUAL"),
        "{}",
        error.message()
    );
    // EVENTUAL is always served, and says how stale it may be when known.
    let eventual = cluster
        .get_on(follower, "b", read_at(R::Eventual))
        .await
        .expect("EVENTUAL");
    assert_eq!(eventual.value, b"1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_work_on_followers_and_fail_clearly_without_quorum() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.leader().await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    for i in 0..5 {
        cluster.must_put(leader, "counter", &i.to_string()).await;
        // Served by the follower itself (read index from the leader), and
        // never older than the write that just returned.
        let read = cluster
            .get_on(follower, "counter", read_at(R::Linearizable))
            .await
            .expect("follower read");
        assert_eq!(read.value, i.to_string().into_bytes());
        assert_eq!(read.meta.unwrap().served_by, follower);
    }
    cluster.isolate(follower);
    let started = Instant::now();
    let request = v1::GetRequest {
        key: "counter".into(),
        options: Some(read_at(R::Linearizable)),
    };
    let error = cluster
        .kv(follower)
        .await
        .get(with_deadline(request))
        .await
        .expect_err("no quorum");
    assert_eq!(error.code(), tonic::Code::Unavailable);
    assert!(
        error.message().contains("LINEARIZABLE read: no quorum")
            && error.message().contains("an EVENTUAL read would be served"),
        "{}",
        error.message()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_writes_survive_a_restart_and_reconcile_afterwards() {
    let (mut cluster, leader) = partitioned(3).await;
    cluster
        .put_on(3, "durable", "kept", write_at(W::Local, None))
        .await
        .unwrap();
    cluster.stop(3).await;
    cluster.restart(3).await;
    let seen = cluster
        .get_on(3, "durable", read_at(R::Eventual))
        .await
        .unwrap();
    assert_eq!(seen.value, b"kept", "pending write back after restart");
    assert_eq!(cluster.status_of(3).await.pending_provisional, 1);
    cluster.heal();
    cluster.wait_converged().await;
    let read = cluster
        .get_on(leader, "durable", read_at(R::Linearizable))
        .await
        .unwrap();
    assert_eq!(read.value, b"kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciliation_batch_proposed_twice_changes_nothing_the_second_time() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.leader().await;
    let version = |ms| Version {
        physical_ms: ms,
        logical: 0,
        origin_node: 2,
    };
    let writes: Vec<ProvisionalWrite> = (1..=3)
        .map(|seq| ProvisionalWrite {
            seq,
            request_id: format!("twice-{seq}").into_bytes(),
            version: version(1_000 + seq),
            op: WriteOp::Put {
                key: format!("twice-{seq}").into_bytes(),
                value: b"x".to_vec(),
            },
        })
        .collect();
    let command = Command::Reconcile { origin: 2, writes };
    let raft = &cluster.node(leader).raft;
    let first = raft.client_write(command.clone()).await.unwrap();
    let CommandResult::Reconciled(first) = first.data else {
        panic!("{:?}", first.data)
    };
    assert_eq!((first.applied, first.skipped), (3, 0));
    let before: Vec<_> = (1..=3)
        .map(|i| {
            cluster
                .reads(leader)
                .get(format!("twice-{i}").as_bytes())
                .unwrap()
        })
        .collect();
    let second = raft.client_write(command).await.unwrap();
    let CommandResult::Reconciled(second) = second.data else {
        panic!("{:?}", second.data)
    };
    assert_eq!(
        (second.applied, second.superseded, second.skipped),
        (0, 0, 3)
    );
    let after: Vec<_> = (1..=3)
        .map(|i| {
            cluster
                .reads(leader)
                .get(format!("twice-{i}").as_bytes())
                .unwrap()
        })
        .collect();
    assert_eq!(before, after);
    assert_eq!(cluster.status_of(leader).await.reconciled_seq[&2], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_is_strong_only_and_compares_exactly() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let leader = cluster.leader().await;
    let cas = |expected: Expected, value: &str, level: W| v1::CompareAndSetRequest {
        key: "reg".into(),
        expected: Some(expected),
        value: value.into(),
        options: Some(write_at(level, None)),
    };
    let mut kv = cluster.kv(leader).await;
    let send = |request| {
        let mut kv = kv.clone();
        async move { kv.compare_and_set(request).await.unwrap().into_inner() }
    };
    let created = send(cas(Expected::ExpectedAbsent(true), "a", W::Strong)).await;
    assert!(created.succeeded);
    let again = send(cas(Expected::ExpectedAbsent(true), "b", W::Strong)).await;
    assert!(!again.succeeded);
    assert!(again.current_found);
    assert_eq!(again.current_value, b"a");
    assert_eq!(again.version, created.version);
    let version = created.version.unwrap();
    let swapped = send(cas(Expected::ExpectedVersion(version), "c", W::Strong)).await;
    assert!(swapped.succeeded);
    let stale = send(cas(Expected::ExpectedVersion(version), "d", W::Strong)).await;
    assert!(!stale.succeeded);
    assert_eq!(stale.current_value, b"c");
    let local = kv
        .compare_and_set(cas(Expected::ExpectedAbsent(true), "e", W::Local))
        .await
        .expect_err("LOCAL CAS");
    assert_eq!(local.code(), tonic::Code::FailedPrecondition);
    assert!(
        local.message().contains("single order"),
        "{}",
        local.message()
    );
    assert_eq!(cluster.must_get(leader, "reg").await.value, b"c");
}
