//! The incremental update: apply a change to the estate and policy, then
//! recompute only what it can touch. Each step below is one named method so
//! the order (judge before the change, mutate, re-index, re-resolve, compile)
//! reads at a glance in [`Engine::update`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::change::Change;
use super::engine::{Engine, RuleData, Rx};
use super::members::{remove_sorted, symmetric_difference};
use super::rules::{rule_refs_of_rule_set, OwnedParts};
use crate::model::{Estate, Id, PolicySet, RuleRef, Workload};

/// What an update must learn before `mutate` runs, to compare after it.
struct Before {
    /// Rules that may be touched by anything but a rule set change.
    touched: BTreeSet<Rx>,
    /// Rules touched only because their rule set changed are kept apart: an
    /// edit usually changes one rule of a set, and re-resolving the others
    /// (each against every member workload) was the cost of a provision that
    /// grew with the size of the set.
    in_sets: BTreeSet<Rx>,
    /// The definitions of the `in_sets` rules, to tell which ones moved.
    parts_before: HashMap<Rx, OwnedParts>,
    /// Every changed workload as it was (`None`: it did not exist yet).
    old_workloads: BTreeMap<Id, Option<Workload>>,
    /// Whether a label group changed, so group expansions must be redone.
    groups_changed: bool,
}

/// The changed workloads' dense indexes, once the workload indexes are current.
struct Reindexed {
    /// Changed workloads (present, added or just removed): their own compiled
    /// policy may move whatever the rules do.
    direct: BTreeSet<u32>,
    /// Changed workload id → its index. A removed workload keeps its old index
    /// here, so it can leave the rules it was in.
    indexes: BTreeMap<Id, u32>,
}

impl Engine {
    /// Applies a change made by `mutate` to the estate and policy, and recomputes
    /// what it touches. `changes` must name every object `mutate` added, changed or
    /// removed. Returns the workloads whose compiled policy changed (including
    /// ones that appeared or disappeared).
    pub fn update(
        &mut self,
        changes: &[Change],
        mutate: impl FnOnce(&mut Estate, &mut PolicySet),
    ) -> BTreeSet<Id> {
        // Rules that may be touched, judged before the change...
        let Before {
            mut touched,
            mut in_sets,
            parts_before,
            old_workloads,
            groups_changed,
        } = self.judge_before(changes);
        mutate(&mut self.estate, &mut self.policy);

        // ...and after it. Keep the workload indexes current first.
        let Reindexed { direct, indexes } = self.reindex_workloads(&old_workloads);
        self.collect_touched(changes, &mut touched, &mut in_sets);

        if changes.iter().all(|c| matches!(c, Change::Workload(_))) {
            // Workload-only changes leave rule definitions alone: patch each touched
            // rule's member and peer sets instead of resolving it again.
            let mut affected = direct;
            for r in touched {
                self.patch_rule(r, &old_workloads, &indexes, &mut affected);
            }
            return self.recompile(affected);
        }

        if groups_changed {
            self.touch_regrouped_rules(&mut touched);
        }
        self.intern_new_rules(changes, &mut touched, &mut in_sets);
        self.touch_redefined_rules(in_sets, &parts_before, &mut touched);
        self.reindex_rules(&touched);
        let affected = self.reresolve_rules(touched, direct);
        self.recompile(affected)
    }

    /// Everything [`Engine::update`] needs to know of the state before the change.
    fn judge_before(&self, changes: &[Change]) -> Before {
        let (mut touched, mut in_sets) = (BTreeSet::new(), BTreeSet::new());
        self.collect_touched(changes, &mut touched, &mut in_sets);
        let mut old_workloads = BTreeMap::new();
        let mut groups_changed = false;
        for c in changes {
            match c {
                Change::Workload(id) => {
                    old_workloads.insert(id.clone(), self.estate.workloads.get(id).cloned());
                }
                Change::LabelGroup(_) => groups_changed = true,
                _ => {}
            }
        }
        let parts_before = in_sets
            .iter()
            .filter_map(|&r| Some((r, self.rule_parts(r)?.to_owned())))
            .collect();
        Before {
            touched,
            in_sets,
            parts_before,
            old_workloads,
            groups_changed,
        }
    }

    /// The rules the changes can touch by the current indexes: those of changed
    /// rule sets into `in_sets`, every other into `touched`.
    fn collect_touched(
        &self,
        changes: &[Change],
        touched: &mut BTreeSet<Rx>,
        in_sets: &mut BTreeSet<Rx>,
    ) {
        for c in changes {
            if matches!(c, Change::RuleSet(_)) {
                self.rules_touched_by(c, in_sets);
            } else {
                self.rules_touched_by(c, touched);
            }
        }
    }

