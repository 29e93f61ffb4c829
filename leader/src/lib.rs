//! The supercluster write path, seen from the ops team: the admin REST API
//! (axum), authentication, RBAC, validation and provisioning.
//!
//! The transport half of "writes from any region go to the leader" already lives
//! in `sc_raft::Node::write` (forwarding over the inter-region mutual-TLS
//! channel); this crate will put the HTTP API, identities and roles in front of
//! it. Nothing here yet: the crate exists so the workspace has its final shape.
