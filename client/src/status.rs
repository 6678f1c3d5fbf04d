//! `cluster_status`: every node's own view, gathered concurrently, with the
//! unreachable ones reported rather than failing the whole call.

use std::collections::HashMap;

use crate::endpoint::normalize_endpoint;
use crate::{proto, Client, Error};

/// Discovery rounds: the configured endpoints, then the members they name,
/// then members only those name. Membership reaches every node in the second
/// round unless nodes disagree about it; the third covers a disagreement
/// during a membership change without letting discovery run on.
const MAX_STATUS_ROUNDS: usize = 3;

/// Nodes asked in one `cluster_status` call. Clusters have three or five
/// nodes; the bound stops a confused membership list from fanning out.
const MAX_STATUS_NODES: usize = 64;

/// The role string a node reports when it is the leader.
const ROLE_LEADER: &str = "leader";

/// What every reachable node says about itself, and which nodes did not answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterStatus {
    /// The leader of the highest term seen, if any node knows it.
    pub leader: Option<u64>,
    /// The highest term any node reported.
    pub term: u64,
    /// One entry per address asked, sorted by node id (unknown ids last),
    /// then address.
    pub nodes: Vec<NodeReport>,
}

/// One node's answer, or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeReport {
    /// The node's id: from its own answer, or from another node's membership
    /// list when it did not answer.
    pub id: Option<u64>,
    /// The address that was asked, `host:port`.
    pub addr: String,
    pub status: Option<proto::NodeStatus>,
    pub error: Option<String>,
}

impl NodeReport {
    pub fn reachable(&self) -> bool {
        self.status.is_some()
    }

    /// The error prefixed with the node's address, unless it names it already.
    pub fn error_with_addr(&self) -> Option<String> {
        let error = self.error.as_ref()?;
        Some(if error.contains(&self.addr) {
            error.clone()
        } else {
            format!("{}: {error}", self.addr)
        })
    }
}

impl Client {
    /// Asks every configured endpoint for its status concurrently, then every
    /// member (voter or learner) named in the answers that was not asked yet.
    /// With [`crate::ClientConfig::pin_endpoint`], asks only the first
    /// endpoint. Fails only when no node answers.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let mut asked: Vec<String> = Vec::new();
        let mut results: Vec<(String, Result<proto::NodeStatus, Error>)> = Vec::new();
        let (mut to_ask, rounds) = if self.config().pin_endpoint {
            (self.endpoints()[..1].to_vec(), 1)
        } else {
            (self.endpoints().to_vec(), MAX_STATUS_ROUNDS)
        };
        for _round in 0..rounds {
            to_ask.truncate(MAX_STATUS_NODES.saturating_sub(asked.len()));
            if to_ask.is_empty() {
                break;
            }
            let mut tasks = Vec::with_capacity(to_ask.len());
            for addr in to_ask.drain(..) {
                let client = self.clone();
                let task_addr = addr.clone();
                let task = tokio::spawn(async move { client.node_status(&task_addr).await });
                asked.push(addr.clone());
                tasks.push((addr, task));
            }
            // The tasks run concurrently; awaiting them in order only
            // decides the order results are collected in.
            for (addr, task) in tasks {
                let result = task.await.unwrap_or_else(|join_error| {
                    Err(Error::Server {
                        code: tonic::Code::Internal,
                        message: format!("status task failed: {join_error}"),
                    })
                });
                results.push((addr, result));
            }
            to_ask = members_not_asked(&results, &asked);
        }
        aggregate(results)
    }
}

/// Member addresses named in the answers whose node neither answered yet nor
/// was asked.
fn members_not_asked(
    results: &[(String, Result<proto::NodeStatus, Error>)],
    asked: &[String],
) -> Vec<String> {
    let answered_ids: Vec<u64> = results
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok().map(|status| status.id))
        .collect();
    let mut new_addrs: Vec<String> = Vec::new();
    for member in all_members(results) {
        if answered_ids.contains(&member.id) {
            continue;
        }
        let addr = normalized_or_raw(&member.addr);
        if !asked.contains(&addr) && !new_addrs.contains(&addr) {
            new_addrs.push(addr);
        }
    }
    new_addrs
}

