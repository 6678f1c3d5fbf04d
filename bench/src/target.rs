//! The systems under test behind one trait: capkv through its SDK, etcd
//! through `etcd-client` (feature `etcd`).

use std::future::Future;
use std::time::Duration;

use capkv_client::{proto, Client, ClientConfig, RangeQuery, ReadLevel};
use tokio::time::Instant;

use crate::level::Level;
use crate::ops::{key_name, value_of, Op};

/// The deadline of one operation, retries included (the SDK's default).
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the reconciliation-lag check reads.
pub const LAG_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What one successful operation did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Keys written or read, readings stored or returned.
    pub items: u64,
    /// A read that found nothing (or fewer readings than asked for).
    pub miss: bool,
    /// Set when the write was acknowledged as provisional (LOCAL, or a
    /// STRONG_OR_LOCAL that fell back): where it went and how to see it.
    pub provisional: Option<ProvisionalAck>,
}

/// A provisional write: the node that accepted it and how a LINEARIZABLE
/// read can tell it has been reconciled.
#[derive(Clone, Debug, PartialEq)]
pub struct ProvisionalAck {
    pub origin: u64,
    pub check: Visibility,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Visibility {
    /// The key holds this version or a newer one.
    Key {
        key: Vec<u8>,
        version: (u64, u32, u64),
    },
    /// The sensor's newest reading is at least this timestamp.
    Reading { sensor: String, ts_ms: i64 },
}

/// A system the load generator can drive. `client` picks the connection
/// (clients are spread over the target's connections).
pub trait Target: Send + Sync + 'static {
    fn execute(
        &self,
        client: usize,
        op: &Op,
    ) -> impl Future<Output = Result<Outcome, String>> + Send;
}

