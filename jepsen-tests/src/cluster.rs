//! A fresh cluster of real `capkv-node` processes on the loopback addresses:
//! node `i` listens on `127.0.0.1i:(base_port + i - 1)`, keeps its data in
//! `<run dir>/node<i>/` and its log in `<run dir>/node<i>.log`.
//!
//! The harness can crash a node (`kill -9`), restart it on its data, pause
//! it (`SIGSTOP`) and resume it (`SIGCONT`), find the leader, and stop every
//! node (SIGTERM, then SIGKILL after a bounded wait). Dropping a [`Cluster`]
//! kills whatever is still running; the data and logs stay on disk (the
//! runner decides whether to keep them).
//!
//! Every wait here is bounded in time.

use std::fs::File;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context as _;
use capkv_client::proto;
use capkv_client::Client;
use capkv_client::ClientConfig;
use tokio::time::Instant;

/// Default port of node 1 (node i gets base + i - 1).
pub const DEFAULT_BASE_PORT: u16 = 20001;
/// Short Raft timings, so that a fault is noticed and resolved well within
/// a fault period of a few seconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 500;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 1_000;
/// Snapshots every 1000 entries, so that a run of a minute takes several
/// snapshots and a restarted or cut-off node may catch up from one.
pub const DEFAULT_SNAPSHOT_EVERY_LOGS: u64 = 1_000;

/// How long a node may take to accept connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fresh cluster may take to be initialized and elect a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node has to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a killed process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
/// The deadline of the harness's own admin calls (init, status).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of nodes, 1 to 9 (one loopback address per node: 127.0.0.11..19).
    pub nodes: usize,
    /// Directory holding `capkv-node`.
    pub bin_dir: PathBuf,
    pub base_port: u16,
    /// Where node data directories and logs go.
    pub dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_every_logs: u64,
}

impl ClusterConfig {
    pub fn new(nodes: usize, bin_dir: PathBuf, dir: PathBuf) -> Self {
        ClusterConfig {
            nodes,
            bin_dir,
            base_port: DEFAULT_BASE_PORT,
            dir,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_min_ms: DEFAULT_ELECTION_MIN_MS,
            election_max_ms: DEFAULT_ELECTION_MAX_MS,
            snapshot_every_logs: DEFAULT_SNAPSHOT_EVERY_LOGS,
        }
    }
}

/// The loopback address of node `id`: 127.0.0.1<id>.
pub fn node_host(id: u64) -> String {
    format!("127.0.0.1{id}")
}

/// The `host:port` node `id` listens on.
pub fn node_addr(id: u64, base_port: u16) -> String {
    format!("{}:{}", node_host(id), u64::from(base_port) + id - 1)
}

/// One node's process state.
#[derive(Debug)]
struct NodeProc {
    child: Option<Child>,
    paused: bool,
}

#[derive(Debug)]
pub struct Node {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    proc: Mutex<NodeProc>,
}

