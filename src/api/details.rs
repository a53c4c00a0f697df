//! Every gRPC status the server sends carries `google.rpc.ErrorInfo`.
//!
//! sessiond's own errors are built with their details (`api::error`). The
//! statuses the gRPC layer makes itself are not: a request over
//! `--max-message-size`, an unknown method or service, a compressed request,
//! a broken frame, health asked about an unknown service. This layer finds
//! every non-OK status without details — in the response headers (tonic's
//! trailers-only answer) or in the trailers — and rewrites it with a reason
//! from [`Reason`] and a message that says what happened in sessiond's
//! terms. A status that already has details passes untouched, and the gRPC
//! code only changes where tonic reports bad input as INTERNAL.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderMap;
use http_body::{Body, Frame};
use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::error::Reason;

/// The longest request path echoed in an UNIMPLEMENTED message.
const MAX_PATH_ECHO: usize = 200;

/// Adds [`Details`] to the gRPC routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DetailsLayer;

impl<S> Layer<S> for DetailsLayer {
    type Service = Details<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Details { inner }
    }
}

/// The service that fills in missing error details.
#[derive(Debug, Clone)]
pub struct Details<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Details<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body + Unpin + Send + 'static,
{
    type Response = http::Response<DetailedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let future = inner.call(req);
        Box::pin(async move {
            let mut response = future.await?;
            fill(response.headers_mut(), &path);
            Ok(response.map(|inner| DetailedBody { inner, path }))
        })
    }
}

/// A response body whose trailers get the same treatment as the headers.
pub struct DetailedBody<B> {
    inner: B,
    path: String,
}

