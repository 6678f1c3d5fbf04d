//! Sessions: read-your-writes across nodes through a token that every request
//! carries and every response advances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::client::{lock, Expected};
use crate::{proto, Client, Error, RangeQuery, ReadLevel, WriteLevel};

/// A client handle that carries a session token.
///
/// Every request of a session sends its token (`WriteOptions.session`,
/// `ReadOptions.session`), and the token of every response is merged into it
/// ([`merge_token`]). A node serves a `SESSION` read only once it has applied
/// everything the token covers: the session's `STRONG` writes (commit index)
/// and its `LOCAL` writes on any node (provisional seq per origin), so a
/// session reads its own writes whichever node it asks.
///
/// Reads default to [`ReadLevel::Session`]; writes use the level of the
/// client the session came from. Clones share the token; so do the handles
/// [`Session::with_read_level`] and [`Session::with_write_level`] return.
/// A session can be saved ([`Session::token`]) and resumed elsewhere
/// ([`Session::from_token`]).
#[derive(Clone, Debug)]
pub struct Session {
    /// A client whose requests carry `token` (see `Client::session_token`).
    client: Client,
}

impl Session {
    /// Resumes a session from a saved token, on `client`'s channels and
    /// routing, with the client's write level and `SESSION` reads.
    pub fn from_token(client: &Client, token: proto::SessionToken) -> Session {
        Session {
            client: client
                .with_read_level(ReadLevel::Session)
                .with_session_token(Arc::new(Mutex::new(token))),
        }
    }

    /// A copy of the token as it is now.
    pub fn token(&self) -> proto::SessionToken {
        self.client
            .session_token()
            .map(|token| lock(token).clone())
            .unwrap_or_default()
    }

    /// A handle of this session (same token) that reads at `level`.
    pub fn with_read_level(&self, level: ReadLevel) -> Session {
        Session {
            client: self.client.with_read_level(level),
        }
    }

    /// A handle of this session (same token) that writes at `level`.
    pub fn with_write_level(&self, level: WriteLevel) -> Session {
        Session {
            client: self.client.with_write_level(level),
        }
    }

    pub fn read_level(&self) -> ReadLevel {
        self.client.read_level()
    }

    pub fn write_level(&self) -> WriteLevel {
        self.client.write_level()
    }

    /// See [`Client::put_readings`].
    pub async fn put_readings(
        &self,
        readings: Vec<proto::Reading>,
    ) -> Result<proto::PutReadingsResponse, Error> {
        self.client.put_readings(readings).await
    }

    /// See [`Client::put_reading`].
    pub async fn put_reading(
        &self,
        sensor_id: impl Into<String>,
        timestamp_ms: i64,
        value: f64,
        tags: HashMap<String, String>,
    ) -> Result<proto::PutReadingsResponse, Error> {
        self.client
            .put_reading(sensor_id, timestamp_ms, value, tags)
            .await
    }

    /// See [`Client::latest_reading`].
    pub async fn latest_reading(
        &self,
        sensor_id: impl Into<String>,
    ) -> Result<proto::LatestReadingResponse, Error> {
        self.client.latest_reading(sensor_id).await
    }

    /// See [`Client::range_readings`].
    pub async fn range_readings(
        &self,
        query: RangeQuery,
    ) -> Result<proto::RangeReadingsResponse, Error> {
        self.client.range_readings(query).await
    }

    /// See [`Client::range_readings_all`]; every page advances the token.
    pub async fn range_readings_all(
        &self,
        query: RangeQuery,
        max_total: usize,
    ) -> Result<proto::RangeReadingsResponse, Error> {
        self.client.range_readings_all(query, max_total).await
    }

    /// See [`Client::put`].
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<proto::PutResponse, Error> {
        self.client.put(key, value).await
    }

    /// See [`Client::get`].
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<proto::GetResponse, Error> {
        self.client.get(key).await
    }

    /// See [`Client::delete`].
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<proto::DeleteResponse, Error> {
        self.client.delete(key).await
    }

