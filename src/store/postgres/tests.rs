//! Tests of the PostgreSQL store beyond the conformance suite: its
//! migrations, its pool's bound, and what its errors say. Each runs
//! against a throwaway database and is skipped without PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{PostgresStore, schema};
use crate::secret::Secret;
use crate::store::conformance::pg_harness;
use crate::store::{KeysAndSecrets, Sessions, StoreError};

fn versions(db: &pg_harness::Database) -> String {
    db.cluster()
        .sql(
            &db.name,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM sessiond_schema",
        )
        .unwrap()
}

fn all_versions() -> String {
    (1..=schema::latest())
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn applying_the_schema_again_changes_nothing() {
    let Some(db) = pg_harness::postgres("applying_the_schema_again_changes_nothing") else {
        return;
    };
    let url = Secret::new(db.url.clone());
    let store = PostgresStore::connect(&url, 2).await.unwrap();
    store.secret("kept", &mut || vec![1, 2, 3]).await.unwrap();
    let mut client = store.client().await.unwrap();
    assert_eq!(schema::migrate(&mut client).await.unwrap(), 0);
    drop(client);
    let again = PostgresStore::connect(&url, 2).await.unwrap();
    assert_eq!(versions(&db), all_versions(), "each version recorded once");
    assert_eq!(
        again.secret("kept", &mut || vec![9]).await.unwrap(),
        vec![1, 2, 3],
        "a second start keeps what was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_apply_the_schema_once() {
    let Some(db) = pg_harness::postgres("replicas_starting_together_apply_the_schema_once") else {
        return;
    };
    let url = Secret::new(db.url.clone());
    let start = Arc::new(tokio::sync::Barrier::new(6));
    let replicas: Vec<_> = (0..6)
        .map(|_| {
            let (url, start) = (url.clone(), start.clone());
            tokio::spawn(async move {
                let store = PostgresStore::open(&url, 1, super::POOL_WAIT).unwrap();
                let mut client = store.client().await.unwrap();
                start.wait().await;
                schema::migrate(&mut client).await.unwrap()
            })
        })
        .collect();
    let mut applied = 0;
    for replica in replicas {
        applied += replica.await.unwrap();
    }
    assert_eq!(applied, schema::MIGRATIONS.len(), "each migration ran once");
    assert_eq!(versions(&db), all_versions());
}

#[tokio::test]
async fn keys_written_under_schema_1_read_the_same_after_the_upgrade() {
    let test = "keys_written_under_schema_1_read_the_same_after_the_upgrade";
    let Some(db) = pg_harness::postgres(test) else {
        return;
    };
    let at_version_1 = format!(
        "CREATE TABLE sessiond_schema (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now()); \
         INSERT INTO sessiond_schema (version) VALUES (1); {} \
         INSERT INTO sessiond_keys VALUES \
         ('d-1', 'ES256', '', '\\x{}', '\\x0304', 1, 2, 3, 4, false), \
         ('s-1', 'ES256', '\\x3082', NULL, NULL, 1, 1, 3, 0, true)",
        schema::MIGRATIONS[0],
        "01".repeat(12)
    );
    db.cluster().sql(&db.name, &at_version_1).unwrap();
    let store = PostgresStore::connect(&Secret::new(db.url.clone()), 1)
        .await
        .unwrap();
    assert_eq!(versions(&db), all_versions());
    let mut keys = store.keys().await.unwrap();
    keys.sort_by(|a, b| a.kid.cmp(&b.kid));
    assert_eq!(
        keys[0].private_key,
        crate::secret::sealed::join(&[1; 12], &[3, 4]),
        "a sealed key is the one sealed value"
    );
    assert_eq!(
        keys[1].private_key,
        [0x30, 0x82],
        "a plaintext key as it was"
    );
    assert_eq!(
        (
            keys[0].signs_from_ms,
            keys[0].max_jwt_exp_ms,
            keys[1].is_static
        ),
        (2, 4, true)
    );
}

#[tokio::test]
async fn an_export_reads_every_row_of_a_table_larger_than_its_batch() {
    let test = "an_export_reads_every_row_of_a_table_larger_than_its_batch";
    let Some(db) = pg_harness::postgres(test) else {
        return;
    };
    let store = PostgresStore::connect(&Secret::new(db.url.clone()), 1)
        .await
        .unwrap();
    db.cluster()
        .sql(
            &db.name,
            "INSERT INTO sessiond_sessions (handle, user_id, tenant_id, access_payload, data, \
             created_at_ms, expires_at_ms, refresh_hash, rotated_at_ms, last_active_ms) \
             SELECT 'h' || i, 'u' || i, 'public', '{}', '{}', 1, 9, \
             decode(repeat('01', 32), 'hex'), 1, 1 FROM generate_series(1, 2500) AS i",
        )
        .unwrap();
    let mut handles = std::collections::BTreeSet::new();
    crate::store::Durability::export(&store, &mut |item| {
        if let crate::store::Exported::Session(r) = item {
            handles.insert(r.handle);
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(handles.len(), 2500, "every session, once");
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let Some(db) = pg_harness::postgres("a_schema_newer_than_the_binary_is_refused") else {
        return;
    };
    let url = Secret::new(db.url.clone());
    drop(PostgresStore::connect(&url, 1).await.unwrap());
    let newer = schema::latest() + 1;
    db.cluster()
        .sql(
            &db.name,
            &format!("INSERT INTO sessiond_schema (version) VALUES ({newer})"),
        )
        .unwrap();
    let refused = PostgresStore::connect(&url, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!(
            "schema is version {newer}, newer than this sessiond knows"
        )),
        "{refused}"
    );
    assert_eq!(
        db.cluster()
            .sql(&db.name, "SELECT count(*) FROM sessiond_schema")
            .unwrap(),
        newer.to_string(),
        "a refused start writes nothing"
    );
}

#[tokio::test]
async fn an_exhausted_pool_fails_as_unavailable_after_its_wait() {
    let Some(db) = pg_harness::postgres("an_exhausted_pool_fails_as_unavailable_after_its_wait")
    else {
        return;
    };
    let url = Secret::new(db.url.clone());
    drop(PostgresStore::connect(&url, 1).await.unwrap());
    let store = PostgresStore::open(&url, 1, Duration::from_millis(300)).unwrap();
    let held = store.client().await.unwrap();
    let started = Instant::now();
    let e = store.count_sessions().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(held);
    assert_eq!(
        store.count_sessions().await.unwrap(),
        0,
        "served once freed"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_the_password_stays_out() {
    // A port nothing listens on: the loopback refuses at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = Secret::new(format!(
        "postgres://sessiond:hunter2@127.0.0.1:{port}/db?sslmode=disable"
    ));
    let e = PostgresStore::connect(&url, 1).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let bad = Secret::new("postgres://sessiond:hunter2@127.0.0.1:notaport/db");
    let shown = PostgresStore::connect(&bad, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn a_row_the_store_cannot_read_back_is_corrupt_not_an_outage() {
    let Some(db) =
        pg_harness::postgres("a_row_the_store_cannot_read_back_is_corrupt_not_an_outage")
    else {
        return;
    };
    let url = Secret::new(db.url.clone());
    let store = PostgresStore::connect(&url, 1).await.unwrap();
    db.cluster()
        .sql(
            &db.name,
            "INSERT INTO sessiond_secrets (name, value) VALUES ('s', '\\x01'); \
             INSERT INTO sessiond_keys (kid, alg, private_key, created_at_ms, signs_from_ms, \
             max_token_lifetime_ms, max_jwt_exp_ms, is_static) \
             VALUES ('k', 'EdDSA', '\\x01', -1, 1, 1, 0, false)",
        )
        .unwrap();
    let e = store.keys().await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    db.cluster()
        .sql(
            &db.name,
            "INSERT INTO sessiond_sessions (handle, user_id, tenant_id, access_payload, data, \
             created_at_ms, expires_at_ms, refresh_hash, rotated_at_ms, last_active_ms) \
             VALUES ('h', 'u', 'public', '[1]', '{}', 1, 9, \
             decode(repeat('01', 32), 'hex'), 1, 1)",
        )
        .unwrap();
    let e = store.session("h").await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert!(
        store.session_lineage("h").await.unwrap().is_some(),
        "the lineage does not read the payload"
    );
}

/// With one connection in the pool, a call that took a second one while
/// holding the first would wait for itself until the pool's wait ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_refreshes_and_merges_need_one_connection_per_call() {
    let test = "racing_refreshes_and_merges_need_one_connection_per_call";
    let Some(db) = pg_harness::postgres(test) else {
        return;
    };
    let url = Secret::new(db.url.clone());
    let store: Arc<dyn crate::store::Store> =
        Arc::new(PostgresStore::connect(&url, 1).await.unwrap());
    let suite = async {
        crate::store::conformance::concurrent_refreshes_leave_one_lineage(store.clone()).await;
        crate::store::conformance::concurrent_bucket_merges_lose_nothing(store.clone()).await;
        crate::store::conformance::keys_and_secrets(store).await;
    };
    // Far less than 32 racers would take if any call waited out the pool.
    tokio::time::timeout(Duration::from_secs(60), suite)
        .await
        .expect("no call waited for a second connection");
}
