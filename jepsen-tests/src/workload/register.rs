//! `register` and `stale`: read / write / cas on a handful of keys.
//!
//! * write: STRONG put of a unique value. It starts at the process's home
//!   node and follows "not the leader" redirects itself (each is a certain
//!   refusal), so followers and the minority side get writes too; see
//!   [`Ctx::strong_write`].
//! * read: a `get` at the workload's read level on the home node:
//!   LINEARIZABLE for `register` (followers serve it after fetching the read
//!   index from the leader), EVENTUAL for `stale` (whatever the node has).
//! * cas: a read as above (recorded as a read of its own), then a
//!   compare-and-set on the version read, recorded as cas `[v new]` where `v`
//!   is the value read: versions and values are one-to-one because every
//!   value is written once and every STRONG write gets a new version. A
//!   failed comparison is `fail`; a read of an absent key skips the cas.
//!
//! Values are stored as decimal text. Keys are `r0`, `r1`, ...

use std::sync::Arc;

use capkv_client::Expected;
use capkv_client::ReadLevel;
use capkv_client::WriteLevel;
use rand::Rng as _;

use super::Ctx;
use super::Outcome;
use super::Worker;
use super::Workload;
use crate::history::Function;
use crate::history::Value;

/// How a cas whose comparison failed is described (its `fail` error).
pub const COMPARE_FAILED: &str = "compare failed";

/// Share of reads; writes and cas share the rest equally.
const READ_SHARE: f64 = 0.4;
const WRITE_SHARE: f64 = 0.3;

pub struct Register {
    keys: usize,
    read_level: ReadLevel,
}

impl Register {
    /// `register`: LINEARIZABLE reads.
    pub fn linearizable(keys: usize) -> Arc<Register> {
        Arc::new(Register {
            keys: keys.max(1),
            read_level: ReadLevel::Linearizable,
        })
    }

    /// `stale`: EVENTUAL reads.
    pub fn stale(keys: usize) -> Arc<Register> {
        Arc::new(Register {
            keys: keys.max(1),
            read_level: ReadLevel::Eventual,
        })
    }

    fn read_level_name(&self) -> &'static str {
        match self.read_level {
            ReadLevel::Linearizable => "LINEARIZABLE",
            ReadLevel::Session => "SESSION",
            ReadLevel::Bounded { .. } => "BOUNDED",
            ReadLevel::Eventual => "EVENTUAL",
        }
    }

    /// A read recorded as its own operation; returns what it saw (value and
    /// version) when it succeeded, else whether the process must retire.
    async fn read(
        &self,
        ctx: &Ctx,
        process: u64,
        key: &str,
    ) -> Result<(Option<i64>, Option<capkv_client::proto::Version>), bool> {
        let node = ctx.home(process);
        let op = ctx.invoke(
            process,
            Function::Read,
            Some(key.to_string()),
            Value::Nil,
            node,
            self.read_level_name(),
        );
        let client = ctx.client(node).with_read_level(self.read_level);
        match ctx.read(node, client.get(key.as_bytes().to_vec())).await {
            Ok(response) if !response.found => {
                ctx.complete(&op, Outcome::Ok(Value::Nil));
                Ok((None, response.version))
            }
            Ok(response) => match parse_value(&response.value) {
                Some(v) => {
                    ctx.complete(&op, Outcome::Ok(Value::Int(v)));
                    Ok((Some(v), response.version))
                }
                None => {
                    // Not a value this harness wrote: record it as unknown so
                    // nothing is silently dropped, and say what was read.
                    let text = String::from_utf8_lossy(&response.value).into_owned();
                    ctx.complete(
                        &op,
                        Outcome::Info(format!("read a value the harness never writes: {text:?}")),
                    );
                    Err(true)
                }
            },
            Err(outcome) => {
                let retire = outcome.is_info();
                ctx.complete(&op, outcome);
                Err(retire)
            }
        }
    }

    async fn write(&self, ctx: &Ctx, process: u64, key: &str) -> bool {
        let node = ctx.home(process);
        let value = ctx.next_value();
        let op = ctx.invoke(
            process,
            Function::Write,
            Some(key.to_string()),
            Value::Int(value),
            node,
            "STRONG",
        );
        let result = ctx
            .strong_write(node, |client| {
                let key = key.as_bytes().to_vec();
                async move {
                    client
                        .with_write_level(WriteLevel::Strong)
                        .put(key, value.to_string())
                        .await
                }
            })
            .await;
        let outcome = match result {
            Ok(_) => Outcome::Ok(Value::Int(value)),
            Err(outcome) => outcome,
        };
        let retire = outcome.is_info();
        ctx.complete(&op, outcome);
        retire
    }

    async fn cas(&self, ctx: &Ctx, process: u64, key: &str) -> bool {
        let (current, version) = match self.read(ctx, process, key).await {
            Ok((Some(current), Some(version))) => (current, version),
            // The key is absent: nothing to compare with.
            Ok(_) => return false,
            Err(retire) => return retire,
        };
        let node = ctx.home(process);
        let new = ctx.next_value();
        let op = ctx.invoke(
            process,
            Function::Cas,
            Some(key.to_string()),
            Value::Cas(current, new),
            node,
            "STRONG",
        );
        let result = ctx
            .strong_write(node, |client| {
                let key = key.as_bytes().to_vec();
                async move {
                    client
                        .with_write_level(WriteLevel::Strong)
                        .compare_and_set(key, Expected::Version(version), new.to_string())
                        .await
                }
            })
            .await;
        let outcome = match result {
            Ok(response) if response.succeeded => Outcome::Ok(Value::Cas(current, new)),
            Ok(response) => {
                let now = if response.current_found {
                    String::from_utf8_lossy(&response.current_value).into_owned()
                } else {
                    "absent".to_string()
                };
                Outcome::Fail(format!("{COMPARE_FAILED}: the key is {now}, not {current}"))
            }
            Err(outcome) => outcome,
        };
        let retire = outcome.is_info();
        ctx.complete(&op, outcome);
        retire
    }
}

/// The key of register `i`.
pub fn key_name(i: usize) -> String {
    format!("r{i}")
}

fn parse_value(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

impl Workload for Register {
    async fn step(&self, ctx: &Ctx, worker: &mut Worker) -> bool {
        let key = key_name(worker.rng.gen_range(0..self.keys));
        let roll: f64 = worker.rng.gen();
        let process = worker.process;
        if roll < READ_SHARE {
            self.read(ctx, process, &key).await.err().unwrap_or(false)
        } else if roll < READ_SHARE + WRITE_SHARE {
            self.write(ctx, process, &key).await
        } else {
            self.cas(ctx, process, &key).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_only_when_they_are_the_harness_s() {
        assert_eq!(parse_value(b"42"), Some(42));
        assert_eq!(parse_value(b"x"), None);
        assert_eq!(key_name(3), "r3");
    }
}
