//! Refresh rotation, the grace period and theft detection.

use std::time::Duration;

use serde_json::json;
use sessiond::pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::*;

fn tokens(r: &pb::RefreshSessionResponse) -> (String, String) {
    (
        r.access_token.clone().unwrap().token,
        r.refresh_token.clone().unwrap().token,
    )
}

#[tokio::test]
async fn a_chain_of_refreshes_rotates_every_time() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u1", json!({"k": "v"})).await;
    let mut refresh_tok = refresh_token(&created);
    let mut seen = vec![refresh_tok.clone()];
    for _ in 0..5 {
        server.clock.advance(Duration::from_secs(60));
        let r = refresh(&mut c, &refresh_tok).await.unwrap();
        let (a, rt) = tokens(&r);
        assert!(!seen.contains(&rt), "every refresh mints a new token");
        assert_eq!(r.session.as_ref().unwrap().session_handle, handle(&created));
        assert_eq!(claims(&a)["k"], "v", "the payload is carried over");
        verify(&mut c, &a, true).await.unwrap();
        seen.push(rt.clone());
        refresh_tok = rt;
    }
    // The refresh expiry slides with each rotation.
    let info = session_info(&mut c, &handle(&created)).await.unwrap();
    let created_s = info.time_created.unwrap().seconds;
    assert_eq!(
        info.expiry.unwrap().seconds - created_s,
        100 * 86400 + 5 * 60
    );
}

#[tokio::test]
async fn reuse_after_the_grace_period_is_theft_and_revokes_the_session() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "victim", json!({})).await;
    let r1 = refresh_token(&created);
    let (a2, r2) = tokens(&refresh(&mut c, &r1).await.unwrap());

    server.clock.advance(Duration::from_secs(31));
    let status = assert_status(
        refresh(&mut c, &r1).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
    let details = status.get_error_details();
    let info = details.error_info().unwrap();
    assert_eq!(info.metadata["session_handle"], handle(&created));
    assert_eq!(info.metadata["user_id"], "victim");

    // The whole session is gone: the legitimate branch is dead too.
    assert_status(
        refresh(&mut c, &r2).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        verify(&mut c, &a2, true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    verify(&mut c, &a2, false)
        .await
        .expect("stateless verification cannot know until exp");
}

#[tokio::test]
async fn reuse_of_an_older_token_is_theft_even_within_the_window() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let r1 = refresh_token(&created);
    let (_, r2) = tokens(&refresh(&mut c, &r1).await.unwrap());
    let (_, _r3) = tokens(&refresh(&mut c, &r2).await.unwrap());
    // R1 is two generations old: R1 -> R2 -> R3 -> R1.
    assert_status(
        refresh(&mut c, &r1).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
}

#[tokio::test]
async fn within_the_grace_period_the_previous_token_rotates_again() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let r1 = refresh_token(&created);
    let (a2, r2) = tokens(&refresh(&mut c, &r1).await.unwrap());

    // The response was lost; the client retries with R1 within 30 s.
    server.clock.advance(Duration::from_secs(20));
    let (a2b, r2b) = tokens(&refresh(&mut c, &r1).await.unwrap());
    assert_ne!(r2b, r2);
    verify(&mut c, &a2b, true).await.unwrap();
    // The displaced child no longer belongs to the session.
    assert_status(
        verify(&mut c, &a2, true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    // The retry's token continues the lineage normally.
    let (a3, _) = tokens(&refresh(&mut c, &r2b).await.unwrap());
    verify(&mut c, &a3, true).await.unwrap();
    // Using the displaced child is theft.
    assert_status(
        refresh(&mut c, &r2).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
}

#[tokio::test]
async fn the_grace_window_does_not_slide_on_re_rotation() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let r1 = refresh_token(&create(&mut c, "u", json!({})).await);
    refresh(&mut c, &r1).await.unwrap();
    server.clock.advance(Duration::from_secs(25));
    refresh(&mut c, &r1).await.unwrap();
    server.clock.advance(Duration::from_secs(10));
    assert_status(
        refresh(&mut c, &r1).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_of_one_token_leave_one_live_lineage() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "racer", json!({})).await;
    let r1 = refresh_token(&created);
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let mut c = c.clone();
            let r1 = r1.clone();
            tokio::spawn(async move { refresh(&mut c, &r1).await })
        })
        .collect();
    let mut access_tokens = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => access_tokens.push(tokens(&r).0),
            Err(s) => panic!("a refresh within the grace period must not fail: {s:?}"),
        }
    }
    let mut live = 0;
    for a in &access_tokens {
        if verify(&mut c, a, true).await.is_ok() {
            live += 1;
        }
    }
    assert_eq!(live, 1, "exactly one of the 32 new lineages is current");
    // No update was lost: R1 is still the previous token, so it may rotate
    // again within the window, and the expiry was set once.
    let info = session_info(&mut c, &handle(&created)).await.unwrap();
    assert_eq!(
        info.expiry.unwrap().seconds - info.time_created.unwrap().seconds,
        100 * 86400
    );
    let (a, _) = tokens(
        &refresh(&mut c, &r1)
            .await
            .expect("R1 is still the previous token"),
    );
    verify(&mut c, &a, true).await.unwrap();
}

