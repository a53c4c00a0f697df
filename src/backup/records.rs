//! The JSON form of the records a backup holds: this module's own types,
//! converted to and from the store model, so that a change to the model
//! never changes what a backup file says. A session is the JSON that
//! backups of every format version have held (hashes as lowercase hex).
//! It must never hold anything but the record's own fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::{Generation, SessionRecord, TokenHash};

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
        })
    }
}
