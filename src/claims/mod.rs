//! Session claims: values stored in the access token payload as
//! `{"<key>": {"v": <value>, "t": <ms since epoch>}}`, and declarative
//! validators that check them (SuperTokens' claim validators, as data).
//!
//! This module is pure: it reads payloads and reports failures. Fetching
//! values from an application's ClaimProvider goes through [`ClaimSource`],
//! implemented at the edge (`api::provider`). Failure reasons keep
//! SuperTokens' messages and field names so migrating clients read them
//! unchanged.

use serde_json::{Map, Value, json};

use crate::input::{InputError, is_reserved};
use crate::store::BoxFuture;

type Result<T, E = InputError> = std::result::Result<T, E>;

/// Why a claim's value could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The claim provider for a key failed or did not answer in time.
    #[error("the claim provider for `{claim_key}` is unavailable ({detail})")]
    ProviderUnavailable {
        /// The claim being fetched.
        claim_key: String,
        /// What went wrong (a gRPC code or a timeout), never provider data.
        detail: String,
    },
    /// No provider is configured for a claim key.
    #[error("no claim provider is configured for `{claim_key}`")]
    NoProvider {
        /// The claim key.
        claim_key: String,
    },
}

/// Reason message: the claim is not in the payload.
pub const MISSING: &str = "value does not exist";
/// Reason message: the value is older than the validator's max age.
pub const EXPIRED: &str = "expired";
/// Reason message: the value does not satisfy the check.
pub const WRONG: &str = "wrong value";

/// SuperTokens' email-verified claim (a boolean).
pub const EMAIL_VERIFIED: &str = "st-ev";
/// SuperTokens' roles claim (an array of strings).
pub const ROLES: &str = "st-role";
/// SuperTokens' permissions claim (an array of strings).
pub const PERMISSIONS: &str = "st-perm";

/// Longest accepted claim key, in bytes.
pub const MAX_CLAIM_KEY: usize = 256;
/// Most validators one call may carry.
pub const MAX_VALIDATORS: usize = 64;

/// What a validator checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// The value equals this (`is_true` / `is_false` are `HasValue(bool)`).
    HasValue(Value),
    /// The value is an array containing this.
    Includes(Value),
    /// The value is an array not containing this.
    Excludes(Value),
    /// The value is an array containing all of these.
    IncludesAll(Vec<Value>),
    /// The value is an array containing at least one of these.
    IncludesAny(Vec<Value>),
    /// The value is an array containing none of these.
    ExcludesAll(Vec<Value>),
}

impl Check {
    /// SuperTokens' name for the expected value in a failure reason, and the value.
    fn expectation(&self) -> (&'static str, Value) {
        match self {
            Self::HasValue(v) => ("expectedValue", v.clone()),
            Self::Includes(v) => ("expectedToInclude", v.clone()),
            Self::Excludes(v) => ("expectedToNotInclude", v.clone()),
            Self::IncludesAll(v) => ("expectedToInclude", Value::Array(v.clone())),
            Self::IncludesAny(v) => ("expectedToIncludeAtLeastOneOf", Value::Array(v.clone())),
            Self::ExcludesAll(v) => ("expectedToNotInclude", Value::Array(v.clone())),
        }
    }

    fn holds(&self, actual: &Value) -> bool {
        let contains = |x: &Value| {
            actual
                .as_array()
                .is_some_and(|a| a.iter().any(|e| same(e, x)))
        };
        match self {
            Self::HasValue(v) => same(actual, v),
            Self::Includes(v) => contains(v),
            Self::Excludes(v) => actual.is_array() && !contains(v),
            Self::IncludesAll(vs) => actual.is_array() && vs.iter().all(contains),
            Self::IncludesAny(vs) => vs.iter().any(contains),
            Self::ExcludesAll(vs) => actual.is_array() && !vs.iter().any(contains),
        }
    }
}

