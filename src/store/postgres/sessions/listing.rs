//! Listing sessions in PostgreSQL: every user's in handle order, one
//! user's in (tenant, newest first, handle) order through the user index,
//! and creates held to the per-user limit under an advisory lock.

use tokio_postgres::Row;

use super::super::{Failed, PostgresStore, from_db, to_db};
use super::insert;
use crate::store::{
    Admission, Device, ListedSession, SessionLimit, SessionQuery, SessionRecord, SessionsPage,
    Timeouts, UserQuery,
};

/// The columns of a listed session, in the order [`listed`] reads them.
pub(super) const LISTED: &str = "handle, user_id, tenant_id, created_at_ms, expires_at_ms, \
     last_active_ms, idle_timeout_ms, max_lifetime_ms, device_ip, device_user_agent, \
     device_label";

/// A listed session from a row of [`LISTED`].
pub(super) fn listed(row: &Row) -> Result<ListedSession, Failed> {
    Ok(ListedSession {
        handle: row.try_get(0)?,
        user_id: row.try_get(1)?,
        tenant_id: row.try_get(2)?,
        created_at_ms: from_db(row.try_get(3)?)?,
        expires_at_ms: from_db(row.try_get(4)?)?,
        last_active_ms: from_db(row.try_get(5)?)?,
        timeouts: Timeouts {
            idle_ms: from_db(row.try_get(6)?)?,
            max_lifetime_ms: from_db(row.try_get(7)?)?,
        },
        device: Device {
            ip_address: row.try_get(8)?,
            user_agent: row.try_get(9)?,
            label: row.try_get(10)?,
        },
    })
}

/// One more than a page holds: a query for that many tells whether more follow.
fn one_more(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

/// A page of the rows of [`LISTED`].
fn page_of(rows: &[Row], limit: usize) -> Result<SessionsPage, Failed> {
    let mut page = SessionsPage::default();
    for row in rows {
        if !page.offer(listed(row)?, limit) {
            break;
        }
    }
    Ok(page)
}

/// The advisory lock of creates of `user_id`'s sessions in `tenant_id`
/// under a session limit: the first 8 bytes of a SHA-256 of both, behind a
/// tag no other lock of sessiond's uses.
fn limit_lock(user_id: &str, tenant_id: &str) -> i64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"sessiond session limit\0");
    ctx.update(&(user_id.len() as u64).to_be_bytes());
    ctx.update(user_id.as_bytes());
    ctx.update(tenant_id.as_bytes());
    let digest = ctx.finish();
    i64::from_be_bytes(digest.as_ref()[..8].try_into().expect("8 bytes"))
}

impl PostgresStore {
    /// [`Sessions::create_session_within`], in one transaction that holds
    /// the user and tenant's advisory lock from the count to the insert.
    pub(super) async fn create_within(
        &self,
        record: &SessionRecord,
        limit: &SessionLimit,
    ) -> Result<Admission, Failed> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1)")
            .await?;
        tx.execute(
            &statement,
            &[&limit_lock(&record.user_id, &record.tenant_id)],
        )
        .await?;
        let sql = format!(
            "SELECT {LISTED} FROM sessiond_sessions \
             WHERE user_id = $1 AND tenant_id = $2 AND ends_at_ms > $3"
        );
        let statement = tx.prepare_cached(&sql).await?;
        let live = tx
            .query(
                &statement,
                &[
                    &record.user_id,
                    &record.tenant_id,
                    &to_db(limit.live_at_ms)?,
                ],
            )
            .await?
            .iter()
            .map(listed)
            .collect::<Result<Vec<_>, _>>()?;
        let Some(evicted) = limit.make_room(live) else {
            return Ok(Admission::Refused);
        };
        if !evicted.is_empty() {
            let handles: Vec<&str> = evicted.iter().map(|s| s.handle.as_str()).collect();
            let statement = tx
                .prepare_cached("DELETE FROM sessiond_sessions WHERE handle = ANY($1)")
                .await?;
            tx.execute(&statement, &[&handles]).await?;
        }
        insert(&tx, record).await?;
        tx.commit().await?;
        Ok(Admission::Created { evicted })
    }
    /// [`Sessions::list_sessions`].
    pub(super) async fn list_page(&self, query: &SessionQuery<'_>) -> Result<SessionsPage, Failed> {
        {
            let live = to_db(query.live_at_ms)?;
            let client = self.client().await?;
            let sql = format!(
                "SELECT {LISTED} FROM sessiond_sessions \
                 WHERE ($1::text IS NULL OR handle > $1) \
                   AND ($2::text IS NULL OR tenant_id = $2) AND ends_at_ms > $3 \
                 ORDER BY handle LIMIT $4"
            );
            let statement = client.prepare_cached(&sql).await?;
            let rows = client
                .query(
                    &statement,
                    &[
                        &query.after,
                        &query.tenant_id,
                        &live,
                        &one_more(query.limit),
                    ],
                )
                .await?;
            page_of(&rows, query.limit)
        }
    }

    /// [`Sessions::user_sessions_page`].
    pub(super) async fn user_page(&self, query: &UserQuery<'_>) -> Result<SessionsPage, Failed> {
        let live = to_db(query.live_at_ms)?;
        // Rows after the cursor in (tenant, newest first, handle) order,
        // the user index's, written so that the index seeks to the cursor
        // (a row comparison in mixed directions would scan up to it). With
        // no cursor: before the latest time, after the empty tenant and
        // handle (a stored tenant is never empty).
        let (tenant, created, handle) = match query.after {
            Some(c) => (
                c.tenant_id.as_str(),
                to_db(c.created_at_ms)?,
                c.handle.as_str(),
            ),
            None => ("", i64::MAX, ""),
        };
        let (sql, scope) = match query.tenant_id {
            Some(only) => (
                format!(
                    "SELECT {LISTED} FROM sessiond_sessions \
                     WHERE user_id = $1 AND tenant_id = $2 AND created_at_ms <= $3 \
                       AND (created_at_ms < $3 OR handle > $4) AND ends_at_ms > $5 \
                     ORDER BY created_at_ms DESC, handle LIMIT $6"
                ),
                only,
            ),
            None => (
                format!(
                    "SELECT {LISTED} FROM sessiond_sessions \
                     WHERE user_id = $1 AND tenant_id >= $2 \
                       AND (tenant_id > $2 OR created_at_ms < $3 \
                            OR (created_at_ms = $3 AND handle > $4)) \
                       AND ends_at_ms > $5 \
                     ORDER BY tenant_id, created_at_ms DESC, handle LIMIT $6"
                ),
                tenant,
            ),
        };
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await?;
        let rows = client
            .query(
                &statement,
                &[
                    &query.user_id,
                    &scope,
                    &created,
                    &handle,
                    &live,
                    &one_more(query.limit),
                ],
            )
            .await?;
        page_of(&rows, query.limit)
    }
}
