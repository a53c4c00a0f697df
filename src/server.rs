//! Wiring: opens the store and keys, builds every service on one port, runs
//! the background tasks, and shuts down in order.
//!
//! One port serves gRPC (SessionService, JwtService, health, reflection v1
//! and v1alpha) and the plain HTTP routes. Health reports SERVING only after
//! the store is open and the keys are loaded, and NOT_SERVING as soon as
//! shutdown begins; in-flight calls then get `drain_timeout` to finish, and
//! the store is flushed before [`serve`] returns.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::api::ApiKeys;
use crate::api::admin::AdminApi;
use crate::api::auth::AuthLayer;
use crate::api::authz::Gate;
use crate::api::authz::envoy::EnvoyAuthz;
use crate::api::connect::ConnectLayer;
use crate::api::details::DetailsLayer;
use crate::api::guard::GuardLayer;
use crate::api::jwt::JwtApi;
use crate::api::observe::ObserveLayer;
use crate::api::provider::GrpcClaimSource;
use crate::api::session::SessionApi;
use crate::api::user_session::{ClientSecrets, UserSessionApi};
use crate::buckets::Buckets;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::connections::{Connections, Http2Settings};
use crate::input::JsonLimits;
use crate::jwt::JwtIssuer;
use crate::metrics::Metrics;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::jwt_service_server::JwtServiceServer;
use crate::pb::session_service_server::SessionServiceServer;
use crate::pb::user_session_service_server::UserSessionServiceServer;
use crate::reload::Live;
use crate::session::{SessionConfig, SessionLimits, SessionManager};
use crate::store::FlushObserver;
use crate::store::{PostgresStore, SledStore, Store, StoreError};
use crate::token::KeyError;
use crate::token::keys::{KeyRing, KeyRingConfig};
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::sync::mpsc;

pub use crate::logging::LIFECYCLE_TARGET;

/// Services whose health is reported (besides the server as a whole, "").
const SERVICES: [&str; 5] = [
    "sessiond.v1.SessionService",
    "sessiond.v1.JwtService",
    "sessiond.v1.UserSessionService",
    "sessiond.v1.AdminService",
    "envoy.service.auth.v3.Authorization",
];

/// The standard services served beside [`SERVICES`].
const PROTOCOL_SERVICES: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The keys could not be loaded or generated.
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    /// Session rules could not start.
    #[error(transparent)]
    Domain(#[from] crate::error::Error),
    /// The reflection descriptors are broken.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// No API key is configured, yet the listener is not on loopback.
    #[error("no API key is configured, so sessiond serves only on loopback addresses, not {0}")]
    Unprotected(std::net::SocketAddr),
    /// A claim provider address is unusable.
    #[error("claim providers: {0}")]
    ClaimProviders(String),
    /// The descriptors Connect's JSON is transcoded with are broken.
    #[error("Connect descriptors: {0}")]
    Connect(String),
    /// The listener has no local address.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs sessiond on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_reload(listener, config, clock, shutdown, None).await
}

/// [`serve`], also applying each configuration received on `reloads`: the
/// API keys, client secrets and CORS origins change for calls that arrive
/// after it, the TLS certificate, key and client CA (when serving TLS) for
/// connections made after it, and open connections stay open. A
/// configuration that would leave a non-loopback listener without API keys
/// is refused whole; one whose TLS files do not load never resolves into a
/// [`Config`], so it is refused before it is sent.
pub async fn serve_with_reload(
    listener: TcpListener,
    config: Config,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: Option<mpsc::UnboundedReceiver<Config>>,
) -> Result<(), ServeError> {
    let (closed, store_closed) = std::sync::mpsc::channel::<()>();
    let result = run(listener, config, clock, shutdown, reloads, closed).await;
    // Everything `run` held is gone, but a background thread of the store
    // (a checkpoint in progress) may still hold it: wait for its final
    // flush, so that a process exiting next leaves a cleanly closed store.
    let waited = tokio::task::spawn_blocking(move || {
        store_closed.recv_timeout(std::time::Duration::from_secs(30))
    })
    .await;
    if matches!(waited, Ok(Err(std::sync::mpsc::RecvTimeoutError::Timeout))) {
        tracing::warn!("the store did not close within 30 s; the next start replays its log");
    }
    if result.is_ok() {
        tracing::info!(target: LIFECYCLE_TARGET, "sessiond stopped");
    }
    result
}

