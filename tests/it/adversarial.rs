//! Hostile input and hostile callers: each case asserts the exact error and
//! that nothing changed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use prost_types::value::Kind;
use serde_json::{Value, json};
use sessiond::config::ApiKey;
use sessiond::pb;
use sessiond::pb::session_service_client::SessionServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::*;

/// The session still works exactly as before.
async fn unchanged(c: &mut SessionServiceClient<Channel>, created: &pb::CreateNewSessionResponse) {
    let got = verify(c, &access(created), true)
        .await
        .expect("the real token still verifies");
    assert_eq!(got.session.unwrap().session_handle, handle(created));
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap()
}

fn with_header(token: &str, header: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", b64(header), parts[1], parts[2])
}

#[tokio::test]
async fn forged_headers_and_keys_are_unauthorised() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "victim", json!({"role": "user"})).await;
    let token = access(&created);
    let header = header_of(&token);
    let parts: Vec<&str> = token.split('.').collect();

    let mut forged = Vec::new();
    // alg none, without a signature.
    let mut none = header.clone();
    none["alg"] = json!("none");
    forged.push(format!("{}.{}.", b64(&none), parts[1]));
    // HS256 keyed with the published public key (algorithm confusion).
    let jwk: Value = {
        let (_, _, body) = http_get(server.addr, "/.well-known/jwks.json").await;
        serde_json::from_str::<Value>(&body).unwrap()["keys"][0].clone()
    };
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = header["kid"].as_str().map(str::to_owned);
    hs.extras.insert("version", "5");
    for secret in [
        serde_json::to_vec(&jwk).unwrap(),
        URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap(),
    ] {
        forged.push(
            jsonwebtoken::encode(
                &hs,
                &claims(&token),
                &jsonwebtoken::EncodingKey::from_secret(&secret),
            )
            .unwrap(),
        );
    }
    // kid: unknown, a path, injected JSON.
    for kid in [
        "d-0",
        "../../../../etc/passwd",
        "x\",\"alg\":\"none",
        "",
        "s-",
    ] {
        let mut h = header.clone();
        h["kid"] = json!(kid);
        forged.push(with_header(&token, &h));
    }
    let mut no_kid = header.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    forged.push(with_header(&token, &no_kid));
    // A forged exp on an expired-looking token: the signature no longer matches.
    let mut late = claims(&token);
    late["exp"] = json!(late["exp"].as_u64().unwrap() + 86_400);
    forged.push(format!("{}.{}.{}", parts[0], b64(&late), parts[2]));
    // A token from another sessiond, and a refresh token used as an access token.
    let other = TestServer::start().await;
    forged.push(access(
        &create(&mut other.sessions().await, "victim", json!({})).await,
    ));
    forged.push(refresh_token(&created));

    for bad in &forged {
        for check_database in [false, true] {
            assert_status(
                verify(&mut c, bad, check_database).await,
                Code::Unauthenticated,
                "UNAUTHORISED",
            );
        }
    }
    unchanged(&mut c, &created).await;
}

#[tokio::test]
async fn mangled_tokens_are_unauthorised() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let token = access(&created);
    let half = &token[..token.len() / 2];
    let mangled = [
        token[..token.len() - 1].to_owned(),
        half.to_owned(),
        format!("{token}="),
        format!("{token}=="),
        format!("{token}.x"),
        token.replacen('.', "*", 1),
        token.replace('-', "+"),
        format!(" {token}"),
        "..".to_owned(),
        "a".repeat(1 << 20),
        format!("{}.{}.{}", "e30", "e30", "A".repeat(300_000)),
    ];
    for bad in mangled.iter().filter(|m| **m != token) {
        let got = verify(&mut c, bad, false).await;
        assert!(got.is_err(), "accepted: {:?}", &bad[..bad.len().min(80)]);
        assert_status(got, Code::Unauthenticated, "UNAUTHORISED");
    }
    // The same against the refresh path: malformed, no theft handling.
    let refresh_tok = refresh_token(&created);
    for bad in [
        refresh_tok[..refresh_tok.len() - 1].to_owned(),
        format!("{refresh_tok}="),
        refresh_tok.to_uppercase(),
        token.clone(),
        "a".repeat(1 << 20),
    ] {
        assert_status(
            refresh(&mut c, &bad).await,
            Code::Unauthenticated,
            "UNAUTHORISED",
        );
    }
    unchanged(&mut c, &created).await;
    refresh(&mut c, &refresh_tok)
        .await
        .expect("the real refresh token was not touched");
}

