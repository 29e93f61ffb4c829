//! Durable storage of the Raft log and the policy state machine.
//!
//! - [`engine`]: the seam between the log and the disk ([`LogEngine`]), with the
//!   sled implementation that fsyncs where sled alone would not.
//! - [`wal`]: the engine nodes run: segment files with one `fdatasync` per
//!   group commit (decision 0018).
//! - [`log_store`]: openraft's `RaftLogStorage` on top of any [`LogEngine`], with a
//!   group-commit flusher so that many concurrent writes share one fsync.
//! - [`state_machine`]: openraft's `RaftStateMachine`: the ordered key/value model
//!   with revisions and client sessions, applied atomically.
//! - [`key_filter`]: which keys the state machine may hold, so a put of a new
//!   key does not read sled.
//! - [`overlay`]: applied changes not yet written to sled, and reads through them
//!   (the state machine writes behind, decision 0021).
//! - [`snapshot`]: the checksummed snapshot file format.
//! - [`durable`]: how far the log is on disk, for what may not run ahead of it
//!   (a leader's own appends are reported flushed before their sync, decision
//!   0027).

pub(crate) mod durable;
pub mod engine;
pub(crate) mod key_filter;
pub mod log_store;
pub mod notices;
pub(crate) mod overlay;
pub mod sled_writes;
pub mod snapshot;
pub mod state_machine;
pub mod wal;

pub use engine::{DiskFaults, LogEngine, SledEngine};
pub use log_store::{copy_log, LogStore};
pub use snapshot::SnapshotFile;
pub use state_machine::{ReadView, StateMachine};
pub use wal::WalEngine;

/// The log a running node keeps (the engine decision 0018 chose).
pub type NodeLog = LogStore<WalEngine>;

use std::io;

use openraft::{ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::types::NodeId;

/// Wraps an I/O error into openraft's storage error, naming what was being done.
pub(crate) fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &io::Error,
) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, openraft::AnyError::new(e)),
    }
}

/// Converts a sled error into an I/O error (sled's own errors carry no extra meaning for us).
pub(crate) fn sled_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Converts a codec error (a corrupt or foreign record) into an I/O error.
pub(crate) fn codec_io(e: crate::codec::CodecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Opens the node's sled database, waiting briefly if the previous holder (an
/// in-process node being restarted, whose flusher thread is still exiting) has not
/// released sled's file lock yet.
pub fn open_db(dir: &std::path::Path) -> io::Result<sled::Db> {
    let mut tries = 0;
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(sled_io(e)),
        }
    }
}

/// Opens a node's Raft log (`raft-log/`) and state machine (`store/`) under
/// `data_dir`, moving a log an earlier version kept in sled out of it first.
pub fn open_node_storage(
    data_dir: &std::path::Path,
    snapshot_dir: &std::path::Path,
    faults: &DiskFaults,
) -> io::Result<(NodeLog, StateMachine)> {
    crate::private::make_private(data_dir)?;
    check_data_format(data_dir)?;
    let store_dir = data_dir.join("store");
    std::fs::create_dir_all(&store_dir)?;
    let db = open_db(&store_dir)?;
    let log_dir = data_dir.join("raft-log");
    if !log_dir.exists() {
        move_log_out_of_sled(&db, &store_dir, data_dir, faults)?;
    }
    let log = LogStore::new(WalEngine::open(&log_dir, faults.clone())?)?;
    let sm = StateMachine::open(db, &store_dir, snapshot_dir)?;
    Ok((log, sm))
}

/// The format of a node's data directory as a whole, in its `FORMAT` file.
/// Records inside carry their own versions; this one is for what a record
/// cannot say: a release that moved data one way (the log out of sled, the
/// traffic tree into partitions) bumps it, so an older binary put back on the
/// directory refuses it by name instead of opening what it half understands.
pub const DATA_FORMAT: u32 = 1;

/// Refuses a data directory of a newer format; marks a new (or older,
/// unmarked) one as this release's.
fn check_data_format(data_dir: &std::path::Path) -> io::Result<()> {
    let path = data_dir.join("FORMAT");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = text
                .trim()
                .strip_prefix("supercluster-data ")
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: not a Supercluster data format marker: {text:?}",
                            path.display()
                        ),
                    )
                })?;
            if found > DATA_FORMAT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds data format {found}, written by a newer release; this release reads format {DATA_FORMAT}: \
                         run that release (or restore a backup into a new directory to go back)",
                        data_dir.display()
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = data_dir.join("FORMAT.tmp");
            std::fs::write(&tmp, format!("supercluster-data {DATA_FORMAT}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            engine::sync_dir(data_dir)
        }
        Err(e) => Err(e),
    }
}

/// Moves a Raft log that an earlier version kept in sled into `raft-log/`.
///
/// Crash-safe: the copy is made whole and durable under another name, then
/// renamed into place; until the rename the sled log is the log. Nothing to do
/// for a new node (an empty sled log).
fn move_log_out_of_sled(
    db: &sled::Db,
    store_dir: &std::path::Path,
    data_dir: &std::path::Path,
    faults: &DiskFaults,
) -> io::Result<()> {
    let old = SledEngine::open(db.clone(), store_dir, faults.clone())?;
    if old.last()?.is_none() && old.meta_cells()?.is_empty() {
        return Ok(());
    }
    let partial = data_dir.join("raft-log.moving");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    let moved = copy_log(&old, &WalEngine::open(&partial, faults.clone())?)?;
    std::fs::rename(&partial, data_dir.join("raft-log"))?;
    engine::sync_dir(data_dir)?;
    old.clear()?;
    tracing::info!(
        records = moved,
        "moved the Raft log out of sled into raft-log/"
    );
    Ok(())
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn a_data_directory_is_marked_and_a_newer_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        check_data_format(dir.path()).unwrap();
        let marker = std::fs::read_to_string(dir.path().join("FORMAT")).unwrap();
        assert_eq!(marker, "supercluster-data 1\n");
        check_data_format(dir.path()).unwrap();
        std::fs::write(dir.path().join("FORMAT"), "supercluster-data 2\n").unwrap();
        let e = check_data_format(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("data format 2") && e.contains("reads format 1"),
            "{e}"
        );
        std::fs::write(dir.path().join("FORMAT"), "garbage").unwrap();
        assert!(check_data_format(dir.path()).is_err());
    }
}
