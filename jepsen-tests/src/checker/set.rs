//! The set workload's checker.
//!
//! Unique elements are added with LOCAL writes through any node (the
//! minority side of a partition included). After the final heal and a settle
//! period the harness reads the whole set from every node. The claims:
//!
//! * no acknowledged add is lost: each is present on every node, unless the
//!   store recorded it as superseded;
//! * nothing appears that was never attempted (no phantoms);
//! * a failed add did not happen, so it does not appear either;
//! * a replica returns each element once (no duplicates);
//! * all nodes return the same set (the replicas converged).
//!
//! An add with an unknown outcome (`info`, or never completed) may be
//! present or absent.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Serialize;

use super::Verdict;
use crate::history::Function;
use crate::history::History;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Value;

/// At most this many problems of one kind are spelled out; the rest are
/// counted in one more line.
const MAX_PROBLEMS_PER_KIND: usize = 50;

/// At most this many elements are listed in one problem.
const MAX_ELEMENTS_LISTED: usize = 20;

/// Counts for the run's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetStats {
    /// Distinct elements whose add was invoked.
    pub attempted: usize,
    /// Elements with an acknowledged (`ok`) add.
    pub acknowledged: usize,
    /// Elements whose add has an unknown outcome (and none acknowledged).
    pub unknown: usize,
    /// Elements whose every add failed.
    pub failed: usize,
    /// Nodes that returned a final read.
    pub nodes_read: usize,
    /// Attempted elements present in every node's final read.
    pub present_everywhere: usize,
    /// Acknowledged elements missing from at least one node, not superseded.
    pub lost: usize,
    /// Acknowledged elements missing from at least one node but recorded by
    /// the store as superseded.
    pub superseded: usize,
    /// Unknown-outcome elements present on at least one node.
    pub recovered: usize,
    /// Failed elements present on at least one node.
    pub failed_present: usize,
    /// Elements in some final read that were never attempted.
    pub phantom: usize,
    /// Elements returned more than once by at least one node.
    pub duplicated: usize,
    /// Nodes whose final read differs from the lowest-numbered node's.
    pub divergent_nodes: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    // Ordered by what an element's several adds (if any) add up to: one
    // acknowledged add makes it acknowledged, else one unknown makes it
    // unknown.
    Failed,
    Unknown,
    Acknowledged,
}

/// What the history says about one element.
#[derive(Clone, Debug)]
struct Element {
    outcome: Outcome,
    /// Node and process of the add that decided `outcome`.
    node: Option<u64>,
    process: Process,
}

/// Everything both [`check_set`] and [`set_stats`] need.
struct Analysis {
    elements: BTreeMap<i64, Element>,
    adds: usize,
    reads: BTreeMap<u64, BTreeSet<i64>>,
    duplicates: BTreeMap<u64, Vec<i64>>,
    /// Per element: the nodes whose final read lacks it.
    missing: BTreeMap<i64, Vec<u64>>,
    /// Per element present somewhere: the nodes that have it.
    present: BTreeMap<i64, Vec<u64>>,
}

