//! Creating and verifying sessions.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use sessiond::pb;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn create_then_verify_statelessly_and_against_the_store() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "alice", json!({"role": "admin", "n": 3})).await;

    let session = created.session.as_ref().unwrap();
    assert_eq!(session.user_id, "alice");
    assert_eq!(session.tenant_id, "public");
    assert_eq!(
        json(session.access_token_payload.as_ref().unwrap()),
        json!({"role": "admin", "n": 3.0})
    );
    assert!(
        created.anti_csrf_token.is_some(),
        "anti-CSRF is on unless disabled"
    );

    let claims = claims(&access(&created));
    for reserved in [
        "sub",
        "iat",
        "exp",
        "sessionHandle",
        "refreshTokenHash1",
        "tId",
        "rsub",
        "iss",
    ] {
        assert!(
            claims.get(reserved).is_some(),
            "{reserved} missing from {claims}"
        );
    }
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["role"], "admin");
    assert_eq!(
        claims["n"], 3,
        "integral numbers stay integers in the token"
    );
    assert_eq!(
        claims["antiCsrfToken"],
        created.anti_csrf_token.clone().unwrap()
    );
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600,
        "default access token lifetime is 1h"
    );
    let header_b64 = access(&created).split('.').next().unwrap().to_owned();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["version"], "5");
    assert!(header["kid"].as_str().unwrap().starts_with("d-"));

    for check_database in [false, true] {
        let got = verify(&mut c, &access(&created), check_database)
            .await
            .unwrap();
        let s = got.session.unwrap();
        assert_eq!(s.session_handle, handle(&created));
        assert_eq!(
            json(s.access_token_payload.as_ref().unwrap())["role"],
            "admin"
        );
        assert!(got.access_token.is_none());
    }
}

