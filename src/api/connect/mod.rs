//! The Connect protocol (<https://connectrpc.com/docs/protocol>) on the gRPC
//! routes, so that `buf curl`, whose default protocol is Connect, and
//! Connect clients with their default settings reach sessiond.
//!
//! [`ConnectLayer`] sits outside gRPC-Web, observation, authentication and
//! the guard. It rewrites a Connect request into the gRPC request it stands
//! for, sends that through the same stack as every gRPC call, and rewrites
//! the gRPC answer into Connect's. It owns the translation only: it never
//! decides a call or answers in a service's place, and it leaves gRPC,
//! gRPC-Web and anything else it does not recognise untouched.
//!
//! - Unary (`application/proto`, `application/json`): the bare message is
//!   enveloped for gRPC; the answer is the bare message, or a Connect error
//!   (JSON, with the HTTP status of its code) that carries every
//!   `google.rpc` detail of the gRPC status.
//! - Streaming (`application/connect+proto`, `application/connect+json`):
//!   envelopes pass through as they come (JSON ones transcoded one by one),
//!   and the gRPC trailers become Connect's end-of-stream message. Server
//!   reflection, which `buf curl` calls first, is a bidirectional stream.
//! - JSON follows the protobuf JSON mapping over the descriptors the server
//!   publishes by reflection; an unknown field is refused, as the mapping
//!   asks by default, so a misspelt field is named instead of ignored.
//! - Not served: compressed messages (only `identity`) and Connect's GET
//!   requests; both are refused with a Connect error saying so.
//!
//! The request body of a unary call is bounded by `--max-message-size`, and
//! so is every message of a stream.
//!
//! # Layout
//!
//! - this file: the tower layer and service, which sort calls and pass
//!   everything that is not Connect on untouched;
//! - `request`: recognising Connect and rewriting its headers for gRPC;
//! - `unary` and `stream`: the two kinds of call;
//! - `codec`: envelopes, and JSON to and from protobuf;
//! - `errors`: gRPC statuses as Connect errors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::Status;
use tower::{Layer, Service};

mod codec;
mod errors;
mod request;
mod stream;
mod unary;

#[cfg(test)]
mod tests;

use errors::{CallStatus, stream_error, unary_error, unsupported_media_type};
use request::{Codec, Kind, classify};

/// The header that marks Connect traffic.
const PROTOCOL_VERSION: &str = "connect-protocol-version";
/// The Connect deadline, in milliseconds.
const TIMEOUT_MS: &str = "connect-timeout-ms";
/// How a stream's messages are compressed.
const STREAM_ENCODING: &str = "connect-content-encoding";
/// What a refused content type is told to use instead.
const ACCEPTED_TYPES: &str =
    "application/proto, application/json, application/connect+proto, application/connect+json";

/// Envelope flag: the message is Connect's end of stream.
const FLAG_END_STREAM: u8 = 0x02;

/// Base64 for binary values: written unpadded, as Connect asks; read with or
/// without padding.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The descriptors JSON is transcoded with: the ones reflection publishes
/// (sessiond's, `google.rpc`, health, Envoy's external authorization) and
/// reflection's own.
pub fn descriptors() -> Result<DescriptorPool, String> {
    let sets: [&[u8]; 6] = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        // After tonic-types' set, whose `status.proto` it imports.
        crate::pb::ENVOY_AUTHZ_FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    // The sets share imports (google/protobuf/*.proto), each compiled on
    // its own: the first copy of a file is kept.
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(set).map_err(|e| e.to_string())?;
        for file in set.file {
            if seen.insert(file.name().to_owned()) {
                files.push(file);
            }
        }
    }
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_set(prost_types::FileDescriptorSet { file: files })
        .map_err(|e| e.to_string())?;
    Ok(pool)
}

/// Adds [`Connect`] in front of the gRPC routes.
#[derive(Debug, Clone)]
pub struct ConnectLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: DescriptorPool,
    /// Largest request message, in bytes.
    max_message: usize,
}

impl ConnectLayer {
    /// Translates Connect calls whose messages are at most
    /// `max_message_bytes`, transcoding JSON with `pool` ([`descriptors`]).
    pub fn new(pool: DescriptorPool, max_message_bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                max_message: max_message_bytes,
            }),
        }
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = Connect<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Connect {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The translating service.
#[derive(Debug, Clone)]
pub struct Connect<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Connect<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let kind = classify(req.method(), req.headers(), req.uri().query());
        // The clone that was made ready serves this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        match kind {
            Kind::Other => {
                let mut inner = inner;
                Box::pin(inner.call(req))
            }
            Kind::Unary(codec) => Box::pin(unary::call(inner, shared, req, codec)),
            Kind::Stream(codec) => Box::pin(stream::call(inner, shared, req, codec)),
            Kind::Unsupported(content_type) => {
                Box::pin(async move { Ok(unsupported_media_type(&content_type)) })
            }
            Kind::Get => Box::pin(async move {
                let status = not_served(
                    "sessiond serves Connect calls as POST only (Connect GET requests are not served)",
                );
                let mut response = unary_error(None, &CallStatus::from(&status), HeaderMap::new());
                *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                Ok(response)
            }),
        }
    }
}

/// UNIMPLEMENTED (reason UNIMPLEMENTED) for a form of call sessiond does not
/// take: Connect GET, a compressed body, a stream called as unary.
fn not_served(message: impl Into<String>) -> Status {
    crate::api::error::status(
        crate::error::Reason::Unimplemented,
        message,
        std::collections::HashMap::new(),
        None,
    )
}

/// A Connect call to a path no route serves (the router's fallback): the
/// Connect answer for an unknown method, or `None` when the request is not
/// Connect.
pub fn unknown_path(path: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    // A JSON post is Connect only when it says so; protobuf and the
    // streaming types are Connect's own.
    let kind = classify(&Method::POST, headers, None);
    let connect = headers.contains_key(PROTOCOL_VERSION)
        || match &kind {
            Kind::Unary(codec) => *codec == Codec::Proto,
            Kind::Stream(_) => true,
            Kind::Unsupported(content_type) => content_type
                .to_ascii_lowercase()
                .starts_with("application/connect+"),
            Kind::Other | Kind::Get => false,
        };
    if !connect {
        return None;
    }
    let status = CallStatus::from(&crate::api::details::unimplemented(path));
    match kind {
        Kind::Unary(_) => Some(unary_error(None, &status, HeaderMap::new())),
        Kind::Stream(codec) => Some(stream_error(None, codec, &status)),
        Kind::Unsupported(content_type) => Some(unsupported_media_type(&content_type)),
        Kind::Other | Kind::Get => None,
    }
}

impl Shared {
    /// The method a `/package.Service/Method` path names, if published.
    pub(super) fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }
}
