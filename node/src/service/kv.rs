//! `capkv.v1.KvService`: generic keys with versioned values and tombstones.

use std::sync::Arc;

use capkv_proto::v1;
use capkv_proto::v1::kv_service_server::KvService;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::error::ApiError;
use super::to_proto_version;
use super::validate;
use super::NodeContext;
use crate::types::WriteOp;

pub struct KvApi {
    ctx: Arc<NodeContext>,
}

impl KvApi {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl KvService for KvApi {
    async fn put(
        &self,
        request: Request<v1::PutRequest>,
    ) -> Result<Response<v1::PutResponse>, Status> {
        let request = request.into_inner();
        validate::key("key", &request.key)?;
        validate::value("value", &request.value)?;
        let request_id = validate::write_options(request.options.as_ref())?;
        let committed = self
            .ctx
            .propose(
                request_id,
                WriteOp::Put {
                    key: request.key,
                    value: request.value,
                },
            )
            .await?;
        Ok(Response::new(v1::PutResponse {
            meta: Some(self.ctx.write_meta(committed.log_index)),
            version: committed
                .outcome
                .versions
                .first()
                .copied()
                .map(to_proto_version),
        }))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        let request = request.into_inner();
        validate::key("key", &request.key)?;
        validate::read_options(request.options.as_ref())?;
        let read_index = self.ctx.linearizable_barrier().await?;
        let stored = self
            .ctx
            .reads
            .get(&request.key)
            .map_err(|e| ApiError::from_storage(self.ctx.id, e))?;
        let (found, value, version) = match stored {
            Some(stored) => (
                stored.value.is_some(),
                stored.value.unwrap_or_default(),
                Some(to_proto_version(stored.version)),
            ),
            None => (false, Vec::new(), None),
        };
        Ok(Response::new(v1::GetResponse {
            meta: Some(self.ctx.linearizable_meta(read_index)),
            found,
            value,
            version,
        }))
    }

    async fn delete(
        &self,
        request: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let request = request.into_inner();
        validate::key("key", &request.key)?;
        let request_id = validate::write_options(request.options.as_ref())?;
        let committed = self
            .ctx
            .propose(request_id, WriteOp::Delete { key: request.key })
            .await?;
        Ok(Response::new(v1::DeleteResponse {
            meta: Some(self.ctx.write_meta(committed.log_index)),
            version: committed
                .outcome
                .versions
                .first()
                .copied()
                .map(to_proto_version),
            existed: committed.outcome.existed,
        }))
    }
}
