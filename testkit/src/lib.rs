//! What tests share, in one dev-only crate (never a dependency of shipped code):
//!
//! - [`cluster`]: [`TestCluster`] starts real nodes in this process (real sled
//!   data directories, certificates from a fresh cluster CA, mutual-TLS gRPC on
//!   loopback, one network fault seam for all of them), with a [`Writer`] and
//!   reads that tests use to prove what was committed;
//! - [`api`]: [`ApiCluster`], the same cluster with the admin API served by
//!   every node and the owner's key, and the request helpers API tests use;
//! - [`browser`]: headless Chromium over WebDriver for the console's tests;
//! - [`ports`]: ports for listeners tests start, that no other test takes.

pub mod api;
pub mod browser;
pub mod cluster;
pub mod ports;

pub use api::ApiCluster;
pub use cluster::{init_tracing, read, test_timeouts, TestCluster, Writer};
pub use ports::free_port;
