//! One HTTP/2 connection speaking unary gRPC on the h2 crate, and the
//! gRPC status of a reply.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, TE};
use http::{Method, StatusCode, Uri};
use prost::Message;
use tonic::{Code, Status};

/// One HTTP/2 connection speaking unary gRPC, on the h2 crate directly:
/// a call is a stream the caller's own task opens, writes and reads, with
/// no request or body task in between.
#[derive(Clone)]
pub(crate) struct Conn {
    pub(crate) send: h2::client::SendRequest<Bytes>,
}

impl Conn {
    pub(crate) async fn open(addr: &str) -> Result<Self, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (send, connection) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { send })
    }

    /// Calls the method at `uri` with `message` and returns the reply's
    /// message bytes, or the call's gRPC status when it is not OK.
    pub(crate) async fn unary(
        &self,
        uri: &Uri,
        message: &impl Message,
        auth: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Bytes, Status> {
        let len = message.encoded_len();
        let mut body = BytesMut::with_capacity(5 + len);
        body.put_u8(0);
        body.put_u32(len as u32);
        message
            .encode(&mut body)
            .expect("the buffer has the message's length");
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if let Some((name, value)) = auth {
            headers.insert(name, value);
        }
        let transport = h2_status;
        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (response, mut stream) = send.send_request(request, false).map_err(transport)?;
        stream.send_data(body.freeze(), true).map_err(transport)?;
        let (parts, mut body) = response.await.map_err(transport)?.into_parts();
        if parts.status != StatusCode::OK {
            return Err(http_status(parts.status));
        }
        // A reply with no message carries its status in the headers.
        if let Some(status) = Status::from_header_map(&parts.headers) {
            return Err(not_ok(status));
        }
        let mut reply = Bytes::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            reply = if reply.is_empty() {
                chunk
            } else {
                [reply, chunk].concat().into()
            };
        }
        let status = body
            .trailers()
            .await
            .map_err(transport)?
            .as_ref()
            .and_then(Status::from_header_map)
            .ok_or_else(|| Status::internal("a reply without grpc-status"))?;
        if status.code() != Code::Ok {
            return Err(status);
        }
        let framed = reply.len() >= 5 && reply[0] == 0;
        let len = if framed {
            u32::from_be_bytes([reply[1], reply[2], reply[3], reply[4]]) as usize
        } else {
            usize::MAX
        };
        if reply.len() != len.saturating_add(5) {
            return Err(Status::internal(
                "a reply that is not one uncompressed message",
            ));
        }
        Ok(reply.slice(5..))
    }
}

impl Conn {
    /// A plain HTTP GET of `uri` with `headers`: `Ok` for 200 (its body
    /// drained), else the status as a gRPC one.
    pub(crate) async fn get(
        &self,
        uri: &Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<(), Status> {
        let mut request = http::Request::new(());
        *request.uri_mut() = uri.clone();
        request.headers_mut().extend(headers);
        let transport = h2_status;
        let mut send = self.send.clone().ready().await.map_err(transport)?;
        let (response, _) = send.send_request(request, true).map_err(transport)?;
        let (parts, mut body) = response.await.map_err(transport)?.into_parts();
        while let Some(chunk) = body.data().await {
            let _ = body
                .flow_control()
                .release_capacity(chunk.map_err(transport)?.len());
        }
        if parts.status != StatusCode::OK {
            return Err(http_status(parts.status));
        }
        Ok(())
    }
}

/// The gRPC status of a stream or connection error (gRPC's HTTP/2 mapping).
pub(crate) fn h2_status(e: h2::Error) -> Status {
    let code = match e.reason() {
        None => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}

/// The gRPC status of a reply with an HTTP status other than 200.
pub(crate) fn http_status(status: StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("HTTP status {status}"))
}

/// A status found where only an error status may be.
pub(crate) fn not_ok(status: Status) -> Status {
    if status.code() == Code::Ok {
        Status::internal("grpc-status 0 without a message")
    } else {
        status
    }
}

pub(crate) fn decode<M: Message + Default>(bytes: Bytes) -> Result<M, Status> {
    M::decode(bytes).map_err(|e| Status::internal(format!("undecodable reply: {e}")))
}
