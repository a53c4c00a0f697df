//! The throwaway PostgreSQL cluster the store tests run against
//! (`tests/support/postgres.rs`): it takes SQL, keeps what was committed
//! across an immediate stop, and serves again after a restart. And the
//! real server with its store in PostgreSQL (`--database-url`), over gRPC.

#[path = "../support/postgres.rs"]
mod harness;

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

#[tokio::test]
async fn a_server_on_postgres_creates_checks_refreshes_and_revokes() {
    let Some(db) = harness::postgres("a_server_on_postgres_creates_checks_refreshes_and_revokes")
    else {
        return;
    };
    let url = Secret::new(format!("{}?sslmode=disable", db.url));
    let server = TestServer::start_with(|c| {
        c.database_url = Some(url.clone());
        c.database_pool_size = 4;
    })
    .await;
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
