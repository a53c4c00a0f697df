//! Sessions in PostgreSQL: one row per session in `sessiond_sessions`
//! (payload and data as `jsonb`, token hashes as 32-byte `bytea`), the
//! row format and [`Sessions`] on it.
//!
//! Reads by handle, inserts and compare-and-swap updates go through
//! [`batch`](super::batch): concurrent calls share one statement and, for
//! writes, one commit. [`Sessions::update_session`] is a compare-and-swap:
//! it reads the row with its version (PostgreSQL's `xmin`, which every
//! write of the row changes, whoever makes it), decides, and writes with a
//! statement that changes the row only if it still has that version
//! (`UPDATE ... WHERE handle = ... AND xmin = ...`), in a single-statement
//! transaction that returns once committed. A write that finds the row
//! changed reads again; after [`OPTIMISTIC`] such losses the call takes
//! the row's lock instead (`SELECT ... FOR UPDATE`, then the write, in one
//! transaction), so refreshes racing on several replicas are serialised
//! either way and a contended session still makes progress. Sweeping
//! deletes in batches of rows no one else holds (`FOR UPDATE SKIP
//! LOCKED`). This module must never write a caller's decision to a row
//! other than the one it was decided on, nor hold a second pooled
//! connection during a call.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};

use super::{Failed, PostgresStore, from_db, to_db};
use crate::store::{
    Admission, Change, Device, Generation, Lineage, ListedSession, SessionLimit, SessionQuery,
    SessionRecord, Sessions, SessionsPage, StoreError, Timeouts, TokenHash, UserQuery, UserSession,
};

/// The columns of a whole record, in the order [`decode`] reads them.
macro_rules! columns {
    () => {
        "handle, user_id, tenant_id, access_payload, data, created_at_ms, expires_at_ms, \
         refresh_hash, anti_csrf_hash, previous_refresh_hash, previous_anti_csrf_hash, \
         rotated_at_ms, last_active_ms, idle_timeout_ms, max_lifetime_ms, device_ip, \
         device_user_agent, device_label"
    };
}

/// The columns of a whole record, in the order [`decode`] reads them.
pub(super) const COLUMNS: &str = columns!();

mod batches;
mod listing;

pub(super) use batches::Batches;
use batches::Swap;
use listing::{LISTED, listed};

/// Writes a whole record, whether or not its handle exists.
const UPSERT: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18) \
     ON CONFLICT (handle) DO UPDATE SET user_id = EXCLUDED.user_id, \
     tenant_id = EXCLUDED.tenant_id, access_payload = EXCLUDED.access_payload, \
     data = EXCLUDED.data, created_at_ms = EXCLUDED.created_at_ms, \
     expires_at_ms = EXCLUDED.expires_at_ms, refresh_hash = EXCLUDED.refresh_hash, \
     anti_csrf_hash = EXCLUDED.anti_csrf_hash, \
     previous_refresh_hash = EXCLUDED.previous_refresh_hash, \
     previous_anti_csrf_hash = EXCLUDED.previous_anti_csrf_hash, \
     rotated_at_ms = EXCLUDED.rotated_at_ms, last_active_ms = EXCLUDED.last_active_ms, \
     idle_timeout_ms = EXCLUDED.idle_timeout_ms, max_lifetime_ms = EXCLUDED.max_lifetime_ms, \
     device_ip = EXCLUDED.device_ip, device_user_agent = EXCLUDED.device_user_agent, \
     device_label = EXCLUDED.device_label"
);

/// Writes a new record; fails with a unique violation if its handle exists.
const INSERT: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18)"
);

/// Writes a record where there was none; no row when there is one now.
const INSERT_IF_ABSENT: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18) \
     ON CONFLICT (handle) DO NOTHING"
);

/// Rewrites a record if the row is still at version `$19`.
const UPDATE_IF: &str = "UPDATE sessiond_sessions SET user_id = $2, tenant_id = $3, \
     access_payload = $4, data = $5, created_at_ms = $6, expires_at_ms = $7, \
     refresh_hash = $8, anti_csrf_hash = $9, previous_refresh_hash = $10, \
     previous_anti_csrf_hash = $11, rotated_at_ms = $12, last_active_ms = $13, \
     idle_timeout_ms = $14, max_lifetime_ms = $15, device_ip = $16, \
     device_user_agent = $17, device_label = $18 \
     WHERE handle = $1 AND xmin::text = $19";

/// [`UPDATE_IF`] for a record whose payload and data stay as they are (a
/// refresh): neither is sent nor parsed again.
const UPDATE_LINEAGE_IF: &str = "UPDATE sessiond_sessions SET user_id = $2, tenant_id = $3, \
     created_at_ms = $4, expires_at_ms = $5, refresh_hash = $6, anti_csrf_hash = $7, \
     previous_refresh_hash = $8, previous_anti_csrf_hash = $9, rotated_at_ms = $10, \
     last_active_ms = $11, idle_timeout_ms = $12, max_lifetime_ms = $13, device_ip = $14, \
     device_user_agent = $15, device_label = $16 \
     WHERE handle = $1 AND xmin::text = $17";

