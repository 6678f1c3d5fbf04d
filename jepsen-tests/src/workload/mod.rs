//! Workloads: logical client processes issuing operations concurrently
//! through the SDK, each operation recorded as an invocation and a
//! completion (`ok`, `fail` or `info`, with the error text).
//!
//! Shared rules:
//! * `concurrency` workers run at once; worker `w` starts as process `w`.
//!   A process whose operation ends in `info` is retired and the worker
//!   continues as a fresh process (the next unused id, [`ProcessIds`]), so
//!   every process has at most one operation in flight and an unknown
//!   operation never blocks a later one of "the same" process.
//! * A process talks to its home node, `process % nodes + 1`, through a
//!   client pinned to that node with one attempt per call, so requests
//!   reach every node, the minority side of a partition included.
//! * `fail` is recorded only when the operation certainly did not take
//!   effect ([`classify_write_error`]); `info` otherwise. Reads have no
//!   effect, so a failed read is always `fail`.
//! * Every write writes a unique value.

pub mod register;
pub mod session;
pub mod set;

use std::future::Future;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use capkv_client::Client;
use capkv_client::ClientConfig;
use capkv_client::Error;
use rand::rngs::StdRng;
use rand::Rng as _;
use rand::SeedableRng as _;
use serde::Serialize;
use tokio::time::Instant;

use crate::history::Completion;
use crate::history::Function;
use crate::history::Op;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Recorder;
use crate::history::Value;

