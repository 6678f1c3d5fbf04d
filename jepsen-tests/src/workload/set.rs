//! `set`: unique elements added as sensor readings with LOCAL writes to
//! every node (each process writes to its home node, so the minority side of
//! a partition takes adds too): sensor [`SENSOR`], timestamp = element,
//! value = element.
//!
//! After the final heal the runner calls [`settle`]: it waits (bounded)
//! until no node has pending provisional writes and every node has applied
//! the same index, then reads the whole set from every node with EVENTUAL
//! reads, until the reads agree or the settle time runs out. The final reads
//! go into the history (`:read-set`, one per node) and to the set checker,
//! with the elements the conflict log says were superseded.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use capkv_client::Client;
use capkv_client::ClientConfig;
use capkv_client::RangeQuery;
use capkv_client::ReadLevel;
use capkv_client::WriteLevel;
use serde::Serialize;
use tokio::time::Instant;

use super::Ctx;
use super::Outcome;
use super::Worker;
use super::Workload;
use crate::cluster::Cluster;
use crate::history::Completion;
use crate::history::Function;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Recorder;
use crate::history::Value;

/// The sensor the set's elements are readings of.
pub const SENSOR: &str = "jepsen-set";
/// The most readings a final read collects (far more than a run adds).
const MAX_READ: usize = 10_000_000;
const POLL: Duration = Duration::from_millis(250);

pub struct Set;

impl Set {
    pub fn new() -> Arc<Set> {
        Arc::new(Set)
    }
}

impl Workload for Set {
    async fn step(&self, ctx: &Ctx, worker: &mut Worker) -> bool {
        let process = worker.process;
        let node = ctx.home(process);
        let element = ctx.next_value();
        let op = ctx.invoke(
            process,
            Function::Add,
            None,
            Value::Int(element),
            node,
            "LOCAL",
        );
        let client = ctx.client(node).with_write_level(WriteLevel::Local);
        let result = ctx
            .local_write(
                node,
                client.put_reading(SENSOR, element, element as f64, Default::default()),
            )
            .await;
        let outcome = match result {
            Ok(_) => Outcome::Ok(Value::Int(element)),
            Err(outcome) => outcome,
        };
        let retire = outcome.is_info();
        ctx.complete(&op, outcome);
        retire
    }
}

/// What settling found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Settled {
    /// Each node's final read, as read (duplicates kept).
    pub final_reads: BTreeMap<u64, Vec<i64>>,
    /// Elements the conflict log records as superseded.
    pub superseded: BTreeSet<i64>,
    /// From the final heal until every node had no pending provisional
    /// write, the same applied index, and the same set; `None` if that
    /// never happened within the settle time.
    pub convergence_ms: Option<u64>,
    /// Why settling did not converge, in words.
    pub problems: Vec<String>,
}

fn pinned(addr: &str, timeout: Duration) -> anyhow::Result<Client> {
    let config = ClientConfig {
        timeout,
        pin_endpoint: true,
        max_attempts: 1,
        ..ClientConfig::default()
    };
    Ok(Client::with_config([addr.to_string()], config)?.with_read_level(ReadLevel::Eventual))
}

/// Reads every node's set (EVENTUAL), `Err` per node that did not answer.
async fn read_all(cluster: &Cluster, timeout: Duration) -> BTreeMap<u64, Result<Vec<i64>, String>> {
    let mut out = BTreeMap::new();
    for id in cluster.ids() {
        let result = match pinned(&cluster.node(id).addr, timeout) {
            Ok(client) => client
                .range_readings_all(
                    RangeQuery {
                        limit: 10_000,
                        ..RangeQuery::new(SENSOR)
                    },
                    MAX_READ,
                )
                .await
                .map(|r| {
                    r.readings
                        .iter()
                        .map(|reading| reading.timestamp_ms)
                        .collect()
                })
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        out.insert(id, result);
    }
    out
}

/// Waits (at most `limit`) for convergence after the final heal at
/// `healed` (an instant), then records the final reads in the history.
pub async fn settle(
    cluster: &Cluster,
    recorder: &Recorder,
    healed: Instant,
    limit: Duration,
    first_process: u64,
) -> Settled {
    let deadline = Instant::now() + limit;
    let read_timeout = Duration::from_secs(10);
    let mut settled = Settled::default();
    let mut last_reads: BTreeMap<u64, Result<Vec<i64>, String>> = BTreeMap::new();
    let mut last_state;
    loop {
        let statuses = cluster.statuses().await;
        let mut pending = 0;
        let mut applied = BTreeSet::new();
        let mut unreachable = Vec::new();
        for (id, status) in &statuses {
            match status {
                Ok(s) => {
                    pending += s.pending_provisional;
                    applied.insert(s.applied_index);
                }
                Err(e) => unreachable.push(format!("node {id}: {e}")),
            }
        }
        last_state = format!("pending provisional writes {pending}, applied indexes {applied:?}, unreachable {unreachable:?}");
        if pending == 0 && applied.len() == 1 && unreachable.is_empty() {
            last_reads = read_all(cluster, read_timeout).await;
            let sets: BTreeSet<Vec<i64>> = last_reads
                .values()
                .filter_map(|r| r.as_ref().ok())
                .map(|v| sorted(v))
                .collect();
            if sets.len() == 1 && last_reads.values().all(Result::is_ok) {
                settled.convergence_ms = Some(healed.elapsed().as_millis() as u64);
                break;
            }
            last_state = format!("{last_state}; the nodes' reads differ");
        }
        if Instant::now() >= deadline {
            settled.problems.push(format!(
                "did not converge within {limit:?} of the final heal: {last_state}"
            ));
            if last_reads.is_empty() {
                last_reads = read_all(cluster, read_timeout).await;
            }
            break;
        }
        tracing::debug!("settling: {last_state}");
        tokio::time::sleep(POLL).await;
    }
    tracing::info!(convergence_ms = ?settled.convergence_ms, "settle: {last_state}");
    // The final reads, one process per node, in the history.
    for (offset, (id, result)) in last_reads.iter().enumerate() {
        let process = Process::Client(first_process + offset as u64);
        let op = recorder.invoke(
            process,
            Function::ReadSet,
            None,
            Value::Nil,
            Some(*id),
            Some("EVENTUAL".to_string()),
        );
        let completion = match result {
            Ok(elements) => {
                settled.final_reads.insert(*id, elements.clone());
                Completion {
                    op_type: OpType::Ok,
                    value: Value::Elements(elements.iter().copied().collect()),
                    error: None,
                }
            }
            Err(e) => {
                settled
                    .problems
                    .push(format!("final read on node {id} failed: {e}"));
                Completion {
                    op_type: OpType::Fail,
                    value: Value::Nil,
                    error: Some(e.clone()),
                }
            }
        };
        recorder.complete(&op, completion);
    }
    // Superseded elements: the conflict log's readings of our sensor.
    match pinned(&cluster.node(1).addr, read_timeout) {
        Ok(client) => match client.list_conflicts(10_000).await {
            Ok(conflicts) => {
                settled.superseded = conflicts
                    .conflicts
                    .iter()
                    .filter(|c| c.sensor_id == SENSOR)
                    .map(|c| c.timestamp_ms)
                    .collect();
            }
            Err(e) => settled
                .problems
                .push(format!("reading the conflict log failed: {e}")),
        },
        Err(e) => settled
            .problems
            .push(format!("reading the conflict log failed: {e}")),
    }
    settled
}

fn sorted(elements: &[i64]) -> Vec<i64> {
    let mut v = elements.to_vec();
    v.sort_unstable();
    v
}
