//! Compiling: turning a workload's resolved rules into its
//! [`CompiledPolicy`], and telling which workloads' output actually changed.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::compiled::{Action, CompiledPolicy, CompiledRule};
use super::engine::Engine;
use crate::model::{EnforcementMode, Id};

/// Inbound precedence: override deny, then allow, then deny.
fn rank(a: Action) -> u8 {
    match a {
        Action::OverrideDeny => 0,
        Action::Allow => 1,
        Action::Deny => 2,
    }
}

impl Engine {
    /// Workload `w`'s compiled policy from its linked rules (`None`: gone or
    /// unmanaged).
    pub(super) fn compile(&self, w: u32) -> Option<CompiledPolicy> {
        let id = self.id_of.get(w as usize)?.as_ref()?;
        let wl = self.estate.workloads.get(id)?;
        if !wl.managed {
            return None;
        }
        let mut inbound = Vec::new();
        if let Some(rules) = self.as_provider.get(&w) {
            for r in rules {
                if let Some(d) = self.rules.get(r) {
                    inbound.push(CompiledRule {
                        action: d.action,
                        peers: d.consumer_peers.clone(),
                        ports: d.ports.clone(),
                        source: self.rule_ref[*r as usize].clone(),
                    });
                }
            }
        }
        inbound.sort_by(|a, b| (rank(a.action), &a.source).cmp(&(rank(b.action), &b.source)));
        let mut outbound = Vec::new();
        if wl.mode == EnforcementMode::Full {
            if let Some(rules) = self.as_consumer.get(&w) {
                for r in rules {
                    // Outbound, only allow rules open holes; deny rules are enforced
                    // on the provider's side.
                    if let Some(d) = self.rules.get(r).filter(|d| d.action == Action::Allow) {
                        outbound.push(CompiledRule {
                            action: Action::Allow,
                            peers: d.provider_peers.clone(),
                            ports: d.ports.clone(),
                            source: self.rule_ref[*r as usize].clone(),
                        });
                    }
                }
            }
        }
        outbound.sort_by(|a, b| a.source.cmp(&b.source));
        let mut addresses = wl.interfaces.clone();
        addresses.sort();
        addresses.dedup();
        Some(CompiledPolicy {
            workload: id.clone(),
            mode: wl.mode,
            addresses,
            inbound,
            outbound,
            visibility: wl.visibility,
        })
    }

    /// Recompiles the given workloads and returns those whose output changed.
    pub(super) fn recompile(&mut self, affected: BTreeSet<u32>) -> BTreeSet<Id> {
        let mut changed = BTreeSet::new();
        for w in affected {
            let new = self.compile(w).map(Arc::new);
            let old = self.compiled.remove(&w);
            let id = self.id_of.get(w as usize).cloned().flatten();
            let differs = match (&old, &new) {
                (Some(a), Some(b)) => a != b,
                (None, None) => false,
                _ => true,
            };
            if differs {
                let name = id.or_else(|| old.as_ref().map(|o| o.workload.clone()));
                if let Some(name) = name {
                    changed.insert(name);
                }
            }
            if let Some(n) = new {
                self.compiled.insert(w, n);
            }
        }
        changed
    }
}
