//! The inter-region network: mutual TLS, one cached channel per peer, the Raft
//! RPCs (client and server), the federation RPCs, and the fault seam.
//!
//! - [`tls`]: loading certificates and building both sides' TLS configs.
//! - [`faults`]: the seam tests use to drop, delay and partition traffic.
//! - [`fence`]: a node's own drill fence (no Raft or federation traffic, both
//!   ways), which lifts itself at its deadline.
//! - [`peers`]: the per-peer channel cache shared by Raft and federation clients.
//! - [`raft_client`] / [`raft_server`]: openraft's `RaftNetwork` over gRPC.
//! - [`append_stream`]: AppendEntries on one long-lived stream per peer.
//! - [`federation`]: forwarding, ReadIndex, membership changes, status.
//! - [`callers`]: which certificates may call which service (members only,
//!   but for status and a node's own join).
//! - [`liveness`]: noticing that the leader's process is gone (its
//!   connection closed and its address refuses connections).
//! - [`listen`]: accepting connections within caps and timeouts (every
//!   server of a node, the admin API's included).

pub(crate) mod append_stream;
pub mod callers;
pub mod faults;
pub mod federation;
pub mod fence;
pub mod listen;
pub mod liveness;
pub mod peers;
pub mod raft_client;
pub mod raft_server;
pub mod read_spin;
pub mod tls;
pub mod transfer;

pub use faults::NetFaults;
pub use fence::Fence;
pub use liveness::Liveness;
pub use peers::Peers;
pub use tls::TlsMaterial;
pub use transfer::Transfer;
