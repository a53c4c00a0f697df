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
use deadpool_postgres::{Client, GenericClient, Pool};
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};

use super::batch::{self, Batched, Job, copy};
use super::{Failed, PostgresStore, from_db, to_db};
use crate::store::{
    Change, Generation, Lineage, ListedSession, SessionQuery, SessionRecord, Sessions,
    SessionsPage, StoreError, TokenHash, UserSession,
};

/// The columns of a whole record, in the order [`decode`] reads them.
macro_rules! columns {
    () => {
        "handle, user_id, tenant_id, access_payload, data, created_at_ms, expires_at_ms, \
         refresh_hash, anti_csrf_hash, previous_refresh_hash, previous_anti_csrf_hash, \
         rotated_at_ms"
    };
}

/// The columns of a whole record, in the order [`decode`] reads them.
pub(super) const COLUMNS: &str = columns!();

/// Writes a whole record, whether or not its handle exists.
const UPSERT: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (handle) DO UPDATE SET user_id = EXCLUDED.user_id, \
     tenant_id = EXCLUDED.tenant_id, access_payload = EXCLUDED.access_payload, \
     data = EXCLUDED.data, created_at_ms = EXCLUDED.created_at_ms, \
     expires_at_ms = EXCLUDED.expires_at_ms, refresh_hash = EXCLUDED.refresh_hash, \
     anti_csrf_hash = EXCLUDED.anti_csrf_hash, \
     previous_refresh_hash = EXCLUDED.previous_refresh_hash, \
     previous_anti_csrf_hash = EXCLUDED.previous_anti_csrf_hash, \
     rotated_at_ms = EXCLUDED.rotated_at_ms"
);

/// Writes a new record; fails with a unique violation if its handle exists.
const INSERT: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);

/// Writes a record where there was none; no row when there is one now.
const INSERT_IF_ABSENT: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
     ON CONFLICT (handle) DO NOTHING"
);

/// Rewrites a record if the row is still at version `$13`.
const UPDATE_IF: &str = "UPDATE sessiond_sessions SET user_id = $2, tenant_id = $3, \
     access_payload = $4, data = $5, created_at_ms = $6, expires_at_ms = $7, \
     refresh_hash = $8, anti_csrf_hash = $9, previous_refresh_hash = $10, \
     previous_anti_csrf_hash = $11, rotated_at_ms = $12 \
     WHERE handle = $1 AND xmin::text = $13";

/// [`UPDATE_IF`] for a record whose payload and data stay as they are (a
/// refresh): neither is sent nor parsed again.
const UPDATE_LINEAGE_IF: &str = "UPDATE sessiond_sessions SET user_id = $2, tenant_id = $3, \
     created_at_ms = $4, expires_at_ms = $5, refresh_hash = $6, anti_csrf_hash = $7, \
     previous_refresh_hash = $8, previous_anti_csrf_hash = $9, rotated_at_ms = $10 \
     WHERE handle = $1 AND xmin::text = $11";

/// Deletes a record if the row is still at version `$2`.
const DELETE_IF: &str = "DELETE FROM sessiond_sessions WHERE handle = $1 AND xmin::text = $2";

/// Whole records with their versions, by handle (batched).
const READ_VERSIONED: &str = concat!(
    "SELECT ",
    columns!(),
    ", xmin::text FROM sessiond_sessions WHERE handle = ANY($1)"
);

/// Lineages by handle (batched).
const READ_LINEAGES: &str = "SELECT handle, user_id, tenant_id, expires_at_ms, refresh_hash, \
     previous_refresh_hash FROM sessiond_sessions WHERE handle = ANY($1)";

/// New records, one per element of the arrays (batched).
const INSERT_MANY: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], \
     $6::int8[], $7::int8[], $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[], $12::int8[])"
);

