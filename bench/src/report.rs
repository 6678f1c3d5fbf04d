//! From run records to the comparison: runs of the same configuration
//! aggregated (median), each capkv configuration paired with its etcd
//! counterpart, the markdown tables and the check of issue 5's targets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::level::{Level, System, Workload};
use crate::record::RunRecord;
use crate::stats::median;

/// What identifies a configuration; runs with equal keys are repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RunKey {
    pub workload: Workload,
    pub batch: u32,
    pub clients: u32,
    pub system: System,
    pub level: Level,
}

impl RunKey {
    pub fn of(record: &RunRecord) -> RunKey {
        RunKey {
            workload: record.workload,
            batch: record.batch,
            clients: record.clients,
            system: record.system,
            level: record.level,
        }
    }
}

/// The repetitions of one configuration, summarized: medians, except errors
/// (summed), peak RSS (highest) and reconciliation lag (highest).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Agg {
    pub runs: usize,
    /// Successful operations in the windows, all runs together.
    pub ops: u64,
    /// readings/s for ingest, else ops/s.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    pub misses: u64,
    /// CPU seconds of all server processes in the window.
    pub server_cpu_s: f64,
    /// Server CPU milliseconds per 1 000 items (keys or readings).
    pub server_cpu_ms_per_1k_items: Option<f64>,
    pub client_cpu_s: f64,
    /// CPU seconds of other processes on the machine during the window.
    pub other_cpu_s: Option<f64>,
    /// The highest peak RSS of any node, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Bytes on disk of all data directories, MiB.
    pub disk_mib: Option<f64>,
    pub reconcile_lag_ms: Option<f64>,
    /// Set when a run could not measure the lag (the first reason).
    pub reconcile_error: Option<String>,
}

impl Agg {
    /// Whether anything succeeded: a configuration whose every operation
    /// failed has no latencies to compare.
    pub fn measured(&self) -> bool {
        self.ops > 0
    }
}

pub fn aggregate(records: &[RunRecord]) -> BTreeMap<RunKey, Agg> {
    let mut groups: BTreeMap<RunKey, Vec<&RunRecord>> = BTreeMap::new();
    for record in records {
        groups.entry(RunKey::of(record)).or_default().push(record);
    }
    groups
        .into_iter()
        .map(|(key, runs)| {
            let med =
                |f: &dyn Fn(&RunRecord) -> f64| median(runs.iter().map(|r| f(r))).unwrap_or(0.0);
            let items = med(&|r| r.items as f64);
            let server_cpu_s = med(&|r| r.server_cpu_total());
            let has_cpu = runs.iter().any(|r| !r.server_cpu_s.is_empty());
            let agg = Agg {
                runs: runs.len(),
                ops: runs.iter().map(|r| r.ops).sum(),
                throughput: med(&|r| r.throughput()),
                p50_ms: med(&|r| r.latency.p50_ms),
                p99_ms: med(&|r| r.latency.p99_ms),
                p999_ms: med(&|r| r.latency.p999_ms),
                errors: runs.iter().map(|r| r.errors).sum(),
                misses: runs.iter().map(|r| r.misses).sum(),
                server_cpu_s,
                server_cpu_ms_per_1k_items: (has_cpu && items > 0.0)
                    .then(|| server_cpu_s * 1_000.0 / items * 1_000.0),
                client_cpu_s: med(&|r| r.client_cpu_s),
                other_cpu_s: median(runs.iter().filter_map(|r| r.other_cpu_s())),
                peak_rss_mib: runs
                    .iter()
                    .filter_map(|r| r.max_peak_rss_mib())
                    .reduce(f64::max),
                disk_mib: median(
                    runs.iter()
                        .filter(|r| !r.disk_bytes.is_empty())
                        .map(|r| r.disk_total_bytes() as f64 / (1024.0 * 1024.0)),
                ),
                reconcile_lag_ms: runs
                    .iter()
                    .filter_map(|r| r.reconcile_lag_ms)
                    .reduce(f64::max),
                reconcile_error: runs.iter().find_map(|r| r.reconcile_error.clone()),
            };
            (key, agg)
        })
        .collect()
}

