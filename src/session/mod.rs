//! The session recipe: SuperTokens' session rules on top of a
//! [`SessionStore`] and the [`KeyRing`].
//!
//! Owns creation, verification, refresh rotation with theft detection,
//! revocation, session data and payload updates. Rules it keeps:
//! - nothing is acknowledged before it is durable (every write awaits
//!   [`SessionStore::durable`]);
//! - refresh rotation happens inside one store transaction per session, so
//!   concurrent refreshes are serialised and leave one live lineage;
//! - expired sessions are treated as absent at once, whether or not the
//!   sweeper has removed them yet;
//! - it never sees protobuf types (the `api` module converts) and never logs
//!   a token.

mod claims;
#[cfg(test)]
mod proptests;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::claims::{ClaimSource, Validator};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::ids::SessionHandle;
use crate::input as payload;
use crate::metrics::Metrics;
use crate::store::{self, Change, Generation, SessionRecord, SessionStore};
use crate::token::access::{self, AccessClaims};
use crate::token::cache::TokenCache;
use crate::token::kek::{self, Kek};
use crate::token::keys::{KeyRing, SigningKey};
use crate::token::refresh::{self, RefreshTokens};
use crate::token::{KeyError, TokenError, ct_eq, random_bytes, random_token, sha256_hex};

/// Settings of the session rules.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Access token lifetime, ms.
    pub access_lifetime_ms: u64,
    /// Refresh token lifetime, ms (sliding).
    pub refresh_lifetime_ms: u64,
    /// Refresh grace period, ms.
    pub grace_ms: u64,
    /// Size and depth limits of payloads and session data.
    pub payload_limits: payload::JsonLimits,
    /// Most handles per RevokeMultipleSessions call.
    pub max_handles_per_call: usize,
    /// Verified access tokens remembered (0: none).
    pub token_cache_size: usize,
    /// `iss` of access tokens.
    pub issuer: String,
}

/// A session as clients see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    /// Handle.
    pub handle: String,
    /// User.
    pub user_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// User part of the access token payload.
    pub access_payload: Map<String, Value>,
}

/// A token with its lifetime (ms since the epoch).
#[derive(Clone, PartialEq)]
pub struct IssuedToken {
    /// The token.
    pub token: String,
    /// Expiry, ms.
    pub expiry_ms: u64,
    /// Creation, ms.
    pub created_ms: u64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("expiry_ms", &self.expiry_ms)
            .finish_non_exhaustive()
    }
}

/// The answer to create and refresh.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The session.
    pub session: SessionView,
    /// New access token.
    pub access: IssuedToken,
    /// New refresh token.
    pub refresh: IssuedToken,
    /// New anti-CSRF token, when the session uses one.
    pub anti_csrf: Option<String>,
}

/// Input of [`SessionManager::create`].
#[derive(Debug, Clone)]
pub struct NewSession {
    /// User.
    pub user_id: String,
    /// Tenant ("" means the default).
    pub tenant_id: String,
    /// User claims for the access token.
    pub access_payload: Map<String, Value>,
    /// Database-only data.
    pub data: Map<String, Value>,
    /// Mint an anti-CSRF token.
    pub anti_csrf: bool,
    /// The user's identifier for UserSessionService, when given.
    pub user_identifier: Option<String>,
}

/// Input of [`SessionManager::verify`].
#[derive(Clone, Default)]
pub struct Verify {
    /// Claim validators to check.
    pub validators: Vec<Validator>,
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

/// Input of [`SessionManager::refresh`].
#[derive(Clone, Default)]
pub struct Refresh {
    /// The refresh token.
    pub refresh_token: String,
    /// The anti-CSRF token the client sent.
    pub anti_csrf_token: Option<String>,
    /// Skip the anti-CSRF comparison.
    pub disable_anti_csrf: bool,
}

/// A stored session, for admin reads.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Handle.
    pub handle: String,
    /// User.
    pub user_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Database-only data.
    pub data: Map<String, Value>,
    /// Stored access token payload.
    pub access_payload: Map<String, Value>,
    /// Creation, ms.
    pub created_ms: u64,
    /// Refresh expiry, ms.
    pub expires_ms: u64,
}

