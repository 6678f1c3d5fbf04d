//! An in-process cluster of real nodes (real tonic servers on 127.0.0.1,
//! port 0, real sled directories) that tests can stop and restart.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use capkv_node::config::NodeConfig;
use capkv_node::network::LinkFilter;
use capkv_node::store::ReadView;
use capkv_node::RunningNode;
use capkv_proto::metadata;
use capkv_proto::v1;
use capkv_proto::v1::admin_service_client::AdminServiceClient;
use capkv_proto::v1::kv_service_client::KvServiceClient;
use capkv_proto::v1::sensor_service_client::SensorServiceClient;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::Status;

/// How long a test waits for the cluster to reach a state before failing.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Redirects a test client follows before giving up.
const MAX_REDIRECTS: usize = 10;

/// Short timeouts keep tests fast; still 5x the heartbeat so a loaded CI
/// machine does not flap.
pub fn fast_config(config: &mut NodeConfig) {
    config.heartbeat_interval_ms = 50;
    config.election_timeout_min_ms = 300;
    config.election_timeout_max_ms = 600;
}

pub struct TestCluster {
    /// Shared by every node: cutting a link here partitions the cluster.
    links: Arc<LinkFilter>,
    /// Holds the nodes' data directories until the cluster is dropped.
    _dir: TempDir,
    configs: BTreeMap<u64, NodeConfig>,
    addrs: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, RunningNode>,
}

/// Polls `check` until it returns `Some`, or panics after `WAIT_LIMIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT_LIMIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many random ports [`bind_outside_ephemeral_ports`] tries.
const BIND_ATTEMPTS_MAX: usize = 500;

