//! Input limits and checks. Every check names the offending field, and a
//! request is checked whole before anything is proposed, so a bad request
//! changes nothing.

use std::collections::HashMap;

use capkv_proto::v1;

use super::error::ApiError;
use super::read::ReadLevel;
use crate::types::ReadingWrite;

/// Generic keys: DESIGN.md's limit.
pub const MAX_KEY_BYTES: usize = 1024;
/// Generic values: DESIGN.md's limit.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Sensor ids are names, not payloads; 256 bytes fits any naming scheme.
pub const MAX_SENSOR_ID_BYTES: usize = 256;
/// "Small string tags" (DESIGN.md): bounded so a reading stays small.
pub const MAX_TAGS_PER_READING: usize = 16;
pub const MAX_TAG_KEY_BYTES: usize = 64;
pub const MAX_TAG_VALUE_BYTES: usize = 256;
/// Readings in one PutReadings request, which is one Raft entry. At the
/// largest reading this is a ~90 MB entry; typical readings make ~1 MB.
pub const MAX_READINGS_PER_BATCH: usize = 10_000;
/// Puts in one `PutMany` call; each is applied and answered on its own.
/// The message size limit (`MAX_CLIENT_MESSAGE_BYTES`) bounds their bytes.
pub const MAX_PUTS_PER_CALL: usize = 1_000;
/// 9999-12-31T23:59:59.999Z: the last instant RFC 3339 can write.
pub const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;
/// Request ids are client-generated (a UUID is 16 bytes).
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// Readings per page of a range query.
pub const MAX_RANGE_LIMIT: u32 = 10_000;
pub const DEFAULT_RANGE_LIMIT: u32 = 1_000;

pub fn key(field: &str, key: &[u8]) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::invalid(format!("{field} is empty")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} is {} bytes, more than the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

pub fn value(field: &str, value: &[u8]) -> Result<(), ApiError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} is {} bytes, more than the limit of {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

pub fn sensor_id(field: &str, sensor_id: &str) -> Result<(), ApiError> {
    if sensor_id.is_empty() {
        return Err(ApiError::invalid(format!("{field} is empty")));
    }
    if sensor_id.len() > MAX_SENSOR_ID_BYTES {
        return Err(ApiError::invalid(format!(
            "{field} is {} bytes, more than the limit of {MAX_SENSOR_ID_BYTES}",
            sensor_id.len()
        )));
    }
    Ok(())
}

pub fn timestamp(field: &str, timestamp_ms: i64) -> Result<u64, ApiError> {
    if !(0..=MAX_TIMESTAMP_MS).contains(&timestamp_ms) {
        return Err(ApiError::invalid(format!(
            "{field} is {timestamp_ms}, outside 0..={MAX_TIMESTAMP_MS} (1970 to 9999, in ms)"
        )));
    }
    Ok(timestamp_ms as u64)
}

fn tags(field: &str, tags: &HashMap<String, String>) -> Result<Vec<(String, String)>, ApiError> {
    if tags.len() > MAX_TAGS_PER_READING {
        return Err(ApiError::invalid(format!(
            "{field} has {} tags, more than the limit of {MAX_TAGS_PER_READING}",
            tags.len()
        )));
    }
    let mut sorted: Vec<(String, String)> =
        tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    sorted.sort();
    for (key, value) in &sorted {
        if key.is_empty() || key.len() > MAX_TAG_KEY_BYTES {
            return Err(ApiError::invalid(format!(
                "{field} has a tag key of {} bytes; tag keys are 1 to {MAX_TAG_KEY_BYTES} bytes",
                key.len()
            )));
        }
        if value.len() > MAX_TAG_VALUE_BYTES {
            return Err(ApiError::invalid(format!(
                "{field}[{key:?}] is {} bytes, more than the limit of {MAX_TAG_VALUE_BYTES}",
                value.len()
            )));
        }
    }
    Ok(sorted)
}

/// A repeated field of 1 to `max` items; `item` names one.
pub fn item_count(field: &str, item: &str, count: usize, max: usize) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::invalid(format!(
            "{field} is empty: a request needs at least one {item}"
        )));
    }
    if count > max {
        return Err(ApiError::invalid(format!(
            "{field} has {count} entries, more than the limit of {max} per request"
        )));
    }
    Ok(())
}

