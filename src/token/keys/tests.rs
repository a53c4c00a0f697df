//! Tests of the key ring: every algorithm, rotation and retirement, and
//! keys sealed under a key-encryption key being replaced.

use super::*;
use crate::clock::ManualClock;
use crate::store::MemoryStore;
use jsonwebtoken::DecodingKey;
use std::time::Duration;

const HOUR: u64 = 3_600_000;

async fn ring(alg: SigningAlgorithm) -> (Arc<ManualClock>, KeyRing) {
    let store = MemoryStore::shared();
    let clock = ManualClock::starting_now();
    let config = KeyRingConfig {
        algorithm: alg,
        rotation_interval_ms: 24 * HOUR,
        access_lifetime_ms: HOUR,
    };
    let ring = KeyRing::open(store, clock.clone(), config, Metrics::shared())
        .await
        .unwrap();
    (clock, ring)
}

#[tokio::test]
async fn every_algorithm_signs_and_verifies() {
    for alg in [
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::ES256,
        SigningAlgorithm::RS256,
    ] {
        let (_clock, ring) = ring(alg).await;
        let key = ring.signer();
        let claims = serde_json::json!({"sub": "u"});
        let token = key.sign(&claims, true).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        assert_eq!(
            header.extras.get::<String>("version").unwrap().as_deref(),
            Some("5")
        );
        let mut v = jsonwebtoken::Validation::new(key.algorithm());
        v.required_spec_claims.clear();
        v.validate_exp = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, key.decoding_key(), &v).unwrap();
        let jwks = ring.jwks();
        assert_eq!(jwks.len(), 2, "{alg:?}: a rotating and a static key");
        assert!(jwks.iter().all(|k| k.alg == alg.as_str()));
        // The published key verifies too (what an outside verifier does).
        let published: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(serde_json::to_value(&jwks[0]).unwrap()).unwrap();
        let dk = DecodingKey::from_jwk(&published).unwrap();
        jsonwebtoken::decode::<serde_json::Value>(&token, &dk, &v).unwrap();
    }
}

#[tokio::test]
async fn rotation_publishes_before_signing_and_retires_after_the_last_token() {
    let (clock, ring) = ring(SigningAlgorithm::EdDSA).await;
    let first = ring.signer();
    assert!(first.kid().starts_with("d-"));
    assert!(ring.static_signer().kid().starts_with("s-"));

    clock.advance(Duration::from_millis(24 * HOUR - PUBLISH_DELAY_MS));
    assert!(ring.needs_maintenance());
    ring.maintain().await.unwrap();
    let kids: Vec<_> = ring.jwks().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids.len(), 3, "the successor is published: {kids:?}");
    assert_eq!(ring.signer().kid(), first.kid(), "but does not sign yet");

    clock.advance(Duration::from_millis(PUBLISH_DELAY_MS));
    let second = ring.signer();
    assert_ne!(second.kid(), first.kid());
    assert!(
        ring.verifier(first.kid()).is_some(),
        "old tokens still verify"
    );

    clock.advance(Duration::from_millis(HOUR));
    assert!(
        ring.verifier(first.kid()).is_none(),
        "retired after the access lifetime"
    );
    ring.maintain().await.unwrap();
    assert!(!ring.jwks().iter().any(|k| k.kid == first.kid()));
    assert!(ring.verifier(second.kid()).is_some());
}

#[tokio::test]
async fn keys_left_under_either_kek_are_sealed_again_under_the_new_one() {
    let store: Arc<dyn Store> = MemoryStore::shared();
    let clock = ManualClock::starting_now();
    let config = KeyRingConfig {
        algorithm: SigningAlgorithm::EdDSA,
        rotation_interval_ms: 24 * HOUR,
        access_lifetime_ms: HOUR,
    };
    let kek = |byte: u8| Arc::new(Kek::from_text(&format!("{byte:02x}").repeat(32)).unwrap());
    let open = |kek: Arc<Kek>| {
        KeyRing::open_sealed(
            store.clone(),
            clock.clone(),
            config,
            Metrics::shared(),
            Some(kek),
        )
    };
    let kids = |ring: &KeyRing| {
        let mut kids: Vec<String> = ring.jwks().iter().map(|k| k.kid.clone()).collect();
        kids.sort();
        kids
    };
    let before = kids(&open(kek(1)).await.unwrap());

    // A change cut short: one key already sealed under the new KEK, the
    // others still under the old one.
    let mut records = store.keys().await.unwrap();
    assert!(records.len() >= 2);
    let first = &mut records[0];
    let plain = kek(1)
        .open_value(first.kid.as_bytes(), &first.private_key)
        .unwrap()
        .plaintext;
    first.private_key = kek(2).seal_value(first.kid.as_bytes(), &plain);
    store.put_key(first).await.unwrap();

    for alone in [1, 2] {
        let err = open(kek(alone)).await.unwrap_err().to_string();
        assert!(err.contains("does not open"), "KEK {alone} alone: {err}");
    }
    let rotating = Arc::new(
        Kek::from_text(&"02".repeat(32))
            .unwrap()
            .with_previous(Kek::from_text(&"01".repeat(32)).unwrap()),
    );
    assert_eq!(kids(&open(rotating).await.unwrap()), before);
    assert_eq!(
        kids(&open(kek(2)).await.unwrap()),
        before,
        "the new KEK alone now"
    );
    let err = open(kek(1)).await.unwrap_err().to_string();
    assert!(err.contains("does not open"), "{err}");
}