#[tokio::test]
async fn anti_csrf_is_checked_when_asked() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "bob", json!({})).await;
    let anti_csrf = created.anti_csrf_token.clone().unwrap();
    let get = |anti_csrf_token: &str, check: bool| pb::GetSessionRequest {
        access_token: access(&created),
        anti_csrf_token: anti_csrf_token.into(),
        do_anti_csrf_check: check,
        ..Default::default()
    };
    c.get_session(get(&anti_csrf, true)).await.unwrap();
    c.get_session(get("", false)).await.unwrap();
    assert_status(
        c.get_session(get("wrong", true)).await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );
    assert_status(
        c.get_session(get("", true)).await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );

    // A session created without anti-CSRF has no token to compare.
    let plain = c
        .create_new_session(pb::CreateNewSessionRequest {
            user_id: "bob".into(),
            disable_anti_csrf: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(plain.anti_csrf_token.is_none());
    assert!(claims(&access(&plain)).get("antiCsrfToken").is_none());
    c.get_session(pb::GetSessionRequest {
        access_token: access(&plain),
        do_anti_csrf_check: true,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tampered_and_random_tokens_are_unauthorised() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let token = access(&create(&mut c, "carol", json!({"role": "user"})).await);
    let parts: Vec<&str> = token.split('.').collect();

    // A payload that claims to be someone else, with the original signature.
    let mut forged = claims(&token);
    forged["sub"] = json!("mallory");
    forged["rsub"] = json!("mallory");
    let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    let tampered_payload = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);

    // One flipped character in the signature.
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[5] = if sig[5] == 'A' { 'B' } else { 'A' };
    let tampered_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        sig.into_iter().collect::<String>()
    );

    // alg: none, with no signature.
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","version":"5"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);

    let refresh = refresh_token(&create(&mut c, "carol", json!({})).await);
    for bad in [
        tampered_payload.as_str(),
        tampered_sig.as_str(),
        alg_none.as_str(),
        "not-a-token",
        "a.b.c",
        refresh.as_str(),
    ] {
        for check_database in [false, true] {
            assert_status(
                verify(&mut c, bad, check_database).await,
                Code::Unauthenticated,
                "UNAUTHORISED",
            );
        }
    }
}

#[tokio::test]
async fn an_expired_access_token_asks_for_a_refresh() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "dave", json!({})).await;
    server.clock.advance(Duration::from_secs(3599));
    verify(&mut c, &access(&created), false).await.unwrap();
    server.clock.advance(Duration::from_secs(1));
    let status = assert_status(
        verify(&mut c, &access(&created), false).await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );
    assert!(status.message().contains("expired"), "{}", status.message());
    // With the store checked too: the session lives, so a refresh helps.
    assert_status(
        verify(&mut c, &access(&created), true).await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );

    // The refresh token still works and gives a fresh access token.
    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    let fresh = refreshed.access_token.unwrap().token;
    verify(&mut c, &fresh, true).await.unwrap();

    // The expired token of a session that is over: no refresh can help.
    c.revoke_session(pb::RevokeSessionRequest {
        session_handle: handle(&created),
    })
    .await
    .unwrap();
    assert_status(
        verify(&mut c, &access(&created), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        verify(&mut c, &access(&created), false).await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let server = TestServer::start_with(|c| c.max_payload_bytes = 1024).await;
    let mut c = server.sessions().await;

    let s = assert_status(
        c.create_new_session(pb::CreateNewSessionRequest::default())
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "user_id");

    let big = json!({"blob": "x".repeat(2000)});
    let s = assert_status(
        c.create_new_session(pb::CreateNewSessionRequest {
            user_id: "u".into(),
            access_token_payload: Some(obj(big.clone())),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "access_token_payload");
    let s = assert_status(
        c.create_new_session(pb::CreateNewSessionRequest {
            user_id: "u".into(),
            session_data_in_database: Some(obj(big)),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "session_data_in_database");

    // Not JSON: NaN has no JSON form.
    let mut nan = obj(json!({}));
    nan.fields.insert(
        "score".into(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(f64::NAN)),
        },
    );
    let s = assert_status(
        c.create_new_session(pb::CreateNewSessionRequest {
            user_id: "u".into(),
            access_token_payload: Some(nan),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "access_token_payload.score");

    let s = assert_status(
        c.create_new_session(pb::CreateNewSessionRequest {
            user_id: "u".into(),
            access_token_payload: Some(obj(json!({"sessionHandle": "mine"}))),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "PROTECTED_CLAIM",
    );
    assert_eq!(bad_field(&s), "access_token_payload.sessionHandle");

    let s = assert_status(
        c.create_new_session(pb::CreateNewSessionRequest {
            user_id: "u".into(),
            tenant_id: "no spaces".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "tenant_id");

    let s = assert_status(
        verify(&mut c, "", false).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "access_token");
    let s = assert_status(
        refresh(&mut c, "").await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "refresh_token");
}

#[tokio::test]
async fn a_revocation_over_the_handle_limit_names_the_limit_in_the_right_number() {
    let server = TestServer::start_with(|c| c.limits.max_handles_per_call = 1).await;
    let mut c = server.sessions().await;
    let (a, b) = (
        create(&mut c, "limit", json!({})).await,
        create(&mut c, "limit", json!({})).await,
    );
    let status = assert_status(
        c.revoke_multiple_sessions(pb::RevokeMultipleSessionsRequest {
            session_handles: vec![handle(&a), handle(&b)],
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&status), "session_handles");
    assert!(
        status.message().contains("at most 1 handle per call"),
        "{}",
        status.message()
    );
}

/// RevokeOtherSessions against `server`: the kept session lives, the user's
/// other sessions in its tenant are revoked (and returned), sessions of
/// other tenants and users are untouched, and an unknown or malformed
/// handle is refused. Run on every store.
pub async fn revoking_the_other_sessions_keeps_one(server: &TestServer) {
    let mut c = server.sessions().await;
    let in_tenant = |user: &str, tenant: &str| pb::CreateNewSessionRequest {
        user_id: user.into(),
        tenant_id: tenant.into(),
        ..Default::default()
    };
    let mut made = Vec::new();
    for req in [
        in_tenant("u", "public"),
        in_tenant("u", "public"),
        in_tenant("u", "public"),
        in_tenant("u", "acme"),
        in_tenant("v", "public"),
    ] {
        made.push(c.create_new_session(req).await.unwrap().into_inner());
    }
    let keep = handle(&made[0]);
    let mut revoked = c
        .revoke_other_sessions(pb::RevokeOtherSessionsRequest {
            session_handle: keep.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_handles_revoked;
    revoked.sort();
    let mut expected = vec![handle(&made[1]), handle(&made[2])];
    expected.sort();
    assert_eq!(revoked, expected);
    verify(&mut c, &access(&made[0]), true).await.unwrap();
    for gone in &made[1..3] {
        assert_status(
            verify(&mut c, &access(gone), true).await,
            Code::Unauthenticated,
            "UNAUTHORISED",
        );
    }
    for kept in &made[3..] {
        verify(&mut c, &access(kept), true)
            .await
            .expect("another tenant's or user's session is untouched");
    }
    let again = c
        .revoke_other_sessions(pb::RevokeOtherSessionsRequest {
            session_handle: keep,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.session_handles_revoked.is_empty());

    c.revoke_session(pb::RevokeSessionRequest {
        session_handle: handle(&made[3]),
    })
    .await
    .unwrap();
    assert_status(
        c.revoke_other_sessions(pb::RevokeOtherSessionsRequest {
            session_handle: handle(&made[3]),
        })
        .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    let bad = c
        .revoke_other_sessions(pb::RevokeOtherSessionsRequest {
            session_handle: "not a handle".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&bad), "session_handle");
}

#[tokio::test]
async fn revoke_other_sessions_signs_out_everywhere_else() {
    revoking_the_other_sessions_keeps_one(&TestServer::start().await).await;
}

#[tokio::test]
async fn refresh_never_carries_a_session_past_its_maximum_lifetime() {
    let server = TestServer::start_with(|c| {
        c.refresh_token_lifetime = Duration::from_secs(86_400);
        c.session_max_lifetime = Duration::from_secs(7_200);
    })
    .await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let born_ms = created
        .access_token
        .as_ref()
        .unwrap()
        .created_time
        .as_ref()
        .unwrap()
        .seconds
        * 1000;
    let end_s = born_ms / 1000 + 7_200;
    let expiry = |t: &pb::Token| t.expiry.as_ref().unwrap().seconds;
    assert_eq!(
        expiry(created.refresh_token.as_ref().unwrap()),
        end_s,
        "the maximum is shorter than one refresh lifetime"
    );

    server.clock.advance(Duration::from_secs(5_400));
    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    assert_eq!(expiry(refreshed.refresh_token.as_ref().unwrap()), end_s);
    let access = refreshed.access_token.as_ref().unwrap();
    assert_eq!(
        expiry(access),
        end_s,
        "no access token outlives its session"
    );
    let info = session_info(&mut c, &handle(&created)).await.unwrap();
    assert_eq!(info.expiry.unwrap().seconds, end_s);

    server.clock.advance(Duration::from_secs(1_801));
    let next = refreshed.refresh_token.unwrap().token;
    assert_status(
        refresh(&mut c, &next).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    assert_status(
        session_info(&mut c, &handle(&created)).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}
