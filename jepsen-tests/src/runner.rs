//! One run: a fresh cluster, clients and nemesis until the time limit, the
//! final heal, settling (set), the checks, and the results directory:
//!
//! | file | what |
//! |---|---|
//! | `history.edn`, `history.jsonl` | every operation and nemesis action |
//! | `verdicts.json` | the checker's verdict per key / set / process |
//! | `summary.json` | counts, faults, verdicts, availability, convergence, pass/fail |
//! | `*.html` | porcupine's visualization of each failing key |
//! | `node<i>.log`, `node<i>/` | node logs and data, kept only when the run did not pass |
//!
//! A run passes when every check holds (for `stale`: when the checker found
//! the violation it must find), the harness itself had no trouble (every
//! fault was injected and healed, the set converged), and no node panicked.

use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use serde::Serialize;
use tokio::time::Instant;

use crate::checker::register::Porcupine;
use crate::checker::session::check_sessions;
use crate::checker::set::check_set;
use crate::checker::set::set_stats;
use crate::checker::set::SetStats;
use crate::checker::LinearizabilityChecker as _;
use crate::checker::Verdict;
use crate::cluster::Cluster;
use crate::cluster::ClusterConfig;
use crate::history::Function;
use crate::history::History;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Recorder;
use crate::nemesis;
use crate::nemesis::FaultRecord;
use crate::nemesis::Nemesis;
use crate::nemesis::NemesisGuard;
use crate::nemesis::NemesisKind;
use crate::output;
use crate::workload::register::Register;
use crate::workload::register::COMPARE_FAILED;
use crate::workload::run_workers;
use crate::workload::session::SessionWorkload;
use crate::workload::set;
use crate::workload::set::Set;
use crate::workload::Ctx;
use crate::workload::WorkloadKind;

/// Everything a run needs.
#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub workload: WorkloadKind,
    pub nemesis: NemesisKind,
    pub time_limit: Duration,
    pub concurrency: usize,
    pub nodes: usize,
    pub seed: u64,
    pub bin_dir: PathBuf,
    pub base_port: u16,
    pub results_dir: PathBuf,
    pub op_timeout: Duration,
    pub fault: Duration,
    pub heal: Duration,
    /// Target operations per second of all clients together (0: no limit).
    pub rate: f64,
    /// Register keys.
    pub keys: usize,
    /// Porcupine's budget per key.
    pub checker_timeout: Duration,
    /// How long the set may take to converge after the final heal.
    pub settle_timeout: Duration,
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_every_logs: u64,
    /// Keep node data and logs even when the run passed.
    pub keep_node_data: bool,
}

/// `<root>/<UTC time>-<workload>-<nemesis>-seed<S>`.
pub fn default_results_dir(
    root: &Path,
    workload: WorkloadKind,
    nemesis: NemesisKind,
    seed: u64,
) -> PathBuf {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = now.chars().filter(|c| *c != '-' && *c != ':').collect();
    root.join(format!("{stamp}-{workload}-{nemesis}-seed{seed}"))
}

/// Ok / fail / info counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Invoked but never completed (only when a run was interrupted).
    pub unfinished: u64,
}

impl Counts {
    fn add(&mut self, completion: Option<OpType>) {
        match completion {
            Some(OpType::Ok) => self.ok += 1,
            Some(OpType::Fail) => self.fail += 1,
            Some(OpType::Info) => self.info += 1,
            Some(OpType::Invoke) | None => self.unfinished += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.ok + self.fail + self.info + self.unfinished
    }
}

/// Client operations' outcomes, in total and per function.
pub fn count_ops(history: &History) -> (Counts, BTreeMap<String, Counts>) {
    let mut total = Counts::default();
    let mut by_f: BTreeMap<String, Counts> = BTreeMap::new();
    for (invocation, completion) in history.pairs() {
        if invocation.process == Process::Nemesis || invocation.op_type != OpType::Invoke {
            continue;
        }
        let completion = completion.map(|c| c.op_type);
        total.add(completion);
        by_f.entry(invocation.f.name().to_string())
            .or_default()
            .add(completion);
    }
    (total, by_f)
}

/// Operations that completed `ok` out of those invoked.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Share {
    pub ok: u64,
    pub total: u64,
    /// `ok / total`; `None` when nothing was invoked.
    pub fraction: Option<f64>,
}

