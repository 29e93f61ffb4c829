//! The policy model and compute engine of Supercluster.
//!
//! This crate is pure (no I/O, no async) so that every replica's state machine can
//! call it deterministically. Today it holds the key scheme under which policy
//! objects live in the replicated store; the model, validation, versions and
//! per-workload compute build on it.

pub mod key;

pub use key::{KeyError, ObjectKey, ObjectKind};