/// JSON equality where numbers compare by value (1 == 1.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// A claim validator.
#[derive(Debug, Clone, PartialEq)]
pub struct Validator {
    /// Names the validator in failures.
    pub id: String,
    /// The claim checked.
    pub claim_key: String,
    /// The check.
    pub check: Check,
    /// Values set longer ago than this fail as expired.
    pub max_age_ms: Option<u64>,
    /// Fetch the value again when it is missing or stale.
    pub refetch: bool,
}

/// A failed validator.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidClaim {
    /// Validator id.
    pub id: String,
    /// Claim key.
    pub claim_key: String,
    /// [`MISSING`], [`EXPIRED`] or [`WRONG`].
    pub message: &'static str,
    /// The expected value.
    pub expected: Option<Value>,
    /// The value found.
    pub actual: Option<Value>,
    /// Age of the value, ms (for expired values).
    pub age_ms: Option<u64>,
    /// The validator's max age, ms (for expired values).
    pub max_age_ms: Option<u64>,
    /// The failure in SuperTokens' shape.
    pub reason: Map<String, Value>,
}

/// The value of claim `key` in `payload` and when it was set (ms).
pub fn read(payload: &Map<String, Value>, key: &str) -> Option<(Value, Option<u64>)> {
    let entry = payload.get(key)?.as_object()?;
    let value = entry.get("v")?.clone();
    Some((value, entry.get("t").and_then(Value::as_u64)))
}

/// The stored form of a claim value set at `now_ms`.
pub fn entry(value: Value, now_ms: u64) -> Value {
    json!({ "v": value, "t": now_ms })
}

impl Validator {
    /// SuperTokens' `shouldRefetch`: the value is missing or older than max age.
    pub fn should_refetch(&self, payload: &Map<String, Value>, now_ms: u64) -> bool {
        match read(payload, &self.claim_key) {
            None => true,
            Some((_, t)) => self.max_age_ms.is_some_and(|max| is_stale(t, max, now_ms)),
        }
    }

    /// Checks the payload; `None` when the claim is valid.
    pub fn validate(&self, payload: &Map<String, Value>, now_ms: u64) -> Option<InvalidClaim> {
        let (name, expected) = self.check.expectation();
        let fail =
            |message, actual: Option<Value>, age_ms, reason: Map<String, Value>| InvalidClaim {
                id: self.id.clone(),
                claim_key: self.claim_key.clone(),
                message,
                expected: Some(expected.clone()),
                actual,
                age_ms,
                max_age_ms: if age_ms.is_some() {
                    self.max_age_ms
                } else {
                    None
                },
                reason,
            };
        let Some((actual, t)) = read(payload, &self.claim_key) else {
            let reason = object(json!({ "message": MISSING, name: expected }));
            return Some(fail(MISSING, None, None, reason));
        };
        if let Some(max) = self.max_age_ms
            && is_stale(t, max, now_ms)
        {
            let age = t.map_or(u64::MAX, |t| now_ms.saturating_sub(t));
            let reason = object(json!({
                "message": EXPIRED,
                "ageInSeconds": age / 1000,
                "maxAgeInSeconds": max / 1000,
            }));
            return Some(fail(EXPIRED, Some(actual), Some(age), reason));
        }
        if self.check.holds(&actual) {
            return None;
        }
        let reason = object(json!({ "message": WRONG, name: expected, "actualValue": actual }));
        Some(fail(WRONG, Some(actual), None, reason))
    }
}

fn is_stale(set_at: Option<u64>, max_age_ms: u64, now_ms: u64) -> bool {
    set_at.is_none_or(|t| now_ms.saturating_sub(t) > max_age_ms)
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Every failure of `validators` on `payload`.
pub fn validate_all(
    validators: &[Validator],
    payload: &Map<String, Value>,
    now_ms: u64,
) -> Vec<InvalidClaim> {
    validators
        .iter()
        .filter_map(|v| v.validate(payload, now_ms))
        .collect()
}

/// Checks a claim key: non-empty, bounded, not a reserved access token claim.
pub fn check_key(field: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(InputError::invalid(field, "must not be empty"));
    }
    if key.len() > MAX_CLAIM_KEY {
        return Err(InputError::invalid(
            field,
            format!("must be at most {MAX_CLAIM_KEY} bytes"),
        ));
    }
    if is_reserved(key) {
        return Err(InputError::ProtectedClaim {
            field: field.to_owned(),
            claim: key.to_owned(),
        });
    }
    Ok(())
}

