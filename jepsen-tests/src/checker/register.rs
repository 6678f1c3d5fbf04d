//! Linearizability of single registers, one key at a time, with porcupine-rs
//! (a port of Porcupine, the checker etcd's robustness tests use).
//!
//! From a [`History`] we take every client `read`, `write` and `cas` that
//! names a key and turn it into a Porcupine [`Operation`]:
//!
//! * `ok`: call time = invocation time, return time = completion time; a
//!   read's value comes from the completion, a write's or cas's from the
//!   invocation.
//! * `fail`: the operation certainly did not happen: dropped.
//! * `info` or no completion: unknown outcome. Porcupine's rule is that such
//!   an operation may take effect at any point after its invocation, so its
//!   return time is infinity. An unknown read observed nothing: dropped.
//!
//! Unknown writes are then resolved from the unique values that were actually
//! observed, the way etcd's robustness tests patch histories: every write
//! writes a unique value, so an unknown write whose value nobody ever read
//! cannot be told apart from one that never happened, and is dropped (this
//! keeps the search small: every infinite operation multiplies it). One whose
//! value was read is kept, with return time infinity. The same holds for an
//! unknown cas and its `to` value.
//!
//! Each key is a separate Porcupine history (the keys are independent
//! registers), checked with its own time budget, so a violation on one key
//! marks only that key.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use porcupine_rs::CheckResult;
use porcupine_rs::LinearizationInfo;
use porcupine_rs::Model;
use porcupine_rs::Operation;

use super::LinearizabilityChecker;
use super::Verdict;
use crate::history::Function;
use crate::history::History;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Value;

/// Porcupine's "infinity": the return time of an operation whose outcome is
/// unknown, so that it may be linearized anywhere after its invocation.
pub const INFINITY: i64 = i64::MAX;

/// Longest part of a key that goes into an artifact's file name.
const MAX_KEY_CHARS_IN_FILE_NAME: usize = 64;

/// The porcupine-rs engine behind [`LinearizabilityChecker`].
///
/// `timeout` is the search budget of each key separately: a key whose search
/// runs out of time gets `valid: None` (unknown), never a pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct Porcupine;

impl LinearizabilityChecker for Porcupine {
    fn check(
        &self,
        history: &History,
        timeout: Duration,
        artifacts_dir: Option<&Path>,
    ) -> Vec<Verdict> {
        operations_by_key(history)
            .into_iter()
            .map(|(key, ops)| check_key(&key, &ops, timeout, artifacts_dir))
            .collect()
    }
}

/// A register operation as the model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Write(i64),
    /// The value the client observed (`None`: the key did not exist).
    Read(Option<i64>),
    /// `known`: the cas was acknowledged (it happened, so the register held
    /// `from`). Not known: its outcome is unknown (see [`RegisterModel`]).
    Cas {
        from: i64,
        to: i64,
        known: bool,
    },
}

/// Where an operation came from, shown in the visualization and in problems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSource {
    pub process: u64,
    /// History index of the invocation.
    pub index: u64,
    /// `Ok`, or `Info` for an unknown outcome (also when never completed).
    pub outcome: OpType,
    /// Invocation time, ns since the start of the run.
    pub time: u64,
}

