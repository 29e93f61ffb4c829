//! Flow collection: what the kernel decided about each new connection, read
//! from NFLOG (the rendered rules log every decision, see
//! `sc_policy::flowlog`), summarised per (peer, port, decision, rule) for the
//! member.
//!
//! - `packet`: the addresses and ports of a logged packet's IP header;
//! - [`nflog`]: the netlink socket the kernel sends logged packets to;
//! - [`summary`]: the bounded per-interval summaries.

pub mod nflog;
mod packet;
pub mod summary;

pub use nflog::{NflogReader, Observed};
pub use summary::{FlowKey, Summaries, Summary};