impl Analysis {
    fn new(history: &History, final_reads: &BTreeMap<u64, Vec<i64>>) -> Self {
        let mut elements: BTreeMap<i64, Element> = BTreeMap::new();
        let mut adds = 0;
        for (invocation, completion) in history.pairs() {
            if !matches!(invocation.process, Process::Client(_)) || invocation.f != Function::Add {
                continue;
            }
            let Value::Int(element) = invocation.value else {
                continue; // not an element: the harness's mistake, ignored
            };
            adds += 1;
            let outcome = match completion.map(|c| c.op_type) {
                Some(OpType::Ok) => Outcome::Acknowledged,
                Some(OpType::Fail) => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            let candidate = Element {
                outcome,
                node: invocation.node,
                process: invocation.process,
            };
            elements
                .entry(element)
                .and_modify(|known| {
                    if outcome > known.outcome {
                        *known = candidate.clone();
                    }
                })
                .or_insert(candidate);
        }
        let reads: BTreeMap<u64, BTreeSet<i64>> = final_reads
            .iter()
            .map(|(node, read)| (*node, read.iter().copied().collect()))
            .collect();
        let duplicates = final_reads
            .iter()
            .map(|(node, read)| (*node, duplicates(read)))
            .filter(|(_, dups)| !dups.is_empty())
            .collect();
        let mut missing: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        let mut present: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
        let everything: BTreeSet<i64> = elements
            .keys()
            .chain(reads.values().flatten())
            .copied()
            .collect();
        for element in everything {
            for (node, read) in &reads {
                let list = if read.contains(&element) {
                    &mut present
                } else {
                    &mut missing
                };
                list.entry(element).or_default().push(*node);
            }
        }
        Self {
            elements,
            adds,
            reads,
            duplicates,
            missing,
            present,
        }
    }
}

/// Elements that occur more than once in a raw read, each listed once, in
/// ascending order. A set never holds an element twice: a replica that
/// returns one twice has a bug.
pub fn duplicates(read: &[i64]) -> Vec<i64> {
    let mut seen = BTreeSet::new();
    let mut repeated = BTreeSet::new();
    for element in read {
        if !seen.insert(*element) {
            repeated.insert(*element);
        }
    }
    repeated.into_iter().collect()
}

/// Checks the set workload: `history` holds the `add` operations,
/// `final_reads` each node's raw final read (node id to the elements in the
/// order returned), `superseded` the elements the store recorded as
/// superseded. A node that could not be read is simply absent from
/// `final_reads`; with no final read at all the verdict is unknown.
pub fn check_set(
    history: &History,
    final_reads: &BTreeMap<u64, Vec<i64>>,
    superseded: &BTreeSet<i64>,
) -> Verdict {
    let analysis = Analysis::new(history, final_reads);
    let mut verdict = Verdict {
        checker: "set".to_string(),
        subject: "set".to_string(),
        valid: Some(true),
        ops_checked: analysis.adds,
        problems: Vec::new(),
        artifacts: Vec::new(),
    };
    if final_reads.is_empty() {
        verdict.valid = None;
        verdict.problems.push(
            "unknown: no node returned a final read, so nothing could be checked".to_string(),
        );
        return verdict;
    }

    let mut duplicated = Vec::new();
    for (node, dups) in &analysis.duplicates {
        duplicated.push(format!(
            "duplicated: node {node} returned {} more than once",
            list(dups)
        ));
    }

    let mut lost = Vec::new();
    let mut failed_present = Vec::new();
    let mut phantom = Vec::new();
    for (element, nodes) in &analysis.missing {
        let Some(add) = analysis.elements.get(element) else {
            continue;
        };
        if add.outcome == Outcome::Acknowledged && !superseded.contains(element) {
            lost.push(format!(
                "lost: element {element} acknowledged ({}, {}) is missing on node(s) {}",
                describe_node(add.node),
                describe_process(add.process),
                join(nodes)
            ));
        }
    }
    for (element, nodes) in &analysis.present {
        match analysis.elements.get(element) {
            None => phantom.push(format!(
                "phantom: element {element} was never attempted but is present on node(s) {}",
                join(nodes)
            )),
            Some(add) if add.outcome == Outcome::Failed => failed_present.push(format!(
                "failed add present: element {element}'s add failed ({}, {}), yet it is present on node(s) {}",
                describe_node(add.node),
                describe_process(add.process),
                join(nodes)
            )),
            Some(_) => {}
        }
    }

    let mut divergent = Vec::new();
    let mut nodes = analysis.reads.iter();
    if let Some((first, first_read)) = nodes.next() {
        for (node, read) in nodes {
            if read == first_read {
                continue;
            }
            let only_first: Vec<i64> = first_read.difference(read).copied().collect();
            let only_other: Vec<i64> = read.difference(first_read).copied().collect();
            divergent.push(format!(
                "divergent: node {first} has {} elements, node {node} has {}; only on {first}: {}; only on {node}: {}",
                first_read.len(),
                read.len(),
                list(&only_first),
                list(&only_other)
            ));
        }
    }

    for (kind, problems) in [
        ("duplicated", duplicated),
        ("lost", lost),
        ("failed add present", failed_present),
        ("phantom", phantom),
    ] {
        push_capped(&mut verdict.problems, kind, problems);
    }
    verdict.problems.extend(divergent);
    if !verdict.problems.is_empty() {
        verdict.valid = Some(false);
    }
    verdict
}

/// Counts for the summary; see [`SetStats`]. Same arguments as [`check_set`].
pub fn set_stats(
    history: &History,
    final_reads: &BTreeMap<u64, Vec<i64>>,
    superseded: &BTreeSet<i64>,
) -> SetStats {
    let analysis = Analysis::new(history, final_reads);
    let count = |outcome: Outcome| {
        analysis
            .elements
            .values()
            .filter(|e| e.outcome == outcome)
            .count()
    };
    let missing_acknowledged: Vec<i64> = analysis
        .missing
        .keys()
        .filter(|e| {
            analysis
                .elements
                .get(e)
                .is_some_and(|add| add.outcome == Outcome::Acknowledged)
        })
        .copied()
        .collect();
    let present_with = |outcome: Outcome| {
        analysis
            .present
            .keys()
            .filter(|e| {
                analysis
                    .elements
                    .get(e)
                    .is_some_and(|add| add.outcome == outcome)
            })
            .count()
    };
    let first_read = analysis.reads.values().next();
    SetStats {
        attempted: analysis.elements.len(),
        acknowledged: count(Outcome::Acknowledged),
        unknown: count(Outcome::Unknown),
        failed: count(Outcome::Failed),
        nodes_read: analysis.reads.len(),
        present_everywhere: if analysis.reads.is_empty() {
            0
        } else {
            analysis
                .elements
                .keys()
                .filter(|e| !analysis.missing.contains_key(e))
                .count()
        },
        lost: missing_acknowledged
            .iter()
            .filter(|e| !superseded.contains(e))
            .count(),
        superseded: missing_acknowledged
            .iter()
            .filter(|e| superseded.contains(e))
            .count(),
        recovered: present_with(Outcome::Unknown),
        failed_present: present_with(Outcome::Failed),
        phantom: analysis
            .present
            .keys()
            .filter(|e| !analysis.elements.contains_key(e))
            .count(),
        duplicated: analysis
            .duplicates
            .values()
            .flatten()
            .collect::<BTreeSet<_>>()
            .len(),
        divergent_nodes: analysis
            .reads
            .values()
            .filter(|read| Some(*read) != first_read)
            .count(),
    }
}

fn push_capped(problems: &mut Vec<String>, kind: &str, found: Vec<String>) {
    let more = found.len().saturating_sub(MAX_PROBLEMS_PER_KIND);
    problems.extend(found.into_iter().take(MAX_PROBLEMS_PER_KIND));
    if more > 0 {
        problems.push(format!("{kind}: ... and {more} more"));
    }
}

fn describe_node(node: Option<u64>) -> String {
    match node {
        Some(node) => format!("node {node}"),
        None => "node unknown".to_string(),
    }
}

fn describe_process(process: Process) -> String {
    match process {
        Process::Client(p) => format!("process {p}"),
        Process::Nemesis => "process nemesis".to_string(),
    }
}

fn join(nodes: &[u64]) -> String {
    nodes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `[1, 2, 3]`, or the first [`MAX_ELEMENTS_LISTED`] and `... (N more)`.
fn list(elements: &[i64]) -> String {
    let shown: Vec<String> = elements
        .iter()
        .take(MAX_ELEMENTS_LISTED)
        .map(i64::to_string)
        .collect();
    let more = elements.len().saturating_sub(MAX_ELEMENTS_LISTED);
    if more > 0 {
        format!("[{}, ... ({more} more)]", shown.join(", "))
    } else {
        format!("[{}]", shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    /// Adds of `(element, process, node, outcome)`; `None`: never completed.
    fn history(adds: &[(i64, u64, u64, Option<OpType>)]) -> History {
        let mut ops = Vec::new();
        for &(element, process, node, outcome) in adds {
            let invocation = Op {
                index: ops.len() as u64,
                op_type: OpType::Invoke,
                f: Function::Add,
                process: Process::Client(process),
                time: ops.len() as u64 * 10,
                key: None,
                value: Value::Int(element),
                node: Some(node),
                level: Some("LOCAL".to_string()),
                error: None,
            };
            ops.push(invocation.clone());
            if let Some(op_type) = outcome {
                let index = ops.len() as u64;
                ops.push(Op {
                    index,
                    op_type,
                    time: index * 10,
                    ..invocation
                });
            }
        }
        History { ops }
    }

    fn reads(nodes: &[(u64, &[i64])]) -> BTreeMap<u64, Vec<i64>> {
        nodes
            .iter()
            .map(|(node, read)| (*node, read.to_vec()))
            .collect()
    }

    const OK: Option<OpType> = Some(OpType::Ok);

    fn three_acknowledged() -> History {
        history(&[(1, 1, 1, OK), (2, 2, 2, OK), (3, 3, 3, OK)])
    }

    #[test]
    fn all_acknowledged_present_everywhere_is_valid() {
        let final_reads = reads(&[(1, &[3, 1, 2]), (2, &[1, 2, 3]), (3, &[2, 3, 1])]);
        let verdict = check_set(&three_acknowledged(), &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(true), "{verdict:?}");
        assert_eq!(
            (
                verdict.checker.as_str(),
                verdict.subject.as_str(),
                verdict.ops_checked
            ),
            ("set", "set", 3)
        );
        let stats = set_stats(&three_acknowledged(), &final_reads, &BTreeSet::new());
        assert_eq!(
            stats,
            SetStats {
                attempted: 3,
                acknowledged: 3,
                nodes_read: 3,
                present_everywhere: 3,
                ..SetStats::default()
            }
        );
    }

    #[test]
    fn lost_element_is_invalid() {
        let final_reads = reads(&[(1, &[1, 3]), (2, &[1, 3]), (3, &[1, 3])]);
        let verdict = check_set(&three_acknowledged(), &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(false));
        assert_eq!(
            verdict.problems,
            vec![
                "lost: element 2 acknowledged (node 2, process 2) is missing on node(s) 1, 2, 3"
                    .to_string()
            ]
        );
        assert_eq!(
            set_stats(&three_acknowledged(), &final_reads, &BTreeSet::new()).lost,
            1
        );
    }

    #[test]
    fn element_lost_on_one_node_only_is_invalid_and_divergent() {
        let final_reads = reads(&[(1, &[1, 2, 3]), (2, &[1, 3]), (3, &[1, 2, 3])]);
        let verdict = check_set(&three_acknowledged(), &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(false));
        assert!(
            verdict
                .problems
                .iter()
                .any(|p| p.ends_with("missing on node(s) 2")),
            "{:?}",
            verdict.problems
        );
        assert!(verdict
            .problems
            .iter()
            .any(|p| p.starts_with("divergent: node 1 has 3 elements, node 2 has 2")));
    }

    #[test]
    fn missing_but_superseded_is_valid() {
        let final_reads = reads(&[(1, &[1, 3]), (2, &[1, 3]), (3, &[1, 3])]);
        let superseded = BTreeSet::from([2]);
        let verdict = check_set(&three_acknowledged(), &final_reads, &superseded);
        assert_eq!(verdict.valid, Some(true), "{verdict:?}");
        let stats = set_stats(&three_acknowledged(), &final_reads, &superseded);
        assert_eq!(
            (stats.lost, stats.superseded, stats.present_everywhere),
            (0, 1, 2)
        );
    }

    #[test]
    fn unknown_outcome_elements_may_be_present_or_absent() {
        let history = history(&[
            (1, 1, 1, OK),
            (2, 2, 2, Some(OpType::Info)),
            (3, 3, 3, None),
            (4, 4, 1, None),
        ]);
        let final_reads = reads(&[(1, &[1, 2, 4]), (2, &[1, 2, 4])]);
        let verdict = check_set(&history, &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(true), "{verdict:?}");
        let stats = set_stats(&history, &final_reads, &BTreeSet::new());
        assert_eq!(
            (
                stats.acknowledged,
                stats.unknown,
                stats.recovered,
                stats.present_everywhere
            ),
            (1, 3, 2, 3)
        );
    }

    #[test]
    fn phantom_element_is_invalid() {
        let final_reads = reads(&[(1, &[1, 2, 3, 42]), (2, &[1, 2, 3, 42])]);
        let verdict = check_set(&three_acknowledged(), &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(false));
        assert_eq!(
            verdict.problems,
            vec![
                "phantom: element 42 was never attempted but is present on node(s) 1, 2"
                    .to_string()
            ]
        );
        assert_eq!(
            set_stats(&three_acknowledged(), &final_reads, &BTreeSet::new()).phantom,
            1
        );
    }

    #[test]
    fn duplicated_element_in_one_read_is_invalid() {
        let final_reads = reads(&[(1, &[1, 2, 3]), (2, &[1, 2, 2, 3, 1])]);
        let verdict = check_set(&three_acknowledged(), &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(false));
        assert_eq!(
            verdict.problems,
            vec!["duplicated: node 2 returned [1, 2] more than once".to_string()]
        );
        assert_eq!(duplicates(&[5, 1, 5, 2, 1, 5]), vec![1, 5]);
        assert!(duplicates(&[]).is_empty());
    }

    #[test]
    fn divergent_replicas_are_invalid() {
        // Node 3 has an unknown-outcome element the others lack: each
        // replica alone would be fine, but they did not converge.
        let history = history(&[(1, 1, 1, OK), (2, 2, 3, Some(OpType::Info))]);
        let final_reads = reads(&[(1, &[1]), (2, &[1]), (3, &[1, 2])]);
        let verdict = check_set(&history, &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(false));
        assert_eq!(
            verdict.problems,
            vec![
                "divergent: node 1 has 1 elements, node 3 has 2; only on 1: []; only on 3: [2]"
                    .to_string()
            ]
        );
        assert_eq!(
            set_stats(&history, &final_reads, &BTreeSet::new()).divergent_nodes,
            1
        );
    }

    #[test]
    fn failed_add_that_appears_is_invalid() {
        let history = history(&[(1, 1, 1, OK), (2, 2, 2, Some(OpType::Fail))]);
        let verdict = check_set(
            &history,
            &reads(&[(1, &[1, 2]), (2, &[1, 2])]),
            &BTreeSet::new(),
        );
        assert_eq!(verdict.valid, Some(false));
        assert!(
            verdict.problems[0].starts_with("failed add present: element 2"),
            "{:?}",
            verdict.problems
        );
        let absent = check_set(&history, &reads(&[(1, &[1]), (2, &[1])]), &BTreeSet::new());
        assert_eq!(absent.valid, Some(true));
    }

    #[test]
    fn long_lists_are_capped() {
        let adds: Vec<_> = (0..200).map(|e| (e, 1, 1, OK)).collect();
        let history = history(&adds);
        let final_reads = reads(&[(1, &[]), (2, &(0..200).collect::<Vec<_>>())]);
        let verdict = check_set(&history, &final_reads, &BTreeSet::new());
        assert_eq!(verdict.valid, Some(false));
        assert_eq!(
            verdict.problems.len(),
            MAX_PROBLEMS_PER_KIND + 2,
            "capped lost lines + 'more' + divergent"
        );
        assert_eq!(
            verdict.problems[MAX_PROBLEMS_PER_KIND],
            "lost: ... and 150 more"
        );
        assert!(verdict.problems.last().is_some_and(|p| p.ends_with("only on 2: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, ... (180 more)]")));
    }

    #[test]
    fn no_final_reads_is_unknown_and_other_ops_are_ignored() {
        let verdict = check_set(&three_acknowledged(), &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(verdict.valid, None);
        let mut history = three_acknowledged();
        let mut stray = history.ops[1].clone(); // a completion with no invocation
        stray.process = Process::Client(99);
        stray.value = Value::Int(77);
        history.ops.push(stray);
        let mut write = history.ops[0].clone();
        write.f = Function::Write;
        write.value = Value::Int(88);
        history.ops.push(write);
        let verdict = check_set(&history, &reads(&[(1, &[1, 2, 3])]), &BTreeSet::new());
        assert_eq!(verdict.valid, Some(true), "{verdict:?}");
        assert_eq!(verdict.ops_checked, 3);
    }
}