/// A single register holding an integer; `None` until the first write.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = Option<i64>;
    type Op = RegisterOp;
    type Metadata = OpSource;

    fn init() -> Option<i64> {
        None
    }

    fn step(state: &Option<i64>, op: &RegisterOp) -> (bool, Option<i64>) {
        match *op {
            RegisterOp::Write(v) => (true, Some(v)),
            RegisterOp::Read(observed) => (observed == *state, *state),
            RegisterOp::Cas {
                from,
                to,
                known: true,
            } => {
                if *state == Some(from) {
                    (true, Some(to))
                } else {
                    (false, *state)
                }
            }
            // Porcupine has no nondeterministic models, so an unknown cas is
            // made deterministic: linearized where the register holds `from`
            // it takes effect; anywhere else it is the cas that did not
            // happen. Its return time is infinite, so it can always also be
            // placed last, where nobody observes it.
            RegisterOp::Cas {
                from,
                to,
                known: false,
            } => {
                if *state == Some(from) {
                    (true, Some(to))
                } else {
                    (true, *state)
                }
            }
        }
    }

    fn describe_operation(op: &RegisterOp) -> String {
        match *op {
            RegisterOp::Write(v) => format!("write({v})"),
            RegisterOp::Read(observed) => format!("read() -> {}", describe_value(observed)),
            RegisterOp::Cas {
                from,
                to,
                known: true,
            } => format!("cas({from} -> {to})"),
            RegisterOp::Cas {
                from,
                to,
                known: false,
            } => format!("cas?({from} -> {to})"),
        }
    }

    fn describe_state(state: &Option<i64>) -> String {
        describe_value(*state)
    }

    fn describe_metadata(info: Option<&OpSource>) -> String {
        match info {
            Some(source) => format!(
                "process {}, history index {}, {}",
                source.process,
                source.index,
                if source.outcome == OpType::Ok {
                    "ok"
                } else {
                    "unknown outcome"
                }
            ),
            None => String::new(),
        }
    }
}

fn describe_value(value: Option<i64>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "nil".to_string(),
    }
}

/// One client operation on a key before unknown outcomes are resolved.
struct Candidate {
    op: RegisterOp,
    call_time: i64,
    return_time: i64,
    source: OpSource,
}

/// Turns a history into Porcupine operations per key, with unknown outcomes
/// resolved as described in the module documentation. Operations that do
/// not have the expected shape (a write without an integer, a cas without
/// `[from to]`, a read completed with a set) are ignored: they are the
/// harness's mistake, not the store's.
pub fn operations_by_key(history: &History) -> BTreeMap<String, Vec<Operation<RegisterModel>>> {
    let mut candidates: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for (invocation, completion) in history.pairs() {
        let Process::Client(process) = invocation.process else {
            continue;
        };
        let Some(key) = &invocation.key else {
            continue;
        };
        if !matches!(
            invocation.f,
            Function::Read | Function::Write | Function::Cas
        ) {
            continue;
        }
        // A pair only ever holds a completion, but a history read from a
        // file could say anything: an `invoke` in that slot means unknown.
        let outcome = match completion.map(|c| c.op_type) {
            Some(OpType::Ok) => OpType::Ok,
            Some(OpType::Fail) => continue,
            _ => OpType::Info,
        };
        let known = outcome == OpType::Ok;
        let op = match (&invocation.f, &invocation.value) {
            (Function::Read, _) => {
                if !known {
                    continue; // an unknown read observed nothing
                }
                match completion.map(|c| &c.value) {
                    Some(Value::Nil) => RegisterOp::Read(None),
                    Some(Value::Int(v)) => RegisterOp::Read(Some(*v)),
                    _ => continue,
                }
            }
            (Function::Write, Value::Int(v)) => RegisterOp::Write(*v),
            (Function::Cas, Value::Cas(from, to)) => RegisterOp::Cas {
                from: *from,
                to: *to,
                known,
            },
            _ => continue,
        };
        let call_time = nanos(invocation.time);
        let return_time = match completion {
            // A completion stamped before its invocation is malformed; never
            // let it return before it was called.
            Some(c) if known => nanos(c.time).max(call_time),
            _ => INFINITY,
        };
        candidates.entry(key.clone()).or_default().push(Candidate {
            op,
            call_time,
            return_time,
            source: OpSource {
                process,
                index: invocation.index,
                outcome,
                time: invocation.time,
            },
        });
    }
    candidates
        .into_iter()
        .map(|(key, ops)| (key, resolve_unknown(ops)))
        .collect()
}

