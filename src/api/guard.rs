//! Load shedding and deadlines for sessiond's own services.
//!
//! At most `max_concurrent_requests` calls run at once; a call beyond that
//! is answered at once with RESOURCE_EXHAUSTED (reason OVERLOADED) instead of
//! waiting in an unbounded queue. Each call gets the shorter of the server's
//! request timeout and the client's `grpc-timeout`, and past it answers
//! DEADLINE_EXCEEDED. Health and reflection are exempt: probes must keep
//! answering under load, and their streams are long-lived by design.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::error::Reason;

/// Adds [`Guard`] to the gRPC routes.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl GuardLayer {
    /// At most `concurrency` calls at once, each at most `timeout`.
    pub fn new(concurrency: usize, timeout: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            timeout,
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            permits: self.permits.clone(),
            timeout: self.timeout,
        }
    }
}

/// The guarding service.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

/// The client's `grpc-timeout` (an integer and a unit: H, M, S, m, u, n).
fn client_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn answer(reason: Reason, message: String) -> http::Response<Body> {
    super::error::status(reason, message, Default::default(), None).into_http::<Body>()
}

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !req.uri().path().starts_with("/sessiond.") {
            return Box::pin(inner.call(req));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Box::pin(async {
                Ok(answer(
                    Reason::Overloaded,
                    "sessiond is at its limit of concurrent calls; retry with backoff".to_owned(),
                ))
            });
        };
        let timeout = client_timeout(req.headers()).map_or(self.timeout, |t| t.min(self.timeout));
        Box::pin(async move {
            let result = tokio::time::timeout(timeout, inner.call(req)).await;
            drop(permit);
            match result {
                Ok(response) => response,
                Err(_) => Ok(answer(
                    Reason::Timeout,
                    format!("the call did not finish within {timeout:?}"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            client_timeout(&h)
        };
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("150m"), Some(Duration::from_millis(150)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5x"), None);
        assert_eq!(t("S"), None);
    }
}
