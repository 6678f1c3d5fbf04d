//! `capkv-bench`: one benchmark run (the default), or `capkv-bench report`
//! to turn the runs' JSON lines into results.json, results.md and a chart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use capkv_bench::level::{check_combination, Level, System, Workload};
use capkv_bench::ops::{self, WorkloadSpec};
use capkv_bench::record::{append_record, read_records, RunRecord};
use capkv_bench::runner::{preload, run_load, Schedule};
use capkv_bench::stats::LatencySummary;
use capkv_bench::target::{capkv_reconcile_lag, CapkvTarget, Target};
use capkv_bench::{chart, machine, procfs, report};
use clap::{Args, Parser, Subcommand};
use tokio::time::Instant;

/// Largest client count accepted.
const MAX_CLIENTS: u32 = 10_000;
/// Longest warm-up or window accepted, seconds.
const MAX_WINDOW_S: f64 = 3_600.0;
/// Pause after a preload, so followers apply the last entries before reads.
const SETTLE_AFTER_PRELOAD: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(
    name = "capkv-bench",
    about = "Closed-loop benchmark of capkv and etcd: one run per call, or `report` to build the tables and chart",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Aggregate run records (JSON lines) into results.json, results.md and chart.png.
    Report(ReportArgs),
    /// Print the systems this binary can drive, one per line (etcd only when
    /// built with the `etcd` feature).
    Targets,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The system: capkv (through the SDK) or etcd (through etcd-client).
    #[arg(long, required = true)]
    target: Option<System>,
    /// The nodes' client addresses, host:port, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// put, ingest, get or range.
    #[arg(long, required = true)]
    workload: Option<Workload>,
    /// strong | local | strong-or-local[:<ms>] (writes), linearizable | session |
    /// eventual | bounded:<ms> (capkv reads), linearizable | serializable (etcd
    /// reads). Default: the strongest.
    #[arg(long)]
    level: Option<Level>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Readings per ingest request.
    #[arg(long, default_value_t = 1)]
    batch: u32,
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// The measured window.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Independent connections (SDK clients / etcd clients) the clients are
    /// spread over; default: one per endpoint.
    #[arg(long)]
    connections: Option<u32>,
    /// Key space of put; keys preloaded for get.
    #[arg(long, default_value_t = ops::DEFAULT_KEYS)]
    keys: u64,
    #[arg(long, default_value_t = ops::DEFAULT_VALUE_BYTES)]
    value_bytes: usize,
    /// Sensors preloaded for range.
    #[arg(long, default_value_t = ops::DEFAULT_RANGE_SENSORS)]
    range_sensors: u32,
    #[arg(long, default_value_t = ops::DEFAULT_READINGS_PER_SENSOR)]
    readings_per_sensor: u32,
    /// Readings one range operation reads (newest first).
    #[arg(long, default_value_t = ops::DEFAULT_RANGE_LIMIT)]
    range_limit: u32,
    /// Do not preload (the data of get/range is already there).
    #[arg(long)]
    skip_preload: bool,
    #[arg(long, default_value_t = 64)]
    preload_concurrency: u32,
    #[arg(long, default_value_t = 600)]
    preload_timeout_s: u64,
    /// How long to wait for the last LOCAL writes to become visible.
    #[arg(long, default_value_t = 120)]
    lag_timeout_s: u64,
    /// The server processes (for CPU and peak RSS), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// The servers' data directories (for disk bytes), comma-separated.
    #[arg(long, value_delimiter = ',')]
    data_dirs: Vec<PathBuf>,
    /// Append the run's record (one JSON line) to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The runs, one JSON record per line (what --json-out appends).
    #[arg(long)]
    runs: PathBuf,
    /// Where results.json, results.md and chart.png go.
    #[arg(long)]
    out_dir: PathBuf,
    /// TrueType font for the chart's text (drawn without text if unusable).
    #[arg(long, default_value = chart::DEFAULT_FONT)]
    font: PathBuf,
    /// The command that produced the runs, for the report.
    #[arg(long)]
    command: Option<String>,
    /// Extra lines for the report's header (repeatable).
    #[arg(long)]
    note: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Report(args)) => write_report(args),
        Some(Command::Targets) => {
            println!("capkv");
            if cfg!(feature = "etcd") {
                println!("etcd");
            }
            Ok(())
        }
        None => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let ok = runtime.block_on(run(cli.run))?;
            if !ok {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn check_window(name: &str, seconds: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    let ok = seconds.is_finite()
        && seconds <= MAX_WINDOW_S
        && (seconds > 0.0 || (allow_zero && seconds == 0.0));
    if !ok {
        bail!(
            "--{name} must be {} and at most {MAX_WINDOW_S}, got {seconds}",
            if allow_zero { ">= 0" } else { "> 0" }
        );
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One run; `Ok(false)` when nothing succeeded in the window.
async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let system = args.target.context("--target is required")?;
    let workload = args.workload.context("--workload is required")?;
    let level = args.level.unwrap_or(Level::default_for(workload));
    check_combination(system, workload, level).map_err(anyhow::Error::msg)?;
    if args.endpoints.is_empty() {
        bail!("--endpoints is required");
    }
    if args.clients == 0 || args.clients > MAX_CLIENTS {
        bail!("--clients must be 1 to {MAX_CLIENTS}");
    }
    if args.batch == 0 || args.batch > ops::MAX_BATCH {
        bail!("--batch must be 1 to {}", ops::MAX_BATCH);
    }
    if workload != Workload::Ingest && args.batch != 1 {
        bail!("--batch applies to the ingest workload only");
    }
    if args.keys == 0 || args.range_sensors == 0 || args.range_limit == 0 {
        bail!("--keys, --range-sensors and --range-limit must be at least 1");
    }
    let warmup = check_window("warmup-s", args.warmup_s, true)?;
    let duration = check_window("duration-s", args.duration_s, false)?;
    let connections = args
        .connections
        .unwrap_or(args.endpoints.len() as u32)
        .clamp(1, args.clients);

    let spec = Arc::new(WorkloadSpec {
        workload,
        batch: args.batch,
        keys: args.keys,
        value_bytes: args.value_bytes,
        range_sensors: args.range_sensors,
        readings_per_sensor: args.readings_per_sensor,
        range_limit: args.range_limit,
        run_tag: format!("{:06x}", rand::random::<u32>() & 0xff_ffff),
        base_ts_ms: now_ms(),
        seed: args.seed,
    });
    let plan = Plan {
        system,
        workload,
        level,
        clients: args.clients,
        connections,
        warmup,
        duration,
        spec,
    };
    let record = match system {
        System::Capkv => {
            let target = Arc::new(CapkvTarget::new(
                &args.endpoints,
                connections as usize,
                level,
            )?);
            measure(target, &plan, &args).await?
        }
        System::Etcd => run_etcd(&plan, &args).await?,
    };
    println!("{}", record.one_line());
    for sample in &record.error_samples {
        println!("  error: {sample}");
    }
    if let Some(path) = &args.json_out {
        append_record(path, &record).with_context(|| format!("appending to {}", path.display()))?;
    }
    Ok(record.ops > 0)
}

#[cfg(feature = "etcd")]
async fn run_etcd(plan: &Plan, args: &RunArgs) -> anyhow::Result<RunRecord> {
    let target = Arc::new(
        capkv_bench::target::EtcdTarget::new(
            &args.endpoints,
            plan.connections as usize,
            plan.level,
        )
        .await?,
    );
    measure(target, plan, args).await
}

#[cfg(not(feature = "etcd"))]
async fn run_etcd(_plan: &Plan, _args: &RunArgs) -> anyhow::Result<RunRecord> {
    bail!(
        "this capkv-bench was built without the etcd target: build it with \
         `cargo build --release -p capkv-bench --features etcd` (etcd-client's build needs \
         protoc: PROTOC=/path/to/protoc or protoc on PATH; scripts/bench.sh does this)"
    )
}

struct Plan {
    system: System,
    workload: Workload,
    level: Level,
    clients: u32,
    connections: u32,
    warmup: Duration,
    duration: Duration,
    spec: Arc<WorkloadSpec>,
}

/// CPU seconds, now: of each server (None when a pid cannot be read), of
/// this process, and of the whole machine (busy time).
struct CpuSample {
    servers: Vec<Option<f64>>,
    own: f64,
    machine: Option<f64>,
}

fn cpu_sample(pids: &[u32]) -> CpuSample {
    CpuSample {
        servers: pids
            .iter()
            .map(|&pid| procfs::cpu_seconds(pid).ok())
            .collect(),
        own: procfs::own_cpu_seconds().unwrap_or(0.0),
        machine: procfs::machine_busy_seconds().ok(),
    }
}

async fn measure<T: Target>(
    target: Arc<T>,
    plan: &Plan,
    args: &RunArgs,
) -> anyhow::Result<RunRecord> {
    let mut preload_s = None;
    if !args.skip_preload && !plan.workload.is_write() {
        let (per_request, kv_batches) = match plan.system {
            System::Capkv => (ops::CAPKV_PRELOAD_BATCH, false),
            System::Etcd => (ops::ETCD_PRELOAD_BATCH, true),
        };
        let preload_ops = plan.spec.preload_ops(per_request, kv_batches);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.preload_timeout_s);
        let items = preload(
            Arc::clone(&target),
            preload_ops,
            args.preload_concurrency as usize,
            deadline,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("preloaded {items} items in {seconds:.1} s");
        preload_s = Some(seconds);
        tokio::time::sleep(SETTLE_AFTER_PRELOAD).await;
    }

    let schedule = Schedule::new(
        Instant::now() + Duration::from_millis(20),
        plan.warmup,
        plan.duration,
    );
    let pids = args.pids.clone();
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(schedule.window_start).await;
        let before = cpu_sample(&pids);
        tokio::time::sleep_until(schedule.window_end).await;
        let after = cpu_sample(&pids);
        (before, after)
    });
    let load = run_load(
        target,
        Arc::clone(&plan.spec),
        plan.clients as usize,
        schedule,
    )
    .await;
    let (before, after) = sampler.await.context("the CPU sampler failed")?;
    let server_cpu_s: Vec<f64> = before
        .servers
        .iter()
        .zip(&after.servers)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) => (a - b).max(0.0),
            _ => f64::NAN,
        })
        .collect();
    if server_cpu_s.iter().any(|v| v.is_nan()) {
        eprintln!("warning: could not read the CPU time of every --pids process");
    }
    let server_cpu_s = server_cpu_s
        .into_iter()
        .map(|v| if v.is_nan() { 0.0 } else { v })
        .collect();
    let machine_cpu_s = match (before.machine, after.machine) {
        (Some(b), Some(a)) => Some((a - b).max(0.0)),
        _ => None,
    };

    let (mut reconcile_lag_ms, mut reconcile_error) = (None, None);
    if plan.system == System::Capkv && plan.level.may_be_provisional() {
        let mut acks: Vec<_> = load.last_provisional.values().cloned().collect();
        acks.sort_by_key(|(at, _)| *at);
        if acks.is_empty() {
            if plan.level == Level::Local {
                reconcile_error = Some("no LOCAL write was acknowledged".to_string());
            }
        } else {
            match capkv_reconcile_lag(
                &args.endpoints,
                &acks,
                Duration::from_secs(args.lag_timeout_s),
            )
            .await
            {
                Ok(lag) => reconcile_lag_ms = Some(lag.as_secs_f64() * 1_000.0),
                Err(error) => reconcile_error = Some(error),
            }
        }
    }

    let peak_rss_kib = args
        .pids
        .iter()
        .map(|&pid| procfs::peak_rss_kib(pid).unwrap_or(0))
        .collect();
    let disk_bytes = args
        .data_dirs
        .iter()
        .map(|dir| procfs::dir_bytes(dir).unwrap_or(0))
        .collect();
    let window = plan.duration.as_secs_f64();
    Ok(RunRecord {
        time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        system: plan.system,
        workload: plan.workload,
        level: plan.level,
        clients: plan.clients,
        batch: plan.spec.batch,
        connections: plan.connections,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: window,
        ops: load.ops,
        items: load.items,
        errors: load.errors,
        misses: load.misses,
        provisional: load.provisional,
        ops_per_s: load.ops as f64 / window,
        items_per_s: load.items as f64 / window,
        latency: LatencySummary::of(&load.histogram),
        server_cpu_s,
        client_cpu_s: (after.own - before.own).max(0.0),
        machine_cpu_s,
        peak_rss_kib,
        disk_bytes,
        reconcile_lag_ms,
        reconcile_error,
        preload_s,
        error_samples: load.error_samples,
    })
}

