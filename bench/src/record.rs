//! One run's result: the JSON record appended per run, and its one-line
//! summary.

use std::fs::OpenOptions;
use std::io::{self, BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::level::{Level, System, Workload};
use crate::stats::LatencySummary;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When the run ended (RFC 3339, UTC).
    pub time: String,
    pub system: System,
    pub workload: Workload,
    pub level: Level,
    pub clients: u32,
    /// Readings per ingest request (1 for the other workloads).
    pub batch: u32,
    /// Independent client connections the clients were spread over.
    pub connections: u32,
    pub warmup_s: f64,
    /// The measured window.
    pub duration_s: f64,
    /// Operations that succeeded in the window.
    pub ops: u64,
    /// Their items: keys, readings stored, readings returned.
    pub items: u64,
    pub errors: u64,
    /// Reads that found less than asked for.
    #[serde(default)]
    pub misses: u64,
    /// Writes acknowledged as provisional (LOCAL; STRONG_OR_LOCAL fallbacks).
    #[serde(default)]
    pub provisional: u64,
    pub ops_per_s: f64,
    pub items_per_s: f64,
    pub latency: LatencySummary,
    /// CPU seconds each server process used during the window (`--pids`
    /// order).
    #[serde(default)]
    pub server_cpu_s: Vec<f64>,
    /// CPU seconds the benchmark process used during the window (it shares
    /// the machine).
    #[serde(default)]
    pub client_cpu_s: f64,
    /// Busy CPU seconds of the whole machine during the window: what is
    /// left after the servers and this process is load nobody asked for
    /// (another process on the machine), see [`RunRecord::other_cpu_s`].
    #[serde(default)]
    pub machine_cpu_s: Option<f64>,
    /// Peak RSS (VmHWM) of each server process at the end, KiB.
    #[serde(default)]
    pub peak_rss_kib: Vec<u64>,
    /// Bytes on disk of each data directory at the end (`--data-dirs`
    /// order).
    #[serde(default)]
    pub disk_bytes: Vec<u64>,
    /// Provisional writes only: the largest time from a node's last ack to
    /// that write being visible through a LINEARIZABLE read.
    #[serde(default)]
    pub reconcile_lag_ms: Option<f64>,
    /// Why the lag could not be measured, if it could not.
    #[serde(default)]
    pub reconcile_error: Option<String>,
    /// Time spent loading the data a read workload reads.
    #[serde(default)]
    pub preload_s: Option<f64>,
    #[serde(default)]
    pub error_samples: Vec<String>,
}

impl RunRecord {
    /// The throughput the tables compare: readings/s for ingest, else ops/s.
    pub fn throughput(&self) -> f64 {
        match self.workload {
            Workload::Ingest => self.items_per_s,
            _ => self.ops_per_s,
        }
    }

    /// CPU seconds used in the window by processes other than the servers
    /// and the benchmark: a measure of how disturbed the run was.
    pub fn other_cpu_s(&self) -> Option<f64> {
        self.machine_cpu_s
            .map(|machine| (machine - self.server_cpu_total() - self.client_cpu_s).max(0.0))
    }

    pub fn server_cpu_total(&self) -> f64 {
        self.server_cpu_s.iter().sum()
    }

    /// The highest peak RSS of any node, MiB.
    pub fn max_peak_rss_mib(&self) -> Option<f64> {
        self.peak_rss_kib
            .iter()
            .max()
            .map(|&kib| kib as f64 / 1024.0)
    }

    pub fn disk_total_bytes(&self) -> u64 {
        self.disk_bytes.iter().sum()
    }