/// The session rules.
pub struct SessionManager {
    store: Arc<dyn SessionStore>,
    keys: Arc<KeyRing>,
    refresh_tokens: RefreshTokens,
    claims: Arc<dyn ClaimSource>,
    clock: SharedClock,
    config: SessionConfig,
    metrics: Arc<Metrics>,
    token_cache: TokenCache,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The refresh-token MAC secret: made on a new store, and kept sealed by the
/// key-encryption key when there is one (a secret stored in plaintext before
/// the KEK was configured, or sealed under the KEK it replaces, is sealed
/// under it now). A sealed secret without the KEK that sealed it is an
/// error, never replaced: a new secret would make every refresh token issued
/// so far fail.
fn mac_secret(store: &dyn SessionStore, kek: Option<&Kek>) -> Result<Vec<u8>> {
    let name = RefreshTokens::SECRET_NAME;
    let aad = name.as_bytes();
    // Bounded: only a concurrent writer of the same secret can make a
    // replacement miss, and one data directory has one server.
    for _ in 0..3 {
        let stored = store.secret(name, &mut || {
            let fresh = random_bytes::<32>().to_vec();
            match kek {
                Some(kek) => kek.seal_value(aad, &fresh),
                None => fresh,
            }
        })?;
        let sealed = kek::is_sealed_value(&stored);
        let Some(kek) = kek else {
            if sealed {
                return Err(KeyError::Sealed(kek::missing("the refresh-token MAC secret")).into());
            }
            return Ok(stored);
        };
        let (plaintext, was) = if sealed {
            let opened = kek
                .open_value(aad, &stored)
                .ok_or_else(|| KeyError::Sealed(kek.refusal("the refresh-token MAC secret")))?;
            if !opened.stale {
                return Ok(opened.plaintext);
            }
            (opened.plaintext, "under the previous key-encryption key")
        } else {
            (stored.clone(), "in plaintext")
        };
        if store.replace_secret(name, &stored, &kek.seal_value(aad, &plaintext))? {
            tracing::info!(
                was,
                "sealed the refresh-token MAC secret with the key-encryption key"
            );
            return Ok(plaintext);
        }
    }
    Err(store::StoreError::Backend(
        "the refresh-token MAC secret kept changing while it was being sealed".into(),
    )
    .into())
}

fn unauthorised(e: TokenError) -> Error {
    match e {
        TokenError::Expired => Error::TryRefreshToken("the access token has expired".into()),
        other => Error::Unauthorised(format!("{other}")),
    }
}

fn session_gone() -> Error {
    Error::Unauthorised("the session does not exist or has expired".into())
}

impl SessionManager {
    /// Builds the rules over an open store and key ring.
    pub async fn new(
        store: Arc<dyn SessionStore>,
        keys: Arc<KeyRing>,
        claims: Arc<dyn ClaimSource>,
        clock: SharedClock,
        config: SessionConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let secret = mac_secret(store.as_ref(), keys.kek().map(Arc::as_ref))?;
        store.durable().await?;
        Ok(Self {
            store,
            keys,
            refresh_tokens: RefreshTokens::new(&secret),
            claims,
            clock,
            token_cache: TokenCache::new(config.token_cache_size),
            config,
            metrics,
        })
    }

    /// The key ring.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    async fn signer(&self) -> Result<Arc<SigningKey>> {
        self.keys.maintain().await?;
        Ok(self.keys.signer())
    }

    fn live(&self, record: Option<SessionRecord>) -> Option<SessionRecord> {
        let now = self.now();
        record.filter(|r| r.expires_at_ms > now)
    }

