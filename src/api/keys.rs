//! How API keys are configured: a scope, a name, and the key or its
//! SHA-256 (`--api-key NAME:SCOPE:KEY`). [`super::ApiKeys`] holds them as
//! hashes for the calls to be checked against.

use std::fmt;

use crate::secret::Secret;

/// Which calls an API key may make. Each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Verifying: GetSession, ValidateClaimsInJwtPayload, GetJwks and the
    /// discovery document (for sidecars and gateways).
    Verify,
    /// A backend: every SessionService, JwtService (except key rotation) and
    /// UserSessionService call.
    Backend,
    /// Everything, including AdminService and RotateSigningKey.
    Admin,
}

impl Scope {
    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Backend => "backend",
            Self::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "verify" => Some(Self::Verify),
            "backend" => Some(Self::Backend),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// How an API key is configured: the key itself, or its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySecret {
    /// The key (at least 16 visible ASCII characters).
    Plain(Secret),
    /// SHA-256 of the key, so the key itself need not sit in configuration.
    Sha256([u8; 32]),
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain([redacted])"),
            Self::Sha256(_) => f.write_str("Sha256(..)"),
        }
    }
}

/// A configured API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// A name for logs and errors (never the key).
    pub name: String,
    /// What it may call.
    pub scope: Scope,
    /// The key or its hash.
    pub secret: KeySecret,
}

impl ApiKey {
    /// An admin key given in plain text.
    pub fn admin(name: &str, key: &str) -> Self {
        Self {
            name: name.to_owned(),
            scope: Scope::Admin,
            secret: KeySecret::Plain(Secret::new(key)),
        }
    }

    /// Parses `KEY` (an admin key) or `NAME:SCOPE:KEY`, where KEY may be
    /// `sha256:<64 hex digits>`; `index` names unnamed keys `key-1`, `key-2`, ...
    pub fn parse(text: &str, index: usize) -> Result<Self, String> {
        let text = text.trim();
        let mut parts = text.splitn(3, ':');
        let (name, scope, secret) = match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(scope), Some(secret))
                if Scope::parse(scope).is_some()
                    && !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                (
                    name.to_owned(),
                    Scope::parse(scope).expect("checked"),
                    secret,
                )
            }
            _ => (format!("key-{}", index + 1), Scope::Admin, text),
        };
        let secret = match secret.strip_prefix("sha256:") {
            Some(hex) => {
                let bytes = decode_hex(hex).filter(|b| b.len() == 32).ok_or_else(|| {
                    format!(
                        "the hash of API key `{name}` is not 64 hexadecimal digits after `sha256:`"
                    )
                })?;
                KeySecret::Sha256(bytes.try_into().expect("32 bytes"))
            }
            None => {
                if secret.len() < 16 {
                    return Err(format!(
                        "API key `{name}` must be at least 16 characters long"
                    ));
                }
                if !secret.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "API key `{name}` may hold only visible ASCII characters (it travels in a header)"
                    ));
                }
                KeySecret::Plain(Secret::new(secret))
            }
        };
        Ok(Self {
            name,
            scope,
            secret,
        })
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}
