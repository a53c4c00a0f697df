//! Tokens and the keys that sign them.
//!
//! - [`keys`]: the key ring — rotating and static signing keys, their
//!   generation, publication (JWKS) and retirement.
//! - [`access`]: access tokens (JWTs with SuperTokens v5 claims): minting and
//!   verification pinned to each key's algorithm.
//! - [`verifier`]: verification behind the cache of verified tokens
//!   ([`cache`]), whose policy it alone decides.
//! - [`refresh`]: opaque refresh tokens, authenticated with a server MAC so a
//!   forged token can never trigger theft handling.
//! - [`kek`]: the key-encryption key, and [`seal`]: the one path by which
//!   signing keys and server secrets are sealed with it, opened, and
//!   migrated (plaintext or previous-KEK values sealed again).
//!
//! This module never logs a token, a key or a secret, and never puts one in
//! an error message.

pub mod access;
pub mod cache;
pub mod kek;
pub mod keys;
pub mod refresh;
pub mod seal;
pub mod verifier;

use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a token was refused. Messages say what is wrong, never what the token was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of the expected shape.
    #[error("the token is malformed")]
    Malformed,
    /// Signed by no key this server knows (or one that has retired).
    #[error("the token is signed with an unknown key")]
    UnknownKey,
    /// The header's algorithm is not the key's algorithm.
    #[error("the token's algorithm does not match its key")]
    WrongAlgorithm,
    /// The signature (or MAC) does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
}

/// Key handling failures (generation, parsing of stored keys).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The crypto library refused to generate or parse a key.
    #[error("signing key {0}")]
    Crypto(&'static str),
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// Stored keys could not be opened with the configured key-encryption
    /// key (or none is configured for sealed keys).
    #[error("{0}")]
    Sealed(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Signing algorithms for access tokens and JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys (SuperTokens' choice).
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl SigningAlgorithm {
    /// The JOSE name of the algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl std::str::FromStr for SigningAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(Self::RS256),
            "ES256" => Ok(Self::ES256),
            "EdDSA" => Ok(Self::EdDSA),
            other => Err(format!("`{other}` is not one of RS256, ES256, EdDSA")),
        }
    }
}

pub use crate::ids::random_bytes;

/// A random token of 32 bytes, base64url without padding.
pub fn random_token() -> String {
    b64url(&random_bytes::<32>())
}

/// base64url without padding.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// SHA-256 of `data`, as the store keeps token hashes.
pub fn sha256(data: &[u8]) -> crate::store::TokenHash {
    let digest = digest::digest(&digest::SHA256, data);
    crate::store::TokenHash(digest.as_ref().try_into().expect("a SHA-256 is 32 bytes"))
}

/// Compares two secrets in time independent of where they differ (their
/// lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_tokens_differ() {
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 43);
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