/// A running cluster. Methods take `&self` (the process state sits behind
/// small locks never held across an await), so the nemesis and the runner
/// can share it in an `Arc`.
#[derive(Debug)]
pub struct Cluster {
    config: ClusterConfig,
    nodes: Vec<Node>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends a signal with `kill -<SIG> <pid>` (no libc dependency).
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let output = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running kill -{signal} {pid}"))?;
    if !output.status.success() {
        bail!(
            "kill -{signal} {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The last `lines` lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

impl Cluster {
    /// Starts `config.nodes` fresh nodes, forms the cluster through node 1
    /// and waits until every node knows the same leader.
    pub async fn start(config: ClusterConfig) -> anyhow::Result<Cluster> {
        if !(1..=9).contains(&config.nodes) {
            bail!("--nodes must be 1 to 9, got {}", config.nodes);
        }
        if u64::from(config.base_port) + config.nodes as u64 - 1 > 65_535 || config.base_port == 0 {
            bail!(
                "--base-port {} leaves no room for {} nodes",
                config.base_port,
                config.nodes
            );
        }
        let binary = config.bin_dir.join("capkv-node");
        if !binary.is_file() {
            bail!(
                "no capkv-node in {} (build it with `cargo build --bins`, or pass --bin-dir)",
                config.bin_dir.display()
            );
        }
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let nodes: Vec<Node> = (1..=config.nodes as u64)
            .map(|id| Node {
                id,
                addr: node_addr(id, config.base_port),
                data_dir: config.dir.join(format!("node{id}")),
                log_path: config.dir.join(format!("node{id}.log")),
                proc: Mutex::new(NodeProc {
                    child: None,
                    paused: false,
                }),
            })
            .collect();
        // Another process on a node's address (a cluster left over by an
        // earlier run, or another test) would answer in our node's place.
        for node in &nodes {
            if port_open(&node.addr).await {
                bail!(
                    "{} is already in use by another process (a leftover cluster? use --base-port)",
                    node.addr
                );
            }
        }
        let cluster = Cluster { config, nodes };
        for node in &cluster.nodes {
            cluster.spawn(node.id)?;
        }
        for node in &cluster.nodes {
            cluster.wait_accepting(node.id, START_TIMEOUT).await?;
        }
        cluster.init().await?;
        let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await?;
        tracing::info!(leader, nodes = cluster.nodes.len(), "cluster is up");
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Node ids, 1..=n.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// Every node's address, node 1 first.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The node listening on `addr`, if it is one of ours.
    pub fn id_of_addr(&self, addr: &str) -> Option<u64> {
        self.nodes.iter().find(|n| n.addr == addr).map(|n| n.id)
    }

    pub fn pid(&self, id: u64) -> Option<u32> {
        lock(&self.node(id).proc).child.as_ref().map(|c| c.id())
    }

    /// Whether node `id` has a live process (paused counts as live).
    pub fn is_running(&self, id: u64) -> bool {
        let mut proc = lock(&self.node(id).proc);
        match proc.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn is_paused(&self, id: u64) -> bool {
        lock(&self.node(id).proc).paused
    }

    fn node_args(&self, id: u64) -> Vec<String> {
        let node = self.node(id);
        let peers = self
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            node.addr.clone(),
            "--data-dir".into(),
            node.data_dir.display().to_string(),
            "--peers".into(),
            peers,
            "--heartbeat-interval-ms".into(),
            self.config.heartbeat_ms.to_string(),
            "--election-timeout-min-ms".into(),
            self.config.election_min_ms.to_string(),
            "--election-timeout-max-ms".into(),
            self.config.election_max_ms.to_string(),
            "--snapshot-every-logs".into(),
            self.config.snapshot_every_logs.to_string(),
        ]
    }

    /// Spawns node `id` (on its existing data, if any), logging to its log
    /// file. The node gets a process group of its own, so a Ctrl-C in the
    /// terminal reaches only the harness, which then stops the nodes itself.
    fn spawn(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        let mut proc = lock(&node.proc);
        if let Some(child) = proc.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                bail!("node {id} is already running (pid {})", child.id());
            }
        }
        std::fs::create_dir_all(&node.data_dir)
            .with_context(|| format!("creating {}", node.data_dir.display()))?;
        let mut log: File = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        let binary = self.config.bin_dir.join("capkv-node");
        let args = self.node_args(id);
        let _ = writeln!(
            log,
            "==== {} capkv-jepsen: starting node {id}: {} {}",
            humantime::format_rfc3339_millis(std::time::SystemTime::now()),
            binary.display(),
            args.join(" ")
        );
        let mut command = Command::new(&binary);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log file handle")?)
            .stderr(log)
            .env("NO_COLOR", "1")
            .process_group(0);
        // The harness's own RUST_LOG is meant for the harness; the nodes
        // log at their default level unless CAPKV_JEPSEN_NODE_LOG says
        // otherwise.
        match std::env::var("CAPKV_JEPSEN_NODE_LOG") {
            Ok(filter) => command.env("RUST_LOG", filter),
            Err(_) => command.env_remove("RUST_LOG"),
        };
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        tracing::info!(node = id, pid = child.id(), addr = %node.addr, "node started");
        proc.child = Some(child);
        proc.paused = false;
        Ok(())
    }

    /// Waits until node `id` accepts TCP connections; fails if its process
    /// exits first or the wait passes `timeout`.
    async fn wait_accepting(&self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let node = self.node(id);
        loop {
            if !self.is_running(id) {
                bail!(
                    "node {id} exited during start; last lines of {}:\n{}",
                    node.log_path.display(),
                    tail(&node.log_path, 20)
                );
            }
            if port_open(&node.addr).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {id} does not accept connections on {} after {timeout:?}; last lines of {}:\n{}",
                    node.addr,
                    node.log_path.display(),
                    tail(&node.log_path, 20)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn admin_client(&self, endpoints: Vec<String>, pin: bool) -> anyhow::Result<Client> {
        let config = ClientConfig {
            timeout: ADMIN_TIMEOUT,
            connect_timeout: Duration::from_secs(1),
            pin_endpoint: pin,
            ..ClientConfig::default()
        };
        Ok(Client::with_config(endpoints, config)?)
    }

    /// Forms the cluster through node 1 (it uses its `--peers`).
    async fn init(&self) -> anyhow::Result<()> {
        let client = self.admin_client(vec![self.node(1).addr.clone()], true)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match client.init(vec![]).await {
                Ok(response) => {
                    tracing::info!(
                        voters = response.voters.len(),
                        already = response.already_initialized,
                        "cluster initialized"
                    );
                    return Ok(());
                }
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(%error, "init failed; retrying");
                    tokio::time::sleep(POLL * 2).await;
                }
                Err(error) => {
                    bail!("cluster init through node 1 failed for {START_TIMEOUT:?}: {error}")
                }
            }
        }
    }

    /// Every node's own status (or why it did not answer), node 1 first.
    pub async fn statuses(&self) -> Vec<(u64, Result<proto::NodeStatus, String>)> {
        let mut tasks = Vec::new();
        for node in &self.nodes {
            let client = self.admin_client(vec![node.addr.clone()], true);
            let addr = node.addr.clone();
            let id = node.id;
            tasks.push(tokio::spawn(async move {
                let result = match client {
                    Ok(client) => client.node_status(&addr).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                (id, result)
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            if let Ok(result) = task.await {
                out.push(result);
            }
        }
        out
    }

    /// The leader every answering node agrees on, provided the leader
    /// itself answers that it is the leader and at least a majority of
    /// nodes answered. `None` while an election is under way or the nodes
    /// disagree.
    pub async fn agreed_leader(&self) -> Option<u64> {
        let statuses = self.statuses().await;
        agreed_leader(&statuses, self.nodes.len())
    }

    /// Waits (bounded) until the nodes agree on a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.agreed_leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                let statuses = self.statuses().await;
                let report: Vec<String> = statuses
                    .iter()
                    .map(|(id, s)| match s {
                        Ok(s) => format!(
                            "node {id}: {} term {} leader {}",
                            s.role, s.term, s.leader_id
                        ),
                        Err(e) => format!("node {id}: {e}"),
                    })
                    .collect();
                bail!("no agreed leader after {timeout:?}: {}", report.join("; "));
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    /// `kill -9` node `id` and reap it.
    pub async fn kill(&self, id: u64) -> anyhow::Result<u32> {
        let child = lock(&self.node(id).proc).child.take();
        let Some(mut child) = child else {
            bail!("node {id} is not running");
        };
        let pid = child.id();
        let _ = child.kill();
        reap(&mut child, REAP_TIMEOUT).await;
        lock(&self.node(id).proc).paused = false;
        tracing::info!(node = id, pid, "node killed (SIGKILL)");
        Ok(pid)
    }

    /// Restarts node `id` on its data directory and waits until it accepts
    /// connections.
    pub async fn restart(&self, id: u64) -> anyhow::Result<u32> {
        self.spawn(id)?;
        self.wait_accepting(id, START_TIMEOUT).await?;
        Ok(self.pid(id).unwrap_or(0))
    }

    /// `SIGSTOP` node `id`.
    pub fn pause(&self, id: u64) -> anyhow::Result<u32> {
        let mut proc = lock(&self.node(id).proc);
        let Some(pid) = proc.child.as_ref().map(|c| c.id()) else {
            bail!("node {id} is not running");
        };
        send_signal(pid, "STOP")?;
        proc.paused = true;
        tracing::info!(node = id, pid, "node paused (SIGSTOP)");
        Ok(pid)
    }

    /// `SIGCONT` node `id`.
    pub fn resume(&self, id: u64) -> anyhow::Result<u32> {
        let mut proc = lock(&self.node(id).proc);
        let Some(pid) = proc.child.as_ref().map(|c| c.id()) else {
            bail!("node {id} is not running");
        };
        send_signal(pid, "CONT")?;
        proc.paused = false;
        tracing::info!(node = id, pid, "node resumed (SIGCONT)");
        Ok(pid)
    }

    /// Stops every node: SIGCONT for paused ones, SIGTERM to all, SIGKILL to
    /// those still running after a bounded wait. Returns the nodes that
    /// needed the SIGKILL (a node should stop on SIGTERM).
    pub async fn stop(&self) -> Vec<u64> {
        let mut killed = Vec::new();
        let mut children: Vec<(u64, Child)> = Vec::new();
        for node in &self.nodes {
            let mut proc = lock(&node.proc);
            if let Some(child) = proc.child.take() {
                if proc.paused {
                    let _ = send_signal(child.id(), "CONT");
                    proc.paused = false;
                }
                let _ = send_signal(child.id(), "TERM");
                children.push((node.id, child));
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for (id, mut child) in children {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if reap(&mut child, remaining).await {
                tracing::info!(node = id, "node stopped");
            } else {
                tracing::warn!(
                    node = id,
                    "node did not stop within {STOP_TIMEOUT:?} after SIGTERM; SIGKILL"
                );
                let _ = child.kill();
                reap(&mut child, REAP_TIMEOUT).await;
                killed.push(id);
            }
        }
        killed
    }

    /// Deletes every node's data directory, keeping the logs.
    pub fn remove_data_dirs(&self) {
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
    }

    /// Deletes every node's data directory and log (after a passing run).
    pub fn remove_data(&self) {
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
            let _ = std::fs::remove_file(&node.log_path);
        }
    }
}

impl Drop for Cluster {
    /// Kills whatever still runs (a SIGKILL ends a stopped process too).
    fn drop(&mut self) {
        for node in &self.nodes {
            let mut proc = lock(&node.proc);
            if let Some(mut child) = proc.child.take() {
                let _ = child.kill();
                let deadline = std::time::Instant::now() + REAP_TIMEOUT;
                while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                tracing::info!(node = node.id, "node killed on cleanup");
            }
        }
    }
}

/// Waits (bounded) for a child to exit; true when it did.
async fn reap(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Whether something accepts TCP connections on `addr`.
pub async fn port_open(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// The leader all answering nodes name, when a majority of `n` answered,
/// every answering node names the same leader, and that leader answered
/// that it is the leader.
pub fn agreed_leader(
    statuses: &[(u64, Result<proto::NodeStatus, String>)],
    n: usize,
) -> Option<u64> {
    let answered: Vec<&proto::NodeStatus> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .collect();
    if answered.len() * 2 <= n {
        return None;
    }
    let leader = answered.first()?.leader_id;
    if leader == 0 || answered.iter().any(|s| s.leader_id != leader) {
        return None;
    }
    answered
        .iter()
        .any(|s| s.id == leader && s.role == "leader")
        .then_some(leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: &str, leader: u64) -> proto::NodeStatus {
        proto::NodeStatus {
            id,
            role: role.into(),
            leader_id: leader,
            ..Default::default()
        }
    }

    #[test]
    fn addresses_follow_the_node_id() {
        assert_eq!(node_addr(1, 20001), "127.0.0.11:20001");
        assert_eq!(node_addr(5, 20001), "127.0.0.15:20005");
    }

    #[test]
    fn a_leader_counts_only_when_the_answering_nodes_agree() {
        let ok = vec![
            (1, Ok(status(1, "follower", 2))),
            (2, Ok(status(2, "leader", 2))),
            (3, Err("down".to_string())),
        ];
        assert_eq!(agreed_leader(&ok, 3), Some(2));
        let disagree = vec![
            (1, Ok(status(1, "follower", 3))),
            (2, Ok(status(2, "leader", 2))),
        ];
        assert_eq!(agreed_leader(&disagree, 3), None);
        let leader_silent = vec![
            (1, Ok(status(1, "follower", 3))),
            (2, Ok(status(2, "follower", 3))),
        ];
        assert_eq!(agreed_leader(&leader_silent, 3), None);
        let minority = vec![(2, Ok(status(2, "leader", 2)))];
        assert_eq!(agreed_leader(&minority, 3), None);
    }
}
