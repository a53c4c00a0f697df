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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::{Code, Status};
use tower::{Layer, Service};

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

/// How messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    Proto,
    Json,
}

impl Codec {
    fn unary_type(self) -> &'static str {
        match self {
            Self::Proto => "application/proto",
            Self::Json => "application/json",
        }
    }

    fn stream_type(self) -> &'static str {
        match self {
            Self::Proto => "application/connect+proto",
            Self::Json => "application/connect+json",
        }
    }
}

/// What a request is, as far as Connect goes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// gRPC, gRPC-Web or anything else: passed on untouched.
    Other,
    /// A unary Connect call.
    Unary(Codec),
    /// A streaming Connect call.
    Stream(Codec),
    /// A Connect call in a codec sessiond does not speak (the content type).
    Unsupported(String),
    /// A Connect GET request.
    Get,
}

/// Sorts a request by its method, content type and Connect headers.
fn classify(method: &Method, headers: &HeaderMap, query: Option<&str>) -> Kind {
    if method == Method::GET {
        let connect = query.is_some_and(|q| q.split('&').any(|p| p == "connect=v1"));
        return if connect { Kind::Get } else { Kind::Other };
    }
    if method != Method::POST {
        return Kind::Other;
    }
    let marked = headers.contains_key(PROTOCOL_VERSION);
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return if marked {
            Kind::Unsupported(String::new())
        } else {
            Kind::Other
        };
    };
    let mut params = content_type.split(';');
    let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
    // JSON is UTF-8; a charset parameter may say so, and nothing else.
    let utf8 = params.all(|p| match p.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    match media.as_str() {
        "application/proto" => Kind::Unary(Codec::Proto),
        "application/json" if utf8 => Kind::Unary(Codec::Json),
        "application/connect+proto" => Kind::Stream(Codec::Proto),
        "application/connect+json" if utf8 => Kind::Stream(Codec::Json),
        "application/json" | "application/connect+json" => {
            Kind::Unsupported(content_type.to_owned())
        }
        m if m.starts_with("application/connect+") => Kind::Unsupported(content_type.to_owned()),
        _ if marked => Kind::Unsupported(content_type.to_owned()),
        _ => Kind::Other,
    }
}

/// The descriptors JSON is transcoded with: the ones reflection publishes
/// (sessiond's, `google.rpc`, health) and reflection's own.
pub fn descriptors() -> Result<DescriptorPool, String> {
    let sets: [&[u8]; 5] = [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
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
            Kind::Unary(codec) => Box::pin(unary(inner, shared, req, codec)),
            Kind::Stream(codec) => Box::pin(stream(inner, shared, req, codec)),
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
    super::error::status(
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
    let status = CallStatus::from(&super::details::unimplemented(path));
    match kind {
        Kind::Unary(_) => Some(unary_error(None, &status, HeaderMap::new())),
        Kind::Stream(codec) => Some(stream_error(None, codec, &status)),
        Kind::Unsupported(content_type) => Some(unsupported_media_type(&content_type)),
        Kind::Other | Kind::Get => None,
    }
}

impl Shared {
    /// The method a `/package.Service/Method` path names, if published.
    fn method(&self, path: &str) -> Option<MethodDescriptor> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        self.pool
            .get_service_by_name(service)?
            .methods()
            .find(|m| m.name() == method)
    }
}

/// A gRPC status as it reached the client, with its decoded details.
#[derive(Debug, Clone)]
struct CallStatus {
    code: Code,
    message: String,
    details: Vec<prost_types::Any>,
}

impl From<&Status> for CallStatus {
    /// Every error carries ErrorInfo, those made here included.
    fn from(status: &Status) -> Self {
        let status = super::details::described(status.clone(), "");
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            details: decode_details(status.details()),
        }
    }
}