pub fn readings(readings: &[v1::Reading]) -> Result<Vec<ReadingWrite>, ApiError> {
    item_count(
        "readings",
        "reading",
        readings.len(),
        MAX_READINGS_PER_BATCH,
    )?;
    readings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            sensor_id(&format!("readings[{i}].sensor_id"), &r.sensor_id)?;
            let timestamp_ms = timestamp(&format!("readings[{i}].timestamp_ms"), r.timestamp_ms)?;
            if !r.value.is_finite() {
                return Err(ApiError::invalid(format!(
                    "readings[{i}].value is {}; values must be finite",
                    r.value
                )));
            }
            let tags = tags(&format!("readings[{i}].tags"), &r.tags)?;
            Ok(ReadingWrite {
                sensor_id: r.sensor_id.clone(),
                timestamp_ms,
                value: r.value,
                tags,
            })
        })
        .collect()
}

/// Write options as checked: the level asked for, the request id (empty:
/// not deduplicated), the STRONG_OR_LOCAL budget (0: default) and the token.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteChoice {
    pub level: v1::WriteConsistency,
    pub request_id: Vec<u8>,
    pub strong_budget_ms: u64,
    pub session: v1::SessionToken,
}

pub fn write_options(options: Option<&v1::WriteOptions>) -> Result<WriteChoice, ApiError> {
    let Some(options) = options else {
        return Ok(WriteChoice {
            level: v1::WriteConsistency::Strong,
            request_id: Vec::new(),
            strong_budget_ms: 0,
            session: Default::default(),
        });
    };
    let level = match v1::WriteConsistency::try_from(options.consistency) {
        Ok(v1::WriteConsistency::Unspecified) => v1::WriteConsistency::Strong,
        Ok(level) => level,
        Err(_) => {
            return Err(ApiError::invalid(format!(
                "options.consistency {} is not a write consistency level (known: STRONG, LOCAL, STRONG_OR_LOCAL)",
                options.consistency
            )))
        }
    };
    if options.request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(ApiError::invalid(format!(
            "options.request_id is {} bytes, more than the limit of {MAX_REQUEST_ID_BYTES}",
            options.request_id.len()
        )));
    }
    if options.strong_budget_ms > MAX_STRONG_BUDGET_MS {
        return Err(ApiError::invalid(format!(
            "options.strong_budget_ms {} is more than the maximum of {MAX_STRONG_BUDGET_MS}",
            options.strong_budget_ms
        )));
    }
    Ok(WriteChoice {
        level,
        request_id: options.request_id.clone(),
        strong_budget_ms: options.strong_budget_ms,
        session: options.session.clone().unwrap_or_default(),
    })
}

/// The longest STRONG attempt a STRONG_OR_LOCAL write may ask for.
pub const MAX_STRONG_BUDGET_MS: u64 = 60_000;
/// The most a BOUNDED read may allow (an hour: beyond it, ask for EVENTUAL).
pub const MAX_STALENESS_BOUND_MS: u64 = 3_600_000;

