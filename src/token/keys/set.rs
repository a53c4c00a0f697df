//! The keys of the ring at one moment, in rotation order.

use std::collections::HashMap;
use std::sync::Arc;

use super::SigningKey;
use crate::store::KeyRecord;
use crate::token::KeyError;

/// The loaded keys at one moment.
pub(super) struct KeySet {
    /// Rotating keys, oldest `signs_from` first.
    pub(super) rotating: Vec<Arc<SigningKey>>,
    pub(super) static_key: Arc<SigningKey>,
    pub(super) by_kid: HashMap<String, Arc<SigningKey>>,
}

impl KeySet {
    pub(super) fn load(records: Vec<KeyRecord>) -> Result<Option<Self>, KeyError> {
        let keys = records
            .into_iter()
            .map(|r| SigningKey::load(r).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self::new(keys))
    }

    /// `None` without a static key or a rotating one.
    pub(super) fn new(keys: Vec<Arc<SigningKey>>) -> Option<Self> {
        let mut rotating = Vec::new();
        let mut static_key = None;
        for key in keys {
            if key.record.is_static {
                static_key = Some(key);
            } else {
                rotating.push(key);
            }
        }
        rotating.sort_by(|a, b| a.record.rotation_order().cmp(&b.record.rotation_order()));
        let static_key = static_key?;
        if rotating.is_empty() {
            return None;
        }
        let by_kid = rotating
            .iter()
            .chain(std::iter::once(&static_key))
            .map(|k| (k.record.kid.clone(), k.clone()))
            .collect();
        Some(Self {
            rotating,
            static_key,
            by_kid,
        })
    }

    /// The rotating key that signs at `now`.
    pub(super) fn signer(&self, now: u64) -> &Arc<SigningKey> {
        self.rotating
            .iter()
            .rev()
            .find(|k| k.record.signs_from_ms <= now)
            .unwrap_or(&self.rotating[0])
    }

    /// When a key stops verifying; `None` while it may still sign.
    pub(super) fn retires_at(&self, key: &SigningKey) -> Option<u64> {
        if key.record.is_static {
            return None;
        }
        let successor = self
            .rotating
            .iter()
            .find(|k| k.record.signs_from_ms > key.record.signs_from_ms)?;
        let from = successor.record.signs_from_ms;
        Some((from + key.record.max_token_lifetime_ms).max(key.record.max_jwt_exp_ms))
    }

    pub(super) fn is_live(&self, key: &SigningKey, now: u64) -> bool {
        self.retires_at(key).is_none_or(|t| now < t)
    }

    pub(super) fn latest(&self) -> &Arc<SigningKey> {
        self.rotating.last().expect("a key set has a rotating key")
    }
}