async fn run(
    listener: TcpListener,
    config: Config,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: Option<mpsc::UnboundedReceiver<Config>>,
    closed: std::sync::mpsc::Sender<()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    if config.api_keys.is_empty() && !addr.ip().is_loopback() {
        return Err(ServeError::Unprotected(addr));
    }
    if config.api_keys.is_empty() {
        warn_keyless(addr);
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let issuer = config
        .issuer
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));

    let metrics = Metrics::shared();
    let on_flush: FlushObserver = {
        let metrics = metrics.clone();
        Arc::new(move |elapsed| metrics.flushed(elapsed))
    };
    let store: Arc<dyn Store> = match &config.database_url {
        Some(url) => {
            // Nothing of a database store outlives `run`: no close to wait for.
            drop(closed);
            let store = PostgresStore::connect(url, config.database_pool_size).await?;
            tracing::info!(
                pool_size = config.database_pool_size,
                "the store is in PostgreSQL"
            );
            Arc::new(store)
        }
        None => {
            let sled = SledStore::open(&config.data_dir, config.store_cache_bytes, Some(on_flush))?;
            sled.on_close(closed);
            sled.set_reserved_space(config.store_reserved_bytes);
            sled.set_log_archive_size(config.log_archive_bytes);
            sled
        }
    };
    metrics.set_store(Arc::downgrade(&store));
    let keys = Arc::new(
        KeyRing::open_sealed(
            store.clone(),
            clock.clone(),
            KeyRingConfig {
                algorithm: config.signing_algorithm,
                rotation_interval_ms: config.key_rotation_interval.as_millis() as u64,
                access_lifetime_ms: config.access_token_lifetime.as_millis() as u64,
            },
            metrics.clone(),
            config.key_encryption_key.clone(),
        )
        .await?,
    );
    let claim_source = GrpcClaimSource::new(
        &config.claim_providers,
        config.default_claim_provider.as_deref(),
        config.claim_provider_timeout,
        metrics.clone(),
    )
    .map_err(ServeError::ClaimProviders)?;
    let payload_limits = JsonLimits {
        bytes: config.max_payload_bytes,
        depth: config.limits.max_json_depth,
    };
    let manager = Arc::new(
        SessionManager::new(
            store.clone(),
            keys.clone(),
            Arc::new(claim_source),
            clock.clone(),
            SessionConfig {
                access_lifetime_ms: config.access_token_lifetime.as_millis() as u64,
                refresh_lifetime_ms: config.refresh_token_lifetime.as_millis() as u64,
                max_lifetime_ms: (!config.session_max_lifetime.is_zero())
                    .then_some(config.session_max_lifetime.as_millis() as u64),
                idle_timeout_ms: (!config.session_idle_timeout.is_zero())
                    .then_some(config.session_idle_timeout.as_millis() as u64),
                session_limit: (config.max_sessions_per_user > 0).then_some(SessionLimits {
                    max_per_user: config.max_sessions_per_user,
                    action: config.session_limit_action,
                }),
                grace_ms: config.refresh_grace_period.as_millis() as u64,
                payload_limits,
                max_handles_per_call: config.limits.max_handles_per_call,
                token_cache_size: config.token_cache_size,
                issuer: issuer.clone(),
            },
            metrics.clone(),
        )
        .await?,
    );
    let jwt = Arc::new(JwtIssuer::new(
        keys.clone(),
        clock.clone(),
        issuer,
        payload_limits,
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in std::iter::once("").chain(SERVICES) {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }

    // Reflection lists only what this port serves. The descriptors of
    // sessiond.v1.ClaimProvider (which sessiond calls, not serves) stay
    // resolvable by symbol for implementers, as do the google.rpc types.
    let reflection = || {
        SERVICES.into_iter().chain(PROTOCOL_SERVICES).fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // After tonic-types' set, whose `status.proto` it imports.
                .register_encoded_file_descriptor_set(crate::pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET),
            |builder, name| builder.with_service_name(name),
        )
    };
    let api_keys = ApiKeys::new(&config.api_keys);
    let limits = config.limits.clone();
    let max_message = limits.max_message_bytes;
    // Built once: Connect transcodes JSON with them, and the gateway check
    // reads claim validators with them.
    let descriptors = crate::api::connect::descriptors().map_err(ServeError::Connect)?;
    let gate = Arc::new(
        Gate::new(
            &descriptors,
            manager.clone(),
            config.authz_cookie_name.clone(),
            config.authz_claim_headers.clone(),
            metrics.clone(),
        )
        .map_err(ServeError::Connect)?,
    );
    let mut routes = Routes::builder();
    routes
        .add_service(health_service)
        .add_service(
            AuthorizationServer::new(EnvoyAuthz::new(gate.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(
            SessionServiceServer::new(SessionApi::new(manager.clone()))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            JwtServiceServer::new(JwtApi::new(jwt.clone())).max_decoding_message_size(max_message),
        )
        .add_service(
            AdminServiceServer::new(AdminApi::new(keys.clone(), store.clone(), manager.clone()))
                .max_decoding_message_size(max_message),
        );
    let buckets = Arc::new(Buckets::new(
        store.clone(),
        JsonLimits {
            bytes: config.max_bucket_bytes,
            depth: config.limits.max_json_depth,
        },
    ));
    let client_secrets = ClientSecrets::new(&config.client_secrets);
    routes.add_service(
        UserSessionServiceServer::new(UserSessionApi::new(
            manager.clone(),
            buckets,
            api_keys.clone(),
            client_secrets.clone(),
        ))
        .max_decoding_message_size(max_message),
    );
    // gRPC-Web wraps the gRPC routes only: it answers 400 to plain HTTP,
    // which must keep reaching the JWKS and discovery routes.
    let router = routes
        .routes()
        .into_axum_router()
        // Innermost first: shedding and deadlines, then API keys (outside, so
        // a caller without a valid key never takes a concurrency permit).
        .layer(GuardLayer::new(
            limits.max_concurrent_requests,
            limits.request_timeout,
        ))
        .layer(AuthLayer::new(api_keys.clone()))
        // Statuses made by tonic itself get their ErrorInfo here, before
        // they are counted.
        .layer(DetailsLayer)
        .layer(ObserveLayer::new(metrics.clone()))
        .layer(tonic_web::GrpcWebLayer::new())
        // Outermost: Connect calls become gRPC ones before anything else
        // sees them (gRPC-Web's layer would refuse them over HTTP/1.1).
        .layer(ConnectLayer::new(descriptors, max_message))
        .merge(crate::http::router(
            jwt,
            metrics.clone(),
            crate::http::Authz {
                gate: gate.clone(),
                keys: api_keys.clone(),
            },
        ))
        .fallback(crate::http::not_found);
    let cors_origins = Live::new(config.cors_origins.clone());
    let router = router.layer(crate::http::cors(cors_origins.clone()));

    // Loaded when the configuration was resolved: served as it is.
    let tls = config.tls.as_ref().map(|tls| Live::new(tls.acceptor()));
    let reloadable = Reloadable {
        addr,
        api_keys,
        client_secrets,
        cors_origins,
        tls: tls.clone(),
    };
    // Before the other background tasks: at shutdown it is stopped first,
    // so that nothing turns health back to SERVING.
    let store_health = tokio::spawn(report_store_health(store.writable().await, health.clone()));
    let background = [
        tokio::spawn(sweeper(manager.clone(), config.sweep_interval)),
        tokio::spawn(key_maintenance(keys.clone())),
        tokio::spawn(apply_reloads(reloadable, reloads)),
    ];

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let connections = Arc::new(Connections::new(limits.max_connections));
    let (accepted, incoming) = mpsc::channel(128);
    let acceptor = tokio::spawn(crate::connections::accept(
        listener,
        tls,
        connections.clone(),
        limits.idle_timeout,
        accepted,
    ));
    let server = crate::connections::serve(
        incoming,
        router,
        Http2Settings {
            max_concurrent_streams: limits.max_concurrent_streams,
            max_header_list_size: limits.max_header_list_bytes,
        },
        async {
            let _ = stop_rx.await;
        },
    );
    let mut server = tokio::spawn(server);
    tracing::info!(target: LIFECYCLE_TARGET, "sessiond ready, listening on {addr}");

    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            acceptor.abort();
            store_health.abort();
            for task in &background {
                task.abort();
            }
            return match result {
                Ok(()) => Ok(()),
                Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
            };
        }
    }

    tracing::info!("shutting down: health is NOT_SERVING, draining in-flight calls");
    store_health.abort();
    let _ = store_health.await;
    for name in std::iter::once("").chain(SERVICES) {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    // No new connections from here on.
    acceptor.abort();
    let _ = stop_tx.send(());
    match tokio::time::timeout(config.drain_timeout, &mut server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ServeError::Io(std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!("drain timeout reached; cutting the remaining connections");
            connections.cut_all();
            // Cut connections end at their next read or write; give their
            // tasks a moment, then stop waiting.
            match tokio::time::timeout(std::time::Duration::from_secs(2), &mut server).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServeError::Io(std::io::Error::other(e))),
                Err(_) => server.abort(),
            }
        }
    }
    for task in background {
        task.abort();
        let _ = task.await;
    }
    store.durable().await?;
    Ok(())
}

