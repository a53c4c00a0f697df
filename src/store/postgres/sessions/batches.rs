//! The batched calls on sessions: reads by handle, inserts and
//! compare-and-swap updates, each a [`Job`] of [`batch`](super::super::batch)
//! with its statement over arrays, and how a failed batch falls back to
//! running each of its calls on its own. It writes only what its callers
//! decided, to the rows they decided it on.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{Client, GenericClient, Pool};
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};

use super::super::batch::{self, Batched, Job, copy};
use super::super::{Failed, from_db};
use super::{Bound, UPDATE_IF, UPDATE_LINEAGE_IF, Version, decode, hash, insert};
use crate::store::{Lineage, SessionRecord, Timeouts};

/// Whole records with their versions, by handle (batched).
const READ_VERSIONED: &str = concat!(
    "SELECT ",
    columns!(),
    ", xmin::text FROM sessiond_sessions WHERE handle = ANY($1)"
);

/// Lineages by handle (batched).
const READ_LINEAGES: &str = "SELECT handle, user_id, tenant_id, expires_at_ms, refresh_hash, \
     previous_refresh_hash, created_at_ms, last_active_ms, idle_timeout_ms, max_lifetime_ms \
     FROM sessiond_sessions WHERE handle = ANY($1)";

/// New records, one per element of the arrays (batched).
const INSERT_MANY: &str = concat!(
    "INSERT INTO sessiond_sessions (",
    columns!(),
    ") SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], \
     $6::int8[], $7::int8[], $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[], $12::int8[], \
     $13::int8[], $14::int8[], $15::int8[], $16::text[], $17::text[], $18::text[])"
);

/// [`UPDATE_IF`] for many records (batched): each row is rewritten only if
/// it is still at its version; a null payload or data keeps the stored
/// one. Returns the handles of the rows rewritten.
const UPDATE_MANY_IF: &str = "UPDATE sessiond_sessions AS s SET user_id = v.user_id, \
     tenant_id = v.tenant_id, access_payload = coalesce(v.access_payload, s.access_payload), \
     data = coalesce(v.data, s.data), created_at_ms = v.created_at_ms, \
     expires_at_ms = v.expires_at_ms, refresh_hash = v.refresh_hash, \
     anti_csrf_hash = v.anti_csrf_hash, previous_refresh_hash = v.previous_refresh_hash, \
     previous_anti_csrf_hash = v.previous_anti_csrf_hash, rotated_at_ms = v.rotated_at_ms, \
     last_active_ms = v.last_active_ms, idle_timeout_ms = v.idle_timeout_ms, \
     max_lifetime_ms = v.max_lifetime_ms, device_ip = v.device_ip, \
     device_user_agent = v.device_user_agent, device_label = v.device_label \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], \
     $7::int8[], $8::int8[], $9::bytea[], $10::bytea[], $11::bytea[], $12::bytea[], $13::int8[], \
     $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::text[], $19::text[]) \
     AS v(handle, version, user_id, tenant_id, access_payload, data, created_at_ms, \
     expires_at_ms, refresh_hash, anti_csrf_hash, previous_refresh_hash, \
     previous_anti_csrf_hash, rotated_at_ms, last_active_ms, idle_timeout_ms, max_lifetime_ms, \
     device_ip, device_user_agent, device_label) \
     WHERE s.handle = v.handle AND s.xmin::text = v.version \
     RETURNING s.handle";

/// Most read batches in flight at once.
const READS_IN_FLIGHT: usize = 2;

/// Most write batches in flight at once (PostgreSQL's own group commit
/// joins their commits).
const WRITES_IN_FLIGHT: usize = 4;

/// The batched calls on sessions.
pub(in crate::store::postgres) struct Batches {
    pub(super) records: Batched<ByHandle<(SessionRecord, Version)>>,
    pub(super) lineages: Batched<ByHandle<Lineage>>,
    pub(super) inserts: Batched<Inserts>,
    pub(super) swaps: Batched<Swaps>,
}

