//! Property tests of the session rules and token encoding.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::*;
use crate::claims::NoClaimSource;
use crate::clock::ManualClock;
use crate::metrics::Metrics;
use crate::store::MemoryStore;
use crate::token::SigningAlgorithm;
use crate::token::keys::KeyRingConfig;

/// A session manager on a fresh store, with its clock.
fn manager(rt: &tokio::runtime::Runtime) -> (Arc<ManualClock>, SessionManager) {
    rt.block_on(async {
        let store = MemoryStore::shared();
        let clock = ManualClock::starting_now();
        let metrics = Metrics::shared();
        let keys = Arc::new(
            KeyRing::open(
                store.clone(),
                clock.clone(),
                KeyRingConfig {
                    algorithm: SigningAlgorithm::EdDSA,
                    rotation_interval_ms: 7 * 86_400_000,
                    access_lifetime_ms: 3_600_000,
                },
                metrics.clone(),
            )
            .await
            .unwrap(),
        );
        let manager = SessionManager::new(
            store,
            keys,
            Arc::new(NoClaimSource),
            clock.clone(),
            SessionConfig {
                access_lifetime_ms: 3_600_000,
                refresh_lifetime_ms: 86_400_000,
                max_lifetime_ms: None,
                idle_timeout_ms: None,
                session_limit: None,
                grace_ms: 30_000,
                payload_limits: payload::JsonLimits {
                    bytes: 64 * 1024,
                    depth: 32,
                },
                max_handles_per_call: 1000,
                token_cache_size: 64,
                issuer: "http://test".into(),
            },
            metrics,
        )
        .await
        .unwrap();
        (clock, manager)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// JSON without reserved claims at the top level, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-zA-Z0-9 _é✓-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn user_payload() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z][a-zA-Z0-9_]{0,8}", json_value(), 0..5).prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !crate::input::is_reserved(k))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// What goes into an access token comes out of it, and the session's
    /// identity is never confused with the payload.
    #[test]
    fn access_tokens_round_trip(payload in user_payload(), user in "[a-zA-Z0-9@._-]{1,40}") {
        let rt = runtime();
        let (_clock, manager) = manager(&rt);
        rt.block_on(async {
            let created = manager
                .create(NewSession {
                    user_id: UserId::parse("user", user.clone()).unwrap(),
                    tenant_id: TenantId::parse("tenant", "").unwrap(),
                    access_payload: AccessPayload::parse("p", payload.clone(), manager.payload_limits()).unwrap(),
                    data: SessionData::default(),
                    anti_csrf: true,
                    user_identifier: None,
                    device: Default::default(),
                    timeouts: Default::default(),
                })
                .await
                .unwrap();
            let verified = manager
                .verify(Verify {
                    access_token: created.access.token.clone(),
                    anti_csrf_token: created.anti_csrf.clone(),
                    check_anti_csrf: true,
                    check_database: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            prop_assert_eq!(&verified.claims.user_id, &user);
            prop_assert_eq!(&verified.claims.session_handle, &created.session.handle);
            // Integral numbers keep their value; JSON equality holds.
            prop_assert_eq!(Value::Object(verified.payload().clone()), Value::Object(payload));
            Ok(())
        })?;
    }
}

/// One step of a client (honest or not) against one session.
#[derive(Debug, Clone)]
enum Step {
    /// Refresh with the n-th refresh token issued so far (modulo).
    Refresh(usize),
    /// Let time pass.
    Wait(u64),
    /// Revoke the session.
    Revoke,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..8).prop_map(Step::Refresh),
        3 => prop_oneof![Just(1_000u64), Just(29_000u64), Just(31_000u64)].prop_map(Step::Wait),
        1 => Just(Step::Revoke),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a client does with its refresh tokens, at most one lineage
    /// stays live: the stored current token is exactly one of those issued,
    /// a theft or a revocation ends the session for good, and nothing fails
    /// in any other way.
    #[test]
    fn refresh_keeps_at_most_one_live_lineage(steps in prop::collection::vec(step(), 1..24)) {
        let rt = runtime();
        let (clock, manager) = manager(&rt);
        rt.block_on(async {
            let created = manager
                .create(NewSession {
                    user_id: UserId::parse("user", "u").unwrap(),
                    tenant_id: TenantId::parse("tenant", "").unwrap(),
                    access_payload: AccessPayload::default(),
                    data: SessionData::default(),
                    anti_csrf: false,
                    user_identifier: None,
                    device: Default::default(),
                    timeouts: Default::default(),
                })
                .await
                .unwrap();
            let handle = created.session.handle.clone();
            let mut issued = vec![created.refresh.token.clone()];
            let mut ended = false;
            for s in steps {
                match s {
                    Step::Wait(ms) => clock.advance(Duration::from_millis(ms)),
                    Step::Revoke => {
                        manager.revoke(SessionHandle::parse(&handle).unwrap()).await.unwrap();
                        ended = true;
                    }
                    Step::Refresh(n) => {
                        let token = issued[n % issued.len()].clone();
                        match manager.refresh(Refresh { refresh_token: token, disable_anti_csrf: true, ..Default::default() }).await {
                            Ok(tokens) => {
                                prop_assert!(!ended, "a refresh succeeded after the session ended");
                                issued.push(tokens.refresh.token);
                            }
                            Err(Error::TokenTheft { session_handle, .. }) => {
                                prop_assert!(!ended);
                                prop_assert_eq!(&session_handle, &handle);
                                ended = true;
                            }
                            Err(Error::Unauthorised(_)) => prop_assert!(ended, "unauthorised while the session lives"),
                            Err(other) => prop_assert!(false, "unexpected {other:?}"),
                        }
                    }
                }
                let record = manager.store.session(&handle).await.unwrap();
                match record {
                    None => prop_assert!(ended),
                    Some(r) => {
                        prop_assert!(!ended);
                        let current: Vec<_> = issued.iter().filter(|t| crate::token::refresh::hash(t) == r.current.refresh_hash).collect();
                        prop_assert_eq!(current.len(), 1, "exactly one issued token is current");
                    }
                }
            }
            Ok(())
        })?;
    }
}