/// Checks read options: the level (with its bound or session token) and the
/// token to extend in the response.
pub fn read_options(
    options: Option<&v1::ReadOptions>,
) -> Result<(ReadLevel, v1::SessionToken), ApiError> {
    let Some(options) = options else {
        return Ok((ReadLevel::Linearizable, Default::default()));
    };
    let session = options.session.clone().unwrap_or_default();
    let level = match v1::ReadConsistency::try_from(options.consistency) {
        Ok(v1::ReadConsistency::Unspecified | v1::ReadConsistency::Linearizable) => ReadLevel::Linearizable,
        Ok(v1::ReadConsistency::Session) => ReadLevel::Session(session.clone()),
        Ok(v1::ReadConsistency::Bounded) => {
            let bound = options.max_staleness_ms;
            if bound == 0 || bound > MAX_STALENESS_BOUND_MS {
                return Err(ApiError::invalid(format!(
                    "options.max_staleness_ms is {bound}; a BOUNDED read needs 1 to {MAX_STALENESS_BOUND_MS} ms"
                )));
            }
            ReadLevel::Bounded { max_staleness_ms: bound }
        }
        Ok(v1::ReadConsistency::Eventual) => ReadLevel::Eventual,
        Err(_) => {
            return Err(ApiError::invalid(format!(
                "options.consistency {} is not a read consistency level (known: LINEARIZABLE, SESSION, BOUNDED, EVENTUAL)",
                options.consistency
            )))
        }
    };
    Ok((level, session))
}

/// Validated parameters of a range query.
#[derive(Debug, PartialEq)]
pub struct RangeQuery {
    pub from_ms: u64,
    pub to_ms: u64,
    pub limit: u32,
    pub descending: bool,
}

/// Page tokens are one direction byte and the big-endian timestamp to resume
/// at (inclusive).
const PAGE_TOKEN_BYTES: usize = 9;

pub fn encode_page_token(descending: bool, resume_at_ms: u64) -> Vec<u8> {
    let mut token = Vec::with_capacity(PAGE_TOKEN_BYTES);
    token.push(descending as u8);
    token.extend_from_slice(&resume_at_ms.to_be_bytes());
    token
}

