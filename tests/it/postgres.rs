//! The throwaway PostgreSQL cluster the store tests run against
//! (`tests/support/postgres.rs`): it takes SQL, keeps what was committed
//! across an immediate stop, and serves again after a restart. And the
//! real server with its store in PostgreSQL (`--database-url`), over gRPC.

#[path = "../support/postgres.rs"]
pub mod harness;

use serde_json::json;
use sessiond::config::Secret;
use sessiond::pb;
use tonic::Code;

use crate::helpers::{
    TestServer, access, assert_status, create, handle, refresh, refresh_token, verify,
};

#[test]
fn a_throwaway_cluster_keeps_committed_rows_across_an_immediate_stop() {
    let Some(db) = harness::postgres_alone(
        "a_throwaway_cluster_keeps_committed_rows_across_an_immediate_stop",
    ) else {
        return;
    };
    let cluster = db.cluster();
    cluster
        .sql(
            &db.name,
            "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)",
        )
        .unwrap();
    assert_eq!(cluster.sql(&db.name, "SELECT sum(x) FROM t").unwrap(), "3");
    assert_eq!(
        cluster.sql(&db.name, "SHOW synchronous_commit").unwrap(),
        "on",
        "the cluster must keep the durability the store relies on"
    );

    cluster.stop().unwrap();
    let refused = cluster.sql(&db.name, "SELECT 1").unwrap_err();
    assert!(refused.contains("psql failed"), "{refused}");

    cluster.restart().unwrap();
    assert_eq!(cluster.sql(&db.name, "SELECT sum(x) FROM t").unwrap(), "3");
}

#[test]
fn each_test_gets_a_database_of_its_own() {
    let (Some(a), Some(b)) = (
        harness::postgres("each_test_gets_a_database_of_its_own"),
        harness::postgres("each_test_gets_a_database_of_its_own"),
    ) else {
        return;
    };
    assert_ne!(a.name, b.name);
    a.cluster()
        .sql(&a.name, "CREATE TABLE only_in_a (x int)")
        .unwrap();
    let missing = b
        .cluster()
        .sql(&b.name, "SELECT * FROM only_in_a")
        .unwrap_err();
    assert!(missing.contains("does not exist"), "{missing}");
}

/// The URL a test server reaches `db` at (no TLS on loopback).
pub fn url_of(db: &harness::Database) -> Secret {
    Secret::new(format!("{}?sslmode=disable", db.url))
}

/// A server with its store in `db`, with a small pool.
pub async fn server_on(db: &harness::Database) -> TestServer {
    let url = url_of(db);
    TestServer::start_with(|c| {
        c.database_url = Some(url);
        c.database_pool_size = 4;
    })
    .await
}

