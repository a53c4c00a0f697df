//! Claims: set/get/remove, validators, GetSession with validators, and
//! FetchAndSetClaim against a real ClaimProvider.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sessiond::Clock;
use sessiond::pb;
use sessiond::pb::claim_provider_server::{ClaimProvider, ClaimProviderServer};
use sessiond::pb::claim_validator::Check;
use sessiond::pb::session_service_client::SessionServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_types::StatusExt;

use crate::helpers::*;

/// A ClaimProvider run by the test: values by "user/claim".
#[derive(Clone, Default)]
pub struct Provider {
    pub values: Arc<Mutex<HashMap<String, Value>>>,
    pub calls: Arc<AtomicUsize>,
    pub delay: Option<Duration>,
}

impl Provider {
    fn set(&self, user: &str, claim: &str, value: Value) {
        self.values
            .lock()
            .unwrap()
            .insert(format!("{user}/{claim}"), value);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl ClaimProvider for Provider {
    async fn fetch_claim(
        &self,
        req: Request<pb::FetchClaimRequest>,
    ) -> Result<Response<pb::FetchClaimResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let r = req.into_inner();
        assert!(
            r.access_token_payload.is_some(),
            "the provider sees the payload"
        );
        let value = self
            .values
            .lock()
            .unwrap()
            .get(&format!("{}/{}", r.user_id, r.claim_key))
            .cloned();
        Ok(Response::new(pb::FetchClaimResponse {
            value: value.map(val),
        }))
    }
}

pub async fn start_provider(provider: Provider) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClaimProviderServer::new(provider))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn validator(key: &str, check: Check) -> pb::ClaimValidator {
    pb::ClaimValidator {
        claim_key: key.into(),
        check: Some(check),
        ..Default::default()
    }
}

fn list(values: Value) -> prost_types::ListValue {
    prost_types::ListValue {
        values: values
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .map(val)
            .collect(),
    }
}