/// Drops the unknown writes and cas operations whose value nobody observed.
///
/// Observed values: those of acknowledged reads and the `from` of
/// acknowledged cas operations, and, transitively, the `from` of every
/// unknown cas that is kept (an unknown `cas(5 -> 6)` whose 6 was read
/// needs the register to have held 5, so an unknown write of 5 must stay).
fn resolve_unknown(candidates: Vec<Candidate>) -> Vec<Operation<RegisterModel>> {
    let mut observed: BTreeSet<i64> = BTreeSet::new();
    for candidate in &candidates {
        match candidate.op {
            RegisterOp::Read(Some(v)) => {
                observed.insert(v);
            }
            RegisterOp::Cas {
                from, known: true, ..
            } => {
                observed.insert(from);
            }
            _ => {}
        }
    }
    loop {
        let before = observed.len();
        for candidate in &candidates {
            if let RegisterOp::Cas {
                from,
                to,
                known: false,
            } = candidate.op
            {
                if observed.contains(&to) {
                    observed.insert(from);
                }
            }
        }
        if observed.len() == before {
            break;
        }
    }
    candidates
        .into_iter()
        .filter(|candidate| {
            if candidate.source.outcome == OpType::Ok {
                return true;
            }
            match candidate.op {
                RegisterOp::Write(v) => observed.contains(&v),
                RegisterOp::Cas { to, .. } => observed.contains(&to),
                RegisterOp::Read(_) => false,
            }
        })
        .map(|candidate| Operation {
            client_id: Some(u32::try_from(candidate.source.process).unwrap_or(u32::MAX)),
            call_time: candidate.call_time,
            return_time: candidate.return_time,
            op: candidate.op,
            metadata: Some(candidate.source),
        })
        .collect()
}

fn nanos(time: u64) -> i64 {
    // Finite times must stay below INFINITY.
    i64::try_from(time)
        .unwrap_or(INFINITY - 1)
        .min(INFINITY - 1)
}

/// Checks one key's operations; writes `linearizability-<key>.html` into
/// `artifacts_dir` when they are not linearizable.
pub fn check_key(
    key: &str,
    ops: &[Operation<RegisterModel>],
    timeout: Duration,
    artifacts_dir: Option<&Path>,
) -> Verdict {
    let mut verdict = Verdict {
        checker: "linearizable".to_string(),
        subject: key.to_string(),
        valid: Some(true),
        ops_checked: ops.len(),
        problems: Vec::new(),
        artifacts: Vec::new(),
    };
    if ops.is_empty() {
        return verdict;
    }
    // The verdict comes from the plain check: porcupine-rs 0.3's `*_info`
    // variant reports a search killed by the timeout as Illegal, not Unknown.
    // Porcupine should not panic, but a checker must never take the run down
    // with it: a panic is "could not decide".
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        porcupine_rs::check_operations_timeout(ops, timeout)
    }));
    match result {
        Ok(CheckResult::Ok) => {}
        Ok(CheckResult::Unknown) => {
            verdict.valid = None;
            verdict.problems.push(format!(
                "unknown: the linearizability search of {} operations did not finish within {:?}",
                ops.len(),
                timeout
            ));
        }
        Err(_) => {
            verdict.valid = None;
            verdict
                .problems
                .push("unknown: the porcupine checker panicked".to_string());
        }
        Ok(CheckResult::Illegal) => {
            verdict.valid = Some(false);
            // Search again, now keeping the partial linearizations, to say
            // where it went wrong and to draw it.
            let info = std::panic::catch_unwind(AssertUnwindSafe(|| {
                porcupine_rs::check_operations_info_timeout(ops, timeout).1
            }))
            .ok();
            let mut problem = match &info {
                Some(info) => describe_failure(ops, info),
                None => format!("not linearizable ({} operations)", ops.len()),
            };
            if let (Some(dir), Some(info)) = (artifacts_dir, &info) {
                let file = format!("linearizability-{}.html", file_name_for_key(key));
                let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    porcupine_rs::visualize_path::<RegisterModel>(info, &dir.join(&file))
                }));
                match written {
                    Ok(Ok(())) => {
                        problem.push_str(&format!("; see {file}"));
                        verdict.artifacts.push(file);
                    }
                    Ok(Err(e)) => problem.push_str(&format!("; could not write {file}: {e}")),
                    Err(_) => problem.push_str(&format!(
                        "; could not write {file}: the visualizer panicked"
                    )),
                }
            }
            verdict.problems.push(problem);
        }
    }
    verdict
}

