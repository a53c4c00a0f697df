//! The throwaway PostgreSQL cluster the store tests run against
//! (`tests/support/postgres.rs`): it takes SQL, keeps what was committed
//! across an immediate stop, and serves again after a restart.

#[path = "../support/postgres.rs"]
mod harness;

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
