//! The closed-loop load generator: C clients, each issuing its next
//! operation when the previous one returned; a warm-up, then a measured
//! window. Also the bounded preload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::ops::{Op, WorkloadSpec};
use crate::stats::{new_histogram, record_us};
use crate::target::{Target, Visibility};

/// Operations one client issues at most in a run, whatever the window: a
/// bound on a loop that would otherwise spin on instant failures.
pub const MAX_OPS_PER_CLIENT: u64 = 50_000_000;
/// After a failed operation a client pauses this long, so that a dead
/// cluster is not hammered in a tight loop (failures are counted either way).
pub const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// Error messages kept per run, as examples.
pub const MAX_ERROR_SAMPLES: usize = 5;
/// Attempts per preload request before the preload fails.
pub const PRELOAD_ATTEMPTS: u32 = 5;

/// When the clients start, when measuring starts, when it ends.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start: Instant,
    pub window_start: Instant,
    pub window_end: Instant,
}

impl Schedule {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Schedule {
        Schedule {
            start,
            window_start: start + warmup,
            window_end: start + warmup + duration,
        }
    }
}

/// What the clients measured.
#[derive(Debug)]
pub struct LoadResult {
    /// Latencies (µs) of the operations that succeeded inside the window.
    pub histogram: Histogram<u64>,
    /// Operations that succeeded inside the window.
    pub ops: u64,
    /// Their items (keys, readings).
    pub items: u64,
    /// Operations that failed inside the window.
    pub errors: u64,
    /// Reads in the window that found less than asked for.
    pub misses: u64,
    /// Writes in the window acknowledged as provisional (LOCAL).
    pub provisional: u64,
    pub error_samples: Vec<String>,
    /// Per accepting node, its last acknowledged provisional write (of the
    /// whole run, warm-up included) and when it was acknowledged.
    pub last_provisional: BTreeMap<u64, (Instant, Visibility)>,
    /// Operations (any outcome) over the whole run, warm-up included.
    pub total_ops: u64,
}

impl LoadResult {
    fn empty() -> Self {
        LoadResult {
            histogram: new_histogram(),
            ops: 0,
            items: 0,
            errors: 0,
            misses: 0,
            provisional: 0,
            error_samples: Vec::new(),
            last_provisional: BTreeMap::new(),
            total_ops: 0,
        }
    }

    /// Adds one client's result to this one.
    fn absorb(&mut self, client: LoadResult) {
        self.histogram
            .add(&client.histogram)
            .expect("histograms share their bounds");
        self.ops += client.ops;
        self.items += client.items;
        self.errors += client.errors;
        self.misses += client.misses;
        self.provisional += client.provisional;
        self.total_ops += client.total_ops;
        for sample in client.error_samples {
            push_sample(&mut self.error_samples, sample);
        }
        for (origin, (at, check)) in client.last_provisional {
            let newer = self
                .last_provisional
                .get(&origin)
                .is_none_or(|(seen, _)| at > *seen);
            if newer {
                self.last_provisional.insert(origin, (at, check));
            }
        }
    }
}

/// Runs `clients` closed-loop clients against `target` on `schedule`. Each
/// stops issuing at `schedule.window_end` (an operation in flight then is
/// waited for, not counted) or after [`MAX_OPS_PER_CLIENT`].
pub async fn run_load<T: Target>(
    target: Arc<T>,
    spec: Arc<WorkloadSpec>,
    clients: usize,
    schedule: Schedule,
) -> LoadResult {
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let target = Arc::clone(&target);
        let spec = Arc::clone(&spec);
        tasks.push(tokio::spawn(async move {
            run_client(&*target, &spec, client, schedule).await
        }));
    }
    let mut result = LoadResult::empty();
    for task in tasks {
        let client = match task.await {
            Ok(client) => client,
            Err(error) => {
                result.errors += 1;
                push_sample(&mut result.error_samples, format!("client task: {error}"));
                continue;
            }
        };
        result.absorb(client);
    }
    result
}

fn push_sample(samples: &mut Vec<String>, sample: String) {
    if samples.len() < MAX_ERROR_SAMPLES && !samples.contains(&sample) {
        samples.push(sample);
    }
}