#[tokio::test]
async fn with_no_grace_period_any_reuse_is_theft() {
    let server = TestServer::start_with(|c| c.refresh_grace_period = Duration::ZERO).await;
    let mut c = server.sessions().await;
    let r1 = refresh_token(&create(&mut c, "u", json!({})).await);
    let (a2, _) = tokens(&refresh(&mut c, &r1).await.unwrap());
    server.clock.advance(Duration::from_millis(1));
    assert_status(
        refresh(&mut c, &r1).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
    assert_status(
        verify(&mut c, &a2, true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
}

#[tokio::test]
async fn the_grace_window_includes_its_last_millisecond() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let r1 = refresh_token(&create(&mut c, "u", json!({})).await);
    refresh(&mut c, &r1).await.unwrap();
    server.clock.advance(Duration::from_secs(30));
    refresh(&mut c, &r1)
        .await
        .expect("now == rotated_at + grace is within the window");
    server.clock.advance(Duration::from_millis(1));
    assert_status(
        refresh(&mut c, &r1).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
}

#[tokio::test]
async fn anti_csrf_on_refresh_and_bad_refresh_tokens() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let anti_csrf = created.anti_csrf_token.clone().unwrap();
    let req = |anti: &str, disable: bool| pb::RefreshSessionRequest {
        refresh_token: refresh_token(&created),
        anti_csrf_token: anti.into(),
        disable_anti_csrf: disable,
        ..Default::default()
    };
    assert_status(
        c.refresh_session(req("wrong", false)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        c.refresh_session(req("", false)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    let r = c
        .refresh_session(req(&anti_csrf, false))
        .await
        .unwrap()
        .into_inner();
    let new_anti = r.anti_csrf_token.clone().unwrap();
    assert_ne!(
        new_anti, anti_csrf,
        "a new anti-CSRF token comes with each rotation"
    );
    assert_eq!(
        claims(&r.access_token.unwrap().token)["antiCsrfToken"],
        new_anti
    );

    // Garbage and forged tokens are UNAUTHORISED and do not revoke anything.
    let real = r.refresh_token.unwrap().token;
    let mut forged: Vec<char> = real.chars().collect();
    let last = forged.len() - 3;
    forged[last] = if forged[last] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    for bad in ["garbage", forged.as_str(), access(&created).as_str()] {
        assert_status(
            refresh(&mut c, bad).await,
            Code::Unauthenticated,
            "UNAUTHORISED",
        );
    }
    refresh(&mut c, &real)
        .await
        .expect("the session survived the forged tokens");
}

#[tokio::test]
async fn an_expired_refresh_token_is_unauthorised() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    server.clock.advance(Duration::from_secs(100 * 86400));
    assert_status(
        refresh(&mut c, &refresh_token(&created)).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
}