/// Errors are kept short: the first line, at most 300 characters.
pub fn short_error(error: impl std::fmt::Display) -> String {
    let text = error.to_string();
    let line = text.lines().next().unwrap_or("").trim();
    let mut short: String = line.chars().take(300).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

/// `n` copies of `endpoints`, copy `j` rotated to start at endpoint
/// `j % len`: clients of levels every node serves spread over the nodes.
pub fn rotated_endpoint_lists(endpoints: &[String], n: usize) -> Vec<Vec<String>> {
    (0..n.max(1))
        .map(|j| {
            let mut list = endpoints.to_vec();
            if !list.is_empty() {
                let len = list.len();
                list.rotate_left(j % len);
            }
            list
        })
        .collect()
}

// ----- capkv -----------------------------------------------------------------

/// capkv through the SDK: `connections` independent clients (each its own
/// channels), client `j` preferring node `j % nodes` for the levels any node
/// serves. STRONG writes and LINEARIZABLE reads go to the leader whatever
/// the preference (the SDK follows redirects).
pub struct CapkvTarget {
    clients: Vec<Client>,
}

impl CapkvTarget {
    pub fn new(endpoints: &[String], connections: usize, level: Level) -> anyhow::Result<Self> {
        let mut clients = Vec::new();
        for list in rotated_endpoint_lists(endpoints, connections) {
            let config = ClientConfig {
                timeout: OP_TIMEOUT,
                coalesce_puts: level.coalesces_puts(),
                ..ClientConfig::default()
            };
            let mut client = Client::with_config(list, config)?;
            if let Some(write) = level.capkv_write() {
                client = client.with_write_level(write);
            }
            if let Some(read) = level.capkv_read() {
                client = client.with_read_level(read);
            }
            clients.push(client);
        }
        Ok(CapkvTarget { clients })
    }

    fn client(&self, index: usize) -> &Client {
        &self.clients[index % self.clients.len()]
    }
}

fn version_tuple(version: Option<&proto::Version>) -> (u64, u32, u64) {
    version.map_or((0, 0, 0), |v| (v.physical_ms, v.logical, v.origin_node))
}

/// The provisional part of a write's answer, if it was stored LOCAL.
fn provisional_of(meta: Option<&proto::ResponseMeta>, check: Visibility) -> Option<ProvisionalAck> {
    let meta = meta?;
    meta.provisional_write.as_ref()?;
    Some(ProvisionalAck {
        origin: meta.served_by,
        check,
    })
}

impl Target for CapkvTarget {
    async fn execute(&self, client: usize, op: &Op) -> Result<Outcome, String> {
        let capkv = self.client(client);
        match op {
            Op::Put { key, value } => {
                let response = capkv
                    .put(key.clone(), value.clone())
                    .await
                    .map_err(short_error)?;
                let check = Visibility::Key {
                    key: key.clone(),
                    version: version_tuple(response.version.as_ref()),
                };
                Ok(Outcome {
                    items: 1,
                    miss: false,
                    provisional: provisional_of(response.meta.as_ref(), check),
                })
            }
            Op::PutMany {
                first,
                count,
                value_bytes,
            } => {
                for index in *first..first + u64::from(*count) {
                    let value = value_of(&format!("preload-{index}-"), *value_bytes);
                    capkv
                        .put(key_name(index), value)
                        .await
                        .map_err(short_error)?;
                }
                Ok(Outcome {
                    items: u64::from(*count),
                    ..Outcome::default()
                })
            }
            Op::Get { key } => {
                let response = capkv.get(key.clone()).await.map_err(short_error)?;
                Ok(Outcome {
                    items: 1,
                    miss: !response.found,
                    provisional: None,
                })
            }
            Op::Ingest {
                sensor,
                first_ts_ms,
                count,
                value,
            } => {
                let readings = (0..i64::from(*count))
                    .map(|i| proto::Reading {
                        sensor_id: sensor.clone(),
                        timestamp_ms: first_ts_ms + i,
                        value: *value,
                        tags: Default::default(),
                        version: None,
                    })
                    .collect();
                let response = capkv.put_readings(readings).await.map_err(short_error)?;
                let check = Visibility::Reading {
                    sensor: sensor.clone(),
                    ts_ms: first_ts_ms + i64::from(*count) - 1,
                };
                Ok(Outcome {
                    items: u64::from(*count),
                    miss: false,
                    provisional: provisional_of(response.meta.as_ref(), check),
                })
            }
            Op::Range { sensor, limit } => {
                let query = RangeQuery {
                    limit: *limit,
                    descending: true,
                    ..RangeQuery::new(sensor.clone())
                };
                let response = capkv.range_readings(query).await.map_err(short_error)?;
                let got = response.readings.len() as u64;
                Ok(Outcome {
                    items: got,
                    miss: got < u64::from(*limit),
                    provisional: None,
                })
            }
        }
    }
}

/// Whether a LINEARIZABLE read through `client` shows `check`.
async fn capkv_visible(client: &Client, check: &Visibility) -> Result<bool, String> {
    match check {
        Visibility::Key { key, version } => {
            let response = client.get(key.clone()).await.map_err(short_error)?;
            Ok(response.found && version_tuple(response.version.as_ref()) >= *version)
        }
        Visibility::Reading { sensor, ts_ms } => {
            let response = client
                .latest_reading(sensor.clone())
                .await
                .map_err(short_error)?;
            Ok(response
                .reading
                .is_some_and(|reading| reading.timestamp_ms >= *ts_ms))
        }
    }
}

/// The reconciliation lag at the end of a run: for each node's last
/// acknowledged provisional write, the time from its ack until a
/// LINEARIZABLE read shows it; the largest of them. Polls every
/// [`LAG_POLL_INTERVAL`] for at most `timeout` in all.
pub async fn capkv_reconcile_lag(
    endpoints: &[String],
    acks: &[(Instant, Visibility)],
    timeout: Duration,
) -> Result<Duration, String> {
    let config = ClientConfig {
        timeout: OP_TIMEOUT,
        read_level: ReadLevel::Linearizable,
        ..ClientConfig::default()
    };
    let client = Client::with_config(endpoints.to_vec(), config).map_err(short_error)?;
    let deadline = Instant::now() + timeout;
    let max_polls = (timeout.as_millis() / LAG_POLL_INTERVAL.as_millis().max(1)) as u64 + 2;
    let mut lag = Duration::ZERO;
    let mut polls = 0u64;
    for (acked_at, check) in acks {
        loop {
            polls += 1;
            if polls > max_polls || Instant::now() >= deadline {
                return Err(format!(
                    "a LOCAL write was still not visible through a LINEARIZABLE read {timeout:?} after the run"
                ));
            }
            // A failed read (an election, a busy leader) is retried like a miss.
            if let Ok(true) = capkv_visible(&client, check).await {
                lag = lag.max(Instant::now().saturating_duration_since(*acked_at));
                break;
            }
            tokio::time::sleep(LAG_POLL_INTERVAL).await;
        }
    }
    Ok(lag)
}

// ----- etcd ------------------------------------------------------------------

#[cfg(feature = "etcd")]
pub use etcd::EtcdTarget;

#[cfg(feature = "etcd")]
mod etcd {
    use etcd_client::{
        Client, ConnectOptions, GetOptions, KvClient, SortOrder, SortTarget, Txn, TxnOp,
    };

    use super::{short_error, Outcome, Target, OP_TIMEOUT};
    use crate::level::Level;
    use crate::ops::{etcd_reading_key, etcd_reading_prefix, key_name, value_of, Op};

    /// etcd through etcd-client: `connections` clients, client `j` talking
    /// to endpoint `j % nodes` only (etcd's clients do not look for the
    /// leader: a member forwards writes and linearizable reads' ReadIndex to
    /// it). Reads are serializable when the level says so.
    pub struct EtcdTarget {
        kvs: Vec<KvClient>,
        serializable: bool,
    }

    impl EtcdTarget {
        pub async fn new(
            endpoints: &[String],
            connections: usize,
            level: Level,
        ) -> anyhow::Result<Self> {
            anyhow::ensure!(!endpoints.is_empty(), "no etcd endpoints");
            let mut kvs = Vec::new();
            for j in 0..connections.max(1) {
                let endpoint = &endpoints[j % endpoints.len()];
                let url = if endpoint.contains("://") {
                    endpoint.clone()
                } else {
                    format!("http://{endpoint}")
                };
                let options = ConnectOptions::new()
                    .with_timeout(OP_TIMEOUT)
                    .with_connect_timeout(std::time::Duration::from_secs(2));
                let client = Client::connect([url], Some(options)).await?;
                kvs.push(client.kv_client());
            }
            Ok(EtcdTarget {
                kvs,
                serializable: level == Level::Serializable,
            })
        }

        fn read_options(&self) -> GetOptions {
            if self.serializable {
                GetOptions::new().with_serializable()
            } else {
                GetOptions::new()
            }
        }
    }

    impl Target for EtcdTarget {
        async fn execute(&self, client: usize, op: &Op) -> Result<Outcome, String> {
            let mut kv = self.kvs[client % self.kvs.len()].clone();
            match op {
                Op::Put { key, value } => {
                    kv.put(key.clone(), value.clone(), None)
                        .await
                        .map_err(short_error)?;
                    Ok(Outcome {
                        items: 1,
                        ..Outcome::default()
                    })
                }
                Op::PutMany {
                    first,
                    count,
                    value_bytes,
                } => {
                    let puts: Vec<TxnOp> = (*first..first + u64::from(*count))
                        .map(|index| {
                            let value = value_of(&format!("preload-{index}-"), *value_bytes);
                            TxnOp::put(key_name(index), value, None)
                        })
                        .collect();
                    kv.txn(Txn::new().and_then(puts))
                        .await
                        .map_err(short_error)?;
                    Ok(Outcome {
                        items: u64::from(*count),
                        ..Outcome::default()
                    })
                }
                Op::Get { key } => {
                    let response = kv
                        .get(key.clone(), Some(self.read_options()))
                        .await
                        .map_err(short_error)?;
                    Ok(Outcome {
                        items: 1,
                        miss: response.kvs().is_empty(),
                        provisional: None,
                    })
                }
                Op::Ingest {
                    sensor,
                    first_ts_ms,
                    count,
                    value,
                } => {
                    let bytes = value.to_le_bytes().to_vec();
                    if *count == 1 {
                        kv.put(etcd_reading_key(sensor, *first_ts_ms), bytes, None)
                            .await
                            .map_err(short_error)?;
                    } else {
                        let puts: Vec<TxnOp> = (0..i64::from(*count))
                            .map(|i| {
                                TxnOp::put(
                                    etcd_reading_key(sensor, first_ts_ms + i),
                                    bytes.clone(),
                                    None,
                                )
                            })
                            .collect();
                        kv.txn(Txn::new().and_then(puts))
                            .await
                            .map_err(short_error)?;
                    }
                    Ok(Outcome {
                        items: u64::from(*count),
                        ..Outcome::default()
                    })
                }
                Op::Range { sensor, limit } => {
                    let options = self
                        .read_options()
                        .with_prefix()
                        .with_limit(i64::from(*limit))
                        .with_sort(SortTarget::Key, SortOrder::Descend);
                    let response = kv
                        .get(etcd_reading_prefix(sensor), Some(options))
                        .await
                        .map_err(short_error)?;
                    let got = response.kvs().len() as u64;
                    Ok(Outcome {
                        items: got,
                        miss: got < u64::from(*limit),
                        provisional: None,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_rotate() {
        let endpoints: Vec<String> = ["a:1", "b:2", "c:3"].map(String::from).to_vec();
        let lists = rotated_endpoint_lists(&endpoints, 4);
        assert_eq!(lists.len(), 4);
        assert_eq!(lists[0][0], "a:1");
        assert_eq!(lists[1], ["b:2", "c:3", "a:1"]);
        assert_eq!(lists[3][0], "a:1");
        assert_eq!(rotated_endpoint_lists(&endpoints, 0).len(), 1);
    }

    #[test]
    fn errors_are_shortened_to_one_line() {
        assert_eq!(short_error("first\nsecond"), "first");
        let long = "x".repeat(1_000);
        assert_eq!(short_error(&long).chars().count(), 301);
    }
}
