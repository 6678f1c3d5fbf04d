//! The leader's read-index batcher: concurrent LINEARIZABLE reads share
//! leadership checks.
//!
//! openraft 0.9's `get_read_log_id` confirms leadership with a quorum by
//! sending every follower a heartbeat, one round per call. One call per read
//! made the followers answer a heartbeat per read. Here one check runs at a
//! time: reads that arrive while it runs wait, and the next check serves all
//! of them (etcd batches its read index requests the same way).
//!
//! Why this stays linearizable: a read is served by a check that *started
//! after the read arrived* (it joined the waiting list before that check
//! took the list), so the read index is at least the commit index at some
//! moment after the read's arrival, and leadership was confirmed after it.
//! A read never gets the result of a check that was already running.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::error::ApiError;
use crate::types::NodeId;

/// Reads waiting for the next leadership check. Past it, a read is refused
/// as overloaded.
pub const READS_WAITING_FOR_CHECK_MAX: usize = 16_384;

type Answer = Result<u64, ApiError>;
type Check = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;

/// Handle to one node's read-index batcher. Cheap to clone.
#[derive(Clone)]
pub struct ReadIndexBatcher {
    node: NodeId,
    check: Check,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// A task is running checks.
    checking: bool,
    /// Reads that arrived after the running check started.
    waiting: Vec<oneshot::Sender<Answer>>,
}

impl ReadIndexBatcher {
    /// `check` confirms leadership with a quorum and returns the read index.
    pub fn new<F, Fut>(node: NodeId, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        Self {
            node,
            check: Arc::new(move || Box::pin(check())),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The read index of a check that started after this call.
    pub async fn read_index(&self) -> Answer {
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.state();
            if state.waiting.len() >= READS_WAITING_FOR_CHECK_MAX {
                return Err(ApiError::Overloaded(format!(
                    "{READS_WAITING_FOR_CHECK_MAX} LINEARIZABLE reads are already waiting for a leadership check"
                )));
            }
            state.waiting.push(reply);
            if !state.checking {
                state.checking = true;
                tokio::spawn(self.clone().run_checks());
            }
        }
        answer
            .await
            .unwrap_or(Err(ApiError::ShuttingDown { node: self.node }))
    }

    /// Runs checks until no read is waiting, each for the reads that were
    /// waiting when it started.
    async fn run_checks(self) {
        loop {
            let readers = {
                let mut state = self.state();
                if state.waiting.is_empty() {
                    state.checking = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let answer = (self.check)().await;
            for reader in readers {
                let _ = reader.send(answer.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    /// A check that counts itself and answers its own number, after a while.
    fn counting_batcher() -> (ReadIndexBatcher, Arc<AtomicU64>) {
        let started = Arc::new(AtomicU64::new(0));
        let counter = started.clone();
        let batcher = ReadIndexBatcher::new(1, move || {
            let number = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(number)
            }
        });
        (batcher, started)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_is_served_by_a_check_that_started_after_it_arrived() {
        let (batcher, started) = counting_batcher();
        let mut reads = Vec::new();
        for i in 0..200u64 {
            let batcher = batcher.clone();
            let started = started.clone();
            reads.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i % 50)).await;
                let before = started.load(Ordering::SeqCst);
                let served_by = batcher.read_index().await.unwrap();
                (before, served_by)
            }));
        }
        for read in reads {
            let (before, served_by) = read.await.unwrap();
            assert!(
                served_by > before,
                "a read that arrived after check {before} started was served by check {served_by}"
            );
        }
        // Shared: 200 reads over ~50 ms need a handful of 20 ms checks.
        let checks = started.load(Ordering::SeqCst);
        assert!((2..=10).contains(&checks), "{checks} checks");
        // Idle again: the next read starts a check of its own at once.
        assert_eq!(batcher.read_index().await.unwrap(), checks + 1);
    }

    #[tokio::test]
    async fn every_waiting_read_gets_the_checks_error() {
        let batcher = ReadIndexBatcher::new(1, || async {
            Err(ApiError::NoQuorum {
                node: 1,
                detail: "no".into(),
            })
        });
        let (a, b) = tokio::join!(batcher.read_index(), batcher.read_index());
        assert!(matches!(a, Err(ApiError::NoQuorum { .. })));
        assert!(matches!(b, Err(ApiError::NoQuorum { .. })));
    }
}
