//! Revocation, session information, data and payload updates.

use std::time::Duration;

use serde_json::json;
use sessiond::pb;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn revoke_one_then_the_store_check_fails() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let revoke = |h: String| pb::RevokeSessionRequest { session_handle: h };
    assert!(
        c.revoke_session(revoke(handle(&created)))
            .await
            .unwrap()
            .into_inner()
            .revoked
    );
    assert!(
        !c.revoke_session(revoke(handle(&created)))
            .await
            .unwrap()
            .into_inner()
            .revoked,
        "already gone"
    );

    verify(&mut c, &access(&created), false)
        .await
        .expect("stateless verification holds until exp");
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

    let s = assert_status(
        c.revoke_session(revoke("nope".into())).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "session_handle");
}

#[tokio::test]
async fn revoke_many_and_revoke_all_for_a_user() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let a1 = create(&mut c, "ann", json!({})).await;
    let a2 = create(&mut c, "ann", json!({})).await;
    let a3 = create(&mut c, "ann", json!({})).await;
    let other_tenant = c
        .create_new_session(pb::CreateNewSessionRequest {
            user_id: "ann".into(),
            tenant_id: "t2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ben = create(&mut c, "ben", json!({})).await;

    let list = |user: &str, tenant: &str, all: bool| pb::GetAllSessionHandlesForUserRequest {
        user_id: user.into(),
        tenant_id: tenant.into(),
        fetch_across_all_tenants: all,
        ..Default::default()
    };
    let mut listed = c
        .get_all_session_handles_for_user(list("ann", "", false))
        .await
        .unwrap()
        .into_inner()
        .session_handles;
    listed.sort();
    let mut expected = vec![handle(&a1), handle(&a2), handle(&a3)];
    expected.sort();
    assert_eq!(listed, expected, "per tenant: the default tenant only");
    let all = c
        .get_all_session_handles_for_user(list("ann", "", true))
        .await
        .unwrap()
        .into_inner()
        .session_handles;
    assert_eq!(all.len(), 4);
    let t2 = c
        .get_all_session_handles_for_user(list("ann", "t2", false))
        .await
        .unwrap()
        .into_inner()
        .session_handles;
    assert_eq!(t2, [handle(&other_tenant)]);

    let unknown = "00000000-0000-4000-8000-000000000000".to_owned();
    let revoked = c
        .revoke_multiple_sessions(pb::RevokeMultipleSessionsRequest {
            session_handles: vec![handle(&a1), unknown],
        })
        .await
        .unwrap()
        .into_inner()
        .session_handles_revoked;
    assert_eq!(revoked, [handle(&a1)]);
    assert_status(
        verify(&mut c, &access(&a1), true).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );

    let s = assert_status(
        c.revoke_multiple_sessions(pb::RevokeMultipleSessionsRequest {
            session_handles: vec![handle(&a2), "bad".into()],
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "session_handles[1]");
    verify(&mut c, &access(&a2), true)
        .await
        .expect("nothing revoked by a refused call");

    let mut revoked = c
        .revoke_all_sessions_for_user(pb::RevokeAllSessionsForUserRequest {
            user_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_handles_revoked;
    revoked.sort();
    let mut expected = vec![handle(&a2), handle(&a3)];
    expected.sort();
    assert_eq!(revoked, expected);
    verify(&mut c, &access(&other_tenant), true)
        .await
        .expect("other tenants untouched");
    verify(&mut c, &access(&ben), true)
        .await
        .expect("other users untouched");

    let revoked = c
        .revoke_all_sessions_for_user(pb::RevokeAllSessionsForUserRequest {
            user_id: "ann".into(),
            revoke_across_all_tenants: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_handles_revoked;
    assert_eq!(revoked, [handle(&other_tenant)]);
    assert!(
        c.get_all_session_handles_for_user(list("ann", "", true))
            .await
            .unwrap()
            .into_inner()
            .session_handles
            .is_empty()
    );

    let s = assert_status(
        c.get_all_session_handles_for_user(list("", "", false))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "user_id");
}

#[tokio::test]
async fn expired_sessions_are_invisible_at_once() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "eve", json!({})).await;
    server.clock.advance(Duration::from_secs(100 * 86400));
    let listed = c
        .get_all_session_handles_for_user(pb::GetAllSessionHandlesForUserRequest {
            user_id: "eve".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.session_handles.is_empty());
    assert_status(
        session_info(&mut c, &handle(&created)).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    // Revoking what has already expired revokes nothing.
    let revoked = c
        .revoke_session(pb::RevokeSessionRequest {
            session_handle: handle(&created),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.revoked);
}

#[tokio::test]
async fn session_information_and_data_overwrite() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = c
        .create_new_session(pb::CreateNewSessionRequest {
            user_id: "fay".into(),
            tenant_id: "acme".into(),
            access_token_payload: Some(obj(json!({"plan": "pro"}))),
            session_data_in_database: Some(obj(json!({"cart": [1, 2], "secret": "s"}))),
            disable_anti_csrf: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let h = handle(&created);
    let got = session_info(&mut c, &h).await.unwrap();
    assert_eq!(got.user_id, "fay");
    assert_eq!(got.tenant_id, "acme");
    assert_eq!(
        json(got.session_data_in_database.as_ref().unwrap()),
        json!({"cart": [1.0, 2.0], "secret": "s"})
    );
    assert_eq!(
        json(got.custom_claims_in_access_token_payload.as_ref().unwrap()),
        json!({"plan": "pro"})
    );
    let created_at = got.time_created.unwrap();
    assert_eq!(
        got.expiry.unwrap().seconds - created_at.seconds,
        100 * 86400
    );

    let updated = c
        .update_session_data_in_database(pb::UpdateSessionDataInDatabaseRequest {
            session_handle: handle(&created),
            new_session_data: Some(obj(json!({"only": true}))),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.updated);
    let got = session_info(&mut c, &h).await.unwrap();
    assert_eq!(
        json(got.session_data_in_database.as_ref().unwrap()),
        json!({"only": true}),
        "overwritten, not merged"
    );
    assert!(
        !claims(&access(&created))
            .as_object()
            .unwrap()
            .contains_key("only"),
        "data never reaches tokens"
    );

    let unknown = "00000000-0000-4000-8000-000000000000".to_owned();
    assert_status(
        c.update_session_data_in_database(pb::UpdateSessionDataInDatabaseRequest {
            session_handle: unknown.clone(),
            new_session_data: Some(obj(json!({}))),
        })
        .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
    assert_status(
        session_info(&mut c, &unknown).await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}

#[tokio::test]
async fn payload_merge_reaches_the_next_refresh_and_regenerate() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "gus", json!({"keep": 1, "drop": 2, "change": "a"})).await;
    let merge = |update: serde_json::Value| pb::MergeIntoAccessTokenPayloadRequest {
        session_handle: handle(&created),
        access_token_payload_update: Some(obj(update)),
    };
    assert!(
        c.merge_into_access_token_payload(merge(json!({"drop": null, "change": "b", "new": [1]})))
            .await
            .unwrap()
            .into_inner()
            .updated
    );

    let s = assert_status(
        c.merge_into_access_token_payload(merge(json!({"exp": 0, "x": 1})))
            .await,
        Code::InvalidArgument,
        "PROTECTED_CLAIM",
    );
    assert_eq!(bad_field(&s), "access_token_payload_update.exp");

    let expected = json!({"keep": 1, "change": "b", "new": [1]});
    assert_eq!(
        stored_payload(&mut c, &handle(&created)).await,
        json!({"keep": 1.0, "change": "b", "new": [1.0]})
    );

    // The existing token is unchanged; the next regenerate and refresh carry the merge.
    assert_eq!(claims(&access(&created))["drop"], 2);
    let regen = c
        .regenerate_access_token(pb::RegenerateAccessTokenRequest {
            access_token: access(&created),
            new_access_token_payload: None,
        })
        .await
        .unwrap()
        .into_inner();
    let regen_claims = claims(&regen.access_token.unwrap().token);
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&regen_claims[k], v, "regenerate carries {k}");
    }
    assert!(regen_claims.get("drop").is_none());

    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    let refreshed_claims = claims(&refreshed.access_token.unwrap().token);
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&refreshed_claims[k], v, "refresh carries {k}");
    }
}

#[tokio::test]
async fn regenerate_keeps_exp_and_lineage() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "hal", json!({"v": 1})).await;
    server.clock.advance(Duration::from_secs(600));
    let regen = c
        .regenerate_access_token(pb::RegenerateAccessTokenRequest {
            access_token: access(&created),
            new_access_token_payload: Some(obj(json!({"v": 2}))),
        })
        .await
        .unwrap()
        .into_inner();
    let token = regen.access_token.unwrap();
    let (old, new) = (claims(&access(&created)), claims(&token.token));
    assert_eq!(new["exp"], old["exp"], "same expiry");
    assert_eq!(
        new["refreshTokenHash1"], old["refreshTokenHash1"],
        "same lineage"
    );
    assert_eq!(new["antiCsrfToken"], old["antiCsrfToken"]);
    assert_eq!(new["v"], 2);
    assert_eq!(
        token.expiry.unwrap().seconds as u64,
        old["exp"].as_u64().unwrap()
    );
    verify(&mut c, &token.token, true).await.unwrap();

    // The new payload is stored: the next refresh carries it.
    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    assert_eq!(claims(&refreshed.access_token.unwrap().token)["v"], 2);

    let s = assert_status(
        c.regenerate_access_token(pb::RegenerateAccessTokenRequest {
            access_token: access(&created),
            new_access_token_payload: Some(obj(json!({"sub": "root"}))),
        })
        .await,
        Code::InvalidArgument,
        "PROTECTED_CLAIM",
    );
    assert_eq!(bad_field(&s), "new_access_token_payload.sub");

    c.revoke_session(pb::RevokeSessionRequest {
        session_handle: handle(&created),
    })
    .await
    .unwrap();
    assert_status(
        c.regenerate_access_token(pb::RegenerateAccessTokenRequest {
            access_token: access(&created),
            new_access_token_payload: None,
        })
        .await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
}

/// Every session ListAllSessions gives, page by page, and the pages' sizes.
async fn list_all(
    admin: &mut sessiond::pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    tenant_id: Option<&str>,
    page_size: i32,
) -> (Vec<pb::ListedSession>, Vec<usize>) {
    let (mut all, mut sizes, mut page_token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = admin
            .list_all_sessions(pb::ListAllSessionsRequest {
                tenant_id: tenant_id.map(str::to_owned),
                page_size,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.sessions.len());
        all.extend(page.sessions);
        if page.next_page_token.is_empty() {
            return (all, sizes);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn every_live_session_is_listed_in_pages() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let old = create(&mut c, "old", json!({})).await;
    server.clock.advance(Duration::from_secs(50 * 86400));
    let mut live = Vec::new();
    for (user, tenant) in [
        ("ann", ""),
        ("bob", ""),
        ("ann", "t2"),
        ("cy", "t2"),
        ("dee", ""),
    ] {
        let created = c
            .create_new_session(pb::CreateNewSessionRequest {
                user_id: user.into(),
                tenant_id: tenant.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        live.push((handle(&created), user, tenant));
    }
    let mut admin =
        sessiond::pb::admin_service_client::AdminServiceClient::new(server.channel().await);

    let (all, sizes) = list_all(&mut admin, None, 2).await;
    let handles: Vec<String> = all.iter().map(|s| s.session_handle.clone()).collect();
    let mut expected: Vec<String> = live.iter().map(|(h, _, _)| h.clone()).collect();
    expected.push(handle(&old));
    expected.sort();
    assert_eq!(handles, expected, "every session once, in handle order");
    assert_eq!(sizes, [2, 2, 2], "no empty page after the last");
    let bob = all.iter().find(|s| s.user_id == "bob").unwrap();
    assert_eq!(bob.tenant_id, "public");
    assert!(bob.time_created.is_some() && bob.expiry.is_some());

    // One tenant; the default page holds them all.
    let (t2, sizes) = list_all(&mut admin, Some("t2"), 0).await;
    let mut users: Vec<&str> = t2.iter().map(|s| s.user_id.as_str()).collect();
    users.sort();
    assert_eq!(users, ["ann", "cy"]);
    assert_eq!(sizes, [2]);

    // Expired sessions are not listed.
    server.clock.advance(Duration::from_secs(51 * 86400));
    let (all, _) = list_all(&mut admin, None, 1000).await;
    assert_eq!(all.len(), live.len());
    assert!(all.iter().all(|s| s.session_handle != handle(&old)));

    // Bad input names its field.
    let bad =
        |tenant_id: Option<&str>, page_size: i32, page_token: &str| pb::ListAllSessionsRequest {
            tenant_id: tenant_id.map(str::to_owned),
            page_size,
            page_token: page_token.into(),
        };
    for (request, field) in [
        (bad(None, -1, ""), "page_size"),
        (bad(None, 1001, ""), "page_size"),
        (bad(None, 10, "not a token"), "page_token"),
        (bad(None, 10, "_w"), "page_token"),
        (bad(Some("no spaces"), 10, ""), "tenant_id"),
    ] {
        let status = assert_status(
            admin.list_all_sessions(request).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(bad_field(&status), field);
    }
}

#[tokio::test]
async fn listing_every_session_needs_an_admin_key() {
    const BACKEND: &str = "backend-key-0123456789";
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![
            sessiond::config::ApiKey::parse(&format!("app:backend:{BACKEND}"), 0).unwrap(),
            sessiond::config::ApiKey::admin("ops", API_KEY),
        ]
    })
    .await;
    let mut admin =
        sessiond::pb::admin_service_client::AdminServiceClient::new(server.channel().await);
    let request = |key: Option<&str>| {
        let message = pb::ListAllSessionsRequest::default();
        match key {
            Some(key) => with_metadata(message, &[("x-api-key", key)]),
            None => tonic::Request::new(message),
        }
    };
    assert_status(
        admin.list_all_sessions(request(None)).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    assert_status(
        admin.list_all_sessions(request(Some(BACKEND))).await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    admin
        .list_all_sessions(request(Some(API_KEY)))
        .await
        .expect("an admin key lists");
}
