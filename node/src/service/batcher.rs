//! The leader's proposal batcher: concurrent STRONG writes share log entries.
//!
//! openraft 0.9 keeps one AppendEntries in flight per follower and does
//! per-entry work in its core (append, replicate, apply). Under load a
//! replication round carried ~16 entries and took ~6 ms, which set the STRONG
//! ceiling (`docs/bench/profile-2026-11-21.md`). Here, writes that arrive
//! while [`PROPOSALS_IN_FLIGHT_MAX`] entries are already in flight wait, and
//! the next entry carries all of them (`Command::Writes`, at most
//! [`PROPOSAL_BATCH_MAX_WRITES`] writes or [`PROPOSAL_BATCH_MAX_BYTES`]).
//! Nobody waits for a batch to fill: a write that finds a free slot is
//! proposed at once, so one client alone sees no added latency.
//!
//! Every entry the batcher proposes is a `Command::Writes`, even for one
//! write. Its writes are applied in order, exactly as consecutive
//! `Command::Write` entries would be (that variant stays for logs written
//! before the batcher), and each gets its own outcome. All of them share the
//! entry's log index.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::WriteCommand;
use crate::types::WriteOp;
use crate::types::WriteOutcome;

/// Most writes in one log entry.
pub const PROPOSAL_BATCH_MAX_WRITES: usize = 256;
/// Most payload bytes (keys, values, readings; estimated) in one log entry.
pub const PROPOSAL_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Entries proposed by the batcher and not yet applied. Writes arriving
/// meanwhile join the next entry.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 2;
/// Writes waiting for a place in an entry. Past it, writers wait for room.
pub const PROPOSAL_QUEUE_MAX_WRITES: usize = 16_384;

/// What a write in a batch got: its outcome and the entry's log index.
pub type BatchedResult = Result<(WriteOutcome, u64), ApiError>;

struct Pending {
    write: WriteCommand,
    reply: oneshot::Sender<BatchedResult>,
}

/// Handle to the batcher task of one node. The task ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct WriteBatcher {
    node: NodeId,
    queue: mpsc::Sender<Pending>,
}

impl WriteBatcher {
    pub fn start(node: NodeId, raft: Raft) -> Self {
        let (queue, receiver) = mpsc::channel(PROPOSAL_QUEUE_MAX_WRITES);
        tokio::spawn(run(node, raft, receiver));
        Self { node, queue }
    }

    /// Proposes `write` (in an entry with whatever else is waiting) and
    /// returns once that entry is applied.
    pub async fn propose(&self, write: WriteCommand) -> BatchedResult {
        let (reply, answer) = oneshot::channel();
        let shutting_down = || ApiError::Storage {
            node: self.node,
            detail: "the node is shutting down".into(),
        };
        if self.queue.send(Pending { write, reply }).await.is_err() {
            return Err(shutting_down());
        }
        answer.await.unwrap_or_else(|_| Err(shutting_down()))
    }
}

/// A cheap upper-bound estimate of a write's encoded size.
fn approx_bytes(write: &WriteCommand) -> usize {
    let op = match &write.op {
        WriteOp::PutReadings(readings) => readings
            .iter()
            .map(|r| {
                32 + r.sensor_id.len()
                    + r.tags
                        .iter()
                        .map(|(k, v)| 16 + k.len() + v.len())
                        .sum::<usize>()
            })
            .sum(),
        WriteOp::Put { key, value } | WriteOp::CompareAndSet { key, value, .. } => {
            key.len() + value.len()
        }
        WriteOp::Delete { key } => key.len(),
    };
    64 + write.request_id.len() + op
}

async fn run(node: NodeId, raft: Raft, mut receiver: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    // A write that did not fit the last batch starts the next one.
    let mut carried: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(first) => first,
            None => match receiver.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = approx_bytes(&first.write);
        let mut batch = vec![first];
        while batch.len() < PROPOSAL_BATCH_MAX_WRITES {
            match receiver.try_recv() {
                Ok(next) => {
                    let size = approx_bytes(&next.write);
                    if bytes + size > PROPOSAL_BATCH_MAX_BYTES {
                        carried = Some(next);
                        break;
                    }
                    bytes += size;
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(node, &raft, batch).await;
            drop(slot);
        });
    }
}

async fn propose_batch(node: NodeId, raft: &Raft, batch: Vec<Pending>) {
    let (writes, replies): (Vec<WriteCommand>, Vec<_>) =
        batch.into_iter().map(|p| (p.write, p.reply)).unzip();
    let count = writes.len();
    let outcomes = match raft.client_write(Command::Writes(writes)).await {
        Ok(response) => match response.data {
            CommandResult::Writes(outcomes) if outcomes.len() == count => {
                Ok((outcomes, response.log_id.index))
            }
            other => Err(ApiError::Storage {
                node,
                detail: format!("a batch of {count} writes applied as {other:?}"),
            }),
        },
        Err(e) => Err(ApiError::from_write(node, e)),
    };
    match outcomes {
        Ok((outcomes, index)) => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok((outcome, index)));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ReadingWrite;
    use crate::types::Version;

    #[test]
    fn size_estimate_grows_with_the_payload() {
        let write = |op| WriteCommand {
            request_id: vec![1; 16],
            version: Version::default(),
            op,
        };
        let small = approx_bytes(&write(WriteOp::Put {
            key: b"k".to_vec(),
            value: vec![0; 10],
        }));
        let large = approx_bytes(&write(WriteOp::Put {
            key: b"k".to_vec(),
            value: vec![0; 10_000],
        }));
        assert!(large >= small + 9_990);
        let readings = approx_bytes(&write(WriteOp::PutReadings(vec![
            ReadingWrite {
                sensor_id: "s".repeat(100),
                timestamp_ms: 1,
                value: 1.0,
                tags: vec![("k".into(), "v".repeat(50))],
            };
            10
        ])));
        assert!(readings >= 10 * 150);
    }
}
