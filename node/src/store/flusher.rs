//! Group commit: one thread of ours makes a store durable for every writer
//! waiting at that moment.
//!
//! Every durable write of a node goes through a [`Flusher`]: Raft log appends
//! and LOCAL writes through their write-ahead logs' (`fdatasync`), the vote
//! and snapshot builds through sled's (`Db::flush`), never through sled's
//! `flush_async`. Two reasons:
//! - **Group commit.** A writer writes, then registers here; the flush
//!   thread takes every registration queued so far, makes the store durable
//!   once, and answers them all. Sixty-four concurrent writes cost one sync,
//!   not sixty-four.
//! - **No deadlock.** sled 0.34's `flush_async` runs the blocking flush on
//!   sled's own I/O thread pool, and a flush waits for an I/O buffer write
//!   that sled queues on that same pool. When every pool thread is a waiting
//!   flush (seven of them under concurrent LOCAL load), the write never runs
//!   and the node stops forever: its applied index froze while it still
//!   claimed to lead, and queued work grew its memory by gigabytes. Our flush
//!   thread is not one of sled's, so sled's pool is always free to write.
//!
//! A registration made after a write returned is answered only by a flush
//! that began after the registration, so it covers that write.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// The most writers waiting for the next flush. Past it, writers wait for
/// room (backpressure), they are not refused.
pub const FLUSH_QUEUE_MAX_WAITERS: usize = 16_384;

/// A flush slower than this is logged: it stalls every write behind it.
pub const SLOW_FLUSH_WARN_MS: u64 = 50;

/// What a waiter is told: the flush succeeded, or why it failed.
pub type FlushResult = Result<(), std::io::Error>;

type Waiter = Box<dyn FnOnce(FlushResult) + Send + 'static>;

/// Handle to one flush thread. Cheap to clone; the thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct Flusher {
    queue: mpsc::Sender<Waiter>,
    stats: Arc<FlushStats>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("flushes", &self.stats.flushes.load(Ordering::Relaxed))
            .field("waiters", &self.stats.waiters.load(Ordering::Relaxed))
            .finish()
    }
}

/// Counters of the flush thread (shown by `Debug`, checked by tests).
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Syncs made.
    pub flushes: AtomicU64,
    /// Waiters answered; `waiters / flushes` is the group-commit factor.
    pub waiters: AtomicU64,
}

/// Resolves once the flush thread has ended and released its database
/// handle (sled's file lock goes with the last handle, so a node restarted in
/// the same process waits for this).
pub struct FlushThreadExit(oneshot::Receiver<()>);

impl FlushThreadExit {
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

impl Flusher {
    /// Starts the flush thread of a sled database.
    pub fn for_sled(db: sled::Db) -> std::io::Result<(Self, FlushThreadExit)> {
        Self::start("capkv-flush", move || {
            db.flush().map(|_| ()).map_err(std::io::Error::other)
        })
    }

    /// Starts a flush thread named `name` that makes its store durable by
    /// calling `sync` (which owns whatever handles the store needs; they are
    /// dropped when the thread ends).
    pub fn start(
        name: &str,
        mut sync: impl FnMut() -> FlushResult + Send + 'static,
    ) -> std::io::Result<(Self, FlushThreadExit)> {
        let (queue, receiver) = mpsc::channel(FLUSH_QUEUE_MAX_WAITERS);
        let (exited, exit) = oneshot::channel();
        let stats = Arc::new(FlushStats::default());
        let thread_stats = stats.clone();
        let thread_name = name.to_string();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                run(&thread_name, &mut sync, receiver, &thread_stats);
                drop(sync);
                let _ = exited.send(());
            })?;
        Ok((Self { queue, stats }, FlushThreadExit(exit)))
    }

    /// Waits until everything written to the database before this call is
    /// on disk.
    pub async fn flush(&self) -> FlushResult {
        let (tx, rx) = oneshot::channel();
        self.then(move |result| {
            let _ = tx.send(result);
        })
        .await;
        rx.await
            .unwrap_or_else(|_| Err(std::io::Error::other("the flush thread stopped")))
    }

    /// Calls `done` once everything written before this call is on disk,
    /// without waiting for it here (openraft's log callback uses this, so
    /// the Raft core goes on while the disk works).
    pub async fn then(&self, done: impl FnOnce(FlushResult) + Send + 'static) {
        if let Err(mpsc::error::SendError(waiter)) = self.queue.send(Box::new(done)).await {
            waiter(Err(std::io::Error::other("the flush thread stopped")));
        }
    }

    pub fn stats(&self) -> &FlushStats {
        &self.stats
    }
}

fn run(
    name: &str,
    sync: &mut dyn FnMut() -> FlushResult,
    mut receiver: mpsc::Receiver<Waiter>,
    stats: &FlushStats,
) {
    let mut batch = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < FLUSH_QUEUE_MAX_WAITERS {
            match receiver.try_recv() {
                Ok(waiter) => batch.push(waiter),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = sync();
        let took = started.elapsed();
        if took.as_millis() >= u128::from(SLOW_FLUSH_WARN_MS) {
            tracing::warn!(
                thread = name,
                ms = took.as_millis() as u64,
                waiters = batch.len(),
                "slow flush"
            );
        }
        stats.flushes.fetch_add(1, Ordering::Relaxed);
        stats
            .waiters
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for waiter in batch.drain(..) {
            waiter(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), format!("{name}: {e}"))),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes_and_all_are_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let writers = 200;
        {
            let db = sled::Config::new()
                .path(&path)
                .flush_every_ms(None)
                .open()
                .expect("open");
            let (flusher, _exit) = Flusher::for_sled(db.clone()).expect("start");
            let mut tasks = Vec::new();
            for i in 0..writers {
                let db = db.clone();
                let flusher = flusher.clone();
                tasks.push(tokio::spawn(async move {
                    db.insert(format!("k{i}"), vec![7u8; 256]).expect("insert");
                    flusher.flush().await
                }));
            }
            for task in tasks {
                task.await.expect("join").expect("flushed");
            }
            let flushes = flusher.stats().flushes.load(Ordering::Relaxed);
            let waiters = flusher.stats().waiters.load(Ordering::Relaxed);
            assert_eq!(waiters, writers);
            assert!(flushes >= 1 && flushes <= writers, "{flushes} flushes");
        }
        // Everything acknowledged is there after reopening.
        let mut reopened = None;
        for _ in 0..100 {
            match sled::Config::new().path(&path).open() {
                Ok(db) => {
                    reopened = Some(db);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        let db = reopened.expect("reopen");
        assert_eq!(db.len(), writers as usize);
    }

    /// The wedge this module exists for: many writers flushing at once, over
    /// and over. With sled's `flush_async` it deadlocked within seconds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_flushers_never_wedge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None)
            .open()
            .expect("open");
        let (flusher, _exit) = Flusher::for_sled(db.clone()).expect("start");
        let mut tasks = Vec::new();
        for t in 0..64 {
            let db = db.clone();
            let flusher = flusher.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    db.insert(format!("t{t}-{i}"), vec![1u8; 256])
                        .expect("insert");
                    flusher.flush().await.expect("flush");
                }
            }));
        }
        let all = async {
            for task in tasks {
                task.await.expect("join");
            }
        };
        if tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .is_err()
        {
            // sled flushes when its last handle drops, which would hang on a
            // wedged pool too: keep one handle forever so the test fails.
            std::mem::forget(db.clone());
            panic!("64 writers did not finish 6,400 flushes within 60 s: the flush path is wedged");
        }
        assert_eq!(db.len(), 6_400);
    }
}
