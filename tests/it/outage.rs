//! A PostgreSQL outage under load: calls that need the database fail fast
//! with UNAVAILABLE / STORE_UNAVAILABLE (never hang, never INTERNAL),
//! stateless GetSession keeps working, health reports NOT_SERVING, and once
//! the database is back the same server serves again and every write it
//! acknowledged before the outage is there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sessiond::pb;
use tonic::Code;

use crate::helpers::{
    TestServer, access, assert_status, create, handle, health, refresh, refresh_token,
    session_info, verify,
};
use crate::postgres::harness;

/// Longer than any call may take: a call still running then hangs.
const CALL_LIMIT: Duration = Duration::from_secs(20);

async fn wait_for_health(server: &TestServer, status: i32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(server).await != status {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the load saw: acknowledged writes, and every failure's code.
#[derive(Default)]
struct Seen {
    /// Sessions whose creation was acknowledged.
    created: Vec<String>,
    /// Sessions whose refresh was acknowledged, with the new access token.
    refreshed: Vec<(String, String)>,
    /// Codes of the calls that failed.
    failures: Vec<Code>,
    /// Calls that did not answer within [`CALL_LIMIT`].
    hung: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_fails_fast_and_loses_nothing_acknowledged() {
    let test = "a_database_outage_under_load_fails_fast_and_loses_nothing_acknowledged";
    let Some(db) = harness::postgres_alone(test) else {
        return;
    };
    let server = crate::postgres::server_on(&db).await;
    let mut c = server.sessions().await;
    let before = create(&mut c, "before", json!({})).await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (seen, stop) = (seen.clone(), stop.clone());
        let mut c = server.sessions().await;
        load.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let created = c.create_new_session(pb::CreateNewSessionRequest {
                    user_id: format!("u{worker}-{i}"),
                    ..Default::default()
                });
                let created = match tokio::time::timeout(CALL_LIMIT, created).await {
                    Ok(Ok(created)) => created.into_inner(),
                    Ok(Err(status)) => {
                        seen.lock().unwrap().failures.push(status.code());
                        continue;
                    }
                    Err(_) => {
                        seen.lock().unwrap().hung += 1;
                        continue;
                    }
                };
                seen.lock().unwrap().created.push(handle(&created));
                match tokio::time::timeout(CALL_LIMIT, refresh(&mut c, &refresh_token(&created)))
                    .await
                {
                    Ok(Ok(r)) => seen
                        .lock()
                        .unwrap()
                        .refreshed
                        .push((handle(&created), r.access_token.unwrap().token)),
                    Ok(Err(status)) => seen.lock().unwrap().failures.push(status.code()),
                    Err(_) => seen.lock().unwrap().hung += 1,
                }
            }
        }));
    }
    let acknowledged = || seen.lock().unwrap().refreshed.len();
    crate::helpers::wait_until("50 acknowledged refreshes", || acknowledged() >= 50).await;

    db.cluster().stop().unwrap();
    wait_for_health(&server, 2, "health to report NOT_SERVING").await;
    let started = Instant::now();
    let refused = tokio::time::timeout(
        CALL_LIMIT,
        c.create_new_session(pb::CreateNewSessionRequest {
            user_id: "during".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("a create during the outage answers");
    assert_status(refused, Code::Unavailable, "STORE_UNAVAILABLE");
    assert!(started.elapsed() < CALL_LIMIT);
    assert_status(
        refresh(&mut c, &refresh_token(&before)).await,
        Code::Unavailable,
        "STORE_UNAVAILABLE",
    );
    verify(&mut c, &access(&before), false)
        .await
        .expect("stateless GetSession needs no database");

    db.cluster().restart().unwrap();
    wait_for_health(&server, 1, "health to report SERVING again").await;
    let after = create(&mut c, "after", json!({})).await;
    verify(&mut c, &access(&after), true).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for worker in load {
        worker.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.hung, 0, "calls hung during the outage");
    assert!(!seen.failures.is_empty(), "the load ran into the outage");
    assert!(
        seen.failures.iter().all(|code| *code == Code::Unavailable),
        "failures other than UNAVAILABLE: {:?}",
        seen.failures
    );
    for handle in &seen.created {
        session_info(&mut c, handle)
            .await
            .unwrap_or_else(|e| panic!("acknowledged session {handle} lost: {e:?}"));
    }
    for (handle, token) in &seen.refreshed {
        verify(&mut c, token, true)
            .await
            .unwrap_or_else(|e| panic!("acknowledged refresh of {handle} lost: {e:?}"));
    }
}
