//! `capkv-jepsen`: one Jepsen-style run against a fresh local cluster.
//!
//! ```text
//! capkv-jepsen --workload register --nemesis partition-leader --time-limit 60 \
//!     --concurrency 10 --nodes 3 --seed 42
//! ```
//!
//! Exit status: 0 when the run passed, 1 when a check failed (or, for
//! `stale`, found no violation), 2 when the harness itself failed (bad
//! usage, the cluster did not start), 130/143 when interrupted.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use capkv_jepsen::cluster;
use capkv_jepsen::nemesis;
use capkv_jepsen::nemesis::NemesisKind;
use capkv_jepsen::runner;
use capkv_jepsen::runner::RunConfig;
use capkv_jepsen::workload::WorkloadKind;
use clap::Parser;
use tokio::signal::unix::signal;
use tokio::signal::unix::SignalKind;

/// Jepsen-style tests of capkv: a fresh cluster of real nodes, concurrent
/// clients, injected faults (partitions with iptables, kill -9, SIGSTOP),
/// a recorded history, and a checker's verdict.
#[derive(Parser, Debug)]
#[command(name = "capkv-jepsen", version)]
struct Args {
    /// What the clients do and what is checked.
    #[arg(long, value_enum, default_value = "register")]
    workload: WorkloadKind,
    /// Which faults are injected.
    #[arg(long, value_enum, default_value = "partition-one")]
    nemesis: NemesisKind,
    /// Seconds of client operations (faults included).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Cluster size (3 or 5; 1 to 9 work).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Fixes the fault schedule and the operation mix (default: random,
    /// printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Directory holding capkv-node (default: next to this binary, else
    /// target/debug).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Port of node 1; node i listens on 127.0.0.1i:(base + i - 1).
    #[arg(long, default_value_t = cluster::DEFAULT_BASE_PORT)]
    base_port: u16,
    /// The run's results directory (default:
    /// jepsen-results/<UTC time>-<workload>-<nemesis>-seed<S>).
    #[arg(long)]
    results_dir: Option<PathBuf>,
    /// Per-operation timeout; an operation that times out is `info`.
    #[arg(long, default_value_t = 2_000)]
    op_timeout_ms: u64,
    /// How long each fault lasts.
    #[arg(long, default_value_t = 5_000)]
    fault_ms: u64,
    /// How long the cluster stays healthy between faults.
    #[arg(long, default_value_t = 5_000)]
    heal_ms: u64,
    /// Target operations per second of all clients together (0: as fast as
    /// they can).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Register keys (register and stale).
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Linearizability checker budget per key, in seconds.
    #[arg(long, default_value_t = 30)]
    checker_timeout_s: u64,
    /// How long the set may take to converge after the final heal, seconds.
    #[arg(long, default_value_t = 60)]
    settle_timeout_s: u64,
    #[arg(long, default_value_t = cluster::DEFAULT_HEARTBEAT_MS)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = cluster::DEFAULT_ELECTION_MIN_MS)]
    election_min_ms: u64,
    #[arg(long, default_value_t = cluster::DEFAULT_ELECTION_MAX_MS)]
    election_max_ms: u64,
    #[arg(long, default_value_t = cluster::DEFAULT_SNAPSHOT_EVERY_LOGS)]
    snapshot_every_logs: u64,
    /// Keep the node data directories and logs even when the run passed.
    #[arg(long)]
    keep_node_data: bool,
}

/// The default directory of capkv-node: next to this binary (cargo builds
/// both into the same target directory), else target/debug.
fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
    {
        if dir.join("capkv-node").is_file() {
            return dir;
        }
    }
    PathBuf::from("target/debug")
}

async fn interrupted() -> i32 {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return 130;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => 130,
        _ = terminate.recv() => 143,
    }
}

fn main() {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,tower=warn,hyper=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    nemesis::install_panic_hook();

    let seed = args.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    if args.seed.is_none() {
        eprintln!("capkv-jepsen: seed {seed} (pass --seed {seed} to repeat this run's schedule and op mix)");
    }
    let results_dir = args.results_dir.clone().unwrap_or_else(|| {
        runner::default_results_dir(
            &PathBuf::from("jepsen-results"),
            args.workload,
            args.nemesis,
            seed,
        )
    });
    let config = RunConfig {
        workload: args.workload,
        nemesis: args.nemesis,
        time_limit: Duration::from_secs(args.time_limit),
        concurrency: args.concurrency.max(1),
        nodes: args.nodes,
        seed,
        bin_dir: args.bin_dir.clone().unwrap_or_else(default_bin_dir),
        base_port: args.base_port,
        results_dir,
        op_timeout: Duration::from_millis(args.op_timeout_ms.max(1)),
        fault: Duration::from_millis(args.fault_ms),
        heal: Duration::from_millis(args.heal_ms),
        rate: args.rate.max(0.0),
        keys: args.keys.max(1),
        checker_timeout: Duration::from_secs(args.checker_timeout_s),
        settle_timeout: Duration::from_secs(args.settle_timeout_s),
        heartbeat_ms: args.heartbeat_ms,
        election_min_ms: args.election_min_ms,
        election_max_ms: args.election_max_ms,
        snapshot_every_logs: args.snapshot_every_logs,
        keep_node_data: args.keep_node_data,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("capkv-jepsen: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        tokio::select! {
            result = runner::run(&config) => match result {
                Ok(report) => {
                    println!("{}", report.line());
                    if report.summary.passed { 0 } else { 1 }
                }
                Err(e) => {
                    eprintln!("capkv-jepsen: harness error: {e:#}");
                    println!(
                        "capkv-jepsen: ERROR {} / {} seed {}: {e:#}; results in {}",
                        config.workload, config.nemesis, config.seed, config.results_dir.display()
                    );
                    2
                }
            },
            code = interrupted() => {
                // The run's future is dropped here: the cluster is killed and
                // the nemesis guard heals.
                eprintln!("capkv-jepsen: interrupted: killing the nodes and healing the network");
                code
            }
        }
    });
    // Belt and braces: heal again (a no-op when nothing is left).
    nemesis::emergency_cleanup();
    runtime.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