impl Share {
    fn add(&mut self, ok: bool) {
        self.total += 1;
        self.ok += u64::from(ok);
        self.fraction = Some(self.ok as f64 / self.total as f64);
    }
}

/// One consistency level's availability.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Availability {
    /// Operations invoked while a fault was active.
    pub during_faults: Share,
    /// Operations invoked while the cluster was healthy.
    pub healthy: Share,
}

/// Per consistency level, the share of client operations that completed
/// `ok` (or a cas whose comparison failed: an answer, not unavailability), split by whether a fault was active when they were invoked.
/// `faults` are `[start, end]` windows in history time; the final set reads
/// are not counted (they run after the final heal, by design).
pub fn availability(history: &History, faults: &[(u64, u64)]) -> BTreeMap<String, Availability> {
    let mut out: BTreeMap<String, Availability> = BTreeMap::new();
    for (invocation, completion) in history.pairs() {
        if invocation.process == Process::Nemesis
            || invocation.op_type != OpType::Invoke
            || invocation.f == Function::ReadSet
        {
            continue;
        }
        let Some(level) = &invocation.level else {
            continue;
        };
        // Answered: ok, or a cas whose comparison failed (the system was
        // available; the register just held another value).
        let ok = completion.is_some_and(|c| {
            c.op_type == OpType::Ok
                || (c.op_type == OpType::Fail
                    && c.error
                        .as_deref()
                        .is_some_and(|e| e.starts_with(COMPARE_FAILED)))
        });
        let during = faults
            .iter()
            .any(|&(start, end)| start <= invocation.time && invocation.time <= end);
        let entry = out.entry(level.clone()).or_default();
        if during {
            entry.during_faults.add(ok);
        } else {
            entry.healthy.add(ok);
        }
    }
    out
}

/// What `summary.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub workload: WorkloadKind,
    pub nemesis: NemesisKind,
    pub seed: u64,
    pub nodes: usize,
    pub concurrency: usize,
    pub time_limit_s: f64,
    pub op_timeout_ms: u64,
    pub fault_ms: u64,
    pub heal_ms: u64,
    pub results_dir: String,
    pub started_at: String,
    pub wall_time_s: f64,
    /// Client operations invoked (the final set reads included).
    pub ops_total: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    pub unfinished: u64,
    pub ops_by_function: BTreeMap<String, Counts>,
    /// Process ids used (the initial ones plus one per retirement).
    pub processes: u64,
    /// Operations the checkers looked at.
    pub ops_checked: usize,
    pub schedule: nemesis::Schedule,
    pub faults: Vec<FaultRecord>,
    pub verdicts: Vec<Verdict>,
    pub availability: BTreeMap<String, Availability>,
    /// Set: from the final heal until the replicas converged.
    pub convergence_ms: Option<u64>,
    pub set_stats: Option<SetStats>,
    /// Trouble outside the verdicts: faults that failed, a set that did not
    /// converge, node panics, no successful operation at all.
    pub problems: Vec<String>,
    /// Odd node behaviour that no check covers (a node that ignored
    /// SIGTERM): reported, node logs kept, the run not failed for it.
    pub warnings: Vec<String>,
    /// Every verdict holds.
    pub valid: bool,
    /// Verdicts the checker could not decide (ran out of time).
    pub undecided: usize,
    /// Whether a correct system is valid here (false for `stale`).
    pub expected_valid: bool,
    pub passed: bool,
}

pub struct RunReport {
    pub summary: Summary,
    pub dir: PathBuf,
}

