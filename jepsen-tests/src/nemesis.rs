//! The nemesis: faults injected on a schedule (fault, wait, heal, wait, ...)
//! until the time limit, every action recorded in the history as
//! `:process :nemesis`.
//!
//! Faults:
//! * network partitions with iptables rules on the nodes' loopback addresses,
//!   all in the chain [`CHAIN`] (jumped to from `INPUT` at position 1), so
//!   healing removes exactly the harness's rules: isolate one node
//!   (`partition-one`), isolate the leader (`partition-leader`), a random
//!   majority/minority split (`majority`), a bridge (`bridge`: two halves
//!   cut apart, one node sees both), and a one-way cut (`one-way`);
//! * `kill -9` of a node (the leader half the time), restarted on its data
//!   at heal (`kill`);
//! * `SIGSTOP` of a node (the leader half the time) for the fault period,
//!   well past the election timeout, `SIGCONT` at heal (`pause`);
//! * `mixed`: a random one of the above each cycle.
//!
//! The seed fixes the schedule: which fault each cycle, which node(s) it
//! hits (or "the leader", resolved when the fault starts), and its timing.
//!
//! Cleanup is guaranteed: [`NemesisGuard`] heals on drop, and
//! [`install_panic_hook`] heals on a panic; the runner heals on Ctrl-C and
//! SIGTERM. Healing flushes and deletes the chain and its `INPUT` jump and
//! sends `SIGCONT` to every paused node.

use std::collections::BTreeSet;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::Once;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use serde::Serialize;

use crate::cluster::node_host;
use crate::cluster::send_signal;
use crate::cluster::Cluster;
use crate::history::Completion;
use crate::history::Function;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Recorder;
use crate::history::Value;

/// The harness's own iptables chain.
pub const CHAIN: &str = "CAPKV-JEPSEN";

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    PartitionOne,
    PartitionLeader,
    Majority,
    Bridge,
    OneWay,
    Kill,
    Pause,
    Mixed,
    None,
}

impl NemesisKind {
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::PartitionOne => "partition-one",
            NemesisKind::PartitionLeader => "partition-leader",
            NemesisKind::Majority => "majority",
            NemesisKind::Bridge => "bridge",
            NemesisKind::OneWay => "one-way",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Mixed => "mixed",
            NemesisKind::None => "none",
        }
    }

    /// The single kinds `mixed` chooses from.
    pub const SINGLE: [NemesisKind; 7] = [
        NemesisKind::PartitionOne,
        NemesisKind::PartitionLeader,
        NemesisKind::Majority,
        NemesisKind::Bridge,
        NemesisKind::OneWay,
        NemesisKind::Kill,
        NemesisKind::Pause,
    ];

    /// Whether this nemesis changes iptables rules (needs root).
    pub fn needs_iptables(self) -> bool {
        !matches!(
            self,
            NemesisKind::Kill | NemesisKind::Pause | NemesisKind::None
        )
    }
}

impl std::fmt::Display for NemesisKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a fault hits: a node chosen by the seed, or whichever node leads
/// when the fault starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Node(u64),
    Leader,
}

/// One planned fault, every random choice made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Cut one node from every other node, both directions.
    Isolate(Target),
    /// Cut `minority` from the rest, both directions.
    Majority { minority: Vec<u64> },
    /// Cut every node of `left` from every node of `right`, both directions;
    /// `bridge` sees both sides.
    Bridge {
        left: Vec<u64>,
        bridge: u64,
        right: Vec<u64>,
    },
    /// Drop packets from `from` to `to` only.
    OneWay { from: u64, to: u64 },
    /// `kill -9`, restart at heal.
    Kill(Target),
    /// `SIGSTOP`, `SIGCONT` at heal.
    Pause(Target),
}

impl Fault {
    /// The nemesis kind this fault belongs to (for `mixed` runs' records).
    pub fn kind(&self) -> NemesisKind {
        match self {
            Fault::Isolate(Target::Leader) => NemesisKind::PartitionLeader,
            Fault::Isolate(Target::Node(_)) => NemesisKind::PartitionOne,
            Fault::Majority { .. } => NemesisKind::Majority,
            Fault::Bridge { .. } => NemesisKind::Bridge,
            Fault::OneWay { .. } => NemesisKind::OneWay,
            Fault::Kill(_) => NemesisKind::Kill,
            Fault::Pause(_) => NemesisKind::Pause,
        }
    }
}