    fn issue(&self, key: &SigningKey, claims: &AccessClaims, now: u64) -> Result<IssuedToken> {
        Ok(IssuedToken {
            token: access::mint(key, claims)?,
            expiry_ms: claims.exp * 1000,
            created_ms: now,
        })
    }

    /// A new access token with the same session, expiry and lineage as
    /// `claims`, carrying `payload`.
    fn reissue(
        &self,
        key: &SigningKey,
        claims: &AccessClaims,
        payload: Map<String, Value>,
        now: u64,
    ) -> Result<IssuedToken> {
        let next = AccessClaims {
            iat: now / 1000,
            iss: Some(self.config.issuer.clone()),
            payload,
            ..claims.clone()
        };
        self.issue(key, &next, now)
    }

    fn tokens(
        &self,
        key: &SigningKey,
        record: &SessionRecord,
        refresh: String,
        anti_csrf: Option<String>,
        now: u64,
    ) -> Result<Tokens> {
        let claims = AccessClaims {
            user_id: record.user_id.clone(),
            tenant_id: record.tenant_id.clone(),
            session_handle: record.handle.clone(),
            refresh_token_hash: record.current.refresh_hash.clone(),
            anti_csrf_token: anti_csrf.clone(),
            iat: now / 1000,
            exp: (now + self.config.access_lifetime_ms) / 1000,
            iss: Some(self.config.issuer.clone()),
            payload: record.access_payload.clone(),
        };
        let access = self.issue(key, &claims, now)?;
        Ok(Tokens {
            session: view(record),
            access,
            refresh: IssuedToken {
                token: refresh,
                expiry_ms: record.expires_at_ms,
                created_ms: now,
            },
            anti_csrf,
        })
    }

    fn check_payload(&self, field: &str, payload: &Map<String, Value>) -> Result<()> {
        payload::refuse_reserved(field, payload)?;
        Ok(payload::limit_size(
            field,
            payload,
            self.config.payload_limits,
        )?)
    }

    /// CreateNewSession.
    pub async fn create(&self, new: NewSession) -> Result<Tokens> {
        payload::user_id("user_id", &new.user_id)?;
        let tenant_id = payload::tenant_id("tenant_id", &new.tenant_id)?;
        self.check_payload("access_token_payload", &new.access_payload)?;
        payload::limit_size(
            "session_data_in_database",
            &new.data,
            self.config.payload_limits,
        )?;
        if let Some(id) = &new.user_identifier {
            crate::buckets::check_identifier("user_identifier", id)?;
        }

        let key = self.signer().await?;
        let now = self.now();
        let handle = SessionHandle::random();
        let refresh = self.refresh_tokens.mint(&handle);
        let anti_csrf = new.anti_csrf.then(random_token);
        let record = SessionRecord {
            handle: handle.to_string(),
            user_id: new.user_id,
            tenant_id,
            access_payload: new.access_payload,
            data: new.data,
            created_at_ms: now,
            expires_at_ms: now + self.config.refresh_lifetime_ms,
            current: Generation {
                refresh_hash: refresh::hash(&refresh),
                anti_csrf_hash: anti_csrf.as_deref().map(|t| sha256_hex(t.as_bytes())),
            },
            previous: None,
            rotated_at_ms: now,
        };
        self.store.create_session(&record)?;
        if let Some(id) = &new.user_identifier {
            self.store
                .update_user_data(&record.tenant_id, &record.user_id, &mut |d| {
                    (d.user_identifier.as_ref() != Some(id)).then(|| crate::store::UserData {
                        user_identifier: Some(id.clone()),
                        ..d.clone()
                    })
                })?;
        }
        let tokens = self.tokens(&key, &record, refresh, anti_csrf, now)?;
        self.store.durable().await?;
        Ok(tokens)
    }

