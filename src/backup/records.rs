//! The JSON form of the records a backup holds: this module's own types,
//! converted to and from the store model, so that a change to the model
//! never changes what a backup file says. Each is the JSON that backups of
//! every format version have held (hashes as lowercase hex, key material
//! base64). It must never hold anything but the records' own fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::secret::sealed;
use crate::store::{Device, Generation, KeyRecord, SessionRecord, Timeouts, TokenHash, UserData};

/// A session entry's value.
#[derive(Serialize, Deserialize)]
pub(super) struct SessionJson {
    handle: String,
    user_id: String,
    tenant_id: String,
    access_payload: Map<String, Value>,
    data: Map<String, Value>,
    created_at_ms: u64,
    expires_at_ms: u64,
    current: GenerationJson,
    previous: Option<GenerationJson>,
    rotated_at_ms: u64,
    /// Absent in backups of earlier versions: the last rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_active_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    idle_timeout_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    max_lifetime_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device: Option<DeviceJson>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
struct DeviceJson {
    #[serde(default)]
    ip_address: String,
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    label: String,
}

#[derive(Serialize, Deserialize)]
struct GenerationJson {
    refresh_hash: String,
    anti_csrf_hash: Option<String>,
}

impl From<&Generation> for GenerationJson {
    fn from(g: &Generation) -> Self {
        Self {
            refresh_hash: g.refresh_hash.to_hex(),
            anti_csrf_hash: g.anti_csrf_hash.as_ref().map(TokenHash::to_hex),
        }
    }
}

fn hash(text: &str) -> Result<TokenHash, String> {
    TokenHash::from_hex(text).ok_or_else(|| "a hash is not a SHA-256".to_owned())
}

impl TryFrom<GenerationJson> for Generation {
    type Error = String;
    fn try_from(g: GenerationJson) -> Result<Self, String> {
        Ok(Self {
            refresh_hash: hash(&g.refresh_hash)?,
            anti_csrf_hash: g.anti_csrf_hash.as_deref().map(hash).transpose()?,
        })
    }
}

impl From<&SessionRecord> for SessionJson {
    fn from(r: &SessionRecord) -> Self {
        Self {
            handle: r.handle.clone(),
            user_id: r.user_id.clone(),
            tenant_id: r.tenant_id.clone(),
            access_payload: r.access_payload.clone(),
            data: r.data.clone(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            current: (&r.current).into(),
            previous: r.previous.as_ref().map(GenerationJson::from),
            rotated_at_ms: r.rotated_at_ms,
            last_active_ms: Some(r.last_active_ms),
            idle_timeout_ms: r.timeouts.idle_ms,
            max_lifetime_ms: r.timeouts.max_lifetime_ms,
            device: (r.device != Device::default()).then(|| DeviceJson {
                ip_address: r.device.ip_address.clone(),
                user_agent: r.device.user_agent.clone(),
                label: r.device.label.clone(),
            }),
        }
    }
}

impl TryFrom<SessionJson> for SessionRecord {
    type Error = String;
    fn try_from(r: SessionJson) -> Result<Self, String> {
        Ok(Self {
            handle: r.handle,
            user_id: r.user_id,
            tenant_id: r.tenant_id,
            access_payload: r.access_payload,
            data: r.data,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            current: r.current.try_into()?,
            previous: r.previous.map(Generation::try_from).transpose()?,
            rotated_at_ms: r.rotated_at_ms,
            last_active_ms: r.last_active_ms.unwrap_or(r.rotated_at_ms),
            timeouts: Timeouts {
                idle_ms: r.idle_timeout_ms,
                max_lifetime_ms: r.max_lifetime_ms,
            },
            device: r
                .device
                .map(|d| Device {
                    ip_address: d.ip_address,
                    user_agent: d.user_agent,
                    label: d.label,
                })
                .unwrap_or_default(),
        })
    }
}

/// The `data` of a bucket entry: a user's buckets.
#[derive(Serialize, Deserialize)]
pub(super) struct BucketsJson {
    #[serde(default)]
    public: Map<String, Value>,
    #[serde(default)]
    private: Map<String, Value>,
    #[serde(default)]
    user_identifier: Option<String>,
}

impl From<&UserData> for BucketsJson {
    fn from(d: &UserData) -> Self {
        Self {
            public: d.public.clone(),
            private: d.private.clone(),
            user_identifier: d.user_identifier.clone(),
        }
    }
}

impl From<BucketsJson> for UserData {
    fn from(d: BucketsJson) -> Self {
        Self {
            public: d.public,
            private: d.private,
            user_identifier: d.user_identifier,
        }
    }
}

/// A key entry's value: the private key base64, empty when sealed.
#[derive(Serialize, Deserialize)]
pub(super) struct KeyJson {
    kid: String,
    alg: String,
    #[serde(with = "b64", default)]
    private_pkcs8: Vec<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<SealedJson>,
    created_at_ms: u64,
    signs_from_ms: u64,
    max_token_lifetime_ms: u64,
    max_jwt_exp_ms: u64,
    is_static: bool,
}

#[derive(Serialize, Deserialize)]
struct SealedJson {
    #[serde(with = "b64")]
    nonce: Vec<u8>,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}

impl From<&KeyRecord> for KeyJson {
    fn from(k: &KeyRecord) -> Self {
        // A sealed key keeps its nonce and ciphertext in fields of their
        // own, as earlier releases wrote it.
        let (private_pkcs8, sealed) = sealed::apart(&k.private_key);
        Self {
            kid: k.kid.clone(),
            alg: k.alg.clone(),
            private_pkcs8,
            sealed: sealed.map(|(nonce, ciphertext)| SealedJson { nonce, ciphertext }),
            created_at_ms: k.created_at_ms,
            signs_from_ms: k.signs_from_ms,
            max_token_lifetime_ms: k.max_token_lifetime_ms,
            max_jwt_exp_ms: k.max_jwt_exp_ms,
            is_static: k.is_static,
        }
    }
}

impl From<KeyJson> for KeyRecord {
    fn from(k: KeyJson) -> Self {
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
