//! `capkv.v1.KvService`: generic keys with versioned values and tombstones,
//! and compare-and-set.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;

use capkv_proto::v1;
use capkv_proto::v1::compare_and_set_request::Expected as ProtoExpected;
use capkv_proto::v1::kv_service_server::KvService;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::error::ApiError;
use super::from_proto_version;
use super::request_deadline;
use super::to_proto_version;
use super::validate;
use super::write::write_level;
use super::write::WriteLevel;
use super::write::Written;
use super::NodeContext;
use crate::types::Expected;
use crate::types::WriteOp;

/// A put whose key, value and options are valid, with the level it gets
/// under the call's deadline.
struct ParsedPut {
    level: WriteLevel,
    request_id: Vec<u8>,
    session: v1::SessionToken,
    op: WriteOp,
}

fn parse_put(request: v1::PutRequest, deadline: Instant) -> Result<ParsedPut, Status> {
    validate::key("key", &request.key)?;
    validate::value("value", &request.value)?;
    let choice = validate::write_options(request.options.as_ref())?;
    Ok(ParsedPut {
        level: write_level(&choice, deadline),
        request_id: choice.request_id,
        session: choice.session,
        op: WriteOp::Put {
            key: request.key,
            value: request.value,
        },
    })
}

/// Whether some put is valid and every valid one is STRONG.
fn leader_only(parsed: &[Result<ParsedPut, Status>]) -> bool {
    let mut valid = parsed.iter().filter_map(|put| put.as_ref().ok()).peekable();
    valid.peek().is_some() && valid.all(|put| put.level == WriteLevel::Strong)
}

pub struct KvApi {
    ctx: Arc<NodeContext>,
}

impl KvApi {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// One put, as `Put` answers it.
    async fn put_parsed(&self, put: ParsedPut) -> Result<v1::PutResponse, Status> {
        let written = self.ctx.write(put.level, put.request_id, put.op).await?;
        Ok(self.put_response(&written, put.session))
    }

    fn put_response(&self, written: &Written, session: v1::SessionToken) -> v1::PutResponse {
        v1::PutResponse {
            version: written.versions().first().copied().map(to_proto_version),
            meta: Some(self.ctx.write_meta(written, session)),
        }
    }
}

#[tonic::async_trait]
impl KvService for KvApi {
    async fn put(
        &self,
        request: Request<v1::PutRequest>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        let deadline = request_deadline(&request);
        let put = parse_put(request.into_inner(), deadline)?;
        Ok(Response::new(self.put_parsed(put).await?))
    }

