//! Writes the fixed fuzzing keys (`keys/`, only when missing) and the seed
//! corpora (`seeds/access_token/`, `seeds/refresh_token/`, always rewritten).
//!
//! Run in `fuzz/` on plain stable: `cargo run --example make_seeds`.
//!
//! Keys are made by sessiond itself: a `KeyRing` opened on an empty store
//! generates a rotating and a static key, which are read back from the store.
//! Access token seeds are minted by the fuzzing ring of `src/lib.rs` (which
//! loads those keys), so they verify in every fuzzing process. Refresh token
//! seeds are minted under the fuzz target's fixed MAC key `[7; 32]`.

use std::path::Path;

use serde_json::{Map, Value, json};
use sessiond::config::SigningAlgorithm;
use sessiond::ids::SessionHandle;
use sessiond::metrics::Metrics;
use sessiond::store::{KeysAndSecrets, SledStore};
use sessiond::token::access::{self, AccessClaims};
use sessiond::token::keys::{KeyRing, KeyRingConfig, SigningKey};
use sessiond::token::refresh::{self, RefreshTokens};
use sessiond::token::{TokenError, b64url};
use sessiond_fuzz::{FIXED_KEYS, FIXTURE, keys_dir};

/// 2100-01-01, s.
const FAR_EXP: u64 = 4_102_444_800;
/// 2023-11-14, s: long past.
const PAST_EXP: u64 = 1_700_000_000;

fn main() {
    make_keys();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    access_token_seeds(&root.join("access_token"));
    refresh_token_seeds(&root.join("refresh_token"));
}

fn make_keys() {
    let dir = keys_dir();
    std::fs::create_dir_all(&dir).expect("keys/");
    if FIXED_KEYS.iter().all(|k| dir.join(k.file).exists()) {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for k in FIXED_KEYS {
        let path = dir.join(k.file);
        if path.exists() {
            continue;
        }
        let pkcs8 = rt.block_on(generated_key(k.alg, k.is_static));
        std::fs::write(&path, pkcs8).expect("write key");
        println!("wrote {}", path.display());
    }
}

/// A key of `alg` as sessiond generates it.
async fn generated_key(alg: SigningAlgorithm, is_static: bool) -> Vec<u8> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(tmp.path(), 8 << 20, None).expect("store");
    let config = KeyRingConfig {
        algorithm: alg,
        rotation_interval_ms: 24 * 3_600_000,
        access_lifetime_ms: 3_600_000,
    };
    KeyRing::open(
        store.clone(),
        sessiond::ManualClock::starting_now(),
        config,
        Metrics::shared(),
    )
    .await
    .expect("ring");
    let record = store
        .keys()
        .await
        .expect("keys")
        .into_iter()
        .find(|r| r.is_static == is_static)
        .expect("a generated key");
    record.private_pkcs8
}

fn claims(exp: u64) -> AccessClaims {
    let refresh_token = RefreshTokens::new(&[7; 32]).mint(&SessionHandle::from_bytes([0x5a; 16]));
    AccessClaims {
        user_id: "user-1".into(),
        tenant_id: "public".into(),
        session_handle: SessionHandle::from_bytes([0x5a; 16]).to_string(),
        refresh_token_hash: refresh::hash(&refresh_token).to_hex(),
        anti_csrf_token: None,
        iat: 1_700_000_000,
        exp,
        iss: None,
        payload: Map::new(),
    }
}

fn mint(key: &SigningKey, claims: &AccessClaims) -> String {
    access::mint(key, claims).expect("mint")
}

fn write(dir: &Path, name: &str, data: &str) {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("write seed");
    println!("wrote {} ({} bytes)", path.display(), data.len());
}