/// One line of the comparison: a capkv configuration and the etcd run it is
/// compared with (either may be missing).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub workload: Workload,
    pub batch: u32,
    pub clients: u32,
    pub capkv_level: Option<Level>,
    pub capkv: Option<Agg>,
    pub etcd_level: Level,
    pub etcd: Option<Agg>,
    /// capkv throughput / etcd throughput (higher is better for capkv).
    pub throughput_ratio: Option<f64>,
    /// capkv p99 / etcd p99 (lower is better for capkv).
    pub p99_ratio: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The comparison rows, ordered by workload, batch, clients, capkv level;
/// etcd runs no capkv run refers to get a row of their own.
pub fn rows(aggs: &BTreeMap<RunKey, Agg>) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut used = BTreeSet::new();
    for (key, agg) in aggs.iter().filter(|(k, _)| k.system == System::Capkv) {
        let etcd_key = RunKey {
            system: System::Etcd,
            level: key.level.etcd_counterpart(),
            ..*key
        };
        let etcd = aggs.get(&etcd_key).cloned();
        if etcd.is_some() {
            used.insert(etcd_key);
        }
        rows.push(Row {
            workload: key.workload,
            batch: key.batch,
            clients: key.clients,
            capkv_level: Some(key.level),
            throughput_ratio: etcd
                .as_ref()
                .and_then(|e| ratio(agg.throughput, e.throughput)),
            p99_ratio: etcd
                .as_ref()
                .filter(|e| e.measured() && agg.measured())
                .and_then(|e| ratio(agg.p99_ms, e.p99_ms)),
            capkv: Some(agg.clone()),
            etcd_level: etcd_key.level,
            etcd,
        });
    }
    for (key, agg) in aggs.iter().filter(|(k, _)| k.system == System::Etcd) {
        if !used.contains(key) {
            rows.push(Row {
                workload: key.workload,
                batch: key.batch,
                clients: key.clients,
                capkv_level: None,
                capkv: None,
                etcd_level: key.level,
                etcd: Some(agg.clone()),
                throughput_ratio: None,
                p99_ratio: None,
            });
        }
    }
    rows.sort_by_key(|row| (row.workload, row.batch, row.clients, row.capkv_level));
    rows
}

/// A throughput with thousands separators: `123,456`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    if !rounded.is_finite() {
        return "-".to_string();
    }
    let digits = format!("{}", rounded.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        out.insert(0, '-');
    }
    out
}

fn ms(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn latencies(agg: &Agg) -> String {
    if !agg.measured() {
        return "-".to_string();
    }
    format!(
        "{} / {} / {}",
        ms(agg.p50_ms),
        ms(agg.p99_ms),
        ms(agg.p999_ms)
    )
}

/// The throughput cell: the number, or why there is none.
fn throughput_cell(agg: &Agg) -> String {
    if !agg.measured() {
        return format!("0 (all {} failed)", agg.errors);
    }
    let mut cell = thousands(agg.throughput);
    if agg.errors > 0 {
        cell += &format!(" ({} errors)", agg.errors);
    }
    cell
}

/// The lag cell: the lag, or that it was not reached.
fn lag_cell(agg: &Agg) -> String {
    match (agg.reconcile_lag_ms, &agg.reconcile_error) {
        (Some(lag), None) => format!("{lag:.0}"),
        (Some(lag), Some(_)) => format!("{lag:.0} (some runs: not visible in time)"),
        (None, Some(_)) => "not visible in time".to_string(),
        (None, None) => "-".to_string(),
    }
}

fn opt(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_string(), format)
}

