//! The session workload's checker: read-your-writes and monotonic reads.
//!
//! Each process writes increasing integers 1, 2, 3, ... to its own key with
//! LOCAL writes through one node, and reads that key with SESSION reads
//! through another node, carrying its session token. Per process, for each
//! key it reads (`nil` counts as below every value):
//!
//! * read-your-writes: an `ok` read invoked after the process's `ok` write of
//!   `w` completed returns a value `>= w`;
//! * monotonic reads: an `ok` read never returns less than an `ok` read of
//!   the same process that completed before it was invoked;
//! * every value read was written: by a write to that key that was invoked
//!   before the read completed and did not fail. A write with an unknown
//!   outcome may have happened, so its value may be read.
//!
//! Writes to the key by other processes are accepted as the source of a value
//! (a retired process's successor may take over its key), but only the
//! process's own writes and reads bind its session.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::Function;
use crate::history::History;
use crate::history::Op;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Value;

/// At most this many problems are spelled out per process; the rest are
/// counted in one more line.
const MAX_PROBLEMS_PER_PROCESS: usize = 50;

/// A point in the history: events are ordered by time, then by index (the
/// recorder stamps both under one lock, so they agree; hand-written
/// histories may tie on time).
type Position = (u64, u64);

fn position(op: &Op) -> Position {
    (op.time, op.index)
}

/// A write as the value check sees it.
struct Write {
    invoked: Position,
    invocation_index: u64,
    outcome: OpType,
}

/// One process's operation on one key, with its completion.
struct SessionOp<'h> {
    invocation: &'h Op,
    completion: Option<&'h Op>,
}

/// Checks every process's session; one verdict per process that read or
/// wrote a key, in process order.
pub fn check_sessions(history: &History) -> Vec<Verdict> {
    let mut by_process: BTreeMap<u64, Vec<SessionOp<'_>>> = BTreeMap::new();
    // Per key and value: every write of it, by any process.
    let mut writes: BTreeMap<&str, BTreeMap<i64, Vec<Write>>> = BTreeMap::new();
    for (invocation, completion) in history.pairs() {
        let Process::Client(process) = invocation.process else {
            continue;
        };
        let Some(key) = invocation.key.as_deref() else {
            continue;
        };
        if !matches!(invocation.f, Function::Read | Function::Write) {
            continue;
        }
        if invocation.f == Function::Write {
            let Value::Int(value) = invocation.value else {
                continue; // not a session write: the harness's mistake, ignored
            };
            let outcome = match completion.map(|c| c.op_type) {
                Some(OpType::Ok) => OpType::Ok,
                Some(OpType::Fail) => OpType::Fail,
                _ => OpType::Info,
            };
            writes
                .entry(key)
                .or_default()
                .entry(value)
                .or_default()
                .push(Write {
                    invoked: position(invocation),
                    invocation_index: invocation.index,
                    outcome,
                });
        }
        by_process.entry(process).or_default().push(SessionOp {
            invocation,
            completion,
        });
    }
    by_process
        .into_iter()
        .map(|(process, ops)| check_process(process, &ops, &writes))
        .collect()
}

/// What one process has established about one key, as of a point in time.
#[derive(Default)]
struct Floor {
    /// Highest acknowledged own write, with its completion's index.
    written: Option<(i64, u64)>,
    /// Highest value an own `ok` read returned, with that read's index.
    read: Option<(Option<i64>, u64)>,
}

enum Event<'h> {
    /// A read is checked against what was established before it began.
    ReadInvoked(&'h SessionOp<'h>),
    WriteAcknowledged {
        key: &'h str,
        value: i64,
        index: u64,
    },
    ReadReturned {
        key: &'h str,
        value: Option<i64>,
        index: u64,
    },
}

