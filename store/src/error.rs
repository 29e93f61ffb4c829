//! The store's error type. It names what went wrong in store terms; the admin
//! API turns it into an HTTP answer and the VEN service into a gRPC status, each
//! in its own crate, so neither protocol leaks into the other.

use sc_policy::validate::ValidationError;

/// Why a store read, a commit or a plan failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No leader can take a write now (election, or this region is cut off):
    /// the caller should retry shortly.
    #[error("{0}")]
    NoLeader(String),
    /// The Raft layer refused or failed (its own error, kept for the mapping).
    #[error(transparent)]
    Raft(#[from] sc_raft::Error),
    /// The state machine refused the command as too large or malformed.
    #[error("the change cannot be stored: {0}")]
    TooLarge(String),
    /// A stored value does not decode: a fault of ours, never the caller's.
    #[error("stored record: {0}")]
    Corrupt(String),
    /// A value would not encode.
    #[error("encoding a record: {0}")]
    Encode(String),
    /// The policy engine refused the world a write would make.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    /// What a write depended on kept changing through every planning attempt.
    #[error("the objects this request depends on kept changing; try again ({0})")]
    KeptChanging(String),
    /// Anything else of ours.
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// Whether the caller may simply try again soon (no leader right now).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::NoLeader(_)
                | StoreError::Raft(sc_raft::Error::NoLeader { .. } | sc_raft::Error::Stopped(_))
        )
    }
}
