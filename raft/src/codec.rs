//! The one encoding of everything this crate persists or sends as an opaque payload.
//!
//! bincode has no field tags, so a record written by one release could be misread
//! by the next. Every record therefore starts with a format-version byte: a reader
//! refuses a version it does not know instead of guessing.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format version written in front of every record.
pub const FORMAT_VERSION: u8 = 1;

/// The format version of records that carry Raft entries (log records and
/// AppendEntries): 2 since an entry carries a [`crate::Proposal`] of several
/// commands; version 1 entries carried one command and are still read
/// (`crate::entry_format`).
pub const ENTRY_FORMAT_VERSION: u8 = 2;

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The record is empty: not even a version byte.
    #[error("empty record")]
    Empty,
    /// Written by a format this release does not read.
    #[error("record has format version {found}, this release reads version {FORMAT_VERSION}")]
    Version {
        /// The version byte found.
        found: u8,
    },
    /// A record carrying Raft entries, written by a format this release does not read.
    #[error("entry record has format version {found}, this release reads entry versions 1 and {ENTRY_FORMAT_VERSION}")]
    EntryVersion {
        /// The version byte found.
        found: u8,
    },
    /// The bytes after the version byte are not a valid record.
    #[error("malformed record: {0}")]
    Decode(String),
    /// A value could not be encoded (a serde error, never an I/O error).
    #[error("cannot encode record: {0}")]
    Encode(String),
}

/// The largest record decoded (the largest gRPC message a node accepts): a
/// length prefix beyond it is refused as malformed instead of allocated.
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    // The limit bounds what a length prefix may ask for; it does not change
    // the bytes written.
    bincode::config::standard().with_limit::<MAX_RECORD>()
}

/// Encodes `value` as a version byte followed by bincode.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(FORMAT_VERSION, value)
}

/// Encodes `value` behind the given version byte (for records whose layout
/// has its own version, such as [`ENTRY_FORMAT_VERSION`]).
pub fn encode_as<T: Serialize + ?Sized>(version: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a record written by [`encode`], refusing unknown versions and trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version { found: version });
    }
    decode_body(body)
}

/// The version byte of a record and the bytes after it, for readers that
/// know more than one layout.
pub fn split_version(bytes: &[u8]) -> Result<(u8, &[u8]), CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    Ok((version, body))
}

/// Decodes the bytes after a version byte, refusing trailing bytes.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the record",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_prefix_beyond_the_limit_is_refused_not_allocated() {
        // A byte string claiming u64::MAX bytes (varint marker 253 + 8 bytes).
        let mut bytes = vec![FORMAT_VERSION, 253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        let r = decode::<crate::types::KvEntry>(&bytes);
        assert!(matches!(r, Err(CodecError::Decode(_))), "{r:?}");
    }

    #[test]
    fn records_round_trip_and_carry_their_version() {
        let bytes = encode(&("key", 7u64)).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (String, u64) = decode(&bytes).unwrap();
        assert_eq!(back, ("key".to_string(), 7));
    }

    #[test]
    fn unknown_versions_truncation_and_garbage_are_refused() {
        let mut bytes = encode(&("key", 7u64)).unwrap();
        assert!(matches!(
            decode::<(String, u64)>(&[]),
            Err(CodecError::Empty)
        ));
        bytes[0] = 9;
        assert!(matches!(
            decode::<(String, u64)>(&bytes),
            Err(CodecError::Version { found: 9 })
        ));
        bytes[0] = FORMAT_VERSION;
        assert!(decode::<(String, u64)>(&bytes[..3]).is_err());
        bytes.push(0);
        assert!(decode::<(String, u64)>(&bytes).is_err());
    }
}
