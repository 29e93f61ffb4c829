//! The policy model and compute engine of Supercluster.
//!
//! This crate is pure (no I/O, no async) so every replica's state machine can
//! call it deterministically:
//! - [`model`]: labels, workloads, services, IP lists, rulesets, boundaries;
//! - [`validate`]: every model rule, with errors naming object and field;
//! - [`version`]: the draft, pending changes, provisioning, impact, diff, rollback;
//! - [`compute`]: per-workload compiled rules, kept current incrementally;
//! - [`render`]: nftables rulesets and flow explanations;
//! - [`flowlog`]: how rendered rules tell the VEN's flow collector what they decided;
//! - [`generate`]: allow rules proposed from observed traffic for one app group;
//! - [`reference`]: the naive evaluator the engine is checked against;
//! - [`guard`]: broad-rule and scope checks for the API layer;
//! - [`addr`]: address sets and minimal CIDRs;
//! - [`key`]: where objects live in the replicated store.
//!
//! Semantics are written down in docs/decisions/0006-policy-semantics.md.

pub mod addr;
pub mod compute;
pub mod flowlog;
pub mod generate;
pub mod guard;
pub mod key;
pub mod model;
pub mod reference;
pub mod render;
pub mod validate;
pub mod version;

pub use compute::{Change, CompiledPolicy, Engine};
pub use key::{KeyError, ObjectKey, ObjectKind};
