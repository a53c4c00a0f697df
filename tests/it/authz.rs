//! Gateway checks: Envoy's external authorization over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`, called with envoy-types'
//! own client) and HTTP forward authentication on `/authz`, against the real
//! server: where the token is read from, anti-CSRF on cookie-borne tokens,
//! per-route policy, the identity headers (never the client's forged ones),
//! the deny answers, the callers' keys and the metrics.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use serde_json::{Value, json};
use sessiond::config::ApiKey;
use sessiond::pb;
use tonic::Code;

use crate::helpers::*;

const VERIFY_KEY: &str = "verify-key-0123456789abcdef";

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.api_keys = vec![
            ApiKey::admin("ops", API_KEY),
            ApiKey::parse(&format!("gateway:verify:{VERIFY_KEY}"), 1).unwrap(),
        ];
        c.authz_claim_headers = vec![
            ("role".into(), "x-user-role".into()),
            ("perms".into(), "x-user-perms".into()),
            ("st-role".into(), "x-user-roles".into()),
        ];
        c.access_token_lifetime = Duration::from_secs(600);
    })
    .await
}

/// A session of user `u` with a role and (with `anti_csrf`) an anti-CSRF
/// token.
async fn session(server: &TestServer, anti_csrf: bool) -> pb::CreateNewSessionResponse {
    let mut c = server.sessions().await;
    c.create_new_session(with_metadata(
        pb::CreateNewSessionRequest {
            user_id: "u".into(),
            access_token_payload: Some(obj(json!({
                "role": "admin",
                "perms": ["read", "write"],
                "st-role": {"v": ["admin"], "t": 1},
            }))),
            disable_anti_csrf: !anti_csrf,
            ..Default::default()
        },
        &[("x-api-key", API_KEY)],
    ))
    .await
    .unwrap()
    .into_inner()
}

/// A Check of a request with `method`, `headers` and route `extensions`.
async fn check(
    server: &TestServer,
    method: &str,
    headers: &[(&str, &str)],
    extensions: &[(&str, &str)],
) -> CheckResponse {
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    host: "app.example.com".into(),
                    path: "/orders?token=secret".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    };
    AuthorizationClient::new(server.channel().await)
        .check(with_metadata(request, &[("x-api-key", VERIFY_KEY)]))
        .await
        .unwrap()
        .into_inner()
}

