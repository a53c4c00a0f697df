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
    /// A fresh random (version 4 UUID shaped) handle.
    pub fn random() -> Self {
        let mut b: [u8; 16] = random_bytes::<16>();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Self(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// From raw bytes.
    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(b)
    }

    /// Parses the canonical lowercase or uppercase UUID form.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
        if hex.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
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
