//! A secret string (an API key, a client secret, a key-encryption key's
//! text) whose `Debug` never shows it, and the layout of a value sealed
//! under the key-encryption key ([`sealed`]).

use std::fmt;

/// A secret string (an API key). `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is compared or sent.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The one layout of a value sealed under the key-encryption key: a prefix,
/// the 12-byte nonce, then the AES-256-GCM ciphertext and tag. Sealing is
/// `token::kek`'s; the layout is defined down here because the store formats
/// that keep a sealed key's nonce and ciphertext in fields of their own (the
/// embedded store's and the backup's, as older releases wrote them) map
/// them to and from it without knowing anything else of sealing.
pub mod sealed {
    /// What every sealed value starts with. Plaintext key material never
    /// does: a PKCS#8 document starts with a DER SEQUENCE (0x30).
    pub const PREFIX: &[u8] = b"sealed:aes-256-gcm:";

    /// Length of the nonce after the prefix.
    pub const NONCE_LEN: usize = 12;

    /// Whether `value` is sealed.
    pub fn is_sealed(value: &[u8]) -> bool {
        value.starts_with(PREFIX)
    }

    /// A sealed value from its nonce and ciphertext.
    pub fn join(nonce: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        [PREFIX, nonce, ciphertext].concat()
    }

    /// The nonce and ciphertext of a sealed value; `None` when `value` is
    /// not one (plaintext) or is cut short.
    pub fn split(value: &[u8]) -> Option<(&[u8], &[u8])> {
        value.strip_prefix(PREFIX)?.split_at_checked(NONCE_LEN)
    }

    /// A sealed value's nonce and ciphertext, held apart.
    pub type Parts = (Vec<u8>, Vec<u8>);

    /// A private key as the formats that keep a sealed key's nonce and
    /// ciphertext in fields of their own hold it: the plaintext (empty when
    /// sealed), and the nonce and ciphertext when sealed.
    pub fn apart(value: &[u8]) -> (Vec<u8>, Option<Parts>) {
        match split(value) {
            Some((nonce, ciphertext)) => (Vec::new(), Some((nonce.to_vec(), ciphertext.to_vec()))),
            None => (value.to_vec(), None),
        }
    }

    /// The value [`apart`]'s parts stand for.
    pub fn together(plaintext: Vec<u8>, sealed: Option<Parts>) -> Vec<u8> {
        match sealed {
            Some((nonce, ciphertext)) => join(&nonce, &ciphertext),
            None => plaintext,
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_sealed_value_splits_into_what_it_was_joined_from() {
            let value = super::join(&[1; 12], b"ciphertext");
            assert!(super::is_sealed(&value));
            assert_eq!(
                super::split(&value),
                Some((&[1u8; 12][..], &b"ciphertext"[..]))
            );
            assert_eq!(super::split(b"\x30\x82plaintext"), None);
            assert_eq!(super::split(super::PREFIX), None, "cut short");
        }
    }
}