/// Builds the report from every answer (pure, so it is tested without a
/// network).
pub(crate) fn aggregate(
    results: Vec<(String, Result<proto::NodeStatus, Error>)>,
) -> Result<ClusterStatus, Error> {
    let id_by_addr: HashMap<String, u64> = all_members(&results)
        .map(|member| (normalized_or_raw(&member.addr), member.id))
        .collect();
    let mut nodes: Vec<NodeReport> = results
        .into_iter()
        .map(|(addr, result)| match result {
            Ok(status) => NodeReport {
                id: Some(status.id),
                addr,
                status: Some(status),
                error: None,
            },
            Err(error) => NodeReport {
                id: id_by_addr.get(&addr).copied(),
                addr,
                status: None,
                error: Some(error.to_string()),
            },
        })
        .collect();
    nodes.sort_by(|a, b| (a.id.is_none(), a.id, &a.addr).cmp(&(b.id.is_none(), b.id, &b.addr)));
    let statuses: Vec<&proto::NodeStatus> =
        nodes.iter().filter_map(|n| n.status.as_ref()).collect();
    if statuses.is_empty() {
        let failures: Vec<String> = nodes
            .iter()
            .map(|n| n.error_with_addr().unwrap_or_default())
            .collect();
        return Err(Error::Unavailable {
            message: format!(
                "no node answered a status request ({})",
                failures.join("; ")
            ),
            leader: None,
        });
    }
    let term = statuses.iter().map(|s| s.term).max().unwrap_or(0);
    // Raft allows at most one leader per term, so a node that says it leads
    // the highest term is the leader; otherwise trust the leader id reported
    // by a node in that term.
    let leader = statuses
        .iter()
        .find(|s| s.term == term && s.role == ROLE_LEADER)
        .map(|s| s.id)
        .or_else(|| {
            statuses
                .iter()
                .find(|s| s.term == term && s.leader_id != 0)
                .map(|s| s.leader_id)
        });
    Ok(ClusterStatus {
        leader,
        term,
        nodes,
    })
}

fn all_members<'a>(
    results: &'a [(String, Result<proto::NodeStatus, Error>)],
) -> impl Iterator<Item = &'a proto::Member> + 'a {
    results
        .iter()
        .filter_map(|(_, result)| result.as_ref().ok())
        .flat_map(|status| status.voters.iter().chain(status.learners.iter()))
}

/// Compares addresses in normalized form; a malformed member address stays
/// as it is and fails (visibly) when asked.
fn normalized_or_raw(addr: &str) -> String {
    normalize_endpoint(addr).unwrap_or_else(|_| addr.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, addr: &str) -> proto::Member {
        proto::Member {
            id,
            addr: addr.to_string(),
        }
    }

    fn status(id: u64, role: &str, term: u64, leader_id: u64) -> proto::NodeStatus {
        proto::NodeStatus {
            id,
            addr: format!("n{id}:700{id}"),
            role: role.to_string(),
            term,
            leader_id,
            voters: vec![
                member(1, "n1:7001"),
                member(2, "n2:7002"),
                member(3, "n3:7003"),
            ],
            learners: vec![member(4, "n4:7004")],
            ..proto::NodeStatus::default()
        }
    }

    fn down() -> Result<proto::NodeStatus, Error> {
        Err(Error::Transport("connection refused".into()))
    }

    #[test]
    fn unreachable_nodes_are_reported_with_their_member_id() {
        let report = aggregate(vec![
            ("n2:7002".into(), Ok(status(2, "follower", 5, 1))),
            ("n3:7003".into(), down()),
            ("other:9".into(), down()),
            ("n1:7001".into(), Ok(status(1, "leader", 5, 1))),
        ])
        .expect("two nodes answered");
        assert_eq!(report.leader, Some(1));
        assert_eq!(report.term, 5);
        let summary: Vec<(Option<u64>, &str, bool)> = report
            .nodes
            .iter()
            .map(|n| (n.id, n.addr.as_str(), n.reachable()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some(1), "n1:7001", true),
                (Some(2), "n2:7002", true),
                (Some(3), "n3:7003", false),
                (None, "other:9", false),
            ]
        );
        assert_eq!(
            report.nodes[2].error.as_deref(),
            Some("transport error: connection refused")
        );
    }

    #[test]
    fn the_leader_comes_from_the_highest_term() {
        // A deposed leader in term 4 still thinks it leads; term 5 has a
        // follower that knows node 2 leads.
        let report = aggregate(vec![
            ("n1:7001".into(), Ok(status(1, "leader", 4, 1))),
            ("n3:7003".into(), Ok(status(3, "follower", 5, 2))),
        ])
        .expect("answers");
        assert_eq!((report.leader, report.term), (Some(2), 5));

        let report =
            aggregate(vec![("n1:7001".into(), Ok(status(1, "candidate", 6, 0)))]).expect("answers");
        assert_eq!((report.leader, report.term), (None, 6));
    }

    #[test]
    fn no_answer_at_all_is_an_error() {
        let result = aggregate(vec![("n1:7001".into(), down()), ("n2:7002".into(), down())]);
        match result {
            Err(Error::Unavailable {
                message,
                leader: None,
            }) => {
                assert!(message.contains("n1:7001: transport error"), "{message}");
                assert!(message.contains("n2:7002"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn discovery_asks_members_that_neither_answered_nor_were_asked() {
        let results = vec![
            ("n1:7001".into(), Ok(status(1, "leader", 5, 1))),
            ("localhost:7002".into(), Ok(status(2, "follower", 5, 1))),
            ("n3:7003".into(), down()),
        ];
        let asked = vec![
            "n1:7001".to_string(),
            "localhost:7002".to_string(),
            "n3:7003".to_string(),
        ];
        // Node 2 answered under another address, node 3 was asked already:
        // only the learner is new.
        assert_eq!(members_not_asked(&results, &asked), ["n4:7004"]);
    }
}
