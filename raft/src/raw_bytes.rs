//! `Vec<u8>` fields serialized as one byte string instead of a sequence of
//! `u8`s (`#[serde(with = "crate::raw_bytes")]`).
//!
//! Why: serde treats a `Vec<u8>` as a sequence, so bincode encoded and decoded
//! every key and value one byte at a time; on the leader that showed in
//! profiles of the write path (each entry is decoded for every follower and
//! for the apply). bincode writes a byte string exactly as it writes a
//! sequence of `u8` (a length, then the bytes), so records keep their bytes:
//! a test below holds that.

use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::Serializer;

/// Writes `v` as one byte string.
pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

/// Reads a byte string (or, from formats that wrote one, a sequence of `u8`).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::codec;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct AsSeq {
        a: Vec<u8>,
        n: u64,
        b: Vec<u8>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct AsBytes {
        #[serde(with = "crate::raw_bytes")]
        a: Vec<u8>,
        n: u64,
        #[serde(with = "crate::raw_bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn byte_strings_are_encoded_exactly_as_sequences_were() {
        for len in [0usize, 1, 250, 251, 300, 70_000] {
            let a: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let old = AsSeq {
                a: a.clone(),
                n: 99,
                b: b"value".to_vec(),
            };
            let new = AsBytes {
                a,
                n: 99,
                b: b"value".to_vec(),
            };
            let old_bytes = codec::encode(&old).unwrap();
            assert_eq!(codec::encode(&new).unwrap(), old_bytes, "length {len}");
            assert_eq!(codec::decode::<AsBytes>(&old_bytes).unwrap(), new);
        }
    }
}