async fn run_client<T: Target>(
    target: &T,
    spec: &WorkloadSpec,
    client: usize,
    schedule: Schedule,
) -> LoadResult {
    let mut generator = spec.client_gen(client);
    let mut result = LoadResult::empty();
    tokio::time::sleep_until(schedule.start).await;
    while result.total_ops < MAX_OPS_PER_CLIENT && Instant::now() < schedule.window_end {
        let op = spec.next_op(&mut generator);
        let began = Instant::now();
        let outcome = target.execute(client, &op).await;
        let ended = Instant::now();
        result.total_ops += 1;
        let measured = ended >= schedule.window_start && ended < schedule.window_end;
        match outcome {
            Ok(outcome) => {
                if let Some(ack) = outcome.provisional {
                    result
                        .last_provisional
                        .insert(ack.origin, (ended, ack.check));
                    if measured {
                        result.provisional += 1;
                    }
                }
                if measured {
                    let micros =
                        u64::try_from(ended.duration_since(began).as_micros()).unwrap_or(u64::MAX);
                    record_us(&mut result.histogram, micros);
                    result.ops += 1;
                    result.items += outcome.items;
                    result.misses += u64::from(outcome.miss);
                }
            }
            Err(error) => {
                if measured {
                    result.errors += 1;
                    push_sample(&mut result.error_samples, error);
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    result
}

/// Runs every operation of `ops` with `concurrency` clients, each retried up
/// to [`PRELOAD_ATTEMPTS`] times; fails on the first operation that still
/// fails, or when `deadline` passes first.
pub async fn preload<T: Target>(
    target: Arc<T>,
    ops: Vec<Op>,
    concurrency: usize,
    deadline: Instant,
) -> Result<u64, String> {
    let ops = Arc::new(ops);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..concurrency.max(1) {
        let (target, ops, next) = (Arc::clone(&target), Arc::clone(&ops), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut items = 0u64;
            // Each iteration takes a fresh index, so the loop ends after at
            // most ops.len() iterations in all clients together.
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(op) = ops.get(index) else {
                    return Ok(items);
                };
                let mut attempt = 0;
                loop {
                    if Instant::now() >= deadline {
                        return Err("preload did not finish in time".to_string());
                    }
                    attempt += 1;
                    match target.execute(client, op).await {
                        Ok(outcome) => {
                            items += outcome.items;
                            break;
                        }
                        Err(error) if attempt >= PRELOAD_ATTEMPTS => {
                            return Err(format!("preload failed: {error}"));
                        }
                        Err(_) => tokio::time::sleep(ERROR_PAUSE * 10).await,
                    }
                }
            }
        }));
    }
    let mut total = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(items)) => total += items,
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(format!("preload task: {error}"));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(total),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::level::Workload;
    use crate::target::{Outcome, ProvisionalAck};
    use std::sync::atomic::AtomicU64;

    /// A target that answers after a fixed delay, fails every 10th call and
    /// acknowledges every write as provisional on node `client % 2 + 1`.
    struct Fake {
        calls: AtomicU64,
        delay: Duration,
    }

    impl Target for Fake {
        async fn execute(&self, client: usize, _op: &Op) -> Result<Outcome, String> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::time::sleep(self.delay).await;
            if call.is_multiple_of(10) {
                return Err(format!("failure {call}"));
            }
            Ok(Outcome {
                items: 3,
                miss: false,
                provisional: Some(ProvisionalAck {
                    origin: client as u64 % 2 + 1,
                    check: Visibility::Reading {
                        sensor: "s".into(),
                        ts_ms: call as i64,
                    },
                }),
            })
        }
    }

    fn spec() -> Arc<WorkloadSpec> {
        Arc::new(WorkloadSpec {
            workload: Workload::Put,
            batch: 1,
            keys: 10,
            value_bytes: 8,
            range_sensors: 1,
            readings_per_sensor: 1,
            range_limit: 1,
            run_tag: "t".into(),
            base_ts_ms: 0,
            seed: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_counts_only_the_window() {
        let target = Arc::new(Fake {
            calls: AtomicU64::new(0),
            delay: Duration::from_millis(10),
        });
        let start = Instant::now();
        let schedule = Schedule::new(start, Duration::from_millis(100), Duration::from_secs(1));
        let result = run_load(Arc::clone(&target), spec(), 4, schedule).await;
        // 4 clients x about 100 calls per second of window (10 ms each);
        // a tenth fail, and each failure costs an extra 10 ms pause.
        assert!(result.ops > 300 && result.ops < 400, "{result:?}");
        assert!(result.errors > 20 && result.errors < 50, "{result:?}");
        assert_eq!(result.items, result.ops * 3);
        assert_eq!(result.histogram.len(), result.ops);
        assert_eq!(result.last_provisional.len(), 2);
        assert!(result.total_ops > result.ops + result.errors);
        assert!(result.error_samples.len() <= MAX_ERROR_SAMPLES);
        let p50 = result.histogram.value_at_quantile(0.5);
        assert!((9_900..=10_100).contains(&p50), "{p50}");
        assert!(Instant::now() >= schedule.window_end);
    }

    #[tokio::test(start_paused = true)]
    async fn preload_runs_everything_once_or_fails() {
        struct Counting(AtomicU64);
        impl Target for Counting {
            async fn execute(&self, _client: usize, _op: &Op) -> Result<Outcome, String> {
                self.0.fetch_add(1, Ordering::Relaxed);
                Ok(Outcome {
                    items: 2,
                    ..Outcome::default()
                })
            }
        }
        let target = Arc::new(Counting(AtomicU64::new(0)));
        let ops = vec![Op::Get { key: b"k".to_vec() }; 25];
        let deadline = Instant::now() + Duration::from_secs(10);
        let items = preload(Arc::clone(&target), ops, 4, deadline).await;
        assert_eq!(items, Ok(50));
        assert_eq!(target.0.load(Ordering::Relaxed), 25);

        let failing = Arc::new(Fake {
            calls: AtomicU64::new(0),
            delay: Duration::ZERO,
        });
        // Every 10th call fails, but a retry succeeds.
        let ops = vec![Op::Get { key: b"k".to_vec() }; 30];
        assert!(preload(failing, ops, 2, deadline).await.is_ok());
    }
}
