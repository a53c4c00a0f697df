//! Opaque refresh tokens.
//!
//! A refresh token is base64url of `version(1) | session handle(16) |
//! random(32) | MAC(16)`, where the MAC is HMAC-SHA-256 under a server secret
//! kept in the store. The handle lets the server find the session without an
//! index; the MAC proves the token was minted here, so a forged token for a
//! known handle is UNAUTHORISED and can never set off theft detection (which
//! revokes the session). The store keeps only SHA-256 hashes of tokens.

use aws_lc_rs::hmac;

use super::{TokenError, b64url, b64url_decode, ct_eq, random_bytes};
use crate::ids::SessionHandle;
use crate::store::TokenHash;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const RAW_LEN: usize = 1 + 16 + 32 + MAC_LEN;

/// Mints and authenticates refresh tokens.
pub struct RefreshTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for RefreshTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshTokens([redacted])")
    }
}

impl RefreshTokens {
    /// Name of the store secret holding the MAC key.
    pub const SECRET_NAME: &'static str = "refresh-token-mac";
    /// What the secret is, for the operator.
    pub const SECRET_WHAT: &'static str = "the refresh-token MAC secret";

    /// Uses `secret` (32 random bytes from the store) as the MAC key.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A new refresh token for `handle`.
    pub fn mint(&self, handle: &SessionHandle) -> String {
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(handle.as_bytes());
        raw.extend_from_slice(&random_bytes::<32>());
        let tag = hmac::sign(&self.key, &raw);
        raw.extend_from_slice(&tag.as_ref()[..MAC_LEN]);
        b64url(&raw)
    }

    /// The session a token was minted for, if it was minted by this server.
    pub fn open(&self, token: &str) -> Result<SessionHandle, TokenError> {
        if token.len() > 128 {
            return Err(TokenError::Malformed);
        }
        let raw = b64url_decode(token).ok_or(TokenError::Malformed)?;
        if raw.len() != RAW_LEN || raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let (body, mac) = raw.split_at(RAW_LEN - MAC_LEN);
        let tag = hmac::sign(&self.key, body);
        if !ct_eq(&tag.as_ref()[..MAC_LEN], mac) {
            return Err(TokenError::BadSignature);
        }
        let mut handle = [0u8; 16];
        handle.copy_from_slice(&body[1..17]);
        Ok(SessionHandle::from_bytes(handle))
    }
}

/// The hash under which a refresh token is stored (and carried in access
/// tokens as `refreshTokenHash1`).
pub fn hash(token: &str) -> TokenHash {
    super::sha256(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_opens_to_its_handle() {
        let tokens = RefreshTokens::new(&[7; 32]);
        let handle = SessionHandle::random();
        let t = tokens.mint(&handle);
        assert_eq!(tokens.open(&t), Ok(handle));
        assert_ne!(tokens.mint(&handle), t, "each token is fresh");
    }

    #[test]
    fn any_changed_byte_or_foreign_key_is_refused() {
        let tokens = RefreshTokens::new(&[7; 32]);
        let t = tokens.mint(&SessionHandle::random());
        let mut raw = b64url_decode(&t).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            assert!(tokens.open(&b64url(&raw)).is_err(), "byte {i}");
            raw[i] ^= 1;
        }
        let other = RefreshTokens::new(&[8; 32]);
        assert_eq!(other.open(&t), Err(TokenError::BadSignature));
        for bad in [
            "",
            "x",
            "not base64 !",
            &t[..t.len() - 2],
            &format!("{t}AA"),
        ] {
            assert!(tokens.open(bad).is_err(), "{bad:?}");
        }
    }
}