fn check_process(
    process: u64,
    ops: &[SessionOp<'_>],
    writes: &BTreeMap<&str, BTreeMap<i64, Vec<Write>>>,
) -> Verdict {
    let mut events: Vec<(Position, u8, Event<'_>)> = Vec::new();
    for op in ops {
        let Some(completion) = op.completion.filter(|c| c.op_type == OpType::Ok) else {
            continue; // failed or unknown: establishes nothing, reads nothing
        };
        let key = op.invocation.key.as_deref().unwrap_or_default();
        match op.invocation.f {
            Function::Write => {
                if let Value::Int(value) = op.invocation.value {
                    let event = Event::WriteAcknowledged {
                        key,
                        value,
                        index: completion.index,
                    };
                    events.push((position(completion), 0, event));
                }
            }
            Function::Read => {
                let value = match completion.value {
                    Value::Nil => None,
                    Value::Int(v) => Some(v),
                    _ => continue, // not a register value: ignored
                };
                events.push((position(op.invocation), 1, Event::ReadInvoked(op)));
                events.push((
                    position(completion),
                    0,
                    Event::ReadReturned {
                        key,
                        value,
                        index: completion.index,
                    },
                ));
            }
            _ => {}
        }
    }
    // At equal positions, completions count as earlier than invocations.
    events.sort_by_key(|(at, order, _)| (*at, *order));

    let mut floors: BTreeMap<&str, Floor> = BTreeMap::new();
    let mut problems = Vec::new();
    for (_, _, event) in &events {
        match event {
            Event::WriteAcknowledged { key, value, index } => {
                let floor = floors.entry(key).or_default();
                if floor.written.is_none_or(|(w, _)| *value > w) {
                    floor.written = Some((*value, *index));
                }
            }
            Event::ReadReturned { key, value, index } => {
                let floor = floors.entry(key).or_default();
                if floor.read.is_none_or(|(r, _)| *value > r) {
                    floor.read = Some((*value, *index));
                }
            }
            Event::ReadInvoked(op) => {
                let floor = floors.get(op.invocation.key.as_deref().unwrap_or_default());
                check_read(op, floor, writes, &mut problems);
            }
        }
    }

    let mut verdict = Verdict {
        checker: "session".to_string(),
        subject: format!("process {process}"),
        valid: Some(problems.is_empty()),
        ops_checked: ops.len(),
        problems: Vec::new(),
        artifacts: Vec::new(),
    };
    let more = problems.len().saturating_sub(MAX_PROBLEMS_PER_PROCESS);
    verdict
        .problems
        .extend(problems.into_iter().take(MAX_PROBLEMS_PER_PROCESS));
    if more > 0 {
        verdict.problems.push(format!("... and {more} more"));
    }
    verdict
}

fn check_read(
    op: &SessionOp<'_>,
    floor: Option<&Floor>,
    writes: &BTreeMap<&str, BTreeMap<i64, Vec<Write>>>,
    problems: &mut Vec<String>,
) {
    let Some(completion) = op.completion else {
        return;
    };
    let key = op.invocation.key.as_deref().unwrap_or_default();
    let value = match completion.value {
        Value::Nil => None,
        Value::Int(v) => Some(v),
        _ => return,
    };
    let read = format!(
        "read of {key} (history index {}) returned {}",
        op.invocation.index,
        show(value)
    );
    if let Some(Floor {
        written: Some((w, index)),
        ..
    }) = floor
    {
        if value < Some(*w) {
            problems.push(format!(
                "read-your-writes: {read}, but this process's write of {w} was acknowledged (history index {index}) \
                 before the read began"
            ));
        }
    }
    if let Some(Floor {
        read: Some((r, index)),
        ..
    }) = floor
    {
        if value < *r {
            problems.push(format!(
                "monotonic reads: {read}, but an earlier read of this process returned {} (history index {index})",
                show(*r)
            ));
        }
    }
    let Some(v) = value else {
        return;
    };
    let candidates = writes
        .get(key)
        .and_then(|by_value| by_value.get(&v))
        .map(Vec::as_slice)
        .unwrap_or_default();
    let read_done = position(completion);
    let possible = candidates
        .iter()
        .any(|w| w.outcome != OpType::Fail && w.invoked < read_done);
    if possible {
        return;
    }
    if candidates.is_empty() {
        problems.push(format!(
            "never written: {read}, a value no write of {key} attempted"
        ));
    } else if let Some(w) = candidates.iter().find(|w| w.outcome != OpType::Fail) {
        problems.push(format!(
            "future value: {read}, but its write (history index {}) began only after the read completed",
            w.invocation_index
        ));
    } else {
        problems.push(format!(
            "failed write read: {read}, but its write (history index {}) failed, so it did not happen",
            candidates[0].invocation_index
        ));
    }
}

fn show(value: Option<i64>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "nil".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a history of session ops; times are positions.
    #[derive(Default)]
    struct Builder {
        ops: Vec<Op>,
    }

    impl Builder {
        fn push(&mut self, op_type: OpType, f: Function, process: u64, value: Value) {
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                op_type,
                f,
                process: Process::Client(process),
                time: index * 10,
                key: Some(format!("session-{process}")),
                value,
                node: Some(1),
                level: None,
                error: None,
            });
        }
        fn write(&mut self, p: u64, v: i64, outcome: OpType) -> &mut Self {
            self.push(OpType::Invoke, Function::Write, p, Value::Int(v));
            self.push(outcome, Function::Write, p, Value::Int(v));
            self
        }
        fn read(&mut self, p: u64, v: Option<i64>) -> &mut Self {
            self.push(OpType::Invoke, Function::Read, p, Value::Nil);
            self.push(
                OpType::Ok,
                Function::Read,
                p,
                v.map_or(Value::Nil, Value::Int),
            );
            self
        }
        fn history(&self) -> History {
            History {
                ops: self.ops.clone(),
            }
        }
    }

    fn verdicts(b: &Builder) -> Vec<Verdict> {
        check_sessions(&b.history())
    }

    #[test]
    fn good_sessions_pass() {
        let mut b = Builder::default();
        b.read(1, None).read(2, None);
        b.write(1, 1, OpType::Ok).read(1, Some(1));
        b.write(2, 1, OpType::Ok);
        b.write(1, 2, OpType::Ok).read(1, Some(2)).read(1, Some(2));
        b.read(2, Some(1)).write(2, 2, OpType::Ok).read(2, Some(2));
        let verdicts = verdicts(&b);
        assert_eq!(verdicts.len(), 2);
        for (v, p) in verdicts.iter().zip([1, 2]) {
            assert_eq!(v.valid, Some(true), "{v:?}");
            assert_eq!(
                (v.checker.as_str(), v.subject.clone()),
                ("session", format!("process {p}"))
            );
        }
        assert_eq!(verdicts[0].ops_checked, 6);
    }

    #[test]
    fn read_older_than_the_last_acknowledged_write_fails() {
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok)
            .write(1, 2, OpType::Ok)
            .read(1, Some(1));
        let verdicts = verdicts(&b);
        assert_eq!(verdicts[0].valid, Some(false));
        assert_eq!(
            verdicts[0].problems,
            vec!["read-your-writes: read of session-1 (history index 4) returned 1, but this process's write of 2 \
                  was acknowledged (history index 3) before the read began"
                .to_string()]
        );
    }

    #[test]
    fn read_of_nothing_after_an_acknowledged_write_fails() {
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok).read(1, None);
        let verdicts = verdicts(&b);
        assert_eq!(verdicts[0].valid, Some(false));
        assert!(verdicts[0].problems[0].starts_with("read-your-writes"));
    }

    #[test]
    fn read_going_backwards_fails() {
        // The write of 3 has an unknown outcome, so reading 3 is fine, and
        // reading 2 after it does not break read-your-writes; it does break
        // monotonic reads.
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok)
            .write(1, 2, OpType::Ok)
            .write(1, 3, OpType::Info);
        b.read(1, Some(3)).read(1, Some(2));
        let verdicts = verdicts(&b);
        assert_eq!(verdicts[0].valid, Some(false));
        assert_eq!(verdicts[0].problems.len(), 1, "{:?}", verdicts[0].problems);
        assert!(
            verdicts[0].problems[0].starts_with("monotonic reads"),
            "{:?}",
            verdicts[0].problems
        );
        assert!(verdicts[0].problems[0]
            .ends_with("earlier read of this process returned 3 (history index 7)"));
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok).read(1, Some(7));
        let verdicts = verdicts(&b);
        assert_eq!(verdicts[0].valid, Some(false));
        assert!(
            verdicts[0].problems[0].starts_with("never written"),
            "{:?}",
            verdicts[0].problems
        );
    }

    #[test]
    fn read_of_a_value_before_its_write_began_fails() {
        let mut b = Builder::default();
        b.read(1, Some(1)).write(1, 1, OpType::Ok);
        let verdicts = verdicts(&b);
        assert_eq!(verdicts[0].valid, Some(false));
        assert!(
            verdicts[0].problems[0].starts_with("future value"),
            "{:?}",
            verdicts[0].problems
        );
    }

    #[test]
    fn read_of_a_failed_write_fails() {
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok)
            .write(1, 2, OpType::Fail)
            .read(1, Some(2));
        let verdicts = verdicts(&b);
        assert_eq!(verdicts[0].valid, Some(false));
        assert!(
            verdicts[0].problems[0].starts_with("failed write read"),
            "{:?}",
            verdicts[0].problems
        );
    }

    #[test]
    fn an_unknown_writes_value_may_be_read() {
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok)
            .write(1, 2, OpType::Info)
            .read(1, Some(1))
            .read(1, Some(2));
        // Or never completed at all.
        b.push(OpType::Invoke, Function::Write, 1, Value::Int(3));
        b.push(OpType::Invoke, Function::Read, 1, Value::Nil); // same process: the write's pair stays open
        b.push(OpType::Ok, Function::Read, 1, Value::Int(3));
        let verdicts = verdicts(&b);
        assert_eq!(verdicts[0].valid, Some(true), "{:?}", verdicts[0]);
    }

    #[test]
    fn a_successor_may_read_its_predecessors_unknown_write() {
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok).write(1, 2, OpType::Info);
        // Process 5 replaces process 1 and keeps its key.
        for op_type in [OpType::Invoke, OpType::Ok] {
            let value = if op_type == OpType::Ok {
                Value::Int(2)
            } else {
                Value::Nil
            };
            b.push(op_type, Function::Read, 5, value);
            b.ops.last_mut().expect("op").key = Some("session-1".to_string());
        }
        let verdicts = verdicts(&b);
        assert_eq!(verdicts.len(), 2);
        assert!(
            verdicts.iter().all(|v| v.valid == Some(true)),
            "{verdicts:?}"
        );
    }

    #[test]
    fn sessions_are_judged_separately() {
        let mut b = Builder::default();
        b.write(1, 1, OpType::Ok).read(1, Some(1));
        b.write(2, 1, OpType::Ok)
            .write(2, 2, OpType::Ok)
            .read(2, Some(1));
        let verdicts = verdicts(&b);
        assert_eq!(
            verdicts.iter().map(|v| v.valid).collect::<Vec<_>>(),
            vec![Some(true), Some(false)]
        );
    }

    #[test]
    fn other_ops_and_malformed_histories_are_ignored() {
        let mut b = Builder::default();
        b.push(OpType::Ok, Function::Read, 3, Value::Int(9)); // completion without invocation
        b.push(OpType::Invoke, Function::Add, 4, Value::Int(1));
        b.push(OpType::Ok, Function::Add, 4, Value::Int(1));
        b.push(OpType::Invoke, Function::Read, 1, Value::Nil);
        b.push(OpType::Ok, Function::Read, 1, Value::Text("?".into()));
        let mut history = b.history();
        history.ops.push(Op {
            process: Process::Nemesis,
            ..history.ops[3].clone()
        });
        let verdicts = check_sessions(&history);
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert_eq!(verdicts[0].valid, Some(true));
        assert!(check_sessions(&History::default()).is_empty());
    }
}
