//! Streaming Connect calls: envelopes pass through as they come (JSON ones
//! transcoded one by one), and the gRPC trailers become Connect's
//! end-of-stream message.
//!
//! This file must never buffer a whole stream, nor pass on a message
//! larger than `--max-message-size`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::Frame;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use tonic::{Code, Status};
use tower::Service;

use super::codec::{announced, envelope, json_to_proto, proto_to_json, take_envelope};
use super::errors::{CallStatus, ConnectError, error_json, stream_error};
use super::request::{
    Codec, check_encoding, check_version, grpc_request, grpc_timeout, leading_metadata,
    trailing_metadata,
};
use super::{FLAG_END_STREAM, STREAM_ENCODING, Shared};

/// Connect's end-of-stream message.
#[derive(Debug, serde::Serialize)]
pub(super) struct EndStream<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<ConnectError<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) metadata: BTreeMap<&'a str, Vec<&'a str>>,
}

/// Connect's end-of-stream message: the error, if any, and the trailers.
pub(super) fn end_stream(
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

/// A streaming Connect call.
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
        (Codec::Json, None) => return refuse(crate::api::details::unimplemented(parts.uri.path())),
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
pub(super) struct RequestFrames {
    pub(super) inner: Body,
    pub(super) buf: BytesMut,
    /// The request type, when transcoding JSON.
    pub(super) input: Option<MessageDescriptor>,
    pub(super) max: usize,
    /// Where the error that ended the stream is kept for the response.
    pub(super) failed: Arc<OnceLock<CallStatus>>,
}

impl RequestFrames {
    /// Ends the stream with `status`, which the response reports too.
    pub(super) fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.buf.clear();
        let _ = self.failed.set(CallStatus::from(&status));
        Poll::Ready(Some(Err(status)))
    }

    pub(super) fn convert(&self, flags: u8, message: Bytes) -> Result<Bytes, Status> {
        if flags != 0 {
            return Err(crate::api::error::invalid(
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
                    return this.fail(crate::api::error::invalid(
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
pub(super) struct ResponseFrames {
    pub(super) inner: Body,
    pub(super) buf: BytesMut,
    /// The response type, when transcoding to JSON.
    pub(super) output: Option<MessageDescriptor>,
    pub(super) shared: Arc<Shared>,
    /// Why the request stream failed, if it did.
    pub(super) request_failed: Arc<OnceLock<CallStatus>>,
    pub(super) done: bool,
}

impl ResponseFrames {
    /// The end of the stream with `status` and `trailers`.
    pub(super) fn finish(&mut self, status: &CallStatus, trailers: &HeaderMap) -> Frame<Bytes> {
        self.done = true;
        let status = settle(status, &self.request_failed);
        Frame::data(end_stream(Some(&self.shared.pool), Some(status), trailers))
    }
}

/// The status a stream ends with: the service's, unless it ended well after
/// the request stream failed (the service got that error in place of a
/// message and may just stop; the Connect client must learn why).
pub(super) fn settle<'a>(
    status: &'a CallStatus,
    request_failed: &'a OnceLock<CallStatus>,
) -> &'a CallStatus {
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