/// Plans one fault of a single kind (not `mixed`, not `none`).
fn plan_one(kind: NemesisKind, nodes: usize, rng: &mut StdRng) -> Fault {
    let ids: Vec<u64> = (1..=nodes as u64).collect();
    let random_node = |rng: &mut StdRng| ids[rng.gen_range(0..ids.len())];
    let node_or_leader = |rng: &mut StdRng| {
        let node = random_node(rng);
        if rng.gen_bool(0.5) {
            Target::Leader
        } else {
            Target::Node(node)
        }
    };
    match kind {
        NemesisKind::PartitionOne => Fault::Isolate(Target::Node(random_node(rng))),
        NemesisKind::PartitionLeader => Fault::Isolate(Target::Leader),
        NemesisKind::Majority => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let mut minority: Vec<u64> = shuffled[..nodes / 2].to_vec();
            minority.sort_unstable();
            Fault::Majority { minority }
        }
        NemesisKind::Bridge => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let half = nodes / 2;
            let bridge = shuffled[half];
            let mut left = shuffled[..half].to_vec();
            let mut right = shuffled[half + 1..].to_vec();
            left.sort_unstable();
            right.sort_unstable();
            Fault::Bridge {
                left,
                bridge,
                right,
            }
        }
        NemesisKind::OneWay => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            Fault::OneWay {
                from: shuffled[0],
                to: shuffled[1 % nodes],
            }
        }
        NemesisKind::Kill => Fault::Kill(node_or_leader(rng)),
        NemesisKind::Pause => Fault::Pause(node_or_leader(rng)),
        NemesisKind::Mixed | NemesisKind::None => unreachable!("plan_one takes a single kind"),
    }
}

/// The fault schedule of a run: fixed by the seed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    /// Healthy time before the first fault.
    #[serde(rename = "initial_ms", serialize_with = "as_ms")]
    pub initial: Duration,
    #[serde(rename = "fault_ms", serialize_with = "as_ms")]
    pub fault: Duration,
    #[serde(rename = "heal_ms", serialize_with = "as_ms")]
    pub heal: Duration,
    /// One entry per cycle.
    pub faults: Vec<Fault>,
}

fn as_ms<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_millis() as u64)
}

/// How many fault cycles fit: a fault starts at `initial + k * (fault +
/// heal)` and must be healed by `limit`, so the run ends healthy.
pub fn cycles(limit: Duration, initial: Duration, fault: Duration, heal: Duration) -> usize {
    let period = fault + heal;
    if period.is_zero() || fault.is_zero() {
        return 0;
    }
    let mut count = 0;
    let mut start = initial;
    while start + fault <= limit && count < 100_000 {
        count += 1;
        start += period;
    }
    count
}

/// The schedule for `kind` on `nodes` nodes: deterministic in `rng`'s seed.
pub fn plan(
    kind: NemesisKind,
    nodes: usize,
    limit: Duration,
    fault: Duration,
    heal: Duration,
    rng: &mut StdRng,
) -> Schedule {
    let initial = (heal / 2).min(Duration::from_secs(5));
    let count = if kind == NemesisKind::None || nodes < 2 {
        0
    } else {
        cycles(limit, initial, fault, heal)
    };
    let faults = (0..count)
        .map(|_| {
            let single = if kind == NemesisKind::Mixed {
                // Bridge needs three nodes; every other kind needs two.
                let choices: Vec<NemesisKind> = NemesisKind::SINGLE
                    .iter()
                    .copied()
                    .filter(|k| nodes >= 3 || *k != NemesisKind::Bridge)
                    .collect();
                choices[rng.gen_range(0..choices.len())]
            } else {
                kind
            };
            plan_one(single, nodes, rng)
        })
        .collect();
    Schedule {
        initial,
        fault,
        heal,
        faults,
    }
}

/// A network fault with its target resolved to nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partition {
    Isolate(u64),
    Majority { minority: Vec<u64> },
    Bridge { left: Vec<u64>, right: Vec<u64> },
    OneWay { from: u64, to: u64 },
}

