//! What operators rely on: Prometheus metrics, graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use sessiond::pb;
use tonic::Code;

use crate::helpers::*;

/// Parses the text exposition format strictly enough to catch a malformed
/// line: every sample is `name{labels} value` with a declared TYPE.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    for line in lines {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.push(parts.next().unwrap().to_owned());
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name: {line}"
        );
        assert!(
            typed.iter().any(|t| name.starts_with(t.as_str())),
            "sample without TYPE: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn rpc(method: &str, code: &str) -> String {
    format!("{{service=\"sessiond.v1.SessionService\",method=\"{method}\",code=\"{code}\"}}")
}

#[tokio::test]
async fn metrics_count_a_known_sequence_of_calls_exactly() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let a = create(&mut c, "a", json!({})).await;
    let b = create(&mut c, "b", json!({})).await;
    verify(&mut c, &access(&a), false).await.unwrap();
    verify(&mut c, "garbage", false).await.unwrap_err();
    let r1 = refresh_token(&a);
    refresh(&mut c, &r1).await.unwrap();
    refresh(&mut c, &r1).await.unwrap();
    server.clock.advance(Duration::from_secs(31));
    assert_status(
        refresh(&mut c, &r1).await,
        Code::Unauthenticated,
        "TOKEN_THEFT_DETECTED",
    );
    c.revoke_session(pb::RevokeSessionRequest {
        session_handle: handle(&b),
    })
    .await
    .unwrap();

    let (status, headers, body) = http_get(server.addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        headers.contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    let m = parse_metrics(&body);
    let expect = |series: String, value: f64| {
        assert_eq!(m.get(&series).copied(), Some(value), "{series} in\n{body}");
    };
    expect(
        format!(
            "sessiond_grpc_requests_total{}",
            rpc("CreateNewSession", "OK")
        ),
        2.0,
    );
    expect(
        format!("sessiond_grpc_requests_total{}", rpc("GetSession", "OK")),
        1.0,
    );
    expect(
        format!(
            "sessiond_grpc_requests_total{}",
            rpc("GetSession", "UNAUTHENTICATED")
        ),
        1.0,
    );
    expect(
        format!(
            "sessiond_grpc_requests_total{}",
            rpc("RefreshSession", "OK")
        ),
        2.0,
    );
    expect(
        format!(
            "sessiond_grpc_requests_total{}",
            rpc("RefreshSession", "UNAUTHENTICATED")
        ),
        1.0,
    );
    expect(
        format!("sessiond_grpc_requests_total{}", rpc("RevokeSession", "OK")),
        1.0,
    );
    expect(
        format!(
            "sessiond_grpc_request_duration_seconds_count{}",
            rpc("CreateNewSession", "OK")
        ),
        2.0,
    );
    expect("sessiond_refreshes_total{outcome=\"rotated\"}".into(), 1.0);
    expect("sessiond_refreshes_total{outcome=\"retried\"}".into(), 1.0);
    expect("sessiond_refreshes_total{outcome=\"theft\"}".into(), 1.0);
    expect("sessiond_token_theft_detections_total".into(), 1.0);
    expect("sessiond_revocations_total".into(), 1.0);
    expect("sessiond_sessions_live".into(), 0.0);
    assert!(m["sessiond_store_flush_duration_seconds_count"] >= 1.0);
    assert!(m["sessiond_store_size_bytes"] > 0.0);
    assert!(m.contains_key("sessiond_key_rotations_total"));
    assert!(m.contains_key("sessiond_sessions_swept_total"));
}