impl RunReport {
    /// The one-line verdict.
    pub fn line(&self) -> String {
        let s = &self.summary;
        let valid = s.verdicts.iter().filter(|v| v.valid == Some(true)).count();
        let invalid = s.verdicts.iter().filter(|v| v.valid == Some(false)).count();
        let what = match s.workload {
            WorkloadKind::Stale if s.passed => "violation found, as expected".to_string(),
            WorkloadKind::Stale => {
                "NO violation found: the checker should have caught the stale reads".to_string()
            }
            _ => format!(
                "{valid} valid, {invalid} invalid, {} undecided of {} verdicts",
                s.undecided,
                s.verdicts.len()
            ),
        };
        let mut problems = if s.problems.is_empty() {
            String::new()
        } else {
            format!("; problems: {}", s.problems.join("; "))
        };
        if !s.warnings.is_empty() {
            problems.push_str(&format!("; warnings: {}", s.warnings.join("; ")));
        }
        format!(
            "capkv-jepsen: {} {} / {} seed {}: {} ops ({} ok, {} fail, {} info), {} faults; {what}{problems}; results in {}",
            if s.passed { "PASSED" } else { "FAILED" },
            s.workload,
            s.nemesis,
            s.seed,
            s.ops_total,
            s.ok,
            s.fail,
            s.info,
            s.faults.len(),
            self.dir.display()
        )
    }
}