/// Which workload a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// STRONG writes and cas, LINEARIZABLE reads; linearizable per key.
    Register,
    /// LOCAL adds to every node; no acknowledged add lost, replicas converge.
    Set,
    /// LOCAL writes through one node, SESSION reads through another.
    Session,
    /// `register` with EVENTUAL reads: the checker must find a violation.
    Stale,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Register => "register",
            WorkloadKind::Set => "set",
            WorkloadKind::Session => "session",
            WorkloadKind::Stale => "stale",
        }
    }

    /// Whether a correct system passes this workload's check (`stale`
    /// expects a violation).
    pub fn expected_valid(self) -> bool {
        !matches!(self, WorkloadKind::Stale)
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Hands out process ids: worker `w` starts as process `w`
/// (`0..concurrency`); a retired process is replaced by the next id never
/// used (Jepsen's rule).
#[derive(Debug)]
pub struct ProcessIds {
    next: AtomicU64,
}

impl ProcessIds {
    pub fn new(concurrency: usize) -> Self {
        ProcessIds {
            next: AtomicU64::new(concurrency as u64),
        }
    }

    /// A fresh id for a worker whose process got `info`.
    pub fn retire(&self, _old: u64) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Ids handed out so far (the initial ones included).
    pub fn used(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

/// How an operation ended, for the history and the worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Ok(Value),
    /// It certainly did not take effect.
    Fail(String),
    /// It may or may not have taken effect.
    Info(String),
}

impl Outcome {
    pub fn completion(self, invocation: &Op) -> Completion {
        match self {
            Outcome::Ok(value) => Completion {
                op_type: OpType::Ok,
                value,
                error: None,
            },
            Outcome::Fail(error) => Completion {
                op_type: OpType::Fail,
                value: invocation.value.clone(),
                error: Some(error),
            },
            Outcome::Info(error) => Completion {
                op_type: OpType::Info,
                value: invocation.value.clone(),
                error: Some(error),
            },
        }
    }

    pub fn is_info(&self) -> bool {
        matches!(self, Outcome::Info(_))
    }
}

/// What one failed attempt of a write says about its effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteAttempt {
    /// A follower named the leader at this address: this node did not take
    /// the write, try there.
    Redirect(String),
    /// The node refused before doing anything: the write did not happen.
    Refused,
    /// It may have been proposed, stored or applied.
    Unknown,
}

/// Classifies the error of ONE attempt of a write (a client with one attempt
/// per call, so the error is that attempt's). Only answers that the node
/// gives before it proposes or stores anything count as refusals:
/// * `INVALID_ARGUMENT`, `FAILED_PRECONDITION`: validation, before anything;
/// * `UNAVAILABLE` "not the leader" (with the leader in the metadata) and
///   "knows no leader": openraft's forward-to-leader answer, before append;
/// * `UNAVAILABLE` "could not reach a quorum" WITHOUT "may still commit":
///   the leader's quorum check before proposing (the watchdog's answer for
///   an entry already proposed says "may still commit": unknown);
/// * `RESOURCE_EXHAUSTED`: the provisional store is full, nothing stored;
/// * a transport error "Connection refused": the request never left.
///
/// Everything else (timeouts, broken connections, "shutting down", storage
/// errors, unknown codes) is unknown.
pub fn classify_write_error(error: &Error) -> WriteAttempt {
    match error {
        Error::InvalidArgument(_)
        | Error::FailedPrecondition(_)
        | Error::InvalidConfig(_)
        | Error::InvalidEndpoint(_) => WriteAttempt::Refused,
        Error::Unavailable {
            leader: Some((_, addr)),
            message,
        } if message.contains("is not the leader") => WriteAttempt::Redirect(addr.clone()),
        Error::Unavailable { message, .. } => {
            if message.contains("may still commit") {
                WriteAttempt::Unknown
            } else if message.contains("knows no leader")
                || message.contains("is not the leader")
                || message.contains("could not reach a quorum")
            {
                WriteAttempt::Refused
            } else {
                WriteAttempt::Unknown
            }
        }
        Error::Server {
            code: tonic::Code::ResourceExhausted,
            ..
        } => WriteAttempt::Refused,
        Error::Transport(message) if message.contains("Connection refused") => {
            WriteAttempt::Refused
        }
        _ => WriteAttempt::Unknown,
    }
}

/// Everything the workers of a run share.
#[derive(Clone)]
pub struct Ctx {
    pub recorder: Recorder,
    /// Node `i`'s pinned client at index `i - 1`.
    pub clients: Arc<Vec<Client>>,
    pub endpoints: Arc<Vec<String>>,
    pub op_timeout: Duration,
    pub concurrency: usize,
    pub seed: u64,
    /// Workers issue no operation after this instant.
    pub deadline: Instant,
    /// Mean pause between two operations of one worker.
    pub think: Duration,
    pub processes: Arc<ProcessIds>,
    /// Source of unique written values.
    pub values: Arc<AtomicI64>,
}

impl Ctx {
    /// `endpoints[i]` is node `i + 1`. Clients are pinned, one attempt per
    /// call, with the operation timeout as their deadline.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        recorder: Recorder,
        endpoints: Vec<String>,
        op_timeout: Duration,
        concurrency: usize,
        seed: u64,
        deadline: Instant,
        rate: f64,
    ) -> anyhow::Result<Ctx> {
        let config = ClientConfig {
            timeout: op_timeout,
            connect_timeout: op_timeout.min(Duration::from_secs(1)),
            max_attempts: 1,
            pin_endpoint: true,
            ..ClientConfig::default()
        };
        let clients = endpoints
            .iter()
            .map(|e| Client::with_config([e.clone()], config.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let think = if rate > 0.0 {
            Duration::from_secs_f64(concurrency as f64 / rate)
        } else {
            Duration::ZERO
        };
        Ok(Ctx {
            recorder,
            clients: Arc::new(clients),
            endpoints: Arc::new(endpoints),
            op_timeout,
            concurrency,
            seed,
            deadline,
            think,
            processes: Arc::new(ProcessIds::new(concurrency)),
            values: Arc::new(AtomicI64::new(1)),
        })
    }

    pub fn nodes(&self) -> usize {
        self.clients.len()
    }

    /// The node a process talks to first.
    pub fn home(&self, process: u64) -> u64 {
        home_node(process, self.nodes())
    }

    pub fn client(&self, node: u64) -> &Client {
        &self.clients[(node - 1) as usize]
    }

    pub fn node_of_addr(&self, addr: &str) -> Option<u64> {
        self.endpoints
            .iter()
            .position(|e| e == addr)
            .map(|i| i as u64 + 1)
    }

    pub fn next_value(&self) -> i64 {
        self.values.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an invocation by a client process.
    pub fn invoke(
        &self,
        process: u64,
        f: Function,
        key: Option<String>,
        value: Value,
        node: u64,
        level: &str,
    ) -> Op {
        self.recorder.invoke(
            Process::Client(process),
            f,
            key,
            value,
            Some(node),
            Some(level.to_string()),
        )
    }

    pub fn complete(&self, invocation: &Op, outcome: Outcome) {
        self.recorder
            .complete(invocation, outcome.completion(invocation));
    }

    /// A STRONG write or cas, starting at `home` and following "not the
    /// leader" redirects (each a certain refusal) up to a few hops, one
    /// attempt per node, all within the operation timeout. `Ok` with the
    /// response; `Fail` when every attempt was a certain refusal; `Info` as
    /// soon as one attempt may have taken effect (it is never retried then:
    /// a retry could apply the write a second time, later).
    pub async fn strong_write<T, F, Fut>(&self, home: u64, call: F) -> Result<T, Outcome>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        const MAX_HOPS: usize = 3;
        let attempts = async {
            let mut node = home;
            let mut refusals: Vec<String> = Vec::new();
            for _ in 0..=MAX_HOPS {
                match call(self.client(node).clone()).await {
                    Ok(response) => return Ok(response),
                    Err(error) => match classify_write_error(&error) {
                        WriteAttempt::Redirect(addr) => match self.node_of_addr(&addr) {
                            Some(next) if next != node => {
                                refusals.push(format!("node {node}: {error}"));
                                node = next;
                            }
                            _ => {
                                refusals.push(format!("node {node}: {error}"));
                                return Err(Outcome::Fail(refusals.join("; ")));
                            }
                        },
                        WriteAttempt::Refused => {
                            refusals.push(format!("node {node}: {error}"));
                            return Err(Outcome::Fail(refusals.join("; ")));
                        }
                        WriteAttempt::Unknown => {
                            refusals.push(format!("node {node}: {error}"));
                            return Err(Outcome::Info(refusals.join("; ")));
                        }
                    },
                }
            }
            Err(Outcome::Fail(format!(
                "too many redirects: {}",
                refusals.join("; ")
            )))
        };
        match tokio::time::timeout(self.op_timeout, attempts).await {
            Ok(result) => result,
            Err(_) => Err(Outcome::Info(format!(
                "no answer within the operation timeout ({:?})",
                self.op_timeout
            ))),
        }
    }

    /// A single write attempt on one node (LOCAL writes), classified.
    pub async fn local_write<T, Fut>(&self, node: u64, call: Fut) -> Result<T, Outcome>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(match classify_write_error(&error) {
                WriteAttempt::Refused | WriteAttempt::Redirect(_) => {
                    Outcome::Fail(format!("node {node}: {error}"))
                }
                WriteAttempt::Unknown => Outcome::Info(format!("node {node}: {error}")),
            }),
            Err(_) => Err(Outcome::Info(format!(
                "node {node}: no answer within the operation timeout ({:?})",
                self.op_timeout
            ))),
        }
    }

    /// A read on one node: any error is a `fail` (a read changes nothing).
    pub async fn read<T, Fut>(&self, node: u64, call: Fut) -> Result<T, Outcome>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(Outcome::Fail(format!("node {node}: {error}"))),
            Err(_) => Err(Outcome::Fail(format!(
                "node {node}: no answer within the operation timeout ({:?})",
                self.op_timeout
            ))),
        }
    }

    /// A deterministic RNG for worker `w` (the op mix is fixed by the seed).
    pub fn worker_rng(&self, worker: usize) -> StdRng {
        StdRng::seed_from_u64(
            self.seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(worker as u64 + 1)),
        )
    }

    /// Sleeps a random think time (uniform in [0, 2 * mean]) so that the
    /// workers issue about `rate` operations per second together.
    pub async fn think(&self, rng: &mut StdRng) {
        if self.think.is_zero() {
            tokio::task::yield_now().await;
            return;
        }
        let max = self.think.as_secs_f64() * 2.0;
        let pause = Duration::from_secs_f64(rng.gen_range(0.0..max));
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(pause.min(remaining)).await;
    }
}