/// The (from, to) node pairs whose packets a partition drops.
pub fn drops(partition: &Partition, nodes: usize) -> BTreeSet<(u64, u64)> {
    let ids: Vec<u64> = (1..=nodes as u64).collect();
    let mut out = BTreeSet::new();
    let mut cut = |a: u64, b: u64| {
        if a != b {
            out.insert((a, b));
            out.insert((b, a));
        }
    };
    match partition {
        Partition::Isolate(node) => {
            for &other in &ids {
                cut(*node, other);
            }
        }
        Partition::Majority { minority } => {
            for &a in minority {
                for &b in ids.iter().filter(|b| !minority.contains(b)) {
                    cut(a, b);
                }
            }
        }
        Partition::Bridge { left, right } => {
            for &a in left {
                for &b in right {
                    cut(a, b);
                }
            }
        }
        Partition::OneWay { from, to } => {
            if from != to {
                out.insert((*from, *to));
            }
        }
    }
    out
}

/// The `iptables` arguments that add the rules dropping `drops`.
pub fn rule_args(drops: &BTreeSet<(u64, u64)>) -> Vec<Vec<String>> {
    drops
        .iter()
        .map(|(from, to)| {
            [
                "-w",
                "-A",
                CHAIN,
                "-s",
                &node_host(*from),
                "-d",
                &node_host(*to),
                "-j",
                "DROP",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        })
        .collect()
}

/// Words for a set of drops: "2<->1 2<->3" for cuts both ways, "1->2" for
/// one-way ones.
pub fn describe_drops(drops: &BTreeSet<(u64, u64)>) -> String {
    let mut parts = Vec::new();
    for &(a, b) in drops {
        if drops.contains(&(b, a)) {
            if a < b {
                parts.push(format!("{a}<->{b}"));
            }
        } else {
            parts.push(format!("{a}->{b}"));
        }
    }
    if parts.is_empty() {
        "nothing".to_string()
    } else {
        parts.join(" ")
    }
}

// ----- cleanup that must happen whatever ends the run ----------------------

/// What must be undone if the run ends abruptly: whether the chain may
/// exist, and which processes are stopped.
#[derive(Default)]
struct Undo {
    chain: bool,
    paused: BTreeSet<u32>,
}

static UNDO: Mutex<Undo> = Mutex::new(Undo {
    chain: false,
    paused: BTreeSet::new(),
});

fn undo() -> std::sync::MutexGuard<'static, Undo> {
    UNDO.lock().unwrap_or_else(|e| e.into_inner())
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("iptables")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running iptables {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "iptables {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn iptables_ok(args: &[&str]) -> bool {
    Command::new("iptables")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Removes the harness's chain and its jump from INPUT; a no-op when there
/// is none. Returns how many rules it removed.
pub fn remove_chain() -> anyhow::Result<usize> {
    if !iptables_ok(&["-w", "-S", CHAIN]) {
        undo().chain = false;
        return Ok(0);
    }
    let rules = Command::new("iptables")
        .args(["-w", "-S", CHAIN])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count()
        })
        .unwrap_or(0);
    iptables(&["-w", "-F", CHAIN])?;
    let mut bounded = 0;
    while iptables_ok(&["-w", "-C", "INPUT", "-j", CHAIN]) && bounded < 100 {
        iptables(&["-w", "-D", "INPUT", "-j", CHAIN])?;
        bounded += 1;
    }
    iptables(&["-w", "-X", CHAIN])?;
    undo().chain = false;
    Ok(rules)
}

/// Heals everything the nemesis may have left: the chain, paused processes.
/// Safe to call any number of times, from a panic hook or a signal handler.
pub fn emergency_cleanup() {
    let (chain, paused) = {
        let mut undo = undo();
        (undo.chain, std::mem::take(&mut undo.paused))
    };
    for pid in paused {
        match send_signal(pid, "CONT") {
            Ok(()) => eprintln!("capkv-jepsen cleanup: SIGCONT to paused node pid {pid}"),
            Err(e) => eprintln!("capkv-jepsen cleanup: SIGCONT to pid {pid}: {e}"),
        }
    }
    if chain {
        match remove_chain() {
            Ok(rules) => {
                eprintln!("capkv-jepsen cleanup: removed iptables chain {CHAIN} ({rules} rule(s))")
            }
            Err(e) => eprintln!("capkv-jepsen cleanup: removing iptables chain {CHAIN}: {e}"),
        }
    }
}

