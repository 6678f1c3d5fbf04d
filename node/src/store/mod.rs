//! Storage: the Raft log and the provisional store's log of LOCAL writes are
//! write-ahead logs of plain files ([`wal`]); one sled database per node
//! holds the vote, the state machine, the request-id table and the
//! provisional store's indexes; snapshots live in files beside them.
//!
//! The sled key layout is documented in [`keys`], next to the code that
//! encodes it.

// openraft's storage traits return its `StorageError` (224 bytes); our helpers
// return the same type rather than boxing and unboxing at every trait method.
#![allow(clippy::result_large_err)]

pub mod blocks;
pub mod flusher;
pub mod keys;
pub mod log_store;
pub mod provisional;
pub mod remembered;
pub mod staged;
pub mod state_machine;
pub mod wal;

use std::path::Path;
use std::sync::Arc;

pub use flusher::FlushThreadExit;
pub use flusher::Flusher;
pub use log_store::LogStore;
pub use provisional::ProvisionalStore;
pub use state_machine::ReadView;
pub use state_machine::StateMachineStore;

use crate::hlc::HybridClock;
use crate::types::StorageError;

/// sled's page cache, in bytes. Bounded so three nodes on one small machine
/// fit next to each other; the working set of a sensor node is recent data.
/// sled's real use overshoots this several times under heavy writes (a node
/// peaked at 1.1 GiB with 64 MiB, 1.6 GiB with 256 MiB, issue 5).
pub const SLED_CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// The Raft log's directory under the data directory.
pub const WAL_DIR: &str = "raft-log";

/// The provisional store's log (LOCAL writes) under the data directory.
pub const PROVISIONAL_DIR: &str = "prov-log";

/// The sled database's directory under the node's data directory.
pub const SLED_DIR: &str = "db";

/// How often [`wait_until_released`] tries sled's file lock.
const RELEASE_POLL_MS: u64 = 2;

/// Waits until no handle to the sled database under `data_dir` is left, so
/// that it can be opened again in this process (sled holds an exclusive
/// `flock` on `db/db` while any handle lives). Tasks that held a tree, such as
/// a server connection or openraft's state-machine worker, may end a few
/// milliseconds after the node's shutdown returned from them. Returns false
/// if the lock is still held after `timeout`.
pub async fn wait_until_released(data_dir: &Path, timeout: std::time::Duration) -> bool {
    let lock_file = data_dir.join(SLED_DIR).join("db");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match std::fs::File::open(&lock_file) {
            // The lock (if we got it) is released when `file` drops.
            Ok(file) if file.try_lock().is_ok() => return true,
            Ok(_) => {}
            // No database file: nothing holds it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(e) => {
                tracing::warn!(path = %lock_file.display(), error = %e, "cannot check the database lock");
                return false;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(RELEASE_POLL_MS)).await;
    }
}

/// Everything a node keeps on disk.
pub struct Stores {
    pub log: LogStore,
    pub state_machine: StateMachineStore,
    pub provisional: ProvisionalStore,
    /// The ends of the group-commit threads (see [`flusher`]).
    pub flush_threads: Vec<FlushThreadExit>,
}

/// Opens (or creates) the node's sled database and snapshot directory under
/// `data_dir`.
pub fn open(data_dir: &Path, clock: Arc<HybridClock>) -> Result<Stores, StorageError> {
    std::fs::create_dir_all(data_dir).map_err(|e| openraft::StorageIOError::write(&e))?;
    let db = sled::Config::new()
        .path(data_dir.join(SLED_DIR))
        .cache_capacity(SLED_CACHE_CAPACITY_BYTES)
        // Acknowledged writes are durable through our explicit flushes (the
        // WAL's and `Flusher`'s). No timer: a 1 s sled flush made concurrent
        // WAL fdatasyncs stall for up to 0.7 s (ext4 journal) in benchmarks.
        // What sled has not synced is re-applied from the WAL after a crash.
        .flush_every_ms(None)
        .open()
        .map_err(|e| openraft::StorageIOError::write(&e))?;
    let (flusher, sled_flush_exit) =
        Flusher::for_sled(db.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
    let (log, wal_flush_exit) = LogStore::open(&db, &data_dir.join(WAL_DIR), flusher.clone())?;
    let (provisional, provisional_flush_exit) =
        ProvisionalStore::open(&db, &data_dir.join(PROVISIONAL_DIR))?;
    Ok(Stores {
        log,
        state_machine: StateMachineStore::open(
            &db,
            flusher.clone(),
            &data_dir.join("snapshots"),
            clock,
        )?,
        provisional,
        flush_threads: vec![wal_flush_exit, provisional_flush_exit, sled_flush_exit],
    })
}

/// A sled or I/O failure as an openraft storage error.
pub(crate) fn io_err(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}
