//! Conformance cases of session control: a user's sessions in pages,
//! activity, idle ends and devices, and the per-user limit.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::record;
use crate::store::{
    Admission, Change, Device, Ends, ListedSession, SessionLimit, SessionRecord, Store, Timeouts,
    UserCursor, UserQuery,
};

fn session(handle: &str, user: &str, tenant: &str, created: u64) -> SessionRecord {
    let mut r = record(handle, user, tenant, 10_000);
    r.created_at_ms = created;
    r.last_active_ms = created;
    r
}

async fn page(
    store: &Arc<dyn Store>,
    user: &str,
    tenant: Option<&str>,
    after: Option<&UserCursor>,
    live_at_ms: u64,
    limit: usize,
) -> (Vec<String>, bool, Option<UserCursor>) {
    let found = store
        .user_sessions_page(&UserQuery {
            user_id: user,
            tenant_id: tenant,
            after,
            live_at_ms,
            limit,
        })
        .await
        .unwrap();
    let last = found.sessions.last().map(ListedSession::cursor);
    let handles = found.sessions.into_iter().map(|s| s.handle).collect();
    (handles, found.more, last)
}

pub async fn a_users_sessions_come_in_pages_newest_first(store: Arc<dyn Store>) {
    for (i, handle) in ["p1", "p2", "p3", "p4", "p5"].iter().enumerate() {
        store
            .create_session(&session(handle, "alice", "public", 100 + i as u64))
            .await
            .unwrap();
    }
    // Two created in the same millisecond come in handle order.
    store
        .create_session(&session("p6a", "alice", "public", 200))
        .await
        .unwrap();
    store
        .create_session(&session("p6b", "alice", "public", 200))
        .await
        .unwrap();
    for r in [
        session("a1", "alice", "acme", 150),
        session("a2", "alice", "acme", 160),
        session("b1", "bob", "public", 300),
    ] {
        store.create_session(&r).await.unwrap();
    }
    let mut over = session("gone", "alice", "public", 400);
    over.expires_at_ms = 500;
    store.create_session(&over).await.unwrap();
    let mut idle = session("idle", "alice", "public", 401);
    idle.timeouts = Timeouts {
        idle_ms: 50,
        max_lifetime_ms: 0,
    };
    idle.device = Device {
        ip_address: "203.0.113.7".into(),
        user_agent: "Firefox".into(),
        label: "Laptop".into(),
    };
    store.create_session(&idle).await.unwrap();
    store.durable().await.unwrap();

    // Before the idle one ends, it is listed first, device and all.
    let found = store
        .user_sessions_page(&UserQuery {
            user_id: "alice",
            tenant_id: Some("public"),
            after: None,
            live_at_ms: 420,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(found.sessions, [ListedSession::of(&idle)]);
    assert!(found.more);

    // Later, neither the expired nor the idle session is live.
    let mut listed = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (handles, more, last) =
            page(&store, "alice", Some("public"), after.as_ref(), 600, 3).await;
        assert!(handles.len() <= 3);
        listed.extend(handles);
        pages += 1;
        if !more {
            break;
        }
        after = last;
    }
    assert_eq!(listed, ["p6a", "p6b", "p5", "p4", "p3", "p2", "p1"]);
    assert_eq!(pages, 3);

    // Every tenant: each tenant's sessions together, newest first, none twice.
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let (handles, more, last) = page(&store, "alice", None, after.as_ref(), 600, 2).await;
        all.extend(handles);
        if !more {
            break;
        }
        after = last;
    }
    assert_eq!(all.len(), 9, "{all:?}");
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 9);
    let acme: Vec<&String> = all.iter().filter(|h| h.starts_with('a')).collect();
    assert_eq!(acme, ["a2", "a1"]);
    let at = all.iter().position(|h| h == "a2").unwrap();
    assert_eq!(
        all[at + 1],
        "a1",
        "a tenant's sessions are together: {all:?}"
    );

    // Another user, and a user with none.
    assert_eq!(
        page(&store, "bob", Some("public"), None, 600, 10).await.0,
        ["b1"]
    );
    assert!(
        page(&store, "carol", None, None, 600, 10)
            .await
            .0
            .is_empty()
    );
    // A cursor naming a session that is gone still continues after it.
    store.delete_sessions(&["p4".into()]).await.unwrap();
    let cursor = UserCursor {
        tenant_id: "public".into(),
        created_at_ms: 103,
        handle: "p4".into(),
    };
    let (rest, more, _) = page(&store, "alice", Some("public"), Some(&cursor), 600, 10).await;
    assert_eq!(rest, ["p3", "p2", "p1"]);
    assert!(!more);
}

