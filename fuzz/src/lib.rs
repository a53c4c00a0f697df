//! Shared fixtures of the sessiond fuzz targets.
//!
//! The `access_token` target needs a [`KeyRing`] whose keys are the same in
//! every fuzzing process, or the seed tokens in `seeds/access_token/` would
//! name key ids that the ring does not know and never get past the key
//! lookup. So the ring is opened (with [`KeyRing::open`], as the server does)
//! on a fresh sled store into which the fixed fuzzing keys of `keys/` were
//! put first. They are throwaway keys made by `examples/make_seeds.rs` for
//! fuzzing only; they sign nothing anywhere else.
//!
//! The ring holds one rotating key of each algorithm (an algorithm change in
//! production leaves such a mix behind) and a static key, so one ring verifies
//! tokens of every algorithm and a mutated `kid` can point a token at a key of
//! another algorithm.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use sessiond::ManualClock;
use sessiond::config::SigningAlgorithm;
use sessiond::metrics::Metrics;
use sessiond::store::{KeyRecord, KeysAndSecrets, SledStore};
use sessiond::token::keys::{KeyRing, KeyRingConfig};

/// One fixed fuzzing key.
#[derive(Debug, Clone, Copy)]
pub struct FixedKey {
    /// Key id.
    pub kid: &'static str,
    /// JOSE algorithm.
    pub alg: SigningAlgorithm,
    /// File under `keys/` holding the PKCS#8 DER private key.
    pub file: &'static str,
    /// The static key (never rotates).
    pub is_static: bool,
    /// When it signs (and was made), ms. The EdDSA key is the newest, so it
    /// is [`KeyRing::signer`].
    pub signs_from_ms: u64,
}

/// The keys of the fuzzing ring.
pub const FIXED_KEYS: [FixedKey; 4] = [
    FixedKey {
        kid: "d-1700000000001",
        alg: SigningAlgorithm::RS256,
        file: "d-rs256.pk8",
        is_static: false,
        signs_from_ms: 1_700_000_000_001,
    },
    FixedKey {
        kid: "d-1700000000002",
        alg: SigningAlgorithm::ES256,
        file: "d-es256.pk8",
        is_static: false,
        signs_from_ms: 1_700_000_000_002,
    },
    FixedKey {
        kid: "d-1700000000003",
        alg: SigningAlgorithm::EdDSA,
        file: "d-eddsa.pk8",
        is_static: false,
        signs_from_ms: 1_700_000_000_003,
    },
    FixedKey {
        kid: "s-00000000000000f0",
        alg: SigningAlgorithm::ES256,
        file: "s-es256.pk8",
        is_static: true,
        signs_from_ms: 1_700_000_000_000,
    },
];

/// The ring's settings: the newest key's algorithm (so opening the ring
/// starts no rotation) and an interval no test run reaches.
pub const RING_CONFIG: KeyRingConfig = KeyRingConfig {
    algorithm: SigningAlgorithm::EdDSA,
    rotation_interval_ms: 1 << 62,
    access_lifetime_ms: 3_600_000,
};

/// How long a superseded fuzzing key keeps verifying (about 35,000 years), so
/// every key stays live whatever the date.
const KEY_LIFETIME_MS: u64 = 1 << 50;

/// `keys/` of this crate.
pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("keys")
}

/// The key ring and the clock it reads, built once per process.
pub struct Fixture {
    /// The ring.
    pub ring: KeyRing,
    /// Its clock, frozen at start-up.
    pub clock: Arc<ManualClock>,
    // Kept alive: the store's flusher task lives on it.
    _runtime: tokio::runtime::Runtime,
}

impl Fixture {
    /// "Now" as the ring sees it, ms.
    pub fn now_ms(&self) -> u64 {
        use sessiond::Clock;
        self.clock.now_ms()
    }
}

/// The process-wide fixture; panics (at start-up, not per input) when the
/// keys are missing: run `cargo run --example make_seeds` first.
pub static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let records = FIXED_KEYS
        .iter()
        .map(|k| {
            let path = keys_dir().join(k.file);
            let private_pkcs8 = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run --example make_seeds` in fuzz/",
                    path.display()
                )
            });
            KeyRecord {
                kid: k.kid.to_owned(),
                alg: k.alg.as_str().to_owned(),
                private_pkcs8,
                sealed: None,
                created_at_ms: k.signs_from_ms,
                signs_from_ms: k.signs_from_ms,
                max_token_lifetime_ms: KEY_LIFETIME_MS,
                max_jwt_exp_ms: 0,
                is_static: k.is_static,
            }
        })
        .collect::<Vec<_>>();
    let (ring, clock) = runtime.block_on(open_ring(records));
    Fixture {
        ring,
        clock,
        _runtime: runtime,
    }
});

async fn open_ring(records: Vec<KeyRecord>) -> (KeyRing, Arc<ManualClock>) {
    let dir = tempfile::Builder::new()
        .prefix("sessiond-fuzz-")
        .tempdir()
        .expect("temporary directory");
    let store = SledStore::open(dir.path(), 8 << 20, None).expect("sled store");
    for r in &records {
        store.put_key(r).await.expect("put a fixed key");
    }
    let clock = ManualClock::starting_now();
    let ring = KeyRing::open(store, clock.clone(), RING_CONFIG, Metrics::shared())
        .await
        .expect("key ring");
    // The ring keeps its keys in memory and verification never reads the
    // store, so the directory goes now rather than being left behind by every
    // fuzzing process (sled keeps its open files; nothing reopens them).
    drop(dir);
    // Opening must have kept exactly the fixed keys (no rotation, no new key).
    let kids: Vec<String> = ring.list().into_iter().map(|k| k.kid).collect();
    assert_eq!(kids.len(), FIXED_KEYS.len(), "unexpected keys: {kids:?}");
    assert!(
        FIXED_KEYS
            .iter()
            .all(|k| kids.iter().any(|kid| kid == k.kid))
    );
    assert_eq!(ring.signer().kid(), FIXED_KEYS[2].kid);
    (ring, clock)
}