    /// `capkv put strong c=64: 12345 ops/s, p50 1.20 p99 5.60 p99.9 9.10 ms, ...`
    pub fn one_line(&self) -> String {
        let mut line = format!(
            "{} {} {}{} c={}: {:.0} {}, p50 {:.2} p99 {:.2} p99.9 {:.2} ms, errors {}",
            self.system,
            self.workload,
            self.level,
            if self.workload == Workload::Ingest {
                format!(" batch={}", self.batch)
            } else {
                String::new()
            },
            self.clients,
            self.throughput(),
            self.workload.unit(),
            self.latency.p50_ms,
            self.latency.p99_ms,
            self.latency.p999_ms,
            self.errors,
        );
        if self.misses > 0 {
            line += &format!(", misses {}", self.misses);
        }
        if !self.server_cpu_s.is_empty() {
            line += &format!(", server cpu {:.1} s", self.server_cpu_total());
        }
        line += &format!(", client cpu {:.1} s", self.client_cpu_s);
        if let Some(other) = self.other_cpu_s() {
            line += &format!(", other cpu {other:.1} s");
        }
        if !self.peak_rss_kib.is_empty() {
            let rss: Vec<String> = self
                .peak_rss_kib
                .iter()
                .map(|kib| format!("{:.0}", *kib as f64 / 1024.0))
                .collect();
            line += &format!(", peak rss {} MiB", rss.join("/"));
        }
        if !self.disk_bytes.is_empty() {
            line += &format!(
                ", disk {:.1} MiB",
                self.disk_total_bytes() as f64 / (1024.0 * 1024.0)
            );
        }
        if self.provisional > 0 {
            line += &format!(", provisional {}", self.provisional);
        }
        if let Some(lag) = self.reconcile_lag_ms {
            line += &format!(", reconcile lag {lag:.0} ms");
        }
        if let Some(error) = &self.reconcile_error {
            line += &format!(", reconcile lag unknown: {error}");
        }
        line
    }
}

/// Appends `record` as one JSON line.
pub fn append_record(path: &Path, record: &RunRecord) -> io::Result<()> {
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let mut line = serde_json::to_string(record).map_err(io::Error::other)?;
    line.push('\n');
    file.write_all(line.as_bytes())
}

/// Reads the records of a JSON-lines file (blank lines skipped). A line that
/// is not a record is an error naming the line.
pub fn read_records(path: &Path) -> io::Result<Vec<RunRecord>> {
    let file = std::fs::File::open(path)?;
    let mut records = Vec::new();
    for (number, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: {error}", path.display(), number + 1),
            )
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record with the given identity and throughput / p99, for tests.
    pub(crate) fn record(
        system: System,
        workload: Workload,
        level: Level,
        clients: u32,
        batch: u32,
        throughput: f64,
        p99_ms: f64,
    ) -> RunRecord {
        RunRecord {
            time: "2026-11-21T00:00:00Z".into(),
            system,
            workload,
            level,
            clients,
            batch,
            connections: 3,
            warmup_s: 1.0,
            duration_s: 5.0,
            ops: (throughput * 5.0 / f64::from(batch)) as u64,
            items: (throughput * 5.0) as u64,
            errors: 0,
            misses: 0,
            provisional: 0,
            ops_per_s: throughput / f64::from(batch),
            items_per_s: throughput,
            latency: LatencySummary {
                count: 10,
                mean_ms: p99_ms / 3.0,
                p50_ms: p99_ms / 4.0,
                p99_ms,
                p999_ms: p99_ms * 1.5,
                max_ms: p99_ms * 2.0,
            },
            server_cpu_s: vec![1.0, 0.5, 0.5],
            client_cpu_s: 1.5,
            machine_cpu_s: Some(3.6),
            peak_rss_kib: vec![40 * 1024, 30 * 1024, 30 * 1024],
            disk_bytes: vec![1 << 20, 1 << 20, 1 << 20],
            reconcile_lag_ms: None,
            reconcile_error: None,
            preload_s: None,
            error_samples: vec![],
        }
    }

    #[test]
    fn one_line_and_json_round_trip() {
        let mut run = record(
            System::Capkv,
            Workload::Ingest,
            Level::Local,
            64,
            100,
            123_456.0,
            4.0,
        );
        run.reconcile_lag_ms = Some(42.0);
        run.provisional = 7;
        let line = run.one_line();
        assert!(
            line.starts_with(
                "capkv ingest local batch=100 c=64: 123456 readings/s, p50 1.00 p99 4.00"
            ),
            "{line}"
        );
        assert!(line.contains("server cpu 2.0 s"), "{line}");
        assert!(line.contains("other cpu 0.1 s"), "{line}");
        assert!(line.contains("peak rss 40/30/30 MiB"), "{line}");
        assert!(line.contains("disk 3.0 MiB"), "{line}");
        assert!(line.contains("reconcile lag 42 ms"), "{line}");

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runs.jsonl");
        append_record(&path, &run).expect("append");
        append_record(&path, &run).expect("append");
        let back = read_records(&path).expect("read");
        assert_eq!(back, vec![run.clone(), run]);
        std::fs::write(&path, "{\"not\": \"a record\"}\n").expect("write");
        let error = read_records(&path).expect_err("bad line");
        assert!(error.to_string().contains(":1:"), "{error}");
    }
}
