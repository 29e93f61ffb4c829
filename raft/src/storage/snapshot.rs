//! The snapshot file: what a node sends a far-behind peer, and what it keeps to
//! truncate its log.
//!
//! Layout: the magic `PCESNAP1`, then length-prefixed records (each a format
//! version byte and bincode), ending with an `End` record that counts them, then a
//! CRC-32 of everything before it. A torn or corrupted transfer is detected before
//! a single key of it is installed.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::SnapshotMeta;
use serde::{Deserialize, Serialize};

use super::codec_io;
use crate::codec;
use crate::types::{ClientId, CommandResponse, KvEntry, NodeId, NodeInfo};

/// The handle of a finished snapshot file (defined with openraft's types).
pub use crate::types::SnapshotFile;

const MAGIC: &[u8; 8] = b"PCESNAP1";
/// Records bigger than this are refused as corrupt: keys and values are bounded
/// far below it.
const MAX_RECORD: u32 = 16 * 1024 * 1024;

/// One record of a snapshot file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SnapRecord {
    /// First record: what the snapshot covers.
    Header {
        /// The Raft meta (last log id, membership, id).
        meta: SnapshotMeta<NodeId, NodeInfo>,
        /// The store revision at that point.
        revision: u64,
    },
    /// One key of the store.
    Kv {
        /// The key.
        #[serde(with = "crate::raw_bytes")]
        key: Vec<u8>,
        /// Its value and revisions.
        entry: KvEntry,
    },
    /// One writer's last request, so retries stay exactly-once across snapshots.
    Session {
        /// The writer.
        client: ClientId,
        /// Its last applied serial.
        serial: u64,
        /// The answer it got.
        response: CommandResponse,
    },
    /// Last record: how many came before it.
    End {
        /// Records before this one.
        records: u64,
    },
}

/// Writes a snapshot file record by record.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    records: u64,
    path: PathBuf,
}

impl SnapshotWriter {
    /// Creates (or replaces) the file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        let mut w = SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
            records: 0,
            path: path.to_path_buf(),
        };
        w.raw(MAGIC)?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    /// Appends one record.
    pub fn write(&mut self, record: &SnapRecord) -> io::Result<()> {
        let bytes = codec::encode(record).map_err(codec_io)?;
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "snapshot record too large")
            })?;
        self.raw(&len.to_le_bytes())?;
        self.raw(&bytes)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the end record and checksum and makes the file durable.
    pub fn finish(mut self) -> io::Result<SnapshotFile> {
        let records = self.records;
        self.write(&SnapRecord::End { records })?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        sync_dir_of(&self.path)?;
        Ok(SnapshotFile { path: self.path })
    }
}

/// fsyncs the directory holding `path`, so a new or renamed file survives a crash.
pub fn sync_dir_of(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Checks a snapshot file's magic and checksum, then reads all its records.
///
/// Calls `each` for every record after the header and returns the header, so an
/// installer can stream keys into a fresh tree without holding them all.
pub fn read_snapshot(
    path: &Path,
    mut each: impl FnMut(SnapRecord) -> io::Result<()>,
) -> io::Result<(SnapshotMeta<NodeId, NodeInfo>, u64)> {
    verify_checksum(path)?;
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    let mut header = None;
    let mut count = 0u64;
    loop {
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD {
            return Err(corrupt(format!("snapshot record of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        input.read_exact(&mut buf)?;
        let record: SnapRecord = codec::decode(&buf).map_err(codec_io)?;
        match record {
            SnapRecord::Header { meta, revision } if header.is_none() && count == 0 => {
                header = Some((meta, revision));
            }
            SnapRecord::End { records } => {
                if records != count {
                    return Err(corrupt(format!(
                        "snapshot end record counts {records} records, file has {count}"
                    )));
                }
                return header.ok_or_else(|| corrupt("snapshot has no header"));
            }
            _ if header.is_none() => return Err(corrupt("snapshot does not start with a header")),
            SnapRecord::Header { .. } => return Err(corrupt("snapshot has two headers")),
            other => each(other)?,
        }
        count += 1;
    }
}

fn verify_checksum(path: &Path) -> io::Result<()> {
    let len = fs::metadata(path)?.len();
    if len < (MAGIC.len() + 4) as u64 {
        return Err(corrupt("snapshot file is truncated"));
    }
    let mut input = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        // The last byte of the magic is the file format's version.
        if magic[..7] == MAGIC[..7] {
            return Err(corrupt(format!(
                "snapshot file format {}, this release reads format {}: restore it with the release that wrote it",
                char::from(magic[7]),
                char::from(MAGIC[7])
            )));
        }
        return Err(corrupt("not a Supercluster snapshot file (bad magic)"));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&magic);
    let mut remaining = len - 4 - MAGIC.len() as u64;
    let mut buf = vec![0u8; 1 << 16];
    while remaining > 0 {
        let n = remaining.min(buf.len() as u64) as usize;
        input.read_exact(&mut buf[..n])?;
        crc.update(&buf[..n]);
        remaining -= n as u64;
    }
    let mut stored = [0u8; 4];
    input.read_exact(&mut stored)?;
    if crc.finalize() != u32::from_le_bytes(stored) {
        return Err(corrupt("snapshot checksum mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Outcome;

    fn meta() -> SnapshotMeta<NodeId, NodeInfo> {
        SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "s1".into(),
        }
    }

    fn write_sample(path: &Path) -> SnapshotFile {
        let mut w = SnapshotWriter::create(path).unwrap();
        w.write(&SnapRecord::Header {
            meta: meta(),
            revision: 7,
        })
        .unwrap();
        w.write(&SnapRecord::Kv {
            key: b"k".to_vec(),
            entry: KvEntry {
                value: b"v".to_vec(),
                create_revision: 1,
                mod_revision: 7,
                version: 3,
            },
        })
        .unwrap();
        w.write(&SnapRecord::Session {
            client: ClientId(9),
            serial: 4,
            response: CommandResponse {
                revision: 7,
                outcome: Outcome::Applied,
            },
        })
        .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn a_snapshot_of_a_newer_format_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_sample(&dir.path().join("s.snap"));
        let mut bytes = std::fs::read(&file.path).unwrap();
        bytes[7] = b'2';
        std::fs::write(&file.path, bytes).unwrap();
        let e = read_snapshot(&file.path, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format 2") && e.contains("reads format 1"),
            "{e}"
        );
    }

    #[test]
    fn a_written_snapshot_reads_back_record_for_record() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_sample(&dir.path().join("s.snap"));
        let mut seen = vec![];
        let (m, rev) = read_snapshot(&file.path, |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!((m, rev), (meta(), 7));
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn any_flipped_or_missing_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let file = write_sample(&dir.path().join("s.snap"));
        let good = fs::read(&file.path).unwrap();
        for i in [0, 9, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&file.path, &bad).unwrap();
            assert!(
                read_snapshot(&file.path, |_| Ok(())).is_err(),
                "flip at {i}"
            );
        }
        fs::write(&file.path, &good[..good.len() - 5]).unwrap();
        assert!(read_snapshot(&file.path, |_| Ok(())).is_err());
    }
}
