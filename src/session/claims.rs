//! The claim RPCs of the session recipe: set, get, remove, fetch-and-set,
//! and validation against stored or handed-in payloads.

use serde_json::{Map, Value};

use super::{SessionInfo, SessionManager};
use crate::claims::{self, FetchRequest, InvalidClaim, Validator};
use crate::error::{Error, Result};
use crate::input as payload;

/// Who a claim is fetched for.
pub(super) struct Subject<'a> {
    pub user_id: &'a str,
    pub tenant_id: &'a str,
    pub session_handle: &'a str,
}

impl<'a> Subject<'a> {
    /// The session a stored record belongs to.
    fn of(info: &'a SessionInfo) -> Self {
        Subject {
            user_id: &info.user_id,
            tenant_id: &info.tenant_id,
            session_handle: &info.handle,
        }
    }
}

/// Checks the validators of a request.
pub fn check_validators(field: &str, validators: &[Validator]) -> Result<()> {
    if validators.len() > claims::MAX_VALIDATORS {
        return Err(Error::invalid(
            field,
            format!("at most {} validators per call", claims::MAX_VALIDATORS),
        ));
    }
    for (i, v) in validators.iter().enumerate() {
        claims::check_key(&format!("{field}[{i}].claim_key"), &v.claim_key)?;
    }
    Ok(())
}

impl SessionManager {
    /// Fetches, from the application's providers, every claim that a
    /// validator with `refetch` finds missing or stale in `payload`. Returns
    /// the new entries (`{"v", "t"}`) by claim key; nothing is stored here.
    pub(super) async fn refetch(
        &self,
        validators: &[Validator],
        payload: &Map<String, Value>,
        subject: &Subject<'_>,
        now: u64,
    ) -> Result<Map<String, Value>> {
        let mut updates = Map::new();
        for v in validators {
            if !v.refetch || updates.contains_key(&v.claim_key) || !v.should_refetch(payload, now) {
                continue;
            }
            if let Some(value) = self.fetch_claim(&v.claim_key, payload, subject).await? {
                updates.insert(v.claim_key.clone(), claims::entry(value, now));
            }
        }
        Ok(updates)
    }

    async fn fetch_claim(
        &self,
        claim_key: &str,
        payload: &Map<String, Value>,
        subject: &Subject<'_>,
    ) -> Result<Option<Value>> {
        let value = self
            .claims
            .fetch(FetchRequest {
                user_id: subject.user_id.to_owned(),
                tenant_id: subject.tenant_id.to_owned(),
                claim_key: claim_key.to_owned(),
                payload: payload.clone(),
                session_handle: subject.session_handle.to_owned(),
            })
            .await?;
        if let Some(v) = &value
            && claims::check_value("value", claim_key, v).is_err()
        {
            return Err(Error::Claim(claims::ClaimError::ProviderUnavailable {
                claim_key: claim_key.to_owned(),
                detail: "the provider returned a value of the wrong shape".into(),
            }));
        }
        Ok(value)
    }

    /// Stores claim entries into a session's payload.
    pub(super) async fn store_claims(
        &self,
        handle: &str,
        updates: &Map<String, Value>,
    ) -> Result<()> {
        let max = self.config.payload_limits;
        self.edit(handle, &mut |r| {
            for (k, v) in updates {
                r.access_payload.insert(k.clone(), v.clone());
            }
            Ok(payload::limit_size("value", &r.access_payload, max)?)
        })
        .await
    }

    /// SetClaimValue.
    pub async fn set_claim(&self, handle: &str, claim_key: &str, value: Value) -> Result<()> {
        claims::check_key("claim_key", claim_key)?;
        claims::check_value("value", claim_key, &value)?;
        let updates = Map::from_iter([(claim_key.to_owned(), claims::entry(value, self.now()))]);
        self.store_claims(handle, &updates).await
    }

    /// GetClaimValue: the value and when it was set (ms); `None` when the
    /// session has no such claim.
    pub fn get_claim(&self, handle: &str, claim_key: &str) -> Result<Option<(Value, Option<u64>)>> {
        claims::check_key("claim_key", claim_key)?;
        let info = self.info(handle)?;
        Ok(claims::read(&info.access_payload, claim_key))
    }

    /// RemoveClaim: true when the claim was there.
    pub async fn remove_claim(&self, handle: &str, claim_key: &str) -> Result<bool> {
        claims::check_key("claim_key", claim_key)?;
        let mut removed = false;
        self.edit(handle, &mut |r| {
            removed = r.access_payload.remove(claim_key).is_some();
            Ok(())
        })
        .await?;
        Ok(removed)
    }

    /// FetchAndSetClaim: true when the provider had a value (now stored).
    pub async fn fetch_and_set_claim(&self, handle: &str, claim_key: &str) -> Result<bool> {
        claims::check_key("claim_key", claim_key)?;
        let info = self.info(handle)?;
        let subject = Subject::of(&info);
        let Some(value) = self
            .fetch_claim(claim_key, &info.access_payload, &subject)
            .await?
        else {
            return Ok(false);
        };
        let updates = Map::from_iter([(claim_key.to_owned(), claims::entry(value, self.now()))]);
        self.store_claims(&info.handle, &updates).await?;
        Ok(true)
    }

    /// ValidateClaims: validators against the stored payload, refetching
    /// where asked. Returns the failures and the stored update, if any.
    pub async fn validate_claims(
        &self,
        handle: &str,
        validators: &[Validator],
    ) -> Result<(Vec<InvalidClaim>, Option<Map<String, Value>>)> {
        check_validators("claim_validators", validators)?;
        let mut info = self.info(handle)?;
        let now = self.now();
        let subject = Subject::of(&info);
        let updates = self
            .refetch(validators, &info.access_payload, &subject, now)
            .await?;
        if !updates.is_empty() {
            self.store_claims(&info.handle, &updates).await?;
            info.access_payload.extend(updates.clone());
        }
        let failed = claims::validate_all(validators, &info.access_payload, now);
        Ok((failed, (!updates.is_empty()).then_some(updates)))
    }

    /// ValidateClaimsInJwtPayload: validators against a caller's payload.
    pub fn validate_claims_in_payload(
        &self,
        user_id: &str,
        jwt_payload: &Map<String, Value>,
        validators: &[Validator],
    ) -> Result<Vec<InvalidClaim>> {
        payload::user_id("user_id", user_id)?;
        check_validators("claim_validators", validators)?;
        Ok(claims::validate_all(validators, jwt_payload, self.now()))
    }
}
