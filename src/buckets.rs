//! Per-user data buckets (OpenAuthster's session data): a `public` JSON
//! object the user's own browser may read and write, and a `private` one
//! only servers may touch, per user and tenant.
//!
//! Updates are RFC 7386 JSON Merge Patches applied atomically in the store,
//! so concurrent updates never lose a change; an update that would take a
//! bucket over the size cap is refused and leaves it as it was. Who may read
//! or write which bucket is decided at the edge (`api::user_session`); this
//! module only applies the rules to the data. It is the only domain module
//! that changes a user's [`UserData`] record (sessions set the user
//! identifier through [`set_identifier`]; a backup restore writes records
//! back whole). It takes checked ids and never names a request's fields.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{Error, Oversized, Result};
use crate::input::{self as payload, InputError, TenantId, UserId};
use crate::store::{Store, UserData};

/// Longest accepted user identifier, in bytes.
pub const MAX_IDENTIFIER: usize = 512;

/// Which bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// Readable and writable by the user's browser.
    Public,
    /// Server only.
    Private,
}

/// A user's buckets as a caller sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct UserBuckets {
    /// The user.
    pub user_id: String,
    /// The public bucket.
    pub public: Map<String, Value>,
    /// The private bucket, only for callers allowed to read it.
    pub private: Option<Map<String, Value>>,
    /// The user's identifier ("" when none was set).
    pub user_identifier: String,
}

/// Applies an RFC 7386 JSON Merge Patch to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above")
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A checked user identifier: bounded, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentifier(String);

impl UserIdentifier {
    /// Checks `identifier`; errors name `field`.
    pub fn parse(field: &str, identifier: String) -> Result<Self, InputError> {
        if identifier.len() > MAX_IDENTIFIER {
            return Err(InputError::invalid(
                field,
                format!("must be at most {MAX_IDENTIFIER} bytes"),
            ));
        }
        if identifier.chars().any(char::is_control) {
            return Err(InputError::invalid(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(identifier))
    }

    /// The identifier.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Records `identifier` as the user's, unless it already is; the caller
/// makes the write durable.
pub async fn set_identifier(
    store: &dyn Store,
    tenant: &TenantId,
    user: &UserId,
    identifier: &UserIdentifier,
) -> Result<()> {
    store
        .update_user_data(tenant.as_str(), user.as_str(), &mut |d| {
            (d.user_identifier.as_deref() != Some(identifier.as_str())).then(|| UserData {
                user_identifier: Some(identifier.0.clone()),
                ..d.clone()
            })
        })
        .await?;
    Ok(())
}

/// The bucket rules over a store.
pub struct Buckets {
    store: Arc<dyn Store>,
    limits: payload::JsonLimits,
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn view(user_id: &UserId, data: UserData, with_private: bool) -> UserBuckets {
    UserBuckets {
        user_id: user_id.as_str().to_owned(),
        public: data.public,
        private: with_private.then_some(data.private),
        user_identifier: data.user_identifier.unwrap_or_default(),
    }
}

impl Buckets {
    /// Buckets capped at `limits` each.
    pub fn new(store: Arc<dyn Store>, limits: payload::JsonLimits) -> Self {
        Self { store, limits }
    }

    /// GetUserSession.
    pub async fn get(
        &self,
        tenant: &TenantId,
        user_id: &UserId,
        with_private: bool,
    ) -> Result<UserBuckets> {
        let data = self
            .store
            .user_data(tenant.as_str(), user_id.as_str())
            .await?
            .unwrap_or_default();
        Ok(view(user_id, data, with_private))
    }

    /// UpdateUserSession: merges `patch` into the bucket, atomically.
    pub async fn update(
        &self,
        tenant: &TenantId,
        user_id: &UserId,
        bucket: Bucket,
        patch: Map<String, Value>,
        user_identifier: Option<UserIdentifier>,
        with_private: bool,
    ) -> Result<UserBuckets> {
        let patch = Value::Object(patch);
        let max = self.limits;
        let (stored, refused) = self
            .store
            .update_user_data_with(tenant.as_str(), user_id.as_str(), |current| {
                let mut next = current.clone();
                let target = match bucket {
                    Bucket::Public => &mut next.public,
                    Bucket::Private => &mut next.private,
                };
                let mut merged = Value::Object(std::mem::take(target));
                merge_patch(&mut merged, &patch);
                let Value::Object(merged) = merged else {
                    unreachable!("a merge of an object patch is an object")
                };
                let refused = payload::oversize(&merged, max);
                if refused.is_some() {
                    return (None, refused);
                }
                *target = merged;
                if let Some(id) = &user_identifier {
                    next.user_identifier = Some(id.0.clone());
                }
                (Some(next), None)
            })
            .await?;
        if let Some(problem) = refused {
            return Err(Error::TooLarge {
                what: Oversized::MergedBucket,
                problem,
            });
        }
        self.store.durable().await?;
        Ok(view(user_id, stored, with_private))
    }

    /// ClearUserSession: replaces the bucket with `{}`.
    pub async fn clear(
        &self,
        tenant: &TenantId,
        user_id: &UserId,
        bucket: Bucket,
        with_private: bool,
    ) -> Result<UserBuckets> {
        let stored = self
            .store
            .update_user_data(tenant.as_str(), user_id.as_str(), &mut |current| {
                let mut next = current.clone();
                match bucket {
                    Bucket::Public => next.public.clear(),
                    Bucket::Private => next.private.clear(),
                }
                Some(next)
            })
            .await?;
        self.store.durable().await?;
        Ok(view(user_id, stored, with_private))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i16>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The patch with every null member removed, recursively (what a patch
    /// applied to `{}` yields).
    fn without_nulls(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), without_nulls(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    proptest! {
        #[test]
        fn merge_patch_properties(target in json_value(), patch in json_value()) {
            let mut once = target.clone();
            merge_patch(&mut once, &patch);
            // Applying a patch twice changes nothing more.
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(&twice, &once);
            match &patch {
                Value::Object(p) => {
                    let merged = once.as_object().expect("an object patch gives an object");
                    for (k, v) in p {
                        if v.is_null() {
                            prop_assert!(!merged.contains_key(k), "null deletes {}", k);
                        } else {
                            // Members the patch sets end up as the patch applied to {} (for
                            // objects) or exactly as given.
                            let mut fresh = Value::Null;
                            merge_patch(&mut fresh, v);
                            if !target.get(k).is_some_and(Value::is_object) || !v.is_object() {
                                prop_assert_eq!(&merged[k], &fresh);
                            }
                        }
                    }
                    // Members the patch does not name are untouched.
                    if let Value::Object(t) = &target {
                        for (k, v) in t {
                            if !p.contains_key(k) {
                                prop_assert_eq!(&merged[k], v);
                            }
                        }
                    }
                    let mut from_empty = json!({});
                    merge_patch(&mut from_empty, &patch);
                    prop_assert_eq!(from_empty, without_nulls(&patch));
                }
                other => prop_assert_eq!(&once, other, "a non-object patch replaces the target"),
            }
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, section 3.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, expected, "{target} + {patch}");
        }
    }
}
