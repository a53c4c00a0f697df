//! CreateNewSession: a new session, its first tokens, and the user's
//! identifier. Never sees protobuf types.

use super::*;

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

impl SessionManager {
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
                refresh_hash: crate::token::refresh::hash(&refresh),
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
}
