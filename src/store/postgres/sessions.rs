//! Sessions in PostgreSQL: one row per session in `sessiond_sessions`
//! (payload and data as `jsonb`, token hashes as 32-byte `bytea`), the
//! row format and [`Sessions`] on it.
//!
//! [`Sessions::update_session`] reads, decides and writes in one
//! transaction on one connection, holding the row's lock
//! (`SELECT ... FOR UPDATE`) from the read to the commit, so refreshes
//! racing on several replicas are serialised. Sweeping deletes in batches
//! of rows no one else holds (`FOR UPDATE SKIP LOCKED`). This module must
//! never run a caller's closure outside the transaction whose lock it
//! decided on, nor hold a second pooled connection during a call.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::{Failed, PostgresStore, from_db, to_db};
use crate::store::{
    Change, Generation, Lineage, ListedSession, SessionQuery, SessionRecord, Sessions,
    SessionsPage, StoreError, TokenHash, UserSession,
};

/// The columns of a whole record, in the order [`decode`] reads them.
pub(super) const COLUMNS: &str = "handle, user_id, tenant_id, access_payload, data, \
     created_at_ms, expires_at_ms, refresh_hash, anti_csrf_hash, previous_refresh_hash, \
     previous_anti_csrf_hash, rotated_at_ms";

/// Writes a whole record, whether or not its handle exists.
const UPSERT: &str = "INSERT INTO sessiond_sessions (handle, user_id, tenant_id, \
     access_payload, data, created_at_ms, expires_at_ms, refresh_hash, anti_csrf_hash, \
     previous_refresh_hash, previous_anti_csrf_hash, rotated_at_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (handle) DO UPDATE SET user_id = EXCLUDED.user_id, \
     tenant_id = EXCLUDED.tenant_id, access_payload = EXCLUDED.access_payload, \
     data = EXCLUDED.data, created_at_ms = EXCLUDED.created_at_ms, \
     expires_at_ms = EXCLUDED.expires_at_ms, refresh_hash = EXCLUDED.refresh_hash, \
     anti_csrf_hash = EXCLUDED.anti_csrf_hash, \
     previous_refresh_hash = EXCLUDED.previous_refresh_hash, \
     previous_anti_csrf_hash = EXCLUDED.previous_anti_csrf_hash, \
     rotated_at_ms = EXCLUDED.rotated_at_ms";

/// Sessions deleted by one statement of a sweep.
const SWEEP_BATCH: usize = 500;

/// Writes `record` under `handle`.
pub(super) async fn upsert(
    client: &impl GenericClient,
    handle: &str,
    record: &SessionRecord,
) -> Result<(), Failed> {
    let (created, expires, rotated) = (
        to_db(record.created_at_ms)?,
        to_db(record.expires_at_ms)?,
        to_db(record.rotated_at_ms)?,
    );
    let anti_csrf = record.current.anti_csrf_hash.as_ref().map(|h| &h.0[..]);
    let previous = record.previous.as_ref().map(|p| &p.refresh_hash.0[..]);
    let previous_anti_csrf = record
        .previous
        .as_ref()
        .and_then(|p| p.anti_csrf_hash.as_ref())
        .map(|h| &h.0[..]);
    let statement = client.prepare_cached(UPSERT).await?;
    client
        .execute(
            &statement,
            &[
                &handle,
                &record.user_id,
                &record.tenant_id,
                &Json(&record.access_payload),
                &Json(&record.data),
                &created,
                &expires,
                &&record.current.refresh_hash.0[..],
                &anti_csrf,
                &previous,
                &previous_anti_csrf,
                &rotated,
            ],
        )
        .await?;
    Ok(())
}

fn hash(bytes: Vec<u8>) -> Result<TokenHash, StoreError> {
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a token hash is not 32 bytes".into()))?;
    Ok(TokenHash(raw))
}

fn object(value: Value, what: &str) -> Result<Map<String, Value>, StoreError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::Corrupt(format!(
            "a session's {what} is not an object"
        ))),
    }
}

