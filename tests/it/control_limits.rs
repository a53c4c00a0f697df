//! Session control through gRPC, the policies: the per-user session limit
//! (evict-oldest and refuse, also under 32 concurrent creates), the idle
//! timeout and a session's own shorter timeouts, and the sweeper with the
//! metrics that count what ended. Shared cases (see `control.rs`), run
//! here on sled and in `postgres.rs` on PostgreSQL; `replicas.rs` holds
//! the limit across three processes.

use std::sync::Arc;
use std::time::Duration;

use sessiond::config::Config;
use sessiond::pb;
use sessiond::session::LimitAction;
use tonic::Code;
use tonic_types::StatusExt;

use crate::control::{Backend, SLED, create_in, handles_of, listed, ms};
use crate::helpers::*;

/// The value of a series (`name{labels}`) on `/metrics`; 0 when absent.
pub async fn metric(server: &TestServer, series: &str) -> u64 {
    let (status, _, body) = http_get(server.addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn limited(backend: Backend<'_>, max: usize, action: LimitAction) -> impl FnOnce(&mut Config) {
    move |c| {
        backend(c);
        c.max_sessions_per_user = max;
        c.session_limit_action = action;
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// With evict-oldest, a create over the limit ends the user's least
/// recently active session, which a refresh makes recent: not simply the
/// oldest created. Other users and tenants keep theirs.
pub async fn evict_oldest_ends_the_least_recently_active(backend: Backend<'_>) {
    let server = TestServer::start_with(limited(backend, 3, LimitAction::EvictOldest)).await;
    let mut c = server.sessions().await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(create_in(&mut c, "ivy", "acme").await);
        others.push(create_in(&mut c, "jon", "public").await);
    }
    let mut s = Vec::new();
    for _ in 0..3 {
        s.push(create_in(&mut c, "ivy", "public").await);
        server.clock.advance(secs(1));
    }
    server.clock.advance(secs(10));
    let s0 = refresh(&mut c, &refresh_token(&s[0])).await.unwrap();
    server.clock.advance(secs(1));
    let fourth = create_in(&mut c, "ivy", "public").await;

    assert_status(
        verify(&mut c, &access(&s[1]), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        refresh(&mut c, &refresh_token(&s[1])).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_eq!(
        handles_of(&listed(&mut c, "ivy", "public").await),
        [handle(&fourth), handle(&s[2]), handle(&s[0])]
    );
    verify(&mut c, &s0.access_token.unwrap().token, true)
        .await
        .expect("the oldest created, refreshed since, stays");
    for kept in [&s[2], &fourth] {
        verify(&mut c, &access(kept), true).await.unwrap();
    }
    assert_eq!(metric(&server, "sessiond_sessions_evicted_total").await, 1);

    // Next to go is the third, now the least recently active.
    server.clock.advance(secs(1));
    let fifth = create_in(&mut c, "ivy", "public").await;
    assert_eq!(
        handles_of(&listed(&mut c, "ivy", "public").await),
        [handle(&fifth), handle(&fourth), handle(&s[0])]
    );
    assert_eq!(metric(&server, "sessiond_sessions_evicted_total").await, 2);
    for other in &others {
        verify(&mut c, &access(other), true)
            .await
            .expect("another user's or tenant's session is untouched");
    }
}

/// With refuse, a create over the limit is RESOURCE_EXHAUSTED
/// (SESSION_LIMIT_REACHED) and ends nothing; other users and tenants may
/// still create; signing out of one makes room.
pub async fn refuse_answers_resource_exhausted_and_ends_nothing(backend: Backend<'_>) {
    let server = TestServer::start_with(limited(backend, 3, LimitAction::Refuse)).await;
    let mut c = server.sessions().await;
    let mut s = Vec::new();
    for _ in 0..3 {
        s.push(create_in(&mut c, "kim", "public").await);
    }
    let refused = assert_status(
        c.create_new_session(pb::CreateNewSessionRequest {
            user_id: "kim".into(),
            ..Default::default()
        })
        .await,
        Code::ResourceExhausted,
        "SESSION_LIMIT_REACHED",
    );
    let details = refused.get_error_details();
    assert_eq!(
        details.error_info().unwrap().metadata["max_sessions_per_user"],
        "3"
    );
    for kept in &s {
        verify(&mut c, &access(kept), true)
            .await
            .expect("a refused create ends nothing");
    }
    assert_eq!(listed(&mut c, "kim", "public").await.len(), 3);
    assert_eq!(metric(&server, "sessiond_sessions_evicted_total").await, 0);
    for _ in 0..3 {
        create_in(&mut c, "lea", "public").await;
        create_in(&mut c, "kim", "acme").await;
    }

    c.revoke_session(pb::RevokeSessionRequest {
        session_handle: handle(&s[1]),
    })
    .await
    .unwrap();
    create_in(&mut c, "kim", "public").await;
    assert_eq!(listed(&mut c, "kim", "public").await.len(), 3);
}

/// 32 creates for one user at once, against a limit of 3: with refuse
/// exactly 3 succeed; with evict-oldest all succeed and exactly 3 are live
/// after.
pub async fn concurrent_creates_hold_the_limit(backend: Backend<'_>) {
    const RACERS: usize = 32;
    // A user of each run's own: on PostgreSQL both runs share the database.
    for (action, user) in [
        (LimitAction::Refuse, "max-refused"),
        (LimitAction::EvictOldest, "max-evicted"),
    ] {
        let server = TestServer::start_with(limited(backend, 3, action)).await;
        let channel = server.channel().await;
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let mut c = pb::session_service_client::SessionServiceClient::new(channel.clone());
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    c.create_new_session(pb::CreateNewSessionRequest {
                        user_id: user.into(),
                        ..Default::default()
                    })
                    .await
                })
            })
            .collect();
        let mut created = Vec::new();
        for racer in racers {
            match racer.await.unwrap() {
                Ok(r) => created.push(r.into_inner()),
                Err(s) => {
                    assert_eq!(action, LimitAction::Refuse, "{s:?}");
                    assert_status::<()>(Err(s), Code::ResourceExhausted, "SESSION_LIMIT_REACHED");
                }
            }
        }
        let mut c = server.sessions().await;
        let mut live = Vec::new();
        for s in &created {
            match verify(&mut c, &access(s), true).await {
                Ok(_) => live.push(handle(s)),
                Err(e) => assert_eq!(e.code(), Code::Unauthenticated, "{e:?}"),
            }
        }
        live.sort();
        let mut listed = handles_of(&listed(&mut c, user, "public").await);
        listed.sort();
        assert_eq!(listed, live, "{action:?}");
        assert_eq!(live.len(), 3, "{action:?}");
        let evicted = metric(&server, "sessiond_sessions_evicted_total").await;
        match action {
            LimitAction::Refuse => assert_eq!((created.len(), evicted), (3, 0)),
            LimitAction::EvictOldest => assert_eq!((created.len(), evicted), (RACERS, 29)),
        }
    }
}

fn idle(backend: Backend<'_>, idle: Duration) -> impl FnOnce(&mut Config) {
    move |c| {
        backend(c);
        c.session_idle_timeout = idle;
    }
}

/// With --session-idle-timeout 10m, a session unused for longer is over:
/// its refresh is UNAUTHORISED and no access token of it outlives its idle
/// end. A refresh, or a database-checked use, keeps a session alive.
pub async fn an_idle_session_ends_and_use_keeps_one_alive(backend: Backend<'_>) {
    let server = TestServer::start_with(idle(backend, secs(600))).await;
    let mut c = server.sessions().await;
    let unused = create_in(&mut c, "ned", "public").await;
    let refreshed = create_in(&mut c, "ned", "public").await;
    let checked = create_in(&mut c, "ned", "public").await;
    let born = ms(unused.access_token.as_ref().unwrap().created_time.as_ref());
    assert_eq!(
        ms(unused.access_token.as_ref().unwrap().expiry.as_ref()),
        (born + 600_000) / 1000 * 1000,
        "an access token ends with its session's idle end (in whole seconds), before its own hour"
    );

    server.clock.advance(secs(540));
    let fresh = refresh(&mut c, &refresh_token(&refreshed)).await.unwrap();
    verify(&mut c, &access(&checked), true).await.unwrap();

    server.clock.advance(secs(120));
    // Its token has expired with it: a database check says the session is
    // over (a refresh would fail too), a stateless one only that the token
    // expired.
    assert_status(
        verify(&mut c, &access(&unused), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        verify(&mut c, &access(&unused), false).await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );
    assert_status(
        refresh(&mut c, &refresh_token(&unused)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        session_info(&mut c, &handle(&unused)).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    verify(&mut c, &fresh.access_token.unwrap().token, true)
        .await
        .expect("refreshed 2 min ago");
    let sessions = listed(&mut c, "ned", "public").await;
    assert_eq!(
        handles_of(&sessions).len(),
        2,
        "the idle one is not listed: {sessions:?}"
    );
    for s in &sessions {
        assert_eq!(
            ms(s.expiry.as_ref()),
            ms(s.last_active_time.as_ref()) + 600_000,
            "a listed session ends 10 min after its last activity"
        );
    }
    // Its access token has expired (it was made before the use), but the
    // session lives on: 11 min after creation, 2 min after its last use.
    refresh(&mut c, &refresh_token(&checked))
        .await
        .expect("a database-checked use kept it alive");
    assert_eq!(
        metric(&server, "sessiond_sessions_expired_total{reason=\"idle\"}").await,
        1,
        "the refused refresh found it idle"
    );
}

/// When the operator lowers the idle timeout, a database-checked
/// GetSession refuses a session idle for longer, though its access token
/// still verifies statelessly.
pub async fn a_lowered_idle_timeout_is_enforced_by_check_database(backend: Backend<'_>) {
    let server = TestServer::start_with(backend).await;
    let mut c = server.sessions().await;
    let created = create_in(&mut c, "ola", "public").await;
    server.clock.advance(secs(180));
    let server = server
        .restart_with(|c| c.session_idle_timeout = secs(120))
        .await;
    let mut c = server.sessions().await;
    verify(&mut c, &access(&created), false)
        .await
        .expect("a stateless check reads no store");
    assert_status(
        verify(&mut c, &access(&created), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        refresh(&mut c, &refresh_token(&created)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
}

fn duration(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// A session's own idle timeout and maximum lifetime, given at
/// CreateNewSession, hold when shorter than the server's; a longer one is
/// refused naming the field.
pub async fn own_timeouts_may_only_shorten_the_servers(backend: Backend<'_>) {
    let server = TestServer::start_with(|c| {
        backend(c);
        c.session_idle_timeout = secs(1800);
        c.session_max_lifetime = secs(86_400);
    })
    .await;
    let mut c = server.sessions().await;
    let own = |idle: Option<prost_types::Duration>, max: Option<prost_types::Duration>| {
        pb::CreateNewSessionRequest {
            user_id: "pia".into(),
            disable_anti_csrf: true,
            session_idle_timeout: idle,
            session_max_lifetime: max,
            ..Default::default()
        }
    };
    for (req, field) in [
        (own(duration(1801), None), "session_idle_timeout"),
        (own(duration(0), None), "session_idle_timeout"),
        (own(duration(-60), None), "session_idle_timeout"),
        (own(None, duration(86_401)), "session_max_lifetime"),
    ] {
        let s = assert_status(
            c.create_new_session(req).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(bad_field(&s), field);
    }
    assert!(listed(&mut c, "pia", "public").await.is_empty());

    let short_idle = c
        .create_new_session(own(duration(300), None))
        .await
        .unwrap()
        .into_inner();
    let short_life = c
        .create_new_session(own(None, duration(7200)))
        .await
        .unwrap()
        .into_inner();
    let plain = create_in(&mut c, "pia", "public").await;
    let born = ms(plain.access_token.as_ref().unwrap().created_time.as_ref());
    assert_eq!(
        ms(short_life.refresh_token.as_ref().unwrap().expiry.as_ref()),
        born + 7_200_000
    );

    server.clock.advance(secs(360));
    assert_status(
        refresh(&mut c, &refresh_token(&short_idle)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    // Used every 19 min, the others live on; the 2 h one ends at 2 h.
    let (mut life, mut other) = (refresh_token(&short_life), refresh_token(&plain));
    for _ in 0..6 {
        life = refresh(&mut c, &life)
            .await
            .unwrap()
            .refresh_token
            .unwrap()
            .token;
        other = refresh(&mut c, &other)
            .await
            .unwrap()
            .refresh_token
            .unwrap()
            .token;
        server.clock.advance(secs(1139));
    }
    // 6 s before its end, and 1 s after.
    let last = refresh(&mut c, &life).await.unwrap();
    assert_eq!(
        ms(last.refresh_token.as_ref().unwrap().expiry.as_ref()),
        born + 7_200_000,
        "no refresh carries it past 2 h"
    );
    life = last.refresh_token.unwrap().token;
    server.clock.advance(secs(7));
    assert_status(
        refresh(&mut c, &life).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    refresh(&mut c, &other)
        .await
        .expect("the server's own 1 d is far off");
    assert_eq!(
        handles_of(&listed(&mut c, "pia", "public").await),
        [handle(&plain)]
    );
}

/// Waits (bounded) for the sweeper to leave `n` sessions stored.
async fn swept_to(server: &TestServer, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(server, "sessiond_sessions_live").await != n {
        assert!(
            std::time::Instant::now() < deadline,
            "not swept to {n} in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The sweeper removes sessions whose idle timeout or maximum lifetime
/// has passed, and `/metrics` counts them by why they ended.
pub async fn the_sweeper_removes_ended_sessions_and_counts_why(backend: Backend<'_>) {
    let server = TestServer::start_with(|c| {
        backend(c);
        c.session_idle_timeout = secs(600);
        // The sweeper ticks in real time and reads the test's clock.
        c.sweep_interval = Duration::from_millis(50);
    })
    .await;
    let mut c = server.sessions().await;
    let stored = || metric(&server, "sessiond_sessions_live");
    for _ in 0..2 {
        create_in(&mut c, "quinn", "public").await;
    }
    c.create_new_session(pb::CreateNewSessionRequest {
        user_id: "quinn".into(),
        session_max_lifetime: duration(300),
        ..Default::default()
    })
    .await
    .unwrap();
    let kept = create_in(&mut c, "quinn", "public").await;
    assert_eq!(stored().await, 4);

    server.clock.advance(secs(540));
    let kept = refresh(&mut c, &refresh_token(&kept)).await.unwrap();
    swept_to(&server, 3).await;
    assert_eq!(
        metric(
            &server,
            "sessiond_sessions_expired_total{reason=\"lifetime\"}"
        )
        .await,
        1,
        "the 5 min session is over"
    );
    assert_eq!(
        metric(&server, "sessiond_sessions_expired_total{reason=\"idle\"}").await,
        0
    );
    server.clock.advance(secs(120));
    swept_to(&server, 1).await;
    assert_eq!(
        metric(&server, "sessiond_sessions_expired_total{reason=\"idle\"}").await,
        2
    );
    assert_eq!(
        metric(
            &server,
            "sessiond_sessions_expired_total{reason=\"lifetime\"}"
        )
        .await,
        1
    );
    assert_eq!(metric(&server, "sessiond_sessions_swept_total").await, 3);
    assert_eq!(
        handles_of(&listed(&mut c, "quinn", "public").await),
        [kept.session.unwrap().session_handle]
    );
    refresh(&mut c, &kept.refresh_token.unwrap().token)
        .await
        .unwrap();
}

#[tokio::test]
async fn evict_oldest_on_sled() {
    evict_oldest_ends_the_least_recently_active(SLED).await;
}

#[tokio::test]
async fn refuse_on_sled() {
    refuse_answers_resource_exhausted_and_ends_nothing(SLED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_on_sled() {
    concurrent_creates_hold_the_limit(SLED).await;
}

#[tokio::test]
async fn idle_timeout_on_sled() {
    an_idle_session_ends_and_use_keeps_one_alive(SLED).await;
}

#[tokio::test]
async fn lowered_idle_timeout_on_sled() {
    a_lowered_idle_timeout_is_enforced_by_check_database(SLED).await;
}

#[tokio::test]
async fn own_timeouts_on_sled() {
    own_timeouts_may_only_shorten_the_servers(SLED).await;
}

#[tokio::test]
async fn sweeper_on_sled() {
    the_sweeper_removes_ended_sessions_and_counts_why(SLED).await;
}