impl Batches {
    /// Batches on `pool`, with at most a few of them in flight.
    pub(in crate::store::postgres) fn new(pool: &Pool, pool_size: usize) -> Self {
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
pub(super) struct ByHandle<T> {
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
        let mut found = HashMap::with_capacity(rows.len());
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
pub(super) struct Inserts;

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
pub(super) struct Swap {
    pub(super) handle: String,
    /// The version the decision was made on.
    pub(super) version: Version,
    pub(super) next: SessionRecord,
    /// Whether `next` has the stored payload and data (a refresh): they
    /// are then neither sent nor parsed again.
    pub(super) same_json: bool,
}

/// Compare-and-swap updates, by one statement; a row changed since it was
/// read is left alone and its call told so (false). Only the first swap of
/// a handle in a batch is tried (the others lost to it, or to whatever
/// beat it), in handle order, so that two batches lock the rows they share
/// in the same order. If the statement fails, each swap runs on its own.
pub(super) struct Swaps;

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

/// Inserts new records in one statement (one transaction).
async fn insert_many(client: &impl GenericClient, records: &[SessionRecord]) -> Result<(), Failed> {
    let bound = records
        .iter()
        .map(|r| Bound::new(&r.handle, r))
        .collect::<Result<Vec<_>, _>>()?;
    let c = Columns::of(&bound, |_| true);
    let statement = client.prepare_cached(INSERT_MANY).await?;
    client.execute(&statement, &c.params()).await?;
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
    last_active: Vec<i64>,
    idle: Vec<i64>,
    max_lifetime: Vec<i64>,
    device_ip: Vec<&'a str>,
    device_user_agent: Vec<&'a str>,
    device_label: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    /// The arrays in the order of [`COLUMNS`](super::COLUMNS), as a
    /// statement binds them.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.handles,
            &self.users,
            &self.tenants,
            &self.payloads,
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
            &self.device_ip,
            &self.device_user_agent,
            &self.device_label,
        ]
    }

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
            last_active: bound.iter().map(|b| b.last_active).collect(),
            idle: bound.iter().map(|b| b.idle).collect(),
            max_lifetime: bound.iter().map(|b| b.max_lifetime).collect(),
            device_ip: (bound.iter())
                .map(|b| b.record.device.ip_address.as_str())
                .collect(),
            device_user_agent: (bound.iter())
                .map(|b| b.record.device.user_agent.as_str())
                .collect(),
            device_label: bound
                .iter()
                .map(|b| b.record.device.label.as_str())
                .collect(),
        }
    }
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
) -> Result<HashSet<String>, Failed> {
    let bound = swaps
        .iter()
        .map(|s| Bound::new(&s.handle, &s.next))
        .collect::<Result<Vec<_>, _>>()?;
    let versions: Vec<&str> = swaps.iter().map(|s| s.version.as_str()).collect();
    let c = Columns::of(&bound, |i| !swaps[i].same_json);
    // The handles, then the versions, then the other columns.
    let mut params = c.params();
    params.insert(1, &versions);
    let statement = client.prepare_cached(UPDATE_MANY_IF).await?;
    let rows = client.query(&statement, &params).await?;
    rows.iter()
        .map(|row| Ok(row.try_get::<_, String>(0)?))
        .collect()
}

/// A record and its version from a row of [`READ_VERSIONED`].
fn versioned(row: &Row) -> Result<(SessionRecord, Version), Failed> {
    Ok((decode(row)?, row.try_get(18)?))
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
        created_at_ms: from_db(row.try_get(6)?)?,
        last_active_ms: from_db(row.try_get(7)?)?,
        timeouts: Timeouts {
            idle_ms: from_db(row.try_get(8)?)?,
            max_lifetime_ms: from_db(row.try_get(9)?)?,
        },
    })
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
    use crate::store::{Generation, PostgresStore, Sessions, TokenHash};

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
            last_active_ms: 1,
            timeouts: Default::default(),
            device: Default::default(),
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
