//! The VEN agent: pairing, nearest-member selection and failover, a local policy
//! cache, nftables enforcement and flow reporting, plus a lightweight simulator.
//!
//! It speaks only `sc_proto` and never imports server crates. Nothing here yet:
//! the crate exists so the workspace has its final shape.
