//! The errors of the consensus layer, each naming what to look at.

use std::path::PathBuf;
use std::time::Duration;

use crate::network::tls::TlsError;
use crate::types::CommandError;

/// What went wrong in a node or a request to it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node's options are inconsistent.
    #[error("invalid node options: {0}")]
    Options(String),
    /// The TLS material is missing or unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The data directory or database could not be opened or written.
    #[error("storage at {path}: {source}")]
    Storage {
        /// The data directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// No leader could be reached within the write timeout; retry later.
    #[error("no leader reachable after {waited:?}: {last}")]
    NoLeader {
        /// How long the node tried.
        waited: Duration,
        /// The last reason a try failed.
        last: String,
    },
    /// The command breaks a limit; fix the request.
    #[error("invalid command: {0}")]
    InvalidCommand(#[from] CommandError),
    /// A membership change was refused (unknown node, would leave no voter, ...).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The peer answered with an error that retrying cannot fix.
    #[error("{peer} refused the request: {message}")]
    Remote {
        /// The peer.
        peer: String,
        /// Its message.
        message: String,
    },
    /// The Raft node has stopped (shut down, or a fatal storage error).
    #[error("raft node stopped: {0}")]
    Stopped(String),
    /// A command could not be encoded or an answer decoded.
    #[error("encoding: {0}")]
    Codec(#[from] crate::codec::CodecError),
    /// A local read failed.
    #[error("read failed: {0}")]
    Read(std::io::Error),
    /// The operating system would not give the node its consensus threads.
    #[error("cannot start the consensus threads: {0}")]
    Threads(std::io::Error),
}

impl Error {
    /// The gRPC status a federation peer answers with for this error.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            Error::InvalidCommand(_) | Error::Options(_) => {
                tonic::Status::invalid_argument(self.to_string())
            }
            Error::Membership(_) => tonic::Status::failed_precondition(self.to_string()),
            // A stopped node (shut down, or its disk failed) will not lead again
            // soon: the caller should retry against whoever leads next.
            Error::NoLeader { .. } | Error::Stopped(_) => {
                tonic::Status::unavailable(self.to_string())
            }
            _ => tonic::Status::internal(self.to_string()),
        }
    }
}