#[tokio::test]
async fn every_reserved_claim_is_protected_everywhere() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({"plain": 1})).await;
    for claim in sessiond::token::access::RESERVED_CLAIMS {
        let payload = obj(json!({ claim: "forged" }));
        let s = assert_status(
            c.create_new_session(pb::CreateNewSessionRequest {
                user_id: "u".into(),
                access_token_payload: Some(payload.clone()),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "PROTECTED_CLAIM",
        );
        assert_eq!(bad_field(&s), format!("access_token_payload.{claim}"));
        assert_status(
            c.merge_into_access_token_payload(pb::MergeIntoAccessTokenPayloadRequest {
                session_handle: handle(&created),
                access_token_payload_update: Some(payload.clone()),
            })
            .await,
            Code::InvalidArgument,
            "PROTECTED_CLAIM",
        );
        assert_status(
            c.regenerate_access_token(pb::RegenerateAccessTokenRequest {
                access_token: access(&created),
                new_access_token_payload: Some(payload.clone()),
            })
            .await,
            Code::InvalidArgument,
            "PROTECTED_CLAIM",
        );
        assert_status(
            c.set_claim_value(pb::SetClaimValueRequest {
                session_handle: handle(&created),
                claim_key: claim.into(),
                value: Some(val(json!(1))),
            })
            .await,
            Code::InvalidArgument,
            "PROTECTED_CLAIM",
        );
    }
    assert_eq!(
        stored_payload(&mut c, &handle(&created)).await,
        json!({"plain": 1.0})
    );
}

fn nested(depth: usize) -> prost_types::Struct {
    let mut inner = prost_types::Struct::default();
    for _ in 0..depth {
        let mut outer = prost_types::Struct::default();
        outer.fields.insert(
            "n".into(),
            prost_types::Value {
                kind: Some(Kind::StructValue(inner)),
            },
        );
        inner = outer;
    }
    inner
}

#[tokio::test]
async fn deep_json_and_huge_messages_are_refused() {
    let server = TestServer::start_with(|c| c.limits.max_json_depth = 8).await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let merge = |payload| pb::MergeIntoAccessTokenPayloadRequest {
        session_handle: handle(&created),
        access_token_payload_update: Some(payload),
    };
    // Deeper than the configured limit: named with the field.
    let s = assert_status(
        c.merge_into_access_token_payload(merge(nested(12))).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "access_token_payload_update");
    assert!(s.message().contains("levels deep"), "{}", s.message());
    // 1000 levels: refused while decoding (protobuf's own recursion limit,
    // about 33 JSON levels through Struct), still as bad input.
    let s = assert_status(
        c.merge_into_access_token_payload(merge(nested(1000))).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "request");
    // A 10 MB message: over the decoded message limit (4 MiB).
    let big = obj(json!({"blob": "x".repeat(10 * 1024 * 1024)}));
    let s = assert_status(
        c.merge_into_access_token_payload(merge(big)).await,
        Code::OutOfRange,
        "MESSAGE_TOO_LARGE",
    );
    assert_eq!(bad_field(&s), "request");
    assert!(
        s.message()
            .contains("more than this server accepts (4194304 bytes, --max-message-size)"),
        "{}",
        s.message()
    );
    assert_eq!(stored_payload(&mut c, &handle(&created)).await, json!({}));
    unchanged(&mut c, &created).await;
}

/// One gRPC-Web call over HTTP/1.1 with raw header bytes (which HTTP/2
/// clients refuse to send); returns the response head, lowercased.
async fn raw_call(server: &TestServer, path: &str, message: &[u8], raw_headers: &[u8]) -> String {
    let raw = grpc_web_post(server.addr, path, message, raw_headers).await;
    String::from_utf8_lossy(&raw).to_lowercase()
}

#[tokio::test]
async fn invalid_utf8_in_metadata_is_refused_cleanly() {
    let server = TestServer::start_with(|c| c.api_keys = vec![ApiKey::admin("ops", API_KEY)]).await;
    let get = pb::GetSessionRequest {
        access_token: "x".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let head = raw_call(
        &server,
        "/sessiond.v1.SessionService/GetSession",
        &get,
        b"X-Api-Key: \xff\xfe\xfd-not-utf8\r\n",
    )
    .await;
    assert!(head.contains("grpc-status: 16"), "{head}");
    let bucket = pb::GetUserSessionRequest {
        bucket: pb::Bucket::Public as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let head = raw_call(
        &server,
        "/sessiond.v1.UserSessionService/GetUserSession",
        &bucket,
        b"Authorization: Bearer \xff\xfe\r\n",
    )
    .await;
    assert!(head.contains("grpc-status: 3"), "invalid argument: {head}");
    // The server is unharmed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn hostile_bucket_callers_change_nothing() {
    const SECRET: &str = "public-tenant-secret-0123456789";
    let server = TestServer::start_with(|c| {
        c.api_keys = vec![
            ApiKey::admin("ops", API_KEY),
            ApiKey::parse("sidecar:verify:verify-key-0123456789", 1).unwrap(),
        ];
        c.client_secrets = vec![("public".into(), sessiond::config::Secret::new(SECRET))];
    })
    .await;
    let mut c = server.sessions().await;
    let mut b = server.buckets().await;
    let new = |user: &str| {
        with_metadata(
            pb::CreateNewSessionRequest {
                user_id: user.into(),
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        )
    };
    let ann = c.create_new_session(new("ann")).await.unwrap().into_inner();
    let bob = c.create_new_session(new("bob")).await.unwrap().into_inner();
    let seed = pb::UpdateUserSessionRequest {
        bucket: pb::Bucket::Private as i32,
        data: Some(obj(json!({"card": "4242"}))),
        user_id: "bob".into(),
        ..Default::default()
    };
    b.update_user_session(with_metadata(seed, &[("x-api-key", API_KEY)]))
        .await
        .unwrap();

    let ann_auth = format!("Bearer {}", access(&ann));
    let write_bob = |bucket: pb::Bucket| pb::UpdateUserSessionRequest {
        bucket: bucket as i32,
        data: Some(obj(json!({"card": "stolen"}))),
        user_id: "bob".into(),
        ..Default::default()
    };
    // Ann's token on Bob's buckets; a near-miss secret; a verify-scoped key.
    let near_miss = format!("{}x", &SECRET[..SECRET.len() - 1]);
    let attempts: Vec<(tonic::Request<pb::UpdateUserSessionRequest>, Code, &str)> = vec![
        (
            with_metadata(
                write_bob(pb::Bucket::Public),
                &[("authorization", &ann_auth)],
            ),
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        ),
        (
            with_metadata(
                write_bob(pb::Bucket::Private),
                &[("authorization", &ann_auth), ("x-client-secret", SECRET)],
            ),
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        ),
        (
            with_metadata(
                write_bob(pb::Bucket::Private),
                &[("x-client-secret", &near_miss)],
            ),
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        ),
        (
            with_metadata(
                write_bob(pb::Bucket::Private),
                &[("x-api-key", "verify-key-0123456789")],
            ),
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        ),
        (
            with_metadata(
                write_bob(pb::Bucket::Private),
                &[("x-api-key", "verify-key-0123456780")],
            ),
            Code::Unauthenticated,
            "MISSING_CREDENTIALS",
        ),
    ];
    for (req, code, reason) in attempts {
        assert_status(b.update_user_session(req).await, code, reason);
    }
    // Bob's token cannot read his own private bucket without the secret either.
    assert_status(
        b.get_user_session(with_metadata(
            pb::GetUserSessionRequest {
                bucket: pb::Bucket::Private as i32,
                ..Default::default()
            },
            &[("authorization", &format!("Bearer {}", access(&bob)))],
        ))
        .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    let stored = b
        .get_user_session(with_metadata(
            pb::GetUserSessionRequest {
                bucket: pb::Bucket::Private as i32,
                user_id: "bob".into(),
                ..Default::default()
            },
            &[("x-api-key", API_KEY)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        json(stored.private.as_ref().unwrap()),
        json!({"card": "4242"})
    );
    assert_eq!(json(stored.public.as_ref().unwrap()), json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_shed_and_slow_calls_hit_the_deadline() {
    use crate::claims::{Provider, start_provider};
    let provider = Provider {
        delay: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    let slow = start_provider(provider.clone()).await;
    let server = TestServer::start_with(|c| {
        c.default_claim_provider = Some(format!("http://{slow}"));
        c.claim_provider_timeout = Duration::from_secs(5);
        c.limits.max_concurrent_requests = 1;
        c.limits.request_timeout = Duration::from_millis(500);
    })
    .await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let session_handle = handle(&created);
    let fetch = move || pb::FetchAndSetClaimRequest {
        session_handle: session_handle.clone(),
        claim_key: "slow".into(),
    };
    // One slow call holds the only slot; a second is shed at once.
    let mut first = c.clone();
    let first_request = fetch();
    let held = tokio::spawn(async move { first.fetch_and_set_claim(first_request).await });
    // The call holds its slot once it is waiting on the provider.
    wait_until("the slow call to reach the provider", || {
        provider.calls.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    let started = std::time::Instant::now();
    let s = assert_status(
        session_info(&mut c, &handle(&created)).await,
        Code::ResourceExhausted,
        "OVERLOADED",
    );
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "shed without queueing"
    );
    assert!(s.message().contains("retry"));
    // The slow call runs past the server's request timeout.
    assert_status(held.await.unwrap(), Code::DeadlineExceeded, "TIMEOUT");
    // A client deadline shorter than the server's applies too. tonic's client
    // enforces grpc-timeout itself, so send it raw: only the server acts.
    let started = std::time::Instant::now();
    let head = raw_call(
        &server,
        "/sessiond.v1.SessionService/FetchAndSetClaim",
        &fetch().encode_to_vec(),
        b"Grpc-Timeout: 200m\r\n",
    )
    .await;
    assert!(head.contains("grpc-status: 4"), "DEADLINE_EXCEEDED: {head}");
    assert!(started.elapsed() < Duration::from_millis(450));
    // Health is never shed.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn idle_connections_close_and_oversized_headers_are_refused() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start_with(|c| {
        c.limits.idle_timeout = Duration::from_secs(1);
        c.limits.max_header_list_bytes = 4096;
    })
    .await;
    // A client that connects and says nothing is let go.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Headers over the HTTP/2 limit are refused; the server carries on.
    let mut c = server.sessions().await;
    let big = "h".repeat(8192);
    let refused = c
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "u".into(),
                ..Default::default()
            },
            &[("x-padding", &big)],
        ))
        .await;
    assert!(refused.is_err());
    let mut c = server.sessions().await;
    create(&mut c, "u", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_holds_new_clients_back() {
    let server = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    // Take both slots with idle clients, once wait_ready's connection and
    // this one have closed: each is accepted when the server answers it.
    let mut c = server.sessions().await;
    create(&mut c, "u", json!({})).await;
    drop(c);
    let first = accepted_connection(server.addr).await;
    let _second = accepted_connection(server.addr).await;
    // A third client gets no answer while the limit is reached...
    let addr = server.addr;
    let mut third = tokio::spawn(async move {
        let mut c = SessionServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        create(&mut c, "late", json!({})).await
    });
    // Given 300 ms to be served, it is not (the wait ends early if it is).
    let _ = tokio::time::timeout(Duration::from_millis(300), &mut third).await;
    assert!(!third.is_finished(), "served beyond the connection limit");
    // ...and is served as soon as a slot frees.
    drop(first);
    let created = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("served after a slot freed")
        .unwrap();
    assert_eq!(created.session.unwrap().user_id, "late");
}

/// An HTTP/2 connection that the server has accepted: it opens one, sends
/// the client preface and waits (bounded) for the server's first frame,
/// which only a connection holding one of the server's slots gets.
async fn accepted_connection(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The preface, then an empty SETTINGS frame.
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut first_byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut first_byte))
        .await
        .expect("accepted within 30 s");
    assert_eq!(read.unwrap(), 1, "the server answered the preface");
    conn
}
