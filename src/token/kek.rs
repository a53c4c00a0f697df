//! The key-encryption key: the cipher that seals signing keys and server
//! secrets before they reach the store. When and what to seal, and how old
//! values are migrated, is [`super::seal`]'s to decide; nothing but tests
//! calls this cipher from elsewhere.
//!
//! AES-256-GCM with a random nonce per seal and the key id (for the secret,
//! its name) as associated data, so a sealed value cannot be moved to
//! another id. The KEK itself comes from a file or an environment variable
//! and is never stored or logged.

use aws_lc_rs::aead::{AES_256_GCM, Aad, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::secret::sealed;

/// Whether a stored value is one [`Kek::seal_value`] made.
pub fn is_sealed_value(value: &[u8]) -> bool {
    sealed::is_sealed(value)
}

/// Why a store holding `what` sealed cannot start without a KEK.
pub fn missing(what: &str) -> String {
    format!(
        "the store holds {what} encrypted, and no key-encryption key is configured \
         (--key-encryption-key-file or SESSIOND_KEY_ENCRYPTION_KEY)"
    )
}

/// A 256-bit key-encryption key, and the one it replaces while values
/// sealed under that one are sealed again.
pub struct Kek {
    key: RandomizedNonceKey,
    previous: Option<RandomizedNonceKey>,
}

/// What [`Kek::open`] recovered (no `Debug`: it holds key material).
pub struct Opened {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Sealed under the previous KEK: to be sealed again under the current.
    pub stale: bool,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek([redacted])")
    }
}

