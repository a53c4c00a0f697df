//! Criterion benchmarks of the hot functions: signing and verification per
//! algorithm (through jsonwebtoken, and with aws-lc-rs directly on a
//! pre-parsed key), refresh-token minting and opening, token hashing, the
//! verified-token cache, and the JSON merge.
//!
//! cargo bench --bench tokens

// criterion's macros generate undocumented functions.
#![allow(missing_docs)]

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use sessiond::clock::{Clock, ManualClock};
use sessiond::config::SigningAlgorithm;
use sessiond::ids::SessionHandle;
use sessiond::metrics::Metrics;
use sessiond::store::SledStore;
use sessiond::token::access::{self, AccessClaims};
use sessiond::token::cache::TokenCache;
use sessiond::token::keys::{KeyRing, KeyRingConfig};
use sessiond::token::refresh::{self, RefreshTokens};

fn claims(now_ms: u64) -> AccessClaims {
    let payload: Map<String, Value> = json!({"role": "member", "plan": "pro", "region": "eu-west"})
        .as_object()
        .unwrap()
        .clone();
    AccessClaims {
        user_id: "user-1234567890".into(),
        tenant_id: "public".into(),
        session_handle: SessionHandle::random().to_string(),
        refresh_token_hash: "a".repeat(64),
        anti_csrf_token: Some("b".repeat(43)),
        iat: now_ms / 1000,
        exp: now_ms / 1000 + 3600,
        iss: Some("https://auth.example.com".into()),
        payload,
    }
}

fn ring(
    rt: &tokio::runtime::Runtime,
    alg: SigningAlgorithm,
) -> (tempfile::TempDir, Arc<ManualClock>, KeyRing) {
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20, None).unwrap();
        let clock = ManualClock::starting_now();
        let config = KeyRingConfig {
            algorithm: alg,
            rotation_interval_ms: 7 * 86_400_000,
            access_lifetime_ms: 3_600_000,
        };
        let ring = KeyRing::open(store, clock.clone(), config, Metrics::shared())
            .await
            .unwrap();
        (dir, clock, ring)
    })
}

fn sign_and_verify(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for alg in [
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::ES256,
        SigningAlgorithm::RS256,
    ] {
        let (_dir, clock, ring) = ring(&rt, alg);
        let now = clock.now_ms();
        let key = ring.signer();
        let c_claims = claims(now);
        let token = access::mint(&key, &c_claims).unwrap();
        let name = alg.as_str();
        c.bench_function(&format!("sign/{name}/jsonwebtoken"), |b| {
            b.iter(|| access::mint(black_box(&key), black_box(&c_claims)).unwrap())
        });
        c.bench_function(&format!("verify/{name}/jsonwebtoken"), |b| {
            b.iter(|| access::verify(black_box(&ring), black_box(&token), now).unwrap())
        });
        let cache = TokenCache::new(1024);
        cache.insert(
            &token,
            Arc::new(access::verify(&ring, &token, now).unwrap()),
        );
        c.bench_function(&format!("verify/{name}/cache-hit"), |b| {
            b.iter(|| cache.get(black_box(&token)).unwrap())
        });
    }

    // The same signatures with aws-lc-rs on a key parsed once, for what
    // jsonwebtoken's per-call key parsing costs.
    let message = vec![7u8; 400];
    let rng = SystemRandom::new();
    let ed =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    c.bench_function("sign/EdDSA/aws-lc-parsed-key", |b| {
        b.iter(|| ed.sign(black_box(&message)))
    });
    let ed_public =
        signature::UnparsedPublicKey::new(&signature::ED25519, ed.public_key().as_ref().to_vec());
    let ed_sig = ed.sign(&message);
    c.bench_function("verify/EdDSA/aws-lc", |b| {
        b.iter(|| {
            ed_public
                .verify(black_box(&message), ed_sig.as_ref())
                .unwrap()
        })
    });
    let ec_pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        ec_pkcs8.as_ref(),
    )
    .unwrap();
    c.bench_function("sign/ES256/aws-lc-parsed-key", |b| {
        b.iter(|| ec.sign(&rng, black_box(&message)).unwrap())
    });
    let rsa = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let mut rsa_sig = vec![0u8; rsa.public_modulus_len()];
    c.bench_function("sign/RS256/aws-lc-parsed-key", |b| {
        b.iter(|| {
            rsa.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                black_box(&message),
                &mut rsa_sig,
            )
            .unwrap()
        })
    });
}

fn refresh_tokens(c: &mut Criterion) {
    let tokens = RefreshTokens::new(&[9u8; 32]);
    let handle = SessionHandle::random();
    let token = tokens.mint(&handle);
    c.bench_function("refresh/mint", |b| {
        b.iter(|| tokens.mint(black_box(&handle)))
    });
    c.bench_function("refresh/open", |b| {
        b.iter(|| tokens.open(black_box(&token)).unwrap())
    });
    c.bench_function("refresh/hash", |b| {
        b.iter(|| refresh::hash(black_box(&token)))
    });
}

fn merge(c: &mut Criterion) {
    let mut target = json!({});
    for i in 0..32 {
        target[format!("key{i}")] = json!({"name": "x".repeat(16), "n": i, "tags": ["a", "b"]});
    }
    let patch = json!({"key3": {"n": null, "name": "y"}, "key40": {"new": true}, "key7": null});
    c.bench_function("merge/rfc7386-1kb-bucket", |b| {
        b.iter(|| {
            let mut t = target.clone();
            sessiond::buckets::merge_patch(&mut t, black_box(&patch));
            t
        })
    });
}

criterion_group!(benches, sign_and_verify, refresh_tokens, merge);
criterion_main!(benches);
