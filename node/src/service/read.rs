//! The read levels: what a node must prove before it answers, and the
//! merged view (replicated state plus this node's provisional writes) that
//! SESSION and EVENTUAL reads see.

use std::cmp::Ordering;
use std::time::Duration;
use std::time::Instant;

use capkv_proto::v1;
use openraft::ServerState;

use super::error::ApiError;
use super::merge_token;
use super::NodeContext;
use crate::store::keys::ReadingRow;
use crate::store::keys::StoredValue;
use crate::types::NodeId;
use crate::types::Raft;

/// How often a waiting read re-checks whether its level is met.
const READ_POLL_INTERVAL_MS: u64 = 10;

/// A read level with its parameters, as the request asked.
#[derive(Clone, Debug, PartialEq)]
pub enum ReadLevel {
    Linearizable,
    Session(v1::SessionToken),
    Bounded { max_staleness_ms: u64 },
    Eventual,
}

impl ReadLevel {
    fn name(&self) -> String {
        match self {
            ReadLevel::Linearizable => "LINEARIZABLE".into(),
            ReadLevel::Session(_) => "SESSION".into(),
            ReadLevel::Bounded { max_staleness_ms } => format!("BOUNDED({max_staleness_ms} ms)"),
            ReadLevel::Eventual => "EVENTUAL".into(),
        }
    }
}

/// What a node proved before reading: the level it provides and how to read.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadPermit {
    pub provided: v1::ReadConsistency,
    /// Include this node's provisional writes (SESSION, EVENTUAL).
    pub merge_provisional: bool,
    pub staleness_ms: Option<u64>,
    /// The commit index the answer reflects, for the session token.
    pub observed_index: u64,
}

impl NodeContext {
    fn level_not_met(&self, level: &ReadLevel, reason: impl Into<String>) -> ApiError {
        ApiError::LevelNotMet {
            node: self.id,
            level: level.name(),
            reason: reason.into(),
        }
    }

    /// Waits (until `deadline`) until this node can serve `level`.
    pub async fn read_permit(
        &self,
        level: &ReadLevel,
        deadline: Instant,
    ) -> Result<ReadPermit, ApiError> {
        match level {
            ReadLevel::Linearizable => {
                let read_index = match self.known_leader() {
                    Some((leader, _)) if leader == self.id => self.leader_read_index().await,
                    Some((leader, addr)) => {
                        let timeout = Duration::from_millis(self.timing.election_timeout_max_ms);
                        self.network.read_index(leader, &addr, timeout).await
                    }
                    None => Err(ApiError::NoLeader { node: self.id }),
                }
                .map_err(|e| {
                    let reason = match e {
                        ApiError::NoQuorum { detail, .. } => format!("no quorum: {detail}"),
                        ApiError::NoLeader { .. } => "no quorum: it knows no leader".to_string(),
                        other => other.to_string(),
                    };
                    self.level_not_met(level, reason)
                })?;
                self.wait_applied(read_index, deadline)
                    .await
                    .map_err(|reason| self.level_not_met(level, reason))?;
                Ok(ReadPermit {
                    provided: v1::ReadConsistency::Linearizable,
                    merge_provisional: false,
                    staleness_ms: Some(0),
                    observed_index: read_index,
                })
            }
            ReadLevel::Session(token) => loop {
                match self.session_gap(token) {
                    Ok(None) => {
                        return Ok(ReadPermit {
                            provided: v1::ReadConsistency::Session,
                            merge_provisional: true,
                            staleness_ms: self.staleness_bound_ms(),
                            observed_index: self.applied_index().max(token.commit_index),
                        })
                    }
                    Ok(Some(gap)) if Instant::now() >= deadline => {
                        return Err(self.level_not_met(
                            level,
                            format!("the session's writes are not all here yet: {gap}"),
                        ))
                    }
                    Ok(Some(_)) => {
                        tokio::time::sleep(Duration::from_millis(READ_POLL_INTERVAL_MS)).await
                    }
                    Err(e) => return Err(e),
                }
            },
            ReadLevel::Bounded { max_staleness_ms } => loop {
                let bound = self.staleness_bound_ms();
                if let Some(staleness) = bound.filter(|s| s <= max_staleness_ms) {
                    return Ok(ReadPermit {
                        provided: v1::ReadConsistency::Bounded,
                        merge_provisional: false,
                        staleness_ms: Some(staleness),
                        observed_index: self.applied_index(),
                    });
                }
                // A follower in recent contact may only be applying what the
                // leader committed; wait while the bound can still be met.
                let catching_up = self
                    .leader_contact
                    .last()
                    .is_some_and(|c| (c.at.elapsed().as_millis() as u64) < *max_staleness_ms);
                if !catching_up || Instant::now() >= deadline {
                    let reason = match bound {
                        Some(staleness) => {
                            format!("its state may be {staleness} ms behind the leader")
                        }
                        None => self.staleness_unknown_reason(),
                    };
                    return Err(self.level_not_met(level, reason));
                }
                tokio::time::sleep(Duration::from_millis(READ_POLL_INTERVAL_MS)).await;
            },
            ReadLevel::Eventual => Ok(ReadPermit {
                provided: v1::ReadConsistency::Eventual,
                merge_provisional: true,
                staleness_ms: self.staleness_bound_ms(),
                observed_index: self.applied_index(),
            }),
        }
    }

