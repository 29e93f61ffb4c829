//! The workload-only fast path of an update: a workload change leaves every
//! rule definition alone, so each touched rule is patched (members join or
//! leave, peer sets rebuilt only if needed) instead of resolved again, which
//! would read every member of the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::engine::{Engine, Rx};
use super::members::{insert_sorted, remove_sorted};
use crate::model::{Id, Workload};

impl Engine {
    /// Brings one rule up to date after workload changes, without resolving it
    /// again: each changed workload joins or leaves the rule's sides, and a side's
    /// peer set is rebuilt only if a member of it came, went or moved.
    pub(super) fn patch_rule(
        &mut self,
        r: Rx,
        old: &BTreeMap<Id, Option<Workload>>,
        indexes: &BTreeMap<Id, u32>,
        affected: &mut BTreeSet<u32>,
    ) {
        if !self.rules.contains_key(&r) {
            return;
        }
        // (index, was provider, is provider, was consumer, is consumer, addresses moved)
        let mut moves = Vec::new();
        {
            let Some(p) = self.rule_parts(r) else { return };
            let Some(data) = self.rules.get(&r) else {
                return;
            };
            for (id, before) in old {
                let now = self.estate.workloads.get(id);
                // A removed workload keeps its old index here, so it can leave.
                let Some(&w) = indexes.get(id) else { continue };
                let (is_p, is_c) = match now {
                    Some(wl) => {
                        let in_scope = match p.scope {
                            Some(s) if !s.is_empty() => self.labels_match(wl, s) != Some(false),
                            _ => true,
                        };
                        let is_p = in_scope && self.workload_matches(wl, p.providers);
                        let is_c = (p.unscoped_consumers || in_scope)
                            && self.workload_matches(wl, p.consumers);
                        (is_p, is_c)
                    }
                    None => (false, false),
                };
                let was_p = data.providers.binary_search(&w).is_ok();
                let was_c = data.consumers.binary_search(&w).is_ok();
                let moved = match (before, now) {
                    (Some(a), Some(b)) => a.interfaces != b.interfaces || a.online != b.online,
                    _ => true,
                };
                moves.push((w, was_p, is_p, was_c, is_c, moved));
            }
        }
        let Some(mut data) = self.rules.remove(&r) else {
            return;
        };
        let (mut consumers_dirty, mut providers_dirty) = (false, false);
        for &(w, was_p, is_p, was_c, is_c, moved) in &moves {
            if was_p != is_p {
                if is_p {
                    insert_sorted(&mut data.providers, w);
                    self.as_provider.entry(w).or_default().insert(r);
                } else {
                    remove_sorted(&mut data.providers, w);
                    if let Some(set) = self.as_provider.get_mut(&w) {
                        set.remove(&r);
                    }
                }
                affected.insert(w);
            }
            if was_c != is_c {
                if is_c {
                    insert_sorted(&mut data.consumers, w);
                    self.as_consumer.entry(w).or_default().insert(r);
                } else {
                    remove_sorted(&mut data.consumers, w);
                    if let Some(set) = self.as_consumer.get_mut(&w) {
                        set.remove(&r);
                    }
                }
                affected.insert(w);
            }
            consumers_dirty |= (was_c || is_c) && (was_c != is_c || moved);
            providers_dirty |= (was_p || is_p) && (was_p != is_p || moved);
        }
        if consumers_dirty {
            let ips = self
                .rule_parts(r)
                .map(|p| self.ip_list_addrs(p.consumers))
                .unwrap_or_default();
            let peers = self.online_addrs(&data.consumers).union(&ips);
            if *data.consumer_peers != peers {
                data.consumer_peers = Arc::new(peers);
                affected.extend(data.providers.iter().copied());
            }
        }
        if providers_dirty {
            let ips = self
                .rule_parts(r)
                .map(|p| self.ip_list_addrs(p.providers))
                .unwrap_or_default();
            let peers = self.online_addrs(&data.providers).union(&ips);
            if *data.provider_peers != peers {
                data.provider_peers = Arc::new(peers);
                affected.extend(data.consumers.iter().copied());
            }
        }
        self.rules.insert(r, data);
    }
}
