//! [`Durability`] for the PostgreSQL store: when writes are durable (at
//! once: each has committed before its call returned), its size, and
//! export and import for backups.
//!
//! An export reads every table in one read-only `REPEATABLE READ`
//! transaction, so a backup is one consistent snapshot, a batch of rows at
//! a time. This module must
//! never relax the server's `synchronous_commit`, nor make `durable` wait
//! on anything: there is nothing left to flush.

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::{Failed, PostgresStore, keys, sessions, user_data};
use crate::store::{BoxFuture, Durability, Exported, StoreError};

/// Rows an export reads from the server at a time.
const EXPORT_BATCH: i32 = 1000;

/// Hands every row `sql` selects in `tx` to `each`, reading them in batches
/// of [`EXPORT_BATCH`] through a portal, so that an export of any size
/// holds one batch in memory.
async fn each_row(
    tx: &Transaction<'_>,
    sql: &str,
    mut each: impl FnMut(&Row) -> Result<(), Failed>,
) -> Result<(), Failed> {
    let statement = tx.prepare(sql).await?;
    let portal = tx.bind(&statement, &[]).await?;
    loop {
        let rows = tx.query_portal(&portal, EXPORT_BATCH).await?;
        if rows.is_empty() {
            return Ok(());
        }
        rows.iter().try_for_each(&mut each)?;
    }
}

impl PostgresStore {
    async fn try_export(
        &self,
        visit: &mut (dyn FnMut(Exported) -> Result<(), StoreError> + Send),
    ) -> Result<(), Failed> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let sql = format!("SELECT {} FROM sessiond_sessions", sessions::COLUMNS);
        each_row(&tx, &sql, |row| {
            Ok(visit(Exported::Session(Box::new(sessions::decode(row)?)))?)
        })
        .await?;
        let sql = "SELECT public, private, user_identifier, tenant_id, user_id \
                   FROM sessiond_user_data";
        each_row(&tx, sql, |row| {
            Ok(visit(Exported::UserData {
                data: user_data::decode(row)?,
                tenant_id: row.try_get(3)?,
                user_id: row.try_get(4)?,
            })?)
        })
        .await?;
        let sql = format!("SELECT {} FROM sessiond_keys", keys::COLUMNS);
        each_row(&tx, &sql, |row| {
            Ok(visit(Exported::Key(keys::decode(row)?))?)
        })
        .await?;
        each_row(&tx, "SELECT name, value FROM sessiond_secrets", |row| {
            Ok(visit(Exported::Secret {
                name: row.try_get(0)?,
                value: row.try_get(1)?,
            })?)
        })
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Durability for PostgresStore {
    async fn writable(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.probe.as_ref().map(|p| p.subscribe())
    }

    fn durable(&self) -> BoxFuture<Result<(), StoreError>> {
        // Every write returned after its transaction committed, with the
        // server's synchronous_commit as it is (on by default).
        Box::pin(async { Ok(()) })
    }

    async fn size_on_disk(&self) -> Result<u64, StoreError> {
        let size = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                     FROM pg_class c WHERE c.relkind = 'r' AND c.relname IN \
                     ('sessiond_sessions', 'sessiond_user_data', 'sessiond_keys', \
                      'sessiond_secrets', 'sessiond_schema') \
                     AND pg_table_is_visible(c.oid)",
                )
                .await?;
            let bytes: i64 = client.query_one(&statement, &[]).await?.try_get(0)?;
            Ok(super::from_db(bytes)?)
        };
        size.await
            .map_err(|e: Failed| e.during("measuring the store"))
    }

    async fn export(
        &self,
        visit: &mut (dyn FnMut(Exported) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        self.try_export(visit)
            .await
            .map_err(|e| e.during("exporting the store"))
    }

    async fn import(&self, item: Exported) -> Result<(), StoreError> {
        let client = self.client().await?;
        let written = match &item {
            Exported::Session(r) => sessions::upsert(&client, &r.handle, r).await,
            Exported::UserData {
                tenant_id,
                user_id,
                data,
            } => user_data::upsert(&client, tenant_id, user_id, data).await,
            Exported::Key(k) => keys::upsert(&client, k).await,
            Exported::Secret { name, value } => keys::put_secret(&client, name, value).await,
        };
        written.map_err(|e| e.during("importing a record"))
    }
}
