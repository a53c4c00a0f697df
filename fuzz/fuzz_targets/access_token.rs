//! Access token verification on arbitrary input.
//!
//! The input, read as UTF-8 (lossily), is handed to
//! `sessiond::token::access::verify` against a key ring holding one key of
//! each algorithm (see `src/lib.rs`). Verification must return a result for
//! anything, never panic. When a token does verify (the seeds do; a mutation
//! practically never can), the claims must also make sense: no reserved
//! claim left in the user payload, not expired at "now", expired at the end
//! of time, and signed by a rotating key (the static key signs JWTs, never
//! an access token).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sessiond::token::access::{self, is_reserved};
use sessiond::token::{TokenError, b64url_decode};
use sessiond_fuzz::{FIXED_KEYS, FIXTURE};

fuzz_target!(
    init: {
        // Build the ring (key loading, sled, tokio) before the first input.
        std::sync::LazyLock::force(&FIXTURE);
    },
    |data: &[u8]| {
        let token = String::from_utf8_lossy(data);
        let fixture = &*FIXTURE;
        let now = fixture.now_ms();
        let Ok(claims) = access::verify(&fixture.ring, &token, now) else {
            return;
        };
        assert!(!claims.user_id.is_empty());
        assert!(
            now < claims.exp.saturating_mul(1000),
            "accepted at {now} but exp is {}",
            claims.exp
        );
        if let Some(key) = claims.payload.keys().find(|k| is_reserved(k)) {
            panic!("reserved claim {key:?} left in the user payload");
        }
        assert_eq!(
            access::verify(&fixture.ring, &token, u64::MAX).map(|_| ()),
            Err(TokenError::Expired)
        );
        let kid = token
            .split('.')
            .next()
            .and_then(b64url_decode)
            .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
            .and_then(|h| h.get("kid")?.as_str().map(str::to_owned))
            .expect("a verified token has a readable header with a kid");
        let key = FIXED_KEYS.iter().find(|k| k.kid == kid);
        assert!(
            key.is_some_and(|k| !k.is_static),
            "verified by {kid:?}, not a rotating key of the ring"
        );
    }
);
