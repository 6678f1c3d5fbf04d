//! The reconciler: one background task per node that moves the node's
//! provisional (LOCAL) writes into the Raft log.
//!
//! It takes the oldest pending writes in seq order, proposes them as one
//! `Command::Reconcile` through the leader (forwarded when this node is a
//! follower), retries with backoff while there is no leader or no quorum,
//! and removes them from the provisional store only after the entry is
//! committed and applied on this node. A batch proposed twice (a retry after
//! an ambiguous failure) is harmless: the state machine skips every write at
//! or below the origin's reconciled high-water mark.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::service::NodeContext;
use crate::types::Command;

/// Writes per reconciliation entry: big enough to drain a partition's
/// backlog quickly, small enough that one entry stays well under the Raft
/// message limits.
pub const RECONCILE_BATCH_MAX_WRITES: usize = 512;
/// Encoded bytes per reconciliation entry (at least one write is sent).
pub const RECONCILE_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// Backoff between failed attempts: doubles from the initial value up to the
/// maximum, with jitter, retried without limit (nothing acknowledged may be
/// dropped); every attempt is logged at debug level, every 10th at warn.
pub const RECONCILE_BACKOFF_INITIAL_MS: u64 = 50;
pub const RECONCILE_BACKOFF_MAX_MS: u64 = 2_000;
/// How long to wait for a committed batch to be applied on this node.
pub const RECONCILE_APPLY_WAIT_MS: u64 = 10_000;
/// How often an idle reconciler looks for work it was not woken for.
pub const RECONCILE_IDLE_POLL_MS: u64 = 1_000;

/// Starts the reconciler; it stops when `stop` turns true.
pub fn spawn(ctx: Arc<NodeContext>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let batch = match ctx
                .provisional
                .oldest(RECONCILE_BATCH_MAX_WRITES, RECONCILE_BATCH_MAX_BYTES)
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(error = %e, "reading the provisional store");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = ctx.reconcile_wakeup.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(RECONCILE_IDLE_POLL_MS)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let (first, last) = (batch[0].seq, batch[batch.len() - 1].seq);
            let command = Command::Reconcile {
                origin: ctx.id,
                writes: batch.clone(),
            };
            // Stopping must not wait for a proposal or an apply in flight:
            // abandoning one is safe (the batch stays pending, and proposing
            // it again after a restart is idempotent).
            let attempt = reconcile_batch(&ctx, command, &batch);
            let result = tokio::select! {
                result = attempt => result,
                _ = stop.changed() => return,
            };
            match result {
                Ok(committed) => {
                    failures = 0;
                    tracing::debug!(first, last, log_index = committed.log_index, outcome = ?committed.result, "reconciled");
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if failures.is_multiple_of(10) {
                        tracing::warn!(first, last, failures, %error, "reconciliation still failing; retrying");
                    } else {
                        tracing::debug!(first, last, failures, %error, "reconciliation failed; retrying");
                    }
                    let ceiling = RECONCILE_BACKOFF_INITIAL_MS
                        .saturating_mul(1u64 << failures.min(16))
                        .min(RECONCILE_BACKOFF_MAX_MS);
                    let delay = rand::thread_rng().gen_range(ceiling / 2..=ceiling);
                    // A new leader (a healed partition, a finished election)
                    // ends the backoff at once: that is when a retry works.
                    let then = ctx.with_metrics(|m| (m.current_leader, m.current_term));
                    let mut metrics = ctx.raft.metrics();
                    let new_leader = metrics.wait_for(|m| {
                        m.current_leader.is_some() && (m.current_leader, m.current_term) != then
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
                        _ = new_leader => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
    })
}

/// Proposes one batch and, once it is applied here, removes it from the
/// provisional store.
async fn reconcile_batch(
    ctx: &NodeContext,
    command: Command,
    batch: &[crate::types::ProvisionalWrite],
) -> Result<crate::service::write::Committed, String> {
    let committed = ctx.propose(command).await.map_err(|e| e.to_string())?;
    ctx.raft
        .wait(Some(Duration::from_millis(RECONCILE_APPLY_WAIT_MS)))
        .applied_index_at_least(Some(committed.log_index), "reconciled batch applied here")
        .await
        .map_err(|e| {
            format!(
                "committed at {} but not applied here yet: {e}",
                committed.log_index
            )
        })?;
    ctx.provisional.remove(batch).map_err(|e| e.to_string())?;
    Ok(committed)
}