/// Lines of the node logs that show a panic (a node bug whatever the checks
/// say).
fn node_panics(cluster: &Cluster) -> Vec<String> {
    let mut out = Vec::new();
    for id in cluster.ids() {
        let path = &cluster.node(id).log_path;
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines().filter(|l| l.contains("panicked at")).take(5) {
                out.push(format!("node {id} panicked: {}", line.trim()));
            }
        }
    }
    out
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Runs one test. Errors are harness failures (the cluster did not start,
/// files could not be written); check failures are in the report.
pub async fn run(config: &RunConfig) -> anyhow::Result<RunReport> {
    let wall = Instant::now();
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let dir = config.results_dir.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    tracing::info!(
        workload = %config.workload, nemesis = %config.nemesis, seed = config.seed, nodes = config.nodes,
        concurrency = config.concurrency, time_limit = ?config.time_limit, dir = %dir.display(), "run starting"
    );
    // Heals on every way out of this function (return, error, panic, and
    // the future being dropped on Ctrl-C).
    let _guard = NemesisGuard::new();
    if config.fault.as_millis() <= u128::from(config.election_max_ms) {
        tracing::warn!(
            fault = ?config.fault, election_max_ms = config.election_max_ms,
            "faults are not longer than the election timeout: a pause or partition may end before anyone notices it"
        );
    }
    if config.nemesis.needs_iptables() {
        nemesis::prepare_iptables()?;
    }

    let mut cluster_config = ClusterConfig::new(config.nodes, config.bin_dir.clone(), dir.clone());
    cluster_config.base_port = config.base_port;
    cluster_config.heartbeat_ms = config.heartbeat_ms;
    cluster_config.election_min_ms = config.election_min_ms;
    cluster_config.election_max_ms = config.election_max_ms;
    cluster_config.snapshot_every_logs = config.snapshot_every_logs;
    // Not spawned anywhere: when this future is dropped, the cluster is
    // dropped with it and its nodes are killed.
    let cluster = Arc::new(Cluster::start(cluster_config).await?);

    let mut rng = StdRng::seed_from_u64(config.seed);
    let schedule = nemesis::plan(
        config.nemesis,
        config.nodes,
        config.time_limit,
        config.fault,
        config.heal,
        &mut rng,
    );
    tracing::info!(
        faults = schedule.faults.len(),
        "schedule: {:?}",
        schedule.faults
    );

    let recorder = Recorder::new();
    let deadline = Instant::now() + config.time_limit;
    let ctx = Ctx::new(
        recorder.clone(),
        cluster.endpoints(),
        config.op_timeout,
        config.concurrency,
        config.seed,
        deadline,
        config.rate,
    )?;
    let keys = config.keys;
    let clients = async {
        match config.workload {
            WorkloadKind::Register => run_workers(&ctx, Register::linearizable(keys)).await,
            WorkloadKind::Stale => run_workers(&ctx, Register::stale(keys)).await,
            WorkloadKind::Set => run_workers(&ctx, Set::new()).await,
            WorkloadKind::Session => run_workers(&ctx, SessionWorkload::new()).await,
        }
    };
    let nemesis = Nemesis::new(Arc::clone(&cluster), recorder.clone());
    let ((), faults) = tokio::join!(clients, nemesis.run(&schedule));
    tracing::info!(
        faults = faults.len(),
        ops = recorder.history().ops.len(),
        "clients and nemesis done"
    );

    let mut problems: Vec<String> = Vec::new();
    for fault in &faults {
        for error in &fault.errors {
            problems.push(format!("nemesis: {}: {error}", fault.description));
        }
    }
    // The cluster must be whole again for the final phase: every node up.
    for id in cluster.ids() {
        if !cluster.is_running(id) {
            problems.push(format!("node {id} is not running after the final heal"));
        }
    }

    // The final heal: when the last fault ended (or the clients stopped).
    let healed = match faults.last().and_then(|f| f.end_ns) {
        Some(end_ns) => {
            Instant::now() - Duration::from_nanos(recorder.now().saturating_sub(end_ns))
        }
        None => Instant::now(),
    };
    let settled = if config.workload == WorkloadKind::Set {
        let settled = set::settle(
            &cluster,
            &recorder,
            healed,
            config.settle_timeout,
            ctx.processes.used(),
        )
        .await;
        problems.extend(settled.problems.iter().cloned());
        Some(settled)
    } else {
        None
    };

    let mut warnings: Vec<String> = Vec::new();
    for id in cluster.stop().await {
        warnings.push(format!(
            "node {id} did not stop within 10 s of SIGTERM and was killed (see node{id}.log)"
        ));
    }
    problems.extend(node_panics(&cluster));

    let history = recorder.history();
    output::write_edn(&history, &dir.join("history.edn")).context("writing history.edn")?;
    output::write_jsonl(&history, &dir.join("history.jsonl")).context("writing history.jsonl")?;

    // Checks (CPU-bound: off the async threads).
    let (verdicts, stats) = {
        let history = history.clone();
        let workload = config.workload;
        let timeout = config.checker_timeout;
        let artifacts = dir.clone();
        let settled = settled.clone();
        tokio::task::spawn_blocking(move || match workload {
            WorkloadKind::Register | WorkloadKind::Stale => {
                (Porcupine.check(&history, timeout, Some(&artifacts)), None)
            }
            WorkloadKind::Set => {
                let settled = settled.unwrap_or_default();
                let verdict = check_set(&history, &settled.final_reads, &settled.superseded);
                let stats = set_stats(&history, &settled.final_reads, &settled.superseded);
                (vec![verdict], Some(stats))
            }
            WorkloadKind::Session => (check_sessions(&history), None),
        })
        .await
        .context("the checker panicked")?
    };
    write_json(&dir.join("verdicts.json"), &verdicts)?;

    let (counts, by_f) = count_ops(&history);
    if counts.ok == 0 {
        problems.push("no client operation succeeded: nothing was really tested".to_string());
    }
    let windows: Vec<(u64, u64)> = faults
        .iter()
        .map(|f| (f.start_ns, f.end_ns.unwrap_or(u64::MAX)))
        .collect();
    let undecided = verdicts.iter().filter(|v| v.valid.is_none()).count();
    let valid = !verdicts.is_empty() && verdicts.iter().all(|v| v.valid == Some(true));
    let violation_found = verdicts.iter().any(|v| v.valid == Some(false));
    let expected_valid = config.workload.expected_valid();
    if verdicts.is_empty() {
        problems.push("the checker returned no verdict".to_string());
    }
    let passed = if expected_valid {
        valid && problems.is_empty()
    } else {
        if !violation_found {
            problems.push(format!(
                "{}: the checker found no violation, but EVENTUAL reads under {} must produce one",
                config.workload, config.nemesis
            ));
        }
        violation_found && problems.iter().all(|p| !p.contains("panicked"))
    };
    let summary = Summary {
        workload: config.workload,
        nemesis: config.nemesis,
        seed: config.seed,
        nodes: config.nodes,
        concurrency: config.concurrency,
        time_limit_s: config.time_limit.as_secs_f64(),
        op_timeout_ms: config.op_timeout.as_millis() as u64,
        fault_ms: config.fault.as_millis() as u64,
        heal_ms: config.heal.as_millis() as u64,
        results_dir: dir.display().to_string(),
        started_at,
        wall_time_s: wall.elapsed().as_secs_f64(),
        ops_total: counts.total(),
        ok: counts.ok,
        fail: counts.fail,
        info: counts.info,
        unfinished: counts.unfinished,
        ops_by_function: by_f,
        processes: ctx.processes.used(),
        ops_checked: verdicts.iter().map(|v| v.ops_checked).sum(),
        schedule,
        faults,
        availability: availability(&history, &windows),
        convergence_ms: settled.as_ref().and_then(|s| s.convergence_ms),
        set_stats: stats,
        problems,
        warnings,
        valid,
        undecided,
        expected_valid,
        passed,
        verdicts,
    };
    write_json(&dir.join("summary.json"), &summary)?;
    if config.keep_node_data {
        tracing::info!(dir = %dir.display(), "kept the node data and logs (--keep-node-data)");
    } else if passed && summary.warnings.is_empty() {
        cluster.remove_data();
        tracing::info!("passed: removed the node data and logs");
    } else if passed {
        cluster.remove_data_dirs();
        tracing::warn!(dir = %dir.display(), "passed with warnings: kept the node logs");
    } else {
        tracing::warn!(dir = %dir.display(), "did not pass: kept the node data and logs");
    }
    Ok(RunReport { summary, dir })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Value;

    fn history_with_levels() -> History {
        let mut h = History::default();
        let mut push = |index: u64, op_type: OpType, process: u64, time: u64, level: &str| {
            h.ops.push(crate::history::Op {
                index,
                op_type,
                f: Function::Write,
                process: Process::Client(process),
                time,
                key: Some("k".into()),
                value: Value::Int(index as i64),
                node: Some(1),
                level: Some(level.into()),
                error: None,
            });
        };
        // Healthy: STRONG ok, STRONG ok. During the fault [100, 200]: STRONG
        // fail, STRONG ok, LOCAL ok. After it: LOCAL info.
        push(0, OpType::Invoke, 1, 10, "STRONG");
        push(1, OpType::Ok, 1, 20, "STRONG");
        push(2, OpType::Invoke, 1, 30, "STRONG");
        push(3, OpType::Ok, 1, 40, "STRONG");
        push(4, OpType::Invoke, 1, 100, "STRONG");
        push(5, OpType::Fail, 1, 150, "STRONG");
        push(6, OpType::Invoke, 2, 120, "STRONG");
        push(7, OpType::Ok, 2, 250, "STRONG");
        push(8, OpType::Invoke, 3, 199, "LOCAL");
        push(9, OpType::Ok, 3, 210, "LOCAL");
        push(10, OpType::Invoke, 3, 300, "LOCAL");
        push(11, OpType::Info, 3, 400, "LOCAL");
        // A cas whose comparison failed during the fault: answered.
        push(12, OpType::Invoke, 4, 150, "STRONG");
        push(13, OpType::Fail, 4, 160, "STRONG");
        h.ops[13].error = Some(format!("{COMPARE_FAILED}: the key is 3, not 2"));
        h
    }

    #[test]
    fn availability_splits_by_the_invocation_time() {
        let h = history_with_levels();
        let a = availability(&h, &[(100, 200)]);
        let strong = &a["STRONG"];
        assert_eq!((strong.healthy.ok, strong.healthy.total), (2, 2));
        assert_eq!(
            (strong.during_faults.ok, strong.during_faults.total),
            (2, 3)
        );
        let local = &a["LOCAL"];
        assert_eq!((local.during_faults.ok, local.during_faults.total), (1, 1));
        assert_eq!((local.healthy.ok, local.healthy.total), (0, 1));
        assert_eq!(local.healthy.fraction, Some(0.0));
        // No faults: everything is healthy.
        let a = availability(&h, &[]);
        assert_eq!(a["STRONG"].during_faults, Share::default());
        assert_eq!(a["STRONG"].healthy.total, 5);
    }

    #[test]
    fn counts_cover_every_client_operation() {
        let (total, by_f) = count_ops(&history_with_levels());
        assert_eq!(
            total,
            Counts {
                ok: 4,
                fail: 2,
                info: 1,
                unfinished: 0
            }
        );
        assert_eq!(by_f["write"].total(), 7);
    }

    #[test]
    fn results_dirs_name_the_run() {
        let dir = default_results_dir(
            Path::new("jepsen-results"),
            WorkloadKind::Register,
            NemesisKind::Kill,
            7,
        );
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.ends_with("Z-register-kill-seed7"), "{name}");
        assert!(!name.contains(':'));
    }
}
