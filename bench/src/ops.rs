//! The operations a workload issues, generated the same way for both
//! systems, and the data a `get` or `range` run preloads.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::level::Workload;

/// Value size of the `put` workload (and of preloaded `get` keys).
pub const DEFAULT_VALUE_BYTES: usize = 256;
/// Distinct keys of the `put` workload, and keys preloaded for `get`.
pub const DEFAULT_KEYS: u64 = 100_000;
/// Sensors preloaded for `range`.
pub const DEFAULT_RANGE_SENSORS: u32 = 16;
/// Readings preloaded per sensor for `range`: twice the window read, so the
/// newest 1 000 are a real slice of the sensor's data.
pub const DEFAULT_READINGS_PER_SENSOR: u32 = 2_000;
/// Readings one `range` operation reads (the newest ones).
pub const DEFAULT_RANGE_LIMIT: u32 = 1_000;
/// Readings per preload request on capkv (it takes up to 10 000 per entry).
pub const CAPKV_PRELOAD_BATCH: u32 = 1_000;
/// Operations per preload transaction on etcd (its default `--max-txn-ops`
/// is 128).
pub const ETCD_PRELOAD_BATCH: u32 = 100;
/// The largest ingest batch the tool sends: capkv's limit per request. etcd
/// needs `--max-txn-ops` at least this for such batches.
pub const MAX_BATCH: u32 = 10_000;

/// One request of a workload, in terms both systems can serve.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Write one key.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Write the preload keys `first..first + count` in one request where
    /// the system can (an etcd txn); capkv writes them one by one.
    PutMany {
        first: u64,
        count: u32,
        value_bytes: usize,
    },
    /// Read one key.
    Get { key: Vec<u8> },
    /// Store `count` readings of `sensor` at `first_ts_ms`, `+1`, ... in one
    /// request (capkv: one `PutReadings`; etcd: a txn of puts).
    Ingest {
        sensor: String,
        first_ts_ms: i64,
        count: u32,
        value: f64,
    },
    /// The newest `limit` readings of `sensor`, newest first.
    Range { sensor: String, limit: u32 },
}

/// The key of preload / put key number `index`.
pub fn key_name(index: u64) -> Vec<u8> {
    format!("bench/k/{index:08}").into_bytes()
}

/// A value of `len` bytes that starts with `tag`, so that every write of a
/// run has its own value.
pub fn value_of(tag: &str, len: usize) -> Vec<u8> {
    let mut value = tag.as_bytes().to_vec();
    value.resize(len, b'.');
    value
}

/// The sensor number `index` of the `range` preload.
pub fn range_sensor(index: u32) -> String {
    format!("bench-range-{index:03}")
}

/// etcd's key of one reading: the sensor's prefix, then the timestamp
/// zero-padded so that key order is time order.
pub fn etcd_reading_key(sensor: &str, ts_ms: i64) -> Vec<u8> {
    format!("r/{sensor}/{ts_ms:016}").into_bytes()
}

/// The prefix of every etcd reading key of `sensor`.
pub fn etcd_reading_prefix(sensor: &str) -> Vec<u8> {
    format!("r/{sensor}/").into_bytes()
}

/// What one run generates.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub workload: Workload,
    /// Readings per `ingest` request.
    pub batch: u32,
    /// Key space of `put`; keys preloaded and read by `get`.
    pub keys: u64,
    pub value_bytes: usize,
    /// Sensors preloaded and read by `range`.
    pub range_sensors: u32,
    pub readings_per_sensor: u32,
    pub range_limit: u32,
    /// Distinguishes this run's ingest sensors from earlier runs'.
    pub run_tag: String,
    /// Timestamps of this run's readings start here (epoch ms).
    pub base_ts_ms: i64,
    pub seed: u64,
}

/// One client's generator state.
#[derive(Debug)]
pub struct ClientGen {
    client: usize,
    rng: StdRng,
    seq: u64,
    next_ts_ms: i64,
}

impl WorkloadSpec {
    pub fn client_gen(&self, client: usize) -> ClientGen {
        ClientGen {
            client,
            rng: StdRng::seed_from_u64(self.seed ^ (client as u64).wrapping_mul(0x9E37_79B9)),
            seq: 0,
            next_ts_ms: self.base_ts_ms,
        }
    }

    /// The ingest sensor of `client` (one per client, so its timestamps only
    /// grow).
    pub fn ingest_sensor(&self, client: usize) -> String {
        format!("bench-{}-c{client:03}", self.run_tag)
    }