/// "the longest linearizable prefix has L of N operations; <op> cannot be
/// linearized after it". The operation named is the one, among those the
/// longest partial linearization leaves out, that returns first: the search
/// gave up when it reached that operation's return without having placed it.
fn describe_failure(
    ops: &[Operation<RegisterModel>],
    info: &LinearizationInfo<RegisterModel>,
) -> String {
    let longest: Vec<usize> = info
        .partial_linearizations
        .iter()
        .flatten()
        .max_by_key(|sequence| sequence.len())
        .cloned()
        .unwrap_or_default();
    let placed: BTreeSet<usize> = longest.iter().copied().collect();
    let stuck = ops
        .iter()
        .enumerate()
        .filter(|(i, _)| !placed.contains(i))
        .min_by_key(|(_, op)| (op.return_time, op.call_time));
    let mut text = format!(
        "not linearizable: the longest linearizable prefix has {} of {} operations",
        longest.len(),
        ops.len()
    );
    if let Some((_, op)) = stuck {
        let state = longest
            .iter()
            .fold(RegisterModel::init(), |state, &i| match ops.get(i) {
                Some(op) => RegisterModel::step(&state, &op.op).1,
                None => state,
            });
        text.push_str(&format!(
            "; after it the register holds {} and {} ({}) cannot be linearized",
            describe_value(state),
            RegisterModel::describe_operation(&op.op),
            RegisterModel::describe_metadata(op.metadata.as_ref()),
        ));
    }
    text
}

/// A file-name-safe, collision-free form of a key: characters other than
/// ASCII letters, digits, `-`, `_` and `.` become `_`, and a key that had to
/// be changed (or shortened) gets a hash of the original appended.
pub fn file_name_for_key(key: &str) -> String {
    let cleaned: String = key
        .chars()
        .take(MAX_KEY_CHARS_IN_FILE_NAME)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned == key && !key.is_empty() && !key.starts_with('.') {
        cleaned
    } else {
        format!("{cleaned}-{:016x}", fnv1a(key.as_bytes()))
    }
}