/// Deletes a record if the row is still at version `$2`.
const DELETE_IF: &str = "DELETE FROM sessiond_sessions WHERE handle = $1 AND xmin::text = $2";

/// Sessions deleted by one statement of a sweep.
const SWEEP_BATCH: usize = 500;

/// Compare-and-swap attempts of an update before it locks the row.
const OPTIMISTIC: usize = 3;

/// A row's version: its `xmin` as text. Any write of the row changes it.
type Version = String;

/// A record's columns as statements bind them: `$1` the handle, then the
/// columns of [`COLUMNS`] in order.
struct Bound<'a> {
    handle: &'a str,
    record: &'a SessionRecord,
    payload: Json<&'a Map<String, Value>>,
    data: Json<&'a Map<String, Value>>,
    created: i64,
    expires: i64,
    refresh: &'a [u8],
    anti_csrf: Option<&'a [u8]>,
    previous: Option<&'a [u8]>,
    previous_anti_csrf: Option<&'a [u8]>,
    rotated: i64,
    last_active: i64,
    idle: i64,
    max_lifetime: i64,
}

impl<'a> Bound<'a> {
    fn new(handle: &'a str, record: &'a SessionRecord) -> Result<Self, StoreError> {
        Ok(Self {
            handle,
            record,
            payload: Json(&record.access_payload),
            data: Json(&record.data),
            created: to_db(record.created_at_ms)?,
            expires: to_db(record.expires_at_ms)?,
            refresh: &record.current.refresh_hash.0[..],
            anti_csrf: record.current.anti_csrf_hash.as_ref().map(|h| &h.0[..]),
            previous: record.previous.as_ref().map(|p| &p.refresh_hash.0[..]),
            previous_anti_csrf: record
                .previous
                .as_ref()
                .and_then(|p| p.anti_csrf_hash.as_ref())
                .map(|h| &h.0[..]),
            rotated: to_db(record.rotated_at_ms)?,
            last_active: to_db(record.last_active_ms)?,
            idle: to_db(record.timeouts.idle_ms)?,
            max_lifetime: to_db(record.timeouts.max_lifetime_ms)?,
        })
    }

    /// `$1` to `$18`.
    fn all(&self) -> [&(dyn ToSql + Sync); 18] {
        [
            &self.handle,
            &self.record.user_id,
            &self.record.tenant_id,
            &self.payload,
            &self.data,
            &self.created,
            &self.expires,
            &self.refresh,
            &self.anti_csrf,
            &self.previous,
            &self.previous_anti_csrf,
            &self.rotated,
            &self.last_active,
            &self.idle,
            &self.max_lifetime,
            &self.record.device.ip_address,
            &self.record.device.user_agent,
            &self.record.device.label,
        ]
    }

    /// `$1` to `$16` of [`UPDATE_LINEAGE_IF`]: all but payload and data
    /// (`$4` and `$5` of [`all`](Self::all)).
    fn lineage(&self) -> Vec<&(dyn ToSql + Sync)> {
        let all = self.all();
        [&all[..3], &all[5..]].concat()
    }
}

/// Writes `record` under `handle`.
pub(super) async fn upsert(
    client: &impl GenericClient,
    handle: &str,
    record: &SessionRecord,
) -> Result<(), Failed> {
    let bound = Bound::new(handle, record)?;
    let statement = client.prepare_cached(UPSERT).await?;
    client.execute(&statement, &bound.all()).await?;
    Ok(())
}

/// Inserts a new record; one whose handle is taken already (never, for a
/// random one) is overwritten, as every backend does.
async fn insert(client: &impl GenericClient, record: &SessionRecord) -> Result<(), Failed> {
    let bound = Bound::new(&record.handle, record)?;
    let statement = client.prepare_cached(INSERT).await?;
    match client.execute(&statement, &bound.all()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            upsert(client, &record.handle, record).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `record` to be stored under `handle`.
fn with_handle(handle: &str, record: &SessionRecord) -> SessionRecord {
    let mut record = record.clone();
    handle.clone_into(&mut record.handle);
    record
}

/// Writes `next` where there was no row; false when there is one now.
async fn insert_if_absent(
    client: &impl GenericClient,
    next: &SessionRecord,
) -> Result<bool, Failed> {
    let bound = Bound::new(&next.handle, next)?;
    let statement = client.prepare_cached(INSERT_IF_ABSENT).await?;
    Ok(client.execute(&statement, &bound.all()).await? == 1)
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
        last_active_ms: from_db(row.try_get(12)?)?,
        timeouts: Timeouts {
            idle_ms: from_db(row.try_get(13)?)?,
            max_lifetime_ms: from_db(row.try_get(14)?)?,
        },
        device: Device {
            ip_address: row.try_get(15)?,
            user_agent: row.try_get(16)?,
            label: row.try_get(17)?,
        },
    })
}