#[tokio::test]
async fn the_drain_timeout_cuts_streams_that_never_end() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let server = TestServer::start_with(|c| c.drain_timeout = Duration::from_millis(200)).await;
    let created = create(&mut server.sessions().await, "u", json!({})).await;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    // The open Watch outlives the drain; the server still stops, releases the
    // data directory, and a new server serves the same sessions.
    let server = tokio::time::timeout(Duration::from_secs(10), server.restart())
        .await
        .expect("the drain timeout bounds the shutdown");
    let mut c = server.sessions().await;
    verify(&mut c, &access(&created), true).await.unwrap();
    // The stream saw NOT_SERVING, then was cut.
    assert_eq!(watch.message().await.unwrap().unwrap().status, 2);
    assert!(
        !matches!(watch.message().await, Ok(Some(_))),
        "the stream ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_api_keys_without_dropping_connections() {
    use crate::durability::{spawn_binary_with, wait_for_line};
    const OLD: &str = "old-key-0123456789abcdef";
    const NEW: &str = "new-key-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sessiond.toml");
    std::fs::write(&config, format!("api_keys = [\"{OLD}\"]\n")).unwrap();
    let data = dir.path().join("data");
    let (mut child, addr, lines) =
        spawn_binary_with(&data, &["--config", config.to_str().unwrap()]);

    // One connection, kept across the reload.
    let mut c = sessiond::pb::session_service_client::SessionServiceClient::connect(format!(
        "http://{addr}"
    ))
    .await
    .unwrap();
    let call = |key: &'static str| {
        with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "u".into(),
                ..Default::default()
            },
            &[("x-api-key", key)],
        )
    };
    c.create_new_session(call(OLD)).await.unwrap();
    assert_status(
        c.create_new_session(call(NEW)).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );

    let origin = "https://app.example.com";
    let (_, headers, _) = cors_preflight(addr.parse().unwrap(), origin).await;
    assert!(
        !headers.contains("access-control-allow-origin"),
        "{headers}"
    );

    std::fs::write(
        &config,
        format!("api_keys = [\"{NEW}\"]\ncors_origins = [\"{origin}\"]\n"),
    )
    .unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::task::spawn_blocking(move || {
        wait_for_line(&lines, "configuration reloaded");
        lines
    })
    .await
    .unwrap();

    c.create_new_session(call(NEW))
        .await
        .expect("the new key works on the same connection");
    assert_status(
        c.create_new_session(call(OLD)).await,
        Code::Unauthenticated,
        "MISSING_CREDENTIALS",
    );
    let (_, headers, _) = cors_preflight(addr.parse().unwrap(), origin).await;
    assert!(
        headers.contains(&format!("access-control-allow-origin: {origin}")),
        "{headers}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_even_at_trace() {
    use crate::durability::spawn_binary_with;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    const KEY: &str = "hygiene-api-key-0123456789";
    const CLIENT_SECRET: &str = "hygiene-client-secret-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr, lines) = spawn_binary_with(
        &data,
        &[
            "--log",
            "trace",
            "--api-key",
            KEY,
            "--client-secret",
            &format!("public={CLIENT_SECRET}"),
            "--signing-algorithm",
            "RS256",
        ],
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = sessiond::pb::session_service_client::SessionServiceClient::new(channel.clone());
    let mut b =
        sessiond::pb::user_session_service_client::UserSessionServiceClient::new(channel.clone());
    let mut j = sessiond::pb::jwt_service_client::JwtServiceClient::new(channel.clone());
    let key = [("x-api-key", KEY)];

    // The whole flow: create, verify, refresh (and a theft), buckets, JWTs, rotation.
    let created = c
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "hygiene".into(),
                access_token_payload: Some(obj(json!({"role": "admin"}))),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let anti_csrf = created.anti_csrf_token.clone().unwrap();
    c.get_session(with_metadata(
        pb::GetSessionRequest {
            access_token: access(&created),
            anti_csrf_token: anti_csrf.clone(),
            do_anti_csrf_check: true,
            check_database: true,
            ..Default::default()
        },
        &key,
    ))
    .await
    .unwrap();
    let refreshed = c
        .refresh_session(with_metadata(
            pb::RefreshSessionRequest {
                refresh_token: refresh_token(&created),
                anti_csrf_token: anti_csrf.clone(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let r2 = refreshed.refresh_token.clone().unwrap().token;
    let a2 = refreshed.access_token.clone().unwrap().token;
    let r3 = c
        .refresh_session(with_metadata(
            pb::RefreshSessionRequest {
                refresh_token: r2.clone(),
                disable_anti_csrf: true,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner()
        .refresh_token
        .unwrap()
        .token;
    let _ = c
        .refresh_session(with_metadata(
            pb::RefreshSessionRequest {
                refresh_token: refresh_token(&created),
                disable_anti_csrf: true,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap_err();
    let other = c
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest {
                user_id: "hygiene".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let bearer = format!("Bearer {}", access(&other));
    b.update_user_session(with_metadata(
        pb::UpdateUserSessionRequest {
            bucket: pb::Bucket::Private as i32,
            data: Some(obj(json!({"note": "x"}))),
            ..Default::default()
        },
        &[
            ("authorization", &bearer),
            ("x-client-secret", CLIENT_SECRET),
        ],
    ))
    .await
    .unwrap();
    let _ = b
        .get_user_session(with_metadata(
            pb::GetUserSessionRequest {
                bucket: pb::Bucket::Private as i32,
                ..Default::default()
            },
            &[
                ("authorization", &bearer),
                ("x-client-secret", "wrong-secret-0123456789"),
            ],
        ))
        .await
        .unwrap_err();
    let _ = c
        .create_new_session(with_metadata(
            pb::CreateNewSessionRequest::default(),
            &[("x-api-key", "wrong-key-0123456789abc")],
        ))
        .await
        .unwrap_err();
    let jwt = j
        .create_jwt(with_metadata(
            pb::CreateJwtRequest {
                payload: Some(obj(json!({"sub": "svc"}))),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner()
        .jwt;
    j.rotate_signing_key(with_metadata(pb::RotateSigningKeyRequest {}, &key))
        .await
        .unwrap();

    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    // Every line, up to the last one the server writes.
    let log: String = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(10)) {
            let last = line.contains("sessiond stopped");
            all.push(line);
            if last {
                break;
            }
        }
        all.join("\n")
    })
    .await
    .unwrap();
    assert!(log.contains("sessiond stopped"), "the log ran to the end");
    assert!(
        log.lines().count() > 500,
        "trace logging was on ({} lines)",
        log.lines().count()
    );

    // Private key material, read back from the store.
    let store = open_store(&data);
    let mut secrets: Vec<(String, String)> = vec![
        ("API key".into(), KEY.into()),
        ("client secret".into(), CLIENT_SECRET.into()),
        ("anti-CSRF token".into(), anti_csrf.clone()),
        ("access token".into(), access(&created)),
        (
            "access token signature".into(),
            access(&created).rsplit('.').next().unwrap().to_owned(),
        ),
        ("refreshed access token".into(), a2.clone()),
        ("JWT".into(), jwt.clone()),
        ("refresh token".into(), refresh_token(&created)),
        ("rotated refresh token".into(), r2.clone()),
        ("third refresh token".into(), r3.clone()),
    ];
    for key in sessiond::store::KeysAndSecrets::keys(store.as_ref())
        .await
        .unwrap()
    {
        let middle = &key.private_key[key.private_key.len() / 2..key.private_key.len() / 2 + 24];
        secrets.push((
            format!("{} private key (base64)", key.kid),
            STANDARD.encode(middle)[..28].to_owned(),
        ));
        secrets.push((
            format!("{} private key (hex)", key.kid),
            middle.iter().map(|b| format!("{b:02x}")).collect(),
        ));
        secrets.push((
            format!("{} private key (bytes)", key.kid),
            middle[..8]
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ));
        secrets.push((
            format!("{} private key (url base64)", key.kid),
            URL_SAFE_NO_PAD.encode(middle)[..28].to_owned(),
        ));
    }
    let mac = sessiond::store::KeysAndSecrets::secret(
        store.as_ref(),
        "refresh-token-mac",
        &mut || unreachable!(),
    )
    .await
    .unwrap();
    secrets.push((
        "refresh MAC secret (hex)".into(),
        mac.iter().map(|b| format!("{b:02x}")).collect(),
    ));
    secrets.push((
        "refresh MAC secret (bytes)".into(),
        mac[..8]
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ));
    drop(store);

    for (what, secret) in &secrets {
        assert!(!secret.is_empty());
        if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
            panic!(
                "the {what} appears in the log: {}",
                &line[..line.len().min(300)]
            );
        }
    }
}