    /// On the leader: the read index of a leadership check (shared with
    /// the reads that arrived with this one, see `read_index.rs`).
    pub async fn leader_read_index(&self) -> Result<u64, ApiError> {
        self.check_leader_quorum()?;
        self.read_index.read_index().await
    }
}

/// Confirms leadership with a quorum (within `timeout`, an election timeout)
/// and returns the read index.
pub async fn confirm_read_index(
    raft: Raft,
    node: NodeId,
    timeout: Duration,
) -> Result<u64, ApiError> {
    match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
        Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map(|id| id.index).unwrap_or(0)),
        Ok(Err(e)) => Err(ApiError::from_read(node, e)),
        Err(_) => Err(ApiError::NoQuorum {
            node,
            detail: format!(
                "no quorum confirmed leadership within {} ms",
                timeout.as_millis()
            ),
        }),
    }
}

impl NodeContext {
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), String> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| {
                format!(
                    "it has not applied the read index {index} in time (applied {})",
                    self.applied_index()
                )
            })
    }

    /// What a session token covers that this node has not applied yet, in
    /// words, or `None` when the token is covered.
    fn session_gap(&self, token: &v1::SessionToken) -> Result<Option<String>, ApiError> {
        let mut gaps = Vec::new();
        let applied = self.applied_index();
        if applied < token.commit_index {
            gaps.push(format!(
                "applied index {applied} < the session's {}",
                token.commit_index
            ));
        }
        if !token.provisional_seq.is_empty() {
            let app = self
                .reads
                .app_meta()
                .map_err(|e| ApiError::from_storage(self.id, e))?;
            for (origin, seq) in &token.provisional_seq {
                let covered = if *origin == self.id {
                    // Accepted here: pending in this node's provisional store,
                    // or reconciled and applied here before it was removed.
                    *seq < self.provisional.next_seq()
                } else {
                    app.reconciled_seq.get(origin).copied().unwrap_or(0) >= *seq
                };
                if !covered {
                    let have = app.reconciled_seq.get(origin).copied().unwrap_or(0);
                    gaps.push(format!("node {origin}'s LOCAL writes up to seq {seq} not reconciled here (reconciled up to {have})"));
                }
            }
        }
        Ok((!gaps.is_empty()).then(|| gaps.join("; ")))
    }

    /// An upper bound on how far this node's applied state is behind the
    /// leader, in ms, when the node can prove one.
    pub fn staleness_bound_ms(&self) -> Option<u64> {
        let (state, millis_since_quorum_ack, applied, term) = self.with_metrics(|m| {
            let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
            (m.state, m.millis_since_quorum_ack, applied, m.current_term)
        });
        if state == ServerState::Leader {
            return millis_since_quorum_ack;
        }
        let contact = self.leader_contact.last()?;
        (contact.term == term && applied >= contact.leader_commit)
            .then(|| contact.at.elapsed().as_millis() as u64)
    }

    fn staleness_unknown_reason(&self) -> String {
        match self.leader_contact.last() {
            None => "it has not heard from a leader since it started".into(),
            Some(contact) => format!(
                "its last contact with the leader was {} ms ago (leader commit {}, applied here {})",
                contact.at.elapsed().as_millis(),
                contact.leader_commit,
                self.applied_index()
            ),
        }
    }

    /// Response metadata for a read.
    pub fn read_meta(
        &self,
        permit: &ReadPermit,
        includes_provisional: bool,
        mut session: v1::SessionToken,
    ) -> v1::ResponseMeta {
        merge_token(&mut session, permit.observed_index, None);
        v1::ResponseMeta {
            read_consistency: permit.provided as i32,
            staleness_ms: permit.staleness_ms,
            includes_provisional,
            ..self.meta(session)
        }
    }

    /// A key's value as the permit allows: replicated state, merged with
    /// this node's pending writes when allowed (the higher version wins).
    /// The flag says whether the answer came from provisional data.
    pub fn get_value(
        &self,
        key: &[u8],
        permit: &ReadPermit,
    ) -> Result<(Option<StoredValue>, bool), ApiError> {
        let storage = |e| ApiError::from_storage(self.id, e);
        let replicated = self.reads.get(key).map_err(storage)?;
        if !permit.merge_provisional {
            return Ok((replicated, false));
        }
        let pending = self.provisional.get(key).map_err(storage)?;
        Ok(match (replicated, pending) {
            (Some(r), Some(p)) if p.version > r.version => (Some(p), true),
            (None, Some(p)) => (Some(p), true),
            (replicated, _) => (replicated, false),
        })
    }

    pub fn latest_reading(
        &self,
        sensor_id: &str,
        permit: &ReadPermit,
    ) -> Result<(Option<ReadingRow>, bool), ApiError> {
        let storage = |e| ApiError::from_storage(self.id, e);
        let replicated = self.reads.latest_reading(sensor_id).map_err(storage)?;
        if !permit.merge_provisional {
            return Ok((replicated, false));
        }
        let pending = self
            .provisional
            .latest_reading(sensor_id)
            .map_err(storage)?;
        Ok(match (replicated, pending) {
            (Some(r), Some(p))
                if (p.timestamp_ms, p.reading.version) > (r.timestamp_ms, r.reading.version) =>
            {
                (Some(p), true)
            }
            (None, Some(p)) => (Some(p), true),
            (replicated, _) => (replicated, false),
        })
    }

    /// Up to `limit` readings in `[from_ms, to_ms]` in time order, merged as
    /// in [`NodeContext::get_value`].
    pub fn range_readings(
        &self,
        sensor_id: &str,
        (from_ms, to_ms): (u64, u64),
        limit: usize,
        descending: bool,
        permit: &ReadPermit,
    ) -> Result<(Vec<ReadingRow>, bool), ApiError> {
        let storage = |e| ApiError::from_storage(self.id, e);
        let replicated = self
            .reads
            .range_readings(sensor_id, (from_ms, to_ms), limit, descending)
            .map_err(storage)?;
        if !permit.merge_provisional {
            return Ok((replicated, false));
        }
        let pending = self
            .provisional
            .range_readings(sensor_id, (from_ms, to_ms), limit, descending)
            .map_err(storage)?;
        Ok(merge_rows(replicated, pending, limit, descending))
    }
}

