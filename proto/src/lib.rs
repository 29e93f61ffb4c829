//! Wire types of Supercluster, generated from `proto/*.proto` by tonic/prost.
//!
//! Only wire types and the contracts both ends compute ([`contract`]) live here,
//! so every other crate (nodes, VENs, tools) can speak the protocol without
//! pulling in server code.

pub mod codec;
pub mod contract;
pub mod framing;
pub mod version;

/// The inter-region Raft transport (openraft messages as opaque payloads).
pub mod raft {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("supercluster.raft.v1");
}

/// The inter-region application channel: forwarding, ReadIndex, membership, status.
pub mod federation {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("supercluster.federation.v1");
}

/// The VEN service: pairing, the policy stream, flows.
pub mod ven {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("supercluster.ven.v1");
}

/// Recorded older protocols, client side only: what a VEN of an earlier
/// release sends and expects, so tests prove today's members still serve it.
pub mod compat {
    /// The VEN service of protocol 1 (`proto/compat/ven-protocol-1.proto`).
    pub mod ven_protocol_1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/compat/supercluster.ven.v1.rs"));
    }
}
