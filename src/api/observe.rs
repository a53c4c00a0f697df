//! Per-request observation of the gRPC routes: a tracing span per call
//! (RPC, tenant, status code) and the request counter and latency histogram.
//!
//! The status of a unary gRPC call arrives either in the response headers
//! (a trailers-only answer, which is how tonic sends errors) or in the
//! trailers at the end of the body, so the body is wrapped to catch it. A
//! call whose body is dropped before its status counts as CANCELLED.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderMap;
use http_body::{Body, Frame};
use prost::Message;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::{Metrics, RpcLabels};

/// The gRPC status code names, indexed by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_name(headers: &HeaderMap) -> Option<&'static str> {
    let code: usize = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(CODE_NAMES.get(code).copied().unwrap_or("UNKNOWN"))
}

/// Every `/package.Service/Method` path the server serves, from the
/// descriptor sets it publishes by reflection, with its (service, method)
/// labels. Built once; the labels live for the whole process.
fn known_methods() -> &'static HashMap<String, (&'static str, &'static str)> {
    static METHODS: OnceLock<HashMap<String, (&'static str, &'static str)>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let sets: [&[u8]; 5] = [
            crate::pb::FILE_DESCRIPTOR_SET,
            crate::pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashMap::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name: &'static str = Box::leak(
                        format!("{package}.{}", service.name.unwrap_or_default()).into_boxed_str(),
                    );
                    for method in service.method {
                        let method_name: &'static str =
                            Box::leak(method.name.unwrap_or_default().into_boxed_str());
                        methods.insert(
                            format!("/{service_name}/{method_name}"),
                            (service_name, method_name),
                        );
                    }
                }
            }
        }
        methods
    })
}

/// The (service, method) labels of a path; unknown paths share one label.
fn labels_for(path: &str) -> (&'static str, &'static str) {
    known_methods()
        .get(path)
        .copied()
        .unwrap_or(("unknown", "unknown"))
}

/// Adds [`Observe`] to the gRPC routes.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    /// Observes into `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The observing service.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Records one call exactly once.
struct Recorder {
    metrics: Arc<Metrics>,
    service: &'static str,
    method: &'static str,
    start: Instant,
    span: tracing::Span,
}

impl Recorder {
    fn finish(self, code: &'static str) {
        let elapsed = self.start.elapsed();
        self.span.record("code", code);
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        if matches!(code, "INTERNAL" | "UNKNOWN" | "DATA_LOSS") {
            tracing::warn!(parent: &self.span, code, elapsed_ms, "rpc failed inside sessiond");
        } else {
            tracing::debug!(parent: &self.span, code, elapsed_ms, "rpc finished");
        }
        self.metrics.rpc(
            RpcLabels {
                service: self.service,
                method: self.method,
                code,
            },
            elapsed,
        );
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = labels_for(req.uri().path());
        let span = tracing::info_span!(
            "rpc",
            service,
            method,
            tenant = tracing::field::Empty,
            code = tracing::field::Empty,
            // A gateway check's route and decision (`api::authz`).
            host = tracing::field::Empty,
            path = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let recorder = Recorder {
            metrics: self.metrics.clone(),
            service,
            method,
            start: Instant::now(),
            span: span.clone(),
        };
        // The clone that was made ready serves this call; the fresh clone
        // waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(req).instrument(span);
        Box::pin(async move {
            let response = future.await?;
            let recorder = match code_name(response.headers()) {
                Some(code) => {
                    recorder.finish(code);
                    None
                }
                None => Some(recorder),
            };
            Ok(response.map(|inner| ObservedBody { inner, recorder }))
        })
    }
}

/// A response body that records the call when its trailers pass.
pub struct ObservedBody<B> {
    inner: B,
    recorder: Option<Recorder>,
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(recorder) = self.recorder.take()
                {
                    recorder.finish(code_name(trailers).unwrap_or("UNKNOWN"));
                }
            }
            Poll::Ready(None) => {
                if let Some(recorder) = self.recorder.take() {
                    recorder.finish("UNKNOWN");
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            recorder.finish("CANCELLED");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_come_from_the_descriptors() {
        assert_eq!(
            labels_for("/sessiond.v1.SessionService/CreateNewSession"),
            ("sessiond.v1.SessionService", "CreateNewSession")
        );
        assert_eq!(labels_for("/grpc.health.v1.Health/Check").1, "Check");
        assert_eq!(labels_for("/sessiond.v1.SessionService/Nope").0, "unknown");
        assert_eq!(labels_for("/../etc").0, "unknown");
    }
}
