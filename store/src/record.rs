//! The envelope of every stored object: a format version, who made and changed
//! it, and the object itself; and the one encoding the store uses for them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::keys::{Id, Kind};

/// Who made and last changed an object, and when: Illumio's metadata fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Creation time (ms).
    pub created_at: u64,
    /// Last change (ms).
    pub updated_at: u64,
    /// User href.
    pub created_by: String,
    /// User href.
    pub updated_by: String,
}

/// The record format version; bump when a stored shape changes incompatibly.
pub const RECORD_V: u8 = 1;

/// One stored object: format version, metadata, the doc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record<T> {
    /// Format version ([`RECORD_V`]); a record of a newer format is refused
    /// by name when read, not misread.
    #[serde(deserialize_with = "known_version")]
    pub v: u8,
    /// Metadata.
    pub meta: Meta,
    /// The object.
    pub doc: T,
}

/// Reads a record's format version, refusing one this release cannot read.
fn known_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = u8::deserialize(d)?;
    if v > RECORD_V {
        return Err(serde::de::Error::custom(format!(
            "record format version {v}, this release reads version {RECORD_V}: \
             run the release that wrote it (upgrade this node)"
        )));
    }
    Ok(v)
}

/// Decodes a stored value. A value that does not decode is our fault (a
/// corrupt or foreign record), never the caller's.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The object inside a stored record, for readers that need no metadata.
pub fn decode_doc<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(decode::<Record<T>>(bytes)?.doc)
}

/// Encodes a value for the store.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))
}

/// A stored object kind: what the store itself must know of it, whichever API
/// wrote it: its kind, the name that must stay unique, what it refers to (an
/// object in use cannot be deleted; a write must find its references).
pub trait Object: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The kind.
    const KIND: Kind;
    /// A name that must be unique within the kind, if the kind has one.
    fn unique_name(&self) -> Option<String>;
    /// Every object this one refers to.
    fn refs(&self) -> Vec<(Kind, Id)>;
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn a_record_of_a_newer_format_is_refused_by_name() {
        let ok = br#"{"v":1,"meta":{"created_at":1,"updated_at":1,"created_by":"a","updated_by":"a"},"doc":5}"#;
        assert_eq!(decode_doc::<u32>(ok).unwrap(), 5);
        let newer = br#"{"v":2,"meta":{"created_at":1,"updated_at":1,"created_by":"a","updated_by":"a"},"doc":5}"#;
        let e = decode_doc::<u32>(newer).unwrap_err().to_string();
        assert!(
            e.contains("format version 2") && e.contains("reads version 1"),
            "{e}"
        );
    }
}
