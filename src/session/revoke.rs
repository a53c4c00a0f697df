//! Revocation: one session, several, or all of a user's; every removal is
//! durable before it is acknowledged. Never sees protobuf types.

use super::*;

impl SessionManager {
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

    pub(super) fn user_scope(
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
    pub(super) async fn delete(&self, handles: &[String]) -> Result<Vec<String>> {
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
}