/// Says, whatever the log filter, what running without API keys means.
fn warn_keyless(addr: std::net::SocketAddr) {
    tracing::warn!(
        target: LIFECYCLE_TARGET,
        "no API key is configured: every caller that can reach {addr} (loopback only) is treated \
         as an admin backend, may call every RPC and read and write every user's private bucket \
         without a client secret; configure --api-key before anything untrusted runs on this host"
    );
}

/// The settings a reload replaces.
struct Reloadable {
    addr: std::net::SocketAddr,
    api_keys: ApiKeys,
    client_secrets: ClientSecrets,
    cors_origins: Live<Vec<String>>,
    /// The TLS certificate new connections get, when serving TLS.
    tls: Option<Live<tokio_rustls::TlsAcceptor>>,
}

async fn apply_reloads(live: Reloadable, reloads: Option<mpsc::UnboundedReceiver<Config>>) {
    let Some(mut reloads) = reloads else {
        return;
    };
    while let Some(config) = reloads.recv().await {
        if config.api_keys.is_empty() && !live.addr.ip().is_loopback() {
            tracing::error!(
                "configuration reload refused: it has no API key, and sessiond listens on {}",
                live.addr
            );
            continue;
        }
        // The TLS files were loaded when this configuration was resolved (a
        // configuration whose files do not load never gets here), so the
        // reload is applied whole.
        let acceptor = match (&live.tls, &config.tls) {
            (Some(_), Some(tls)) => Some(tls.acceptor()),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                tracing::warn!("turning TLS on or off takes a restart; it stays as it started");
                None
            }
        };
        if config.api_keys.is_empty() {
            warn_keyless(live.addr);
        }
        live.api_keys.replace(&config.api_keys);
        live.client_secrets.replace(&config.client_secrets);
        live.cors_origins.set(config.cors_origins.clone());
        let tls = match (&live.tls, acceptor) {
            (Some(current), Some(acceptor)) => {
                current.set(acceptor);
                "reloaded"
            }
            (Some(_), None) => "unchanged",
            (None, _) => "off",
        };
        tracing::info!(
            target: LIFECYCLE_TARGET,
            api_keys = config.api_keys.len(),
            client_secrets = config.client_secrets.len(),
            cors_origins = config.cors_origins.len(),
            tls,
            "configuration reloaded"
        );
    }
}

