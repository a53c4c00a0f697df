//! Session handles (16 random bytes, written in UUID form), and the
//! system's secure random bytes they and every other secret come from.

use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// `N` bytes from the system's secure random generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The system RNG failing is not recoverable: no token may be minted.
    SystemRandom::new()
        .fill(&mut out)
        .expect("system random generator failed");
    out
}

/// A session handle.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHandle([u8; 16]);

impl SessionHandle {
    /// A fresh random (version 4 UUID) handle.
    pub fn random() -> Self {
        Self(
            uuid::Builder::from_random_bytes(random_bytes::<16>())
                .into_uuid()
                .into_bytes(),
        )
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// From raw bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }

    /// Parses the canonical (hyphenated) lowercase or uppercase UUID form;
    /// the other forms `uuid` reads (braced, URN, no hyphens) are refused.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(s).ok().map(|u| Self(u.into_bytes()))
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_bytes(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionHandle({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let h = SessionHandle::random();
        let text = h.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        assert_eq!(SessionHandle::parse(&text), Some(h));
        assert_eq!(SessionHandle::parse(&text.to_uppercase()), Some(h));
    }

    #[test]
    fn refuses_what_is_not_a_uuid() {
        for bad in [
            "",
            "abc",
            "00000000-0000-0000-0000-00000000000g",
            "000000000000-0000-0000-0000-00000000",
        ] {
            assert_eq!(SessionHandle::parse(bad), None, "{bad}");
        }
    }
}
