//! The conformance suite every [`Store`] backend must pass. Each
//! backend instantiates it with [`conformance_suite!`].

use std::sync::Arc;

use serde_json::{Map, json};

use super::{Change, Generation, SessionQuery, SessionRecord, Store, TokenHash};

mod control;
mod keys;
pub use control::{
    a_users_sessions_come_in_pages_newest_first, idle_sessions_end_and_are_swept,
    the_least_recently_active_session_is_evicted, the_session_limit_holds_under_concurrent_creates,
};
pub use keys::{keys_and_secrets, keys_are_added_once_per_place};

fn record(handle: &str, user: &str, tenant: &str, expires_at_ms: u64) -> SessionRecord {
    SessionRecord {
        handle: handle.to_owned(),
        user_id: user.to_owned(),
        tenant_id: tenant.to_owned(),
        access_payload: Map::new(),
        data: Map::new(),
        created_at_ms: 1,
        expires_at_ms,
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

fn handles(mut v: Vec<super::UserSession>) -> Vec<String> {
    v.sort_by(|a, b| a.handle.cmp(&b.handle));
    v.into_iter().map(|s| s.handle).collect()
}

pub async fn create_read_list_delete(store: Arc<dyn Store>) {
    store
        .create_session(&record("a", "alice", "public", 100))
        .await
        .unwrap();
    store
        .create_session(&record("b", "alice", "t2", 100))
        .await
        .unwrap();
    store
        .create_session(&record("c", "alicia", "public", 100))
        .await
        .unwrap();
    store.durable().await.unwrap();
    assert_eq!(store.count_sessions().await.unwrap(), 3);

    assert_eq!(store.session("a").await.unwrap().unwrap().user_id, "alice");
    assert!(store.session("zz").await.unwrap().is_none());
    assert_eq!(
        handles(store.user_sessions("alice", Some("public")).await.unwrap()),
        ["a"]
    );
    assert_eq!(
        handles(store.user_sessions("alice", None).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        store.user_sessions("alice", Some("t2")).await.unwrap()[0].tenant_id,
        "t2"
    );
    assert!(
        store.user_sessions("ali", None).await.unwrap().is_empty(),
        "a prefix of a user id is another user"
    );

    let removed = store
        .delete_sessions(&["a".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(handles(removed), ["a"]);
    assert!(store.session("a").await.unwrap().is_none());
    assert_eq!(
        handles(store.user_sessions("alice", None).await.unwrap()),
        ["b"]
    );
    assert_eq!(store.count_sessions().await.unwrap(), 2);
}

pub async fn sessions_are_listed_in_pages_across_users(store: Arc<dyn Store>) {
    for (handle, user, tenant, expires) in [
        ("h5", "bob", "public", 100),
        ("h1", "alice", "public", 100),
        ("h3", "carol", "t2", 100),
        ("h2", "alice", "t2", 100),
        ("h4", "dave", "public", 50),
        ("h6", "erin", "public", 100),
    ] {
        store
            .create_session(&record(handle, user, tenant, expires))
            .await
            .unwrap();
    }
    let list = async |after: Option<&str>, tenant_id: Option<&str>, limit: usize| {
        let query = SessionQuery {
            after,
            tenant_id,
            live_at_ms: 60,
            limit,
        };
        let page = store.list_sessions(&query).await.unwrap();
        assert_eq!(
            page,
            super::list_sessions_by_export(store.as_ref(), &query)
                .await
                .unwrap(),
            "the backend's scan and the trait's default agree on {query:?}"
        );
        let handles: Vec<String> = page.sessions.iter().map(|s| s.handle.clone()).collect();
        (handles, page.more)
    };

    // Every user, in handle order, without the session expired at 60 ms.
    assert_eq!(
        list(None, None, 2).await,
        (vec!["h1".into(), "h2".into()], true)
    );
    assert_eq!(
        list(Some("h2"), None, 2).await,
        (vec!["h3".into(), "h5".into()], true)
    );
    assert_eq!(list(Some("h5"), None, 2).await, (vec!["h6".into()], false));
    assert_eq!(
        list(Some("h3"), None, 3).await,
        (vec!["h5".into(), "h6".into()], false),
        "no more when only the expired session is left out"
    );
    assert_eq!(list(Some("h6"), None, 2).await, (vec![], false));
    // The cursor need not exist any more (revoked between two pages).
    assert_eq!(list(Some("h2x"), None, 1).await, (vec!["h3".into()], true));
    // A tenant filter: `more` counts only matching sessions.
    assert_eq!(list(None, Some("t2"), 1).await, (vec!["h2".into()], true));
    assert_eq!(
        list(Some("h2"), Some("t2"), 1).await,
        (vec!["h3".into()], false)
    );
    assert_eq!(list(None, Some("none"), 10).await, (vec![], false));

    let listed = store
        .list_sessions(&SessionQuery {
            after: None,
            tenant_id: Some("t2"),
            live_at_ms: 0,
            limit: 1,
        })
        .await
        .unwrap()
        .sessions;
    assert_eq!(
        listed[0],
        super::ListedSession {
            handle: "h2".into(),
            user_id: "alice".into(),
            tenant_id: "t2".into(),
            created_at_ms: 1,
            expires_at_ms: 100,
            last_active_ms: 1,
            timeouts: Default::default(),
            device: Default::default(),
        }
    );
}

pub async fn concurrent_updates_lose_nothing(store: Arc<dyn Store>) {
    store
        .create_session(&record("n", "u", "public", 100))
        .await
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    store
                        .update_session("n", &mut |r| {
                            let mut r = r.expect("exists").clone();
                            let n = r.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                            r.data.insert("n".into(), json!(n + 1));
                            Change::Put(Box::new(r))
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.await.unwrap();
    }
    assert_eq!(
        store.session("n").await.unwrap().unwrap().data["n"],
        json!(400)
    );
    assert_eq!(
        store.count_sessions().await.unwrap(),
        1,
        "updates add no session"
    );
}

pub async fn update_moves_indexes_and_sweep_follows(store: Arc<dyn Store>) {
    store
        .create_session(&record("x", "u", "public", 100))
        .await
        .unwrap();
    store
        .create_session(&record("y", "u", "public", 100))
        .await
        .unwrap();
    // Extend x: the old expiry entry must not sweep it.
    let applied = store
        .update_session("x", &mut |r| {
            let mut r = r.unwrap().clone();
            r.expires_at_ms = 500;
            Change::Put(Box::new(r))
        })
        .await
        .unwrap();
    assert!(matches!(applied, Change::Put(_)));
    let listed = store.user_sessions("u", None).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .find(|s| s.handle == "x")
            .unwrap()
            .expires_at_ms,
        500
    );

    assert_eq!(store.sweep_expired(200, 100).await.unwrap().len(), 1);
    assert!(store.session("y").await.unwrap().is_none());
    assert!(store.session("x").await.unwrap().is_some());
    assert_eq!(
        handles(store.user_sessions("u", None).await.unwrap()),
        ["x"]
    );
    assert_eq!(store.sweep_expired(499, 100).await.unwrap().len(), 0);
    assert_eq!(store.sweep_expired(500, 100).await.unwrap().len(), 1);
    assert!(store.user_sessions("u", None).await.unwrap().is_empty());

    // Delete through update, and Keep on a missing session.
    store
        .create_session(&record("z", "u", "public", 100))
        .await
        .unwrap();
    store
        .update_session("z", &mut |_| Change::Delete)
        .await
        .unwrap();
    assert!(store.session("z").await.unwrap().is_none());
    assert!(store.user_sessions("u", None).await.unwrap().is_empty());
    let mut saw = None;
    store
        .update_session("missing", &mut |r| {
            saw = Some(r.is_none());
            Change::Keep
        })
        .await
        .unwrap();
    assert_eq!(saw, Some(true));
}

pub async fn user_data_updates_are_atomic(store: Arc<dyn Store>) {
    assert!(store.user_data("public", "u").await.unwrap().is_none());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    store
                        .update_user_data("public", "u", &mut |d| {
                            let mut d = d.clone();
                            d.public.insert(format!("t{t}-{i}"), json!(i));
                            Some(d)
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.await.unwrap();
    }
    let data = store.user_data("public", "u").await.unwrap().unwrap();
    assert_eq!(data.public.len(), 200, "no concurrent update was lost");
    assert!(
        store.user_data("other", "u").await.unwrap().is_none(),
        "tenants are separate"
    );
    let kept = store
        .update_user_data("public", "u", &mut |_| None)
        .await
        .unwrap();
    assert_eq!(kept, data);
}

/// A refresh token hash of generation `n`, distinct for every `n`.
fn generation_hash(n: usize) -> TokenHash {
    let mut hash = [0; 32];
    hash[..8].copy_from_slice(&(n as u64).to_be_bytes());
    TokenHash(hash)
}

/// 32 refreshes of one session race, each as the session rules do it: read
/// the current generation, then rotate it in one update only if it is still
/// current. Every rotation must start from a generation no other rotation
/// started from, and together they must form one chain: one live lineage.
/// Lost or unserialised updates show as two rotations from one generation,
/// a broken chain, or a miscount.
pub async fn concurrent_refreshes_leave_one_lineage(store: Arc<dyn Store>) {
    const RACERS: usize = 32;
    let mut first = record("r", "u", "public", 100);
    first.current.refresh_hash = generation_hash(0);
    store.create_session(&first).await.unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let racers: Vec<_> = (1..=RACERS)
        .map(|me| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                let mine = generation_hash(me);
                start.wait().await;
                loop {
                    let read = store.session("r").await.unwrap().expect("exists");
                    let seen = read.current.refresh_hash;
                    let (_, rotated_from) = store
                        .update_session_with("r", |r| {
                            let r = r.expect("exists");
                            if r.current.refresh_hash != seen {
                                return (Change::Keep, None);
                            }
                            let mut next = r.clone();
                            next.previous = Some(r.current.clone());
                            next.current.refresh_hash = mine;
                            let n = r.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                            next.data.insert("n".into(), json!(n + 1));
                            (Change::Put(Box::new(next)), Some(seen))
                        })
                        .await
                        .unwrap();
                    if let Some(from) = rotated_from {
                        return (from, mine);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut next_of = std::collections::HashMap::new();
    for racer in racers {
        let (from, to) = racer.await.unwrap();
        assert!(
            next_of.insert(from, to).is_none(),
            "two refreshes rotated generation {}",
            from.to_hex()
        );
    }
    // Follow the chain from the first generation: it must take in every
    // rotation and end at the stored one.
    let mut at = generation_hash(0);
    let mut links = 0;
    while let Some(to) = next_of.get(&at) {
        at = *to;
        links += 1;
    }
    assert_eq!(links, RACERS, "every rotation is on the one lineage");
    let stored = store.session("r").await.unwrap().unwrap();
    assert_eq!(
        stored.current.refresh_hash, at,
        "the chain ends at the stored generation"
    );
    assert_eq!(stored.data["n"], json!(RACERS), "no rotation was lost");
    assert_eq!(store.count_sessions().await.unwrap(), 1);
}

/// 32 merges into one user's bucket race, each adding its own key: none
/// is lost, and each sees its own key in what it stored.
pub async fn concurrent_bucket_merges_lose_nothing(store: Arc<dyn Store>) {
    const MERGERS: usize = 32;
    let start = Arc::new(tokio::sync::Barrier::new(MERGERS));
    let mergers: Vec<_> = (0..MERGERS)
        .map(|me| {
            let (store, start) = (store.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let key = format!("k{me}");
                let stored = store
                    .update_user_data("public", "m", &mut |d| {
                        let mut d = d.clone();
                        d.public.insert(key.clone(), json!(me));
                        Some(d)
                    })
                    .await
                    .unwrap();
                assert_eq!(stored.public.get(&key), Some(&json!(me)));
            })
        })
        .collect();
    for merger in mergers {
        merger.await.unwrap();
    }
    let data = store.user_data("public", "m").await.unwrap().unwrap();
    assert_eq!(data.public.len(), MERGERS, "no concurrent merge was lost");
    for me in 0..MERGERS {
        assert_eq!(data.public[&format!("k{me}")], json!(me));
    }
}

/// A throwaway PostgreSQL database per test (`tests/support/postgres.rs`).
#[path = "../../tests/support/postgres.rs"]
pub(super) mod pg_harness;

/// A [`PostgresStore`](super::PostgresStore) in a database of the test's
/// own, with the database's handle (which keeps its cluster running);
/// `None` when PostgreSQL is missing and not required.
pub(super) async fn postgres_store(test: &str) -> Option<(Arc<dyn Store>, pg_harness::Database)> {
    let db = pg_harness::postgres(test)?;
    let url = crate::secret::Secret::new(db.url.clone());
    let store = super::PostgresStore::connect(&url, 16)
        .await
        .unwrap_or_else(|e| panic!("{test}: connecting to the test database: {e}"));
    Some((Arc::new(store), db))
}

/// Calls `$case!(name)` for every test of the suite.
macro_rules! for_each_case {
    ($case:ident) => {
        $case!(create_read_list_delete);
        $case!(sessions_are_listed_in_pages_across_users);
        $case!(concurrent_updates_lose_nothing);
        $case!(update_moves_indexes_and_sweep_follows);
        $case!(keys_and_secrets);
        $case!(keys_are_added_once_per_place);
        $case!(user_data_updates_are_atomic);
        $case!(concurrent_refreshes_leave_one_lineage);
        $case!(concurrent_bucket_merges_lose_nothing);
        $case!(a_users_sessions_come_in_pages_newest_first);
        $case!(idle_sessions_end_and_are_swept);
        $case!(the_session_limit_holds_under_concurrent_creates);
        $case!(the_least_recently_active_session_is_evicted);
    };
}

/// Instantiates the suite for a backend: `conformance_suite!(sled, open_fn)`
/// where `open_fn(&Path) -> Arc<dyn Store>`, or
/// `conformance_suite!(postgres, async open_fn)` where
/// `open_fn(test name).await -> Option<(Arc<dyn Store>, guard)>` (`None`:
/// the backend's server is missing, and the test is skipped).
macro_rules! conformance_suite {
    ($backend:ident, async $open:path) => {
        mod $backend {
            use $crate::store::conformance as suite;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some((store, _guard)) = $open(stringify!($name)).await else {
                            return;
                        };
                        suite::$name(store).await;
                    }
                };
            }
            for_each_case!(case);
        }
    };
    ($backend:ident, $open:expr) => {
        mod $backend {
            use $crate::store::conformance as suite;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let dir = tempfile::tempdir().unwrap();
                        suite::$name(($open)(dir.path())).await;
                    }
                };
            }
            for_each_case!(case);
        }
    };
}

conformance_suite!(
    memory,
    |_dir: &std::path::Path| -> std::sync::Arc<dyn crate::store::Store> {
        crate::store::MemoryStore::shared()
    }
);

conformance_suite!(
    sled,
    |dir: &std::path::Path| -> std::sync::Arc<dyn crate::store::Store> {
        crate::store::SledStore::open(dir, 8 << 20, None).unwrap()
    }
);

conformance_suite!(postgres, async crate::store::conformance::postgres_store);
