//! Signing keys and server secrets in PostgreSQL: `sessiond_keys` (one
//! row per key id, its private key as the opaque bytes the key ring hands
//! over) and `sessiond_secrets` (name and bytes).
//!
//! A key is added by [`KeysAndSecrets::add_key`] under a transaction-level
//! advisory lock, so that replicas racing to add the same successor add one.
//! An upsert keeps the larger of the stored and given verification windows.
//!
//! A secret is created at most once (`INSERT ... ON CONFLICT DO NOTHING`,
//! then the stored value is read back, so concurrent first calls on any
//! replica agree), and replaced only by compare-and-swap in one `UPDATE`.
//! This module must never log or put into an error a key's or a secret's
//! bytes.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::{Failed, PostgresStore, from_db, to_db};
use crate::store::{KeyRecord, KeySlot, KeysAndSecrets, StoreError};

/// The advisory lock key under which keys are added (distinct from the
/// migrations' lock).
const KEY_RING_LOCK: i64 = 0x5345_5353_4b45_5953; // "SESSKEYS"

/// The columns of a key, in the order [`decode`] reads them.
pub(super) const COLUMNS: &str = "kid, alg, private_key, created_at_ms, signs_from_ms, \
     max_token_lifetime_ms, max_jwt_exp_ms, is_static";

/// A key from a row of [`COLUMNS`].
pub(super) fn decode(row: &Row) -> Result<KeyRecord, Failed> {
    Ok(KeyRecord {
        kid: row.try_get(0)?,
        alg: row.try_get(1)?,
        private_key: row.try_get(2)?,
        created_at_ms: from_db(row.try_get(3)?)?,
        signs_from_ms: from_db(row.try_get(4)?)?,
        max_token_lifetime_ms: from_db(row.try_get(5)?)?,
        max_jwt_exp_ms: from_db(row.try_get(6)?)?,
        is_static: row.try_get(7)?,
    })
}

/// Writes a key, replacing one of the same id but never shortening its
/// verification window (see [`KeyRecord::widened_by`]).
pub(super) async fn upsert(client: &impl GenericClient, key: &KeyRecord) -> Result<(), Failed> {
    let times = [
        to_db(key.created_at_ms)?,
        to_db(key.signs_from_ms)?,
        to_db(key.max_token_lifetime_ms)?,
        to_db(key.max_jwt_exp_ms)?,
    ];
    let statement = client
        .prepare_cached(
            "INSERT INTO sessiond_keys (kid, alg, private_key, created_at_ms, signs_from_ms, \
             max_token_lifetime_ms, max_jwt_exp_ms, is_static) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (kid) DO UPDATE SET alg = EXCLUDED.alg, \
             private_key = EXCLUDED.private_key, created_at_ms = EXCLUDED.created_at_ms, \
             signs_from_ms = EXCLUDED.signs_from_ms, \
             max_token_lifetime_ms = GREATEST(sessiond_keys.max_token_lifetime_ms, \
             EXCLUDED.max_token_lifetime_ms), \
             max_jwt_exp_ms = GREATEST(sessiond_keys.max_jwt_exp_ms, EXCLUDED.max_jwt_exp_ms), \
             is_static = EXCLUDED.is_static",
        )
        .await?;
    client
        .execute(
            &statement,
            &[
                &key.kid,
                &key.alg,
                &key.private_key,
                &times[0],
                &times[1],
                &times[2],
                &times[3],
                &key.is_static,
            ],
        )
        .await?;
    Ok(())
}

/// Writes a secret, replacing one of the same name.
pub(super) async fn put_secret(
    client: &impl GenericClient,
    name: &str,
    value: &[u8],
) -> Result<(), Failed> {
    let statement = client
        .prepare_cached(
            "INSERT INTO sessiond_secrets (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        )
        .await?;
    client.execute(&statement, &[&name, &value]).await?;
    Ok(())
}

impl PostgresStore {
    async fn read_secret(
        client: &impl GenericClient,
        name: &str,
    ) -> Result<Option<Vec<u8>>, Failed> {
        let statement = client
            .prepare_cached("SELECT value FROM sessiond_secrets WHERE name = $1")
            .await?;
        Ok(client
            .query_opt(&statement, &[&name])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?)
    }
}

#[async_trait]
impl KeysAndSecrets for PostgresStore {
    async fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let read = async {
            let client = self.client().await?;
            let sql = format!("SELECT {COLUMNS} FROM sessiond_keys ORDER BY kid");
            let statement = client.prepare_cached(&sql).await?;
            let rows = client.query(&statement, &[]).await?;
            rows.iter().map(decode).collect::<Result<Vec<_>, _>>()
        };
        read.await.map_err(|e: Failed| e.during("reading the keys"))
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        upsert(&client, key)
            .await
            .map_err(|e| e.during("writing a key"))
    }

    async fn add_key(&self, key: &KeyRecord, slot: KeySlot<'_>) -> Result<bool, StoreError> {
        let add = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // Every replica adding a key takes this lock first, so the ring
            // read below is still the ring when the key is written.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEY_RING_LOCK])
                .await?;
            let sql = format!("SELECT {COLUMNS} FROM sessiond_keys");
            let keys = tx
                .query(&sql, &[])
                .await?
                .iter()
                .map(decode)
                .collect::<Result<Vec<_>, _>>()?;
            if !slot.is_free(&keys) || keys.iter().any(|k| k.kid == key.kid) {
                return Ok(false);
            }
            upsert(&tx, key).await?;
            tx.commit().await?;
            Ok(true)
        };
        add.await.map_err(|e: Failed| e.during("adding a key"))
    }

    async fn delete_key(&self, kid: &str) -> Result<(), StoreError> {
        let delete = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached("DELETE FROM sessiond_keys WHERE kid = $1")
                .await?;
            client.execute(&statement, &[&kid]).await?;
            Ok(())
        };
        delete.await.map_err(|e: Failed| e.during("deleting a key"))
    }

    async fn secret(
        &self,
        name: &str,
        make: &mut (dyn FnMut() -> Vec<u8> + Send),
    ) -> Result<Vec<u8>, StoreError> {
        let read_or_make = async {
            let client = self.client().await?;
            if let Some(value) = Self::read_secret(&client, name).await? {
                return Ok(value);
            }
            let made = make();
            let statement = client
                .prepare_cached(
                    "INSERT INTO sessiond_secrets (name, value) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .await?;
            client.execute(&statement, &[&name, &made]).await?;
            // Whoever inserted first, this is the one value now.
            Self::read_secret(&client, name).await?.ok_or_else(|| {
                Failed::Store(StoreError::Backend(
                    "a secret vanished as it was created".into(),
                ))
            })
        };
        read_or_make
            .await
            .map_err(|e: Failed| e.during("reading a secret"))
    }

    async fn replace_secret(
        &self,
        name: &str,
        current: &[u8],
        new: &[u8],
    ) -> Result<bool, StoreError> {
        let swap = async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "UPDATE sessiond_secrets SET value = $3 WHERE name = $1 AND value = $2",
                )
                .await?;
            Ok(client.execute(&statement, &[&name, &current, &new]).await? == 1)
        };
        swap.await
            .map_err(|e: Failed| e.during("replacing a secret"))
    }
}
