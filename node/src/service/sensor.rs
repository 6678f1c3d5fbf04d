//! `capkv.v1.SensorService`: batched ingest, latest reading, time ranges.

use std::sync::Arc;

use capkv_proto::v1;
use capkv_proto::v1::sensor_service_server::SensorService;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::error::ApiError;
use super::to_proto_version;
use super::validate;
use super::NodeContext;
use crate::store::state_machine::ReadingRow;
use crate::types::WriteOp;

pub struct SensorApi {
    ctx: Arc<NodeContext>,
}

impl SensorApi {
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

fn to_proto_reading(sensor_id: &str, row: ReadingRow) -> v1::Reading {
    v1::Reading {
        sensor_id: sensor_id.to_string(),
        timestamp_ms: row.timestamp_ms as i64,
        value: row.reading.value,
        tags: row.reading.tags.into_iter().collect(),
        version: Some(to_proto_version(row.reading.version)),
    }
}

#[tonic::async_trait]
impl SensorService for SensorApi {
    async fn put_readings(
        &self,
        request: Request<v1::PutReadingsRequest>,
    ) -> Result<Response<v1::PutReadingsResponse>, Status> {
        let request = request.into_inner();
        let readings = validate::readings(&request.readings)?;
        let request_id = validate::write_options(request.options.as_ref())?;
        let committed = self
            .ctx
            .propose(request_id, WriteOp::PutReadings(readings))
            .await?;
        Ok(Response::new(v1::PutReadingsResponse {
            meta: Some(self.ctx.write_meta(committed.log_index)),
            versions: committed
                .outcome
                .versions
                .into_iter()
                .map(to_proto_version)
                .collect(),
        }))
    }

    async fn latest_reading(
        &self,
        request: Request<v1::LatestReadingRequest>,
    ) -> Result<Response<v1::LatestReadingResponse>, Status> {
        let request = request.into_inner();
        validate::sensor_id("sensor_id", &request.sensor_id)?;
        validate::read_options(request.options.as_ref())?;
        let read_index = self.ctx.linearizable_barrier().await?;
        let row = self
            .ctx
            .reads
            .latest_reading(&request.sensor_id)
            .map_err(|e| ApiError::from_storage(self.ctx.id, e))?;
        Ok(Response::new(v1::LatestReadingResponse {
            meta: Some(self.ctx.linearizable_meta(read_index)),
            reading: row.map(|row| to_proto_reading(&request.sensor_id, row)),
        }))
    }

    async fn range_readings(
        &self,
        request: Request<v1::RangeReadingsRequest>,
    ) -> Result<Response<v1::RangeReadingsResponse>, Status> {
        let request = request.into_inner();
        let query = validate::range(&request)?;
        validate::read_options(request.options.as_ref())?;
        let read_index = self.ctx.linearizable_barrier().await?;
        // One extra row tells whether another page follows.
        let mut rows = self
            .ctx
            .reads
            .range_readings(
                &request.sensor_id,
                query.from_ms,
                query.to_ms,
                query.limit as usize + 1,
                query.descending,
            )
            .map_err(|e| ApiError::from_storage(self.ctx.id, e))?;
        let next_page_token = if rows.len() > query.limit as usize {
            let next = rows.pop().expect("more rows than the limit");
            validate::encode_page_token(query.descending, next.timestamp_ms)
        } else {
            Vec::new()
        };
        Ok(Response::new(v1::RangeReadingsResponse {
            meta: Some(self.ctx.linearizable_meta(read_index)),
            readings: rows
                .into_iter()
                .map(|row| to_proto_reading(&request.sensor_id, row))
                .collect(),
            next_page_token,
        }))
    }
}