/// The headers an allowed Check sets, and those it removes; panics on a
/// denial.
fn allowed(response: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    assert_eq!(response.status.as_ref().unwrap().code, 0, "{response:?}");
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("not allowed: {response:?}");
    };
    let set = ok
        .headers
        .iter()
        .map(|h| {
            // Each replaces the client's copies.
            assert_eq!(h.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD: {h:?}");
            let h = h.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    (set, ok.headers_to_remove.clone())
}

/// A denied Check's HTTP status and JSON body; panics when allowed.
fn denied(response: &CheckResponse) -> (i32, Value) {
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("not denied: {response:?}");
    };
    assert_ne!(response.status.as_ref().unwrap().code, 0);
    let body: Value = serde_json::from_str(&denied.body).unwrap();
    (denied.status.as_ref().unwrap().code, body)
}

#[tokio::test]
async fn check_allows_a_bearer_token_and_overwrites_forged_identity_headers() {
    let server = server().await;
    let created = session(&server, false).await;
    let token = access(&created);
    let bearer = format!("Bearer {token}");
    let response = check(
        &server,
        "GET",
        &[
            ("authorization", &bearer),
            ("x-user-id", "forged-admin"),
            ("x-tenant-id", "other"),
        ],
        &[],
    )
    .await;
    let (set, remove) = allowed(&response);
    assert_eq!(set["x-user-id"], "u");
    assert_eq!(set["x-tenant-id"], "public");
    assert_eq!(set["x-session-handle"], handle(&created));
    assert_eq!(set["x-user-role"], "admin");
    assert_eq!(set["x-user-perms"], r#"["read","write"]"#, "compact JSON");
    assert_eq!(set["x-user-roles"], r#"["admin"]"#, "a claim's value");
    assert!(remove.is_empty(), "{remove:?}");

    // A token without the claims: the client's claim headers are removed.
    let mut c = server.sessions().await;
    let plain = c
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "v".into(),
                disable_anti_csrf: true,
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap()
        .into_inner();
    let bearer = format!("Bearer {}", access(&plain));
    let response = check(
        &server,
        "GET",
        &[("authorization", &bearer), ("x-user-role", "admin")],
        &[],
    )
    .await;
    let (set, mut remove) = allowed(&response);
    assert!(!set.contains_key("x-user-role"));
    remove.sort();
    assert_eq!(remove, ["x-user-perms", "x-user-role", "x-user-roles"]);
}

#[tokio::test]
async fn check_reads_the_cookie_and_wants_the_anti_csrf_token_on_unsafe_methods() {
    let server = server().await;
    let created = session(&server, true).await;
    let cookie = format!("theme=dark; sAccessToken={}", access(&created));
    let anti_csrf = created.anti_csrf_token.clone().unwrap();

    let (set, _) = allowed(&check(&server, "GET", &[("cookie", &cookie)], &[]).await);
    assert_eq!(set["x-user-id"], "u");

    let (status, body) = denied(&check(&server, "POST", &[("cookie", &cookie)], &[]).await);
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "TRY_REFRESH_TOKEN", "{body}");
    let (status, _) = denied(
        &check(
            &server,
            "POST",
            &[("cookie", &cookie), ("anti-csrf", "wrong")],
            &[],
        )
        .await,
    );
    assert_eq!(status, 401);
    allowed(
        &check(
            &server,
            "POST",
            &[("cookie", &cookie), ("anti-csrf", &anti_csrf)],
            &[],
        )
        .await,
    );

    // A Bearer token is not sent by the browser on its own: no anti-CSRF.
    let bearer = format!("Bearer {}", access(&created));
    allowed(&check(&server, "POST", &[("authorization", &bearer)], &[]).await);

    let (status, body) = denied(&check(&server, "GET", &[("cookie", "theme=dark")], &[]).await);
    assert_eq!(status, 401);
    assert_eq!(body["reason"], "UNAUTHORISED");
    assert!(
        body["message"].as_str().unwrap().contains("sAccessToken"),
        "{body}"
    );
}

#[tokio::test]
async fn check_denies_expired_revoked_and_failing_claims_as_get_session_does() {
    let server = server().await;
    let created = session(&server, false).await;
    let bearer = format!("Bearer {}", access(&created));
    let auth = [("authorization", bearer.as_str())];

    // Revoked: only a check of the store sees it.
    let mut c = server.sessions().await;
    let other = session(&server, false).await;
    let other_bearer = format!("Bearer {}", access(&other));
    c.revoke_session(with_metadata(
        pb::RevokeSessionRequest {
            session_handle: handle(&other),
        },
        &[("x-api-key", API_KEY)],
    ))
    .await
    .unwrap();
    let revoked = [("authorization", other_bearer.as_str())];
    allowed(&check(&server, "GET", &revoked, &[]).await);
    let (status, body) =
        denied(&check(&server, "GET", &revoked, &[("check_database", "true")]).await);
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("UNAUTHORISED"))
    );

    // A failing claim validator: 403, naming the claim.
    let validators = r#"[{"claimKey": "st-role", "includes": "owner", "id": "must-own"}]"#;
    let (status, body) =
        denied(&check(&server, "GET", &auth, &[("claim_validators", validators)]).await);
    assert_eq!(status, 403);
    assert_eq!(body["reason"], "INVALID_CLAIMS");
    assert_eq!(
        body["claim_validation_errors"][0]["id"], "must-own",
        "{body}"
    );
    assert_eq!(body["claim_validation_errors"][0]["message"], "wrong value");
    let passing = r#"[{"claim_key": "st-role", "includes": "admin"}]"#;
    allowed(&check(&server, "GET", &auth, &[("claim_validators", passing)]).await);

    // A route's bad policy names the setting.
    let (status, body) = denied(&check(&server, "GET", &auth, &[("claim_validators", "{}")]).await);
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("claim_validators"))
    );
    let (status, _) = denied(&check(&server, "GET", &auth, &[("check_database", "yes")]).await);
    assert_eq!(status, 400);

    // Expired: refresh and retry.
    server.clock.advance(Duration::from_secs(601));
    let (status, body) = denied(&check(&server, "GET", &auth, &[]).await);
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("TRY_REFRESH_TOKEN"))
    );
}