    /// See [`Client::compare_and_set`].
    pub async fn compare_and_set(
        &self,
        key: impl Into<Vec<u8>>,
        expected: Expected,
        value: impl Into<Vec<u8>>,
    ) -> Result<proto::CompareAndSetResponse, Error> {
        self.client.compare_and_set(key, expected, value).await
    }
}

impl Client {
    /// A new session on this client's channels and routing: an empty token,
    /// `SESSION` reads, this handle's write level.
    pub fn session(&self) -> Session {
        Session::from_token(self, proto::SessionToken::default())
    }
}

/// Merges what a response observed into a session's token: the highest commit
/// index, and per origin node the highest provisional seq. Merging is
/// commutative and idempotent, so responses may arrive in any order.
pub fn merge_token(into: &mut proto::SessionToken, from: &proto::SessionToken) {
    into.commit_index = into.commit_index.max(from.commit_index);
    for (&origin, &seq) in &from.provisional_seq {
        let entry = into.provisional_seq.entry(origin).or_insert(seq);
        *entry = (*entry).max(seq);
    }
}

/// Advances `token` by one response's metadata: its session token, and its
/// provisional write id (which a server puts in the token too; taking it from
/// both places costs nothing and keeps a session correct either way).
pub(crate) fn observe_meta(token: &Mutex<proto::SessionToken>, meta: &proto::ResponseMeta) {
    let mut token = lock(token);
    if let Some(session) = &meta.session {
        merge_token(&mut token, session);
    }
    if let Some(write) = &meta.provisional_write {
        let written = proto::SessionToken {
            commit_index: 0,
            provisional_seq: [(write.origin_node, write.seq)].into(),
        };
        merge_token(&mut token, &written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(commit_index: u64, provisional: &[(u64, u64)]) -> proto::SessionToken {
        proto::SessionToken {
            commit_index,
            provisional_seq: provisional.iter().copied().collect(),
        }
    }

    #[test]
    fn merge_takes_the_maximum_of_everything() {
        // (current, response, merged)
        let cases = [
            (token(0, &[]), token(0, &[]), token(0, &[])),
            (token(0, &[]), token(12, &[(3, 7)]), token(12, &[(3, 7)])),
            // A response from a node that is behind never moves the token back.
            (
                token(12, &[(3, 7)]),
                token(5, &[(3, 2)]),
                token(12, &[(3, 7)]),
            ),
            (
                token(12, &[(3, 7)]),
                token(13, &[(3, 9)]),
                token(13, &[(3, 9)]),
            ),
            // Origins are merged independently; absent ones are kept.
            (
                token(4, &[(1, 5), (3, 7)]),
                token(4, &[(2, 1), (3, 6)]),
                token(4, &[(1, 5), (2, 1), (3, 7)]),
            ),
            (token(9, &[(1, 5)]), token(0, &[]), token(9, &[(1, 5)])),
            (
                token(0, &[(1, u64::MAX)]),
                token(u64::MAX, &[(1, 1)]),
                token(u64::MAX, &[(1, u64::MAX)]),
            ),
        ];
        for (current, response, merged) in cases {
            let mut actual = current.clone();
            merge_token(&mut actual, &response);
            assert_eq!(actual, merged, "{current:?} + {response:?}");
            // Commutative and idempotent.
            let mut other_way = response.clone();
            merge_token(&mut other_way, &current);
            assert_eq!(other_way, merged, "{response:?} + {current:?}");
            merge_token(&mut actual, &response);
            assert_eq!(actual, merged, "merging twice");
        }
    }

    #[test]
    fn a_provisional_write_id_advances_the_token() {
        let shared = Mutex::new(token(3, &[(2, 4)]));
        observe_meta(
            &shared,
            &proto::ResponseMeta {
                session: Some(token(5, &[])),
                provisional_write: Some(proto::WriteId {
                    origin_node: 2,
                    seq: 6,
                }),
                ..proto::ResponseMeta::default()
            },
        );
        assert_eq!(*lock(&shared), token(5, &[(2, 6)]));
        // Metadata without a token changes nothing.
        observe_meta(&shared, &proto::ResponseMeta::default());
        assert_eq!(*lock(&shared), token(5, &[(2, 6)]));
    }
}
