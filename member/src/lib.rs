//! The supercluster's regional serving path: every member serves the VENs of its
//! region from its own replica.
//!
//! - [`service`]: the VEN gRPC service (pairing, the policy stream, heartbeats
//!   and goodbyes, flow reports, the RTT probe) over TLS;
//! - [`cache`]: the regional compiled-policy cache, kept current from the store's
//!   change notices, which says exactly which served workloads changed;
//!   [`render`]: the JSON a VEN receives, each distinct rule serialised once;
//! - [`pairing`]: a pairing key and host facts become a managed workload and a
//!   VEN identity; [`traffic`]: the region's traffic store and its side of
//!   global flow queries;
//! - [`presence`]: workloads' online/offline state, written in batches.

pub mod cache;
pub mod error;
pub mod metrics;
pub mod pairing;
pub mod presence;
pub mod render;
pub mod service;
pub mod traffic;

pub use error::MemberError;
pub use service::{VenOptions, VenServer};
