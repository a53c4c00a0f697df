//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! Names follow Prometheus conventions: a `sessiond_` prefix, `_total` on
//! counters, base units (`_seconds`, `_bytes`). Label values come from small
//! fixed sets (known RPCs, gRPC codes, outcomes), never from request data, so
//! a caller cannot blow up the number of series.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::Store;

/// Labels of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// Fully qualified service, such as `sessiond.v1.SessionService`.
    pub service: &'static str,
    /// Method, such as `CreateNewSession`.
    pub method: &'static str,
    /// gRPC status code name, such as `OK` or `UNAUTHENTICATED`.
    pub code: &'static str,
}

/// Labels of why sessions ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Labels of outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: &'static str,
}

/// Labels of gateway check decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// The front end that asked: `grpc` (ext_authz) or `http` (`/authz`).
    pub front: &'static str,
    /// What it answered.
    pub outcome: &'static str,
}

/// Labels of gateway check latencies.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontLabels {
    /// The front end that asked.
    pub front: &'static str,
}

/// Counts and times one front end's gateway checks ([`Metrics::authz`]).
#[derive(Debug, Clone)]
pub struct AuthzRecorder {
    /// One series per outcome, in the order the outcomes were given.
    decisions: Vec<Counter>,
    latency: Histogram,
}