impl CallStatus {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Self::from(&Status::new(code, message))
    }

    /// The status in `grpc-status`, `grpc-message` and
    /// `grpc-status-details-bin`, if `headers` have one.
    fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let code = headers.get("grpc-status")?;
        let code = std::str::from_utf8(code.as_bytes())
            .ok()
            .and_then(|c| c.trim().parse::<i32>().ok())
            .map_or(Code::Unknown, Code::from_i32);
        let message = headers
            .get("grpc-message")
            .map(|m| percent_decode(m.as_bytes()))
            .unwrap_or_default();
        let details = headers
            .get("grpc-status-details-bin")
            .and_then(|d| BASE64.decode(d.as_bytes()).ok())
            .map(|d| decode_details(&d))
            .unwrap_or_default();
        Some(Self {
            code,
            message,
            details,
        })
    }
}

/// The details of an encoded `google.rpc.Status`.
fn decode_details(bytes: &[u8]) -> Vec<prost_types::Any> {
    if bytes.is_empty() {
        return Vec::new();
    }
    tonic_types::pb::Status::decode(bytes)
        .map(|s| s.details)
        .unwrap_or_default()
}

/// `grpc-message` is percent-encoded UTF-8.
fn percent_decode(bytes: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Connect's name of a gRPC code.
fn code_name(code: Code) -> &'static str {
    match code {
        // OK never reaches here; were it to, it is no Connect error code.
        Code::Ok | Code::Unknown => "unknown",
        Code::Cancelled => "canceled",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status of a Connect error code (the protocol's table).
fn http_status(code: Code) -> StatusCode {
    let status = match code {
        Code::Cancelled => 499,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
    };
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Connect's JSON error, fields in the order people read them.
#[derive(Debug, serde::Serialize)]
struct ConnectError<'a> {
    code: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    details: Vec<Detail<'a>>,
}

/// One error detail: its type, its bytes, and its JSON form for readers.
#[derive(Debug, serde::Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    type_name: &'a str,
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    debug: Option<serde_json::Value>,
}

/// Connect's JSON error: code, message and every detail (`type`, base64
/// `value`, and, for a type in `pool`, its JSON form as `debug`).
fn error_json<'a>(pool: Option<&DescriptorPool>, status: &'a CallStatus) -> ConnectError<'a> {
    let message = match (status.code, status.message.is_empty()) {
        (Code::Unimplemented, true) => "no such service or method",
        _ => status.message.as_str(),
    };
    let details = status
        .details
        .iter()
        .map(|any| {
            let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
            let debug = pool
                .and_then(|p| p.get_message_by_name(type_name))
                .and_then(|d| DynamicMessage::decode(d, any.value.as_slice()).ok())
                .and_then(|m| serde_json::to_value(&m).ok());
            Detail {
                type_name,
                value: BASE64.encode(&any.value),
                debug,
            }
        })
        .collect();
    ConnectError {
        code: code_name(status.code),
        message,
        details,
    }
}

/// A unary Connect error: its HTTP status, `application/json`, the error.
fn unary_error(
    pool: Option<&DescriptorPool>,
    status: &CallStatus,
    mut headers: HeaderMap,
) -> Response<Body> {
    let body = serde_json::to_vec(&error_json(pool, status)).unwrap_or_default();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = http_status(status.code);
    *response.headers_mut() = headers;
    response
}

/// A stream refused before it started: HTTP 200 (streams always are) and
/// the end-of-stream message with the error.
fn stream_error(
    pool: Option<&DescriptorPool>,
    codec: Codec,
    status: &CallStatus,
) -> Response<Body> {
    let mut response = Response::new(Body::from(end_stream(
        pool,
        Some(status),
        &HeaderMap::new(),
    )));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.stream_type()),
    );
    response
}

/// 415 for a content type sessiond does not speak, naming the ones it does.
fn unsupported_media_type(content_type: &str) -> Response<Body> {
    let shown = if content_type.is_empty() {
        "no content-type".to_owned()
    } else {
        format!("content-type `{content_type}`")
    };
    let status = CallStatus::new(
        Code::Unimplemented,
        format!("{shown} is not supported for Connect calls; use one of {ACCEPTED_TYPES}"),
    );
    let mut response = unary_error(None, &status, HeaderMap::new());
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response.headers_mut().insert(
        HeaderName::from_static("accept-post"),
        HeaderValue::from_static(ACCEPTED_TYPES),
    );
    response
}