fn access_token_seeds(dir: &Path) {
    std::fs::create_dir_all(dir).expect("seeds/access_token");
    let ring = &FIXTURE.ring;
    let now = FIXTURE.now_ms();
    let key = |kid: &str| ring.verifier(kid).expect("a fixed key");
    let mut made = Vec::new();

    // The current signer (EdDSA), plain claims.
    let signer = ring.signer();
    made.push(("eddsa-signer.jwt", mint(&signer, &claims(FAR_EXP))));

    // RS256 with every optional claim and a user payload.
    let mut c = claims(FAR_EXP);
    c.anti_csrf_token = Some("csrf-token".into());
    c.iss = Some("https://sessiond.example/auth".into());
    c.payload = json!({"role": "admin", "n": 1, "nested": {"a": [1, 2.5, null, true]}})
        .as_object()
        .cloned()
        .expect("object");
    made.push(("rs256-full.jwt", mint(&key(FIXED_KEYS[0].kid), &c)));

    // ES256, and the static key (ES256 too), which signs JWTs but must not
    // vouch for a session: verify refuses it as an unknown key.
    let mut c = claims(FAR_EXP);
    c.payload.insert("scope".into(), json!(["read", "write"]));
    made.push(("es256-payload.jwt", mint(&key(FIXED_KEYS[1].kid), &c)));
    made.push((
        "es256-static.jwt",
        mint(&key(FIXED_KEYS[3].kid), &claims(FAR_EXP)),
    ));

    // Expired (signature fine, `exp` long past).
    made.push(("eddsa-expired.jwt", mint(&signer, &claims(PAST_EXP))));

    // Signed but not a valid set of claims: `rsub` missing, then `stt` and
    // `parentRefreshTokenHash1` present (reserved claims the parser strips).
    let mut bare = json!({"sub": "user-1", "tId": "public", "iat": 1, "exp": FAR_EXP});
    made.push(("eddsa-no-rsub.jwt", signer.sign(&bare, true).expect("sign")));
    bare["rsub"] = "user-1".into();
    bare["sessionHandle"] = "h".into();
    bare["refreshTokenHash1"] = "x".into();
    bare["stt"] = 1.into();
    bare["parentRefreshTokenHash1"] = Value::Null;
    made.push(("eddsa-stt.jwt", signer.sign(&bare, true).expect("sign")));

    // No `version: "5"` header (a JWT, not an access token).
    bare.as_object_mut().expect("object").remove("stt");
    bare["sessionHandle"] = SessionHandle::from_bytes([0x5a; 16]).to_string().into();
    made.push((
        "eddsa-no-version.jwt",
        signer.sign(&bare, false).expect("sign"),
    ));

    // The EdDSA token with its header pointing at the RS256 key (algorithm
    // confusion), and with `alg: none` and no signature.
    let eddsa = made[0].1.clone();
    let (_, rest) = eddsa.split_once('.').expect("a JWS");
    let header = |alg: &str| {
        let h = json!({"typ": "JWT", "alg": alg, "kid": FIXED_KEYS[0].kid, "version": "5"});
        b64url(h.to_string().as_bytes())
    };
    made.push((
        "kid-rs256-alg-eddsa.jwt",
        format!("{}.{rest}", header("EdDSA")),
    ));
    let (payload, _) = rest.split_once('.').expect("a JWS");
    made.push(("alg-none.jwt", format!("{}.{payload}.", header("none"))));

    // What each seed must verify to, so that a seed which stopped reaching
    // the path it is for (say, a key id the ring no longer knows) is noticed.
    let expected = [
        ("eddsa-signer.jwt", Ok(())),
        ("rs256-full.jwt", Ok(())),
        ("es256-payload.jwt", Ok(())),
        ("es256-static.jwt", Err(TokenError::UnknownKey)),
        ("eddsa-expired.jwt", Err(TokenError::Expired)),
        ("eddsa-no-rsub.jwt", Err(TokenError::Malformed)),
        ("eddsa-stt.jwt", Ok(())),
        ("eddsa-no-version.jwt", Err(TokenError::Malformed)),
        ("kid-rs256-alg-eddsa.jwt", Err(TokenError::WrongAlgorithm)),
        ("alg-none.jwt", Err(TokenError::Malformed)),
    ];
    assert_eq!(made.len(), expected.len());
    for ((name, token), (want_name, want)) in made.into_iter().zip(expected) {
        assert_eq!(name, want_name);
        let result = access::verify(ring, &token, now).map(|_| ());
        println!("{name}: {result:?}");
        assert_eq!(result, want, "{name}");
        write(dir, name, &token);
    }
}

fn refresh_token_seeds(dir: &Path) {
    std::fs::create_dir_all(dir).expect("seeds/refresh_token");
    let tokens = RefreshTokens::new(&[7; 32]);
    for i in 0..3 {
        let t = tokens.mint(&SessionHandle::random());
        assert!(tokens.open(&t).is_ok());
        write(dir, &format!("minted-{i}.txt"), &t);
    }
    // Minted under another secret: well formed, MAC refused.
    let foreign = RefreshTokens::new(&[8; 32]).mint(&SessionHandle::random());
    write(dir, "foreign-mac.txt", &foreign);
}