/// [`UPDATE_IF`] for many records (batched): each row is rewritten only if
/// it is still at its version; a null payload or data keeps the stored
/// one. Returns the handles of the rows rewritten.
const UPDATE_MANY_IF: &str = "UPDATE sessiond_sessions AS s SET user_id = v.user_id, \
     tenant_id = v.tenant_id, access_payload = coalesce(v.access_payload, s.access_payload), \
     data = coalesce(v.data, s.data), created_at_ms = v.created_at_ms, \
     expires_at_ms = v.expires_at_ms, refresh_hash = v.refresh_hash, \
     anti_csrf_hash = v.anti_csrf_hash, previous_refresh_hash = v.previous_refresh_hash, \
     previous_anti_csrf_hash = v.previous_anti_csrf_hash, rotated_at_ms = v.rotated_at_ms \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], \
     $7::int8[], $8::int8[], $9::bytea[], $10::bytea[], $11::bytea[], $12::bytea[], $13::int8[]) \
     AS v(handle, version, user_id, tenant_id, access_payload, data, created_at_ms, \
     expires_at_ms, refresh_hash, anti_csrf_hash, previous_refresh_hash, \
     previous_anti_csrf_hash, rotated_at_ms) \
     WHERE s.handle = v.handle AND s.xmin::text = v.version \
     RETURNING s.handle";

/// Sessions deleted by one statement of a sweep.
const SWEEP_BATCH: usize = 500;

/// Compare-and-swap attempts of an update before it locks the row.
const OPTIMISTIC: usize = 3;

/// A row's version: its `xmin` as text. Any write of the row changes it.
type Version = String;

/// Most read batches in flight at once.
const READS_IN_FLIGHT: usize = 2;

/// Most write batches in flight at once (PostgreSQL's own group commit
/// joins their commits).
const WRITES_IN_FLIGHT: usize = 4;

/// The batched calls on sessions.
pub(super) struct Batches {
    records: Batched<ByHandle<(SessionRecord, Version)>>,
    lineages: Batched<ByHandle<Lineage>>,
    inserts: Batched<Inserts>,
    swaps: Batched<Swaps>,
}

impl Batches {
    /// Batches on `pool`, with at most a few of them in flight.
    pub(super) fn new(pool: &Pool, pool_size: usize) -> Self {
        let reads = batch::in_flight(pool_size, READS_IN_FLIGHT);
        let writes = batch::in_flight(pool_size, WRITES_IN_FLIGHT);
        let records = ByHandle {
            sql: READ_VERSIONED,
            decode: versioned,
            op: "reading a session",
        };
        let lineages = ByHandle {
            sql: READ_LINEAGES,
            decode: lineage,
            op: "reading a session's lineage",
        };
        Self {
            records: Batched::new(records, pool.clone(), reads.clone()),
            lineages: Batched::new(lineages, pool.clone(), reads),
            inserts: Batched::new(Inserts, pool.clone(), writes.clone()),
            swaps: Batched::new(Swaps, pool.clone(), writes),
        }
    }
}

/// Reads by handle: `sql` has the handle as its first column and the
/// `text[]` of handles as its only parameter; `decode` makes a row a `T`.
/// A row that cannot be decoded fails only its own readers.
struct ByHandle<T> {
    sql: &'static str,
    decode: fn(&Row) -> Result<T, Failed>,
    op: &'static str,
}

impl<T: Clone + Send + Sync + 'static> Job for ByHandle<T> {
    type Ask = String;
    type Answer = Option<T>;

    async fn run(&self, client: &Client, handles: &[String]) -> Vec<Result<Option<T>, Failed>> {
        let rows = async {
            let statement = client.prepare_cached(self.sql).await?;
            Ok::<_, Failed>(client.query(&statement, &[&handles]).await?)
        };
        let rows = match rows.await {
            Ok(rows) => rows,
            Err(e) => {
                let e = e.during(self.op);
                return handles.iter().map(|_| Err(copy(&e).into())).collect();
            }
        };
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            match row.try_get::<_, String>(0) {
                Ok(handle) => {
                    found.insert(handle, (self.decode)(row).map_err(|e| e.during(self.op)));
                }
                Err(e) => {
                    // Not even the handle: no reader can be told apart.
                    let e = Failed::from(e).during(self.op);
                    return handles.iter().map(|_| Err(copy(&e).into())).collect();
                }
            }
        }
        handles
            .iter()
            .map(|handle| match found.get(handle) {
                None => Ok(None),
                Some(Ok(value)) => Ok(Some(value.clone())),
                Some(Err(e)) => Err(copy(e).into()),
            })
            .collect()
    }
}

/// New sessions, inserted by one statement; if it fails (a handle taken
/// already, or anything else), each is inserted on its own, so that one
/// record's failure is its own.
struct Inserts;

