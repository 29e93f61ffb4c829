//! Fault injection and the linearizability checker (the in-process test
//! cluster is `sc-testkit`).
//!
//! - [`history`] records every client operation of a run; [`checker`] decides
//!   whether the history is linearizable, key by key.
//! - For runs across processes: [`netns`] builds hosts as network namespaces and
//!   cuts or redirects traffic between them with nftables, [`proxy`] makes a
//!   link slow, and [`schedule`] draws a replayable fault schedule from a seed.
//!   [`runner`] (`pce chaos`) puts them together against `pce serve`
//!   processes and VEN simulators.

pub mod checker;
pub mod history;
pub mod netns;
pub mod proxy;
pub mod runner;
pub mod schedule;
