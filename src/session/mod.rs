//! The session recipe: SuperTokens' session rules on top of a
//! [`Store`] and the [`KeyRing`].
//!
//! Owns creation, verification, refresh rotation with theft detection,
//! revocation, session data and payload updates. Rules it keeps:
//! - nothing is acknowledged before it is durable (every write awaits
//!   [`Durability::durable`](crate::store::Durability::durable));
//! - refresh rotation is one store update (`update_session_with`), which
//!   the store applies atomically per session, so concurrent refreshes are
//!   serialised and leave one live lineage;
//! - expired sessions are treated as absent at once, whether or not the
//!   sweeper has removed them yet;
//! - it never sees protobuf types (the `api` module converts) and never logs
//!   a token;
//! - it takes checked input ([`UserId`], [`TenantId`], [`SessionHandle`],
//!   checked payloads and validators), so it cannot be called with
//!   unchecked values, and never names a request's fields: what only it can
//!   check (a payload grown too large by a merge) fails as
//!   [`Error::TooLarge`] naming the domain thing.
//!
//! Layout: this file holds the manager, its settings and the helpers every
//! call shares; [`create`](SessionManager::create), verification, refresh,
//! revocation, reads, session data and claims each have their own file.

mod claims;
mod create;
mod data;
mod listing;
mod pages;
mod policy;
#[cfg(test)]
mod proptests;
mod read;
mod refresh;
mod revoke;
mod verify;

pub use create::NewSession;
pub use listing::{Caller, Listing, Page, SessionSummary};
pub use policy::{ACTIVITY_GRANULARITY_MS, LimitAction, SessionLimits};
pub use read::SessionInfo;
pub use refresh::Refresh;
pub use verify::{Verified, Verify};

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::buckets::{self, UserIdentifier};
use crate::claims::{ClaimSource, Validator, Validators};
use crate::clock::SharedClock;
use crate::error::{Error, Oversized, Result};
use crate::ids::SessionHandle;
use crate::input::{self as payload, AccessPayload, PayloadUpdate, SessionData, TenantId, UserId};
use crate::metrics::Metrics;
use crate::store::{self, Change, Generation, SessionRecord, Store, TokenHash};
use crate::token::access::{self, AccessClaims};
use crate::token::keys::{KeyRing, SigningKey};
use crate::token::refresh::RefreshTokens;
use crate::token::verifier::Verifier;
use crate::token::{TokenError, ct_eq, random_token, sha256};

/// Settings of the session rules.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Access token lifetime, ms.
    pub access_lifetime_ms: u64,
    /// Refresh token lifetime, ms (sliding).
    pub refresh_lifetime_ms: u64,
    /// Longest a session lives from its creation, ms (`None`: no limit).
    pub max_lifetime_ms: Option<u64>,
    /// A session unused this long is over, ms (`None`: no idle timeout).
    pub idle_timeout_ms: Option<u64>,
    /// How many sessions a user may hold per tenant (`None`: no limit).
    pub session_limit: Option<SessionLimits>,
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

/// The session rules.
pub struct SessionManager {
    store: Arc<dyn Store>,
    keys: Arc<KeyRing>,
    refresh_tokens: RefreshTokens,
    claims: Arc<dyn ClaimSource>,
    clock: SharedClock,
    config: SessionConfig,
    metrics: Arc<Metrics>,
    verifier: Verifier,
    pages: pages::PageTokens,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
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
        store: Arc<dyn Store>,
        keys: Arc<KeyRing>,
        claims: Arc<dyn ClaimSource>,
        clock: SharedClock,
        config: SessionConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        // Made on a new store, kept sealed with the key-encryption key when
        // there is one; a sealed secret without its KEK stops the start.
        let secret = keys
            .vault()
            .secret(RefreshTokens::SECRET_NAME, RefreshTokens::SECRET_WHAT)
            .await?;
        let page_key = keys
            .vault()
            .secret(
                pages::PageTokens::SECRET_NAME,
                pages::PageTokens::SECRET_WHAT,
            )
            .await?;
        store.durable().await?;
        Ok(Self {
            store,
            verifier: Verifier::new(Arc::clone(&keys), config.token_cache_size),
            keys,
            refresh_tokens: RefreshTokens::new(&secret),
            pages: pages::PageTokens::new(&page_key),
            claims,
            clock,
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
        record.filter(|r| self.ends_at(r) > now)
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
            refresh_token_hash: record.current.refresh_hash.to_hex(),
            anti_csrf_token: anti_csrf.clone(),
            iat: now / 1000,
            // No access token outlives its session.
            exp: (now + self.config.access_lifetime_ms).min(self.ends_at(record)) / 1000,
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

    /// Size and depth limits of payloads and session data, for the edge
    /// to check requests against.
    pub fn payload_limits(&self) -> payload::JsonLimits {
        self.config.payload_limits
    }

    /// Most handles one RevokeMultipleSessions call may name.
    pub fn max_handles_per_call(&self) -> usize {
        self.config.max_handles_per_call
    }

    /// Removes sessions that are over; returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        const BATCH: usize = 1000;
        let mut total = 0;
        loop {
            let now = self.now();
            let removed = self.store.sweep_expired(now, BATCH).await?;
            total += removed.len();
            for gone in &removed {
                self.metrics.expired(self.why_ended(gone));
            }
            if removed.len() < BATCH {
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