impl Job for Inserts {
    type Ask = SessionRecord;
    type Answer = ();

    async fn run(&self, client: &Client, records: &[SessionRecord]) -> Vec<Result<(), Failed>> {
        if records.len() > 1 && insert_many(client, records).await.is_ok() {
            return records.iter().map(|_| Ok(())).collect();
        }
        let mut answers = Vec::with_capacity(records.len());
        for record in records {
            answers.push(insert(client, record).await);
        }
        answers
    }
}

/// One compare-and-swap of a session's row.
struct Swap {
    handle: String,
    /// The version the decision was made on.
    version: Version,
    next: SessionRecord,
    /// Whether `next` has the stored payload and data (a refresh): they
    /// are then neither sent nor parsed again.
    same_json: bool,
}

/// Compare-and-swap updates, by one statement; a row changed since it was
/// read is left alone and its call told so (false). Only the first swap of
/// a handle in a batch is tried (the others lost to it, or to whatever
/// beat it), in handle order, so that two batches lock the rows they share
/// in the same order. If the statement fails, each swap runs on its own.
struct Swaps;

impl Job for Swaps {
    type Ask = Swap;
    type Answer = bool;

    async fn run(&self, client: &Client, swaps: &[Swap]) -> Vec<Result<bool, Failed>> {
        if let [swap] = swaps {
            return vec![swap_one(client, swap).await];
        }
        let mut order: Vec<usize> = (0..swaps.len()).collect();
        order.sort_by(|&a, &b| swaps[a].handle.cmp(&swaps[b].handle));
        order.dedup_by(|&mut b, &mut a| swaps[a].handle == swaps[b].handle);
        let tried: Vec<&Swap> = order.iter().map(|&i| &swaps[i]).collect();
        let mut answers: Vec<Result<bool, Failed>> = swaps.iter().map(|_| Ok(false)).collect();
        match swap_many(client, &tried).await {
            Ok(applied) => {
                for &i in &order {
                    answers[i] = Ok(applied.contains(swaps[i].handle.as_str()));
                }
            }
            Err(_) => {
                for &i in &order {
                    answers[i] = swap_one(client, &swaps[i]).await;
                }
            }
        }
        answers
    }
}

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
        })
    }

    /// `$1` to `$12`.
    fn all(&self) -> [&(dyn ToSql + Sync); 12] {
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
        ]
    }

    /// `$1` to `$10` of [`UPDATE_LINEAGE_IF`]: all but payload and data.
    fn lineage(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.handle,
            &self.record.user_id,
            &self.record.tenant_id,
            &self.created,
            &self.expires,
            &self.refresh,
            &self.anti_csrf,
            &self.previous,
            &self.previous_anti_csrf,
            &self.rotated,
        ]
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

/// Inserts new records in one statement (one transaction).
async fn insert_many(client: &impl GenericClient, records: &[SessionRecord]) -> Result<(), Failed> {
    let bound = records
        .iter()
        .map(|r| Bound::new(&r.handle, r))
        .collect::<Result<Vec<_>, _>>()?;
    let c = Columns::of(&bound, |_| true);
    let statement = client.prepare_cached(INSERT_MANY).await?;
    client
        .execute(
            &statement,
            &[
                &c.handles,
                &c.users,
                &c.tenants,
                &c.payloads,
                &c.data,
                &c.created,
                &c.expires,
                &c.refresh,
                &c.anti_csrf,
                &c.previous,
                &c.previous_anti_csrf,
                &c.rotated,
            ],
        )
        .await?;
    Ok(())
}

