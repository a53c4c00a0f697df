//! Criterion benchmarks of the hot functions: signing and verification per
//! algorithm through sessiond's own key ring, the two crypto backends
//! jsonwebtoken supports (aws-lc-rs and RustCrypto) on the same keys,
//! refresh-token minting and opening, token hashing, the verified-token
//! cache, and the JSON merge.
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
        c.bench_function(&format!("sign/{name}/sessiond"), |b| {
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
}

/// Both crypto backends jsonwebtoken can use, on the same keys and the same
/// 400-byte signing input, keys parsed once: aws-lc-rs (which sessiond signs
/// with) and the RustCrypto crates behind jsonwebtoken's `rust_crypto`
/// feature (ed25519-dalek, p256, rsa), called the way that backend calls them.
fn backends(c: &mut Criterion) {
    use aws_lc_rs::encoding::AsDer as _;
    // One trait for all three key types: the RustCrypto crates share pkcs8.
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::signature::{
        Keypair as _, RandomizedSigner as _, SignatureEncoding as _, Signer as _, Verifier as _,
    };

    let message = vec![7u8; 400];
    let rng = SystemRandom::new();

    // EdDSA (Ed25519).
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let aws = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let aws_public =
        signature::UnparsedPublicKey::new(&signature::ED25519, aws.public_key().as_ref().to_vec());
    let dalek = ed25519_dalek::SigningKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();
    let dalek_public = dalek.verifying_key();
    let aws_sig = aws.sign(&message);
    let dalek_sig = dalek.sign(&message);
    assert_eq!(
        aws_sig.as_ref(),
        dalek_sig.to_bytes(),
        "Ed25519 is deterministic"
    );
    c.bench_function("backend/sign/EdDSA/aws-lc-rs", |b| {
        b.iter(|| aws.sign(black_box(&message)))
    });
    c.bench_function("backend/sign/EdDSA/rust-crypto", |b| {
        b.iter(|| dalek.sign(black_box(&message)))
    });
    c.bench_function("backend/verify/EdDSA/aws-lc-rs", |b| {
        b.iter(|| {
            aws_public
                .verify(black_box(&message), aws_sig.as_ref())
                .unwrap()
        })
    });
    c.bench_function("backend/verify/EdDSA/rust-crypto", |b| {
        b.iter(|| {
            dalek_public
                .verify(black_box(&message), &dalek_sig)
                .unwrap()
        })
    });

    // ES256 (ECDSA P-256, SHA-256).
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let aws = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
    let aws_public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_FIXED,
        aws.public_key().as_ref().to_vec(),
    );
    let p256_key = p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();
    let p256_public = *p256_key.verifying_key();
    let aws_sig = aws.sign(&rng, &message).unwrap();
    let p256_sig: p256::ecdsa::Signature = p256_key.sign(&message);
    // Each backend checks the other's signature: the same key, the same scheme.
    aws_public.verify(&message, &p256_sig.to_bytes()).unwrap();
    p256_public
        .verify(
            &message,
            &p256::ecdsa::Signature::from_slice(aws_sig.as_ref()).unwrap(),
        )
        .unwrap();
    c.bench_function("backend/sign/ES256/aws-lc-rs", |b| {
        b.iter(|| aws.sign(&rng, black_box(&message)).unwrap())
    });
    c.bench_function("backend/sign/ES256/rust-crypto", |b| {
        b.iter(|| -> p256::ecdsa::Signature { p256_key.sign(black_box(&message)) })
    });
    c.bench_function("backend/verify/ES256/aws-lc-rs", |b| {
        b.iter(|| {
            aws_public
                .verify(black_box(&message), aws_sig.as_ref())
                .unwrap()
        })
    });
    c.bench_function("backend/verify/ES256/rust-crypto", |b| {
        b.iter(|| p256_public.verify(black_box(&message), &p256_sig).unwrap())
    });

    // RS256 (RSA-2048, PKCS#1 v1.5, SHA-256); the RustCrypto side signs with
    // blinding, as jsonwebtoken's backend does.
    let aws = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der = aws.as_der().unwrap();
    let aws_public = signature::UnparsedPublicKey::new(
        &signature::RSA_PKCS1_2048_8192_SHA256,
        aws.public_key().as_ref().to_vec(),
    );
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_der(der.as_ref()).unwrap();
    let rsa_signer = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(rsa_key);
    let rsa_public = rsa_signer.verifying_key();
    let mut aws_sig = vec![0u8; aws.public_modulus_len()];
    aws.sign(&signature::RSA_PKCS1_SHA256, &rng, &message, &mut aws_sig)
        .unwrap();
    let rsa_sig = rsa_signer.sign_with_rng(&mut rand_core::OsRng, &message);
    assert_eq!(aws_sig, rsa_sig.to_vec(), "PKCS#1 v1.5 is deterministic");
    c.bench_function("backend/sign/RS256/aws-lc-rs", |b| {
        b.iter(|| {
            aws.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                black_box(&message),
                &mut aws_sig,
            )
            .unwrap()
        })
    });
    c.bench_function("backend/sign/RS256/rust-crypto", |b| {
        b.iter(|| rsa_signer.sign_with_rng(&mut rand_core::OsRng, black_box(&message)))
    });
    c.bench_function("backend/verify/RS256/aws-lc-rs", |b| {
        b.iter(|| aws_public.verify(black_box(&message), &aws_sig).unwrap())
    });
    c.bench_function("backend/verify/RS256/rust-crypto", |b| {
        b.iter(|| rsa_public.verify(black_box(&message), &rsa_sig).unwrap())
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

criterion_group!(benches, sign_and_verify, backends, refresh_tokens, merge);
criterion_main!(benches);
