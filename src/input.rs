//! Checks on what callers hand in, shared by every layer: identifiers
//! (user, tenant, session handle), the size and depth of JSON, and the
//! reserved access token claims no payload may set — and the checked
//! values that come out of those checks ([`UserId`], [`TenantId`],
//! [`AccessPayload`], [`PayloadUpdate`], [`SessionData`]), which the domain
//! takes so that it cannot be handed unchecked input.
//!
//! This is the ground floor: it depends on nothing of sessiond's but
//! `ids`, and its failures are an [`InputError`] that the layers above wrap.
//! The field named in an error is the one the caller passes in: this module
//! never knows a request's field names.

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
    refuse_reserved_except(field, payload, &[])
}

/// Refuses a payload that sets a reserved access token claim other than
/// those in `allowed`.
pub fn refuse_reserved_except(
    field: &str,
    payload: &Map<String, Value>,
    allowed: &[&str],
) -> Result<()> {
    match payload
        .keys()
        .find(|k| is_reserved(k) && !allowed.contains(&k.as_str()))
    {
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

/// What is wrong with JSON larger or deeper than `limits` allow, as a
/// phrase to follow its name ("is 70000 bytes of JSON; ..."); `None` when
/// it fits.
pub fn oversize(payload: &Map<String, Value>, limits: JsonLimits) -> Option<String> {
    let len = serde_json::to_vec(payload)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > limits.bytes {
        return Some(format!(
            "is {len} bytes of JSON; the limit is {} bytes",
            limits.bytes
        ));
    }
    let deepest = 1 + payload.values().map(depth).max().unwrap_or(0);
    if deepest > limits.depth {
        return Some(format!(
            "nests {deepest} levels deep; the limit is {}",
            limits.depth
        ));
    }
    None
}

/// Refuses JSON larger or deeper than `limits` allow.
pub fn limit_size(field: &str, payload: &Map<String, Value>, limits: JsonLimits) -> Result<()> {
    match oversize(payload, limits) {
        Some(message) => Err(InputError::invalid(field, message)),
        None => Ok(()),
    }
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

/// A checked user id: non-empty, bounded, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(String);

impl UserId {
    /// Checks `value` as a user id; errors name `field`.
    pub fn parse(field: &str, value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        user_id(field, &value)?;
        Ok(Self(value))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A checked tenant id; a request naming none gets [`DEFAULT_TENANT`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// Checks `value` as a tenant id ("" is the default tenant); errors
    /// name `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        tenant_id(field, value).map(Self)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// User claims for an access token: no reserved claim, within the limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessPayload(Map<String, Value>);

impl AccessPayload {
    /// Checks `payload`: reserved claims first, then size; errors name `field`.
    pub fn parse(field: &str, payload: Map<String, Value>, limits: JsonLimits) -> Result<Self> {
        refuse_reserved(field, &payload)?;
        limit_size(field, &payload, limits)?;
        Ok(Self(payload))
    }

    /// The claims.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

/// A change to an access token payload (`null` deletes): no reserved
/// claim. Its size can only be judged once merged, by the domain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PayloadUpdate(Map<String, Value>);

impl PayloadUpdate {
    /// Checks `update` for reserved claims; errors name `field`.
    pub fn parse(field: &str, update: Map<String, Value>) -> Result<Self> {
        refuse_reserved(field, &update)?;
        Ok(Self(update))
    }

    /// The changes.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Database-only session data, within the limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionData(Map<String, Value>);

impl SessionData {
    /// Checks the size of `data`; errors name `field`.
    pub fn parse(field: &str, data: Map<String, Value>, limits: JsonLimits) -> Result<Self> {
        limit_size(field, &data, limits)?;
        Ok(Self(data))
    }

    /// The data.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
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