/// Records' columns as arrays, one element per record; the payload and
/// data of a record for which `json` is false are null.
struct Columns<'a> {
    handles: Vec<&'a str>,
    users: Vec<&'a str>,
    tenants: Vec<&'a str>,
    payloads: Vec<Option<Json<&'a Map<String, Value>>>>,
    data: Vec<Option<Json<&'a Map<String, Value>>>>,
    created: Vec<i64>,
    expires: Vec<i64>,
    refresh: Vec<&'a [u8]>,
    anti_csrf: Vec<Option<&'a [u8]>>,
    previous: Vec<Option<&'a [u8]>>,
    previous_anti_csrf: Vec<Option<&'a [u8]>>,
    rotated: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(bound: &[Bound<'a>], json: impl Fn(usize) -> bool) -> Self {
        Self {
            handles: bound.iter().map(|b| b.handle).collect(),
            users: bound.iter().map(|b| b.record.user_id.as_str()).collect(),
            tenants: bound.iter().map(|b| b.record.tenant_id.as_str()).collect(),
            payloads: (bound.iter().enumerate())
                .map(|(i, b)| json(i).then_some(Json(b.payload.0)))
                .collect(),
            data: (bound.iter().enumerate())
                .map(|(i, b)| json(i).then_some(Json(b.data.0)))
                .collect(),
            created: bound.iter().map(|b| b.created).collect(),
            expires: bound.iter().map(|b| b.expires).collect(),
            refresh: bound.iter().map(|b| b.refresh).collect(),
            anti_csrf: bound.iter().map(|b| b.anti_csrf).collect(),
            previous: bound.iter().map(|b| b.previous).collect(),
            previous_anti_csrf: bound.iter().map(|b| b.previous_anti_csrf).collect(),
            rotated: bound.iter().map(|b| b.rotated).collect(),
        }
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

/// One compare-and-swap on its own: whether the row was rewritten.
async fn swap_one(client: &impl GenericClient, swap: &Swap) -> Result<bool, Failed> {
    let bound = Bound::new(&swap.handle, &swap.next)?;
    let written = if swap.same_json {
        let statement = client.prepare_cached(UPDATE_LINEAGE_IF).await?;
        let mut params = bound.lineage().to_vec();
        params.push(&swap.version);
        client.execute(&statement, &params).await?
    } else {
        let statement = client.prepare_cached(UPDATE_IF).await?;
        let mut params = bound.all().to_vec();
        params.push(&swap.version);
        client.execute(&statement, &params).await?
    };
    Ok(written == 1)
}

/// Compare-and-swaps of distinct handles in one statement (one
/// transaction): the handles of the rows rewritten.
async fn swap_many(
    client: &impl GenericClient,
    swaps: &[&Swap],
) -> Result<std::collections::HashSet<String>, Failed> {
    let bound = swaps
        .iter()
        .map(|s| Bound::new(&s.handle, &s.next))
        .collect::<Result<Vec<_>, _>>()?;
    let versions: Vec<&str> = swaps.iter().map(|s| s.version.as_str()).collect();
    let c = Columns::of(&bound, |i| !swaps[i].same_json);
    let statement = client.prepare_cached(UPDATE_MANY_IF).await?;
    let rows = client
        .query(
            &statement,
            &[
                &c.handles,
                &versions,
                &c.users,
                &c.tenants,
                &c.payloads,
                &c.data,
                &c.created,
                &c.expires,
                &c.refresh,
                &c.anti_csrf,
                &c.previous,
                &c.previous_anti_csrf,
                &c.rotated,
            ],
        )
        .await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<_, String>(0)?))
        .collect()
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

/// The failure a batched read answered, which names its operation.
fn answered(e: Failed) -> StoreError {
    match e {
        Failed::Store(e) => e,
        Failed::Db(e) => super::failure("reading a session", e),
    }
}

/// A record and its version from a row of [`READ_VERSIONED`].
fn versioned(row: &Row) -> Result<(SessionRecord, Version), Failed> {
    Ok((decode(row)?, row.try_get(12)?))
}

/// A lineage from a row of [`READ_LINEAGES`].
fn lineage(row: &Row) -> Result<Lineage, Failed> {
    Ok(Lineage {
        user_id: row.try_get(1)?,
        tenant_id: row.try_get(2)?,
        expires_at_ms: from_db(row.try_get(3)?)?,
        current_refresh_hash: hash(row.try_get(4)?)?,
        previous_refresh_hash: row
            .try_get::<_, Option<Vec<u8>>>(5)?
            .map(hash)
            .transpose()?,
    })
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

#[cfg(test)]
mod tests {
    //! The batches' own paths, run directly on one connection so that each
    //! holds several calls (through the queue, how many calls a batch
    //! gathers depends on timing).

    use serde_json::json;

    use super::*;
    use crate::secret::Secret;
    use crate::store::conformance::pg_harness;

    fn record(handle: &str, user: &str) -> SessionRecord {
        SessionRecord {
            handle: handle.to_owned(),
            user_id: user.to_owned(),
            tenant_id: "public".to_owned(),
            access_payload: Map::from_iter([("p".to_owned(), json!(handle))]),
            data: Map::new(),
            created_at_ms: 1,
            expires_at_ms: 100,
            current: Generation {
                refresh_hash: TokenHash([1; 32]),
                anti_csrf_hash: None,
            },
            previous: None,
            rotated_at_ms: 1,
        }
    }

    async fn store(test: &str) -> Option<(PostgresStore, pg_harness::Database)> {
        let db = pg_harness::postgres(test)?;
        let store = PostgresStore::connect(&Secret::new(db.url.clone()), 2)
            .await
            .unwrap();
        Some((store, db))
    }

    #[tokio::test]
    async fn a_batch_of_inserts_meeting_a_taken_handle_writes_each_on_its_own() {
        let test = "a_batch_of_inserts_meeting_a_taken_handle_writes_each_on_its_own";
        let Some((store, _db)) = store(test).await else {
            return;
        };
        store.create_session(&record("a", "first")).await.unwrap();
        let client = store.client().await.unwrap();
        let batch = [record("b", "u"), record("a", "second"), record("c", "u")];
        let answers = Inserts.run(&client, &batch).await;
        assert!(answers.iter().all(Result::is_ok));
        drop(client);
        for r in &batch {
            assert!(
                store.session(&r.handle).await.unwrap().as_ref() == Some(r),
                "{} stored as given (a taken handle overwritten, as create does)",
                r.handle
            );
        }
        let batch = [record("d", "u"), record("e", "u")];
        let client = store.client().await.unwrap();
        assert!(Inserts.run(&client, &batch).await.iter().all(Result::is_ok));
        drop(client);
        assert_eq!(store.count_sessions().await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_batch_of_swaps_rewrites_only_rows_still_at_their_version() {
        let test = "a_batch_of_swaps_rewrites_only_rows_still_at_their_version";
        let Some((store, _db)) = store(test).await else {
            return;
        };
        for h in ["x", "y", "z"] {
            store.create_session(&record(h, "u")).await.unwrap();
        }
        let read = |h: &'static str| store.batches.records.call(h.to_owned());
        let (x, x_version) = read("x").await.ok().flatten().unwrap();
        let (y, y_version) = read("y").await.ok().flatten().unwrap();
        let (z, z_version) = read("z").await.ok().flatten().unwrap();
        // z changes after it was read: its swap must not apply.
        let mut moved = z.clone();
        moved.expires_at_ms = 200;
        store.create_session(&moved).await.unwrap();

        let mut rotated = x.clone();
        rotated.current.refresh_hash = TokenHash([2; 32]);
        rotated.previous = Some(x.current.clone());
        let mut with_data = y.clone();
        with_data.data.insert("n".into(), json!(1));
        let mut stale = z.clone();
        stale.current.refresh_hash = TokenHash([3; 32]);
        let mut second = x.clone();
        second.current.refresh_hash = TokenHash([4; 32]);
        let swap = |next: &SessionRecord, version: &str, same_json| Swap {
            handle: next.handle.clone(),
            version: version.to_owned(),
            next: next.clone(),
            same_json,
        };
        let batch = [
            swap(&stale, &z_version, true),
            swap(&rotated, &x_version, true),
            swap(&with_data, &y_version, false),
            swap(&second, &x_version, true),
        ];
        let client = store.client().await.unwrap();
        let answers: Vec<bool> = Swaps
            .run(&client, &batch)
            .await
            .into_iter()
            .map(|a| a.ok().expect("no failure"))
            .collect();
        drop(client);
        assert_eq!(
            answers,
            [false, true, true, false],
            "the stale swap and a second swap of one row in a batch are refused"
        );
        let stored = |h: &'static str| store.session(h);
        assert!(
            stored("x").await.unwrap() == Some(rotated),
            "rotation stored, payload kept"
        );
        assert!(
            stored("y").await.unwrap() == Some(with_data),
            "data replaced"
        );
        assert!(
            stored("z").await.unwrap() == Some(moved),
            "the row changed since is kept"
        );
        let (_, newer) = read("x").await.ok().flatten().unwrap();
        assert_ne!(newer, x_version, "a rewrite gives the row a new version");
    }
}
