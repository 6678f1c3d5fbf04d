//! The write levels: STRONG (through the Raft log), LOCAL (the provisional
//! store, reconciled later), STRONG_OR_LOCAL (the first that works within a
//! budget).

use std::time::Duration;

use capkv_proto::v1;

use super::error::ApiError;
use super::merge_token;
use super::NodeContext;
use crate::store::provisional::AcceptError;
use crate::store::provisional::Accepted;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::RequestId;
use crate::types::WriteCommand;
use crate::types::WriteOp;
use crate::types::WriteOutcome;

/// How long a follower waits for the leader to answer a forwarded proposal:
/// a commit takes milliseconds; waiting longer only delays the retry over a
/// fresh connection when the link was cut.
pub const FORWARD_PROPOSE_TIMEOUT_MS: u64 = 2_000;

/// A write level with its parameters, as the request asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteLevel {
    Strong,
    Local,
    StrongOrLocal { budget: Duration },
}

/// A committed log entry: what applying it gave, and its index.
pub struct Committed {
    pub result: CommandResult,
    pub log_index: u64,
}

/// What a write got.
pub enum Written {
    Strong {
        outcome: WriteOutcome,
        log_index: u64,
    },
    Local(Accepted),
}

impl Written {
    pub fn versions(&self) -> &[crate::types::Version] {
        match self {
            Written::Strong { outcome, .. } => &outcome.versions,
            Written::Local(accepted) => &accepted.versions,
        }
    }
}

impl NodeContext {
    fn write_command(&self, request_id: RequestId, op: WriteOp) -> Command {
        Command::Write(WriteCommand {
            request_id,
            version: self.clock.now(),
            op,
        })
    }

    /// Writes at `level`. STRONG needs this node to be the leader (a client
    /// is redirected otherwise); LOCAL works on any node.
    pub async fn write(
        &self,
        level: WriteLevel,
        request_id: RequestId,
        op: WriteOp,
    ) -> Result<Written, ApiError> {
        match level {
            WriteLevel::Strong => self.write_strong(request_id, op).await,
            WriteLevel::Local => Ok(Written::Local(self.accept_local(request_id, op).await?)),
            WriteLevel::StrongOrLocal { budget } => {
                let command = self.write_command(request_id.clone(), op.clone());
                match tokio::time::timeout(budget, self.propose(command)).await {
                    Ok(Ok(committed)) => Ok(Written::Strong {
                        outcome: write_outcome(self.id, committed.result)?,
                        log_index: committed.log_index,
                    }),
                    Ok(Err(error)) if !error.is_unavailability() => Err(error),
                    // No quorum within the budget: keep the write here. If the
                    // STRONG attempt commits after all, its request id makes
                    // the provisional copy a no-op when it is reconciled.
                    Ok(Err(_)) | Err(_) => {
                        Ok(Written::Local(self.accept_local(request_id, op).await?))
                    }
                }
            }
        }
    }

    /// A STRONG write on this node, which must be the leader.
    pub async fn write_strong(
        &self,
        request_id: RequestId,
        op: WriteOp,
    ) -> Result<Written, ApiError> {
        let committed = self
            .propose_as_leader(self.write_command(request_id, op))
            .await?;
        Ok(Written::Strong {
            outcome: write_outcome(self.id, committed.result)?,
            log_index: committed.log_index,
        })
    }