    async fn put_many(
        &self,
        request: Request<v1::PutManyRequest>,
    ) -> Result<Response<v1::PutManyResponse>, Status> {
        let deadline = request_deadline(&request);
        let puts = request.into_inner().puts;
        validate::item_count("puts", "put", puts.len(), validate::MAX_PUTS_PER_CALL)?;
        let parsed: Vec<Result<ParsedPut, Status>> = puts
            .into_iter()
            .map(|put| parse_put(put, deadline))
            .collect();
        // When every valid put is STRONG, each would be refused on its own
        // by a node that is not the leader: refuse the call as a whole, so
        // the status names the leader and the client resends the call there
        // (where the invalid ones get their INVALID_ARGUMENT).
        if leader_only(&parsed) {
            self.ctx.check_leader_quorum()?;
        }
        // The LOCAL puts are stored together (one log append, one sync);
        // the others run concurrently, so the batcher puts them in the same
        // Raft entries.
        let mut local = Vec::new();
        let mut others = Vec::new();
        for (i, put) in parsed.into_iter().enumerate() {
            match put {
                Ok(put) if put.level == WriteLevel::Local => local.push((i, put)),
                put => others.push((i, put)),
            }
        }
        let stored_locally = async {
            let (places, (writes, sessions)): (Vec<usize>, (Vec<_>, Vec<_>)) = local
                .into_iter()
                .map(|(i, put)| (i, ((put.request_id, put.op), put.session)))
                .unzip();
            let answers = self.ctx.accept_local_many(writes).await;
            places
                .into_iter()
                .zip(answers.into_iter().zip(sessions))
                .map(|(i, (answer, session))| {
                    let response = answer
                        .map_err(Status::from)
                        .map(|accepted| self.put_response(&Written::Local(accepted), session));
                    (i, response)
                })
                .collect::<Vec<_>>()
        };
        let written_elsewhere = join_all(others.into_iter().map(|(i, put)| async move {
            let response = match put {
                Ok(put) => self.put_parsed(put).await,
                Err(status) => Err(status),
            };
            (i, response)
        }));
        let (mut answers, rest) = tokio::join!(stored_locally, written_elsewhere);
        answers.extend(rest);
        answers.sort_unstable_by_key(|(i, _)| *i);
        let outcomes = answers
            .into_iter()
            .map(|(_, result)| {
                let outcome = match result {
                    Ok(response) => v1::put_outcome::Outcome::Ok(response),
                    Err(status) => v1::put_outcome::Outcome::Error(v1::CallError {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                    }),
                };
                v1::PutOutcome {
                    outcome: Some(outcome),
                }
            })
            .collect();
        Ok(Response::new(v1::PutManyResponse { outcomes }))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let deadline = request_deadline(&request);
        let request = request.into_inner();
        validate::key("key", &request.key)?;
        let (level, session) = validate::read_options(request.options.as_ref())?;
        let permit = self.ctx.read_permit(&level, deadline).await?;
        let (stored, provisional) = self.ctx.get_value(&request.key, &permit)?;
        let (found, value, version) = match stored {
            Some(stored) => (
                stored.value.is_some(),
                stored.value.unwrap_or_default(),
                Some(to_proto_version(stored.version)),
            ),
            None => (false, Vec::new(), None),
        };
        Ok(Response::new(v1::GetResponse {
            meta: Some(self.ctx.read_meta(&permit, provisional, session)),
            found,
            value,
            version,
        }))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let deadline = request_deadline(&request);
        let request = request.into_inner();
        validate::key("key", &request.key)?;
        let choice = validate::write_options(request.options.as_ref())?;
        let written = self
            .ctx
            .write(
                write_level(&choice, deadline),
                choice.request_id,
                WriteOp::Delete { key: request.key },
            )
            .await?;
        let existed = match &written {
            Written::Strong { outcome, .. } => outcome.existed,
            // Not known until it is reconciled: report what this node sees.
            Written::Local(_) => false,
        };
        Ok(Response::new(v1::DeleteResponse {
            version: written.versions().first().copied().map(to_proto_version),
            existed,
            meta: Some(self.ctx.write_meta(&written, choice.session)),
        }))
    }

    async fn compare_and_set(
        &self,
        request: Request<v1::CompareAndSetRequest>,
    ) -> Result<Response<v1::CompareAndSetResponse>, Status> {
        let request = request.into_inner();
        validate::key("key", &request.key)?;
        validate::value("value", &request.value)?;
        let expected = match &request.expected {
            Some(ProtoExpected::ExpectedVersion(version)) => {
                Expected::Version(from_proto_version(version))
            }
            Some(ProtoExpected::ExpectedAbsent(true)) => Expected::Absent,
            Some(ProtoExpected::ExpectedAbsent(false)) | None => {
                return Err(ApiError::invalid(
                    "expected is missing: give expected_version or expected_absent = true",
                )
                .into())
            }
        };
        let choice = validate::write_options(request.options.as_ref())?;
        if choice.level != v1::WriteConsistency::Strong {
            return Err(ApiError::FailedPrecondition(format!(
                "compare-and-set needs STRONG, not {}: a comparison needs the single order of writes that only the Raft log gives; \
                 LOCAL writes are ordered by version after the fact, so what they would compare against is not yet decided",
                choice.level.as_str_name()
            ))
            .into());
        }
        let op = WriteOp::CompareAndSet {
            key: request.key,
            expected,
            value: request.value,
        };
        let written = self.ctx.write_strong(choice.request_id, op).await?;
        let outcome = match &written {
            Written::Strong { outcome, .. } => outcome.clone(),
            Written::Local(_) => Default::default(),
        };
        let (succeeded, current_found, current_value) = match &outcome.compare_failed {
            None => (true, false, Vec::new()),
            Some(current) => (
                false,
                current.is_some(),
                current.clone().unwrap_or_default(),
            ),
        };
        Ok(Response::new(v1::CompareAndSetResponse {
            succeeded,
            version: outcome.versions.first().copied().map(to_proto_version),
            current_found,
            current_value,
            meta: Some(self.ctx.write_meta(&written, choice.session)),
        }))
    }
}
