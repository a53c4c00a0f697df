//! Refresh token parsing and MAC checking on arbitrary input.
//!
//! The input, read as UTF-8 (lossily), is opened by
//! `RefreshTokens::new(&[7; 32]).open`, and hashed as the store would hash
//! it. Neither may panic. A token that opens must be the one spelling of its
//! bytes (base64url without padding, canonical trailing bits), or two
//! different strings would name the same token and be stored under two
//! different hashes; and it must open to the handle its bytes carry.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sessiond::token::refresh::{self, RefreshTokens};
use sessiond::token::{b64url, b64url_decode};

static TOKENS: LazyLock<RefreshTokens> = LazyLock::new(|| RefreshTokens::new(&[7; 32]));

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = refresh::hash(&token);
    let Ok(handle) = TOKENS.open(&token) else {
        return;
    };
    let raw = b64url_decode(&token).expect("an opened token decodes");
    assert_eq!(b64url(&raw), token, "an opened token is not canonical");
    assert_eq!(&raw[1..17], handle.as_bytes());
});
