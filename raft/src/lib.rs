//! Supercluster's consensus layer: every region's PCE node holds a replica of one
//! policy store, kept identical by openraft over mutual-TLS gRPC.
//!
//! Split as openraft's examples are, so the parts do not know each other's insides:
//! - [`storage`]: the Raft log (segment files) and the policy store state
//!   machine (sled, written behind the apply);
//! - [`network`]: the tonic transport (Raft RPCs, federation RPCs, TLS, faults);
//! - [`node`]: the application side, the single path for writes, reads,
//!   membership changes and status;
//! - `start`: wires storage, the network servers and a [`Node`] together (the
//!   node imports no server; the servers import the node);
//! - [`convert`]: every federation message ↔ domain type conversion;
//! - [`types`]: the domain types everything else builds on;
//! - `proposer`: the leader's concurrent writes gathered into shared entries;
//! - `read_index`: a follower's ReadIndex confirmed by its own vote;
//! - `entry_format`: how entries are written to the log and the wire, in both
//!   formats a node reads;
//! - `runtime`: the threads a node's Raft work runs on, apart from the VEN
//!   service and the admin API.
//!
//! openraft's types stay inside this crate; other crates use [`Node`], [`Command`]
//! and friends.

pub mod client;
mod coalesce;
pub mod codec;
pub mod config;
pub mod convert;
mod election;
mod entry_format;
pub mod error;
mod instruments;
pub mod metrics;
pub mod network;
pub mod node;
pub mod pki;
pub mod private;
mod proposer;
mod raw_bytes;
mod read_index;
pub mod runtime;
mod start;
pub mod status;
pub mod storage;
pub mod types;
mod watchdog;

pub use client::Client;
pub use config::{Profile, Timeouts, Tuning};
pub use error::Error;
pub use network::{NetFaults, TlsMaterial};
pub use node::{Consistency, FlowQueries, MembershipOp, MembershipView, Node, NodeOptions};
pub use status::{NodeStatus, PeerStatus};
pub use storage::engine::DiskFaults;
pub use storage::state_machine::{ChangeNotice, ReadResult};
pub use types::{
    ClientId, Command, CommandResponse, Compare, KvEntry, Mutation, NodeId, NodeInfo, Outcome,
    Proposal,
};