    /// Proposes on this node, which must be the leader with a quorum. While
    /// the entry is in flight, a lost quorum ends the wait with UNAVAILABLE
    /// within about an election timeout instead of at the client's deadline.
    pub async fn propose_as_leader(&self, command: Command) -> Result<Committed, ApiError> {
        self.check_leader_quorum()?;
        let write = async {
            match command {
                // Client writes share entries with concurrent ones.
                Command::Write(write) => {
                    self.batcher
                        .propose(write)
                        .await
                        .map(|(outcome, log_index)| Committed {
                            result: CommandResult::Write(outcome),
                            log_index,
                        })
                }
                other => self
                    .raft
                    .client_write(other)
                    .await
                    .map(|response| Committed {
                        result: response.data,
                        log_index: response.log_id.index,
                    })
                    .map_err(|e| ApiError::from_write(self.id, e)),
            }
        };
        tokio::pin!(write);
        // The quorum was just checked: the first look is one period away.
        let period = Duration::from_millis(self.timing.heartbeat_interval_ms);
        let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                result = &mut write => return result,
                _ = watchdog.tick() => {
                    if let Err(ApiError::NoQuorum { node, detail }) = self.check_leader_quorum() {
                        return Err(ApiError::NoQuorum {
                            node,
                            detail: format!("{detail}; the write was proposed and may still commit if the partition heals (retry with the same request id)"),
                        });
                    }
                }
            }
        }
    }

    /// Proposes from any node: directly on the leader, forwarded elsewhere.
    /// Used by the reconciler and by STRONG_OR_LOCAL.
    pub async fn propose(&self, command: Command) -> Result<Committed, ApiError> {
        match self.known_leader() {
            Some((leader, _)) if leader == self.id => self.propose_as_leader(command).await,
            Some((leader, addr)) => {
                let timeout = Duration::from_millis(FORWARD_PROPOSE_TIMEOUT_MS);
                let reply = self
                    .network
                    .propose(leader, &addr, &command, timeout)
                    .await?;
                Ok(Committed {
                    result: reply.result,
                    log_index: reply.log_index,
                })
            }
            None => Err(ApiError::NoLeader { node: self.id }),
        }
    }

    /// Stores a LOCAL write durably in this node's provisional store and
    /// wakes the reconciler.
    pub async fn accept_local(
        &self,
        request_id: RequestId,
        op: WriteOp,
    ) -> Result<Accepted, ApiError> {
        self.accept_local_many(vec![(request_id, op)])
            .await
            .pop()
            .expect("one answer per write")
    }

    /// [`NodeContext::accept_local`] for several writes, stored together
    /// (one log append, one sync); an answer for each, in order.
    pub async fn accept_local_many(
        &self,
        writes: Vec<(RequestId, WriteOp)>,
    ) -> Vec<Result<Accepted, ApiError>> {
        if writes.is_empty() {
            return Vec::new();
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let answers = self
            .provisional
            .accept_many(writes, || self.clock.now(), now_ms)
            .await;
        self.reconcile_wakeup.notify_one();
        answers
            .into_iter()
            .map(|answer| {
                answer.map_err(|e| match e {
                    AcceptError::Full | AcceptError::FullBytes { .. } => {
                        ApiError::Overloaded(e.to_string())
                    }
                    AcceptError::Storage(e) => ApiError::from_storage(self.id, *e),
                })
            })
            .collect()
    }

    /// Response metadata for a write, with the client's session token
    /// updated by what the write did.
    pub fn write_meta(&self, written: &Written, mut session: v1::SessionToken) -> v1::ResponseMeta {
        match written {
            Written::Strong { log_index, .. } => {
                merge_token(&mut session, *log_index, None);
                v1::ResponseMeta {
                    write_consistency: v1::WriteConsistency::Strong as i32,
                    ..self.meta(session)
                }
            }
            Written::Local(accepted) => {
                merge_token(&mut session, 0, Some((self.id, accepted.seq)));
                v1::ResponseMeta {
                    write_consistency: v1::WriteConsistency::Local as i32,
                    includes_provisional: true,
                    provisional_write: Some(v1::WriteId {
                        origin_node: self.id,
                        seq: accepted.seq,
                    }),
                    ..self.meta(session)
                }
            }
        }
    }
}

/// The write outcome of a committed write entry.
fn write_outcome(
    node: crate::types::NodeId,
    result: CommandResult,
) -> Result<WriteOutcome, ApiError> {
    match result {
        CommandResult::Write(outcome) => Ok(outcome),
        other => Err(ApiError::Storage {
            node,
            detail: format!("a write entry applied as {other:?}, not as a write"),
        }),
    }
}

/// Without an explicit budget, a STRONG_OR_LOCAL write gives the STRONG
/// attempt half of what is left of its deadline, so the LOCAL fallback
/// still fits.
pub fn write_level(
    choice: &super::validate::WriteChoice,
    deadline: std::time::Instant,
) -> WriteLevel {
    match choice.level {
        v1::WriteConsistency::Local => WriteLevel::Local,
        v1::WriteConsistency::StrongOrLocal => {
            let budget = match choice.strong_budget_ms {
                0 => deadline.saturating_duration_since(std::time::Instant::now()) / 2,
                ms => Duration::from_millis(ms),
            };
            WriteLevel::StrongOrLocal { budget }
        }
        v1::WriteConsistency::Strong | v1::WriteConsistency::Unspecified => WriteLevel::Strong,
    }
}
