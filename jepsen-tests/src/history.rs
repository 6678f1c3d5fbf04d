//! Operation histories in Jepsen's model: every client operation is an
//! `:invoke` followed by exactly one completion (`:ok`, `:fail` or `:info`),
//! and the nemesis records its faults the same way (`:process :nemesis`).
//!
//! * `ok`: it happened, with this result.
//! * `fail`: it certainly did not happen.
//! * `info`: unknown (a timeout, a lost connection): it may or may not have
//!   happened, now or later. A process that gets `info` is retired and its
//!   successor uses a fresh process id (Jepsen's rule), so every process has
//!   at most one operation in flight.
//!
//! Times are monotonic nanoseconds since the start of the run.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// Who performed an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Process {
    Client(u64),
    Nemesis,
}

/// What an operation does (Jepsen's `:f`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    /// Register read; the completion's value is what was read (`Nil` if absent).
    Read,
    /// Register write of a unique value.
    Write,
    /// Register compare-and-set `[from to]`.
    Cas,
    /// Set add of a unique element.
    Add,
    /// Final (or any) read of the whole set.
    ReadSet,
    /// A nemesis action: `start-partition`, `stop-partition`, `kill`, `start`,
    /// `pause`, `resume`, ... (the name in Jepsen's kebab case).
    Nemesis(String),
}

impl Function {
    /// The name as written in EDN (`:read`, `:write`, `:cas`, `:add`, ...).
    pub fn name(&self) -> &str {
        match self {
            Function::Read => "read",
            Function::Write => "write",
            Function::Cas => "cas",
            Function::Add => "add",
            Function::ReadSet => "read-set",
            Function::Nemesis(name) => name,
        }
    }
}

/// An operation's value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Value {
    /// Nothing (Jepsen's `nil`): a read's invocation, or a read of an absent key.
    Nil,
    Int(i64),
    /// A cas `[from to]`.
    Cas(i64, i64),
    /// A set read.
    Elements(BTreeSet<i64>),
    /// Free text (nemesis descriptions).
    Text(String),
}

/// One event of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0.
    pub index: u64,
    #[serde(rename = "type")]
    pub op_type: OpType,
    pub f: Function,
    pub process: Process,
    /// Monotonic nanoseconds since the run started.
    pub time: u64,
    /// The register key (independent keys, Jepsen's `[k v]` tuples), if any.
    pub key: Option<String>,
    pub value: Value,
    /// The node the client sent it to, if it was pinned to one.
    pub node: Option<u64>,
    /// The consistency level used, e.g. `STRONG`, `LOCAL`, `EVENTUAL`.
    pub level: Option<String>,
    /// Why it failed or is unknown.
    pub error: Option<String>,
}

/// A history: ops in the order they were recorded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// Each invocation with its completion (`None`: never completed, which
    /// a checker must treat as `info`). Pairs are found by process: a process
    /// has at most one operation in flight.
    pub fn pairs(&self) -> Vec<(&Op, Option<&Op>)> {
        let mut open: std::collections::HashMap<Process, usize> = std::collections::HashMap::new();
        let mut pairs: Vec<(&Op, Option<&Op>)> = Vec::new();
        for op in &self.ops {
            match op.op_type {
                OpType::Invoke => {
                    open.insert(op.process, pairs.len());
                    pairs.push((op, None));
                }
                _ => {
                    if let Some(slot) = open.remove(&op.process) {
                        pairs[slot].1 = Some(op);
                    }
                }
            }
        }
        pairs
    }
}

/// Records a history from many concurrent tasks. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

/// What a completion adds to its invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub op_type: OpType,
    pub value: Value,
    pub error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn push(&self, mut op: Op) -> Op {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        op.index = ops.len() as u64;
        op.time = self.now();
        ops.push(op.clone());
        op
    }

    /// Records an invocation and returns it (with index and time set).
    #[allow(clippy::too_many_arguments)]
    pub fn invoke(
        &self,
        process: Process,
        f: Function,
        key: Option<String>,
        value: Value,
        node: Option<u64>,
        level: Option<String>,
    ) -> Op {
        self.push(Op {
            index: 0,
            op_type: OpType::Invoke,
            f,
            process,
            time: 0,
            key,
            value,
            node,
            level,
            error: None,
        })
    }

    /// Records the completion of `invocation`.
    pub fn complete(&self, invocation: &Op, completion: Completion) -> Op {
        self.push(Op {
            op_type: completion.op_type,
            value: completion.value,
            error: completion.error,
            ..invocation.clone()
        })
    }

    pub fn history(&self) -> History {
        History {
            ops: self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocations_pair_with_their_completions_by_process() {
        let recorder = Recorder::new();
        let a = recorder.invoke(
            Process::Client(1),
            Function::Write,
            Some("k".into()),
            Value::Int(1),
            None,
            None,
        );
        let b = recorder.invoke(
            Process::Client(2),
            Function::Read,
            Some("k".into()),
            Value::Nil,
            None,
            None,
        );
        recorder.complete(
            &b,
            Completion {
                op_type: OpType::Ok,
                value: Value::Int(1),
                error: None,
            },
        );
        recorder.complete(
            &a,
            Completion {
                op_type: OpType::Ok,
                value: Value::Int(1),
                error: None,
            },
        );
        let c = recorder.invoke(
            Process::Client(3),
            Function::Write,
            Some("k".into()),
            Value::Int(2),
            None,
            None,
        );
        let history = recorder.history();
        let pairs = history.pairs();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].1.map(|o| o.index), Some(3));
        assert_eq!(pairs[1].1.map(|o| o.value.clone()), Some(Value::Int(1)));
        assert_eq!(pairs[2].0.index, c.index);
        assert!(pairs[2].1.is_none());
        assert!(history
            .ops
            .windows(2)
            .all(|w| w[0].time <= w[1].time && w[0].index + 1 == w[1].index));
    }
}