/// A record from a row of [`COLUMNS`].
pub(super) fn decode(row: &Row) -> Result<SessionRecord, Failed> {
    let previous = match row.try_get::<_, Option<Vec<u8>>>(9)? {
        Some(refresh) => Some(Generation {
            refresh_hash: hash(refresh)?,
            anti_csrf_hash: row
                .try_get::<_, Option<Vec<u8>>>(10)?
                .map(hash)
                .transpose()?,
        }),
        None => None,
    };
    Ok(SessionRecord {
        handle: row.try_get(0)?,
        user_id: row.try_get(1)?,
        tenant_id: row.try_get(2)?,
        access_payload: object(row.try_get(3)?, "access payload")?,
        data: object(row.try_get(4)?, "data")?,
        created_at_ms: from_db(row.try_get(5)?)?,
        expires_at_ms: from_db(row.try_get(6)?)?,
        current: Generation {
            refresh_hash: hash(row.try_get(7)?)?,
            anti_csrf_hash: row
                .try_get::<_, Option<Vec<u8>>>(8)?
                .map(hash)
                .transpose()?,
        },
        previous,
        rotated_at_ms: from_db(row.try_get(11)?)?,
    })
}

fn user_session(row: &Row) -> Result<UserSession, Failed> {
    Ok(UserSession {
        handle: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        expires_at_ms: from_db(row.try_get(2)?)?,
    })
}

impl PostgresStore {
    async fn read_session(&self, handle: &str) -> Result<Option<SessionRecord>, Failed> {
        let client = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM sessiond_sessions WHERE handle = $1");
        let statement = client.prepare_cached(&sql).await?;
        client
            .query_opt(&statement, &[&handle])
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    /// One attempt at [`Sessions::update_session`], in one transaction.
    async fn try_update(
        client: &mut deadpool_postgres::Client,
        handle: &str,
        decide: &mut (dyn for<'r> FnMut(Option<&'r SessionRecord>) -> Change + Send),
    ) -> Result<Change, Failed> {
        let tx = client.transaction().await?;
        let sql = format!("SELECT {COLUMNS} FROM sessiond_sessions WHERE handle = $1 FOR UPDATE");
        let statement = tx.prepare_cached(&sql).await?;
        let current = tx
            .query_opt(&statement, &[&handle])
            .await?
            .as_ref()
            .map(decode)
            .transpose()?;
        let change = decide(current.as_ref());
        match &change {
            Change::Keep => {}
            Change::Put(next) => upsert(&tx, handle, next).await?,
            Change::Delete => {
                let statement = tx
                    .prepare_cached("DELETE FROM sessiond_sessions WHERE handle = $1")
                    .await?;
                tx.execute(&statement, &[&handle]).await?;
            }
        }
        tx.commit().await?;
        Ok(change)
    }

    async fn sweep_batch(&self, now: i64, limit: i64) -> Result<usize, Failed> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "DELETE FROM sessiond_sessions WHERE handle IN (\
                   SELECT handle FROM sessiond_sessions WHERE expires_at_ms <= $1 \
                   ORDER BY expires_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            .await?;
        Ok(client.execute(&statement, &[&now, &limit]).await? as usize)
    }
}