/// Binds 127.0.0.1 on a free port below the kernel's ephemeral range. A
/// restarted node binds its old port again; had the port come from the
/// ephemeral range, an outgoing connection of a concurrent test could hold it
/// by then ("address already in use").
async fn bind_outside_ephemeral_ports() -> TcpListener {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let ports = 10_000..ephemeral_low.max(10_001);
    for _ in 0..BIND_ATTEMPTS_MAX {
        let port = rand::Rng::gen_range(&mut rand::thread_rng(), ports.clone());
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
    panic!("no free port in {ports:?} after {BIND_ATTEMPTS_MAX} attempts");
}

impl TestCluster {
    /// Starts `size` nodes, initializes the cluster and waits for a leader.
    pub async fn start(size: u64, tweak: impl Fn(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=size {
            let listener = bind_outside_ephemeral_ports().await;
            addrs.insert(id, listener.local_addr().expect("local addr"));
            listeners.insert(id, listener);
        }
        let peers: BTreeMap<u64, String> =
            addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
        let mut configs = BTreeMap::new();
        for id in 1..=size {
            let mut config = NodeConfig::new(
                id,
                addrs[&id].to_string(),
                dir.path().join(format!("node{id}")),
            );
            config.peers = peers.clone();
            fast_config(&mut config);
            tweak(&mut config);
            configs.insert(id, config);
        }
        let mut cluster = Self {
            links: Arc::new(LinkFilter::default()),
            _dir: dir,
            configs,
            addrs,
            nodes: BTreeMap::new(),
        };
        for (id, listener) in listeners {
            let node = capkv_node::start_with_links(
                &cluster.configs[&id],
                listener,
                cluster.links.clone(),
            )
            .await
            .expect("start node");
            cluster.nodes.insert(id, node);
        }
        let init = cluster
            .admin(1)
            .await
            .init(v1::InitRequest::default())
            .await
            .expect("init")
            .into_inner();
        assert!(!init.already_initialized);
        assert_eq!(init.voters.len() as u64, size);
        cluster.leader().await;
        cluster
    }

    pub fn ids(&self) -> Vec<u64> {
        self.configs.keys().copied().collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> &RunningNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.addrs[&id]
    }

    pub fn reads(&self, id: u64) -> ReadView {
        self.node(id).read_view()
    }

    pub async fn stop(&mut self, id: u64) {
        let node = self
            .nodes
            .remove(&id)
            .unwrap_or_else(|| panic!("node {id} is not running"));
        node.shutdown().await.expect("shutdown");
    }

    /// Restarts a stopped node on its old address and data directory.
    pub async fn restart(&mut self, id: u64) {
        assert!(!self.nodes.contains_key(&id), "node {id} is running");
        let listener = TcpListener::bind(self.addrs[&id])
            .await
            .expect("rebind the node's address");
        let node = capkv_node::start_with_links(&self.configs[&id], listener, self.links.clone())
            .await
            .expect("restart node");
        self.nodes.insert(id, node);
    }

    /// Waits until every running node names the same leader, and returns it.
    pub async fn leader(&self) -> u64 {
        eventually("a leader every running node agrees on", || async {
            let leaders: Vec<Option<u64>> = self
                .nodes
                .values()
                .map(|n| n.raft.metrics().borrow().current_leader)
                .collect();
            let first = leaders.first().copied().flatten()?;
            let agreed =
                leaders.iter().all(|l| *l == Some(first)) && self.nodes.contains_key(&first);
            agreed.then_some(first)
        })
        .await
    }

    /// Cuts `node` off from every other node (both directions).
    pub fn isolate(&self, node: u64) {
        self.links.isolate(node, self.ids());
    }

    pub fn heal(&self) {
        self.links.heal();
    }

    /// [`Self::leader`], once the leader has applied every entry of its log,
    /// including the blank entry it appends when elected: from then on the
    /// applied index moves only for what the test proposes.
    pub async fn settled_leader(&self) -> u64 {
        let leader = self.leader().await;
        eventually("the leader to apply its whole log", || async {
            let metrics = self.node(leader).raft.metrics().borrow().clone();
            let applied = metrics.last_applied.map(|l| l.index);
            (metrics.current_leader == Some(leader)
                && metrics.last_log_index.is_some()
                && applied >= metrics.last_log_index)
                .then_some(())
        })
        .await;
        leader
    }

    /// Waits until the nodes other than `excluded` agree on a leader among
    /// themselves, and returns it.
    pub async fn leader_among_others(&self, excluded: u64) -> u64 {
        eventually(
            &format!("a leader among the nodes other than {excluded}"),
            || async {
                let leaders: Vec<Option<u64>> = self
                    .nodes
                    .iter()
                    .filter(|(id, _)| **id != excluded)
                    .map(|(_, n)| n.raft.metrics().borrow().current_leader)
                    .collect();
                let first = leaders.first().copied().flatten()?;
                (first != excluded && leaders.iter().all(|l| *l == Some(first))).then_some(first)
            },
        )
        .await
    }

    pub fn applied_index(&self, id: u64) -> u64 {
        self.node(id)
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64) {
        eventually(
            &format!("every running node to apply index {index}"),
            || async {
                self.nodes
                    .keys()
                    .all(|id| self.applied_index(*id) >= index)
                    .then_some(())
            },
        )
        .await
    }

    async fn channel(&self, id: u64) -> Channel {
        Channel::from_shared(format!("http://{}", self.addrs[&id]))
            .expect("uri")
            .connect_lazy()
    }

    pub async fn kv(&self, id: u64) -> KvServiceClient<Channel> {
        KvServiceClient::new(self.channel(id).await)
    }

    pub async fn sensors(&self, id: u64) -> SensorServiceClient<Channel> {
        SensorServiceClient::new(self.channel(id).await)
    }

    pub async fn admin(&self, id: u64) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(id).await)
    }

    fn id_of(&self, addr: &str) -> Option<u64> {
        self.addrs
            .iter()
            .find(|(_, a)| a.to_string() == addr)
            .map(|(id, _)| *id)
    }

    /// Sends a request to `first`, following not-leader redirects (and
    /// retrying while no leader is known) the way the SDK does.
    pub async fn call<T, F, Fut>(&self, first: u64, mut send: F) -> Result<T, Status>
    where
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut target = first;
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        let mut redirects = 0;
        loop {
            match send(target).await {
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    let leader = status
                        .metadata()
                        .get(metadata::LEADER_ADDR)
                        .and_then(|v| v.to_str().ok());
                    match leader.and_then(|addr| self.id_of(addr)) {
                        Some(leader) if redirects < MAX_REDIRECTS => {
                            redirects += 1;
                            target = leader;
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            target = *self
                                .nodes
                                .keys()
                                .find(|id| **id != target)
                                .unwrap_or(&target);
                        }
                    }
                }
                other => return other,
            }
        }
    }

    /// Puts a key through node `via` (redirected to the leader) and returns
    /// the response.
    pub async fn must_put(&self, via: u64, key: &str, value: &str) -> v1::PutResponse {
        let request = v1::PutRequest {
            key: key.into(),
            value: value.into(),
            options: Some(write_options(key)),
        };
        self.call(via, |id| {
            let request = request.clone();
            async move { self.kv(id).await.put(request).await.map(|r| r.into_inner()) }
        })
        .await
        .unwrap_or_else(|e| panic!("put {key} via node {via}: {e}"))
    }

    /// A linearizable get through node `via` (redirected to the leader).
    pub async fn must_get(&self, via: u64, key: &str) -> v1::GetResponse {
        let request = v1::GetRequest {
            key: key.into(),
            options: None,
        };
        self.call(via, |id| {
            let request = request.clone();
            async move { self.kv(id).await.get(request).await.map(|r| r.into_inner()) }
        })
        .await
        .unwrap_or_else(|e| panic!("get {key} via node {via}: {e}"))
    }
}