/// The markdown tables: per workload (and batch) the comparison with
/// ratios, then what each configuration cost the servers.
pub fn markdown(rows: &[Row], aggs: &BTreeMap<RunKey, Agg>) -> String {
    let mut out = String::new();
    let mut section: Option<(Workload, u32)> = None;
    for row in rows {
        if section != Some((row.workload, row.batch)) {
            section = Some((row.workload, row.batch));
            let title = match row.workload {
                Workload::Ingest => format!("ingest, batches of {} (readings/s)", row.batch),
                Workload::Put => "put, 256-byte values (ops/s)".to_string(),
                Workload::Get => "get (ops/s)".to_string(),
                Workload::Range => "range, newest 1,000 readings (ops/s)".to_string(),
            };
            let _ = writeln!(out, "\n#### {title}\n");
            out.push_str("| clients | capkv level | capkv throughput | capkv p50 / p99 / p99.9 ms | etcd level | etcd throughput | etcd p50 / p99 / p99.9 ms | throughput capkv/etcd | p99 capkv/etcd |\n");
            out.push_str("|---:|---|---:|---:|---|---:|---:|---:|---:|\n");
        }
        let capkv = row.capkv.as_ref();
        let etcd = row.etcd.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.clients,
            row.capkv_level.map_or("-".to_string(), |l| l.to_string()),
            capkv.map_or("-".to_string(), throughput_cell),
            capkv.map_or("-".to_string(), latencies),
            row.etcd_level,
            etcd.map_or("-".to_string(), throughput_cell),
            etcd.map_or("-".to_string(), latencies),
            opt(row.throughput_ratio, |r| format!("**{r:.2}x**")),
            opt(row.p99_ratio, |r| format!("{r:.2}x")),
        );
    }
    if !aggs.is_empty() {
        out.push_str("\n#### Cost per configuration\n\n");
        out.push_str("| workload | batch | clients | system | level | runs | errors | server CPU s | server CPU ms / 1k items | client CPU s | other CPU s | peak RSS MiB (max node) | disk MiB (3 nodes) | reconcile lag ms |\n");
        out.push_str("|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let mut keys: Vec<&RunKey> = aggs.keys().collect();
        keys.sort_by_key(|k| (k.workload, k.batch, k.clients, k.system, k.level));
        for key in keys {
            let agg = &aggs[key];
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {:.1} | {} | {} | {} | {} |",
                key.workload,
                key.batch,
                key.clients,
                key.system,
                key.level,
                agg.runs,
                agg.errors,
                agg.server_cpu_s,
                opt(agg.server_cpu_ms_per_1k_items, |v| format!("{v:.1}")),
                agg.client_cpu_s,
                opt(agg.other_cpu_s, |v| format!("{v:.1}")),
                opt(agg.peak_rss_mib, |v| format!("{v:.0}")),
                opt(agg.disk_mib, |v| format!("{v:.1}")),
                lag_cell(agg),
            );
        }
    }
    out
}

/// One of issue 5's targets and where this run stands.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    /// `None` when this run did not measure it.
    pub met: Option<bool>,
}

fn find(rows: &[Row], workload: Workload, batch: u32, clients: u32, level: Level) -> Option<&Row> {
    rows.iter().find(|r| {
        r.workload == workload
            && r.batch == batch
            && r.clients == clients
            && r.capkv_level == Some(level)
            && r.capkv.is_some()
            && r.etcd.is_some()
    })
}

fn not_measured(target: &str) -> TargetCheck {
    TargetCheck {
        target: target.to_string(),
        measured: "not measured in this run".to_string(),
        met: None,
    }
}

/// Checks a read level against its etcd counterpart at every client count
/// measured: met when capkv's throughput is at least etcd's at all of them.
fn read_target(rows: &[Row], level: Level, target: &str) -> TargetCheck {
    let matching: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.workload == Workload::Get
                && r.capkv_level == Some(level)
                && r.throughput_ratio.is_some()
        })
        .collect();
    if matching.is_empty() {
        return not_measured(target);
    }
    let parts: Vec<String> = matching
        .iter()
        .map(|r| {
            format!(
                "{:.2}x at {} clients",
                r.throughput_ratio.unwrap_or(0.0),
                r.clients
            )
        })
        .collect();
    TargetCheck {
        target: target.to_string(),
        measured: parts.join(", "),
        met: Some(
            matching
                .iter()
                .all(|r| r.throughput_ratio.unwrap_or(0.0) >= 1.0),
        ),
    }
}

