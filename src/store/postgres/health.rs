//! Whether the database takes writes, for the server's health and the
//! `sessiond_store_writable` gauge: a probe every [`PROBE_INTERVAL`] takes a
//! pooled connection and asks the server whether it is a primary
//! (`pg_is_in_recovery()`), each step bounded by [`PROBE_TIMEOUT`].
//!
//! - The server unreachable, refusing connections, shutting down, or a
//!   standby that only reads: not writable.
//! - Every pooled connection busy with calls: the database is answering
//!   them, so the last verdict stands.
//! - Answering as a primary again: writable. The pool replaces the
//!   connections the outage closed as calls ask for them, so the store
//!   serves again without a restart.

use std::time::Duration;

use deadpool_postgres::{Pool, PoolError, TimeoutType, Timeouts};
use tokio::sync::watch;

/// How often the probe asks the database.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long each step of a probe (a connection, the query) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probe, running while the store is open.
pub(super) struct Probe {
    writable: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Starts probing the database behind `pool`, which took writes when
    /// the store opened.
    pub(super) fn start(pool: Pool) -> Self {
        let writable = watch::Sender::new(true);
        let task = tokio::spawn(watch_database(pool, writable.clone()));
        Self { writable, task }
    }

    /// Whether the database takes writes, and its changes.
    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.writable.subscribe()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_database(pool: Pool, writable: watch::Sender<bool>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(now) = probe(&pool).await else {
            continue;
        };
        if writable.send_if_modified(|w| std::mem::replace(w, now) != now) {
            if now {
                tracing::info!("the session database takes writes again");
            } else {
                tracing::warn!(
                    "the session database cannot take writes; health reports NOT_SERVING until it can"
                );
            }
        }
    }
}

/// One probe: whether the database takes writes, `None` when every pooled
/// connection is busy (it answers, then).
async fn probe(pool: &Pool) -> Option<bool> {
    let timeouts = Timeouts {
        wait: Some(PROBE_TIMEOUT),
        create: Some(PROBE_TIMEOUT),
        recycle: Some(PROBE_TIMEOUT),
    };
    let client = match pool.timeout_get(&timeouts).await {
        Ok(client) => client,
        Err(PoolError::Timeout(TimeoutType::Wait)) => return None,
        Err(_) => return Some(false),
    };
    let asked = client.query_one("SELECT pg_is_in_recovery()", &[]);
    match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
        Ok(Ok(row)) => Some(row.try_get::<_, bool>(0).is_ok_and(|standby| !standby)),
        _ => Some(false),
    }
}