/// Health follows the store: NOT_SERVING while it refuses writes (its disk
/// is full or failing), SERVING again once it takes them.
async fn report_store_health(
    writable: Option<tokio::sync::watch::Receiver<bool>>,
    health: tonic_health::server::HealthReporter,
) {
    let Some(mut writable) = writable else { return };
    while writable.changed().await.is_ok() {
        let status = if *writable.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in std::iter::once("").chain(SERVICES) {
            health.set_service_status(name, status).await;
        }
    }
}

async fn sweeper(manager: Arc<SessionManager>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match manager.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "swept expired sessions"),
            Err(e) => tracing::error!(error = %e, "sweeping expired sessions failed"),
        }
    }
}

/// Keeps the key ring current: reads it again from the store (keys other
/// replicas added or retired) and rotates or retires keys when due, every
/// [`RELOAD_INTERVAL`](crate::token::keys::RELOAD_INTERVAL). A failure is
/// logged when it starts and when it ends, not on every tick (a database
/// outage would fill the log); the ring in memory keeps serving meanwhile.
async fn key_maintenance(keys: Arc<KeyRing>) {
    let mut tick = tokio::time::interval(crate::token::keys::RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let upkeep = async {
            keys.reload().await?;
            keys.maintain().await
        };
        match upkeep.await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("signing key maintenance works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "signing key maintenance failed; retrying");
            }
            Err(_) => {}
        }
    }
}