#[tokio::test]
async fn a_server_on_postgres_creates_checks_refreshes_and_revokes() {
    let Some(db) = harness::postgres("a_server_on_postgres_creates_checks_refreshes_and_revokes")
    else {
        return;
    };
    let server = server_on(&db).await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "alice", json!({"role": "admin"})).await;
    let got = verify(&mut c, &access(&created), true).await.unwrap();
    assert_eq!(got.session.unwrap().user_id, "alice");
    assert_eq!(
        db.cluster()
            .sql(&db.name, "SELECT user_id FROM sessiond_sessions")
            .unwrap(),
        "alice",
        "the session is a row of the database"
    );
    assert!(
        std::fs::read_dir(server.data_dir())
            .unwrap()
            .next()
            .is_none(),
        "nothing is written to the data directory"
    );

    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    let new_access = refreshed.access_token.unwrap().token;
    verify(&mut c, &new_access, true).await.unwrap();

    // Another process on the same database sees the same sessions.
    let server = server.restart().await;
    let mut c = server.sessions().await;
    verify(&mut c, &new_access, true).await.unwrap();
    let revoked = c
        .revoke_session(pb::RevokeSessionRequest {
            session_handle: handle(&created),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    assert_status(
        verify(&mut c, &new_access, true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        refresh(&mut c, &refreshed.refresh_token.unwrap().token).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_eq!(
        db.cluster()
            .sql(&db.name, "SELECT count(*) FROM sessiond_sessions")
            .unwrap(),
        "0"
    );
}

#[tokio::test]
async fn revoke_other_sessions_on_postgres() {
    let Some(db) = harness::postgres("revoke_other_sessions_on_postgres") else {
        return;
    };
    crate::sessions::revoking_the_other_sessions_keeps_one(&server_on(&db).await).await;
}

/// The store setting of a shared case's server on `db` (a small pool).
pub fn backend(db: &harness::Database) -> impl Fn(&mut sessiond::config::Config) + Send + Sync {
    let url = url_of(db);
    move |c| {
        c.database_url = Some(url.clone());
        c.database_pool_size = 4;
    }
}

/// Runs each shared case against a server on a database of its own.
macro_rules! on_postgres {
    ($($test:ident => $case:path;)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let Some(db) = harness::postgres(stringify!($test)) else {
                return;
            };
            $case(&backend(&db)).await;
        }
    )+};
}

on_postgres! {
    devices_on_postgres => crate::control::devices_are_listed_and_refresh_updates_the_fields_given;
    bad_devices_on_postgres => crate::control::bad_devices_are_refused_naming_the_field;
    activity_on_postgres =>
        crate::control::activity_is_recorded_by_refresh_and_by_checked_use_to_the_minute;
    my_sessions_on_postgres => crate::control::end_users_list_and_revoke_their_own_sessions_only;
    list_sessions_on_postgres =>
        crate::control_pages::sessions_are_listed_newest_first_a_page_at_a_time;
    page_tokens_on_postgres => crate::control_pages::page_tokens_only_continue_their_own_listing;
    handle_pages_on_postgres =>
        crate::control_pages::handles_are_paged_in_one_tenant_and_across_all;
    evict_oldest_on_postgres =>
        crate::control_limits::evict_oldest_ends_the_least_recently_active;
    refuse_on_postgres => crate::control_limits::refuse_answers_resource_exhausted_and_ends_nothing;
    concurrent_creates_on_postgres => crate::control_limits::concurrent_creates_hold_the_limit;
    idle_timeout_on_postgres => crate::control_limits::an_idle_session_ends_and_use_keeps_one_alive;
    lowered_idle_timeout_on_postgres =>
        crate::control_limits::a_lowered_idle_timeout_is_enforced_by_check_database;
    own_timeouts_on_postgres => crate::control_limits::own_timeouts_may_only_shorten_the_servers;
    sweeper_on_postgres => crate::control_limits::the_sweeper_removes_ended_sessions_and_counts_why;
}

/// A user with 200 000 sessions in PostgreSQL pages within a client's
/// default 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_sessions_on_postgres_page_within_the_default_4_mib() {
    use crate::control_pages::{MANY, a_few_through_grpc, bulk_record};
    let test = "two_hundred_thousand_sessions_on_postgres_page_within_the_default_4_mib";
    let Some(db) = harness::postgres(test) else {
        return;
    };
    let server = TestServer::start_with(backend(&db)).await;
    let mut made = a_few_through_grpc(&server, "many").await;
    // The rest through a store on the server's database, as another
    // replica's creates would arrive (gRPC is too slow, see the sled
    // case): 64 at a time, which the store batches into few statements.
    let store = std::sync::Arc::new(
        sessiond::store::PostgresStore::connect(&url_of(&db), 8)
            .await
            .unwrap(),
    );
    let now = sessiond::Clock::now_ms(server.clock.as_ref());
    let records: Vec<_> = (0..MANY - made.len())
        .map(|i| bulk_record("many", now - (i as u64 / 3)))
        .collect();
    made.extend(records.iter().map(|r| r.handle.clone()));
    let started = std::time::Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for share in records.chunks(records.len().div_ceil(64)) {
        let (store, share) = (store.clone(), share.to_vec());
        writers.spawn(async move {
            for record in &share {
                sessiond::store::Sessions::create_session(store.as_ref(), record)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    eprintln!(
        "{} sessions written in {:?}",
        records.len(),
        started.elapsed()
    );
    crate::control_pages::every_handle_pages_within_the_default_4_mib(&server, "many", &made).await;
}

/// A CA and a certificate for 127.0.0.1 signed by it, and another CA, as
/// PEM files in a directory the server's user can read.
fn database_pki() -> (tempfile::TempDir, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ca = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join(name), ca.pem()).unwrap();
        ca
    };
    let issuer = ca("ca.pem");
    ca("other-ca.pem");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    let path = dir.path().to_owned();
    (dir, path)
}

#[tokio::test]
async fn the_store_speaks_tls_to_postgres_and_verify_full_checks_the_certificate() {
    use sessiond::store::PostgresStore;
    let test = "the_store_speaks_tls_to_postgres_and_verify_full_checks_the_certificate";
    let Some(db) = harness::postgres_alone(test) else {
        return;
    };
    let cluster = db.cluster();
    let (_dir, pki) = database_pki();
    cluster.hand_over(&pki.join("server.key")).unwrap();
    for (setting, file) in [
        ("ssl_cert_file", "server.pem"),
        ("ssl_key_file", "server.key"),
    ] {
        let path = pki.join(file);
        cluster
            .sql(
                "postgres",
                &format!("ALTER SYSTEM SET {setting} = '{}'", path.display()),
            )
            .unwrap();
    }
    cluster
        .sql("postgres", "ALTER SYSTEM SET ssl = on")
        .unwrap();
    cluster.sql("postgres", "SELECT pg_reload_conf()").unwrap();
    assert_eq!(cluster.sql("postgres", "SHOW ssl").unwrap(), "on");

    let encrypted = || {
        cluster
            .sql(
                &db.name,
                "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                 WHERE ssl AND application_name = 'sessiond'",
            )
            .unwrap()
    };
    let verified = Secret::new(format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url,
        pki.join("ca.pem").display()
    ));
    let store = PostgresStore::connect(&verified, 1).await.unwrap();
    assert_eq!(encrypted(), "1", "the store's connection is encrypted");
    drop(store);

    let unverified = Secret::new(format!("{}?sslmode=require", db.url));
    let store = PostgresStore::connect(&unverified, 1).await.unwrap();
    drop(store);

    let wrong_ca = Secret::new(format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        db.url,
        pki.join("other-ca.pem").display()
    ));
    let refused = PostgresStore::connect(&wrong_ca, 1).await.unwrap_err();
    assert!(
        matches!(refused, sessiond::store::StoreError::Unavailable(_)),
        "a certificate from another CA is refused: {refused:?}"
    );
}

#[tokio::test]
async fn an_online_backup_of_a_server_on_postgres_restores_into_the_embedded_store() {
    let test = "an_online_backup_of_a_server_on_postgres_restores_into_the_embedded_store";
    let Some(db) = harness::postgres(test) else {
        return;
    };
    let url = Secret::new(db.url.clone());
    let server = TestServer::start_with(|c| c.database_url = Some(url.clone())).await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "bob", json!({})).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessiond.backup");
    let addr = server.addr.to_string();
    let (code, _, err) = crate::cli::sessiond(
        ["backup", "--out", file.to_str().unwrap(), "--addr", &addr]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 server secrets"), "{err}");

    let data = dir.path().join("data");
    let (code, _, err) = crate::cli::sessiond(
        [
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let target = tempfile::tempdir().unwrap();
    std::fs::remove_dir(target.path()).unwrap();
    std::fs::rename(&data, target.path()).unwrap();
    let restored = TestServer::start_in(target, |_| {}).await;
    let mut c = restored.sessions().await;
    let got = verify(&mut c, &access(&created), true).await.unwrap();
    assert_eq!(
        got.session.unwrap().user_id,
        "bob",
        "session and keys came along"
    );
}