pub fn range(request: &v1::RangeReadingsRequest) -> Result<RangeQuery, ApiError> {
    sensor_id("sensor_id", &request.sensor_id)?;
    let mut from_ms = match request.from_ms {
        Some(from) => timestamp("from_ms", from)?,
        None => 0,
    };
    let mut to_ms = match request.to_ms {
        Some(to) => timestamp("to_ms", to)?,
        None => MAX_TIMESTAMP_MS as u64,
    };
    if from_ms > to_ms {
        return Err(ApiError::invalid(format!(
            "from_ms {from_ms} is after to_ms {to_ms}"
        )));
    }
    let limit = match request.limit {
        0 => DEFAULT_RANGE_LIMIT,
        n if n > MAX_RANGE_LIMIT => {
            return Err(ApiError::invalid(format!(
                "limit {n} is more than the maximum of {MAX_RANGE_LIMIT}"
            )))
        }
        n => n,
    };
    if !request.page_token.is_empty() {
        let token = &request.page_token;
        if token.len() != PAGE_TOKEN_BYTES || token[0] > 1 {
            return Err(ApiError::invalid(
                "page_token is malformed: pass next_page_token from the previous page",
            ));
        }
        if (token[0] == 1) != request.descending {
            return Err(ApiError::invalid(
                "page_token was made for the other direction (descending differs)",
            ));
        }
        let resume_at = u64::from_be_bytes(token[1..].try_into().expect("length checked above"));
        if request.descending {
            to_ms = to_ms.min(resume_at);
        } else {
            from_ms = from_ms.max(resume_at);
        }
    }
    Ok(RangeQuery {
        from_ms,
        to_ms,
        limit,
        descending: request.descending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(sensor: &str, ts: i64, value: f64) -> v1::Reading {
        v1::Reading {
            sensor_id: sensor.into(),
            timestamp_ms: ts,
            value,
            ..Default::default()
        }
    }

    /// Each bad batch and the words its error must contain.
    #[test]
    fn bad_readings_name_the_field() {
        let long = "s".repeat(MAX_SENSOR_ID_BYTES + 1);
        let mut many_tags = reading("a", 1, 1.0);
        for i in 0..=MAX_TAGS_PER_READING {
            many_tags.tags.insert(format!("k{i}"), "v".into());
        }
        let cases: Vec<(Vec<v1::Reading>, &str)> = vec![
            (vec![], "readings is empty"),
            (vec![reading("", 1, 1.0)], "readings[0].sensor_id is empty"),
            (
                vec![reading("a", 1, 1.0), reading(&long, 1, 1.0)],
                "readings[1].sensor_id is 257 bytes",
            ),
            (vec![reading("a", 1, f64::NAN)], "readings[0].value is NaN"),
            (
                vec![reading("a", 1, f64::INFINITY)],
                "readings[0].value is inf",
            ),
            (
                vec![reading("a", -1, 1.0)],
                "readings[0].timestamp_ms is -1",
            ),
            (vec![reading("a", MAX_TIMESTAMP_MS + 1, 1.0)], "outside"),
            (vec![many_tags], "17 tags"),
            (
                vec![reading("a", 1, 1.0); MAX_READINGS_PER_BATCH + 1],
                "more than the limit of 10000",
            ),
        ];
        for (batch, expected) in cases {
            let error = readings(&batch).expect_err(expected).to_string();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn good_readings_get_sorted_tags() {
        let mut r = reading("boiler-7", 1_000, 81.5);
        r.tags.insert("z".into(), "1".into());
        r.tags.insert("a".into(), "2".into());
        let checked = readings(&[r]).unwrap();
        assert_eq!(
            checked[0].tags,
            vec![("a".into(), "2".into()), ("z".into(), "1".into())]
        );
    }

    #[test]
    fn keys_and_values_have_limits() {
        assert!(key("key", b"")
            .unwrap_err()
            .to_string()
            .contains("key is empty"));
        assert!(key("key", &vec![b'k'; MAX_KEY_BYTES + 1])
            .unwrap_err()
            .to_string()
            .contains("1025 bytes"));
        assert!(key("key", &vec![b'k'; MAX_KEY_BYTES]).is_ok());
        assert!(value("value", &vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert!(value("value", &[]).is_ok());
    }

    #[test]
    fn unknown_levels_and_long_request_ids_are_rejected() {
        let options = v1::WriteOptions {
            consistency: 42,
            ..Default::default()
        };
        assert!(write_options(Some(&options))
            .unwrap_err()
            .to_string()
            .contains("options.consistency 42"));
        let options = v1::WriteOptions {
            request_id: vec![1; 65],
            ..Default::default()
        };
        assert!(write_options(Some(&options))
            .unwrap_err()
            .to_string()
            .contains("request_id is 65 bytes"));
        let options = v1::ReadOptions {
            consistency: 9,
            ..Default::default()
        };
        assert!(read_options(Some(&options)).is_err());
    }

    #[test]
    fn range_pages_resume_where_the_token_says() {
        let mut request = v1::RangeReadingsRequest {
            sensor_id: "a".into(),
            from_ms: Some(10),
            to_ms: Some(100),
            ..Default::default()
        };
        assert_eq!(
            range(&request).unwrap(),
            RangeQuery {
                from_ms: 10,
                to_ms: 100,
                limit: DEFAULT_RANGE_LIMIT,
                descending: false
            }
        );
        request.page_token = encode_page_token(false, 50);
        assert_eq!(range(&request).unwrap().from_ms, 50);
        request.descending = true;
        assert!(range(&request)
            .unwrap_err()
            .to_string()
            .contains("other direction"));
        request.page_token = encode_page_token(true, 40);
        assert_eq!(range(&request).unwrap().to_ms, 40);
        request.page_token = vec![0; 3];
        assert!(range(&request)
            .unwrap_err()
            .to_string()
            .contains("page_token is malformed"));
        request.page_token.clear();
        request.limit = MAX_RANGE_LIMIT + 1;
        assert!(range(&request).is_err());
        request.limit = 5;
        request.from_ms = Some(200);
        assert!(range(&request)
            .unwrap_err()
            .to_string()
            .contains("after to_ms"));
    }
}
