//! Unary Connect calls: the bare request message is enveloped for gRPC,
//! and the gRPC answer becomes the bare response message or a Connect
//! error.
//!
//! This file must never read a request body past `--max-message-size`.

use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use prost_reflect::MethodDescriptor;
use tonic::{Code, Status};
use tower::Service;

use super::codec::{envelope, json_to_proto, proto_to_json, take_envelope};
use super::errors::{CallStatus, unary_error};
use super::request::{
    Codec, check_encoding, check_version, grpc_request, grpc_timeout, leading_metadata,
    trailing_metadata,
};
use super::{Shared, not_served};

/// Reads a unary request body, refusing one larger than `max` bytes without
/// reading on.
pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
) -> Result<Bytes, Status> {
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
pub(super) async fn call<S>(
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
        (Codec::Json, None) => return refuse(crate::api::details::unimplemented(parts.uri.path())),
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
pub(super) async fn unary_response(
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
