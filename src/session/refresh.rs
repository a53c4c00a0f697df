//! RefreshSession: refresh token rotation with theft detection, atomic per
//! session through one `update_session_with`
//! call, whose closure returns the outcome with the decision. Never sees protobuf
//! types and never logs a token.

use super::*;

/// Input of [`SessionManager::refresh`].
#[derive(Clone, Default)]
pub struct Refresh {
    /// The refresh token.
    pub refresh_token: String,
    /// The anti-CSRF token the client sent.
    pub anti_csrf_token: Option<String>,
    /// Skip the anti-CSRF comparison.
    pub disable_anti_csrf: bool,
    /// Where the session is used from now: its non-empty fields replace
    /// the stored ones.
    pub device: Option<crate::store::Device>,
}

impl SessionManager {
    /// RefreshSession: rotation with theft detection.
    pub async fn refresh(&self, req: Refresh) -> Result<Tokens> {
        let handle = self.refresh_tokens.open(&req.refresh_token).map_err(|e| {
            self.metrics.refresh("rejected");
            Error::Unauthorised(format!("the refresh token is invalid ({e})"))
        })?;
        let presented = crate::token::refresh::hash(&req.refresh_token);
        let given_anti_csrf = req.anti_csrf_token.as_deref().map(|t| sha256(t.as_bytes()));
        let new_refresh = self.refresh_tokens.mint(&handle);
        let new_anti_csrf = random_token();
        let key = self.signer().await?;
        let now = self.now();
        let grace = self.config.grace_ms;

        enum Outcome {
            Gone,
            Ended(&'static str),
            AntiCsrfMismatch,
            Theft(String),
            Rotated(Box<SessionRecord>, bool),
        }
        let (_, outcome) = self
            .store
            .update_session_with(&handle.to_string(), |record| {
                let Some(r) = record else {
                    return (Change::Keep, Outcome::Gone);
                };
                if self.ends_at(r) <= now {
                    let why = self.why_ended(&crate::store::ListedSession::of(r));
                    return (Change::Delete, Outcome::Ended(why));
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
                    return (Change::Delete, Outcome::Theft(r.user_id.clone()));
                };
                if let Some(expected) = &generation.anti_csrf_hash
                    && !req.disable_anti_csrf
                    && given_anti_csrf.as_ref() != Some(expected)
                {
                    return (Change::Keep, Outcome::AntiCsrfMismatch);
                }
                let mut next = r.clone();
                let uses_anti_csrf = r.current.anti_csrf_hash.is_some();
                next.current = Generation {
                    refresh_hash: crate::token::refresh::hash(&new_refresh),
                    anti_csrf_hash: uses_anti_csrf.then(|| sha256(new_anti_csrf.as_bytes())),
                };
                if is_current {
                    next.previous = Some(r.current.clone());
                    next.rotated_at_ms = now;
                    next.expires_at_ms = self.session_end(r.created_at_ms, now, r.timeouts);
                }
                next.last_active_ms = now;
                next.timeouts = self.timeouts_now(r.timeouts);
                if let Some(device) = &req.device {
                    for (stored, given) in [
                        (&mut next.device.ip_address, &device.ip_address),
                        (&mut next.device.user_agent, &device.user_agent),
                        (&mut next.device.label, &device.label),
                    ] {
                        if !given.is_empty() {
                            given.clone_into(stored);
                        }
                    }
                }
                let rotated = Outcome::Rotated(Box::new(next.clone()), is_current);
                (Change::Put(Box::new(next)), rotated)
            })
            .await?;

        match outcome {
            Outcome::Gone => {
                self.metrics.refresh("rejected");
                Err(session_gone())
            }
            Outcome::Ended(why) => {
                self.store.durable().await?;
                self.metrics.refresh("rejected");
                self.metrics.expired(why);
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
}
