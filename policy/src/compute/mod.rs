//! The compute engine: per-workload compiled rules, built once and kept current
//! incrementally.
//!
//! Cost model. A rule's provider set, consumer set and peer address sets are
//! computed once per rule (from a label → workloads index), not once per
//! workload; every compiled rule of every provider shares the rule's peer set.
//! A full compute therefore costs the sum of the rules' sizes plus one entry per
//! (workload, rule) pair. A change recomputes only the rules it can touch (found
//! through label/group/IP list/service/workload → rule indexes) and then only
//! the workloads whose rules moved, and reports exactly those whose output
//! changed.
//!
//! Layout, in the order data flows through it:
//! - `compiled`: the output types ([`CompiledPolicy`], [`Verdict`], ...);
//! - `engine`: the [`Engine`]'s state and per-rule records, the full compute,
//!   the workload-side indexes;
//! - `change`: what a caller reports changed ([`Change`]);
//! - `rules`: interned rules and their definitions in one shape;
//! - `index`: object → rule reverse indexes, to find what a change touches;
//! - `resolve`: a rule's members, peer addresses and ports;
//! - `compile`: one workload's resolved rules → its compiled policy;
//! - `update`: the incremental update, step by step;
//! - `patch`: its fast path for workload-only changes;
//! - `members`: sorted workload index sets.

mod change;
mod compile;
mod compiled;
mod engine;
mod index;
mod members;
mod patch;
mod resolve;
mod rules;
mod update;

pub use change::Change;
pub use compiled::{Action, CompiledPolicy, CompiledRule, Ports, Verdict};
pub use engine::Engine;
pub use resolve::ip_list_set;