    /// GetSession.
    pub async fn verify(&self, req: Verify) -> Result<Verified> {
        claims::check_validators("claim_validators", &req.validators)?;
        let now = self.now();
        let claims = self.verified(&req.access_token, now)?;
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
                .session_lineage(&claims.session_handle)?
                .filter(|l| l.expires_at_ms > now)
                .ok_or_else(session_gone)?;
            let in_lineage = lineage.current_refresh_hash == claims.refresh_token_hash
                || lineage
                    .previous_refresh_hash
                    .is_some_and(|p| p == claims.refresh_token_hash);
            if !in_lineage || lineage.user_id != claims.user_id {
                return Err(Error::Unauthorised(
                    "the access token belongs to a refresh token that was rotated out".into(),
                ));
            }
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

    /// Verifies an access token, through the cache of verified tokens; the
    /// expiry is checked on every call.
    fn verified(&self, token: &str, now: u64) -> Result<Arc<AccessClaims>> {
        let claims = match self.token_cache.get(token) {
            Some(claims) => claims,
            None => {
                let claims =
                    Arc::new(access::verify(&self.keys, token, now).map_err(unauthorised)?);
                self.token_cache.insert(token, claims.clone());
                claims
            }
        };
        if now >= claims.exp.saturating_mul(1000) {
            return Err(unauthorised(TokenError::Expired));
        }
        Ok(claims)
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

    /// RefreshSession: rotation with theft detection.
    pub async fn refresh(&self, req: Refresh) -> Result<Tokens> {
        let handle = self.refresh_tokens.open(&req.refresh_token).map_err(|e| {
            self.metrics.refresh("rejected");
            Error::Unauthorised(format!("the refresh token is invalid ({e})"))
        })?;
        let presented = refresh::hash(&req.refresh_token);
        let given_anti_csrf = req
            .anti_csrf_token
            .as_deref()
            .map(|t| sha256_hex(t.as_bytes()));
        let new_refresh = self.refresh_tokens.mint(&handle);
        let new_anti_csrf = random_token();
        let key = self.signer().await?;
        let now = self.now();
        let (grace, lifetime) = (self.config.grace_ms, self.config.refresh_lifetime_ms);

        enum Outcome {
            Gone,
            AntiCsrfMismatch,
            Theft(String),
            Rotated(Box<SessionRecord>, bool),
        }
        let mut outcome = Outcome::Gone;
        self.store
            .update_session(&handle.to_string(), &mut |record| {
                let Some(r) = record else {
                    outcome = Outcome::Gone;
                    return Change::Keep;
                };
                if r.expires_at_ms <= now {
                    outcome = Outcome::Gone;
                    return Change::Delete;
                }
                let in_grace = now <= r.rotated_at_ms.saturating_add(grace);
                let (generation, is_current) = if r.current.refresh_hash == presented {
                    (&r.current, true)
                } else if let Some(prev) = r
                    .previous
                    .as_ref()
                    .filter(|p| in_grace && p.refresh_hash == presented)
                {
                    (prev, false)
                } else {
                    outcome = Outcome::Theft(r.user_id.clone());
                    return Change::Delete;
                };
                if let Some(expected) = &generation.anti_csrf_hash
                    && !req.disable_anti_csrf
                    && given_anti_csrf.as_ref() != Some(expected)
                {
                    outcome = Outcome::AntiCsrfMismatch;
                    return Change::Keep;
                }
                let mut next = r.clone();
                let uses_anti_csrf = r.current.anti_csrf_hash.is_some();
                next.current = Generation {
                    refresh_hash: refresh::hash(&new_refresh),
                    anti_csrf_hash: uses_anti_csrf.then(|| sha256_hex(new_anti_csrf.as_bytes())),
                };
                if is_current {
                    next.previous = Some(r.current.clone());
                    next.rotated_at_ms = now;
                    next.expires_at_ms = now + lifetime;
                }
                outcome = Outcome::Rotated(Box::new(next.clone()), is_current);
                Change::Put(Box::new(next))
            })?;

        match outcome {
            Outcome::Gone => {
                self.metrics.refresh("rejected");
                Err(session_gone())
            }
            Outcome::AntiCsrfMismatch => {
                self.metrics.refresh("rejected");
                Err(Error::Unauthorised(
                    "the anti-CSRF token does not match".into(),
                ))
            }
            Outcome::Theft(user_id) => {
                self.store.durable().await?;
                self.metrics.refresh("theft");
                tracing::warn!(session_handle = %handle, "refresh token reuse: session revoked");
                Err(Error::TokenTheft {
                    session_handle: handle.to_string(),
                    user_id,
                })
            }
            Outcome::Rotated(record, is_current) => {
                let anti_csrf = record
                    .current
                    .anti_csrf_hash
                    .is_some()
                    .then_some(new_anti_csrf);
                let tokens = self.tokens(&key, &record, new_refresh, anti_csrf, now)?;
                self.store.durable().await?;
                self.metrics
                    .refresh(if is_current { "rotated" } else { "retried" });
                Ok(tokens)
            }
        }
    }

    /// RevokeSession.
    pub async fn revoke(&self, handle: &str) -> Result<bool> {
        let handle = payload::handle("session_handle", handle)?;
        let removed = self.delete(&[handle.to_string()]).await?;
        Ok(!removed.is_empty())
    }

    /// RevokeMultipleSessions.
    pub async fn revoke_many(&self, handles: &[String]) -> Result<Vec<String>> {
        if handles.len() > self.config.max_handles_per_call {
            return Err(Error::invalid(
                "session_handles",
                format!(
                    "at most {} per call",
                    crate::text::count(
                        self.config.max_handles_per_call as u64,
                        "handle",
                        "handles"
                    )
                ),
            ));
        }
        let parsed = handles
            .iter()
            .enumerate()
            .map(|(i, h)| {
                payload::handle(&format!("session_handles[{i}]"), h).map(|h| h.to_string())
            })
            .collect::<Result<Vec<_>, payload::InputError>>()?;
        self.delete(&parsed).await
    }

    fn user_scope(
        &self,
        user_id: &str,
        tenant_id: &str,
        all_tenants: bool,
    ) -> Result<Option<String>> {
        payload::user_id("user_id", user_id)?;
        if all_tenants {
            Ok(None)
        } else {
            Ok(Some(payload::tenant_id("tenant_id", tenant_id)?))
        }
    }

    /// RevokeAllSessionsForUser.
    pub async fn revoke_user(
        &self,
        user_id: &str,
        tenant_id: &str,
        all_tenants: bool,
    ) -> Result<Vec<String>> {
        let tenant = self.user_scope(user_id, tenant_id, all_tenants)?;
        let handles: Vec<String> = self
            .store
            .user_sessions(user_id, tenant.as_deref())?
            .into_iter()
            .map(|s| s.handle)
            .collect();
        self.delete(&handles).await
    }

    /// Deletes sessions durably; returns the handles of those that were live
    /// (expired ones are removed too, but were already invisible).
    async fn delete(&self, handles: &[String]) -> Result<Vec<String>> {
        let removed = store::blocking(|| self.store.delete_sessions(handles))?;
        self.store.durable().await?;
        let now = self.now();
        let live: Vec<String> = removed
            .into_iter()
            .filter(|s| s.expires_at_ms > now)
            .map(|s| s.handle)
            .collect();
        self.metrics.revoked(live.len() as u64);
        Ok(live)
    }

    /// GetAllSessionHandlesForUser.
    pub fn handles_for_user(
        &self,
        user_id: &str,
        tenant_id: &str,
        all_tenants: bool,
    ) -> Result<Vec<String>> {
        let tenant = self.user_scope(user_id, tenant_id, all_tenants)?;
        let now = self.now();
        Ok(self
            .store
            .user_sessions(user_id, tenant.as_deref())?
            .into_iter()
            .filter(|s| s.expires_at_ms > now)
            .map(|s| s.handle)
            .collect())
    }

    /// ListAllSessions: the live sessions of every user (of one tenant when
    /// `tenant_id` is given), in handle order, from just after `after`, at
    /// most `limit` of them.
    pub fn list_all(
        &self,
        tenant_id: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<store::SessionsPage> {
        let tenant = tenant_id
            .map(|t| payload::tenant_id("tenant_id", t))
            .transpose()?;
        let query = store::SessionQuery {
            after,
            tenant_id: tenant.as_deref(),
            live_at_ms: self.now(),
            limit,
        };
        Ok(store::blocking(|| self.store.list_sessions(&query))?)
    }

    /// GetSessionInformation.
    pub fn info(&self, handle: &str) -> Result<SessionInfo> {
        let handle = payload::handle("session_handle", handle)?;
        let r = self
            .live(self.store.session(&handle.to_string())?)
            .ok_or(Error::SessionNotFound)?;
        Ok(SessionInfo {
            handle: r.handle,
            user_id: r.user_id,
            tenant_id: r.tenant_id,
            data: r.data,
            access_payload: r.access_payload,
            created_ms: r.created_at_ms,
            expires_ms: r.expires_at_ms,
        })
    }

    /// Applies `edit` to a live session; NOT_FOUND when there is none.
    async fn edit(
        &self,
        handle: &str,
        edit: &mut (dyn FnMut(&mut SessionRecord) -> Result<()> + Send),
    ) -> Result<()> {
        let handle = payload::handle("session_handle", handle)?;
        let now = self.now();
        let mut result = Err(Error::SessionNotFound);
        self.store
            .update_session(&handle.to_string(), &mut |record| match record {
                Some(r) if r.expires_at_ms > now => {
                    let mut next = r.clone();
                    result = edit(&mut next);
                    if result.is_ok() {
                        Change::Put(Box::new(next))
                    } else {
                        Change::Keep
                    }
                }
                _ => {
                    result = Err(Error::SessionNotFound);
                    Change::Keep
                }
            })?;
        result?;
        self.store.durable().await?;
        Ok(())
    }

    /// UpdateSessionDataInDatabase: overwrites the data.
    pub async fn update_data(&self, handle: &str, data: Map<String, Value>) -> Result<()> {
        payload::limit_size("new_session_data", &data, self.config.payload_limits)?;
        self.edit(handle, &mut |r| {
            r.data = data.clone();
            Ok(())
        })
        .await
    }

    /// MergeIntoAccessTokenPayload: shallow merge, `null` deletes.
    pub async fn merge_payload(&self, handle: &str, update: Map<String, Value>) -> Result<()> {
        const FIELD: &str = "access_token_payload_update";
        payload::refuse_reserved(FIELD, &update)?;
        let max = self.config.payload_limits;
        self.edit(handle, &mut |r| {
            for (k, v) in &update {
                if v.is_null() {
                    r.access_payload.remove(k);
                } else {
                    r.access_payload.insert(k.clone(), v.clone());
                }
            }
            Ok(payload::limit_size(FIELD, &r.access_payload, max)?)
        })
        .await
    }

    /// RegenerateAccessToken: a new token with the same `exp` and lineage,
    /// carrying `new_payload` (stored) or the stored payload.
    pub async fn regenerate(
        &self,
        access_token: &str,
        new_payload: Option<Map<String, Value>>,
    ) -> Result<(SessionView, IssuedToken)> {
        if let Some(p) = &new_payload {
            self.check_payload("new_access_token_payload", p)?;
        }
        let now = self.now();
        let claims = self.verified(access_token, now)?;
        let key = self.signer().await?;
        let mut current = None;
        self.store
            .update_session(&claims.session_handle, &mut |record| match record {
                Some(r) if r.expires_at_ms > now => {
                    let mut next = r.clone();
                    if let Some(p) = &new_payload {
                        next.access_payload = p.clone();
                    }
                    current = Some(next.clone());
                    if new_payload.is_some() {
                        Change::Put(Box::new(next))
                    } else {
                        Change::Keep
                    }
                }
                _ => {
                    current = None;
                    Change::Keep
                }
            })?;
        let record = current.ok_or_else(session_gone)?;
        let token = self.reissue(&key, &claims, record.access_payload.clone(), now)?;
        // Also when nothing was written here: the token must not carry a
        // concurrent merge that a crash could still lose.
        self.store.durable().await?;
        Ok((view(&record), token))
    }

    /// Removes expired sessions; returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        const BATCH: usize = 1000;
        let mut total = 0;
        loop {
            let now = self.now();
            let n = store::blocking(|| self.store.sweep_expired(now, BATCH))?;
            total += n;
            if n < BATCH {
                break;
            }
        }
        if total > 0 {
            self.store.durable().await?;
            self.metrics.swept(total as u64);
        }
        Ok(total)
    }
}

fn view(r: &SessionRecord) -> SessionView {
    SessionView {
        handle: r.handle.clone(),
        user_id: r.user_id.clone(),
        tenant_id: r.tenant_id.clone(),
        access_payload: r.access_payload.clone(),
    }
}

#[cfg(test)]
mod mac_secret_tests {
    use super::*;
    use crate::store::SledStore;

    fn kek(byte: u8) -> Kek {
        Kek::from_text(&format!("{byte:02x}").repeat(32)).unwrap()
    }

    fn stored(store: &dyn SessionStore) -> Vec<u8> {
        store
            .secret(RefreshTokens::SECRET_NAME, &mut || panic!("made already"))
            .unwrap()
    }

    #[test]
    fn the_secret_is_sealed_with_a_kek_and_refused_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 4 << 20, None).unwrap();

        // Made on a new store: plaintext without a KEK, then sealed once
        // one is configured, and the same secret either way.
        let plain = mac_secret(store.as_ref(), None).unwrap();
        assert_eq!(stored(store.as_ref()), plain);
        assert_eq!(mac_secret(store.as_ref(), Some(&kek(1))).unwrap(), plain);
        let sealed = stored(store.as_ref());
        assert!(kek::is_sealed_value(&sealed), "sealed in the store");
        assert_eq!(mac_secret(store.as_ref(), Some(&kek(1))).unwrap(), plain);
        assert_eq!(stored(store.as_ref()), sealed, "sealed once");

        // Without the KEK, or with another, the start stops; nothing changes.
        for (other, says) in [
            (None, "no key-encryption key"),
            (Some(kek(2)), "does not open"),
        ] {
            let err = mac_secret(store.as_ref(), other.as_ref()).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
            assert_eq!(stored(store.as_ref()), sealed, "never replaced");
        }

        // A new KEK with the replaced one as its predecessor seals the
        // secret again under the new one; the old KEK alone no longer opens it.
        let rotating = kek(3).with_previous(kek(1));
        assert_eq!(mac_secret(store.as_ref(), Some(&rotating)).unwrap(), plain);
        let resealed = stored(store.as_ref());
        assert_ne!(resealed, sealed);
        assert_eq!(mac_secret(store.as_ref(), Some(&kek(3))).unwrap(), plain);
        assert_eq!(stored(store.as_ref()), resealed, "sealed again once");
        let err = mac_secret(store.as_ref(), Some(&kek(1))).unwrap_err();
        assert!(err.to_string().contains("does not open"), "{err}");

        // A new store with a KEK never holds the secret in plaintext.
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 4 << 20, None).unwrap();
        let secret = mac_secret(store.as_ref(), Some(&kek(1))).unwrap();
        assert_eq!(secret.len(), 32);
        let value = stored(store.as_ref());
        assert!(kek::is_sealed_value(&value) && !value.windows(32).any(|w| w == secret));
    }
}