/// Installs (once) a panic hook that heals before the default hook runs.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            emergency_cleanup();
            previous(info);
        }));
    });
}

/// Heals on drop.
pub struct NemesisGuard(());

impl NemesisGuard {
    pub fn new() -> Self {
        install_panic_hook();
        NemesisGuard(())
    }
}

impl Default for NemesisGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NemesisGuard {
    fn drop(&mut self) {
        emergency_cleanup();
    }
}

/// Checks that this process can change iptables rules (Linux, root,
/// iptables installed: installs it with apt-get when missing, like
/// `scripts/partition.sh`), and removes a chain left over by an earlier run.
pub fn prepare_iptables() -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("network faults need Linux (one loopback address per node, iptables)");
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("network faults need root (iptables); run as root, or use --nemesis kill|pause|none");
    }
    let installed = Command::new("iptables")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !installed {
        tracing::warn!(
            "iptables is missing; installing it (apt-get update && apt-get install -y iptables)"
        );
        let ok = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new("apt-get")
                .args(["install", "-y", "iptables"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        if !ok {
            bail!("iptables is not installed and apt-get could not install it");
        }
    }
    iptables(&["-w", "-S", "INPUT"]).context("iptables does not work here")?;
    let leftover = remove_chain()?;
    if leftover > 0 {
        tracing::warn!(
            rules = leftover,
            "removed the {CHAIN} chain left over by an earlier run"
        );
    }
    Ok(())
}

/// Installs the rules that drop `drops`.
fn apply_drops(drops: &BTreeSet<(u64, u64)>) -> anyhow::Result<()> {
    undo().chain = true;
    if !iptables_ok(&["-w", "-S", CHAIN]) {
        iptables(&["-w", "-N", CHAIN])?;
    }
    if !iptables_ok(&["-w", "-C", "INPUT", "-j", CHAIN]) {
        iptables(&["-w", "-I", "INPUT", "1", "-j", CHAIN])?;
    }
    for args in rule_args(drops) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        iptables(&args)?;
    }
    Ok(())
}

// ----- running the schedule -------------------------------------------------

/// One fault as it happened, for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// The kind (for `mixed`, the kind chosen this cycle).
    pub kind: String,
    /// What was done, in words ("isolated node 2 (the leader): 2<->1 2<->3").
    pub description: String,
    /// The nodes it hit.
    pub nodes: Vec<u64>,
    /// When the fault started (its invocation), ns since the run started.
    pub start_ns: u64,
    /// When the heal completed, ns since the run started.
    pub end_ns: Option<u64>,
    /// Errors while starting or healing it.
    pub errors: Vec<String>,
}

/// What the nemesis must undo at heal.
enum Active {
    Partition,
    Killed(u64),
    Paused(u64),
}

pub struct Nemesis {
    cluster: Arc<Cluster>,
    recorder: Recorder,
}

impl Nemesis {
    pub fn new(cluster: Arc<Cluster>, recorder: Recorder) -> Self {
        Nemesis { cluster, recorder }
    }

    /// Runs the schedule from now: the initial healthy period, then per
    /// cycle the fault, its period, the heal, the healthy period. Returns
    /// the faults as they happened. Heals whatever is active when it ends.
    pub async fn run(&self, schedule: &Schedule) -> Vec<FaultRecord> {
        let mut records = Vec::new();
        tokio::time::sleep(schedule.initial).await;
        let count = schedule.faults.len();
        for (i, fault) in schedule.faults.iter().enumerate() {
            let (mut record, active) = self.start(fault).await;
            tokio::time::sleep(schedule.fault).await;
            if let Some(active) = active {
                if let Err(e) = self.heal(&active).await {
                    record.errors.push(e);
                }
            }
            record.end_ns = Some(self.recorder.now());
            records.push(record);
            if i + 1 < count {
                tokio::time::sleep(schedule.heal).await;
            }
        }
        records
    }

