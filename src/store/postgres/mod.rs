//! [`PostgresStore`]: the store in a PostgreSQL database, which any number
//! of sessiond processes may share.
//!
//! Connections come from a bounded pool (`deadpool-postgres`); statements
//! are prepared once per connection (`prepare_cached`). A call takes one
//! connection and never a second one while it holds the first, so a full
//! pool cannot deadlock; a call that waits longer than the pool's wait for
//! a connection fails with [`StoreError::Unavailable`], as does one whose
//! server cannot be reached. Every write returns once its transaction has
//! committed (the server's `synchronous_commit` is never relaxed), so
//! [`Durability::durable`](super::Durability::durable) resolves at once.
//! A read-decide-write call on a session is a compare-and-swap on the
//! row's version, which takes the row's lock (`SELECT ... FOR UPDATE`)
//! once contended; one on buckets always takes it. Either is retried a
//! bounded number of times on a serialization failure or a deadlock.
//! Concurrent calls of one kind share statements (`batch`).
//!
//! Health follows the database (`health`): the store reports itself not
//! writable while the server cannot take writes, and writable again once it
//! can, with no restart.
//!
//! Layout: `tls` (sslmode), `schema` (migrations), `health` (the probe),
//! `batch` (statements shared by concurrent calls), `sessions`,
//! `user_data`, `keys` (keys and secrets), `backup` (durability, export,
//! import). This
//! module must never log or return the database URL, which may hold a
//! password, nor a record's contents.

mod backup;
mod batch;
mod health;
mod keys;
mod schema;
mod sessions;
mod tls;
mod user_data;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

use super::StoreError;
use crate::secret::Secret;

/// Connections a store keeps when not told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How long a call waits for a free connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many times a transaction that met a serialization failure or a
/// deadlock is run again before the call fails.
const RETRIES: usize = 20;

/// The store in PostgreSQL; see the module documentation.
pub struct PostgresStore {
    pool: Pool,
    batches: sessions::Batches,
    /// Whether the database takes writes; `None` until [`connect`](Self::connect).
    probe: Option<health::Probe>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("PostgresStore")
            .field("pool_size", &self.pool.status().max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://`, with `sslmode`
    /// read as in the module `tls`) with a pool of `pool_size` connections,
    /// and brings its schema up to date. Fails when the server cannot be
    /// reached, or its schema is newer than this binary knows.
    pub async fn connect(url: &Secret, pool_size: usize) -> Result<Self, StoreError> {
        let mut store = Self::open(url, pool_size, POOL_WAIT)?;
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        drop(client);
        store.probe = Some(health::Probe::start(store.pool.clone()));
        Ok(store)
    }

    /// The pool, without a connection yet (nor the schema checked): calls
    /// wait up to `pool_wait` for a free connection.
    fn open(url: &Secret, pool_size: usize, pool_wait: Duration) -> Result<Self, StoreError> {
        let (url, tls) = tls::split_url(url.expose())?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            // The parser's messages name the option, never its value.
            StoreError::Backend(format!("the database URL is not valid: {e}"))
        })?;
        config.ssl_mode(tls.ssl_mode());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sessiond");
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls.connector()? {
            None => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
            Some(tls) => Manager::from_config(config, tls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(pool_wait))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("the database pool: {e}")))?;
        let batches = sessions::Batches::new(&pool, pool_size);
        Ok(Self {
            pool,
            batches,
            probe: None,
        })
    }

    /// Checks `url` as [`connect`](Self::connect) reads it, without
    /// connecting: its `sslmode`, its options, the trusted roots it names.
    pub fn check_url(url: &Secret) -> Result<(), StoreError> {
        Self::open(url, 1, POOL_WAIT).map(drop)
    }

    /// The schema version this binary writes (and the newest it opens).
    pub fn schema_version() -> i32 {
        schema::latest()
    }

    /// One pooled connection, waiting a bounded time for it.
    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        checkout(&self.pool).await
    }
}

/// One connection of `pool`, waiting a bounded time for it.
async fn checkout(pool: &Pool) -> Result<deadpool_postgres::Client, StoreError> {
    pool.get().await.map_err(|e| match e {
        PoolError::Timeout(_) => {
            tracing::warn!("no database connection became free in time");
            StoreError::Unavailable(
                "the session database is busy: no connection became free in time; retry later"
                    .into(),
            )
        }
        PoolError::Backend(e) => failure("connecting to the database", e),
        e => {
            tracing::warn!(error = %e, "no database connection");
            StoreError::Unavailable("the session database cannot be reached; retry later".into())
        }
    })
}

/// How the client's messages begin for the failures that mean the server
/// could not be reached or talked to (connecting, I/O, TLS, a timeout).
const UNREACHABLE: &[&str] = &[
    "error connecting to server",
    "error communicating with the server",
    "error performing TLS handshake",
    "timeout waiting for server",
    "connection closed",
];

/// A client error as a store error: the server unreachable, shutting down
/// or out of resources is [`StoreError::Unavailable`]; anything else is
/// [`StoreError::Backend`], naming the operation and the SQLSTATE (never
/// the statement's values, which a server's detail message may quote).
fn failure(op: &str, e: tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // The client's error kinds are not public; its messages name them.
        let message = e.to_string();
        if e.is_closed() || UNREACHABLE.iter().any(|kind| message.starts_with(kind)) {
            tracing::warn!(error = %e, op, "the session database cannot be reached");
            return StoreError::Unavailable(
                "the session database cannot be reached; retry later".into(),
            );
        }
        if message.starts_with("error deserializing") {
            return StoreError::Corrupt(format!("{op}: {message}"));
        }
        return StoreError::Backend(format!("{op}: {message}"));
    };
    let code = db.code().code();
    let unavailable = code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (disk full)
        || code.starts_with("57P"); // shutting down, cannot connect now
    if unavailable {
        tracing::warn!(
            code,
            op,
            message = db.message(),
            "the session database is unavailable"
        );
        return StoreError::Unavailable(
            "the session database cannot take this call now; retry later".into(),
        );
    }
    StoreError::Backend(format!("{op}: SQLSTATE {code}: {}", db.message()))
}

/// Whether running the transaction again may succeed.
fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// Why one attempt at a call failed: the client (which may be worth
/// another attempt), or the store's own checks.
enum Failed {
    Db(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Failed {
    /// The error, for a call made once.
    fn during(self, op: &str) -> StoreError {
        match self {
            Self::Db(e) => failure(op, e),
            Self::Store(e) => e.during(op),
        }
    }

    /// `Ok` when the attempt that failed so should run again (a
    /// serialization failure or a deadlock, fewer than [`RETRIES`] times so
    /// far); else the call's error.
    fn retry(self, op: &str, tries: &mut usize) -> Result<(), StoreError> {
        match self {
            Self::Db(e) if retryable(&e) && *tries < RETRIES => {
                *tries += 1;
                Ok(())
            }
            failed => Err(failed.during(op)),
        }
    }
}

/// A time in ms as the database keeps it.
fn to_db(ms: u64) -> Result<i64, StoreError> {
    i64::try_from(ms).map_err(|_| StoreError::Backend(format!("a time of {ms} ms is out of range")))
}

/// A time in ms read back from the database.
fn from_db(ms: i64) -> Result<u64, StoreError> {
    u64::try_from(ms).map_err(|_| StoreError::Corrupt(format!("a negative time ({ms} ms)")))
}

#[cfg(test)]
mod tests;
