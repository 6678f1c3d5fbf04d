//! `capkv.v1.SensorService`: batched ingest, latest reading, time ranges.

use std::sync::Arc;

use capkv_proto::v1;
use capkv_proto::v1::sensor_service_server::SensorService;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::request_deadline;
use super::to_proto_version;
use super::validate;
use super::write::write_level;
use super::NodeContext;
use crate::store::keys::ReadingRow;
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
        let deadline = request_deadline(&request);
        let request = request.into_inner();
        let readings = validate::readings(&request.readings)?;
        let choice = validate::write_options(request.options.as_ref())?;
        let written = self
            .ctx
            .write(
                write_level(&choice, deadline),
                choice.request_id,
                WriteOp::PutReadings(readings),
            )
            .await?;
        Ok(Response::new(v1::PutReadingsResponse {
            versions: written
                .versions()
                .iter()
                .copied()
                .map(to_proto_version)
                .collect(),
            meta: Some(self.ctx.write_meta(&written, choice.session)),
        }))
    }

    async fn latest_reading(
        &self,
        request: Request<v1::LatestReadingRequest>,
    ) -> Result<Response<v1::LatestReadingResponse>, Status> {
        let deadline = request_deadline(&request);
        let request = request.into_inner();
        validate::sensor_id("sensor_id", &request.sensor_id)?;
        let (level, session) = validate::read_options(request.options.as_ref())?;
        let permit = self.ctx.read_permit(&level, deadline).await?;
        let (row, provisional) = self.ctx.latest_reading(&request.sensor_id, &permit)?;
        Ok(Response::new(v1::LatestReadingResponse {
            meta: Some(self.ctx.read_meta(&permit, provisional, session)),
            reading: row.map(|row| to_proto_reading(&request.sensor_id, row)),
        }))
    }

    async fn range_readings(
        &self,
        request: Request<v1::RangeReadingsRequest>,
    ) -> Result<Response<v1::RangeReadingsResponse>, Status> {
        let deadline = request_deadline(&request);
        let request = request.into_inner();
        let query = validate::range(&request)?;
        let (level, session) = validate::read_options(request.options.as_ref())?;
        let permit = self.ctx.read_permit(&level, deadline).await?;
        // One extra row tells whether another page follows.
        let (mut rows, provisional) = self.ctx.range_readings(
            &request.sensor_id,
            (query.from_ms, query.to_ms),
            query.limit as usize + 1,
            query.descending,
            &permit,
        )?;
        let next_page_token = if rows.len() > query.limit as usize {
            let next = rows.pop().expect("more rows than the limit");
            validate::encode_page_token(query.descending, next.timestamp_ms)
        } else {
            Vec::new()
        };
        Ok(Response::new(v1::RangeReadingsResponse {
            meta: Some(self.ctx.read_meta(&permit, provisional, session)),
            readings: rows
                .into_iter()
                .map(|row| to_proto_reading(&request.sensor_id, row))
                .collect(),
            next_page_token,
        }))
    }
}
