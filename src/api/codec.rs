//! The protobuf codec of sessiond's services: prost's, except that a request
//! that does not decode is INVALID_ARGUMENT (bad input), not the INTERNAL
//! that tonic reports for it.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Prost encoding with bad-input decode errors.
#[derive(Debug)]
pub struct SessiondCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Default for SessiondCodec<T, U> {
    fn default() -> Self {
        Self {
            inner: ProstCodec::default(),
        }
    }
}

impl<T, U> Codec for SessiondCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// Decodes with prost; failures name the request as the bad field.
#[derive(Debug)]
pub struct RequestDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| {
            let description = format!(
                "is not a valid protobuf message of this type ({})",
                status.message()
            );
            super::error::invalid("request", &description)
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
