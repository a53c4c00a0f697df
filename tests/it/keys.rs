//! Signing keys, rotation, JWKS, discovery and CreateJwt.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use serde_json::json;
use sessiond::config::SigningAlgorithm;
use sessiond::pb;
use tonic::Code;

use crate::helpers::*;

fn kid(jwt: &str) -> String {
    jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap()
}

async fn jwks(server: &TestServer) -> JwkSet {
    let (status, headers, body) = http_get(server.addr, "/.well-known/jwks.json").await;
    assert!(status.contains("200"), "{status}");
    let max_age: u64 = headers
        .split("cache-control: max-age=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no max-age in {headers}"));
    assert!(
        max_age <= 50,
        "cached no longer than the publication delay less the key ring reload interval: {max_age}"
    );
    serde_json::from_str(&body).unwrap()
}

/// Verifies a JWT the way an outside service would: with the published JWKS.
fn verify_with_jwks(set: &JwkSet, jwt: &str) -> serde_json::Value {
    let kid = kid(jwt);
    let jwk = set
        .find(&kid)
        .unwrap_or_else(|| panic!("{kid} is not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let alg = jsonwebtoken::decode_header(jwt).unwrap().alg;
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
        .unwrap()
        .claims
}

#[tokio::test]
async fn rotation_mid_session_keeps_every_live_token_verifiable() {
    let server =
        TestServer::start_with(|c| c.key_rotation_interval = Duration::from_secs(24 * 3600)).await;
    let mut c = server.sessions().await;
    let first = create(&mut c, "u", json!({})).await;
    let first_kid = kid(&access(&first));

    server
        .clock
        .advance(Duration::from_secs(24 * 3600 - 30 * 60));
    let late = create(&mut c, "u", json!({})).await;
    assert_eq!(kid(&access(&late)), first_kid);

    // Just before the interval ends a successor is published but does not sign yet.
    server.clock.advance(Duration::from_secs(29 * 60));
    let during = create(&mut c, "u", json!({})).await;
    assert_eq!(
        kid(&access(&during)),
        first_kid,
        "the old key signs during the publication delay"
    );
    let published: HashSet<String> = jwks(&server)
        .await
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    assert_eq!(
        published.iter().filter(|k| k.starts_with("d-")).count(),
        2,
        "{published:?}"
    );

    server.clock.advance(Duration::from_secs(60));
    let second = create(&mut c, "u", json!({})).await;
    let second_kid = kid(&access(&second));
    assert_ne!(second_kid, first_kid, "the new key signs after the delay");

    // Every live token verifies, by the server and with the JWKS.
    let set = jwks(&server).await;
    for created in [&late, &during, &second] {
        let token = access(created);
        verify(&mut c, &token, true).await.unwrap();
        verify_with_jwks(&set, &token);
    }
    assert_status(
        verify(&mut c, &access(&first), false).await,
        Code::Unauthenticated,
        "TRY_REFRESH_TOKEN",
    );
    // A refresh of the first session is signed by the new key.
    let refreshed = refresh(&mut c, &refresh_token(&first)).await.unwrap();
    assert_eq!(kid(&refreshed.access_token.unwrap().token), second_kid);

    // Once every token of the old key has expired, the key leaves the JWKS.
    server.clock.advance(Duration::from_secs(3600));
    let set = jwks(&server).await;
    assert!(
        set.find(&first_kid).is_none(),
        "retired key still published"
    );
    assert!(set.find(&second_kid).is_some());
}

#[tokio::test]
async fn rotate_signing_key_rpc_publishes_first() {
    let server = TestServer::start().await;
    let mut j = server.jwts().await;
    let mut c = server.sessions().await;
    let before = kid(&access(&create(&mut c, "u", json!({})).await));
    let rotated = j
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.kid, before);
    let keys = j
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(
        keys.iter().any(|k| k.kid == rotated.kid),
        "published at once"
    );
    assert_eq!(kid(&access(&create(&mut c, "u", json!({})).await)), before);
    server.clock.advance(Duration::from_secs(60));
    assert_eq!(
        kid(&access(&create(&mut c, "u", json!({})).await)),
        rotated.kid
    );
}

#[tokio::test]
async fn every_algorithm_signs_tokens_that_outside_verifiers_accept() {
    for alg in [
        SigningAlgorithm::RS256,
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
    ] {
        let server = TestServer::start_with(|c| c.signing_algorithm = alg).await;
        let mut c = server.sessions().await;
        let token = access(&create(&mut c, "u", json!({"a": 1})).await);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(format!("{:?}", header.alg), alg.as_str());
        let claims = verify_with_jwks(&jwks(&server).await, &token);
        assert_eq!(claims["a"], 1);
        verify(&mut c, &token, true).await.unwrap();

        let keys = server
            .jwts()
            .await
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys;
        let k = keys.iter().find(|k| k.kid == kid(&token)).unwrap();
        assert_eq!(k.alg, alg.as_str());
        assert_eq!(k.r#use, "sig");
        match alg {
            SigningAlgorithm::RS256 => {
                assert!(k.kty == "RSA" && !k.n.is_empty() && !k.e.is_empty())
            }
            SigningAlgorithm::ES256 => {
                assert!(k.kty == "EC" && k.crv == "P-256" && !k.y.is_empty())
            }
            SigningAlgorithm::EdDSA => {
                assert!(k.kty == "OKP" && k.crv == "Ed25519" && !k.x.is_empty())
            }
        }
    }
}

#[tokio::test]
async fn algorithm_confusion_and_unknown_keys_are_refused() {
    let server = TestServer::start_with(|c| c.signing_algorithm = SigningAlgorithm::RS256).await;
    let mut c = server.sessions().await;
    let token = access(&create(&mut c, "u", json!({})).await);
    let real_claims = claims(&token);
    let real_kid = kid(&token);

    // HS256 "signed" with the published public key as the HMAC secret.
    let set = jwks(&server).await;
    let public = serde_json::to_vec(set.find(&real_kid).unwrap()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(real_kid.clone());
    header.extras.insert("version", "5");
    let confused = jsonwebtoken::encode(
        &header,
        &real_claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_status(
        verify(&mut c, &confused, false).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );

    // A token signed by a key this server never had.
    let other = TestServer::start_with(|c| c.signing_algorithm = SigningAlgorithm::RS256).await;
    let foreign = access(&create(&mut other.sessions().await, "u", json!({})).await);
    assert_status(
        verify(&mut c, &foreign, false).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
}

#[tokio::test]
async fn create_jwt_with_rotating_and_static_keys() {
    let server = TestServer::start().await;
    let mut j = server.jwts().await;
    let jwt = j
        .create_jwt(pb::CreateJwtRequest {
            payload: Some(obj(json!({"sub": "svc", "scope": "read"}))),
            validity: Some(prost_types::Duration {
                seconds: 120,
                nanos: 0,
            }),
            use_static_signing_key: Some(false),
        })
        .await
        .unwrap()
        .into_inner()
        .jwt;
    let set = jwks(&server).await;
    let claims = verify_with_jwks(&set, &jwt);
    assert_eq!(claims["scope"], "read");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120
    );
    assert_eq!(claims["iss"], server.url());
    assert!(kid(&jwt).starts_with("d-"));

    let static_jwt = j
        .create_jwt(pb::CreateJwtRequest {
            payload: Some(obj(json!({"sub": "svc"}))),
            validity: None,
            use_static_signing_key: None,
        })
        .await
        .unwrap()
        .into_inner()
        .jwt;
    assert!(kid(&static_jwt).starts_with("s-"));
    verify_with_jwks(&set, &static_jwt);

    // A JWT can never pass as an access token.
    let mut c = server.sessions().await;
    assert_status(
        verify(&mut c, &jwt, false).await,
        Code::Unauthenticated,
        "UNAUTHORISED",
    );
    let s = assert_status(
        j.create_jwt(pb::CreateJwtRequest {
            payload: Some(obj(json!({"sessionHandle": "x"}))),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "PROTECTED_CLAIM",
    );
    assert_eq!(bad_field(&s), "payload.sessionHandle");
    let s = assert_status(
        j.create_jwt(pb::CreateJwtRequest {
            validity: Some(prost_types::Duration {
                seconds: -5,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "validity");
}

#[tokio::test]
async fn a_jwt_keeps_its_rotating_key_published_until_it_expires() {
    let server = TestServer::start_with(|c| {
        c.key_rotation_interval = Duration::from_secs(3600);
        c.access_token_lifetime = Duration::from_secs(60);
    })
    .await;
    let mut j = server.jwts().await;
    let create = |seconds| pb::CreateJwtRequest {
        payload: Some(obj(json!({"sub": "svc"}))),
        validity: Some(prost_types::Duration { seconds, nanos: 0 }),
        use_static_signing_key: Some(false),
    };
    // Longer than the rotation interval: that is what the static key is for.
    let s = assert_status(
        j.create_jwt(create(3601)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "validity");

    // Signed a minute before the key's interval ends, valid for an hour.
    server.clock.advance(Duration::from_secs(59 * 60));
    let jwt = j.create_jwt(create(3600)).await.unwrap().into_inner().jwt;
    // The successor signs from the hour; access tokens of the old key expire a
    // minute later, but the JWT keeps the old key published.
    server.clock.advance(Duration::from_secs(30 * 60));
    let mut c = server.sessions().await;
    let fresh = create_session_kid(&mut c).await;
    assert_ne!(fresh, kid(&jwt), "a newer key signs now");
    verify_with_jwks(&jwks(&server).await, &jwt);
    // Once the JWT has expired, its key leaves the JWKS.
    server.clock.advance(Duration::from_secs(30 * 60));
    assert!(
        jwks(&server).await.find(&kid(&jwt)).is_none(),
        "gone once the JWT expired"
    );
}

async fn create_session_kid(
    c: &mut sessiond::pb::session_service_client::SessionServiceClient<tonic::transport::Channel>,
) -> String {
    kid(&access(&create(c, "u", json!({})).await))
}

#[tokio::test]
async fn discovery_document_over_grpc_and_http() {
    let server =
        TestServer::start_with(|c| c.issuer = Some("https://auth.example.com".into())).await;
    let d = server
        .jwts()
        .await
        .get_open_id_discovery_configuration(pb::GetOpenIdDiscoveryConfigurationRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.issuer, "https://auth.example.com");
    assert_eq!(d.jwks_uri, "https://auth.example.com/.well-known/jwks.json");
    let (status, _, body) = http_get(server.addr, "/.well-known/openid-configuration").await;
    assert!(status.contains("200"));
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], "https://auth.example.com");
    assert_eq!(
        doc["jwks_uri"],
        "https://auth.example.com/.well-known/jwks.json"
    );
    let mut c = server.sessions().await;
    assert_eq!(
        claims(&access(&create(&mut c, "u", json!({})).await))["iss"],
        "https://auth.example.com"
    );
}

/// Three replicas on one database, one clock: a key rotated on one is
/// published by the others within their key ring's reload interval, well
/// before it signs, and once it signs, a token from any replica verifies
/// against every replica's JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_on_one_replica_is_published_by_all_before_it_signs() {
    let test = "a_key_rotated_on_one_replica_is_published_by_all_before_it_signs";
    let Some(db) = crate::postgres::harness::postgres(test) else {
        return;
    };
    let url = crate::postgres::url_of(&db);
    let clock = sessiond::ManualClock::starting_now();
    let start = || {
        TestServer::start_on(tempfile::tempdir().unwrap(), clock.clone(), |c| {
            c.database_url = Some(url.clone());
            c.database_pool_size = 4;
        })
    };
    let (a, b, c) = tokio::join!(start(), start(), start());
    let replicas = [a, b, c];
    let kids = async |server: &TestServer| -> HashSet<String> {
        let set = jwks(server).await;
        set.keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect()
    };
    let before = kids(&replicas[0]).await;
    for r in &replicas[1..] {
        assert_eq!(kids(r).await, before, "one key ring for all replicas");
    }

    let rotated_at = std::time::Instant::now();
    let rotated = replicas[0]
        .jwts()
        .await
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .kid;
    for r in &replicas[1..] {
        let deadline = rotated_at + Duration::from_secs(60);
        while !kids(r).await.contains(&rotated) {
            assert!(
                std::time::Instant::now() < deadline,
                "a replica did not publish the new key within the publication delay"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let published = kids(&replicas[0]).await;
    assert!(published.contains(&rotated));
    for r in &replicas[1..] {
        assert_eq!(
            kids(r).await,
            published,
            "every replica serves the same JWKS"
        );
    }

    // The publication delay passes: every replica signs with the new key,
    // and every replica's JWKS verifies every replica's tokens.
    clock.advance(Duration::from_secs(60));
    let mut tokens = Vec::new();
    for r in &replicas {
        let token = access(&create(&mut r.sessions().await, "u", json!({"a": 1})).await);
        assert_eq!(kid(&token), rotated, "signed with the new key");
        tokens.push(token);
    }
    for r in &replicas {
        let set = jwks(r).await;
        for token in &tokens {
            assert_eq!(verify_with_jwks(&set, token)["a"], 1);
            verify(&mut r.sessions().await, token, false).await.unwrap();
        }
    }
}