/// Write options with a request id no other write in this process uses.
pub fn write_options(seed: &str) -> v1::WriteOptions {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    v1::WriteOptions {
        request_id: format!("req-{seed}-{unique}").into_bytes(),
        ..Default::default()
    }
}

/// The value of `key` in a node's applied state, read directly.
pub fn local_value(reads: &ReadView, key: &str) -> Option<String> {
    reads
        .get(key.as_bytes())
        .expect("read")
        .and_then(|v| v.value)
        .map(|v| String::from_utf8(v).expect("utf-8"))
}

/// Write options at a level, with a fresh request id and an optional token.
pub fn write_at(
    level: v1::WriteConsistency,
    session: Option<v1::SessionToken>,
) -> v1::WriteOptions {
    v1::WriteOptions {
        consistency: level as i32,
        session,
        ..write_options("level")
    }
}

pub fn read_at(level: v1::ReadConsistency) -> v1::ReadOptions {
    v1::ReadOptions {
        consistency: level as i32,
        ..Default::default()
    }
}

impl TestCluster {
    /// A put sent to exactly node `id` (no redirects).
    pub async fn put_on(
        &self,
        id: u64,
        key: &str,
        value: &str,
        options: v1::WriteOptions,
    ) -> Result<v1::PutResponse, Status> {
        let request = v1::PutRequest {
            key: key.into(),
            value: value.into(),
            options: Some(options),
        };
        self.kv(id).await.put(request).await.map(|r| r.into_inner())
    }

    /// A get sent to exactly node `id` (no redirects).
    pub async fn get_on(
        &self,
        id: u64,
        key: &str,
        options: v1::ReadOptions,
    ) -> Result<v1::GetResponse, Status> {
        let request = v1::GetRequest {
            key: key.into(),
            options: Some(options),
        };
        self.kv(id).await.get(request).await.map(|r| r.into_inner())
    }

    pub async fn status_of(&self, id: u64) -> v1::NodeStatus {
        self.admin(id)
            .await
            .status(v1::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Waits until no running node has pending provisional writes and all
    /// have applied the same index.
    pub async fn wait_converged(&self) {
        eventually(
            "every provisional write reconciled and applied everywhere",
            || async {
                let mut applied = Vec::new();
                for id in self.running() {
                    let status = self.status_of(id).await;
                    if status.pending_provisional > 0 {
                        return None;
                    }
                    applied.push(status.applied_index);
                }
                applied.windows(2).all(|w| w[0] == w[1]).then_some(())
            },
        )
        .await
    }
}