impl Kek {
    /// Parses 32 bytes written as base64 (standard or URL-safe) or hex.
    pub fn from_text(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .ok()
            .or_else(|| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok())
            .filter(|b| b.len() == 32)
            .or_else(|| hex(text).filter(|b| b.len() == 32))
            .ok_or(
                "must be 32 random bytes written as base64 or hex (e.g. `openssl rand -base64 32`)",
            )?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| "is not a usable AES-256 key".to_owned())?;
        Ok(Self {
            key,
            previous: None,
        })
    }

    /// This KEK, also opening what `previous` sealed (a KEK being replaced).
    pub fn with_previous(mut self, previous: Kek) -> Self {
        self.previous = Some(previous.key);
        self
    }

    /// Whether a previous KEK was given.
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// Why a sealed value named `what` did not open, for the operator.
    pub fn refusal(&self, what: &str) -> String {
        if self.has_previous() {
            format!(
                "neither the key-encryption key nor the previous one opens {what}; the store \
                 was sealed with another key, or the stored value is damaged"
            )
        } else {
            format!(
                "the configured key-encryption key does not open {what}; it is not the key the \
                 store was sealed with (a KEK being replaced goes in \
                 --previous-key-encryption-key-file or SESSIOND_PREVIOUS_KEY_ENCRYPTION_KEY), or \
                 the stored value is damaged"
            )
        }
    }

    /// Encrypts `plaintext`, bound to `aad`; returns (nonce, ciphertext with tag).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut in_out = plaintext.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
            .expect("AES-GCM sealing does not fail for in-memory data");
        (nonce.as_ref().to_vec(), in_out)
    }

    /// Decrypts what [`Kek::seal`] produced, with this KEK or the previous
    /// one; `None` when neither KEK, or the nonce, the associated data or the
    /// ciphertext, is the one it was sealed with.
    pub fn open(&self, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Option<Opened> {
        let open = |key: &RandomizedNonceKey| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut in_out = ciphertext.to_vec();
            let plain = key.open_in_place(nonce, Aad::from(aad), &mut in_out).ok()?;
            Some(plain.to_vec())
        };
        if let Some(plaintext) = open(&self.key) {
            return Some(Opened {
                plaintext,
                stale: false,
            });
        }
        let plaintext = open(self.previous.as_ref()?)?;
        Some(Opened {
            plaintext,
            stale: true,
        })
    }

    /// Seals `plaintext` bound to `aad` into one storable value: a marker,
    /// the nonce, then the ciphertext with its tag.
    pub fn seal_value(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (nonce, ciphertext) = self.seal(aad, plaintext);
        sealed::join(&nonce, &ciphertext)
    }

    /// Opens what [`Kek::seal_value`] made; `None` when it was not made so,
    /// or not with this KEK (or the previous one) and `aad`.
    pub fn open_value(&self, aad: &[u8], value: &[u8]) -> Option<Opened> {
        let (nonce, ciphertext) = sealed::split(value)?;
        self.open(aad, nonce, ciphertext)
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_the_wrong_key_or_id() {
        let kek = Kek::from_text(&STANDARD.encode([7u8; 32])).unwrap();
        let (nonce, sealed) = kek.seal(b"d-1", b"private key");
        assert_ne!(&sealed[..11], b"private key");
        assert_eq!(
            kek.open(b"d-1", &nonce, &sealed).unwrap().plaintext,
            b"private key"
        );
        assert!(
            kek.open(b"d-2", &nonce, &sealed).is_none(),
            "bound to the key id"
        );
        let other = Kek::from_text(&"08".repeat(32)).unwrap();
        assert!(other.open(b"d-1", &nonce, &sealed).is_none());
        assert!(Kek::from_text("short").is_err());
        assert!(Kek::from_text(&STANDARD.encode([1u8; 16])).is_err());
    }

    #[test]
    fn a_sealed_value_is_marked_and_opens_only_with_its_key_and_name() {
        let kek = Kek::from_text(&STANDARD.encode([7u8; 32])).unwrap();
        let secret = [3u8; 32];
        let value = kek.seal_value(b"mac", &secret);
        assert!(is_sealed_value(&value));
        assert!(!is_sealed_value(&secret), "a plaintext secret is not");
        assert!(
            !value.windows(32).any(|w| w == secret),
            "no plaintext inside"
        );
        assert_eq!(kek.open_value(b"mac", &value).unwrap().plaintext, secret);
        assert!(
            kek.open_value(b"other", &value).is_none(),
            "bound to the name"
        );
        let other = Kek::from_text(&"08".repeat(32)).unwrap();
        assert!(other.open_value(b"mac", &value).is_none());
        assert!(
            kek.open_value(b"mac", &secret).is_none(),
            "not a sealed value"
        );
        assert!(
            kek.open_value(b"mac", sealed::PREFIX).is_none(),
            "cut short"
        );
    }

    #[test]
    fn a_kek_with_its_predecessor_opens_both_and_says_which_was_stale() {
        let old = || Kek::from_text(&STANDARD.encode([1u8; 32])).unwrap();
        let new = || Kek::from_text(&STANDARD.encode([2u8; 32])).unwrap();
        let rotating = new().with_previous(old());

        let (old_nonce, by_old) = old().seal(b"d-1", b"private key");
        let opened = rotating.open(b"d-1", &old_nonce, &by_old).unwrap();
        assert_eq!(opened.plaintext, b"private key");
        assert!(opened.stale, "sealed under the previous KEK");
        assert!(
            rotating.open(b"d-2", &old_nonce, &by_old).is_none(),
            "still bound to the id"
        );

        let (new_nonce, by_new) = rotating.seal(b"d-1", b"private key");
        assert!(!rotating.open(b"d-1", &new_nonce, &by_new).unwrap().stale);
        assert!(
            old().open(b"d-1", &new_nonce, &by_new).is_none(),
            "sealed with the new KEK"
        );
        assert!(new().open(b"d-1", &new_nonce, &by_new).is_some());

        let unrelated = Kek::from_text(&STANDARD.encode([3u8; 32])).unwrap();
        let (nonce, by_other) = unrelated.seal(b"d-1", b"x");
        assert!(rotating.open(b"d-1", &nonce, &by_other).is_none());
    }
}