pub async fn idle_sessions_end_and_are_swept(store: Arc<dyn Store>) {
    let mut r = session("s", "alice", "public", 100);
    r.timeouts.idle_ms = 1000;
    r.expires_at_ms = 100_000;
    store.create_session(&r).await.unwrap();
    let mut kept = session("k", "alice", "public", 100);
    kept.timeouts.idle_ms = 1000;
    kept.expires_at_ms = 100_000;
    store.create_session(&kept).await.unwrap();
    store.durable().await.unwrap();
    assert_eq!(
        store
            .session_lineage("s")
            .await
            .unwrap()
            .unwrap()
            .ends_at_ms(),
        1100
    );
    // Activity moves the end on.
    store
        .update_session("k", &mut |c| {
            let mut next = c.unwrap().clone();
            next.last_active_ms = 1050;
            Change::Put(Box::new(next))
        })
        .await
        .unwrap();
    let swept = store.sweep_expired(1100, 10).await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].handle, "s");
    assert_eq!(swept[0].timeouts.idle_ms, 1000);
    assert_eq!(swept[0].last_active_ms, 100);
    assert!(store.session("s").await.unwrap().is_none());
    assert!(store.session("k").await.unwrap().is_some());
    // A shorter idle timeout written later moves the end earlier.
    store
        .update_session("k", &mut |c| {
            let mut next = c.unwrap().clone();
            next.timeouts.idle_ms = 100;
            Change::Put(Box::new(next))
        })
        .await
        .unwrap();
    assert_eq!(store.sweep_expired(1149, 10).await.unwrap().len(), 0);
    assert_eq!(store.sweep_expired(1150, 10).await.unwrap().len(), 1);
    assert_eq!(store.count_sessions().await.unwrap(), 0);
}

pub async fn the_session_limit_holds_under_concurrent_creates(store: Arc<dyn Store>) {
    let limit = |evict| SessionLimit {
        max: 5,
        evict,
        live_at_ms: 1000,
    };
    // An expired session does not count.
    let mut old = session("old", "alice", "public", 1);
    old.expires_at_ms = 500;
    store.create_session(&old).await.unwrap();
    // Another tenant's do not either.
    store
        .create_session(&session("acme", "alice", "acme", 1))
        .await
        .unwrap();

    let creates = (0..32).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let r = session(&format!("refuse-{i:02}"), "alice", "public", 2000 + i);
            store
                .create_session_within(&r, &limit(false))
                .await
                .unwrap()
        })
    });
    let mut created = 0;
    for create in creates.collect::<Vec<_>>() {
        match create.await.unwrap() {
            Admission::Created { evicted } => {
                assert!(evicted.is_empty());
                created += 1;
            }
            Admission::Refused => {}
        }
    }
    assert_eq!(created, 5);
    let live = |store: Arc<dyn Store>| async move {
        page(&store, "alice", Some("public"), None, 1000, 100)
            .await
            .0
            .len()
    };
    assert_eq!(live(store.clone()).await, 5);

    // Evicting: every create succeeds, and the user still holds five.
    let creates = (0..32).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let r = session(&format!("evict-{i:02}"), "alice", "public", 3000 + i);
            store.create_session_within(&r, &limit(true)).await.unwrap()
        })
    });
    let mut evicted_total = 0;
    for create in creates.collect::<Vec<_>>() {
        match create.await.unwrap() {
            Admission::Created { evicted } => evicted_total += evicted.len(),
            Admission::Refused => panic!("an evicting limit refused a create"),
        }
    }
    assert_eq!(evicted_total, 32);
    assert_eq!(live(store.clone()).await, 5);
    assert!(store.session("acme").await.unwrap().is_some());
}

pub async fn the_least_recently_active_session_is_evicted(store: Arc<dyn Store>) {
    for (handle, active) in [("a", 30), ("b", 10), ("c", 20)] {
        let mut r = session(handle, "alice", "public", 1);
        r.last_active_ms = active;
        store.create_session(&r).await.unwrap();
    }
    let limit = SessionLimit {
        max: 3,
        evict: true,
        live_at_ms: 100,
    };
    let admitted = store
        .create_session_within(&session("d", "alice", "public", 50), &limit)
        .await
        .unwrap();
    let Admission::Created { evicted } = admitted else {
        panic!("refused");
    };
    assert_eq!(
        evicted
            .iter()
            .map(|s| s.handle.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert!(store.session("b").await.unwrap().is_none());
    assert!(store.session("d").await.unwrap().is_some());
    let refused = SessionLimit {
        evict: false,
        ..limit
    };
    assert_eq!(
        store
            .create_session_within(&session("e", "alice", "public", 60), &refused)
            .await
            .unwrap(),
        Admission::Refused
    );
    assert!(store.session("e").await.unwrap().is_none());
}
