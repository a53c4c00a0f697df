//! Messages on the wire: gRPC / Connect envelopes, and JSON transcoded to
//! and from protobuf (prost-reflect, over the published descriptors).
//!
//! This file only frames and transcodes bytes; it must never know which
//! call they belong to beyond the message type it is handed.

use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;

/// One gRPC / Connect envelope.
pub(super) fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[flags]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.freeze()
}

/// The length the envelope at the front of `buf` announces, once its
/// header is in.
pub(super) fn announced(buf: &[u8]) -> Option<usize> {
    let header: [u8; 4] = buf.get(1..5)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

/// Takes the envelope at the front of `buf` when it is whole: its flags and
/// its message.
pub(super) fn take_envelope(buf: &mut BytesMut) -> Option<(u8, Bytes)> {
    let len = announced(buf)?;
    if buf.len() < 5 + len {
        return None;
    }
    let flags = buf[0];
    buf.advance(5);
    Some((flags, buf.split_to(len).freeze()))
}

/// A JSON message as protobuf; an empty body is the empty message, as it
/// is in protobuf.
pub(super) fn json_to_proto(desc: &MessageDescriptor, json: &[u8]) -> Result<Vec<u8>, Status> {
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
            crate::api::error::invalid(
                "request",
                &format!("is not valid JSON for {}: {e}", desc.full_name()),
            )
        })
}

/// A protobuf message as JSON (the protobuf JSON mapping).
pub(super) fn proto_to_json(desc: &MessageDescriptor, proto: &[u8]) -> Result<Vec<u8>, Status> {
    DynamicMessage::decode(desc.clone(), proto)
        .map_err(|e| e.to_string())
        .and_then(|m| serde_json::to_vec(&m).map_err(|e| e.to_string()))
        .map_err(|e| {
            tracing::error!(message = desc.full_name(), error = %e, "a response did not transcode to JSON");
            Status::internal("the response could not be written as JSON")
        })
}
