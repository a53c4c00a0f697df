//! Session policy: the timeouts (idle and maximum lifetime, the server's
//! and a session's own, the shorter winning), the per-user session limit,
//! recorded activity, and why a session ended. Never sees protobuf types.

use super::*;
use crate::store::{Admission, Ends, Lineage, ListedSession, SessionLimit, Timeouts};

/// A session's last activity is written at most this often (ms): a refresh
/// always writes it, a database-checked GetSession only when the recorded
/// time is at least this old. So a session in use may be taken for idle up
/// to this much sooner than its idle timeout after its last use.
pub const ACTIVITY_GRANULARITY_MS: u64 = 60_000;

/// What creating a session over the per-user limit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAction {
    /// Ends the user's least recently active sessions to make room.
    EvictOldest,
    /// Refuses the new session.
    Refuse,
}

/// The per-user session limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most live sessions per user and tenant (at least 1).
    pub max_per_user: usize,
    /// What a create over the limit does.
    pub action: LimitAction,
}

/// The shorter of a session's own timeout (0: none) and the server's.
fn shorter(own: u64, server: Option<u64>) -> u64 {
    match (own, server) {
        (0, None) => 0,
        (0, Some(server)) => server,
        (own, None) => own,
        (own, Some(server)) => own.min(server),
    }
}

impl SessionManager {
    /// The server's idle timeout and maximum lifetime, ms, for the edge to
    /// check a session's own against.
    pub fn configured_timeouts(&self) -> (Option<u64>, Option<u64>) {
        (self.config.idle_timeout_ms, self.config.max_lifetime_ms)
    }

    /// The timeouts that hold for a session with its own `own`: for each,
    /// the shorter of its own and the server's (0: none). Written back on
    /// every write of the session, so that the store sweeps by them; a
    /// session therefore keeps the shortest timeouts it has had.
    pub(super) fn timeouts_now(&self, own: Timeouts) -> Timeouts {
        Timeouts {
            idle_ms: shorter(own.idle_ms, self.config.idle_timeout_ms),
            max_lifetime_ms: shorter(own.max_lifetime_ms, self.config.max_lifetime_ms),
        }
    }

    /// When a session is over: its refresh expiry, or its idle timeout
    /// after its last recorded activity, whichever is first.
    pub(super) fn ends_at(&self, session: &impl Ends) -> u64 {
        session.ends_at_idle(self.timeouts_now(session.ending().2).idle_ms)
    }

    /// The refresh expiry of a session created at `created_ms` and
    /// refreshed (or created) at `now`: one refresh lifetime on, but never
    /// past its maximum lifetime.
    pub(super) fn session_end(&self, created_ms: u64, now: u64, own: Timeouts) -> u64 {
        let sliding = now + self.config.refresh_lifetime_ms;
        match self.timeouts_now(own).max_lifetime_ms {
            0 => sliding,
            max => sliding.min(created_ms.saturating_add(max)),
        }
    }

    /// Why a session that is over ended: `idle`, `lifetime` (its maximum
    /// lifetime) or `refresh` (its refresh token expired unused).
    pub(super) fn why_ended(&self, s: &ListedSession) -> &'static str {
        let timeouts = self.timeouts_now(s.timeouts);
        let idle_end = s.last_active_ms.saturating_add(timeouts.idle_ms);
        if timeouts.idle_ms > 0 && idle_end < s.expires_at_ms {
            "idle"
        } else if timeouts.max_lifetime_ms > 0
            && s.expires_at_ms >= s.created_at_ms.saturating_add(timeouts.max_lifetime_ms)
        {
            "lifetime"
        } else {
            "refresh"
        }
    }

    /// Stores a new session, within the per-user limit when there is one.
    pub(super) async fn admit(&self, record: &SessionRecord, now: u64) -> Result<()> {
        let Some(limits) = self.config.session_limit else {
            return Ok(self.store.create_session(record).await?);
        };
        let limit = SessionLimit {
            max: limits.max_per_user,
            evict: limits.action == LimitAction::EvictOldest,
            live_at_ms: now,
        };
        match self.store.create_session_within(record, &limit).await? {
            Admission::Refused => Err(Error::SessionLimitReached {
                max: limits.max_per_user,
            }),
            Admission::Created { evicted } => {
                if !evicted.is_empty() {
                    self.metrics.evicted(evicted.len() as u64);
                    tracing::info!(
                        evicted = evicted.len(),
                        "sessions ended to stay within --max-sessions-per-user"
                    );
                }
                Ok(())
            }
        }
    }

    /// Records a database-checked use of the session `handle` (read as
    /// `lineage`) at `now`, when its recorded activity is at least
    /// [`ACTIVITY_GRANULARITY_MS`] old. Not awaited to disk: a use is not an
    /// acknowledged write, and a failure to record it fails no call.
    pub(super) async fn note_activity(&self, handle: &str, lineage: &Lineage, now: u64) {
        if now.saturating_sub(lineage.last_active_ms) < ACTIVITY_GRANULARITY_MS {
            return;
        }
        let noted = self
            .store
            .update_session(handle, &mut |current| match current {
                Some(r) if r.last_active_ms < now && self.ends_at(r) > now => {
                    let mut next = r.clone();
                    next.last_active_ms = now;
                    next.timeouts = self.timeouts_now(r.timeouts);
                    Change::Put(Box::new(next))
                }
                _ => Change::Keep,
            })
            .await;
        if let Err(e) = noted {
            tracing::warn!(session_handle = handle, error = %e, "could not record a session's activity");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shorter;

    #[test]
    fn the_shorter_timeout_wins_and_zero_is_none() {
        assert_eq!(shorter(0, None), 0);
        assert_eq!(shorter(0, Some(5)), 5);
        assert_eq!(shorter(7, None), 7);
        assert_eq!(shorter(7, Some(5)), 5);
        assert_eq!(shorter(3, Some(5)), 3);
    }
}
