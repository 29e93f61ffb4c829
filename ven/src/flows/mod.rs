//! Flow collection: what the kernel decided about each new connection, read
//! from NFLOG (the rendered rules log every decision, see
//! `sc_policy::flowlog`), summarised per (peer, port, decision, rule) for the
//! member.
//!
//! - `packet`: the addresses and ports of a logged packet's IP header;
//! - [`nflog`]: the netlink socket the kernel sends logged packets (and
//!   conntrack events) to;
//! - [`conntrack`]: conntrack's messages and table dump (bytes, state,
//!   long-lived connections);
//! - `socket`: the netlink socket settings both share;
//! - [`summary`]: the bounded per-interval summaries;
//! - [`collector`]: the thread that feeds them, for the agent to report;
//! - [`synthetic`]: made-up flows for the simulator.

pub mod collector;
pub mod conntrack;
pub mod nflog;
mod packet;
mod socket;
pub mod summary;
pub mod synthetic;

pub use collector::Collector;
pub use nflog::{NflogReader, Observed, Seen};
pub use summary::{FlowKey, State, Summaries, Summary};

/// Where an agent's flow summaries come from: the kernel (a [`Collector`]) or,
/// in the simulator, [`synthetic::Synthetic`].
pub trait FlowSource: Send + Sync {
    /// The summaries since the last call, as the wire's flows, and how many
    /// connections did not fit.
    fn take(&self) -> (Vec<sc_proto::ven::Flow>, u64);

    /// The agent's own channel to its members (the control endpoints its
    /// rules accept before any policy): connections with these are not the
    /// workload's traffic and are left out, in either direction.
    fn ignore(&self, _endpoints: &[std::net::SocketAddr]) {}
}

/// Milliseconds since the epoch (the time a connection was seen).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
