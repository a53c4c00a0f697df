//! The JSON that sled's `keys` and `user_data` trees hold (record version
//! 1): this backend's own types, converted to and from the store model, so
//! that a change to the model never changes what an existing data
//! directory means. Session records have theirs in `record.rs`.
//!
//! Field names, base64 and defaults are exactly those the trees were
//! written with; they must never change without a new record version.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::secret::sealed;
use crate::store::{KeyRecord, UserData};

/// A user's buckets as stored.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredUserData {
    #[serde(default)]
    public: Map<String, Value>,
    #[serde(default)]
    private: Map<String, Value>,
    #[serde(default)]
    user_identifier: Option<String>,
}

impl From<&UserData> for StoredUserData {
    fn from(d: &UserData) -> Self {
        Self {
            public: d.public.clone(),
            private: d.private.clone(),
            user_identifier: d.user_identifier.clone(),
        }
    }
}

impl From<StoredUserData> for UserData {
    fn from(d: StoredUserData) -> Self {
        Self {
            public: d.public,
            private: d.private,
            user_identifier: d.user_identifier,
        }
    }
}

/// A signing key as stored: the private key base64, empty when sealed.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredKey {
    kid: String,
    alg: String,
    #[serde(with = "b64", default)]
    private_pkcs8: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<StoredSealed>,
    created_at_ms: u64,
    signs_from_ms: u64,
    max_token_lifetime_ms: u64,
    max_jwt_exp_ms: u64,
    is_static: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredSealed {
    #[serde(with = "b64")]
    nonce: Vec<u8>,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

impl From<&KeyRecord> for StoredKey {
    fn from(k: &KeyRecord) -> Self {
        // A sealed key keeps its nonce and ciphertext in fields of their
        // own, as earlier releases wrote it.
        let (private_pkcs8, sealed) = sealed::apart(&k.private_key);
        Self {
            kid: k.kid.clone(),
            alg: k.alg.clone(),
            private_pkcs8,
            sealed: sealed.map(|(nonce, ciphertext)| StoredSealed { nonce, ciphertext }),
            created_at_ms: k.created_at_ms,
            signs_from_ms: k.signs_from_ms,
            max_token_lifetime_ms: k.max_token_lifetime_ms,
            max_jwt_exp_ms: k.max_jwt_exp_ms,
            is_static: k.is_static,
        }
    }
}

impl From<StoredKey> for KeyRecord {
    fn from(k: StoredKey) -> Self {
        Self {
            kid: k.kid,
            alg: k.alg,
            private_key: sealed::together(
                k.private_pkcs8,
                k.sealed.map(|s| (s.nonce, s.ciphertext)),
            ),
            created_at_ms: k.created_at_ms,
            signs_from_ms: k.signs_from_ms,
            max_token_lifetime_ms: k.max_token_lifetime_ms,
            max_jwt_exp_ms: k.max_jwt_exp_ms,
            is_static: k.is_static,
        }
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The JSON is byte for byte what the trees were written with before
    /// the store model lost its serde, and it reads back.
    #[test]
    fn keys_and_buckets_keep_their_stored_json() {
        let key = KeyRecord {
            kid: "d-1".into(),
            alg: "EdDSA".into(),
            private_key: sealed::join(&[1; 12], &[3, 4]),
            created_at_ms: 1,
            signs_from_ms: 2,
            max_token_lifetime_ms: 3,
            max_jwt_exp_ms: 4,
            is_static: false,
        };
        let stored = serde_json::to_string(&StoredKey::from(&key)).unwrap();
        assert_eq!(
            stored,
            r#"{"kid":"d-1","alg":"EdDSA","private_pkcs8":"","sealed":{"nonce":"AQEBAQEBAQEBAQEB","ciphertext":"AwQ="},"created_at_ms":1,"signs_from_ms":2,"max_token_lifetime_ms":3,"max_jwt_exp_ms":4,"is_static":false}"#
        );
        let read: StoredKey = serde_json::from_str(&stored).unwrap();
        assert!(KeyRecord::from(read) == key);
        let plain = KeyRecord {
            private_key: vec![5],
            ..key
        };
        let stored = serde_json::to_string(&StoredKey::from(&plain)).unwrap();
        assert!(stored.contains(r#""private_pkcs8":"BQ==""#) && !stored.contains("sealed"));

        let data = UserData {
            public: json!({"a": 1}).as_object().unwrap().clone(),
            private: Map::new(),
            user_identifier: None,
        };
        assert_eq!(
            serde_json::to_string(&StoredUserData::from(&data)).unwrap(),
            r#"{"public":{"a":1},"private":{},"user_identifier":null}"#
        );
        let read: StoredUserData = serde_json::from_str(r#"{"public":{"a":1}}"#).unwrap();
        assert!(UserData::from(read) == data, "absent fields default");
    }
}
