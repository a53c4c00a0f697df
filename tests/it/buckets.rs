//! UserSessionService: public and private buckets, their callers, merges,
//! limits, concurrency, persistence, and gRPC-Web with CORS.

use std::time::Duration;

use serde_json::{Value, json};
use sessiond::config::Secret;
use sessiond::pb;
use sessiond::pb::Bucket;
use tonic::Code;

use crate::helpers::*;

const SECRET: &str = "public-tenant-secret-0123456789";

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.client_secrets = vec![("public".into(), Secret::new(SECRET))];
        c.cors_origins = vec!["https://app.example.com".into()];
    })
    .await
}

async fn user_session(
    server: &TestServer,
    user: &str,
    identifier: &str,
) -> pb::CreateNewSessionResponse {
    server
        .sessions()
        .await
        .create_new_session(pb::CreateNewSessionRequest {
            user_id: user.into(),
            user_identifier: identifier.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn get(bucket: Bucket) -> pb::GetUserSessionRequest {
    pb::GetUserSessionRequest {
        bucket: bucket as i32,
        ..Default::default()
    }
}

fn update(bucket: Bucket, data: Value) -> pb::UpdateUserSessionRequest {
    pb::UpdateUserSessionRequest {
        bucket: bucket as i32,
        data: Some(obj(data)),
        ..Default::default()
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn the_user_reads_and_writes_the_public_bucket_with_a_token() {
    let server = server().await;
    let mut b = server.buckets().await;
    let s = user_session(&server, "ann", "ann@example.com").await;
    let auth = bearer(&access(&s));

    let r = b
        .get_user_session(with_metadata(
            get(Bucket::Public),
            &[("authorization", &auth)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(r.public.as_ref().unwrap()), json!({}));
    assert!(
        r.private.is_none(),
        "an end user without the secret never sees private"
    );
    assert_eq!(r.user_id, "ann");
    assert_eq!(r.user_identifier, "ann@example.com");

    let r = b
        .update_user_session(with_metadata(
            update(
                Bucket::Public,
                json!({"displayName": "Ann", "theme": "dark"}),
            ),
            &[("authorization", &auth)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json(r.public.as_ref().unwrap()),
        json!({"displayName": "Ann", "theme": "dark"})
    );
    assert!(r.private.is_none());
    let r = b
        .get_user_session(with_metadata(
            get(Bucket::Public),
            &[("authorization", &auth)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(r.public.as_ref().unwrap())["theme"], "dark");
}

#[tokio::test]
async fn the_private_bucket_needs_the_tenant_secret_or_a_backend_key() {
    let server = server().await;
    let mut b = server.buckets().await;
    let s = user_session(&server, "ann", "").await;
    let auth = bearer(&access(&s));
    let token_only = [("authorization", auth.as_str())];

    // Refused, and nothing written.
    assert_status(
        b.get_user_session(with_metadata(get(Bucket::Private), &token_only))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_status(
        b.update_user_session(with_metadata(
            update(Bucket::Private, json!({"x": 1})),
            &token_only,
        ))
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let near_miss = format!("{}X", &SECRET[..SECRET.len() - 1]);
    assert_status(
        b.get_user_session(with_metadata(
            get(Bucket::Private),
            &[("authorization", &auth), ("x-client-secret", &near_miss)],
        ))
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );

    // The tenant's secret with the user's token.
    let r = b
        .update_user_session(with_metadata(
            update(Bucket::Private, json!({"stripeCustomerId": "cus_1"})),
            &[("authorization", &auth), ("x-client-secret", SECRET)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json(r.private.as_ref().unwrap()),
        json!({"stripeCustomerId": "cus_1"})
    );
    // The secret alone, naming the user, as a tenant's server does.
    let r = b
        .get_user_session(with_metadata(
            pb::GetUserSessionRequest {
                bucket: Bucket::Private as i32,
                user_id: "ann".into(),
                ..Default::default()
            },
            &[("x-client-secret", SECRET)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json(r.private.as_ref().unwrap())["stripeCustomerId"],
        "cus_1"
    );
    // The user's own public read still hides it.
    let r = b
        .get_user_session(with_metadata(get(Bucket::Public), &token_only))
        .await
        .unwrap()
        .into_inner();
    assert!(r.private.is_none());
}

#[tokio::test]
async fn backend_api_keys_reach_any_user_and_tokens_only_their_own() {
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![sessiond::config::ApiKey::admin("test", API_KEY)]
    })
    .await;
    let mut c = server.sessions().await;
    let ann = c
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "ann".into(),
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap()
        .into_inner();
    let mut b = server.buckets().await;
    let backend = b
        .update_user_session(with_metadata(
            pb::UpdateUserSessionRequest {
                bucket: Bucket::Private as i32,
                data: Some(obj(json!({"role": "admin"}))),
                user_id: "bob".into(),
                user_identifier: Some("bob@example.com".into()),
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(backend.user_id, "bob");
    assert_eq!(backend.user_identifier, "bob@example.com");
    assert_eq!(
        json(backend.private.as_ref().unwrap()),
        json!({"role": "admin"})
    );

    // Ann's token cannot name Bob.
    let auth = bearer(&access(&ann));
    let s = assert_status(
        b.get_user_session(with_metadata(
            pb::GetUserSessionRequest {
                bucket: Bucket::Public as i32,
                user_id: "bob".into(),
                ..Default::default()
            },
            &[("authorization", &auth)],
        ))
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert!(!s.message().contains("admin"));
    // Nor set her identifier herself.
    assert_status(
        b.update_user_session(with_metadata(
            pb::UpdateUserSessionRequest {
                bucket: Bucket::Public as i32,
                data: Some(obj(json!({}))),
                user_identifier: Some("root".into()),
                ..Default::default()
            },
            &[("authorization", &auth)],
        ))
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    // No credentials at all, or a wrong key.
    assert_status(
        b.get_user_session(get(Bucket::Public)).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    assert_status(
        b.get_user_session(with_metadata(
            get(Bucket::Public),
            &[("x-api-key", "not-the-key-at-all-000")],
        ))
        .await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused() {
    let server = server().await;
    let mut b = server.buckets().await;
    let s = user_session(&server, "ann", "").await;
    let auth = bearer(&access(&s));
    server
        .sessions()
        .await
        .revoke_session(pb::RevokeSessionRequest {
            session_handle: handle(&s),
        })
        .await
        .unwrap();
    assert_status(
        b.get_user_session(with_metadata(
            get(Bucket::Public),
            &[("authorization", &auth)],
        ))
        .await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    let s = user_session(&server, "ann", "").await;
    server.clock.advance(Duration::from_secs(3600));
    assert_status(
        b.get_user_session(with_metadata(
            get(Bucket::Public),
            &[("authorization", &bearer(&access(&s)))],
        ))
        .await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );
    let s = assert_status(
        b.get_user_session(with_metadata(
            get(Bucket::Public),
            &[("authorization", "Basic abc")],
        ))
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "authorization");
}

#[tokio::test]
async fn updates_are_json_merge_patches_and_clear_empties() {
    let server = server().await;
    let mut b = server.buckets().await;
    let s = user_session(&server, "ann", "").await;
    let auth = bearer(&access(&s));
    let patch = |data: Value| {
        let req = with_metadata(update(Bucket::Public, data), &[("authorization", &auth)]);
        let mut b = b.clone();
        async move {
            json(
                b.update_user_session(req)
                    .await
                    .unwrap()
                    .into_inner()
                    .public
                    .as_ref()
                    .unwrap(),
            )
        }
    };
    patch(json!({"prefs": {"theme": "dark", "lang": "en"}, "tags": ["a", "b"], "n": 1})).await;
    let merged =
        patch(json!({"prefs": {"lang": null, "size": "L"}, "tags": ["c"], "n": null})).await;
    assert_eq!(
        merged,
        json!({"prefs": {"theme": "dark", "size": "L"}, "tags": ["c"]})
    );

    let cleared = b
        .clear_user_session(with_metadata(
            pb::ClearUserSessionRequest {
                bucket: Bucket::Public as i32,
                ..Default::default()
            },
            &[("authorization", &auth)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(cleared.public.as_ref().unwrap()), json!({}));

    // A read may leave the bucket out; a write must name one.
    let s = assert_status(
        b.update_user_session(with_metadata(
            update(Bucket::Unspecified, json!({"a": 1})),
            &[("authorization", &auth)],
        ))
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "bucket");
    let s = assert_status(
        b.clear_user_session(with_metadata(
            pb::ClearUserSessionRequest::default(),
            &[("authorization", &auth)],
        ))
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "bucket");
}

#[tokio::test]
async fn an_update_over_the_size_cap_changes_nothing() {
    let server = TestServer::start_with(|c| c.max_bucket_bytes = 1024).await;
    let mut b = server.buckets().await;
    let named = |data: Value| pb::UpdateUserSessionRequest {
        bucket: Bucket::Public as i32,
        data: Some(obj(data)),
        user_id: "ann".into(),
        ..Default::default()
    };
    b.update_user_session(named(json!({"keep": "x".repeat(600)})))
        .await
        .unwrap();
    let s = assert_status(
        b.update_user_session(named(json!({"more": "y".repeat(600)})))
            .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "data");
    let r = b
        .get_user_session(pb::GetUserSessionRequest {
            bucket: Bucket::Public as i32,
            user_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json(r.public.as_ref().unwrap()),
        json!({"keep": "x".repeat(600)})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_updates_all_land_and_survive_a_restart() {
    let server = server().await;
    let s = user_session(&server, "ann", "").await;
    let auth = bearer(&access(&s));
    let b = server.buckets().await;
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut b = b.clone();
            let req = with_metadata(
                update(Bucket::Public, json!({ format!("k{i}"): i })),
                &[("authorization", &auth)],
            );
            tokio::spawn(async move { b.update_user_session(req).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    drop(b);
    let server = server.restart().await;
    let r = server
        .buckets()
        .await
        .get_user_session(with_metadata(
            get(Bucket::Public),
            &[("authorization", &auth)],
        ))
        .await
        .unwrap()
        .into_inner();
    let public = json(r.public.as_ref().unwrap());
    for i in 0..50 {
        assert_eq!(public[format!("k{i}")], json!(i as f64), "k{i} lost");
    }
}

/// One gRPC-Web call over plain HTTP/1.1, as a browser makes it.
async fn grpc_web_call(
    server: &TestServer,
    path: &str,
    message: &[u8],
    headers: &[(&str, &str)],
) -> (String, String, Vec<u8>) {
    let mut extra = String::from("X-Grpc-Web: 1\r\nOrigin: https://app.example.com\r\n");
    for (k, v) in headers {
        extra.push_str(&format!("{k}: {v}\r\n"));
    }
    let raw = grpc_web_post(server.addr, path, message, extra.as_bytes()).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    // Frames: 0x00 = message, 0x80 = trailers.
    let (mut message, mut trailers) = (Vec::new(), String::new());
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let frame = &rest[5..5 + len];
        if rest[0] & 0x80 != 0 {
            trailers = String::from_utf8_lossy(frame).to_lowercase();
        } else {
            message = frame.to_vec();
        }
        rest = &rest[5 + len..];
    }
    (head, trailers, message)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

#[tokio::test]
async fn browsers_reach_the_buckets_over_grpc_web_with_cors() {
    use prost::Message;
    let server = server().await;
    let s = user_session(&server, "ann", "").await;
    let auth = bearer(&access(&s));
    let path = "/sessiond.v1.UserSessionService/UpdateUserSession";
    let req = update(Bucket::Public, json!({"theme": "dark"})).encode_to_vec();
    let (head, trailers, message) =
        grpc_web_call(&server, path, &req, &[("Authorization", &auth)]).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example.com"),
        "{head}"
    );
    assert!(head.contains("access-control-expose-headers"), "{head}");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let reply = pb::UpdateUserSessionResponse::decode(&message[..]).unwrap();
    assert_eq!(
        json(reply.public.as_ref().unwrap()),
        json!({"theme": "dark"})
    );

    // A private read from the browser is refused, with the status readable.
    let (head, trailers, message) = grpc_web_call(
        &server,
        "/sessiond.v1.UserSessionService/GetUserSession",
        &get(Bucket::Private).encode_to_vec(),
        &[("Authorization", &auth)],
    )
    .await;
    // A trailers-only answer carries the status in the HTTP headers.
    assert!(
        head.contains("grpc-status: 7") || trailers.contains("grpc-status:7"),
        "{head}\n{trailers}"
    );
    assert!(message.is_empty(), "no private data in the answer");

    // The preflight allows the credentials headers for configured origins only.
    let (status, headers, _) = cors_preflight(server.addr, "https://app.example.com").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("access-control-allow-origin: https://app.example.com"),
        "{headers}"
    );
    let allowed = headers
        .lines()
        .find(|l| l.starts_with("access-control-allow-headers"))
        .unwrap()
        .to_owned();
    for h in [
        "authorization",
        "x-client-secret",
        "x-grpc-web",
        "content-type",
    ] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    let (_, headers, _) = cors_preflight(server.addr, "https://evil.example.com").await;
    assert!(
        !headers.contains("access-control-allow-origin"),
        "{headers}"
    );

    // Plain HTTP routes keep working beside gRPC-Web.
    let (status, _, _) = http_get(server.addr, "/.well-known/jwks.json").await;
    assert!(status.contains("200"));
}

#[tokio::test]
async fn without_api_keys_a_wrong_client_secret_is_still_refused() {
    // No API key configured: a loopback caller with neither token nor secret
    // is a backend, but a client secret that is sent must be the tenant's.
    let server = server().await;
    let mut b = server.buckets().await;
    let private = |data| pb::UpdateUserSessionRequest {
        bucket: Bucket::Private as i32,
        user_id: "ann".into(),
        data: Some(obj(data)),
        ..Default::default()
    };
    for wrong in ["not-the-tenant-secret-0123456789", ""] {
        assert_status(
            b.update_user_session(with_metadata(
                private(json!({"stolen": true})),
                &[("x-client-secret", wrong)],
            ))
            .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    // The right secret, and no credentials at all, are both allowed; the
    // refused writes left nothing behind.
    b.update_user_session(with_metadata(
        private(json!({"plan": "pro"})),
        &[("x-client-secret", SECRET)],
    ))
    .await
    .unwrap();
    let r = b
        .update_user_session(private(json!({"seats": 3})))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json(r.private.as_ref().unwrap()),
        json!({"plan": "pro", "seats": 3.0})
    );
}

#[tokio::test]
async fn a_read_without_a_bucket_returns_what_the_caller_may_see() {
    let server = server().await;
    let mut b = server.buckets().await;
    let s = user_session(&server, "ann", "").await;
    let auth = bearer(&access(&s));
    b.update_user_session(with_metadata(
        update(Bucket::Public, json!({"theme": "dark"})),
        &[("authorization", &auth)],
    ))
    .await
    .unwrap();
    b.update_user_session(with_metadata(
        update(Bucket::Private, json!({"plan": "pro"})),
        &[("authorization", &auth), ("x-client-secret", SECRET)],
    ))
    .await
    .unwrap();

    // The user's token alone: public, and no private.
    let r = b
        .get_user_session(with_metadata(
            pb::GetUserSessionRequest::default(),
            &[("authorization", &auth)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(r.public.as_ref().unwrap()), json!({"theme": "dark"}));
    assert!(r.private.is_none());
    // With the tenant's secret, or as a backend: both.
    let r = b
        .get_user_session(with_metadata(
            pb::GetUserSessionRequest::default(),
            &[("authorization", &auth), ("x-client-secret", SECRET)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(r.private.as_ref().unwrap()), json!({"plan": "pro"}));
    let r = b
        .get_user_session(pb::GetUserSessionRequest {
            user_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(json(r.public.as_ref().unwrap()), json!({"theme": "dark"}));
    assert_eq!(json(r.private.as_ref().unwrap()), json!({"plan": "pro"}));
    // A bucket number that does not exist is bad input.
    let bad = b
        .get_user_session(with_metadata(
            pb::GetUserSessionRequest {
                bucket: 7,
                ..Default::default()
            },
            &[("authorization", &auth)],
        ))
        .await;
    assert_eq!(bad_field(&bad.unwrap_err()), "bucket");
}