#[async_trait]
impl Sessions for PostgresStore {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let op = "creating a session";
        let client = self.client().await?;
        upsert(&client, &record.handle, record)
            .await
            .map_err(|e| e.during(op))
    }

    async fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.read_session(handle)
            .await
            .map_err(|e| e.during("reading a session"))
    }

    async fn session_lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        let read = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT user_id, tenant_id, expires_at_ms, refresh_hash, \
                     previous_refresh_hash FROM sessiond_sessions WHERE handle = $1",
                )
                .await?;
            let Some(row) = client.query_opt(&statement, &[&handle]).await? else {
                return Ok(None);
            };
            Ok(Some(Lineage {
                user_id: row.try_get(0)?,
                tenant_id: row.try_get(1)?,
                expires_at_ms: from_db(row.try_get(2)?)?,
                current_refresh_hash: hash(row.try_get(3)?)?,
                previous_refresh_hash: row
                    .try_get::<_, Option<Vec<u8>>>(4)?
                    .map(hash)
                    .transpose()?,
            }))
        };
        read.await
            .map_err(|e: Failed| e.during("reading a session's lineage"))
    }

    async fn update_session(
        &self,
        handle: &str,
        decide: &mut (dyn for<'r> FnMut(Option<&'r SessionRecord>) -> Change + Send),
    ) -> Result<Change, StoreError> {
        let op = "updating a session";
        let mut client = self.client().await?;
        let mut tries = 0;
        loop {
            match Self::try_update(&mut client, handle, decide).await {
                Ok(change) => return Ok(change),
                Err(e) => e.retry(op, &mut tries)?,
            }
        }
    }

    async fn delete_sessions(&self, handles: &[String]) -> Result<Vec<UserSession>, StoreError> {
        let delete = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "DELETE FROM sessiond_sessions WHERE handle = ANY($1) \
                     RETURNING handle, tenant_id, expires_at_ms",
                )
                .await?;
            let rows = client.query(&statement, &[&handles]).await?;
            rows.iter().map(user_session).collect::<Result<Vec<_>, _>>()
        };
        delete
            .await
            .map_err(|e: Failed| e.during("deleting sessions"))
    }

    async fn user_sessions(
        &self,
        user_id: &str,
        tenant_id: Option<&str>,
    ) -> Result<Vec<UserSession>, StoreError> {
        let list = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT handle, tenant_id, expires_at_ms FROM sessiond_sessions \
                     WHERE user_id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
                )
                .await?;
            let rows = client.query(&statement, &[&user_id, &tenant_id]).await?;
            rows.iter().map(user_session).collect::<Result<Vec<_>, _>>()
        };
        list.await
            .map_err(|e: Failed| e.during("listing a user's sessions"))
    }

    async fn list_sessions(&self, query: &SessionQuery<'_>) -> Result<SessionsPage, StoreError> {
        let list = async {
            let live = to_db(query.live_at_ms)?;
            // One more than the page holds tells whether more follow.
            let limit = i64::try_from(query.limit.saturating_add(1)).unwrap_or(i64::MAX);
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT handle, user_id, tenant_id, created_at_ms, expires_at_ms \
                     FROM sessiond_sessions \
                     WHERE ($1::text IS NULL OR handle > $1) \
                       AND ($2::text IS NULL OR tenant_id = $2) AND expires_at_ms > $3 \
                     ORDER BY handle LIMIT $4",
                )
                .await?;
            let rows = client
                .query(&statement, &[&query.after, &query.tenant_id, &live, &limit])
                .await?;
            let mut page = SessionsPage::default();
            for row in &rows {
                let listed = ListedSession {
                    handle: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    tenant_id: row.try_get(2)?,
                    created_at_ms: from_db(row.try_get(3)?)?,
                    expires_at_ms: from_db(row.try_get(4)?)?,
                };
                if !page.offer(listed, query.limit) {
                    break;
                }
            }
            Ok(page)
        };
        list.await.map_err(|e: Failed| e.during("listing sessions"))
    }

    async fn sweep_expired(&self, now_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let op = "sweeping expired sessions";
        let now = to_db(now_ms)?;
        let mut removed = 0;
        while removed < limit {
            let batch = (limit - removed).min(SWEEP_BATCH);
            let deleted = self
                .sweep_batch(now, batch as i64)
                .await
                .map_err(|e| e.during(op))?;
            removed += deleted;
            if deleted < batch {
                break;
            }
        }
        Ok(removed)
    }

    async fn count_sessions(&self) -> Result<u64, StoreError> {
        let count = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("SELECT count(*) FROM sessiond_sessions")
                .await?;
            let n: i64 = client.query_one(&statement, &[]).await?.try_get(0)?;
            Ok(from_db(n)?)
        };
        count
            .await
            .map_err(|e: Failed| e.during("counting sessions"))
    }
}
