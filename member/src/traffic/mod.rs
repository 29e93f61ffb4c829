//! The region's traffic store: the flow summaries its VENs report, with both
//! ends resolved at ingest to the workloads and labels they were then, merged
//! per minute, and the region's side of a global Explorer query.
//!
//! Kept in the member's own sled database, never in Raft: flows are
//! high-volume and regional. Everything outside this module sees only
//! [`TrafficStore`], so a region can move its traffic to another engine
//! (decision 0013) without the VEN service or the query path changing.
//!
//! - [`resolve`]: an address → the workload (and labels) it is, from the replica;
//! - [`filter`]: whether a stored flow matches an Explorer query;
//! - [`edges`]: matching flows aggregated between app groups (the map);
//! - `edge_cache`: the map's edges of buckets that have not changed, kept;
//! - `snapshots`: the workload descriptions flows refer to, stored once;
//! - [`store`]: the sled store, its keys, merge, roll-ups and retention.

mod edge_cache;
pub mod edges;
pub mod filter;
pub mod resolve;
mod snapshots;
pub mod store;

pub use resolve::Resolver;
pub use store::{Limits, Maintained, SledTraffic, TrafficStore};
