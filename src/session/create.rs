//! CreateNewSession: a new session, its first tokens, and the user's
//! identifier. Never sees protobuf types.

use super::*;
use crate::store::{Device, Timeouts};

/// Input of [`SessionManager::create`].
#[derive(Debug, Clone)]
pub struct NewSession {
    /// User.
    pub user_id: UserId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// User claims for the access token.
    pub access_payload: AccessPayload,
    /// Database-only data.
    pub data: SessionData,
    /// Mint an anti-CSRF token.
    pub anti_csrf: bool,
    /// The user's identifier for UserSessionService, when given.
    pub user_identifier: Option<UserIdentifier>,
    /// Where the session is used from.
    pub device: Device,
    /// The session's own timeouts (0: the server's), no longer than the
    /// server's (the edge checks).
    pub timeouts: Timeouts,
}

impl SessionManager {
    /// CreateNewSession.
    pub async fn create(&self, new: NewSession) -> Result<Tokens> {
        let key = self.signer().await?;
        let now = self.now();
        let handle = SessionHandle::random();
        let refresh = self.refresh_tokens.mint(&handle);
        let anti_csrf = new.anti_csrf.then(random_token);
        let record = SessionRecord {
            handle: handle.to_string(),
            user_id: new.user_id.as_str().to_owned(),
            tenant_id: new.tenant_id.as_str().to_owned(),
            access_payload: new.access_payload.into_map(),
            data: new.data.into_map(),
            created_at_ms: now,
            expires_at_ms: self.session_end(now, now, new.timeouts),
            current: Generation {
                refresh_hash: crate::token::refresh::hash(&refresh),
                anti_csrf_hash: anti_csrf.as_deref().map(|t| sha256(t.as_bytes())),
            },
            previous: None,
            rotated_at_ms: now,
            last_active_ms: now,
            timeouts: self.timeouts_now(new.timeouts),
            device: new.device,
        };
        self.admit(&record, now).await?;
        if let Some(id) = &new.user_identifier {
            buckets::set_identifier(self.store.as_ref(), &new.tenant_id, &new.user_id, id).await?;
        }
        let tokens = self.tokens(&key, &record, refresh, anti_csrf, now)?;
        self.store.durable().await?;
        Ok(tokens)
    }
}
