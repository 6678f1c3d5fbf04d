//! Put coalescing ([`crate::ClientConfig::coalesce_puts`]): concurrent
//! [`Client::put`] calls of one client share `PutMany` calls.
//!
//! Each route (the leader, any node, a pinned node) has a queue and a
//! dispatcher task. The dispatcher keeps at most
//! [`MAX_COALESCED_CALLS_IN_FLIGHT`] calls outstanding: while they are, puts
//! wait in the queue, and the next call takes everything that waited (up to
//! [`MAX_PUTS_PER_COALESCED_CALL`] puts and [`MAX_COALESCED_CALL_BYTES`]).
//! A put that finds a free slot is sent at once, alone, so a lightly loaded
//! client waits for no timer; under load, calls grow with the load.
//!
//! A put keeps its own request id, level and session token, and its own
//! answer. The `PutMany` call goes through the client's one retry loop
//! (redirects, backoff, the earliest deadline of its puts). A put the server
//! answers with a retryable failure of its own (for example `UNAVAILABLE`
//! for a `LOCAL` put on a node that cannot take it) is sent again by itself,
//! with the same request id, within what is left of its deadline; so is
//! every put of a call the server does not implement (a node older than
//! `PutMany`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::client::{kv_client, lock, CallPlan, Client, Route, Shared};
use crate::error::{classify_status, AttemptFailure};
use crate::session::observe_meta;
use crate::{proto, Error};

/// Puts waiting for a call, per route. A put that finds the queue full
/// waits for room (within its deadline): the queue bounds the memory a
/// client holds for puts not yet sent.
pub const MAX_QUEUED_PUTS: usize = 4_096;

/// The most puts one `PutMany` call carries. The server takes up to 1,000.
pub const MAX_PUTS_PER_COALESCED_CALL: usize = 256;

/// A call stops taking puts once its keys and values reach this many bytes
/// (one put may take it past; values are at most 1 MiB and the server's
/// message limit is 16 MiB).
pub const MAX_COALESCED_CALL_BYTES: usize = 4 * 1024 * 1024;

/// `PutMany` calls outstanding at once, per route. Two let one call fill
/// while the other is in flight.
pub const MAX_COALESCED_CALLS_IN_FLIGHT: usize = 2;

/// The queues of one client (shared by its handles), created on first use.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    queues: Mutex<HashMap<Route, mpsc::Sender<QueuedPut>>>,
}

#[derive(Debug)]
pub(crate) struct QueuedPut {
    request: proto::PutRequest,
    deadline: Instant,
    answer: oneshot::Sender<Answer>,
}

/// What the dispatcher tells a waiting put.
#[derive(Debug)]
enum Answer {
    /// The put's own result.
    Done(Result<proto::PutResponse, Error>),
    /// Send the put by itself.
    Alone,
}

impl Client {
    /// [`Client::put`] through the route's queue.
    pub(crate) async fn put_coalesced(
        &self,
        plan: CallPlan,
        request: proto::PutRequest,
    ) -> Result<proto::PutResponse, Error> {
        let deadline = Instant::now() + plan.timeout;
        let (answer, answered) = oneshot::channel();
        let queued = QueuedPut {
            request: request.clone(),
            deadline,
            answer,
        };
        let queue = self.coalesce_queue(&plan.route);
        let waited = tokio::time::timeout_at(deadline, async {
            queue.send(queued).await.ok()?;
            answered.await.ok()
        })
        .await;
        match waited {
            Ok(Some(Answer::Done(Ok(response)))) => {
                if let (Some(token), Some(meta)) = (self.session_token(), &response.meta) {
                    observe_meta(token, meta);
                }
                Ok(response)
            }
            Ok(Some(Answer::Done(Err(error)))) => Err(error),
            // Sent back, or the dispatcher is gone (the runtime that ran it
            // shut down): send it alone with the time left.
            Ok(Some(Answer::Alone)) | Ok(None) => {
                let timeout = deadline.saturating_duration_since(Instant::now());
                if timeout.is_zero() {
                    return Err(deadline_passed_in_queue());
                }
                self.put_alone(CallPlan { timeout, ..plan }, request).await
            }
            Err(_elapsed) => Err(deadline_passed_in_queue()),
        }
    }

    /// The queue of `route`, with its dispatcher started on first use.
    fn coalesce_queue(&self, route: &Route) -> mpsc::Sender<QueuedPut> {
        let shared = self.shared();
        let mut queues = lock(&shared.coalescer.queues);
        if let Some(queue) = queues.get(route) {
            if !queue.is_closed() {
                return queue.clone();
            }
        }
        let (queue, queued) = mpsc::channel(MAX_QUEUED_PUTS);
        tokio::spawn(dispatch(Arc::downgrade(shared), route.clone(), queued));
        queues.insert(route.clone(), queue.clone());
        queue
    }

