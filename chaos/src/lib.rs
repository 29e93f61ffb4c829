//! Fault injection and the multi-region harness.
//!
//! [`harness::TestCluster`] starts real nodes in this process: real sled data
//! directories, real certificates from a fresh cluster CA, real mutual-TLS gRPC
//! on loopback, and the network fault seam shared by all of them. Every
//! cluster-level test uses it instead of wiring nodes by hand.

pub mod harness;

pub use harness::{TestCluster, Writer};