/// A STRONG put row against its bar: at least 1.5x etcd's throughput, p99
/// no worse than etcd's.
fn strong_put_check(target: String, row: Option<&Row>) -> TargetCheck {
    let Some(row) = row else {
        return not_measured(&target);
    };
    let (c, e) = (row.capkv.as_ref().unwrap(), row.etcd.as_ref().unwrap());
    let r = row.throughput_ratio.unwrap_or(0.0);
    TargetCheck {
        target,
        measured: format!(
            "{r:.2}x ({} vs {} ops/s), p99 {} vs {} ms",
            throughput_cell(c),
            throughput_cell(e),
            if c.measured() {
                ms(c.p99_ms)
            } else {
                "-".into()
            },
            ms(e.p99_ms)
        ),
        met: Some(c.measured() && r >= 1.5 && c.p99_ms <= e.p99_ms),
    }
}

/// Issue 5's targets, checked against this run's rows.
pub fn check_targets(rows: &[Row], aggs: &BTreeMap<RunKey, Agg>) -> Vec<TargetCheck> {
    let mut checks = Vec::new();

    // The target is for plain puts; the same bar with the SDK's put
    // coalescing on is reported beside it.
    let strong_put_rows = [
        (Level::Strong, ""),
        (Level::StrongCoalesced, ", SDK put coalescing"),
    ];
    for (level, how) in strong_put_rows {
        for clients in [64, 256] {
            let target = format!(
                "STRONG put at {clients} clients{how}: throughput >= 1.5x etcd's, p99 <= etcd's"
            );
            checks.push(strong_put_check(
                target,
                find(rows, Workload::Put, 1, clients, level),
            ));
        }
    }

    let local_put_rows = [
        (Level::Local, ""),
        (Level::LocalCoalesced, ", SDK put coalescing"),
    ];
    for (level, how) in local_put_rows {
        let target =
            format!("LOCAL put at 64 clients{how}: throughput >= 5x etcd's put, p99 < 5 ms");
        checks.push(match find(rows, Workload::Put, 1, 64, level) {
            Some(row) => {
                let c = row.capkv.as_ref().unwrap();
                let r = row.throughput_ratio.unwrap_or(0.0);
                TargetCheck {
                    target,
                    measured: if c.measured() {
                        format!("{r:.2}x, p99 {} ms", ms(c.p99_ms))
                    } else {
                        format!("every operation failed ({} errors)", c.errors)
                    },
                    met: Some(c.measured() && r >= 5.0 && c.p99_ms < 5.0),
                }
            }
            None => not_measured(&target),
        });
    }

    let target = "ingest STRONG, batches of 100: >= 100,000 readings/s";
    let best = aggs
        .iter()
        .filter(|(k, _)| {
            k.system == System::Capkv
                && k.workload == Workload::Ingest
                && k.batch == 100
                && k.level == Level::Strong
        })
        .max_by(|a, b| a.1.throughput.total_cmp(&b.1.throughput));
    checks.push(match best {
        Some((key, agg)) => TargetCheck {
            target: target.to_string(),
            measured: format!(
                "best {} readings/s (at {} clients)",
                thousands(agg.throughput),
                key.clients
            ),
            met: Some(agg.throughput >= 100_000.0),
        },
        None => not_measured(target),
    });

    checks.push(read_target(
        rows,
        Level::Linearizable,
        "LINEARIZABLE get: throughput >= etcd's linearizable get",
    ));
    checks.push(read_target(
        rows,
        Level::Eventual,
        "EVENTUAL get: throughput >= etcd's serializable get",
    ));

    let target = "peak RSS per node <= etcd's (highest node over all runs)";
    let peak = |system: System| {
        aggs.iter()
            .filter(|(k, _)| k.system == system)
            .filter_map(|(_, a)| a.peak_rss_mib)
            .reduce(f64::max)
    };
    checks.push(match (peak(System::Capkv), peak(System::Etcd)) {
        (Some(c), Some(e)) => TargetCheck {
            target: target.to_string(),
            measured: format!("capkv {c:.0} MiB, etcd {e:.0} MiB"),
            met: Some(c <= e),
        },
        _ => not_measured(target),
    });
    checks
}