    /// Brings the workload indexes (dense index, label members, online
    /// addresses) up to date for every changed workload.
    fn reindex_workloads(&mut self, old_workloads: &BTreeMap<Id, Option<Workload>>) -> Reindexed {
        let mut direct: BTreeSet<u32> = BTreeSet::new();
        let mut indexes: BTreeMap<Id, u32> = BTreeMap::new();
        for (id, old) in old_workloads {
            let old_idx = self.index_of.get(id).copied();
            if let Some(w) = old_idx {
                direct.insert(w);
                indexes.insert(id.clone(), w);
                let old_labels = old.as_ref().map(|o| o.labels.clone()).unwrap_or_default();
                self.reindex_workload_labels(w, id, &old_labels);
            }
            if self.estate.workloads.contains_key(id) {
                if old_idx.is_none() {
                    let w = self.add_workload_index(id);
                    direct.insert(w);
                    indexes.insert(id.clone(), w);
                }
            } else if let Some(w) = old_idx {
                self.index_of.remove(id);
                self.id_of[w as usize] = None;
                remove_sorted(&mut self.all, w);
            }
            // A removed workload's slot reads as offline (its id is gone).
            if let Some(w) = self.index_of.get(id).copied().or(old_idx) {
                self.refresh_online_ips(w);
            }
        }
        Reindexed { direct, indexes }
    }

    /// Re-expands the label groups and touches only the rules naming a group
    /// whose expansion moved (a nested group's change moves every group
    /// containing it).
    fn touch_regrouped_rules(&mut self, touched: &mut BTreeSet<Rx>) {
        let before = std::mem::take(&mut self.group_labels);
        self.expand_groups();
        let ids: BTreeSet<&Id> = before.keys().chain(self.group_labels.keys()).collect();
        for g in ids {
            if before.get(g) != self.group_labels.get(g) {
                touched.extend(self.by_group.get(g).into_iter().flatten().copied());
            }
        }
    }

    /// Gives new rules and boundaries an index now: a changed set's rules join
    /// `in_sets`, a changed boundary joins `touched`.
    fn intern_new_rules(
        &mut self,
        changes: &[Change],
        touched: &mut BTreeSet<Rx>,
        in_sets: &mut BTreeSet<Rx>,
    ) {
        for c in changes {
            match c {
                Change::RuleSet(id) => {
                    let refs = self
                        .policy
                        .rule_sets
                        .get(id)
                        .map(rule_refs_of_rule_set)
                        .unwrap_or_default();
                    for r in refs {
                        let r = self.intern(r);
                        in_sets.insert(r);
                    }
                }
                Change::Boundary(id) => {
                    touched.insert(self.intern(RuleRef::Boundary {
                        boundary: id.clone(),
                    }));
                }
                _ => {}
            }
        }
    }

    /// Moves into `touched` the rules of changed sets whose definition (or set
    /// scope) moved. One whose definition is what it was, and that nothing
    /// else touched, resolves to what it did and is left alone.
    fn touch_redefined_rules(
        &self,
        in_sets: BTreeSet<Rx>,
        parts_before: &HashMap<Rx, OwnedParts>,
        touched: &mut BTreeSet<Rx>,
    ) {
        for r in in_sets {
            let now = self.rule_parts(r).map(|p| p.to_owned());
            if touched.contains(&r) || now.as_ref() != parts_before.get(&r) {
                touched.insert(r);
            }
        }
    }

    /// Rule definitions may have changed: re-indexes the touched ones.
    fn reindex_rules(&mut self, touched: &BTreeSet<Rx>) {
        for &r in touched {
            self.unindex_refs(r);
            if self.rule_parts(r).is_some() {
                self.index_refs(r);
            }
        }
    }

    /// Resolves the touched rules again, relinks those that moved, and returns
    /// `direct` plus every workload whose inputs moved.
    fn reresolve_rules(&mut self, touched: BTreeSet<Rx>, direct: BTreeSet<u32>) -> BTreeSet<u32> {
        let mut affected = direct;
        for r in touched {
            let old = self.rules.remove(&r);
            let new = self.resolve(r);
            if old == new {
                if let Some(d) = old {
                    self.rules.insert(r, d);
                }
                continue;
            }
            workloads_moved_by(old.as_ref(), new.as_ref(), &mut affected);
            if let Some(d) = &old {
                self.unlink(r, d);
            }
            if let Some(d) = new {
                self.link(r, &d);
                self.rules.insert(r, d);
            }
        }
        affected
    }
}

/// Adds to `affected` the workloads a rule's move from `old` to `new` can
/// change: on a side whose compiled rule reads the same (action, peers,
/// ports), only the workloads that joined or left it; otherwise all of them.
fn workloads_moved_by(
    old: Option<&RuleData>,
    new: Option<&RuleData>,
    affected: &mut BTreeSet<u32>,
) {
    let empty = Vec::new();
    let (op, oc) = old.map_or((&empty, &empty), |d| (&d.providers, &d.consumers));
    let (np, nc) = new.map_or((&empty, &empty), |d| (&d.providers, &d.consumers));
    let inbound_same = match (old, new) {
        (Some(a), Some(b)) => {
            a.action == b.action && a.consumer_peers == b.consumer_peers && a.ports == b.ports
        }
        _ => false,
    };
    let outbound_same = match (old, new) {
        (Some(a), Some(b)) => {
            a.action == b.action && a.provider_peers == b.provider_peers && a.ports == b.ports
        }
        _ => false,
    };
    // Providers hold the rule inbound, consumers outbound.
    if inbound_same {
        affected.extend(symmetric_difference(op, np));
    } else {
        affected.extend(op.iter().chain(np.iter()).copied());
    }
    if outbound_same {
        affected.extend(symmetric_difference(oc, nc));
    } else {
        affected.extend(oc.iter().chain(nc.iter()).copied());
    }
}