/// Three rings on one store, as three replicas sharing a database.
async fn replicas(alg: SigningAlgorithm) -> (Arc<ManualClock>, Arc<dyn Store>, Vec<KeyRing>) {
    let store: Arc<dyn Store> = MemoryStore::shared();
    let clock = ManualClock::starting_now();
    let config = KeyRingConfig {
        algorithm: alg,
        rotation_interval_ms: 24 * HOUR,
        access_lifetime_ms: HOUR,
    };
    let open = || KeyRing::open(store.clone(), clock.clone(), config, Metrics::shared());
    let (a, b, c) = tokio::join!(open(), open(), open());
    (clock, store, vec![a.unwrap(), b.unwrap(), c.unwrap()])
}

fn kids(ring: &KeyRing) -> Vec<String> {
    ring.jwks().into_iter().map(|k| k.kid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_on_a_new_store_share_one_set_of_keys() {
    let (_clock, store, rings) = replicas(SigningAlgorithm::ES256).await;
    assert_eq!(
        store.keys().await.unwrap().len(),
        2,
        "one static, one rotating"
    );
    for ring in &rings {
        assert_eq!(kids(ring), kids(&rings[0]));
        assert_eq!(ring.signer().kid(), rings[0].signer().kid());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_rotation_adds_one_successor_however_many_replicas_see_it() {
    let (clock, store, rings) = replicas(SigningAlgorithm::ES256).await;
    let first = rings[0].signer().kid().to_owned();
    clock.advance(Duration::from_millis(24 * HOUR - PUBLISH_DELAY_MS));
    let (a, b, c) = tokio::join!(
        rings[0].maintain(),
        rings[1].maintain(),
        rings[2].maintain()
    );
    for done in [a, b, c] {
        done.unwrap();
    }
    assert_eq!(store.keys().await.unwrap().len(), 3, "one successor");
    for ring in &rings {
        assert_eq!(kids(ring).len(), 3);
        assert_eq!(kids(ring), kids(&rings[0]), "every replica publishes it");
        assert_eq!(ring.signer().kid(), first, "none signs with it yet");
    }
    clock.advance(Duration::from_millis(PUBLISH_DELAY_MS));
    let second = rings[0].signer().kid().to_owned();
    assert_ne!(second, first);
    assert!(rings.iter().all(|r| r.signer().kid() == second));
}

#[tokio::test]
async fn a_key_rotated_on_one_replica_is_published_by_the_others_after_a_reload() {
    let (_clock, _store, rings) = replicas(SigningAlgorithm::ES256).await;
    let new = rings[0].rotate_now().await.unwrap();
    assert!(!kids(&rings[1]).contains(&new.kid().to_owned()));
    rings[1].reload().await.unwrap();
    assert_eq!(kids(&rings[1]), kids(&rings[0]));
    assert!(rings[1].verifier(new.kid()).is_some());

    // A rotation on a replica that has not reloaded yet follows the key
    // another one added instead of branching off the same predecessor.
    let newer = rings[2].rotate_now().await.unwrap();
    rings[0].reload().await.unwrap();
    rings[1].reload().await.unwrap();
    let published = kids(&rings[0]);
    assert_eq!(published.len(), 4, "{published:?}");
    assert_eq!(published[0], newer.kid(), "newest first");
    assert_eq!(published[1], new.kid());
    assert!(rings.iter().all(|r| kids(r) == published));
}

#[tokio::test]
async fn a_replica_never_retires_a_key_that_another_one_signed_a_long_jwt_with() {
    let (clock, _store, rings) = replicas(SigningAlgorithm::ES256).await;
    let first = rings[0].signer();
    let long = crate::clock::Clock::now_ms(clock.as_ref()) + 100 * HOUR;
    rings[1].note_jwt_expiry(first.kid(), long).await.unwrap();

    clock.advance(Duration::from_millis(24 * HOUR - PUBLISH_DELAY_MS));
    rings[0].maintain().await.unwrap();
    clock.advance(Duration::from_millis(PUBLISH_DELAY_MS + 2 * HOUR));
    // Replica 0 has not reloaded since replica 1 noted the JWT: by its own
    // view the first key is retired, but it reads the ring before retiring.
    rings[0].maintain().await.unwrap();
    assert!(rings[0].verifier(first.kid()).is_some());
    assert!(kids(&rings[2]).contains(&first.kid().to_owned()));
    rings[2].reload().await.unwrap();
    assert!(rings[2].verifier(first.kid()).is_some());
}