    /// Sends `batch` as one `PutMany` call and answers each put.
    async fn send_batch(&self, route: Route, batch: Vec<QueuedPut>) {
        let Some(deadline) = batch.iter().map(|put| put.deadline).min() else {
            return;
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return send_all_alone(batch);
        }
        let plan = CallPlan {
            route,
            timeout,
            max_attempts: self.config().max_attempts,
        };
        let mut puts = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        for put in batch {
            puts.push(put.request);
            answers.push(put.answer);
        }
        let count = puts.len();
        let result = self
            .call(
                plan,
                proto::PutManyRequest { puts },
                |channel, request| async move { kv_client(channel).put_many(request).await },
            )
            .await;
        let error = match result {
            Ok(response) if response.outcomes.len() == count => {
                for (outcome, answer) in response.outcomes.into_iter().zip(answers) {
                    let _ = answer.send(item_answer(outcome));
                }
                return;
            }
            Ok(response) => Error::InvalidResponse(format!(
                "PutMany answered {} outcomes for {count} puts",
                response.outcomes.len()
            )),
            Err(error) => error,
        };
        // The call failed for every put. A node older than PutMany takes
        // each one alone.
        let unimplemented = matches!(
            error,
            Error::Server {
                code: Code::Unimplemented,
                ..
            }
        );
        for answer in answers {
            let _ = answer.send(if unimplemented {
                Answer::Alone
            } else {
                Answer::Done(Err(error.clone()))
            });
        }
    }
}

/// Takes puts from `queued` into calls, at most
/// [`MAX_COALESCED_CALLS_IN_FLIGHT`] at a time, until every handle of the
/// client is gone.
async fn dispatch(shared: Weak<Shared>, route: Route, mut queued: mpsc::Receiver<QueuedPut>) {
    let in_flight = Arc::new(Semaphore::new(MAX_COALESCED_CALLS_IN_FLIGHT));
    loop {
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queued.recv().await else {
            return;
        };
        let mut bytes = put_bytes(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_PUTS_PER_COALESCED_CALL && bytes < MAX_COALESCED_CALL_BYTES {
            match queued.try_recv() {
                Ok(put) => {
                    bytes += put_bytes(&put);
                    batch.push(put);
                }
                Err(_) => break,
            }
        }
        let Some(shared) = shared.upgrade() else {
            return send_all_alone(batch);
        };
        let client = Client::from_shared(shared);
        let route = route.clone();
        tokio::spawn(async move {
            client.send_batch(route, batch).await;
            drop(slot);
        });
    }
}

fn put_bytes(put: &QueuedPut) -> usize {
    put.request.key.len() + put.request.value.len()
}

fn send_all_alone(batch: Vec<QueuedPut>) {
    for put in batch {
        let _ = put.answer.send(Answer::Alone);
    }
}

/// One put's answer from its outcome: its response, the error its own
/// `Put` call would have returned, or "send it alone" for a failure a
/// retry may cure.
fn item_answer(outcome: proto::PutOutcome) -> Answer {
    match outcome.outcome {
        Some(proto::put_outcome::Outcome::Ok(response)) => Answer::Done(Ok(response)),
        Some(proto::put_outcome::Outcome::Error(error)) => {
            let status = Status::new(Code::from(error.code), error.message);
            match classify_status(&status) {
                AttemptFailure::Fatal(error) => Answer::Done(Err(error)),
                AttemptFailure::Redirect { .. } | AttemptFailure::Retryable(_) => Answer::Alone,
            }
        }
        None => Answer::Done(Err(Error::InvalidResponse(
            "a PutMany outcome with neither a response nor an error".to_string(),
        ))),
    }
}

fn deadline_passed_in_queue() -> Error {
    Error::DeadlineExceeded {
        attempts: 1,
        last_error: "no answer before the deadline (the put was queued or in a PutMany call)"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_outcome(code: Code, message: &str) -> proto::PutOutcome {
        proto::PutOutcome {
            outcome: Some(proto::put_outcome::Outcome::Error(proto::CallError {
                code: code as i32,
                message: message.to_string(),
            })),
        }
    }

    #[test]
    fn an_item_failure_a_retry_may_cure_sends_the_put_alone() {
        for code in [Code::Unavailable, Code::DeadlineExceeded] {
            assert!(
                matches!(item_answer(error_outcome(code, "busy")), Answer::Alone),
                "{code:?}"
            );
        }
    }

    #[test]
    fn an_item_failure_no_retry_cures_is_the_put_s_error() {
        match item_answer(error_outcome(Code::InvalidArgument, "key: empty")) {
            Answer::Done(Err(Error::InvalidArgument(message))) => assert_eq!(message, "key: empty"),
            other => panic!("unexpected {other:?}"),
        }
        match item_answer(error_outcome(Code::ResourceExhausted, "full")) {
            Answer::Done(Err(Error::Server { code, .. })) => {
                assert_eq!(code, Code::ResourceExhausted)
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            item_answer(proto::PutOutcome { outcome: None }),
            Answer::Done(Err(Error::InvalidResponse(_)))
        ));
    }
}