impl<B: Body + Unpin> Body for DetailedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    fill(&mut trailers, &this.path);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Rewrites a non-OK status without details in `headers`, if there is one.
fn fill(headers: &mut HeaderMap, path: &str) {
    if headers.contains_key(Status::GRPC_STATUS_DETAILS) {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if status.code() == Code::Ok {
        return;
    }
    let explained = explain(&status, path);
    headers.remove(Status::GRPC_STATUS);
    headers.remove(Status::GRPC_MESSAGE);
    if let Err(e) = explained.add_header(headers) {
        tracing::warn!(error = %e, "could not write an error's details");
    }
}

/// The status a detail-less one becomes.
fn explain(status: &Status, path: &str) -> Status {
    let message = status.message();
    let plain = |reason: Reason, message: String| {
        super::error::status(reason, message, HashMap::new(), None)
    };
    match status.code() {
        Code::OutOfRange => match too_large(message) {
            Some((size, limit)) => {
                let description = format!(
                    "is {size} bytes, more than this server accepts ({limit} bytes, \
                     --max-message-size)"
                );
                super::error::status(
                    Reason::MessageTooLarge,
                    format!("request: {description}"),
                    HashMap::from([
                        ("size".to_owned(), size.to_string()),
                        ("limit".to_owned(), limit.to_string()),
                    ]),
                    Some(("request", &description)),
                )
            }
            None => with_code(Reason::InvalidArgument, Code::OutOfRange, message),
        },
        Code::Unimplemented if message.is_empty() => unimplemented(path),
        Code::Unimplemented => plain(Reason::Unimplemented, message.to_owned()),
        Code::NotFound => plain(Reason::UnknownService, nonempty(message, "not found")),
        Code::Cancelled => plain(
            Reason::Cancelled,
            nonempty(message, "the call was cancelled"),
        ),
        Code::DeadlineExceeded => plain(
            Reason::Timeout,
            nonempty(message, "the call ran past its deadline"),
        ),
        // tonic answers a request whose gRPC framing is broken with INTERNAL
        // (as the gRPC spec asks for a bad compressed flag); for sessiond's
        // callers it is bad input, like a message that does not decode.
        Code::Internal if is_bad_framing(message) => super::error::invalid(
            "request",
            &format!("is not a valid gRPC request ({message})"),
        ),
        code => with_code(Reason::Internal, code, message),
    }
}

/// `status` with ErrorInfo: as it is when it has details (or is OK),
/// otherwise rewritten as the layer rewrites statuses in responses. For
/// statuses made outside the gRPC routes (the Connect translation).
pub fn described(status: Status, path: &str) -> Status {
    if status.code() == Code::Ok || !status.details().is_empty() {
        status
    } else {
        explain(&status, path)
    }
}

/// UNIMPLEMENTED for a gRPC call to `path`, which this server does not serve.
pub fn unimplemented(path: &str) -> Status {
    let mut shown: String = path.chars().take(MAX_PATH_ECHO).collect();
    if shown.len() < path.len() {
        shown.push('…');
    }
    super::error::status(
        Reason::Unimplemented,
        format!("sessiond does not serve the method `{shown}`"),
        HashMap::new(),
        None,
    )
}

/// `(size, limit)` from tonic's "decoded message length too large" text.
fn too_large(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix("Error, decoded message length too large: found ")?;
    let (size, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((size.parse().ok()?, limit.parse().ok()?))
}

/// tonic's messages for a request body that is not a gRPC message stream.
fn is_bad_framing(message: &str) -> bool {
    message.starts_with("protocol error:")
        || message == "Unexpected EOF decoding stream."
        || message == "Missing request message."
}

fn nonempty(message: &str, otherwise: &str) -> String {
    if message.is_empty() {
        otherwise.to_owned()
    } else {
        message.to_owned()
    }
}

/// ErrorInfo with `reason`, keeping the status's own code.
fn with_code(reason: Reason, code: Code, message: &str) -> Status {
    let details = tonic_types::ErrorDetails::with_error_info(
        reason.as_str(),
        super::error::DOMAIN,
        HashMap::new(),
    );
    <Status as tonic_types::StatusExt>::with_error_details(
        code,
        nonempty(message, "the call failed"),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    fn reason(status: &Status) -> String {
        status.get_details_error_info().unwrap().reason
    }

    #[test]
    fn tonic_statuses_get_a_reason_and_a_message_in_our_terms() {
        let big = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let s = explain(&big, "/sessiond.v1.SessionService/CreateNewSession");
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(reason(&s), "MESSAGE_TOO_LARGE");
        assert!(s.message().contains("5000000 bytes"), "{}", s.message());
        assert!(s.message().contains("--max-message-size"));
        assert_eq!(
            s.get_details_error_info().unwrap().metadata["limit"],
            "4194304"
        );

        let s = explain(&Status::new(Code::Unimplemented, ""), "/x.Y/Z");
        assert_eq!(reason(&s), "UNIMPLEMENTED");
        assert_eq!(s.message(), "sessiond does not serve the method `/x.Y/Z`");
        let long = format!("/{}", "a".repeat(1000));
        assert!(
            explain(&Status::new(Code::Unimplemented, ""), &long)
                .message()
                .len()
                < 300
        );

        let s = explain(&Status::internal("Unexpected EOF decoding stream."), "/p");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.get_details_bad_request().unwrap().field_violations[0].field,
            "request"
        );

        let s = explain(&Status::unknown("boom"), "/p");
        assert_eq!((s.code(), reason(&s).as_str()), (Code::Unknown, "INTERNAL"));
    }

    #[test]
    fn statuses_with_details_and_ok_pass_untouched() {
        let mut headers = HeaderMap::new();
        super::super::error::invalid("user_id", "must not be empty")
            .add_header(&mut headers)
            .unwrap();
        let before = headers.clone();
        fill(&mut headers, "/p");
        assert_eq!(headers, before);

        let mut ok = HeaderMap::new();
        ok.insert(Status::GRPC_STATUS, "0".parse().unwrap());
        fill(&mut ok, "/p");
        assert_eq!(ok.len(), 1);

        let mut bare = HeaderMap::new();
        bare.insert(Status::GRPC_STATUS, "12".parse().unwrap());
        fill(&mut bare, "/a.B/C");
        let status = Status::from_header_map(&bare).unwrap();
        assert_eq!(reason(&status), "UNIMPLEMENTED");
    }
}
