//! Node configuration: command-line flags over an optional TOML file over
//! defaults.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;

use anyhow::bail;
use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

use crate::types::NodeId;

/// A Raft heartbeat every 100 ms keeps followers' election timers quiet.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Election timeouts: long enough that a busy 2-core machine flushing to disk
/// does not start spurious elections, short enough that losing a leader costs
/// about a second.
pub const DEFAULT_ELECTION_TIMEOUT_MIN_MS: u64 = 750;
pub const DEFAULT_ELECTION_TIMEOUT_MAX_MS: u64 = 1_500;
/// A snapshot after this many new entries bounds the log on disk and the
/// catch-up work of a returning follower. etcd's `--snapshot-count` default:
/// a snapshot copies the whole state, so under load every 10,000 entries it
/// cost 6% of the leader's CPU (perf, issue 5).
pub const DEFAULT_SNAPSHOT_EVERY_LOGS: u64 = 100_000;
/// Entries kept after a snapshot so a follower slightly behind catches up
/// from the log instead of a full snapshot.
pub const DEFAULT_LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub id: NodeId,
    /// `ip:port` to listen on; also the address peers and clients use.
    pub listen: String,
    pub data_dir: PathBuf,
    /// The initial members, used when the cluster is initialized through
    /// this node without an explicit member list.
    pub peers: BTreeMap<NodeId, String>,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub snapshot_every_logs: u64,
    pub logs_kept_after_snapshot: u64,
}

impl NodeConfig {
    /// A configuration with defaults for everything but the identity.
    pub fn new(id: NodeId, listen: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            listen: listen.into(),
            data_dir: data_dir.into(),
            peers: BTreeMap::new(),
            heartbeat_interval_ms: DEFAULT_HEARTBEAT_INTERVAL_MS,
            election_timeout_min_ms: DEFAULT_ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max_ms: DEFAULT_ELECTION_TIMEOUT_MAX_MS,
            snapshot_every_logs: DEFAULT_SNAPSHOT_EVERY_LOGS,
            logs_kept_after_snapshot: DEFAULT_LOGS_KEPT_AFTER_SNAPSHOT,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.id == 0 {
            bail!("--id must be at least 1 (0 means 'no node' in the API)");
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
        {
            bail!("the election timeout must be longer than the heartbeat interval, which must be positive");
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            bail!("--election-timeout-max-ms must be greater than --election-timeout-min-ms");
        }
        if self.snapshot_every_logs == 0 {
            bail!("--snapshot-every-logs must be positive");
        }
        Ok(())
    }
}

/// Parses `1=127.0.0.11:7001,2=127.0.0.12:7002`.
pub fn parse_peers(text: &str) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .with_context(|| format!("peer {item:?} is not id=ip:port"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .with_context(|| format!("peer id {id:?} is not a number"))?;
        let addr = addr.trim();
        addr.parse::<std::net::SocketAddr>()
            .with_context(|| format!("peer {id} address {addr:?} is not ip:port"))?;
        if peers.insert(id, addr.to_string()).is_some() {
            bail!("peer {id} is named twice");
        }
    }
    Ok(peers)
}

/// The TOML file's shape: every key optional, same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<NodeId>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    peers: Option<String>,
    heartbeat_interval_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    snapshot_every_logs: Option<u64>,
    logs_kept_after_snapshot: Option<u64>,
}

/// A capkv node: one replica of the Raft group, serving the client API.
#[derive(Debug, Parser)]
#[command(name = "capkv-node", version, about)]
pub struct NodeArgs {
    /// A TOML file with any of the settings below (flags win over the file).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id, 1 or more; unique in the cluster.
    #[arg(long)]
    pub id: Option<NodeId>,
    /// ip:port to serve on (clients and peers); outgoing peer connections
    /// bind this ip.
    #[arg(long)]
    pub listen: Option<String>,
    /// Where the node keeps its database and snapshots [default: ./capkv-data/node<ID>].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Initial members, e.g. 1=127.0.0.11:7001,2=127.0.0.12:7002,3=127.0.0.13:7003.
    #[arg(long)]
    pub peers: Option<String>,
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot (and compact the log) after this many entries.
    #[arg(long)]
    pub snapshot_every_logs: Option<u64>,
    /// Log entries kept after a snapshot for followers slightly behind.
    #[arg(long)]
    pub logs_kept_after_snapshot: Option<u64>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl NodeArgs {
    pub fn into_config(self) -> anyhow::Result<NodeConfig> {
        let file = match &self.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let id = self
            .id
            .or(file.id)
            .context("--id is required (or `id` in the config file)")?;
        let listen = self
            .listen
            .or(file.listen)
            .context("--listen is required (or `listen` in the config file)")?;
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(format!("capkv-data/node{id}")));
        let mut config = NodeConfig::new(id, listen, data_dir);
        if let Some(peers) = self.peers.or(file.peers) {
            config.peers = parse_peers(&peers)?;
        }
        let pick =
            |flag: Option<u64>, file: Option<u64>, default: u64| flag.or(file).unwrap_or(default);
        config.heartbeat_interval_ms = pick(
            self.heartbeat_interval_ms,
            file.heartbeat_interval_ms,
            config.heartbeat_interval_ms,
        );
        config.election_timeout_min_ms = pick(
            self.election_timeout_min_ms,
            file.election_timeout_min_ms,
            config.election_timeout_min_ms,
        );
        config.election_timeout_max_ms = pick(
            self.election_timeout_max_ms,
            file.election_timeout_max_ms,
            config.election_timeout_max_ms,
        );
        config.snapshot_every_logs = pick(
            self.snapshot_every_logs,
            file.snapshot_every_logs,
            config.snapshot_every_logs,
        );
        config.logs_kept_after_snapshot = pick(
            self.logs_kept_after_snapshot,
            file.logs_kept_after_snapshot,
            config.logs_kept_after_snapshot,
        );
        config.validate()?;
        Ok(config)
    }
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_garbage() {
        let peers = parse_peers("1=127.0.0.11:7001, 2=127.0.0.12:7002").unwrap();
        assert_eq!(peers.get(&2).map(String::as_str), Some("127.0.0.12:7002"));
        for bad in [
            "1",
            "x=127.0.0.1:1",
            "1=nohost",
            "1=127.0.0.1:1,1=127.0.0.1:2",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 2\nlisten = \"127.0.0.12:7002\"\nheartbeat_interval_ms = 50\n",
        )
        .unwrap();
        let args = NodeArgs::parse_from([
            "capkv-node",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9",
        ]);
        let config = args.into_config().unwrap();
        assert_eq!(config.id, 2);
        assert_eq!(config.listen, "127.0.0.1:9");
        assert_eq!(config.heartbeat_interval_ms, 50);
        assert_eq!(
            config.election_timeout_min_ms,
            DEFAULT_ELECTION_TIMEOUT_MIN_MS
        );
    }

    #[test]
    fn unknown_file_keys_and_bad_timeouts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 1\nlisten = \"127.0.0.1:1\"\nelection_timeout = 5\n",
        )
        .unwrap();
        assert!(
            NodeArgs::parse_from(["capkv-node", "--config", path.to_str().unwrap()])
                .into_config()
                .is_err()
        );
        let args = NodeArgs::parse_from([
            "capkv-node",
            "--id",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--election-timeout-min-ms",
            "50",
        ]);
        assert!(args.into_config().is_err());
    }
}
