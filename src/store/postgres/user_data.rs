//! Users' buckets in PostgreSQL: one row per (tenant, user) in
//! `sessiond_user_data`, the public and private buckets as `jsonb`.
//!
//! An update locks the row (`SELECT ... FOR UPDATE`) and decides and
//! writes in the same transaction; when there is no row yet, it inserts
//! one with `ON CONFLICT DO NOTHING` and, if a concurrent first write won,
//! runs again against that row. This module must never write a row for an
//! update that kept the buckets as they were.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use serde_json::{Map, Value};
use tokio_postgres::Row;
use tokio_postgres::types::Json;

use super::{Failed, PostgresStore};
use crate::store::{StoreError, UserData, UserDataStore};

fn object(value: Value) -> Result<Map<String, Value>, StoreError> {
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::Corrupt(
            "a user's bucket is not an object".into(),
        )),
    }
}

/// Buckets from a row of `public, private, user_identifier`.
pub(super) fn decode(row: &Row) -> Result<UserData, Failed> {
    Ok(UserData {
        public: object(row.try_get(0)?)?,
        private: object(row.try_get(1)?)?,
        user_identifier: row.try_get(2)?,
    })
}

/// Writes a user's buckets, whether or not they exist.
pub(super) async fn upsert(
    client: &impl GenericClient,
    tenant_id: &str,
    user_id: &str,
    data: &UserData,
) -> Result<(), Failed> {
    let statement = client
        .prepare_cached(
            "INSERT INTO sessiond_user_data (tenant_id, user_id, public, private, user_identifier) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, user_id) DO UPDATE SET \
             public = EXCLUDED.public, private = EXCLUDED.private, \
             user_identifier = EXCLUDED.user_identifier",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &tenant_id,
                &user_id,
                &Json(&data.public),
                &Json(&data.private),
                &data.user_identifier,
            ],
        )
        .await?;
    Ok(())
}

/// What one attempt at an update did.
enum Attempt {
    Stored(UserData),
    /// A concurrent first write made the row this attempt meant to insert.
    Raced,
}

impl PostgresStore {
    async fn try_update_user_data(
        client: &mut deadpool_postgres::Client,
        tenant_id: &str,
        user_id: &str,
        change: &mut (dyn for<'r> FnMut(&'r UserData) -> Option<UserData> + Send),
    ) -> Result<Attempt, Failed> {
        let tx = client.transaction().await?;
        let statement = tx
            .prepare_cached(
                "SELECT public, private, user_identifier FROM sessiond_user_data \
                 WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
            )
            .await?;
        let current = tx
            .query_opt(&statement, &[&tenant_id, &user_id])
            .await?
            .as_ref()
            .map(decode)
            .transpose()?;
        let exists = current.is_some();
        let current = current.unwrap_or_default();
        let Some(next) = change(&current) else {
            tx.commit().await?;
            return Ok(Attempt::Stored(current));
        };
        if exists {
            upsert(&tx, tenant_id, user_id, &next).await?;
        } else {
            let statement = tx
                .prepare_cached(
                    "INSERT INTO sessiond_user_data \
                     (tenant_id, user_id, public, private, user_identifier) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, user_id) DO NOTHING",
                )
                .await?;
            let inserted = tx
                .execute(
                    &statement,
                    &[
                        &tenant_id,
                        &user_id,
                        &Json(&next.public),
                        &Json(&next.private),
                        &next.user_identifier,
                    ],
                )
                .await?;
            if inserted == 0 {
                tx.rollback().await?;
                return Ok(Attempt::Raced);
            }
        }
        tx.commit().await?;
        Ok(Attempt::Stored(next))
    }
}

#[async_trait]
impl UserDataStore for PostgresStore {
    async fn user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
    ) -> Result<Option<UserData>, StoreError> {
        let read = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT public, private, user_identifier FROM sessiond_user_data \
                     WHERE tenant_id = $1 AND user_id = $2",
                )
                .await?;
            client
                .query_opt(&statement, &[&tenant_id, &user_id])
                .await?
                .as_ref()
                .map(decode)
                .transpose()
        };
        read.await
            .map_err(|e: Failed| e.during("reading a user's buckets"))
    }

    async fn update_user_data(
        &self,
        tenant_id: &str,
        user_id: &str,
        change: &mut (dyn for<'r> FnMut(&'r UserData) -> Option<UserData> + Send),
    ) -> Result<UserData, StoreError> {
        let op = "updating a user's buckets";
        let mut client = self.client().await?;
        let mut tries = 0;
        // A lost race to insert the first row ends once the row exists:
        // the next attempt locks it. The bound is a guard, not a schedule.
        for _ in 0..=super::RETRIES {
            match Self::try_update_user_data(&mut client, tenant_id, user_id, change).await {
                Ok(Attempt::Stored(data)) => return Ok(data),
                Ok(Attempt::Raced) => {}
                Err(e) => e.retry(op, &mut tries)?,
            }
        }
        Err(StoreError::Backend(format!(
            "{op}: gave up after {} conflicting attempts",
            super::RETRIES + 1
        )))
    }
}