pub fn targets_markdown(checks: &[TargetCheck]) -> String {
    let mut out = String::from("| target (issue 5) | measured | met |\n|---|---|---|\n");
    for check in checks {
        let met = match check.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(out, "| {} | {} | {met} |", check.target, check.measured);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record;

    fn sample() -> Vec<RunRecord> {
        use Level::*;
        use System::*;
        use Workload::*;
        vec![
            record(Capkv, Put, Strong, 64, 1, 3_000.0, 30.0),
            record(Capkv, Put, Strong, 64, 1, 5_000.0, 10.0),
            record(Capkv, Put, Strong, 64, 1, 4_000.0, 20.0),
            record(Capkv, Put, Local, 64, 1, 40_000.0, 3.0),
            record(Etcd, Put, Strong, 64, 1, 2_000.0, 40.0),
            record(Capkv, Get, Linearizable, 16, 1, 10_000.0, 2.0),
            record(Etcd, Get, Linearizable, 16, 1, 20_000.0, 1.0),
            record(Capkv, Get, Eventual, 16, 1, 30_000.0, 1.0),
            record(Etcd, Get, Serializable, 16, 1, 25_000.0, 1.0),
            record(Etcd, Range, Serializable, 1, 1, 100.0, 10.0),
            record(Capkv, Ingest, Strong, 64, 100, 120_000.0, 50.0),
        ]
    }

    #[test]
    fn repetitions_aggregate_to_medians() {
        let aggs = aggregate(&sample());
        let key = RunKey {
            workload: Workload::Put,
            batch: 1,
            clients: 64,
            system: System::Capkv,
            level: Level::Strong,
        };
        let agg = &aggs[&key];
        assert_eq!(agg.runs, 3);
        assert_eq!(agg.throughput, 4_000.0);
        assert_eq!(agg.p99_ms, 20.0);
        assert_eq!(agg.server_cpu_s, 2.0);
        assert_eq!(agg.peak_rss_mib, Some(40.0));
        // 2 CPU s for 20 000 items: 100 ms per 1 000.
        let per_1k = agg.server_cpu_ms_per_1k_items.expect("cpu known");
        assert!((per_1k - 100.0).abs() < 1e-9, "{per_1k}");
    }

    #[test]
    fn rows_pair_levels_with_their_etcd_counterpart() {
        let aggs = aggregate(&sample());
        let rows = rows(&aggs);
        let local = rows
            .iter()
            .find(|r| r.capkv_level == Some(Level::Local))
            .expect("local row");
        assert_eq!(local.etcd_level, Level::Strong);
        assert_eq!(local.throughput_ratio, Some(20.0));
        assert_eq!(local.p99_ratio, Some(3.0 / 40.0));
        let eventual = rows
            .iter()
            .find(|r| r.capkv_level == Some(Level::Eventual))
            .expect("eventual row");
        assert_eq!(eventual.etcd_level, Level::Serializable);
        assert_eq!(eventual.throughput_ratio, Some(1.2));
        // The etcd range run has no capkv partner: a row of its own.
        let lone = rows
            .iter()
            .find(|r| r.workload == Workload::Range)
            .expect("etcd-only row");
        assert!(lone.capkv.is_none() && lone.throughput_ratio.is_none());
        // The ingest row has no etcd partner.
        let ingest = rows
            .iter()
            .find(|r| r.workload == Workload::Ingest)
            .expect("ingest row");
        assert!(ingest.etcd.is_none() && ingest.throughput_ratio.is_none());
        // Ordered by workload, then clients.
        let order: Vec<Workload> = rows.iter().map(|r| r.workload).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        assert_eq!(rows.len(), 6);
    }

    #[test]
    fn markdown_has_one_section_per_workload_and_the_ratios() {
        let aggs = aggregate(&sample());
        let rows = rows(&aggs);
        let md = markdown(&rows, &aggs);
        assert!(md.contains("#### put, 256-byte values (ops/s)"), "{md}");
        assert!(
            md.contains("#### ingest, batches of 100 (readings/s)"),
            "{md}"
        );
        assert!(
            md.contains("| 64 | strong | 4,000 | 5.00 / 20.0 / 30.0 | strong | 2,000 | 10.0 / 40.0 / 60.0 | **2.00x** | 0.50x |"),
            "{md}"
        );
        assert!(md.contains("| 64 | local | 40,000 |"), "{md}");
        assert!(md.contains("#### Cost per configuration"), "{md}");
        // Every table line has the same number of cells as its header.
        for table in md.split("\n\n") {
            let lines: Vec<&str> = table.lines().filter(|l| l.starts_with('|')).collect();
            if let Some(header) = lines.first() {
                let cells = header.matches('|').count();
                for line in &lines {
                    assert_eq!(line.matches('|').count(), cells, "{line}");
                }
            }
        }
    }

    #[test]
    fn targets_are_checked_where_measured() {
        let aggs = aggregate(&sample());
        let rows = rows(&aggs);
        let checks = check_targets(&rows, &aggs);
        let by_name = |prefix: &str| {
            checks
                .iter()
                .find(|c| c.target.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix}: {checks:?}"))
        };
        // 2x and p99 20 vs 40 ms: met.
        assert_eq!(by_name("STRONG put at 64").met, Some(true));
        assert_eq!(by_name("STRONG put at 256").met, None);
        // 20x, p99 3 ms.
        assert_eq!(by_name("LOCAL put at 64 clients:").met, Some(true));
        assert_eq!(by_name("LOCAL put at 64 clients, SDK").met, None);
        assert_eq!(by_name("ingest STRONG").met, Some(true));
        assert_eq!(by_name("LINEARIZABLE get").met, Some(false));
        assert_eq!(by_name("EVENTUAL get").met, Some(true));
        assert_eq!(by_name("peak RSS").met, Some(true));
        let md = targets_markdown(&checks);
        assert!(md.contains("| **no** |"), "{md}");
        assert!(md.contains("not measured in this run"), "{md}");
    }

    #[test]
    fn failed_configurations_show_as_failed() {
        let mut failed = record(System::Capkv, Workload::Put, Level::Local, 64, 1, 0.0, 0.0);
        failed.ops = 0;
        failed.items = 0;
        failed.errors = 64;
        failed.reconcile_error = Some("not visible".into());
        let runs = vec![
            failed,
            record(
                System::Etcd,
                Workload::Put,
                Level::Strong,
                64,
                1,
                2_000.0,
                40.0,
            ),
        ];
        let aggs = aggregate(&runs);
        let rows = rows(&aggs);
        assert_eq!(rows[0].throughput_ratio, Some(0.0));
        assert_eq!(rows[0].p99_ratio, None);
        let md = markdown(&rows, &aggs);
        assert!(
            md.contains("| 64 | local | 0 (all 64 failed) | - | strong |"),
            "{md}"
        );
        assert!(md.contains("| not visible in time |"), "{md}");
        let checks = check_targets(&rows, &aggs);
        let local = checks
            .iter()
            .find(|c| c.target.starts_with("LOCAL put"))
            .expect("local target");
        assert_eq!(local.met, Some(false));
        assert!(
            local.measured.contains("every operation failed"),
            "{local:?}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-12_345.0), "-12,345");
        assert_eq!(thousands(f64::NAN), "-");
    }
}