#[tokio::test]
async fn check_needs_a_verify_key() {
    let server = server().await;
    let request = CheckRequest::default();
    let refused = AuthorizationClient::new(server.channel().await)
        .check(request.clone())
        .await;
    assert_status(refused, Code::Unauthenticated, "MISSING_CREDENTIALS");
    let response = AuthorizationClient::new(server.channel().await)
        .check(with_metadata(request, &[("x-api-key", VERIFY_KEY)]))
        .await
        .unwrap()
        .into_inner();
    let (status, _) = denied(&response);
    assert_eq!(status, 401, "no token in an empty request");
}

/// A forward-authentication sub-request: (status code, headers, body).
async fn forward(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    http1_answer(&http1_exchange(addr, request.as_bytes()).await)
}

#[tokio::test]
async fn forward_auth_answers_with_the_same_decision_over_http() {
    let server = server().await;
    let created = session(&server, true).await;
    let bearer = format!("Bearer {}", access(&created));
    let key = ("x-api-key", VERIFY_KEY);

    // Any method, /authz and below (Envoy's HTTP ext_authz appends the path).
    for (method, path) in [
        ("GET", "/authz"),
        ("POST", "/authz/orders/7"),
        ("DELETE", "/authz/"),
    ] {
        let (code, headers, _) = forward(
            server.addr,
            method,
            path,
            &[key, ("authorization", &bearer), ("x-user-id", "forged")],
        )
        .await;
        assert_eq!(code, 200, "{method} {path}");
        assert_eq!(headers["x-user-id"], "u");
        assert_eq!(headers["x-session-handle"], handle(&created));
        assert_eq!(headers["x-user-role"], "admin");
    }

    // The original method decides anti-CSRF for a cookie.
    let cookie = format!("sAccessToken={}", access(&created));
    let (code, _, body) = forward(
        server.addr,
        "GET",
        "/authz",
        &[key, ("cookie", &cookie), ("x-forwarded-method", "POST")],
    )
    .await;
    assert_eq!(code, 401, "{body}");
    let (code, _, _) = forward(
        server.addr,
        "GET",
        "/authz",
        &[key, ("cookie", &cookie), ("x-original-method", "GET")],
    )
    .await;
    assert_eq!(code, 200);

    // Per-location policy through headers; a JSON body on refusal.
    let validators = r#"[{"claimKey": "st-role", "includes": "x"}]"#;
    let (code, headers, body) = forward(
        server.addr,
        "GET",
        "/authz",
        &[
            key,
            ("authorization", &bearer),
            ("x-sessiond-claim-validators", validators),
        ],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(headers["content-type"], "application/json");
    assert!(!headers.contains_key("x-user-id"), "nothing of the session");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["reason"], "INVALID_CLAIMS");
    assert_eq!(headers["x-sessiond-reason"], "INVALID_CLAIMS", "for nginx");

    // The caller must show a verify key.
    let (code, headers, body) =
        forward(server.addr, "GET", "/authz", &[("authorization", &bearer)]).await;
    assert_eq!(code, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["reason"],
        "MISSING_CREDENTIALS"
    );
    assert_eq!(headers["x-sessiond-reason"], "MISSING_CREDENTIALS");

    // Both front ends are counted.
    let (_, _, metrics) = http_get(server.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"sessiond_authz_decisions_total{front="http",outcome="allowed"} 4"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"front="http",outcome="invalid_claims"} 1"#));
    assert!(metrics.contains("sessiond_authz_decision_duration_seconds_count{front=\"http\"}"));
}