async fn set_claim(c: &mut SessionServiceClient<Channel>, handle: &str, key: &str, value: Value) {
    let r = c
        .set_claim_value(pb::SetClaimValueRequest {
            session_handle: handle.into(),
            claim_key: key.into(),
            value: Some(val(value)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.updated);
}

async fn validate_payload(
    c: &mut SessionServiceClient<Channel>,
    payload: Value,
    validators: Vec<pb::ClaimValidator>,
) -> Vec<pb::InvalidClaim> {
    c.validate_claims_in_jwt_payload(pb::ValidateClaimsInJwtPayloadRequest {
        user_id: "u".into(),
        jwt_payload: Some(obj(payload)),
        claim_validators: validators,
    })
    .await
    .unwrap()
    .into_inner()
    .invalid_claims
}

#[tokio::test]
async fn set_get_remove_and_the_next_tokens_carry_claims() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({"plain": 1})).await;
    let h = handle(&created);
    set_claim(&mut c, &h, "st-role", json!(["admin"])).await;

    let got = c
        .get_claim_value(pb::GetClaimValueRequest {
            session_handle: h.clone(),
            claim_key: "st-role".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unval(&got.value.unwrap()), json!(["admin"]));
    let set_at = got.set_at.unwrap();
    let now_s = (server.clock.now_ms() / 1000) as i64;
    assert_eq!(set_at.seconds, now_s);

    // Stored as {"v", "t"}; the current token does not have it, the next ones do.
    assert!(claims(&access(&created)).get("st-role").is_none());
    let regen = c
        .regenerate_access_token(pb::RegenerateAccessTokenRequest {
            access_token: access(&created),
            new_access_token_payload: None,
        })
        .await
        .unwrap()
        .into_inner();
    let entry = &claims(&regen.access_token.unwrap().token)["st-role"];
    assert_eq!(entry["v"], json!(["admin"]));
    assert_eq!(entry["t"].as_u64().unwrap(), server.clock.now_ms());
    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    let refreshed_claims = claims(&refreshed.access_token.unwrap().token);
    assert_eq!(refreshed_claims["st-role"]["v"], json!(["admin"]));
    assert_eq!(refreshed_claims["plain"], 1);

    let remove = |key: &str| pb::RemoveClaimRequest {
        session_handle: h.clone(),
        claim_key: key.into(),
    };
    assert!(
        c.remove_claim(remove("st-role"))
            .await
            .unwrap()
            .into_inner()
            .updated
    );
    assert!(
        !c.remove_claim(remove("st-role"))
            .await
            .unwrap()
            .into_inner()
            .updated
    );
    let gone = c
        .get_claim_value(pb::GetClaimValueRequest {
            session_handle: h.clone(),
            claim_key: "st-role".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.value.is_none());
    let refreshed = refresh(&mut c, &refreshed.refresh_token.unwrap().token)
        .await
        .unwrap();
    assert!(
        claims(&refreshed.access_token.unwrap().token)
            .get("st-role")
            .is_none()
    );

    c.revoke_session(pb::RevokeSessionRequest {
        session_handle: h.clone(),
    })
    .await
    .unwrap();
    assert_status(
        c.get_claim_value(pb::GetClaimValueRequest {
            session_handle: h,
            claim_key: "st-role".into(),
        })
        .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}

#[tokio::test]
async fn every_validator_kind_passes_fails_and_reports_missing() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let now = server.clock.now_ms();
    let payload = json!({
        "st-ev": {"v": true, "t": now},
        "st-role": {"v": ["admin", "user"], "t": now},
        "plan": {"v": "pro", "t": now},
    });
    let cases: Vec<(&str, Check, Check, &str)> = vec![
        (
            "plan",
            Check::HasValue(val(json!("pro"))),
            Check::HasValue(val(json!("free"))),
            "expectedValue",
        ),
        (
            "st-role",
            Check::Includes(val(json!("admin"))),
            Check::Includes(val(json!("root"))),
            "expectedToInclude",
        ),
        (
            "st-role",
            Check::Excludes(val(json!("root"))),
            Check::Excludes(val(json!("user"))),
            "expectedToNotInclude",
        ),
        (
            "st-role",
            Check::IncludesAll(list(json!(["admin", "user"]))),
            Check::IncludesAll(list(json!(["admin", "root"]))),
            "expectedToInclude",
        ),
        (
            "st-role",
            Check::IncludesAny(list(json!(["root", "user"]))),
            Check::IncludesAny(list(json!(["root"]))),
            "expectedToIncludeAtLeastOneOf",
        ),
        (
            "st-role",
            Check::ExcludesAll(list(json!(["root", "guest"]))),
            Check::ExcludesAll(list(json!(["guest", "admin"]))),
            "expectedToNotInclude",
        ),
        (
            "st-ev",
            Check::IsTrue(()),
            Check::IsFalse(()),
            "expectedValue",
        ),
    ];
    for (key, pass, fail, expectation) in cases {
        let ok =
            validate_payload(&mut c, payload.clone(), vec![validator(key, pass.clone())]).await;
        assert!(ok.is_empty(), "{key} {pass:?} should pass: {ok:?}");

        let failed =
            validate_payload(&mut c, payload.clone(), vec![validator(key, fail.clone())]).await;
        assert_eq!(failed.len(), 1, "{key} {fail:?} should fail");
        let f = &failed[0];
        assert_eq!(
            (f.claim_key.as_str(), f.message.as_str()),
            (key, "wrong value")
        );
        let reason = json(f.reason.as_ref().unwrap());
        assert_eq!(reason["message"], "wrong value");
        assert!(reason.get(expectation).is_some(), "{reason}");
        assert_eq!(unval(f.actual.as_ref().unwrap()), payload[key]["v"]);

        let missing = validate_payload(&mut c, json!({}), vec![validator(key, pass.clone())]).await;
        assert_eq!(missing[0].message, "value does not exist", "{key}");
        assert!(missing[0].actual.is_none());
    }
}

#[tokio::test]
async fn max_age_expires_claims_on_the_controlled_clock() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    set_claim(&mut c, &handle(&created), "st-ev", json!(true)).await;
    let regen = c
        .regenerate_access_token(pb::RegenerateAccessTokenRequest {
            access_token: access(&created),
            new_access_token_payload: None,
        })
        .await
        .unwrap()
        .into_inner();
    let token = regen.access_token.unwrap().token;
    let fresh = pb::ClaimValidator {
        max_age: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        ..validator("st-ev", Check::IsTrue(()))
    };
    let get = |v: pb::ClaimValidator| pb::GetSessionRequest {
        access_token: token.clone(),
        claim_validators: vec![v],
        ..Default::default()
    };
    c.get_session(get(fresh.clone())).await.unwrap();
    server.clock.advance(Duration::from_secs(301));
    let s = assert_status(
        c.get_session(get(fresh)).await,
        Code::PermissionDenied,
        "INVALID_CLAIMS",
    );
    let details = s.get_error_details();
    let violation = &details.precondition_failure().unwrap().violations[0];
    assert_eq!(violation.r#type, "expired");
    let reason: Value = serde_json::from_str(&violation.description).unwrap();
    assert_eq!(reason["ageInSeconds"], 301);
    assert_eq!(reason["maxAgeInSeconds"], 300);
}

#[tokio::test]
async fn get_session_lists_every_failing_claim_in_google_rpc_details() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    set_claim(&mut c, &handle(&created), "st-role", json!(["user"])).await;
    let token = c
        .regenerate_access_token(pb::RegenerateAccessTokenRequest {
            access_token: access(&created),
            new_access_token_payload: None,
        })
        .await
        .unwrap()
        .into_inner()
        .access_token
        .unwrap()
        .token;
    let validators = vec![
        validator("st-role", Check::Includes(val(json!("user")))),
        validator("st-role", Check::Includes(val(json!("admin")))),
        validator("st-ev", Check::IsTrue(())),
    ];
    let s = assert_status(
        c.get_session(pb::GetSessionRequest {
            access_token: token.clone(),
            claim_validators: validators.clone(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "INVALID_CLAIMS",
    );
    let details = s.get_error_details();
    assert_eq!(
        details.error_info().unwrap().metadata["claim_keys"],
        "st-role,st-ev"
    );
    let violations = &details.precondition_failure().unwrap().violations;
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert_eq!(
        (
            violations[0].r#type.as_str(),
            violations[0].subject.as_str()
        ),
        ("wrong value", "st-role")
    );
    assert_eq!(
        (
            violations[1].r#type.as_str(),
            violations[1].subject.as_str()
        ),
        ("value does not exist", "st-ev")
    );
    let reason: Value = serde_json::from_str(&violations[0].description).unwrap();
    assert_eq!(
        reason,
        json!({"message": "wrong value", "expectedToInclude": "admin", "actualValue": ["user"]})
    );

    // The same validators by handle, against the stored payload.
    let by_handle = c
        .validate_claims(pb::ValidateClaimsRequest {
            session_handle: handle(&created),
            claim_validators: validators,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_handle.invalid_claims.len(), 2);
    assert!(by_handle.access_token_payload_update.is_none());

    // Passing validators return the session.
    let ok = c
        .get_session(pb::GetSessionRequest {
            access_token: token,
            claim_validators: vec![validator("st-role", Check::Includes(val(json!("user"))))],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        ok.access_token.is_none(),
        "no new token when nothing was refetched"
    );
}

#[tokio::test]
async fn fetch_and_set_claim_calls_the_application_provider() {
    let provider = Provider::default();
    provider.set("ann", "st-role", json!(["editor"]));
    let addr = start_provider(provider.clone()).await;
    let server = TestServer::start_with(|c| {
        c.claim_providers = vec![("st-role".into(), format!("http://{addr}"))];
    })
    .await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "ann", json!({})).await;
    let fetch = |key: &str| pb::FetchAndSetClaimRequest {
        session_handle: handle(&created),
        claim_key: key.into(),
    };
    assert!(
        c.fetch_and_set_claim(fetch("st-role"))
            .await
            .unwrap()
            .into_inner()
            .updated
    );
    let got = c
        .get_claim_value(pb::GetClaimValueRequest {
            session_handle: handle(&created),
            claim_key: "st-role".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unval(&got.value.unwrap()), json!(["editor"]));

    // The provider has no value for another user: nothing changes.
    let other = create(&mut c, "bob", json!({})).await;
    let none = c
        .fetch_and_set_claim(pb::FetchAndSetClaimRequest {
            session_handle: handle(&other),
            claim_key: "st-role".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!none.updated);
    assert_eq!(provider.calls(), 2);

    // No provider for this key.
    let s = assert_status(
        c.fetch_and_set_claim(fetch("st-perm")).await,
        Code::FailedPrecondition,
        "NO_CLAIM_PROVIDER",
    );
    assert_eq!(
        s.get_error_details().error_info().unwrap().metadata["claim_key"],
        "st-perm"
    );
}

#[tokio::test]
async fn a_dead_or_slow_provider_is_unavailable_and_changes_nothing() {
    // A port with nothing behind it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let slow = Provider {
        delay: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    slow.set("u", "slow", json!(1));
    let slow_addr = start_provider(slow).await;
    let server = TestServer::start_with(|c| {
        c.claim_providers = vec![("slow".into(), format!("http://{slow_addr}"))];
        c.default_claim_provider = Some(format!("http://{dead}"));
        c.claim_provider_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({"keep": true})).await;
    for key in ["st-ev", "slow"] {
        let s = assert_status(
            c.fetch_and_set_claim(pb::FetchAndSetClaimRequest {
                session_handle: handle(&created),
                claim_key: key.into(),
            })
            .await,
            Code::Unavailable,
            "CLAIM_PROVIDER_UNAVAILABLE",
        );
        assert_eq!(
            s.get_error_details().error_info().unwrap().metadata["claim_key"],
            key
        );
        assert!(s.message().contains(key), "{}", s.message());
    }
    assert_eq!(
        stored_payload(&mut c, &handle(&created)).await,
        json!({"keep": true})
    );
}

#[tokio::test]
async fn stale_claims_are_refetched_on_get_session_with_a_new_token() {
    let provider = Provider::default();
    provider.set("u", "st-ev", json!(false));
    let addr = start_provider(provider.clone()).await;
    let server =
        TestServer::start_with(|c| c.default_claim_provider = Some(format!("http://{addr}"))).await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let v = pb::ClaimValidator {
        refetch: true,
        max_age: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..validator("st-ev", Check::IsTrue(()))
    };
    // Missing: fetched (false), stored, and still failing.
    let s = assert_status(
        c.get_session(pb::GetSessionRequest {
            access_token: access(&created),
            claim_validators: vec![v.clone()],
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "INVALID_CLAIMS",
    );
    assert_eq!(
        s.get_error_details()
            .precondition_failure()
            .unwrap()
            .violations[0]
            .r#type,
        "wrong value"
    );
    assert_eq!(provider.calls(), 1);

    // The user verifies their email; once the stored value is stale it is fetched again.
    provider.set("u", "st-ev", json!(true));
    server.clock.advance(Duration::from_secs(61));
    let ok = c
        .get_session(pb::GetSessionRequest {
            access_token: access(&created),
            claim_validators: vec![v.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(provider.calls(), 2);
    let new_token = ok
        .access_token
        .expect("a refetch issues a new access token");
    let new_claims = claims(&new_token.token);
    assert_eq!(new_claims["st-ev"]["v"], true);
    assert_eq!(
        new_claims["exp"],
        claims(&access(&created))["exp"],
        "same expiry"
    );
    assert_eq!(
        json(ok.session.unwrap().access_token_payload.as_ref().unwrap())["st-ev"]["v"],
        true
    );

    // The new token passes without another fetch; the value is stored for refreshes.
    c.get_session(pb::GetSessionRequest {
        access_token: new_token.token,
        claim_validators: vec![v],
        check_database: true,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(provider.calls(), 2);
    let refreshed = refresh(&mut c, &refresh_token(&created)).await.unwrap();
    assert_eq!(
        claims(&refreshed.access_token.unwrap().token)["st-ev"]["v"],
        true
    );
}

#[tokio::test]
async fn validate_claims_by_handle_refetches_and_reports_the_update() {
    let provider = Provider::default();
    provider.set("u", "st-perm", json!(["read", "write"]));
    let addr = start_provider(provider.clone()).await;
    let server =
        TestServer::start_with(|c| c.default_claim_provider = Some(format!("http://{addr}"))).await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let r = c
        .validate_claims(pb::ValidateClaimsRequest {
            session_handle: handle(&created),
            claim_validators: vec![pb::ClaimValidator {
                refetch: true,
                ..validator("st-perm", Check::Includes(val(json!("write"))))
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.invalid_claims.is_empty(), "{:?}", r.invalid_claims);
    let update = json(r.access_token_payload_update.as_ref().unwrap());
    assert_eq!(update["st-perm"]["v"], json!(["read", "write"]));
    let stored = c
        .get_claim_value(pb::GetClaimValueRequest {
            session_handle: handle(&created),
            claim_key: "st-perm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unval(&stored.value.unwrap()), json!(["read", "write"]));
}

#[tokio::test]
async fn bad_claim_input_names_the_field() {
    let server = TestServer::start().await;
    let mut c = server.sessions().await;
    let created = create(&mut c, "u", json!({})).await;
    let h = handle(&created);

    let no_check = pb::ClaimValidator {
        claim_key: "st-ev".into(),
        ..Default::default()
    };
    let s = assert_status(
        c.validate_claims(pb::ValidateClaimsRequest {
            session_handle: h.clone(),
            claim_validators: vec![validator("a", Check::IsTrue(())), no_check],
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "claim_validators[1]");

    let s = assert_status(
        c.get_session(pb::GetSessionRequest {
            access_token: access(&created),
            claim_validators: vec![validator("", Check::IsTrue(()))],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "claim_validators[0].claim_key");

    let set = |key: &str, value: Value| pb::SetClaimValueRequest {
        session_handle: h.clone(),
        claim_key: key.into(),
        value: Some(val(value)),
    };
    let s = assert_status(
        c.set_claim_value(set("", json!(1))).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "claim_key");
    let s = assert_status(
        c.set_claim_value(set("sub", json!(1))).await,
        Code::InvalidArgument,
        "PROTECTED_CLAIM",
    );
    assert_eq!(bad_field(&s), "claim_key");
    let s = assert_status(
        c.set_claim_value(set("st-ev", json!("yes"))).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "value");
    let s = assert_status(
        c.set_claim_value(pb::SetClaimValueRequest {
            session_handle: h.clone(),
            claim_key: "k".into(),
            value: None,
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "value");
    let s = assert_status(
        c.validate_claims_in_jwt_payload(pb::ValidateClaimsInJwtPayloadRequest {
            user_id: String::new(),
            jwt_payload: None,
            claim_validators: vec![],
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(bad_field(&s), "user_id");
    assert_status(
        c.set_claim_value(pb::SetClaimValueRequest {
            session_handle: "00000000-0000-4000-8000-000000000000".into(),
            claim_key: "k".into(),
            value: Some(val(json!(1))),
        })
        .await,
        Code::NotFound,
        "SESSION_NOT_FOUND",
    );
}