/// The node a process talks to first: round robin over the nodes.
pub fn home_node(process: u64, nodes: usize) -> u64 {
    process % nodes as u64 + 1
}

/// One worker's process: what a workload step needs to know about it.
pub struct Worker {
    pub index: usize,
    pub process: u64,
    pub rng: StdRng,
}

/// A workload's operations. `step` issues one logical operation (or a short
/// sequence, like cas's read then cas) for `worker.process`, records it,
/// and returns `true` when the process must be retired (it got `info`).
pub trait Workload: Send + Sync + 'static {
    /// Resets per-process state for a new process (default: nothing).
    fn new_process(&self, _process: u64) {}

    fn step(&self, ctx: &Ctx, worker: &mut Worker) -> impl Future<Output = bool> + Send;
}

/// Runs `concurrency` workers until the context's deadline. Every worker
/// ends after at most one more operation once the deadline passed, so this
/// returns by `deadline + op_timeout` (plus think time).
pub async fn run_workers<W: Workload>(ctx: &Ctx, workload: Arc<W>) {
    let mut tasks = Vec::new();
    for index in 0..ctx.concurrency {
        let ctx = ctx.clone();
        let workload = Arc::clone(&workload);
        tasks.push(tokio::spawn(async move {
            let mut worker = Worker {
                index,
                process: index as u64,
                rng: ctx.worker_rng(index),
            };
            workload.new_process(worker.process);
            // Spread the workers' first operations over one think time.
            ctx.think(&mut worker.rng).await;
            while Instant::now() < ctx.deadline {
                let retire = workload.step(&ctx, &mut worker).await;
                if retire {
                    let fresh = ctx.processes.retire(worker.process);
                    tracing::debug!(
                        worker = index,
                        old = worker.process,
                        new = fresh,
                        "process retired after info"
                    );
                    worker.process = fresh;
                    workload.new_process(fresh);
                }
                ctx.think(&mut worker.rng).await;
            }
        }));
    }
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a client worker failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn retired_processes_get_ids_never_used_before() {
        let ids = ProcessIds::new(3);
        let mut seen: BTreeSet<u64> = (0..3).collect();
        for old in [0, 2, 3, 1, 5] {
            let fresh = ids.retire(old);
            assert!(seen.insert(fresh), "{fresh} reused");
            assert!(fresh >= 3);
        }
        assert_eq!(ids.used(), 8);
        assert_eq!(seen, (0..8).collect());
    }

    #[test]
    fn retired_ids_stay_unique_across_threads() {
        let ids = Arc::new(ProcessIds::new(10));
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || {
                    (0..1000)
                        .map(|i| ids.retire(t * 1000 + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: BTreeSet<u64> = all.iter().copied().collect();
        assert_eq!(unique.len(), 4000);
        assert!(unique.iter().all(|&id| id >= 10));
    }

    #[test]
    fn processes_are_spread_over_the_nodes() {
        let homes: Vec<u64> = (0..6).map(|p| home_node(p, 3)).collect();
        assert_eq!(homes, [1, 2, 3, 1, 2, 3]);
        assert_eq!(home_node(7, 5), 3);
    }

    #[test]
    fn only_certain_refusals_are_failures() {
        let unavailable = |message: &str| Error::Unavailable {
            message: message.into(),
            leader: None,
        };
        let cases = [
            (Error::InvalidArgument("value too large".into()), WriteAttempt::Refused),
            (Error::FailedPrecondition("compare-and-set needs STRONG".into()), WriteAttempt::Refused),
            (
                Error::Unavailable {
                    message: "127.0.0.12:1: node 2 is not the leader; the leader is node 1 at 127.0.0.11:1".into(),
                    leader: Some((1, "127.0.0.11:1".into())),
                },
                WriteAttempt::Redirect("127.0.0.11:1".into()),
            ),
            (unavailable("node 3 knows no leader: an election is in progress"), WriteAttempt::Refused),
            (
                unavailable("node 1 could not reach a quorum: this leader has not heard from a quorum for 1200 ms"),
                WriteAttempt::Refused,
            ),
            (
                unavailable("node 1 could not reach a quorum: lost; the write was proposed and may still commit if the partition heals"),
                WriteAttempt::Unknown,
            ),
            (unavailable("node 2 is shutting down"), WriteAttempt::Unknown),
            (unavailable("something new"), WriteAttempt::Unknown),
            (Error::Transport("127.0.0.11:1: tcp connect error: Connection refused (os error 111)".into()), WriteAttempt::Refused),
            (Error::Transport("127.0.0.11:1: connection reset".into()), WriteAttempt::Unknown),
            (Error::Transport("127.0.0.11:1: no answer before the deadline".into()), WriteAttempt::Unknown),
            (Error::DeadlineExceeded { attempts: 1, last_error: "x".into() }, WriteAttempt::Unknown),
            (Error::Server { code: tonic::Code::ResourceExhausted, message: "provisional store full".into() }, WriteAttempt::Refused),
            (Error::Server { code: tonic::Code::Internal, message: "storage failure".into() }, WriteAttempt::Unknown),
        ];
        for (error, expected) in cases {
            assert_eq!(classify_write_error(&error), expected, "{error}");
        }
    }
}
