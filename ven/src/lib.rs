//! The VEN agent: pairing, nearest-member selection and failover, a local policy
//! cache, nftables enforcement, plus a lightweight simulator for scale tests.
//!
//! It speaks only `sc_proto` (and renders with `sc_policy`), never server crates:
//! - [`identity`]: pairing, and the identity and policy kept on disk;
//! - [`agent`]: the connection loop (nearest member, stream, acks, failover);
//! - [`enforce`]: applying a policy (nftables, dry run, or in memory);
//! - [`flows`]: what the kernel decided about each new connection (NFLOG), summarised;
//! - `applier`: running that host work off the async threads, in order;
//! - [`sim`]: what the simulator records of each simulated VEN.

pub mod agent;
mod applier;
pub mod enforce;
pub mod flows;
pub mod identity;
pub mod sim;

pub use agent::{Agent, AgentEvent, FleetEvent};
pub use enforce::Enforcer;
pub use identity::{Identity, StoredPolicy, VenError};