fn user_session(row: &Row) -> Result<UserSession, Failed> {
    Ok(UserSession {
        handle: row.try_get(0)?,
        tenant_id: row.try_get(1)?,
        expires_at_ms: from_db(row.try_get(2)?)?,
    })
}

/// The failure a batched read answered, which names its operation.
fn answered(e: Failed) -> StoreError {
    match e {
        Failed::Store(e) => e,
        Failed::Db(e) => super::failure("reading a session", e),
    }
}

impl PostgresStore {
    /// One compare-and-swap attempt at [`Sessions::update_session`]: the
    /// decision applied, or `None` when the row changed after it was read.
    async fn try_swap(
        &self,
        handle: &str,
        decide: &mut (dyn for<'r> FnMut(Option<&'r SessionRecord>) -> Change + Send),
    ) -> Result<Option<Change>, Failed> {
        let current = self.batches.records.call(handle.to_owned()).await?;
        let change = decide(current.as_ref().map(|(record, _)| record));
        let applied = match (&change, current) {
            (Change::Keep, _) | (Change::Delete, None) => true,
            (Change::Delete, Some((_, version))) => {
                let client = self.client().await?;
                let statement = client.prepare_cached(DELETE_IF).await?;
                client.execute(&statement, &[&handle, &version]).await? == 1
            }
            (Change::Put(next), None) => {
                let client = self.client().await?;
                insert_if_absent(&client, &with_handle(handle, next)).await?
            }
            (Change::Put(next), Some((was, version))) => {
                let swap = Swap {
                    handle: handle.to_owned(),
                    version,
                    same_json: was.access_payload == next.access_payload && was.data == next.data,
                    next: with_handle(handle, next),
                };
                self.batches.swaps.call(swap).await?
            }
        };
        Ok(applied.then_some(change))
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

    async fn sweep_batch(&self, now: i64, limit: i64) -> Result<Vec<ListedSession>, Failed> {
        let client = self.client().await?;
        let sql = format!(
            "DELETE FROM sessiond_sessions WHERE handle IN (\
               SELECT handle FROM sessiond_sessions WHERE ends_at_ms <= $1 \
               ORDER BY ends_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING {LISTED}"
        );
        let statement = client.prepare_cached(&sql).await?;
        let rows = client.query(&statement, &[&now, &limit]).await?;
        rows.iter().map(listed).collect()
    }
}

#[async_trait]
impl Sessions for PostgresStore {
    async fn create_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.batches
            .inserts
            .call(record.clone())
            .await
            .map_err(|e| e.during("creating a session"))
    }

    async fn session(&self, handle: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .batches
            .records
            .call(handle.to_owned())
            .await
            .map_err(answered)?
            .map(|(record, _)| record))
    }

    async fn session_lineage(&self, handle: &str) -> Result<Option<Lineage>, StoreError> {
        self.batches
            .lineages
            .call(handle.to_owned())
            .await
            .map_err(answered)
    }

    async fn update_session(
        &self,
        handle: &str,
        decide: &mut (dyn for<'r> FnMut(Option<&'r SessionRecord>) -> Change + Send),
    ) -> Result<Change, StoreError> {
        let op = "updating a session";
        let mut tries = 0;
        for _ in 0..OPTIMISTIC {
            match self.try_swap(handle, decide).await {
                Ok(Some(change)) => return Ok(change),
                Ok(None) => {}
                Err(e) => e.retry(op, &mut tries)?,
            }
        }
        // Contended: hold the row's lock from the read to the write.
        let mut client = self.client().await?;
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
        self.list_page(query)
            .await
            .map_err(|e: Failed| e.during("listing sessions"))
    }

    async fn user_sessions_page(&self, query: &UserQuery<'_>) -> Result<SessionsPage, StoreError> {
        self.user_page(query)
            .await
            .map_err(|e: Failed| e.during("listing a user's sessions"))
    }

    async fn create_session_within(
        &self,
        record: &SessionRecord,
        limit: &SessionLimit,
    ) -> Result<Admission, StoreError> {
        let op = "creating a session under the limit";
        let mut tries = 0;
        loop {
            match self.create_within(record, limit).await {
                Ok(admission) => return Ok(admission),
                Err(e) => e.retry(op, &mut tries)?,
            }
        }
    }

    async fn sweep_expired(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<ListedSession>, StoreError> {
        let op = "sweeping expired sessions";
        let now = to_db(now_ms)?;
        let mut removed = Vec::new();
        while removed.len() < limit {
            let batch = (limit - removed.len()).min(SWEEP_BATCH);
            let deleted = self
                .sweep_batch(now, batch as i64)
                .await
                .map_err(|e| e.during(op))?;
            let short = deleted.len() < batch;
            removed.extend(deleted);
            if short {
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
