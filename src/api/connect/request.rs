//! Recognising a Connect request (its method, content type and Connect
//! headers) and rewriting its headers into the gRPC request it stands for.
//!
//! This file only reads and rewrites headers; it must never touch a body
//! or decide a call.

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};
use tonic::Status;

use super::{PROTOCOL_VERSION, TIMEOUT_MS, not_served};

/// How messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    Proto,
    Json,
}

impl Codec {
    pub(super) fn unary_type(self) -> &'static str {
        match self {
            Self::Proto => "application/proto",
            Self::Json => "application/json",
        }
    }

    pub(super) fn stream_type(self) -> &'static str {
        match self {
            Self::Proto => "application/connect+proto",
            Self::Json => "application/connect+json",
        }
    }
}

/// What a request is, as far as Connect goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Kind {
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
pub(super) fn classify(method: &Method, headers: &HeaderMap, query: Option<&str>) -> Kind {
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

/// Refuses a compressed body: only `identity` is served.
pub(super) fn check_encoding(headers: &HeaderMap, name: &str) -> Result<(), Status> {
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
pub(super) fn check_version(headers: &HeaderMap) -> Result<(), Status> {
    match headers.get(PROTOCOL_VERSION) {
        None => Ok(()),
        Some(v) if v.as_bytes().trim_ascii() == b"1" => Ok(()),
        Some(_) => Err(crate::api::error::invalid(
            PROTOCOL_VERSION,
            "must be 1, the only version of the Connect protocol sessiond speaks",
        )),
    }
}

/// `connect-timeout-ms` as a `grpc-timeout` value.
pub(super) fn grpc_timeout(headers: &HeaderMap) -> Result<Option<HeaderValue>, Status> {
    let Some(value) = headers.get(TIMEOUT_MS) else {
        return Ok(None);
    };
    let bad = || {
        crate::api::error::invalid(
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
pub(super) fn grpc_request(
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
pub(super) fn leading_metadata(headers: &HeaderMap) -> HeaderMap {
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
pub(super) fn trailing_metadata(trailers: &HeaderMap) -> Vec<(&HeaderName, &HeaderValue)> {
    trailers
        .iter()
        .filter(|(name, _)| !name.as_str().starts_with("grpc-"))
        .collect()
}
