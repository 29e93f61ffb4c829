//! A prost codec with small starting buffers, for services that keep many
//! long-lived streams open.
//!
//! tonic's default codec starts every stream with 8 KiB for encoding and 8 KiB
//! for decoding. A member serving 10,000 VENs holds 10,000 policy streams, and
//! those two buffers alone would be 160 MiB, while a VEN's messages (hello,
//! acknowledgement, heartbeat) are tens of bytes. The buffers still grow on
//! demand for a large policy, so only the idle cost changes.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Starting size of a stream's encode and decode buffer.
pub const LEAN_BUFFER: usize = 512;

/// tonic's yield threshold (unchanged: it only bounds one batch of sends).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `ProstCodec` with `LEAN_BUFFER`-sized starting buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(LEAN_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(LEAN_BUFFER, YIELD_THRESHOLD))
    }
}