/// Refuses a compressed body: only `identity` is served.
fn check_encoding(headers: &HeaderMap, name: &str) -> Result<(), Status> {
    match headers.get(name).map(|v| v.to_str().map(str::trim)) {
        None => Ok(()),
        Some(Ok(e)) if e.is_empty() || e.eq_ignore_ascii_case("identity") => Ok(()),
        Some(v) => Err(not_served(format!(
            "{name} {} is not supported; sessiond accepts identity (uncompressed) only",
            v.map_or_else(|_| "(not ASCII)".to_owned(), |e| format!("`{e}`"))
        ))),
    }
}

/// `connect-protocol-version`, when sent, must be 1.
fn check_version(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get(PROTOCOL_VERSION) {
        None => Ok(()),
        Some(v) if v.as_bytes().trim_ascii() == b"1" => Ok(()),
        Some(_) => Err(super::error::invalid(
            PROTOCOL_VERSION,
            "must be 1, the only version of the Connect protocol sessiond speaks",
        )),
    }
}

/// `connect-timeout-ms` as a `grpc-timeout` value.
fn grpc_timeout(headers: &HeaderMap) -> Result<Option<HeaderValue>, Status> {
    let Some(value) = headers.get(TIMEOUT_MS) else {
        return Ok(None);
    };
    let bad = || {
        super::error::invalid(
            TIMEOUT_MS,
            "must be a positive number of milliseconds, at most 10 digits",
        )
    };
    let digits = value.as_bytes().trim_ascii();
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let ms: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(bad)?;
    if ms == 0 {
        return Err(bad());
    }
    // gRPC allows 8 digits: past that, whole seconds (rounded up).
    let timeout = if ms <= 99_999_999 {
        format!("{ms}m")
    } else {
        format!("{}S", ms.div_ceil(1000))
    };
    HeaderValue::from_str(&timeout).map(Some).map_err(|_| bad())
}

/// The gRPC request a Connect one stands for: same path, metadata and
/// extensions; gRPC's content type, `te` and deadline; the Connect and
/// hop-by-hop headers dropped. Marked HTTP/2, as gRPC is (gRPC-Web's layer
/// passes HTTP/2 gRPC through and refuses it over HTTP/1.1).
fn grpc_request(
    mut parts: http::request::Parts,
    body: Body,
    timeout: Option<HeaderValue>,
) -> Request<Body> {
    let headers = &mut parts.headers;
    let dropped: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with("connect-")
                || name.starts_with("grpc-")
                || matches!(
                    name,
                    "content-type"
                        | "content-length"
                        | "content-encoding"
                        | "accept-encoding"
                        | "transfer-encoding"
                        | "connection"
                        | "keep-alive"
                        | "upgrade"
                        | "te"
                )
        })
        .cloned()
        .collect();
    for name in dropped {
        headers.remove(name);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc+proto"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(timeout) = timeout {
        headers.insert(HeaderName::from_static("grpc-timeout"), timeout);
    }
    parts.method = Method::POST;
    parts.version = Version::HTTP_2;
    Request::from_parts(parts, body)
}