impl AuthzRecorder {
    /// A check ended with outcome number `outcome` (in the list given to
    /// [`Metrics::authz`]) after `elapsed`.
    pub fn record(&self, outcome: usize, elapsed: Duration) {
        if let Some(counter) = self.decisions.get(outcome) {
            counter.inc();
        }
        self.latency.observe(elapsed.as_secs_f64());
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    latency: HistogramFamily<RpcLabels>,
    sessions: Gauge,
    refreshes: Family<OutcomeLabels, Counter>,
    thefts: Counter,
    revocations: Counter,
    swept: Counter,
    evicted: Counter,
    ended: Family<ReasonLabels, Counter>,
    key_rotations: Counter,
    flushes: Histogram,
    store_bytes: Gauge,
    store_writable: Gauge,
    claim_provider_calls: Family<OutcomeLabels, Counter>,
    authz_decisions: Family<AuthzLabels, Counter>,
    authz_latency: HistogramFamily<FrontLabels>,
    store: OnceLock<Weak<dyn Store>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "sessiond_grpc_requests",
            "gRPC requests handled, by service, method and status code",
            requests.clone(),
        );
        let latency: HistogramFamily<RpcLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "sessiond_grpc_request_duration_seconds",
            "Time from a request's arrival to its status, by service, method and status code",
            latency.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "sessiond_sessions_live",
            "Sessions in the store (an expired session counts until the sweeper removes it)",
            sessions.clone(),
        );
        let refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sessiond_refreshes",
            "RefreshSession calls by outcome: rotated, retried (previous token within the grace period), \
             theft, rejected",
            refreshes.clone(),
        );
        let thefts = Counter::default();
        registry.register(
            "sessiond_token_theft_detections",
            "Reuses of rotated-out refresh tokens (each revoked its session)",
            thefts.clone(),
        );
        let revocations = Counter::default();
        registry.register(
            "sessiond_revocations",
            "Sessions revoked by RevokeSession, RevokeMultipleSessions and RevokeAllSessionsForUser",
            revocations.clone(),
        );
        let swept = Counter::default();
        registry.register(
            "sessiond_sessions_swept",
            "Expired sessions removed by the sweeper",
            swept.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "sessiond_sessions_evicted",
            "Sessions ended to make room for a new one under --max-sessions-per-user",
            evicted.clone(),
        );
        let ended = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sessiond_sessions_expired",
            "Sessions found over and removed, by why they ended: idle (--session-idle-timeout), \
             lifetime (--session-max-lifetime) or refresh (the refresh token expired unused)",
            ended.clone(),
        );
        let key_rotations = Counter::default();
        registry.register(
            "sessiond_key_rotations",
            "Rotating signing keys published (scheduled or requested)",
            key_rotations.clone(),
        );
        let flushes = latency_histogram();
        registry.register(
            "sessiond_store_flush_duration_seconds",
            "Duration of store flushes (one flush serves every write queued before it)",
            flushes.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "sessiond_store_size_bytes",
            "Size of the store on disk",
            store_bytes.clone(),
        );
        let store_writable = Gauge::default();
        registry.register(
            "sessiond_store_writable",
            "1 while the store takes writes; 0 while its disk refuses them (a full disk, an I/O \
             error), when writes answer UNAVAILABLE and health is NOT_SERVING",
            store_writable.clone(),
        );
        let claim_provider_calls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "sessiond_claim_provider_calls",
            "Calls to application ClaimProviders by outcome: value, no_value, error",
            claim_provider_calls.clone(),
        );
        let authz_decisions = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "sessiond_authz_decisions",
            "Gateway checks by front end (grpc: ext_authz Check, http: /authz) and outcome: \
             allowed, unauthorised, try_refresh_token, invalid_claims, bad_policy, \
             store_unavailable, error",
            authz_decisions.clone(),
        );
        let authz_latency: HistogramFamily<FrontLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "sessiond_authz_decision_duration_seconds",
            "Time a gateway check's decision took, by front end",
            authz_latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            sessions,
            refreshes,
            thefts,
            revocations,
            swept,
            evicted,
            ended,
            key_rotations,
            flushes,
            store_bytes,
            store_writable,
            claim_provider_calls,
            authz_decisions,
            authz_latency,
            store: OnceLock::new(),
        }
    }

    /// Shared metrics.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// The store whose session count and size on disk are read at each
    /// scrape.
    pub fn set_store(&self, store: Weak<dyn Store>) {
        let _ = self.store.set(store);
    }

    /// Records a finished gRPC call.
    pub fn rpc(&self, labels: RpcLabels, elapsed: Duration) {
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// A refresh finished with `outcome`.
    pub fn refresh(&self, outcome: &'static str) {
        self.refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if outcome == "theft" {
            self.thefts.inc();
        }
    }

    /// Sessions revoked on request.
    pub fn revoked(&self, n: u64) {
        self.revocations.inc_by(n);
    }

    /// Sessions swept.
    pub fn swept(&self, n: u64) {
        self.swept.inc_by(n);
    }

    /// Sessions ended to make room under the per-user limit.
    pub fn evicted(&self, n: u64) {
        self.evicted.inc_by(n);
    }

    /// A session found over for `reason` (idle, lifetime, refresh) and removed.
    pub fn expired(&self, reason: &'static str) {
        self.ended.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A rotating key was published.
    pub fn key_rotated(&self) {
        self.key_rotations.inc();
    }

    /// A store flush took `elapsed`.
    pub fn flushed(&self, elapsed: Duration) {
        self.flushes.observe(elapsed.as_secs_f64());
    }

    /// A ClaimProvider call ended with `outcome`.
    pub fn claim_provider_call(&self, outcome: &'static str) {
        self.claim_provider_calls
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The recorder of `front`'s gateway checks ending in one of
    /// `outcomes`, its series resolved once (a check is as frequent as a
    /// call can be).
    pub fn authz(&self, front: &'static str, outcomes: &[&'static str]) -> AuthzRecorder {
        AuthzRecorder {
            decisions: outcomes
                .iter()
                .map(|&outcome| {
                    self.authz_decisions
                        .get_or_create(&AuthzLabels { front, outcome })
                        .clone()
                })
                .collect(),
            latency: self
                .authz_latency
                .get_or_create(&FrontLabels { front })
                .clone(),
        }
    }

    /// The metrics in the text exposition format.
    pub async fn encode(&self) -> String {
        let store = self.store.get().and_then(Weak::upgrade);
        if let Some(store) = store {
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            if let Ok(n) = store.count_sessions().await {
                self.sessions.set(gauge(n));
            }
            if let Ok(size) = store.size_on_disk().await {
                self.store_bytes.set(gauge(size));
            }
            let writable = store.writable().await.is_none_or(|w| *w.borrow());
            self.store_writable.set(i64::from(writable));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
