//! GetSession: verifying an access token (through `token::verifier`, which
//! owns the cache of verified tokens), the optional anti-CSRF and store
//! checks, and claim validators with refetching. Never sees protobuf types.

use super::*;

/// Input of [`SessionManager::verify`].
#[derive(Clone, Default)]
pub struct Verify {
    /// Claim validators to check.
    pub validators: Validators,
    /// The access token.
    pub access_token: String,
    /// The anti-CSRF token the client sent.
    pub anti_csrf_token: Option<String>,
    /// Compare the anti-CSRF token.
    pub check_anti_csrf: bool,
    /// Check the store too.
    pub check_database: bool,
}

/// The answer to [`SessionManager::verify`]: the token's verified claims,
/// shared with the cache of verified tokens rather than copied out of it.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The access token's claims.
    pub claims: Arc<AccessClaims>,
    /// The payload with refetched claims merged in, when any were refetched.
    refetched: Option<Map<String, Value>>,
    /// A new access token, when claims were refetched into the payload.
    pub new_access: Option<IssuedToken>,
}

impl Verified {
    /// The user part of the access token payload (with refetched claims).
    pub fn payload(&self) -> &Map<String, Value> {
        self.refetched.as_ref().unwrap_or(&self.claims.payload)
    }
}

impl SessionManager {
    /// GetSession.
    pub async fn verify(&self, req: Verify) -> Result<Verified> {
        let now = self.now();
        let claims = match self.verifier.verify(&req.access_token, now) {
            Ok(claims) => claims,
            Err(TokenError::Expired) if req.check_database => {
                return Err(self.expired(&req.access_token, now).await);
            }
            Err(e) => return Err(unauthorised(e)),
        };
        if req.check_anti_csrf
            && let Some(expected) = &claims.anti_csrf_token
        {
            let given = req.anti_csrf_token.as_deref().unwrap_or("");
            if !ct_eq(given.as_bytes(), expected.as_bytes()) {
                return Err(Error::TryRefreshToken(
                    "the anti-CSRF token does not match".into(),
                ));
            }
        }
        if req.check_database {
            let lineage = self
                .store
                .session_lineage(&claims.session_handle)
                .await?
                .filter(|l| self.ends_at(l) > now)
                .ok_or_else(session_gone)?;
            // The token carries the hash as hex; one that is not a SHA-256
            // is in no lineage.
            let claimed = TokenHash::from_hex(&claims.refresh_token_hash);
            let in_lineage = claimed.is_some_and(|c| {
                lineage.current_refresh_hash == c || lineage.previous_refresh_hash == Some(c)
            });
            if !in_lineage || lineage.user_id != claims.user_id {
                return Err(Error::Unauthorised(
                    "the access token belongs to a refresh token that was rotated out".into(),
                ));
            }
            self.note_activity(&claims.session_handle, &lineage, now)
                .await;
        }
        if req.validators.is_empty() {
            return Ok(Verified {
                claims,
                refetched: None,
                new_access: None,
            });
        }
        self.verify_claims(claims, &req.validators, now).await
    }

    /// Why a database-checked GetSession refuses an expired token: the
    /// session is over (idle, past its lifetime, revoked), so a refresh
    /// would fail too (UNAUTHORISED); or it lives, and a refresh mints a
    /// new token (TRY_REFRESH_TOKEN).
    async fn expired(&self, token: &str, now: u64) -> Error {
        let try_refresh = unauthorised(TokenError::Expired);
        let Ok(claims) = access::signed(self.keys.as_ref(), token) else {
            return try_refresh;
        };
        match self.store.session_lineage(&claims.session_handle).await {
            Ok(Some(l)) if self.ends_at(&l) > now => try_refresh,
            Ok(_) => session_gone(),
            Err(e) => e.into(),
        }
    }

    /// Verifies an access token (through the token verifier's cache).
    pub(super) fn verified(&self, token: &str, now: u64) -> Result<Arc<AccessClaims>> {
        self.verifier.verify(token, now).map_err(unauthorised)
    }

    /// Checks claim validators against a verified token's payload. Stale
    /// claims whose validators ask for it are refetched, stored, and carried
    /// by a new access token (same expiry and lineage).
    async fn verify_claims(
        &self,
        claims: Arc<AccessClaims>,
        validators: &[Validator],
        now: u64,
    ) -> Result<Verified> {
        let subject = claims::Subject {
            user_id: &claims.user_id,
            tenant_id: &claims.tenant_id,
            session_handle: &claims.session_handle,
        };
        let updates = self
            .refetch(validators, &claims.payload, &subject, now)
            .await?;
        let (refetched, new_access) = if updates.is_empty() {
            (None, None)
        } else {
            let key = self.signer().await?;
            self.store_claims(&claims.session_handle, &updates)
                .await
                .map_err(|e| match e {
                    Error::SessionNotFound => session_gone(),
                    other => other,
                })?;
            let mut payload = claims.payload.clone();
            payload.extend(updates);
            let token = self.reissue(&key, &claims, payload.clone(), now)?;
            (Some(payload), Some(token))
        };
        let payload = refetched.as_ref().unwrap_or(&claims.payload);
        let failed = crate::claims::validate_all(validators, payload, now);
        if !failed.is_empty() {
            return Err(Error::InvalidClaims(failed));
        }
        Ok(Verified {
            claims,
            refetched,
            new_access,
        })
    }
}