    async fn resolve(&self, target: Target) -> (u64, String) {
        match target {
            Target::Node(n) => (n, format!("node {n}")),
            Target::Leader => {
                // Bounded: the cluster is normally healthy when a fault
                // starts, so a leader is known at once or within an election.
                match self.cluster.wait_for_leader(Duration::from_secs(5)).await {
                    Ok(leader) => (leader, format!("node {leader} (the leader)")),
                    Err(e) => {
                        tracing::warn!(error = %e, "no leader known; hitting node 1 instead");
                        (1, "node 1 (no leader was known)".to_string())
                    }
                }
            }
        }
    }

    fn invoke(&self, f: &str, text: String) -> crate::history::Op {
        tracing::info!(nemesis = f, "{text}");
        self.recorder.invoke(
            Process::Nemesis,
            Function::Nemesis(f.to_string()),
            None,
            Value::Text(text),
            None,
            None,
        )
    }

    fn complete(&self, invocation: &crate::history::Op, result: Result<String, String>) {
        let completion = match result {
            Ok(text) => {
                tracing::info!(nemesis = invocation.f.name(), "done: {text}");
                Completion {
                    op_type: OpType::Ok,
                    value: Value::Text(text),
                    error: None,
                }
            }
            Err(error) => {
                tracing::warn!(nemesis = invocation.f.name(), %error, "failed");
                Completion {
                    op_type: OpType::Info,
                    value: invocation.value.clone(),
                    error: Some(error),
                }
            }
        };
        self.recorder.complete(invocation, completion);
    }

    /// Starts a fault; returns its record and what to undo at heal.
    async fn start(&self, fault: &Fault) -> (FaultRecord, Option<Active>) {
        let n = self.cluster.len();
        let kind = fault.kind().name().to_string();
        let start_ns = self.recorder.now();
        let mut record = FaultRecord {
            kind,
            description: String::new(),
            nodes: Vec::new(),
            start_ns,
            end_ns: None,
            errors: Vec::new(),
        };
        let partition = match fault {
            Fault::Isolate(target) => {
                let (node, who) = self.resolve(*target).await;
                Some((
                    Partition::Isolate(node),
                    format!("isolate {who}"),
                    vec![node],
                ))
            }
            Fault::Majority { minority } => {
                let text = format!("majority/minority split: minority {minority:?}");
                Some((
                    Partition::Majority {
                        minority: minority.clone(),
                    },
                    text,
                    minority.clone(),
                ))
            }
            Fault::Bridge {
                left,
                bridge,
                right,
            } => {
                let text = format!("bridge: {left:?} cut from {right:?}, node {bridge} sees both");
                Some((
                    Partition::Bridge {
                        left: left.clone(),
                        right: right.clone(),
                    },
                    text,
                    vec![*bridge],
                ))
            }
            Fault::OneWay { from, to } => {
                let text = format!("one-way: drop packets from node {from} to node {to}");
                Some((
                    Partition::OneWay {
                        from: *from,
                        to: *to,
                    },
                    text,
                    vec![*from, *to],
                ))
            }
            Fault::Kill(_) | Fault::Pause(_) => None,
        };
        if let Some((partition, text, nodes)) = partition {
            let rules = drops(&partition, n);
            let text = format!("{text}: {}", describe_drops(&rules));
            let op = self.invoke("start-partition", text.clone());
            record.description = text;
            record.nodes = nodes;
            let result = apply_drops(&rules)
                .map(|()| format!("dropping {}", describe_drops(&rules)))
                .map_err(|e| e.to_string());
            if let Err(e) = &result {
                record.errors.push(e.clone());
            }
            self.complete(&op, result);
            // Even a partly applied partition must be healed.
            return (record, Some(Active::Partition));
        }
        match fault {
            Fault::Kill(target) => {
                let (node, who) = self.resolve(*target).await;
                let op = self.invoke("kill", format!("kill -9 {who}"));
                record.description = format!("kill -9 {who}");
                record.nodes = vec![node];
                let result = self
                    .cluster
                    .kill(node)
                    .await
                    .map(|pid| format!("killed node {node} (pid {pid})"))
                    .map_err(|e| e.to_string());
                let killed = result.is_ok();
                if let Err(e) = &result {
                    record.errors.push(e.clone());
                }
                self.complete(&op, result);
                (record, killed.then_some(Active::Killed(node)))
            }
            Fault::Pause(target) => {
                let (node, who) = self.resolve(*target).await;
                let op = self.invoke("pause", format!("SIGSTOP {who}"));
                record.description = format!("SIGSTOP {who}");
                record.nodes = vec![node];
                let result = self.cluster.pause(node).map_err(|e| e.to_string());
                let paused = result.is_ok();
                let result = result.map(|pid| {
                    undo().paused.insert(pid);
                    format!("paused node {node} (pid {pid})")
                });
                if let Err(e) = &result {
                    record.errors.push(e.clone());
                }
                self.complete(&op, result);
                (record, paused.then_some(Active::Paused(node)))
            }
            _ => unreachable!("partitions returned above"),
        }
    }

