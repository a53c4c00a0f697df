//! The PostgreSQL store's schema: its migrations, embedded in the binary
//! as SQL, and how they are applied when the store is opened.
//!
//! Migrations run in one transaction under a transaction-level advisory
//! lock (`pg_advisory_xact_lock`), so that replicas starting together
//! apply each one once, and a failed start leaves the schema as it was.
//! Each applied version is recorded in `sessiond_schema`. A database whose
//! recorded version is newer than the binary knows is refused: an older
//! binary must never write to a schema it does not understand. Migrations
//! are only ever appended; this module must never edit or reorder one that
//! has shipped.

use deadpool_postgres::Client;

use super::{StoreError, failure};

/// The advisory lock key the migrations are applied under (any constant
/// that other applications sharing the database are unlikely to use).
const LOCK: i64 = 0x5345_5353_494f_4e44; // "SESSIOND"

/// The migrations, in order: `MIGRATIONS[i]` brings the schema to version
/// `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: sessions, buckets, keys and secrets.
    r#"
    CREATE TABLE sessiond_sessions (
        handle text COLLATE "C" PRIMARY KEY,
        user_id text NOT NULL,
        tenant_id text NOT NULL,
        access_payload jsonb NOT NULL,
        data jsonb NOT NULL,
        created_at_ms bigint NOT NULL,
        expires_at_ms bigint NOT NULL,
        refresh_hash bytea NOT NULL CHECK (length(refresh_hash) = 32),
        anti_csrf_hash bytea CHECK (length(anti_csrf_hash) = 32),
        previous_refresh_hash bytea CHECK (length(previous_refresh_hash) = 32),
        previous_anti_csrf_hash bytea CHECK (length(previous_anti_csrf_hash) = 32),
        rotated_at_ms bigint NOT NULL
    );
    -- Listing a user's sessions, in one tenant or in all of them.
    CREATE INDEX sessiond_sessions_user ON sessiond_sessions (user_id, tenant_id);
    -- Sweeping expired sessions.
    CREATE INDEX sessiond_sessions_expiry ON sessiond_sessions (expires_at_ms);

    CREATE TABLE sessiond_user_data (
        tenant_id text NOT NULL,
        user_id text NOT NULL,
        public jsonb NOT NULL,
        private jsonb NOT NULL,
        user_identifier text,
        PRIMARY KEY (tenant_id, user_id)
    );

    CREATE TABLE sessiond_keys (
        kid text PRIMARY KEY,
        alg text NOT NULL,
        private_pkcs8 bytea NOT NULL,
        sealed_nonce bytea,
        sealed_ciphertext bytea,
        created_at_ms bigint NOT NULL,
        signs_from_ms bigint NOT NULL,
        max_token_lifetime_ms bigint NOT NULL,
        max_jwt_exp_ms bigint NOT NULL,
        is_static boolean NOT NULL
    );

    CREATE TABLE sessiond_secrets (
        name text PRIMARY KEY,
        value bytea NOT NULL
    );
    "#,
    // 2: a key's private key in one opaque column, as the key ring hands it
    // over. A key sealed under version 1 kept its nonce and ciphertext apart;
    // joined behind the sealed-value prefix they are the one sealed value
    // the key ring reads (`crate::secret::sealed`).
    r#"
    ALTER TABLE sessiond_keys ADD COLUMN private_key bytea;
    UPDATE sessiond_keys SET private_key = CASE
        WHEN sealed_nonce IS NULL THEN private_pkcs8
        ELSE convert_to('sealed:aes-256-gcm:', 'UTF8') || sealed_nonce || sealed_ciphertext
    END;
    ALTER TABLE sessiond_keys
        ALTER COLUMN private_key SET NOT NULL,
        DROP COLUMN private_pkcs8,
        DROP COLUMN sealed_nonce,
        DROP COLUMN sealed_ciphertext;
    "#,
    // 3: session activity, timeouts of their own and devices; the end the
    // sweep and listings go by (the refresh expiry, or the idle timeout
    // after the last activity, whichever is first); a user's sessions
    // indexed per tenant, newest first.
    r#"
    ALTER TABLE sessiond_sessions
        ADD COLUMN last_active_ms bigint,
        ADD COLUMN idle_timeout_ms bigint NOT NULL DEFAULT 0,
        ADD COLUMN max_lifetime_ms bigint NOT NULL DEFAULT 0,
        ADD COLUMN device_ip text NOT NULL DEFAULT '',
        ADD COLUMN device_user_agent text NOT NULL DEFAULT '',
        ADD COLUMN device_label text NOT NULL DEFAULT '';
    UPDATE sessiond_sessions SET last_active_ms = rotated_at_ms;
    ALTER TABLE sessiond_sessions ALTER COLUMN last_active_ms SET NOT NULL;
    ALTER TABLE sessiond_sessions ADD COLUMN ends_at_ms bigint GENERATED ALWAYS AS (
        CASE WHEN idle_timeout_ms > 0
            THEN least(expires_at_ms, last_active_ms + idle_timeout_ms)
            ELSE expires_at_ms END
    ) STORED;
    DROP INDEX sessiond_sessions_user;
    CREATE INDEX sessiond_sessions_user
        ON sessiond_sessions (user_id, tenant_id, created_at_ms DESC, handle);
    DROP INDEX sessiond_sessions_expiry;
    CREATE INDEX sessiond_sessions_ends ON sessiond_sessions (ends_at_ms);
    "#,
];

/// The schema version this binary writes.
pub(super) fn latest() -> i32 {
    MIGRATIONS.len() as i32
}

/// Brings the schema to [`latest`]; returns how many migrations this call
/// applied (none when another process already did).
pub(super) async fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    let failed = |e| failure("applying the schema", e);
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sessiond_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(failed)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM sessiond_schema", &[])
        .await
        .map_err(failed)?
        .get(0);
    if found > latest() {
        return Err(StoreError::Backend(format!(
            "the database's schema is version {found}, newer than this sessiond knows \
             (version {}): run a sessiond at least as new as the one that upgraded it",
            latest()
        )));
    }
    let mut applied = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).await.map_err(failed)?;
        tx.execute(
            "INSERT INTO sessiond_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(failed)?;
        applied += 1;
    }
    tx.commit().await.map_err(failed)?;
    if applied > 0 {
        tracing::info!(applied, version = latest(), "applied the database schema");
    }
    Ok(applied)
}
