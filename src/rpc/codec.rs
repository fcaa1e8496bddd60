//! The protobuf codec of every gRPC service here: prost's, except that bytes that do
//! not decode as the expected message are INVALID_ARGUMENT (bad input), not INTERNAL
//! (tonic-prost's choice, which would read as a fault of this node).

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first encoding buffer of a Kv.Watch stream (a progress message is ~10 bytes).
const WATCH_ENCODE_BUFFER: usize = 256;
/// tonic's default: how much a stream encodes before it hands it to HTTP/2.
const WATCH_YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone)]
pub struct WireCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        WireCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        // A watch stream lives long and mostly idles, and tonic keeps each stream's
        // first encoding buffer for as long as the stream lives: at its 8 KiB default
        // that was most of what an idle watcher costs (measured: ~7.9 KiB of RSS per
        // watcher, 10,000 watchers on one node). The buffer grows as a message needs.
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<crate::proto::v1::WatchResponse>()
        {
            return ProstEncoder::new(BufferSettings::new(
                WATCH_ENCODE_BUFFER,
                WATCH_YIELD_THRESHOLD,
            ));
        }
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(self.0.decoder())
    }
}

#[derive(Debug, Clone)]
pub struct WireDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| match status.code() {
            // prost's decode errors; nothing else in decoding is INTERNAL.
            Code::Internal => Status::invalid_argument(format!(
                "the message does not decode: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