/// Merges two time-ordered row lists; on equal timestamps the higher
/// version wins. Returns at most `limit` rows and whether any came from
/// `pending`.
pub fn merge_rows(
    replicated: Vec<ReadingRow>,
    pending: Vec<ReadingRow>,
    limit: usize,
    descending: bool,
) -> (Vec<ReadingRow>, bool) {
    let mut merged = Vec::with_capacity(limit.min(replicated.len() + pending.len()));
    let mut from_pending = false;
    let mut left = replicated.into_iter().peekable();
    let mut right = pending.into_iter().peekable();
    while merged.len() < limit {
        let order = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(l), Some(r)) => {
                let by_time = l.timestamp_ms.cmp(&r.timestamp_ms);
                if descending {
                    by_time.reverse()
                } else {
                    by_time
                }
            }
        };
        let row = match order {
            Ordering::Less => left.next(),
            Ordering::Greater => {
                from_pending = true;
                right.next()
            }
            Ordering::Equal => {
                let (l, r) = (left.next(), right.next());
                match (l, r) {
                    (Some(l), Some(r)) if r.reading.version > l.reading.version => {
                        from_pending = true;
                        Some(r)
                    }
                    (l, _) => l,
                }
            }
        };
        merged.extend(row);
    }
    (merged, from_pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::StoredReading;
    use crate::types::Version;

    fn row(ts: u64, physical_ms: u64) -> ReadingRow {
        ReadingRow {
            timestamp_ms: ts,
            reading: StoredReading {
                value: ts as f64,
                tags: vec![],
                version: Version {
                    physical_ms,
                    logical: 0,
                    origin_node: 1,
                },
            },
        }
    }

    #[test]
    fn merged_rows_keep_order_and_the_newer_version() {
        let replicated = vec![row(1, 10), row(3, 10), row(5, 10)];
        let pending = vec![row(2, 20), row(3, 20), row(5, 5)];
        let (merged, from_pending) = merge_rows(replicated, pending, 10, false);
        let got: Vec<(u64, u64)> = merged
            .iter()
            .map(|r| (r.timestamp_ms, r.reading.version.physical_ms))
            .collect();
        assert_eq!(got, vec![(1, 10), (2, 20), (3, 20), (5, 10)]);
        assert!(from_pending);
    }

    #[test]
    fn merged_rows_respect_limit_and_direction() {
        let replicated = vec![row(9, 1), row(4, 1)];
        let pending = vec![row(7, 1)];
        let (merged, _) = merge_rows(replicated, pending, 2, true);
        assert_eq!(
            merged.iter().map(|r| r.timestamp_ms).collect::<Vec<_>>(),
            vec![9, 7]
        );
        let (merged, from_pending) = merge_rows(vec![row(1, 1)], vec![], 5, false);
        assert_eq!(merged.len(), 1);
        assert!(!from_pending);
    }
}