/// Response headers a Connect client should see: the gRPC metadata, less
/// gRPC's own headers.
fn leading_metadata(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if n.starts_with("grpc-")
            || matches!(
                n,
                "content-type" | "content-length" | "te" | "trailer" | "transfer-encoding"
            )
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// Trailers other than the gRPC status, by name.
fn trailing_metadata(trailers: &HeaderMap) -> Vec<(&HeaderName, &HeaderValue)> {
    trailers
        .iter()
        .filter(|(name, _)| !name.as_str().starts_with("grpc-"))
        .collect()
}

/// One gRPC / Connect envelope.
fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[flags]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// The length the envelope at the front of `buf` announces, once its
/// header is in.
fn announced(buf: &[u8]) -> Option<usize> {
    let header: [u8; 4] = buf.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

/// Takes the envelope at the front of `buf` when it is whole: its flags and
/// its message.
fn take_envelope(buf: &mut BytesMut) -> Option<(u8, Bytes)> {
    let len = announced(buf)?;
    if buf.len() < 5 + len {
        return None;
    }
    let flags = buf[0];
    buf.advance(5);
    Some((flags, buf.split_to(len).freeze()))
}

/// Connect's end-of-stream message.
#[derive(Debug, serde::Serialize)]
struct EndStream<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ConnectError<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<&'a str, Vec<&'a str>>,
}

/// Connect's end-of-stream message: the error, if any, and the trailers.
fn end_stream(
    pool: Option<&DescriptorPool>,
    status: Option<&CallStatus>,
    trailers: &HeaderMap,
) -> Bytes {
    let mut metadata: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in trailing_metadata(trailers) {
        if let Ok(value) = value.to_str() {
            metadata.entry(name.as_str()).or_default().push(value);
        }
    }
    let end = EndStream {
        error: status
            .filter(|s| s.code != Code::Ok)
            .map(|s| error_json(pool, s)),
        metadata,
    };
    let json = serde_json::to_vec(&end).unwrap_or_else(|_| b"{}".to_vec());
    envelope(FLAG_END_STREAM, &json)
}

/// A JSON message as protobuf; an empty body is the empty message, as it
/// is in protobuf.
fn json_to_proto(desc: &MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, Status> {
    let json = if json.trim_ascii().is_empty() {
        b"{}".as_slice()
    } else {
        json
    };
    let mut de = serde_json::Deserializer::from_slice(json);
    DynamicMessage::deserialize(desc.clone(), &mut de)
        .and_then(|m| de.end().map(|()| m))
        .map(|m| m.encode_to_vec())
        .map_err(|e| {
            super::error::invalid(
                "request",
                &format!("is not valid JSON for {}: {e}", desc.full_name()),
            )
        })
}

/// A protobuf message as JSON (the protobuf JSON mapping).
fn proto_to_json(desc: &MessageDescriptor, proto: &[u8]) -> Result<Vec<u8>, Status> {
    DynamicMessage::decode(desc.clone(), proto)
        .map_err(|e| e.to_string())
        .and_then(|m| serde_json::to_vec(&m).map_err(|e| e.to_string()))
        .map_err(|e| {
            tracing::error!(message = desc.full_name(), error = %e, "a response did not transcode to JSON");
            Status::internal("the response could not be written as JSON")
        })
}

/// Reads a unary request body, refusing one larger than `max` bytes without
/// reading on.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, Status> {
    let too_large = || {
        Status::out_of_range(format!(
            "request: the body is too large: more than {max} bytes (the server's --max-message-size)"
        ))
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Status::invalid_argument(format!("request: the body could not be read: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// A unary Connect call.
async fn unary<S>(
    mut inner: S,
    shared: Arc<Shared>,
    req: Request<Body>,
    codec: Codec,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let (parts, body) = req.into_parts();
    let refuse = |status: Status| {
        Ok(unary_error(
            Some(&shared.pool),
            &(&status).into(),
            HeaderMap::new(),
        ))
    };
    let checked = check_version(&parts.headers)
        .and_then(|()| check_encoding(&parts.headers, "content-encoding"))
        .and_then(|()| grpc_timeout(&parts.headers));
    let timeout = match checked {
        Ok(timeout) => timeout,
        Err(status) => return refuse(status),
    };
    let method = shared.method(parts.uri.path());
    if let Some(m) = &method
        && (m.is_client_streaming() || m.is_server_streaming())
    {
        return refuse(not_served(format!(
            "{} is a streaming method: call it with content-type {}",
            m.full_name(),
            codec.stream_type()
        )));
    }
    let body = match read_body(&parts.headers, body, shared.max_message).await {
        Ok(body) => body,
        Err(status) => return refuse(status),
    };
    let message = match (codec, &method) {
        (Codec::Proto, _) => body.to_vec(),
        // Without the method's types there is nothing to transcode with:
        // the answer gRPC would give.
        (Codec::Json, None) => return refuse(super::details::unimplemented(parts.uri.path())),
        (Codec::Json, Some(m)) => match json_to_proto(&m.input(), &body) {
            Ok(message) => message,
            Err(status) => return refuse(status),
        },
    };
    let request = grpc_request(parts, Body::from(envelope(0, &message)), timeout);
    let response = inner.call(request).await?;
    Ok(unary_response(&shared, response, codec, method.as_ref()).await)
}

/// The Connect answer to a unary call from the gRPC one.
async fn unary_response(
    shared: &Shared,
    response: Response<Body>,
    codec: Codec,
    method: Option<&MethodDescriptor>,
) -> Response<Body> {
    let pool = Some(&shared.pool);
    let (parts, body) = response.into_parts();
    let mut headers = leading_metadata(&parts.headers);
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(e) => {
            let status = CallStatus::new(Code::Unknown, format!("the call failed: {e}"));
            return unary_error(pool, &status, headers);
        }
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes();
    for (name, value) in trailing_metadata(&trailers) {
        if let Ok(name) = HeaderName::from_bytes(format!("trailer-{name}").as_bytes()) {
            headers.append(name, value.clone());
        }
    }
    let status = CallStatus::from_headers(&trailers)
        .or_else(|| CallStatus::from_headers(&parts.headers))
        .unwrap_or_else(|| CallStatus::new(Code::Unknown, "the call ended without a status"));
    if status.code != Code::Ok {
        return unary_error(pool, &status, headers);
    }
    let mut data = BytesMut::from(data);
    let message = match take_envelope(&mut data) {
        Some((0, message)) if data.is_empty() => message,
        _ => {
            tracing::error!("a unary gRPC response was not one uncompressed message");
            let status = CallStatus::new(Code::Internal, "the response was malformed");
            return unary_error(pool, &status, headers);
        }
    };
    let body = match (codec, method) {
        (Codec::Proto, _) => message,
        (Codec::Json, Some(m)) => match proto_to_json(&m.output(), &message) {
            Ok(json) => json.into(),
            Err(status) => return unary_error(pool, &(&status).into(), headers),
        },
        (Codec::Json, None) => {
            let status = CallStatus::new(Code::Internal, "the response type is unknown");
            return unary_error(pool, &status, headers);
        }
    };
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.unary_type()),
    );
    let mut response = Response::new(Body::from(body));
    *response.headers_mut() = headers;
    response
}

/// A streaming Connect call.
async fn stream<S>(
    mut inner: S,
    shared: Arc<Shared>,
    req: Request<Body>,
    codec: Codec,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    let (parts, body) = req.into_parts();
    let refuse = |status: Status| Ok(stream_error(Some(&shared.pool), codec, &(&status).into()));
    let checked = check_version(&parts.headers)
        .and_then(|()| check_encoding(&parts.headers, STREAM_ENCODING))
        .and_then(|()| grpc_timeout(&parts.headers));
    let timeout = match checked {
        Ok(timeout) => timeout,
        Err(status) => return refuse(status),
    };
    let method = shared.method(parts.uri.path());
    let types = match (codec, &method) {
        (Codec::Proto, _) => None,
        (Codec::Json, Some(m)) => Some((m.input(), m.output())),
        (Codec::Json, None) => return refuse(super::details::unimplemented(parts.uri.path())),
    };
    let (input, output) = types.unzip();
    let request_failed = Arc::new(OnceLock::new());
    let body = Body::new(RequestFrames {
        inner: body,
        buf: BytesMut::new(),
        input,
        max: shared.max_message,
        failed: request_failed.clone(),
    });
    let response = inner.call(grpc_request(parts, body, timeout)).await?;
    let (parts, body) = response.into_parts();
    let mut headers = leading_metadata(&parts.headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(codec.stream_type()),
    );
    // A gRPC answer with its status in the headers has no messages.
    let body = match CallStatus::from_headers(&parts.headers) {
        Some(status) => Body::from(end_stream(
            Some(&shared.pool),
            Some(settle(&status, &request_failed)),
            &HeaderMap::new(),
        )),
        None => Body::new(ResponseFrames {
            inner: body,
            buf: BytesMut::new(),
            output,
            shared: shared.clone(),
            request_failed,
            done: false,
        }),
    };
    let mut response = Response::new(body);
    *response.headers_mut() = headers;
    Ok(response)
}

/// A Connect request stream as gRPC's: the same envelopes, checked (no
/// compression, no end-of-stream flag, at most the message limit) and, for
/// JSON, transcoded one by one as they arrive. A bad envelope ends the
/// stream with the status, which the service receives as its error.
struct RequestFrames {
    inner: Body,
    buf: BytesMut,
    /// The request type, when transcoding JSON.
    input: Option<MessageDescriptor>,
    max: usize,
    /// Where the error that ended the stream is kept for the response.
    failed: Arc<OnceLock<CallStatus>>,
}

impl RequestFrames {
    /// Ends the stream with `status`, which the response reports too.
    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.buf.clear();
        let _ = self.failed.set(CallStatus::from(&status));
        Poll::Ready(Some(Err(status)))
    }

    fn convert(&self, flags: u8, message: Bytes) -> Result<Bytes, Status> {
        if flags != 0 {
            return Err(super::error::invalid(
                "request",
                &format!(
                    "has an envelope with flags {flags:#04x}; a Connect request stream carries uncompressed messages only"
                ),
            ));
        }
        match &self.input {
            None => Ok(envelope(0, &message)),
            Some(desc) => json_to_proto(desc, &message).map(|m| envelope(0, &m)),
        }
    }
}

impl http_body::Body for RequestFrames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if this.failed.get().is_some() {
                return Poll::Ready(None);
            }
            if announced(&this.buf).is_some_and(|len| len > this.max) {
                let max = this.max;
                return this.fail(Status::out_of_range(format!(
                    "request: a message is too large: more than {max} bytes (the server's --max-message-size)"
                )));
            }
            if let Some((flags, message)) = take_envelope(&mut this.buf) {
                return match this.convert(flags, message) {
                    Ok(frame) => Poll::Ready(Some(Ok(Frame::data(frame)))),
                    Err(status) => this.fail(status),
                };
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return this.fail(Status::invalid_argument(format!(
                        "request: the body could not be read: {e}"
                    )));
                }
                None if this.buf.is_empty() => return Poll::Ready(None),
                None => {
                    return this.fail(super::error::invalid(
                        "request",
                        "ends inside a message envelope",
                    ));
                }
            }
        }
    }
}

