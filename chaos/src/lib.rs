//! Fault injection, the multi-region harness, and the linearizability checker.
//!
//! - [`harness::TestCluster`] starts real nodes in this process: real sled data
//!   directories, real certificates from a fresh cluster CA, real mutual-TLS gRPC
//!   on loopback, and the network fault seam shared by all of them. Every
//!   cluster-level test uses it instead of wiring nodes by hand.
//! - [`history`] records every client operation of a run; [`checker`] decides
//!   whether the history is linearizable, key by key.
//! - For runs across processes: [`netns`] builds hosts as network namespaces and
//!   cuts or redirects traffic between them with nftables, [`proxy`] makes a
//!   link slow, and [`schedule`] draws a replayable fault schedule from a seed.
//!   `pce chaos` puts them together against `pce serve` processes.

pub mod checker;
pub mod harness;
pub mod history;
pub mod netns;
pub mod proxy;
pub mod schedule;

pub use harness::{TestCluster, Writer};
