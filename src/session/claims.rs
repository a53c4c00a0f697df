//! The claim RPCs of the session recipe: set, get, remove, fetch-and-set,
//! and validation against stored or handed-in payloads. They take checked
//! claim keys, values and validators, and never name a request's fields.

use serde_json::{Map, Value};

use super::{SessionInfo, SessionManager};
use crate::claims::{
    self, ClaimKey, ClaimValue, FetchRequest, InvalidClaim, Validator, Validators,
};
use crate::error::{Error, Oversized, Result};
use crate::ids::SessionHandle;
use crate::input::{self as payload, UserId};

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
            && !claims::fits(claim_key, v)
        {
            return Err(Error::Claim(claims::ClaimError::ProviderUnavailable {
                claim_key: claim_key.to_owned(),
                detail: "the provider returned a value of the wrong shape".into(),
            }));
        }
        Ok(value)
    }

    /// Stores claim entries into a session's payload (by its stored
    /// handle); a payload over the size limit is refused and nothing changes.
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
            match payload::oversize(&r.access_payload, max) {
                Some(problem) => Err(Error::TooLarge {
                    what: Oversized::PayloadWithClaims,
                    problem,
                }),
                None => Ok(()),
            }
        })
        .await
    }

    /// SetClaimValue.
    pub async fn set_claim(&self, handle: SessionHandle, claim: ClaimValue) -> Result<()> {
        let (key, value) = claim.into_parts();
        let updates = Map::from_iter([(key.as_str().to_owned(), claims::entry(value, self.now()))]);
        self.store_claims(&handle.to_string(), &updates).await
    }

    /// GetClaimValue: the value and when it was set (ms); `None` when the
    /// session has no such claim.
    pub async fn get_claim(
        &self,
        handle: SessionHandle,
        claim_key: &ClaimKey,
    ) -> Result<Option<(Value, Option<u64>)>> {
        let info = self.info(handle).await?;
        Ok(claims::read(&info.access_payload, claim_key.as_str()))
    }

    /// RemoveClaim: true when the claim was there.
    pub async fn remove_claim(&self, handle: SessionHandle, claim_key: &ClaimKey) -> Result<bool> {
        let mut removed = false;
        self.edit(&handle.to_string(), &mut |r| {
            removed = r.access_payload.remove(claim_key.as_str()).is_some();
            Ok(())
        })
        .await?;
        Ok(removed)
    }

    /// FetchAndSetClaim: true when the provider had a value (now stored).
    pub async fn fetch_and_set_claim(
        &self,
        handle: SessionHandle,
        claim_key: &ClaimKey,
    ) -> Result<bool> {
        let claim_key = claim_key.as_str();
        let info = self.info(handle).await?;
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
        handle: SessionHandle,
        validators: &Validators,
    ) -> Result<(Vec<InvalidClaim>, Option<Map<String, Value>>)> {
        let mut info = self.info(handle).await?;
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
        _user_id: &UserId,
        jwt_payload: &Map<String, Value>,
        validators: &Validators,
    ) -> Result<Vec<InvalidClaim>> {
        Ok(claims::validate_all(validators, jwt_payload, self.now()))
    }
}