/// A gRPC response stream as Connect's: the same envelopes (JSON ones
/// transcoded), then the end-of-stream message built from the trailers.
struct ResponseFrames {
    inner: Body,
    buf: BytesMut,
    /// The response type, when transcoding to JSON.
    output: Option<MessageDescriptor>,
    shared: Arc<Shared>,
    /// Why the request stream failed, if it did.
    request_failed: Arc<OnceLock<CallStatus>>,
    done: bool,
}

impl ResponseFrames {
    /// The end of the stream with `status` and `trailers`.
    fn finish(&mut self, status: &CallStatus, trailers: &HeaderMap) -> Frame<Bytes> {
        self.done = true;
        let status = settle(status, &self.request_failed);
        Frame::data(end_stream(Some(&self.shared.pool), Some(status), trailers))
    }
}

/// The status a stream ends with: the service's, unless it ended well after
/// the request stream failed (the service got that error in place of a
/// message and may just stop; the Connect client must learn why).
fn settle<'a>(status: &'a CallStatus, request_failed: &'a OnceLock<CallStatus>) -> &'a CallStatus {
    match request_failed.get() {
        Some(failed) if status.code == Code::Ok => failed,
        _ => status,
    }
}

impl http_body::Body for ResponseFrames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some((flags, message)) = take_envelope(&mut this.buf) {
                let converted = match (&this.output, flags) {
                    (None, 0) => Ok(envelope(0, &message)),
                    (Some(desc), 0) => proto_to_json(desc, &message).map(|j| envelope(0, &j)),
                    (_, _) => Err(Status::internal("the response stream was malformed")),
                };
                let frame = match converted {
                    Ok(frame) => Frame::data(frame),
                    Err(status) => this.finish(&(&status).into(), &HeaderMap::new()),
                };
                return Poll::Ready(Some(Ok(frame)));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.buf.extend_from_slice(&data);
                        continue;
                    }
                    Err(frame) => {
                        let Ok(trailers) = frame.into_trailers() else {
                            continue;
                        };
                        let status = if this.buf.is_empty() {
                            CallStatus::from_headers(&trailers).unwrap_or_else(|| {
                                CallStatus::new(Code::Unknown, "the call ended without a status")
                            })
                        } else {
                            CallStatus::new(Code::Internal, "the response ended inside a message")
                        };
                        this.finish(&status, &trailers)
                    }
                },
                Some(Err(e)) => this.finish(
                    &CallStatus::new(Code::Unknown, format!("the call failed: {e}")),
                    &HeaderMap::new(),
                ),
                None => this.finish(
                    &CallStatus::new(Code::Unknown, "the call ended without a status"),
                    &HeaderMap::new(),
                ),
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(entries: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in entries {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn requests_are_sorted_by_content_type() {
        let post =
            |entries: &[(&'static str, &str)]| classify(&Method::POST, &headers(entries), None);
        assert_eq!(
            post(&[("content-type", "application/proto")]),
            Kind::Unary(Codec::Proto)
        );
        assert_eq!(
            post(&[("content-type", "application/json; charset=utf-8")]),
            Kind::Unary(Codec::Json)
        );
        assert_eq!(
            post(&[("content-type", "Application/JSON")]),
            Kind::Unary(Codec::Json)
        );
        assert_eq!(
            post(&[("content-type", "application/connect+proto")]),
            Kind::Stream(Codec::Proto)
        );
        assert_eq!(
            post(&[("content-type", "application/connect+json")]),
            Kind::Stream(Codec::Json)
        );
        assert!(matches!(
            post(&[("content-type", "application/json; charset=latin1")]),
            Kind::Unsupported(_)
        ));
        assert!(matches!(
            post(&[("content-type", "application/connect+cbor")]),
            Kind::Unsupported(_)
        ));
        assert!(matches!(
            post(&[("content-type", "text/xml"), (PROTOCOL_VERSION, "1")]),
            Kind::Unsupported(_)
        ));
        // gRPC, gRPC-Web and unmarked others pass untouched.
        for ct in [
            "application/grpc",
            "application/grpc-web+proto",
            "text/plain",
        ] {
            assert_eq!(post(&[("content-type", ct)]), Kind::Other, "{ct}");
        }
        assert_eq!(post(&[]), Kind::Other);
        let get = |q| classify(&Method::GET, &HeaderMap::new(), q);
        assert_eq!(
            get(Some("encoding=json&message=%7B%7D&connect=v1")),
            Kind::Get
        );
        assert_eq!(get(None), Kind::Other);
    }

    #[test]
    fn timeouts_become_grpc_timeouts() {
        let t = |v: &str| grpc_timeout(&headers(&[(TIMEOUT_MS, v)]));
        assert_eq!(t("1500").unwrap().unwrap(), "1500m");
        assert_eq!(t("99999999").unwrap().unwrap(), "99999999m");
        assert_eq!(t("9999999999").unwrap().unwrap(), "10000000S");
        for bad in ["0", "-5", "1.5", "12345678901", "", "soon"] {
            let status = t(bad).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn codes_map_to_the_protocols_http_statuses() {
        let cases = [
            (Code::Cancelled, "canceled", 499),
            (Code::Unknown, "unknown", 500),
            (Code::InvalidArgument, "invalid_argument", 400),
            (Code::DeadlineExceeded, "deadline_exceeded", 504),
            (Code::NotFound, "not_found", 404),
            (Code::AlreadyExists, "already_exists", 409),
            (Code::PermissionDenied, "permission_denied", 403),
            (Code::ResourceExhausted, "resource_exhausted", 429),
            (Code::FailedPrecondition, "failed_precondition", 400),
            (Code::Aborted, "aborted", 409),
            (Code::OutOfRange, "out_of_range", 400),
            (Code::Unimplemented, "unimplemented", 501),
            (Code::Internal, "internal", 500),
            (Code::Unavailable, "unavailable", 503),
            (Code::DataLoss, "data_loss", 500),
            (Code::Unauthenticated, "unauthenticated", 401),
        ];
        for (code, name, http) in cases {
            assert_eq!(code_name(code), name);
            assert_eq!(http_status(code).as_u16(), http, "{name}");
        }
    }

    #[test]
    fn errors_keep_every_detail() {
        let pool = descriptors().unwrap();
        let status = crate::api::error::invalid("user_id", "must not be empty");
        let status = CallStatus::from(&status);
        let json = serde_json::to_value(error_json(Some(&pool), &status)).unwrap();
        assert_eq!(json["code"], "invalid_argument");
        assert_eq!(json["message"], "user_id: must not be empty");
        let details = json["details"].as_array().unwrap();
        let types: Vec<&str> = details
            .iter()
            .map(|d| d["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]);
        assert_eq!(details[0]["debug"]["reason"], "INVALID_ARGUMENT");
        assert_eq!(
            details[1]["debug"]["fieldViolations"][0]["field"],
            "user_id"
        );
        // The value is the detail itself, unpadded base64.
        let value = details[0]["value"].as_str().unwrap();
        assert!(!value.ends_with('='));
        let info =
            tonic_types::pb::ErrorInfo::decode(BASE64.decode(value).unwrap().as_slice()).unwrap();
        assert_eq!(info.domain, "sessiond");
    }

    #[test]
    fn statuses_are_read_from_grpc_headers() {
        let status = crate::api::error::invalid("x", "100% wrong");
        let mut h = HeaderMap::new();
        status.add_header(&mut h).unwrap();
        let read = CallStatus::from_headers(&h).unwrap();
        assert_eq!(read.code, Code::InvalidArgument);
        assert_eq!(read.message, "x: 100% wrong");
        assert_eq!(read.details.len(), 2);
        assert_eq!(percent_decode(b"a%20b%zz%"), "a b%zz%");
        assert!(CallStatus::from_headers(&HeaderMap::new()).is_none());
    }

    #[test]
    fn end_of_stream_carries_the_error_and_the_trailers() {
        let trailers = headers(&[("grpc-status", "0"), ("x-cost", "3"), ("x-cost", "4")]);
        let ok = CallStatus::new(Code::Ok, "");
        let frame = end_stream(None, Some(&ok), &trailers);
        assert_eq!(frame[0], FLAG_END_STREAM);
        let json: serde_json::Value = serde_json::from_slice(&frame[5..]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"metadata": {"x-cost": ["3", "4"]}})
        );
        let failed = CallStatus::new(Code::Unavailable, "later");
        let frame = end_stream(None, Some(&failed), &HeaderMap::new());
        let json: serde_json::Value = serde_json::from_slice(&frame[5..]).unwrap();
        assert_eq!(json["error"]["code"], "unavailable");
        assert_eq!(json["error"]["message"], "later");
        // Made here without details, it still carries ErrorInfo.
        assert_eq!(json["error"]["details"][0]["type"], "google.rpc.ErrorInfo");
    }

    #[test]
    fn envelopes_are_taken_whole() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&envelope(0, b"abc"));
        buf.extend_from_slice(&envelope(2, b"de")[..4]);
        assert_eq!(
            take_envelope(&mut buf),
            Some((0, Bytes::from_static(b"abc")))
        );
        assert_eq!(take_envelope(&mut buf), None);
        buf.extend_from_slice(&[2, b'd', b'e']);
        assert_eq!(
            take_envelope(&mut buf),
            Some((2, Bytes::from_static(b"de")))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn json_follows_the_protobuf_mapping() {
        let pool = descriptors().unwrap();
        let method = Shared {
            pool,
            max_message: 1024,
        }
        .method("/sessiond.v1.SessionService/CreateNewSession")
        .unwrap();
        let proto = json_to_proto(
            &method.input(),
            br#"{"userId": "alice", "accessTokenPayload": {"role": "admin"}}"#,
        )
        .unwrap();
        let request = crate::pb::CreateNewSessionRequest::decode(proto.as_slice()).unwrap();
        assert_eq!(request.user_id, "alice");
        // Unknown fields and trailing junk are named, not ignored.
        let status = json_to_proto(&method.input(), br#"{"userID": "alice"}"#).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("userID"), "{}", status.message());
        assert!(json_to_proto(&method.input(), b"{} {}").is_err());
        // An empty body is the empty message.
        assert!(json_to_proto(&method.input(), b"").unwrap().is_empty());
        // Nesting deep enough to exhaust a stack is bad input.
        let deep = format!(
            r#"{{"accessTokenPayload": {{"a": {}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let status = json_to_proto(&method.input(), deep.as_bytes()).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}
