//! The reverse indexes (object → rules that mention it) by which a change
//! finds the only rules it can touch, so an update never scans every rule.

use std::collections::{BTreeSet, HashMap};

use super::change::Change;
use super::engine::{Engine, RuleRefs, Rx};
use crate::model::{Actor, Id, RuleRef, ServiceRef};

impl Engine {
    fn refs_of(&self, r: Rx) -> RuleRefs {
        let mut refs = RuleRefs::default();
        let Some(p) = self.rule_parts(r) else {
            return refs;
        };
        let scope = p.scope.map(|s| s.as_slice()).unwrap_or(&[]);
        for a in scope {
            match a {
                Actor::Label(l) => {
                    refs.scope_labels.insert(l.clone());
                }
                Actor::LabelGroup(g) => {
                    refs.groups.insert(g.clone());
                    if let Some(ls) = self.group_labels.get(g) {
                        refs.scope_labels.extend(ls.iter().cloned());
                    }
                }
                _ => {}
            }
        }
        for a in p.providers.iter().chain(p.consumers) {
            match a {
                Actor::Label(l) => {
                    refs.labels.insert(l.clone());
                }
                Actor::LabelGroup(g) => {
                    refs.groups.insert(g.clone());
                    if let Some(ls) = self.group_labels.get(g) {
                        refs.labels.extend(ls.iter().cloned());
                    }
                }
                Actor::Workload(w) => {
                    refs.workloads.insert(w.clone());
                }
                Actor::IpList(i) => {
                    refs.ip_lists.insert(i.clone());
                }
                Actor::AllWorkloads => refs.all = true,
            }
        }
        for s in p.services {
            if let ServiceRef::Service(id) = s {
                refs.services.insert(id.clone());
            }
        }
        refs
    }

    /// Enters rule `r` in the reverse indexes, under what it mentions now.
    pub(super) fn index_refs(&mut self, r: Rx) {
        let refs = self.refs_of(r);
        for l in &refs.labels {
            self.by_label.entry(l.clone()).or_default().insert(r);
        }
        for l in &refs.scope_labels {
            self.by_scope_label.entry(l.clone()).or_default().insert(r);
        }
        for g in &refs.groups {
            self.by_group.entry(g.clone()).or_default().insert(r);
        }
        for w in &refs.workloads {
            self.by_workload.entry(w.clone()).or_default().insert(r);
        }
        for i in &refs.ip_lists {
            self.by_ip_list.entry(i.clone()).or_default().insert(r);
        }
        for s in &refs.services {
            self.by_service.entry(s.clone()).or_default().insert(r);
        }
        if refs.all {
            self.by_all.insert(r);
        }
        self.refs.insert(r, refs);
    }

    /// Takes rule `r` out of the reverse indexes, under what it mentioned.
    pub(super) fn unindex_refs(&mut self, r: Rx) {
        let Some(refs) = self.refs.remove(&r) else {
            return;
        };
        let drop_from = |m: &mut HashMap<Id, BTreeSet<Rx>>, keys: &BTreeSet<Id>| {
            for k in keys {
                if let Some(set) = m.get_mut(k) {
                    set.remove(&r);
                    if set.is_empty() {
                        m.remove(k);
                    }
                }
            }
        };
        drop_from(&mut self.by_label, &refs.labels);
        drop_from(&mut self.by_scope_label, &refs.scope_labels);
        drop_from(&mut self.by_group, &refs.groups);
        drop_from(&mut self.by_workload, &refs.workloads);
        drop_from(&mut self.by_ip_list, &refs.ip_lists);
        drop_from(&mut self.by_service, &refs.services);
        self.by_all.remove(&r);
    }

    /// The rules a change can affect, by the current indexes.
    pub(super) fn rules_touched_by(&self, c: &Change, out: &mut BTreeSet<Rx>) {
        let mut add = |m: &HashMap<Id, BTreeSet<Rx>>, k: &Id| {
            out.extend(m.get(k).into_iter().flatten().copied())
        };
        match c {
            Change::Workload(id) => {
                add(&self.by_workload, id);
                if let Some(wl) = self.estate.workloads.get(id) {
                    // Only actor labels decide membership; the scope only filters.
                    for l in &wl.labels {
                        add(&self.by_label, l);
                    }
                }
                out.extend(self.by_all.iter().copied());
                if let Some(&w) = self.index_of.get(id) {
                    out.extend(self.as_provider.get(&w).into_iter().flatten().copied());
                    out.extend(self.as_consumer.get(&w).into_iter().flatten().copied());
                }
            }
            Change::Label(id) => {
                add(&self.by_label, id);
                add(&self.by_scope_label, id);
            }
            Change::LabelGroup(id) => add(&self.by_group, id),
            Change::Service(id) => add(&self.by_service, id),
            Change::IpList(id) => add(&self.by_ip_list, id),
            Change::RuleSet(id) => add(&self.by_rule_set, id),
            Change::Boundary(id) => {
                if let Some(&r) = self.rule_ix.get(&RuleRef::Boundary {
                    boundary: id.clone(),
                }) {
                    out.insert(r);
                }
            }
        }
    }
}