/// Whether `value` has the shape a well-known claim `key` requires (any
/// value fits another key).
pub fn fits(key: &str, value: &Value) -> bool {
    match key {
        EMAIL_VERIFIED => value.is_boolean(),
        ROLES | PERMISSIONS => value
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
        _ => true,
    }
}

/// Checks the shape of values of the well-known claims.
pub fn check_value(field: &str, key: &str, value: &Value) -> Result<()> {
    if fits(key, value) {
        Ok(())
    } else {
        let shape = if key == EMAIL_VERIFIED {
            "a boolean"
        } else {
            "an array of strings"
        };
        Err(InputError::invalid(field, format!("`{key}` holds {shape}")))
    }
}

/// A checked claim key (see [`check_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimKey(String);

impl ClaimKey {
    /// Checks `key`; errors name `field`.
    pub fn parse(field: &str, key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        check_key(field, &key)?;
        Ok(Self(key))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A claim value of the shape its key requires (see [`check_value`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimValue {
    key: ClaimKey,
    value: Value,
}

impl ClaimValue {
    /// Checks `value` against `key`; errors name `field`.
    pub fn parse(field: &str, key: ClaimKey, value: Value) -> Result<Self> {
        check_value(field, key.as_str(), &value)?;
        Ok(Self { key, value })
    }

    /// The claim key.
    pub fn key(&self) -> &ClaimKey {
        &self.key
    }

    /// The key and the value.
    pub fn into_parts(self) -> (ClaimKey, Value) {
        (self.key, self.value)
    }
}

/// The validators of one call: at most [`MAX_VALIDATORS`], each with a
/// valid claim key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validators(Vec<Validator>);

impl Validators {
    /// Checks `validators`; errors name `field` (and `field[i].claim_key`).
    pub fn check(field: &str, validators: Vec<Validator>) -> Result<Self> {
        if validators.len() > MAX_VALIDATORS {
            return Err(InputError::invalid(
                field,
                format!("at most {MAX_VALIDATORS} validators per call"),
            ));
        }
        for (i, v) in validators.iter().enumerate() {
            check_key(&format!("{field}[{i}].claim_key"), &v.claim_key)?;
        }
        Ok(Self(validators))
    }
}

impl std::ops::Deref for Validators {
    type Target = [Validator];
    fn deref(&self) -> &[Validator] {
        &self.0
    }
}

/// A request to an application's ClaimProvider.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The session's user.
    pub user_id: String,
    /// The session's tenant.
    pub tenant_id: String,
    /// The claim wanted.
    pub claim_key: String,
    /// The session's current payload.
    pub payload: Map<String, Value>,
    /// The session.
    pub session_handle: String,
}

/// Where claim values come from (the application's ClaimProvider).
pub trait ClaimSource: Send + Sync + 'static {
    /// The claim's value, `None` when the user has none.
    fn fetch(&self, request: FetchRequest) -> BoxFuture<Result<Option<Value>, ClaimError>>;
}

/// A source with no providers configured.
#[derive(Debug, Default)]
pub struct NoClaimSource;

impl ClaimSource for NoClaimSource {
    fn fetch(&self, request: FetchRequest) -> BoxFuture<Result<Option<Value>, ClaimError>> {
        Box::pin(async move {
            Err(ClaimError::NoProvider {
                claim_key: request.claim_key,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn payload(v: Value) -> Map<String, Value> {
        object(v)
    }

    fn validator(key: &str, check: Check, max_age_ms: Option<u64>) -> Validator {
        Validator {
            id: key.to_owned(),
            claim_key: key.to_owned(),
            check,
            max_age_ms,
            refetch: false,
        }
    }

    #[test]
    fn has_value_passes_fails_and_reports_like_supertokens() {
        let p = payload(json!({"st-ev": {"v": true, "t": NOW - 5000}}));
        let v = validator("st-ev", Check::HasValue(json!(true)), None);
        assert_eq!(v.validate(&p, NOW), None);
        let wrong = validator("st-ev", Check::HasValue(json!(false)), None)
            .validate(&p, NOW)
            .unwrap();
        assert_eq!(wrong.message, WRONG);
        assert_eq!(
            Value::Object(wrong.reason),
            json!({"message": "wrong value", "expectedValue": false, "actualValue": true})
        );
        let missing = validator("other", Check::HasValue(json!(1)), None)
            .validate(&p, NOW)
            .unwrap();
        assert_eq!(
            Value::Object(missing.reason),
            json!({"message": "value does not exist", "expectedValue": 1})
        );
    }

    #[test]
    fn max_age_expires_values_and_asks_for_a_refetch() {
        let p = payload(json!({"k": {"v": 1, "t": NOW - 61_000}}));
        let v = validator("k", Check::HasValue(json!(1)), Some(60_000));
        let failed = v.validate(&p, NOW).unwrap();
        assert_eq!(failed.message, EXPIRED);
        assert_eq!(failed.age_ms, Some(61_000));
        assert_eq!(failed.reason["ageInSeconds"], 61);
        assert_eq!(failed.reason["maxAgeInSeconds"], 60);
        assert!(v.should_refetch(&p, NOW));
        let fresh = validator("k", Check::HasValue(json!(1)), Some(120_000));
        assert_eq!(fresh.validate(&p, NOW), None);
        assert!(!fresh.should_refetch(&p, NOW));
        assert!(
            fresh.should_refetch(&Map::new(), NOW),
            "missing values are refetched"
        );
    }

    #[test]
    fn array_checks() {
        let p = payload(
            json!({"st-role": {"v": ["admin", "user"], "t": NOW}, "n": {"v": 3, "t": NOW}}),
        );
        let ok = |check| {
            validator("st-role", check, None)
                .validate(&p, NOW)
                .is_none()
        };
        assert!(ok(Check::Includes(json!("admin"))));
        assert!(!ok(Check::Includes(json!("root"))));
        assert!(ok(Check::Excludes(json!("root"))));
        assert!(!ok(Check::Excludes(json!("user"))));
        assert!(ok(Check::IncludesAll(vec![json!("admin"), json!("user")])));
        assert!(!ok(Check::IncludesAll(vec![json!("admin"), json!("root")])));
        assert!(ok(Check::IncludesAny(vec![json!("root"), json!("user")])));
        assert!(!ok(Check::IncludesAny(vec![json!("root")])));
        assert!(ok(Check::ExcludesAll(vec![json!("root"), json!("guest")])));
        assert!(!ok(Check::ExcludesAll(vec![json!("root"), json!("admin")])));
        // A scalar is not an array: array checks fail on it.
        let scalar = validator("n", Check::Excludes(json!(1)), None)
            .validate(&p, NOW)
            .unwrap();
        assert_eq!(scalar.message, WRONG);
        assert_eq!(scalar.reason["expectedToNotInclude"], 1);
    }

    #[test]
    fn numbers_compare_by_value() {
        let p = payload(json!({"n": {"v": 2, "t": NOW}}));
        assert!(
            validator("n", Check::HasValue(json!(2.0)), None)
                .validate(&p, NOW)
                .is_none()
        );
    }

    #[test]
    fn well_known_claims_have_shapes() {
        check_value("v", EMAIL_VERIFIED, &json!(true)).unwrap();
        assert!(check_value("v", EMAIL_VERIFIED, &json!("yes")).is_err());
        check_value("v", ROLES, &json!(["a"])).unwrap();
        assert!(check_value("v", PERMISSIONS, &json!([1])).is_err());
        check_value("v", "custom", &json!({"any": 1})).unwrap();
        assert!(check_key("k", "").is_err());
        assert!(matches!(
            check_key("k", "exp"),
            Err(InputError::ProtectedClaim { .. })
        ));
    }
}
