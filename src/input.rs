//! Checks on what callers hand in, shared by every layer: identifiers
//! (user, tenant, session handle), the size and depth of JSON, and the
//! reserved access token claims no payload may set.
//!
//! This is the ground floor: it depends on nothing of sessiond's but
//! `ids`, and its failures are an [`InputError`] that the layers above wrap.

use serde_json::{Map, Value};

use crate::ids::SessionHandle;

/// Bad input: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The field's value is not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as the caller named it.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A payload sets a reserved access token claim.
    #[error("`{claim}` is a reserved claim and cannot be set")]
    ProtectedClaim {
        /// The field holding the claim.
        field: String,
        /// The claim.
        claim: String,
    },
}

impl InputError {
    /// A bad value of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

type Result<T, E = InputError> = std::result::Result<T, E>;

/// Claims an access token carries besides the user payload.
pub const RESERVED_CLAIMS: [&str; 11] = [
    "sub",
    "iat",
    "exp",
    "sessionHandle",
    "refreshTokenHash1",
    "parentRefreshTokenHash1",
    "antiCsrfToken",
    "tId",
    "rsub",
    "stt",
    "iss",
];

/// Whether `key` is a reserved access token claim.
pub fn is_reserved(key: &str) -> bool {
    RESERVED_CLAIMS.contains(&key)
}

/// Refuses a payload that sets a reserved access token claim.
pub fn refuse_reserved(field: &str, payload: &Map<String, Value>) -> Result<()> {
    match payload.keys().find(|k| is_reserved(k)) {
        Some(claim) => Err(InputError::ProtectedClaim {
            field: format!("{field}.{claim}"),
            claim: claim.clone(),
        }),
        None => Ok(()),
    }
}

/// How large and how deep caller JSON may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Largest serialised size, bytes.
    pub bytes: usize,
    /// Deepest nesting of objects and arrays (the top-level object is 1).
    pub depth: usize,
}

/// The nesting depth of a JSON value (scalars 0, `{}` 1).
fn depth(value: &Value) -> usize {
    match value {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Refuses JSON larger or deeper than `limits` allow.
pub fn limit_size(field: &str, payload: &Map<String, Value>, limits: JsonLimits) -> Result<()> {
    let len = serde_json::to_vec(payload)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > limits.bytes {
        return Err(InputError::invalid(
            field,
            format!(
                "is {len} bytes of JSON; the limit is {} bytes",
                limits.bytes
            ),
        ));
    }
    let deepest = 1 + payload.values().map(depth).max().unwrap_or(0);
    if deepest > limits.depth {
        return Err(InputError::invalid(
            field,
            format!("nests {deepest} levels deep; the limit is {}", limits.depth),
        ));
    }
    Ok(())
}

/// Longest accepted user id, in bytes.
pub const MAX_USER_ID: usize = 512;
/// Longest accepted tenant id, in bytes.
pub const MAX_TENANT_ID: usize = 128;
/// Tenant used when a request names none.
pub const DEFAULT_TENANT: &str = "public";

/// Checks a user id.
pub fn user_id(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(InputError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_USER_ID {
        return Err(InputError::invalid(
            field,
            format!("must be at most {MAX_USER_ID} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(InputError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a tenant id; empty means the default tenant.
pub fn tenant_id(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Ok(DEFAULT_TENANT.to_owned());
    }
    if value.len() > MAX_TENANT_ID {
        return Err(InputError::invalid(
            field,
            format!("must be at most {MAX_TENANT_ID} bytes"),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(InputError::invalid(
            field,
            "may hold only letters, digits, '-' and '_'",
        ));
    }
    Ok(value.to_owned())
}

/// Parses a session handle.
pub fn handle(field: &str, value: &str) -> Result<SessionHandle> {
    if value.is_empty() {
        return Err(InputError::invalid(field, "must not be empty"));
    }
    SessionHandle::parse(value).ok_or_else(|| InputError::invalid(field, "is not a session handle"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn reserved_claims_are_refused_with_their_field() {
        let err = refuse_reserved("access_token_payload", &map(json!({"ok": 1, "sub": "x"})))
            .unwrap_err();
        match err {
            InputError::ProtectedClaim { field, claim } => {
                assert_eq!(field, "access_token_payload.sub");
                assert_eq!(claim, "sub");
            }
            other => panic!("{other:?}"),
        }
        refuse_reserved("p", &map(json!({"role": "admin"}))).unwrap();
    }

    #[test]
    fn size_limit_counts_json_bytes() {
        let m = map(json!({"k": "x".repeat(100)}));
        let limits = |bytes, depth| JsonLimits { bytes, depth };
        limit_size("p", &m, limits(200, 4)).unwrap();
        assert!(limit_size("p", &m, limits(50, 4)).is_err());
        let deep = map(json!({"a": {"b": [[1]]}}));
        limit_size("p", &deep, limits(200, 4)).unwrap();
        assert!(limit_size("p", &deep, limits(200, 3)).is_err());
    }

    #[test]
    fn identifiers() {
        assert!(user_id("user_id", "").is_err());
        assert!(user_id("user_id", &"u".repeat(513)).is_err());
        user_id("user_id", "alice@example.com").unwrap();
        assert_eq!(tenant_id("tenant_id", "").unwrap(), "public");
        assert!(tenant_id("tenant_id", "a b").is_err());
        assert!(handle("session_handle", "nope").is_err());
    }
}
