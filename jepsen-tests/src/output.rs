//! History files: `history.jsonl` (our own [`Op`]s, one JSON object per
//! line, readable back with serde) and `history.edn` (Jepsen's format, one
//! map per line, so Knossos and Elle can check our histories where they are
//! installed).
//!
//! An EDN line looks like
//! `{:type :invoke, :f :write, :value ["k1" 5], :process 3, :time 123456, :index 0}`.
//! An op with a key has the value `[key v]` (Jepsen's independent keys);
//! `v` is `nil`, an integer, `[from to]` for a cas or `#{1 2 3}` for a set.
//! Nemesis ops have `:process :nemesis`. `:node`, `:level` and `:error` are
//! added when known; Jepsen ignores keys it does not use.

use std::fmt::Write as _;
use std::fs::File;
use std::io::BufWriter;
use std::io::Write;
use std::path::Path;

use crate::history::History;
use crate::history::Op;
use crate::history::OpType;
use crate::history::Process;
use crate::history::Value;

/// Writes `history` as JSON Lines: one serialized [`Op`] per line.
pub fn write_jsonl(history: &History, path: &Path) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for op in &history.ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes `history` in Jepsen's EDN format, one op map per line.
pub fn write_edn(history: &History, path: &Path) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for op in &history.ops {
        out.write_all(edn_line(op).as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// One op as a Jepsen EDN map (without the newline).
pub fn edn_line(op: &Op) -> String {
    let op_type = match op.op_type {
        OpType::Invoke => "invoke",
        OpType::Ok => "ok",
        OpType::Fail => "fail",
        OpType::Info => "info",
    };
    let value = match &op.key {
        Some(key) => format!("[{} {}]", edn_string(key), edn_value(&op.value)),
        None => edn_value(&op.value),
    };
    let process = match op.process {
        Process::Client(p) => p.to_string(),
        Process::Nemesis => ":nemesis".to_string(),
    };
    let mut line = format!(
        "{{:type :{op_type}, :f {}, :value {value}, :process {process}, :time {}, :index {}",
        edn_keyword(op.f.name()),
        op.time,
        op.index
    );
    if let Some(node) = op.node {
        let _ = write!(line, ", :node {node}");
    }
    if let Some(level) = &op.level {
        // `STRONG` -> `:strong`; a level that would not be a plain keyword
        // (e.g. `BOUNDED(500)`) is kept verbatim as a string.
        let lower = level.to_ascii_lowercase();
        let level = if is_plain_keyword(&lower) {
            format!(":{lower}")
        } else {
            edn_string(level)
        };
        let _ = write!(line, ", :level {level}");
    }
    if let Some(error) = &op.error {
        let _ = write!(line, ", :error {}", edn_string(error));
    }
    line.push('}');
    line
}

fn edn_value(value: &Value) -> String {
    match value {
        Value::Nil => "nil".to_string(),
        Value::Int(v) => v.to_string(),
        Value::Cas(from, to) => format!("[{from} {to}]"),
        Value::Elements(elements) => {
            let items: Vec<String> = elements.iter().map(i64::to_string).collect();
            format!("#{{{}}}", items.join(" "))
        }
        Value::Text(text) => edn_string(text),
    }
}

/// An EDN string literal. EDN defines `\"`, `\\`, `\n`, `\r`, `\t`; other
/// control characters are written as `\uXXXX`, which Clojure's reader takes.
fn edn_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Letters, digits and `-_.*+!?` (not starting with a digit): a keyword
/// that reads back as itself everywhere.
fn is_plain_keyword(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || "-_*+!?".contains(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.*+!?".contains(c))
}

/// `:name`, with characters a keyword cannot hold replaced by `-` (an `:f`
/// must be a keyword for Jepsen; nemesis names are kebab-case already).
fn edn_keyword(name: &str) -> String {
    if is_plain_keyword(name) {
        return format!(":{name}");
    }
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.*+!?".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if is_plain_keyword(&cleaned) {
        format!(":{cleaned}")
    } else {
        format!(":f-{cleaned}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::history::Function;

    fn op(op_type: OpType, f: Function, process: Process, key: Option<&str>, value: Value) -> Op {
        Op {
            index: 0,
            op_type,
            f,
            process,
            time: 123456,
            key: key.map(str::to_string),
            value,
            node: None,
            level: None,
            error: None,
        }
    }

    #[test]
    fn invoke_write_with_key() {
        let write = op(
            OpType::Invoke,
            Function::Write,
            Process::Client(3),
            Some("k1"),
            Value::Int(5),
        );
        assert_eq!(
            edn_line(&write),
            r#"{:type :invoke, :f :write, :value ["k1" 5], :process 3, :time 123456, :index 0}"#
        );
        let pinned = Op {
            node: Some(2),
            level: Some("STRONG".into()),
            index: 7,
            ..write
        };
        assert_eq!(
            edn_line(&pinned),
            r#"{:type :invoke, :f :write, :value ["k1" 5], :process 3, :time 123456, :index 7, :node 2, :level :strong}"#
        );
    }

    #[test]
    fn ok_read_of_nothing() {
        let read = op(
            OpType::Ok,
            Function::Read,
            Process::Client(0),
            Some("k"),
            Value::Nil,
        );
        assert_eq!(
            edn_line(&read),
            r#"{:type :ok, :f :read, :value ["k" nil], :process 0, :time 123456, :index 0}"#
        );
        let keyless = Op {
            key: None,
            value: Value::Int(-4),
            ..read
        };
        assert_eq!(
            edn_line(&keyless),
            "{:type :ok, :f :read, :value -4, :process 0, :time 123456, :index 0}"
        );
    }

    #[test]
    fn cas() {
        let cas = op(
            OpType::Fail,
            Function::Cas,
            Process::Client(12),
            Some("r2"),
            Value::Cas(1, 2),
        );
        assert_eq!(
            edn_line(&cas),
            r#"{:type :fail, :f :cas, :value ["r2" [1 2]], :process 12, :time 123456, :index 0}"#
        );
    }

    #[test]
    fn info_with_error_is_escaped() {
        let mut info = op(
            OpType::Info,
            Function::Write,
            Process::Client(4),
            Some("a \"b\""),
            Value::Int(9),
        );
        info.error = Some("timeout: \"deadline\"\nC:\\dir\t\u{1}".into());
        info.level = Some("BOUNDED(500)".into());
        assert_eq!(
            edn_line(&info),
            r#"{:type :info, :f :write, :value ["a \"b\"" 9], :process 4, :time 123456, :index 0, :level "BOUNDED(500)", :error "timeout: \"deadline\"\nC:\\dir\t\u0001"}"#
        );
    }

    #[test]
    fn nemesis() {
        let nemesis = op(
            OpType::Info,
            Function::Nemesis("start-partition".into()),
            Process::Nemesis,
            None,
            Value::Text("isolate n2 from [n1 n3]".into()),
        );
        assert_eq!(
            edn_line(&nemesis),
            r#"{:type :info, :f :start-partition, :value "isolate n2 from [n1 n3]", :process :nemesis, :time 123456, :index 0}"#
        );
        let odd = Op {
            f: Function::Nemesis("kill node 2".into()),
            value: Value::Nil,
            ..nemesis
        };
        assert!(edn_line(&odd)
            .starts_with("{:type :info, :f :kill-node-2, :value nil, :process :nemesis"));
        assert_eq!(edn_keyword("9lives"), ":f-9lives");
        assert_eq!(edn_keyword(""), ":f-");
    }

    #[test]
    fn set_read_and_add() {
        let elements = Value::Elements(BTreeSet::from([3, 1, 2]));
        let read = Op {
            node: Some(1),
            ..op(
                OpType::Ok,
                Function::ReadSet,
                Process::Client(1),
                None,
                elements,
            )
        };
        assert_eq!(
            edn_line(&read),
            "{:type :ok, :f :read-set, :value #{1 2 3}, :process 1, :time 123456, :index 0, :node 1}"
        );
        let empty = Op {
            value: Value::Elements(BTreeSet::new()),
            ..read
        };
        assert!(edn_line(&empty).contains(":value #{},"));
        let add = op(
            OpType::Invoke,
            Function::Add,
            Process::Client(1),
            None,
            Value::Int(42),
        );
        assert_eq!(
            edn_line(&add),
            "{:type :invoke, :f :add, :value 42, :process 1, :time 123456, :index 0}"
        );
    }

    fn sample() -> History {
        let mut error = op(
            OpType::Info,
            Function::Cas,
            Process::Client(2),
            Some("k\n1"),
            Value::Cas(4, 5),
        );
        error.error = Some("unavailable: \"no quorum\"".into());
        error.level = Some("STRONG".into());
        let ops = vec![
            op(
                OpType::Invoke,
                Function::Write,
                Process::Client(1),
                Some("k1"),
                Value::Int(5),
            ),
            op(
                OpType::Ok,
                Function::Read,
                Process::Client(1),
                Some("k1"),
                Value::Nil,
            ),
            error,
            op(
                OpType::Info,
                Function::Nemesis("kill".into()),
                Process::Nemesis,
                None,
                Value::Text("n1".into()),
            ),
            op(
                OpType::Ok,
                Function::ReadSet,
                Process::Client(3),
                None,
                Value::Elements(BTreeSet::from([1, 2])),
            ),
        ];
        History {
            ops: ops
                .into_iter()
                .enumerate()
                .map(|(i, op)| Op {
                    index: i as u64,
                    ..op
                })
                .collect(),
        }
    }

    #[test]
    fn jsonl_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        let history = sample();
        write_jsonl(&history, &path).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let back: Vec<Op> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is one op"))
            .collect();
        assert_eq!(back, history.ops);
    }

    #[test]
    fn edn_file_has_one_map_per_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.edn");
        let history = sample();
        write_edn(&history, &path).expect("written");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), history.ops.len());
        for (line, op) in lines.iter().zip(&history.ops) {
            assert_eq!(*line, edn_line(op));
            assert!(line.starts_with('{') && line.ends_with('}'));
        }
        assert!(
            lines[2].contains(r#":value ["k\n1" [4 5]]"#),
            "{}",
            lines[2]
        );
    }
}