    /// The next operation of `state`'s client.
    pub fn next_op(&self, state: &mut ClientGen) -> Op {
        state.seq += 1;
        match self.workload {
            Workload::Put => {
                let index = state.rng.gen_range(0..self.keys.max(1));
                let tag = format!("{}-c{}-{}-", self.run_tag, state.client, state.seq);
                Op::Put {
                    key: key_name(index),
                    value: value_of(&tag, self.value_bytes),
                }
            }
            Workload::Get => Op::Get {
                key: key_name(state.rng.gen_range(0..self.keys.max(1))),
            },
            Workload::Ingest => {
                let count = self.batch.clamp(1, MAX_BATCH);
                let first_ts_ms = state.next_ts_ms;
                state.next_ts_ms += i64::from(count);
                Op::Ingest {
                    sensor: self.ingest_sensor(state.client),
                    first_ts_ms,
                    count,
                    value: 20.0 + (state.seq % 100) as f64 / 10.0,
                }
            }
            Workload::Range => Op::Range {
                sensor: range_sensor(state.rng.gen_range(0..self.range_sensors.max(1))),
                limit: self.range_limit,
            },
        }
    }

    /// The requests that load the data a run reads, `per_request` items
    /// each where the system batches (etcd txns, capkv reading batches).
    /// Empty for the write workloads.
    pub fn preload_ops(&self, per_request: u32, kv_batches: bool) -> Vec<Op> {
        let per_request = per_request.clamp(1, MAX_BATCH);
        match self.workload {
            Workload::Put | Workload::Ingest => Vec::new(),
            Workload::Get if kv_batches => (0..self.keys)
                .step_by(per_request as usize)
                .map(|first| Op::PutMany {
                    first,
                    count: per_request.min((self.keys - first) as u32),
                    value_bytes: self.value_bytes,
                })
                .collect(),
            Workload::Get => (0..self.keys)
                .map(|index| Op::Put {
                    key: key_name(index),
                    value: value_of(&format!("preload-{index}-"), self.value_bytes),
                })
                .collect(),
            Workload::Range => {
                let mut ops = Vec::new();
                for sensor in 0..self.range_sensors {
                    let mut done = 0;
                    while done < self.readings_per_sensor {
                        let count = per_request.min(self.readings_per_sensor - done);
                        ops.push(Op::Ingest {
                            sensor: range_sensor(sensor),
                            first_ts_ms: self.base_ts_ms + i64::from(done),
                            count,
                            value: f64::from(sensor),
                        });
                        done += count;
                    }
                }
                ops
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(workload: Workload) -> WorkloadSpec {
        WorkloadSpec {
            workload,
            batch: 10,
            keys: 1_000,
            value_bytes: 256,
            range_sensors: 3,
            readings_per_sensor: 2_500,
            range_limit: 1_000,
            run_tag: "t".into(),
            base_ts_ms: 1_000,
            seed: 7,
        }
    }

    #[test]
    fn put_values_have_the_size_and_are_distinct() {
        let spec = spec(Workload::Put);
        let mut state = spec.client_gen(3);
        let a = spec.next_op(&mut state);
        let b = spec.next_op(&mut state);
        match (a, b) {
            (Op::Put { key, value: va }, Op::Put { value: vb, .. }) => {
                assert_eq!(va.len(), 256);
                assert_ne!(va, vb);
                assert!(key.starts_with(b"bench/k/"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(value_of("abc", 2), b"ab");
        assert_eq!(value_of("x", 4), b"x...");
    }

    #[test]
    fn ingest_timestamps_grow_per_client() {
        let spec = spec(Workload::Ingest);
        let mut state = spec.client_gen(0);
        let first = spec.next_op(&mut state);
        let second = spec.next_op(&mut state);
        assert!(matches!(
            first,
            Op::Ingest {
                first_ts_ms: 1_000,
                count: 10,
                ..
            }
        ));
        assert!(matches!(
            second,
            Op::Ingest {
                first_ts_ms: 1_010,
                count: 10,
                ..
            }
        ));
    }

    #[test]
    fn preloads_cover_the_data_exactly() {
        let get = spec(Workload::Get);
        let batched = get.preload_ops(100, true);
        assert_eq!(batched.len(), 10);
        let total: u32 = batched
            .iter()
            .map(|op| match op {
                Op::PutMany { count, .. } => *count,
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(total, 1_000);
        assert_eq!(get.preload_ops(100, false).len(), 1_000);

        let range = spec(Workload::Range);
        let ops = range.preload_ops(1_000, false);
        // 3 sensors x (1000 + 1000 + 500)
        assert_eq!(ops.len(), 9);
        assert!(matches!(
            ops[2],
            Op::Ingest {
                first_ts_ms: 3_000,
                count: 500,
                ..
            }
        ));
        assert!(spec(Workload::Put).preload_ops(100, true).is_empty());
    }

    #[test]
    fn etcd_reading_keys_sort_by_time() {
        assert!(etcd_reading_key("s", 999) < etcd_reading_key("s", 1_000));
        assert!(etcd_reading_key("s", 5).starts_with(&etcd_reading_prefix("s")));
    }
}
