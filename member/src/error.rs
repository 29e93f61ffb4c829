//! The member's errors, and how they become gRPC statuses.

use sc_leader::ApiError;

/// Why a member operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// A store read or write failed (message from the API layer).
    #[error("{}", .0.errors.iter().map(|e| format!("{}: {}", e.token, e.message)).collect::<Vec<_>>().join("; "))]
    Store(ApiError),
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

impl From<ApiError> for MemberError {
    fn from(e: ApiError) -> Self {
        MemberError::Store(e)
    }
}

/// The gRPC status for a member error.
pub fn to_status(e: MemberError) -> tonic::Status {
    {
        match &e {
            MemberError::Store(a) if a.status.as_u16() == 503 => {
                tonic::Status::unavailable(e.to_string())
            }
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}