#[derive(serde::Serialize)]
struct ResultsDoc<'a> {
    generated: String,
    machine: String,
    command: Option<&'a str>,
    notes: &'a [String],
    targets: Vec<report::TargetCheck>,
    rows: Vec<report::Row>,
    runs: &'a [RunRecord],
}

fn write_report(args: ReportArgs) -> anyhow::Result<()> {
    let records =
        read_records(&args.runs).with_context(|| format!("reading {}", args.runs.display()))?;
    if records.is_empty() {
        bail!("{} holds no runs", args.runs.display());
    }
    std::fs::create_dir_all(&args.out_dir)?;
    let aggs = report::aggregate(&records);
    let rows = report::rows(&aggs);
    let checks = report::check_targets(&rows, &aggs);
    let machine = machine::describe();
    let generated = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();

    let doc = ResultsDoc {
        generated: generated.clone(),
        machine: machine.clone(),
        command: args.command.as_deref(),
        notes: &args.note,
        targets: checks.clone(),
        rows: rows.clone(),
        runs: &records,
    };
    let json_path = args.out_dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;

    let mut md = format!("# capkv vs etcd ({generated})\n\n");
    md += &format!("- machine: {machine}\n");
    if let Some(command) = &args.command {
        md += &format!("- command: `{command}`\n");
    }
    for note in &args.note {
        md += &format!("- {note}\n");
    }
    md += "- throughput: successful operations (readings for ingest) per second of the measured window; latencies in ms; ratios are capkv / etcd (throughput: higher is better for capkv; p99: lower is better for capkv); repeated configurations are medians\n\n";
    md += "### Targets\n\n";
    md += &report::targets_markdown(&checks);
    md += &report::markdown(&rows, &aggs);
    let md_path = args.out_dir.join("results.md");
    std::fs::write(&md_path, md)?;

    let png = args.out_dir.join("chart.png");
    let with_text = match chart::load_font(&args.font) {
        Ok(_) => true,
        Err(error) => {
            eprintln!("warning: chart without text: {error}");
            false
        }
    };
    if let Err(error) = chart::draw_chart(&aggs, &png, with_text) {
        if !with_text {
            return Err(error);
        }
        eprintln!("warning: chart with text failed ({error}); drawing it without text");
        chart::draw_chart(&aggs, &png, false)?;
    }
    println!(
        "wrote {}, {} and {}",
        json_path.display(),
        md_path.display(),
        png.display()
    );
    Ok(())
}