    /// Undoes a fault. Errors are recorded and returned as text.
    async fn heal(&self, active: &Active) -> Result<(), String> {
        match active {
            Active::Partition => {
                let op = self.invoke("stop-partition", "heal the network".to_string());
                let result = remove_chain()
                    .map(|rules| format!("removed {rules} rule(s); fully connected"))
                    .map_err(|e| e.to_string());
                self.complete(&op, result.clone());
                result.map(|_| ())
            }
            Active::Killed(node) => {
                let op = self.invoke("start", format!("restart node {node}"));
                let result = self
                    .cluster
                    .restart(*node)
                    .await
                    .map(|pid| format!("node {node} restarted (pid {pid})"))
                    .map_err(|e| e.to_string());
                self.complete(&op, result.clone());
                result.map(|_| ())
            }
            Active::Paused(node) => {
                let op = self.invoke("resume", format!("SIGCONT node {node}"));
                let result = self.cluster.resume(*node).map_err(|e| e.to_string());
                if let Ok(pid) = &result {
                    undo().paused.remove(pid);
                }
                let result = result.map(|pid| format!("resumed node {node} (pid {pid})"));
                self.complete(&op, result.clone());
                result.map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn pairs(list: &[(u64, u64)]) -> BTreeSet<(u64, u64)> {
        list.iter().copied().collect()
    }

    #[test]
    fn the_schedule_is_fixed_by_the_seed() {
        for kind in [
            NemesisKind::Mixed,
            NemesisKind::Majority,
            NemesisKind::Bridge,
            NemesisKind::Pause,
            NemesisKind::OneWay,
        ] {
            for nodes in [3, 5] {
                let a = plan(
                    kind,
                    nodes,
                    60 * S,
                    5 * S,
                    5 * S,
                    &mut StdRng::seed_from_u64(42),
                );
                let b = plan(
                    kind,
                    nodes,
                    60 * S,
                    5 * S,
                    5 * S,
                    &mut StdRng::seed_from_u64(42),
                );
                assert_eq!(a, b, "{kind} {nodes}");
                assert!(!a.faults.is_empty());
            }
        }
        // Different seeds give different mixed schedules (overwhelmingly).
        let a = plan(
            NemesisKind::Mixed,
            5,
            600 * S,
            5 * S,
            5 * S,
            &mut StdRng::seed_from_u64(1),
        );
        let b = plan(
            NemesisKind::Mixed,
            5,
            600 * S,
            5 * S,
            5 * S,
            &mut StdRng::seed_from_u64(2),
        );
        assert_ne!(a.faults, b.faults);
        // Mixed draws every kind over a long schedule.
        let kinds: BTreeSet<&str> = a.faults.iter().map(|f| f.kind().name()).collect();
        assert_eq!(kinds.len(), 7, "{kinds:?}");
        assert!(plan(
            NemesisKind::None,
            3,
            60 * S,
            5 * S,
            5 * S,
            &mut StdRng::seed_from_u64(1)
        )
        .faults
        .is_empty());
    }

    #[test]
    fn cycles_fit_the_time_limit_and_end_healthy() {
        // initial 2.5 s: faults at 2.5, 12.5, 22.5, 32.5, 42.5, 52.5 (ends 57.5).
        assert_eq!(cycles(60 * S, S * 5 / 2, 5 * S, 5 * S), 6);
        assert_eq!(cycles(20 * S, S * 5 / 2, 5 * S, 5 * S), 2);
        assert_eq!(cycles(7 * S, S * 5 / 2, 5 * S, 5 * S), 0);
        assert_eq!(cycles(60 * S, S, Duration::ZERO, 5 * S), 0);
    }

    #[test]
    fn partitions_produce_the_right_rules_on_three_nodes() {
        assert_eq!(
            drops(&Partition::Isolate(2), 3),
            pairs(&[(1, 2), (2, 1), (2, 3), (3, 2)])
        );
        assert_eq!(
            drops(&Partition::Majority { minority: vec![3] }, 3),
            pairs(&[(1, 3), (3, 1), (2, 3), (3, 2)])
        );
        assert_eq!(
            drops(
                &Partition::Bridge {
                    left: vec![1],
                    right: vec![3]
                },
                3
            ),
            pairs(&[(1, 3), (3, 1)])
        );
        assert_eq!(
            drops(&Partition::OneWay { from: 1, to: 2 }, 3),
            pairs(&[(1, 2)])
        );
    }

    #[test]
    fn partitions_produce_the_right_rules_on_five_nodes() {
        let majority = drops(
            &Partition::Majority {
                minority: vec![2, 4],
            },
            5,
        );
        assert_eq!(majority.len(), 12); // 2 x 3 links, both ways
        for a in [2, 4] {
            for b in [1, 3, 5] {
                assert!(majority.contains(&(a, b)) && majority.contains(&(b, a)));
            }
        }
        assert!(!majority.contains(&(2, 4)) && !majority.contains(&(1, 3)));
        let bridge = drops(
            &Partition::Bridge {
                left: vec![1, 2],
                right: vec![4, 5],
            },
            5,
        );
        assert_eq!(bridge.len(), 8);
        assert!(
            bridge.iter().all(|&(a, b)| a != 3 && b != 3),
            "the bridge node keeps every link"
        );
        assert!(!bridge.contains(&(1, 2)) && !bridge.contains(&(4, 5)));
        assert_eq!(drops(&Partition::Isolate(5), 5).len(), 8);
        assert_eq!(
            drops(&Partition::OneWay { from: 5, to: 1 }, 5),
            pairs(&[(5, 1)])
        );
    }

    #[test]
    fn planned_partitions_have_the_right_shape() {
        let mut rng = StdRng::seed_from_u64(7);
        for nodes in [3usize, 5] {
            for _ in 0..50 {
                match plan_one(NemesisKind::Majority, nodes, &mut rng) {
                    Fault::Majority { minority } => {
                        assert_eq!(minority.len(), nodes / 2);
                        assert!(minority.iter().all(|n| (1..=nodes as u64).contains(n)));
                    }
                    other => panic!("{other:?}"),
                }
                match plan_one(NemesisKind::Bridge, nodes, &mut rng) {
                    Fault::Bridge {
                        left,
                        bridge,
                        right,
                    } => {
                        assert_eq!(left.len(), nodes / 2);
                        assert_eq!(right.len(), nodes - nodes / 2 - 1);
                        let mut all: Vec<u64> =
                            left.iter().chain(&right).copied().chain([bridge]).collect();
                        all.sort_unstable();
                        assert_eq!(all, (1..=nodes as u64).collect::<Vec<_>>());
                    }
                    other => panic!("{other:?}"),
                }
                match plan_one(NemesisKind::OneWay, nodes, &mut rng) {
                    Fault::OneWay { from, to } => assert_ne!(from, to),
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn rules_are_ip_only_drops_in_the_harness_chain() {
        let args = rule_args(&pairs(&[(1, 3)]));
        assert_eq!(
            args,
            vec![[
                "-w",
                "-A",
                CHAIN,
                "-s",
                "127.0.0.11",
                "-d",
                "127.0.0.13",
                "-j",
                "DROP"
            ]
            .map(String::from)
            .to_vec()]
        );
        assert_eq!(
            describe_drops(&pairs(&[(1, 2), (2, 1), (1, 3)])),
            "1<->2 1->3"
        );
    }
}
