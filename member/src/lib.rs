//! The regional serving path: the VEN gRPC service, the per-region compiled
//! policy cache fed by the replica's change notices, pushes to affected VENs,
//! heartbeats and region-local flow storage.
//!
//! It reads from the local replica of `sc_raft` and never computes rules for
//! other regions. Nothing here yet: the crate exists so the workspace has its
//! final shape.
