//! Durable storage of the Raft log and the policy state machine.
//!
//! - [`engine`]: the seam between the log and the disk ([`LogEngine`]), with the
//!   sled implementation that fsyncs where sled alone would not.
//! - [`log_store`]: openraft's `RaftLogStorage` on top of any [`LogEngine`], with a
//!   group-commit flusher so that many concurrent writes share one fsync.
//! - [`state_machine`]: openraft's `RaftStateMachine`: the ordered key/value model
//!   with revisions and client sessions, applied atomically.
//! - [`snapshot`]: the checksummed snapshot file format.

pub mod engine;
pub mod log_store;
pub mod snapshot;
pub mod state_machine;

pub use engine::{LogEngine, SledEngine};
pub use log_store::LogStore;
pub use snapshot::SnapshotFile;
pub use state_machine::{ReadView, StateMachine};

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