/// FNV-1a, 64 bits: stable across runs and platforms (std's hasher is not).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Builds histories by hand: `invoke` returns the op's position so a
    /// completion can refer to it; times are the ops' positions, so the
    /// order of calls is the real-time order.
    #[derive(Default)]
    struct Builder {
        ops: Vec<Op>,
    }

    impl Builder {
        fn push(&mut self, op_type: OpType, f: Function, process: u64, key: &str, value: Value) {
            let index = self.ops.len() as u64;
            self.ops.push(Op {
                index,
                op_type,
                f,
                process: Process::Client(process),
                time: index * 10,
                key: Some(key.to_string()),
                value,
                node: None,
                level: None,
                error: None,
            });
        }
        fn write(&mut self, p: u64, key: &str, v: i64) {
            self.push(OpType::Invoke, Function::Write, p, key, Value::Int(v));
        }
        fn read(&mut self, p: u64, key: &str) {
            self.push(OpType::Invoke, Function::Read, p, key, Value::Nil);
        }
        fn cas(&mut self, p: u64, key: &str, from: i64, to: i64) {
            self.push(OpType::Invoke, Function::Cas, p, key, Value::Cas(from, to));
        }
        /// Completes process `p`'s open op (same f/key as its invocation).
        fn done(&mut self, p: u64, op_type: OpType, value: Option<Value>) {
            let invocation = self
                .ops
                .iter()
                .rev()
                .find(|o| o.process == Process::Client(p) && o.op_type == OpType::Invoke)
                .expect("an invocation")
                .clone();
            let value = value.unwrap_or(invocation.value.clone());
            self.push(
                op_type,
                invocation.f,
                p,
                invocation.key.as_deref().unwrap_or(""),
                value,
            );
        }
        fn ok(&mut self, p: u64) {
            self.done(p, OpType::Ok, None);
        }
        fn ok_read(&mut self, p: u64, v: Option<i64>) {
            self.done(p, OpType::Ok, Some(v.map_or(Value::Nil, Value::Int)));
        }
        fn info(&mut self, p: u64) {
            self.done(p, OpType::Info, None);
        }
        fn fail(&mut self, p: u64) {
            self.done(p, OpType::Fail, None);
        }
        fn history(&self) -> History {
            History {
                ops: self.ops.clone(),
            }
        }
    }

    fn check(b: &Builder) -> Vec<Verdict> {
        Porcupine.check(&b.history(), TIMEOUT, None)
    }

    fn only(verdicts: &[Verdict]) -> &Verdict {
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        &verdicts[0]
    }

    #[test]
    fn concurrent_writes_and_reads_that_linearize_pass() {
        let mut b = Builder::default();
        b.read(1, "k");
        b.ok_read(1, None);
        b.write(1, "k", 1);
        b.write(2, "k", 2);
        b.read(3, "k"); // concurrent with both writes: may see 1
        b.ok(1);
        b.ok_read(3, Some(1));
        b.read(1, "k"); // still concurrent with the write of 2: may see 1 or 2
        b.ok(2);
        b.ok_read(1, Some(2));
        b.read(3, "k");
        b.ok_read(3, Some(2));
        let verdicts = check(&b);
        let v = only(&verdicts);
        assert_eq!(v.valid, Some(true), "{v:?}");
        assert_eq!(
            (v.checker.as_str(), v.subject.as_str(), v.ops_checked),
            ("linearizable", "k", 6)
        );
        assert!(v.problems.is_empty());
    }

    #[test]
    fn stale_read_after_a_newer_write_completed_fails() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(1, "k", 2);
        b.ok(1);
        b.read(2, "k"); // begins after the write of 2 completed
        b.ok_read(2, Some(1));
        let verdicts = check(&b);
        let v = only(&verdicts);
        assert_eq!(v.valid, Some(false), "{v:?}");
        assert!(v.problems[0].contains("read() -> 1"), "{:?}", v.problems);
        assert!(
            v.problems[0].contains("longest linearizable prefix has 2 of 3"),
            "{:?}",
            v.problems
        );
    }

    #[test]
    fn read_of_a_value_never_written_fails() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.read(2, "k");
        b.ok_read(2, Some(99));
        assert_eq!(only(&check(&b)).valid, Some(false));
    }

    #[test]
    fn read_of_nothing_after_a_write_fails() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.read(2, "k");
        b.ok_read(2, None);
        assert_eq!(only(&check(&b)).valid, Some(false));
    }

    #[test]
    fn lost_write_fails() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(2, "k", 2);
        b.ok(2); // acknowledged ...
        for p in [3, 4, 5] {
            b.read(p, "k");
            b.ok_read(p, Some(1)); // ... but every later read sees the older value
        }
        assert_eq!(only(&check(&b)).valid, Some(false));
    }

    #[test]
    fn unknown_write_that_is_read_later_passes() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(2, "k", 2);
        b.info(2); // timed out: may or may not have happened
        b.read(3, "k");
        b.ok_read(3, Some(1)); // not yet
        b.read(3, "k");
        b.ok_read(3, Some(2)); // now it has
        let ops = operations_by_key(&b.history());
        let unknown: Vec<_> = ops["k"]
            .iter()
            .filter(|o| o.return_time == INFINITY)
            .collect();
        assert_eq!(
            unknown.len(),
            1,
            "the unknown write is kept with return time infinity"
        );
        let verdicts = check(&b);
        let v = only(&verdicts);
        assert_eq!(v.valid, Some(true), "{v:?}");
        assert_eq!(v.ops_checked, 4);
    }

    #[test]
    fn unknown_write_after_which_the_old_value_is_read_again_fails() {
        // Once the unknown write's value was seen, the older value cannot
        // come back: infinity does not license going backwards.
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(2, "k", 2);
        b.info(2);
        b.read(3, "k");
        b.ok_read(3, Some(2));
        b.read(3, "k");
        b.ok_read(3, Some(1));
        assert_eq!(only(&check(&b)).valid, Some(false));
    }

    #[test]
    fn unknown_write_never_read_is_dropped_and_passes() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(2, "k", 2); // never completes
        b.write(3, "k", 3);
        b.info(3);
        b.read(4, "k");
        b.ok_read(4, Some(1));
        let verdicts = check(&b);
        let v = only(&verdicts);
        assert_eq!(v.valid, Some(true), "{v:?}");
        assert_eq!(v.ops_checked, 2, "both unknown writes dropped");
    }

    #[test]
    fn failed_ops_are_dropped() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(2, "k", 2);
        b.fail(2); // certainly did not happen
        b.read(3, "k");
        b.ok_read(3, Some(1));
        let verdicts = check(&b);
        assert_eq!(only(&verdicts).valid, Some(true));
        assert_eq!(only(&verdicts).ops_checked, 2);
    }

    #[test]
    fn read_of_a_failed_write_fails() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(2, "k", 2);
        b.fail(2);
        b.read(3, "k");
        b.ok_read(3, Some(2));
        assert_eq!(only(&check(&b)).valid, Some(false));
    }

    #[test]
    fn cas_chain_passes() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.cas(2, "k", 1, 2);
        b.ok(2);
        b.cas(3, "k", 2, 3);
        b.cas(1, "k", 3, 4); // concurrent with cas 2 -> 3, linearized after it
        b.ok(3);
        b.ok(1);
        b.read(2, "k");
        b.ok_read(2, Some(4));
        let verdicts = check(&b);
        assert_eq!(only(&verdicts).valid, Some(true), "{verdicts:?}");
        assert_eq!(only(&verdicts).ops_checked, 5);
    }

    #[test]
    fn cas_from_a_value_no_longer_current_fails() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.write(1, "k", 2);
        b.ok(1);
        b.cas(2, "k", 1, 3); // the register holds 2, yet the cas from 1 succeeds
        b.ok(2);
        assert_eq!(only(&check(&b)).valid, Some(false));
    }

    #[test]
    fn unknown_cas_chain_keeps_the_write_it_depends_on() {
        // write(5) and cas(5 -> 6) both unknown; only 6 is ever read. The
        // write is observed through the cas, so it must be kept too.
        let mut b = Builder::default();
        b.write(1, "k", 5);
        b.info(1);
        b.cas(2, "k", 5, 6);
        b.info(2);
        b.read(3, "k");
        b.ok_read(3, Some(6));
        let verdicts = check(&b);
        assert_eq!(only(&verdicts).valid, Some(true), "{verdicts:?}");
        assert_eq!(only(&verdicts).ops_checked, 3);
    }

    #[test]
    fn unknown_cas_whose_value_is_never_read_is_dropped() {
        let mut b = Builder::default();
        b.write(1, "k", 1);
        b.ok(1);
        b.cas(2, "k", 1, 2);
        b.info(2);
        b.read(3, "k");
        b.ok_read(3, Some(1));
        let verdicts = check(&b);
        assert_eq!(only(&verdicts).valid, Some(true));
        assert_eq!(only(&verdicts).ops_checked, 2);
    }

    #[test]
    fn keys_are_independent_and_a_violation_marks_only_its_key() {
        let mut b = Builder::default();
        b.write(1, "a", 1);
        b.ok(1);
        b.write(2, "b", 10);
        b.ok(2);
        b.write(1, "b", 11);
        b.ok(1);
        b.read(2, "a");
        b.ok_read(2, Some(1));
        b.read(3, "b");
        b.ok_read(3, Some(10)); // stale on b only
        let dir = tempfile::tempdir().expect("tempdir");
        let verdicts = Porcupine.check(&b.history(), TIMEOUT, Some(dir.path()));
        assert_eq!(verdicts.len(), 2);
        assert_eq!(
            (verdicts[0].subject.as_str(), verdicts[0].valid),
            ("a", Some(true))
        );
        assert!(verdicts[0].artifacts.is_empty());
        assert_eq!(
            (verdicts[1].subject.as_str(), verdicts[1].valid),
            ("b", Some(false))
        );
        assert_eq!(
            verdicts[1].artifacts,
            vec!["linearizability-b.html".to_string()]
        );
        assert!(
            verdicts[1].problems[0].ends_with("see linearizability-b.html"),
            "{:?}",
            verdicts[1].problems
        );
        let html = std::fs::read_to_string(dir.path().join("linearizability-b.html"))
            .expect("html written");
        assert!(html.contains("write(11)"));
    }

    #[test]
    fn a_run_out_of_time_is_unknown_not_a_pass_or_a_failure() {
        // Many concurrent writes and reads that all overlap: a large search.
        let mut b = Builder::default();
        for p in 0..60 {
            b.write(p, "k", p as i64);
        }
        for p in 0..60 {
            b.info(p);
        }
        for p in 0..60 {
            b.read(100 + p, "k");
        }
        for p in 0..60 {
            b.ok_read(100 + p, Some(p as i64));
        }
        b.read(1000, "k");
        b.ok_read(1000, Some(-1)); // never written: illegal, but only after exhausting the search
        let verdicts = Porcupine.check(&b.history(), Duration::from_millis(1), None);
        let v = only(&verdicts);
        assert_eq!(v.valid, None, "{v:?}");
        assert!(v.problems[0].starts_with("unknown"), "{:?}", v.problems);
    }

    #[test]
    fn non_register_ops_and_malformed_histories_are_ignored() {
        let mut b = Builder::default();
        b.push(OpType::Ok, Function::Read, 7, "k", Value::Int(3)); // a completion without an invocation
        b.push(OpType::Invoke, Function::Add, 1, "k", Value::Int(1));
        b.push(OpType::Ok, Function::Add, 1, "k", Value::Int(1));
        b.push(
            OpType::Invoke,
            Function::Write,
            2,
            "k",
            Value::Text("x".into()),
        ); // no integer
        b.push(OpType::Ok, Function::Write, 2, "k", Value::Text("x".into()));
        b.read(3, "k");
        b.ok_read(3, None);
        let mut history = b.history();
        history.ops.push(Op {
            process: Process::Nemesis,
            key: None,
            ..history.ops[0].clone()
        });
        history.ops.push(Op {
            time: 0,
            ..history.ops[history.ops.len() - 2].clone()
        }); // completes before invoked
        let verdicts = Porcupine.check(&history, TIMEOUT, None);
        assert_eq!(only(&verdicts).valid, Some(true), "{verdicts:?}");
        assert_eq!(only(&verdicts).ops_checked, 1);
        assert!(Porcupine
            .check(&History::default(), TIMEOUT, None)
            .is_empty());
    }

    #[test]
    fn file_names_for_keys_are_safe_and_distinct() {
        assert_eq!(file_name_for_key("register-3"), "register-3");
        let slash = file_name_for_key("a/b");
        let underscore = file_name_for_key("a_b");
        assert!(
            slash.starts_with("a_b-") && slash.len() == 4 + 16,
            "{slash}"
        );
        assert_ne!(slash, underscore);
        assert!(!file_name_for_key("..").contains('/'));
        assert!(!file_name_for_key("").is_empty());
        assert!(file_name_for_key(&"x".repeat(500)).len() <= MAX_KEY_CHARS_IN_FILE_NAME + 17);
    }
}
