//! `session`: each process writes LOCAL through its home node A and reads
//! SESSION through another node B (the next one), carrying one session
//! token across both: the token a write on A returns goes with the read on
//! B (`Session::from_token`), and what the read returns is merged back.
//! Key `session-<process>`, values 1, 2, 3, ... per process (a retired
//! process's successor has a new key and starts again at 1).
//!
//! A SESSION read on B that cannot see the session's writes (B cut off from
//! where they are reconciled) waits up to its deadline and fails: that is a
//! `fail` (nothing was read), not a violation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use capkv_client::merge_token;
use capkv_client::proto::SessionToken;
use capkv_client::Session;
use capkv_client::WriteLevel;
use rand::Rng as _;

use super::Ctx;
use super::Outcome;
use super::Worker;
use super::Workload;
use crate::history::Function;
use crate::history::Value;

/// Share of writes (the rest are reads).
const WRITE_SHARE: f64 = 0.5;

#[derive(Default)]
struct ProcessState {
    token: SessionToken,
    next: i64,
}

pub struct SessionWorkload {
    /// Per process: its token and next value.
    state: Mutex<HashMap<u64, ProcessState>>,
}

impl SessionWorkload {
    pub fn new() -> Arc<SessionWorkload> {
        Arc::new(SessionWorkload {
            state: Mutex::new(HashMap::new()),
        })
    }

    fn with_state<T>(&self, process: u64, f: impl FnOnce(&mut ProcessState) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(state.entry(process).or_insert_with(|| ProcessState {
            token: SessionToken::default(),
            next: 1,
        }))
    }
}

/// The key of a process.
pub fn key_of(process: u64) -> String {
    format!("session-{process}")
}

/// The node a process reads through: the one after its home node.
pub fn read_node(home: u64, nodes: usize) -> u64 {
    home % nodes as u64 + 1
}

impl Workload for SessionWorkload {
    fn new_process(&self, process: u64) {
        self.with_state(process, |_| ());
    }

    async fn step(&self, ctx: &Ctx, worker: &mut Worker) -> bool {
        let process = worker.process;
        let key = key_of(process);
        let write_node = ctx.home(process);
        let token = self.with_state(process, |s| s.token.clone());
        if worker.rng.gen_bool(WRITE_SHARE) {
            let value = self.with_state(process, |s| {
                let v = s.next;
                s.next += 1;
                v
            });
            let op = ctx.invoke(
                process,
                Function::Write,
                Some(key.clone()),
                Value::Int(value),
                write_node,
                "LOCAL",
            );
            let session = Session::from_token(ctx.client(write_node), token)
                .with_write_level(WriteLevel::Local);
            let result = ctx
                .local_write(write_node, session.put(key.into_bytes(), value.to_string()))
                .await;
            let outcome = match result {
                Ok(_) => {
                    self.with_state(process, |s| merge_token(&mut s.token, &session.token()));
                    Outcome::Ok(Value::Int(value))
                }
                Err(outcome) => outcome,
            };
            let retire = outcome.is_info();
            ctx.complete(&op, outcome);
            retire
        } else {
            let node = read_node(write_node, ctx.nodes());
            let op = ctx.invoke(
                process,
                Function::Read,
                Some(key.clone()),
                Value::Nil,
                node,
                "SESSION",
            );
            let session = Session::from_token(ctx.client(node), token);
            let outcome = match ctx.read(node, session.get(key.into_bytes())).await {
                Ok(response) => {
                    self.with_state(process, |s| merge_token(&mut s.token, &session.token()));
                    if !response.found {
                        Outcome::Ok(Value::Nil)
                    } else {
                        match std::str::from_utf8(&response.value)
                            .ok()
                            .and_then(|t| t.parse::<i64>().ok())
                        {
                            Some(v) => Outcome::Ok(Value::Int(v)),
                            None => Outcome::Info(format!(
                                "read a value the harness never writes: {:?}",
                                String::from_utf8_lossy(&response.value)
                            )),
                        }
                    }
                }
                Err(outcome) => outcome,
            };
            let retire = outcome.is_info();
            ctx.complete(&op, outcome);
            retire
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_to_another_node() {
        for nodes in [3usize, 5] {
            for home in 1..=nodes as u64 {
                let b = read_node(home, nodes);
                assert_ne!(b, home);
                assert!((1..=nodes as u64).contains(&b));
            }
        }
        assert_eq!(key_of(12), "session-12");
    }
}
