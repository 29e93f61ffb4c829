//! The member's errors, and how they become gRPC statuses.

use sc_store::StoreError;

/// Why a member operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// A store read or write failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The flow store.
    #[error("flow store: {0}")]
    Flows(#[from] sled::Error),
    /// A lock was poisoned by a panic elsewhere.
    #[error("internal lock poisoned")]
    Poisoned,
    /// Starting the service.
    #[error("VEN service: {0}")]
    Start(String),
}

/// The gRPC status for a member error: a store without a leader is
/// `UNAVAILABLE` (the VEN retries or fails over); the rest is ours, `INTERNAL`.
pub fn to_status(e: MemberError) -> tonic::Status {
    match &e {
        MemberError::Store(s) if s.is_unavailable() => tonic::Status::unavailable(e.to_string()),
        _ => tonic::Status::internal(e.to_string()),
    }
}
