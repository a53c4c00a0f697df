//! Connect errors: a gRPC status as it reached the client, turned into
//! Connect's JSON error (with the HTTP status of its code and every
//! `google.rpc` detail) for unary calls and end-of-stream messages.
//!
//! This file only translates statuses it is given; it must never make one
//! up in a service's place.

use axum::body::Body;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::{Code, Status};

use super::request::Codec;
use super::stream::end_stream;
use super::{ACCEPTED_TYPES, BASE64};

/// A gRPC status as it reached the client, with its decoded details.
#[derive(Debug, Clone)]
pub(super) struct CallStatus {
    pub(super) code: Code,
    pub(super) message: String,
    pub(super) details: Vec<prost_types::Any>,
}

impl From<&Status> for CallStatus {
    /// Every error carries ErrorInfo, those made here included.
    fn from(status: &Status) -> Self {
        let status = crate::api::details::described(status.clone(), "");
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            details: decode_details(status.details()),
        }
    }
}

impl CallStatus {
    pub(super) fn new(code: Code, message: impl Into<String>) -> Self {
        Self::from(&Status::new(code, message))
    }

    /// The status in `grpc-status`, `grpc-message` and
    /// `grpc-status-details-bin`, if `headers` have one.
    pub(super) fn from_headers(headers: &HeaderMap) -> Option<Self> {
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
pub(super) fn decode_details(bytes: &[u8]) -> Vec<prost_types::Any> {
    if bytes.is_empty() {
        return Vec::new();
    }
    tonic_types::pb::Status::decode(bytes)
        .map(|s| s.details)
        .unwrap_or_default()
}

/// `grpc-message` is percent-encoded UTF-8.
pub(super) fn percent_decode(bytes: &[u8]) -> String {
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
pub(super) fn code_name(code: Code) -> &'static str {
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
pub(super) fn http_status(code: Code) -> StatusCode {
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
pub(super) struct ConnectError<'a> {
    pub(super) code: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(super) message: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) details: Vec<Detail<'a>>,
}

/// One error detail: its type, its bytes, and its JSON form for readers.
#[derive(Debug, serde::Serialize)]
pub(super) struct Detail<'a> {
    #[serde(rename = "type")]
    pub(super) type_name: &'a str,
    pub(super) value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) debug: Option<serde_json::Value>,
}

/// Connect's JSON error: code, message and every detail (`type`, base64
/// `value`, and, for a type in `pool`, its JSON form as `debug`).
pub(super) fn error_json<'a>(
    pool: Option<&DescriptorPool>,
    status: &'a CallStatus,
) -> ConnectError<'a> {
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
pub(super) fn unary_error(
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
pub(super) fn stream_error(
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
pub(super) fn unsupported_media_type(content_type: &str) -> Response<Body> {
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
