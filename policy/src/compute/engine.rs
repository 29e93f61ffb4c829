//! The engine's state: what it holds (estate, policy, every index, every
//! compiled policy, and the records it keeps per rule), the full compute that
//! builds it, and the workload-side indexes (dense workload indexes, label
//! members, expanded label groups) that rule resolution reads. Every other
//! file of `compute` adds steps to [`Engine`] and imports its types from here,
//! so the imports point one way. The steps that keep it current live in
//! `update`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::compiled::{Action, CompiledPolicy, Ports};
use super::members::{insert_sorted, remove_sorted, Members};
use crate::addr::AddrSet;
use crate::model::{Estate, Id, PolicySet, RuleRef};

/// A rule's dense index (see `Engine::intern`).
pub(super) type Rx = u32;

/// One policy rule, resolved.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RuleData {
    pub(super) action: Action,
    pub(super) providers: Members,
    pub(super) consumers: Members,
    /// Online consumers' addresses and consumer IP lists: the peers of inbound rules.
    pub(super) consumer_peers: Arc<AddrSet>,
    /// Online providers' addresses and provider IP lists: the peers of outbound rules.
    pub(super) provider_peers: Arc<AddrSet>,
    pub(super) ports: Arc<Ports>,
}

/// What a rule refers to, for the change → rule indexes.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleRefs {
    pub(super) labels: BTreeSet<Id>,
    pub(super) scope_labels: BTreeSet<Id>,
    pub(super) groups: BTreeSet<Id>,
    pub(super) workloads: BTreeSet<Id>,
    pub(super) ip_lists: BTreeSet<Id>,
    pub(super) services: BTreeSet<Id>,
    /// Uses `AllWorkloads`: any workload change may touch it.
    pub(super) all: bool,
}

/// The engine: an estate, a policy set, and every managed workload's compiled policy.
pub struct Engine {
    pub(super) estate: Estate,
    pub(super) policy: PolicySet,
    /// Workload id ↔ dense index (indexes are never reused while the engine lives).
    pub(super) index_of: HashMap<Id, u32>,
    pub(super) id_of: Vec<Option<Id>>,
    /// Dense index → the workload's addresses while it is online (empty when
    /// offline or gone). Resolving a rule reads these for every member: with
    /// 10k members, a string-keyed lookup per member was most of a provision's
    /// recompute.
    pub(super) online_ips: Vec<Vec<IpAddr>>,
    /// Every live workload index, sorted.
    pub(super) all: Members,
    /// Label id → workloads carrying it.
    pub(super) label_members: HashMap<Id, Members>,
    /// Label group id → every label in it (nested groups expanded).
    pub(super) group_labels: HashMap<Id, BTreeSet<Id>>,
    /// Rules are interned: a dense index per rule, never reused, so indexes hold
    /// small integers instead of ids.
    pub(super) rule_ix: HashMap<RuleRef, Rx>,
    pub(super) rule_ref: Vec<Arc<RuleRef>>,
    /// Ruleset id → every rule of it ever interned.
    pub(super) by_rule_set: HashMap<Id, BTreeSet<Rx>>,
    pub(super) rules: HashMap<Rx, RuleData>,
    pub(super) refs: HashMap<Rx, RuleRefs>,
    /// Reverse indexes: object → rules that mention it.
    /// Labels named by a rule's actors (groups expanded): who can be a member.
    pub(super) by_label: HashMap<Id, BTreeSet<Rx>>,
    /// Labels named by a rule's scope: whose meaning a label edit can change.
    pub(super) by_scope_label: HashMap<Id, BTreeSet<Rx>>,
    pub(super) by_group: HashMap<Id, BTreeSet<Rx>>,
    pub(super) by_workload: HashMap<Id, BTreeSet<Rx>>,
    pub(super) by_ip_list: HashMap<Id, BTreeSet<Rx>>,
    pub(super) by_service: HashMap<Id, BTreeSet<Rx>>,
    pub(super) by_all: BTreeSet<Rx>,
    /// Workload → rules it provides for / consumes from.
    pub(super) as_provider: HashMap<u32, BTreeSet<Rx>>,
    pub(super) as_consumer: HashMap<u32, BTreeSet<Rx>>,
    pub(super) compiled: HashMap<u32, Arc<CompiledPolicy>>,
}

impl Engine {
    /// Builds every index and compiles every managed workload (a full compute).
    /// The inputs should be valid (see [`crate::validate`]); dangling references
    /// simply match nothing.
    pub fn new(estate: Estate, policy: PolicySet) -> Engine {
        let mut e = Engine {
            estate,
            policy,
            index_of: HashMap::new(),
            id_of: Vec::new(),
            online_ips: Vec::new(),
            all: Vec::new(),
            label_members: HashMap::new(),
            group_labels: HashMap::new(),
            rule_ix: HashMap::new(),
            rule_ref: Vec::new(),
            by_rule_set: HashMap::new(),
            rules: HashMap::new(),
            refs: HashMap::new(),
            by_label: HashMap::new(),
            by_scope_label: HashMap::new(),
            by_group: HashMap::new(),
            by_workload: HashMap::new(),
            by_ip_list: HashMap::new(),
            by_service: HashMap::new(),
            by_all: BTreeSet::new(),
            as_provider: HashMap::new(),
            as_consumer: HashMap::new(),
            compiled: HashMap::new(),
        };
        let ids: Vec<Id> = e.estate.workloads.keys().cloned().collect();
        for id in ids {
            e.add_workload_index(&id);
        }
        e.expand_groups();
        let all_rules: Vec<Rx> = e
            .rule_refs_in_policy()
            .into_iter()
            .map(|r| e.intern(r))
            .collect();
        for &r in &all_rules {
            e.index_refs(r);
        }
        for r in all_rules {
            if let Some(data) = e.resolve(r) {
                e.link(r, &data);
                e.rules.insert(r, data);
            }
        }
        let managed: Vec<u32> = e.all.clone();
        for w in managed {
            if let Some(c) = e.compile(w) {
                e.compiled.insert(w, Arc::new(c));
            }
        }
        e
    }

    /// The estate the engine computes from.
    pub fn estate(&self) -> &Estate {
        &self.estate
    }

    /// The policy set the engine computes from.
    pub fn policy(&self) -> &PolicySet {
        &self.policy
    }

    /// The compiled policy of a managed workload.
    pub fn compiled(&self, workload: &str) -> Option<Arc<CompiledPolicy>> {
        self.index_of
            .get(workload)
            .and_then(|w| self.compiled.get(w))
            .cloned()
    }

    /// Every managed workload's compiled policy, by workload id.
    pub fn all_compiled(&self) -> BTreeMap<Id, Arc<CompiledPolicy>> {
        self.compiled
            .iter()
            .filter_map(|(w, c)| Some((self.id_of.get(*w as usize)?.clone()?, c.clone())))
            .collect()
    }

    /// Gives a new workload the next dense index and enters it in the
    /// label and address tables.
    pub(super) fn add_workload_index(&mut self, id: &Id) -> u32 {
        let idx = self.id_of.len() as u32;
        self.id_of.push(Some(id.clone()));
        self.online_ips.push(Vec::new());
        self.index_of.insert(id.clone(), idx);
        self.all.push(idx);
        if let Some(w) = self.estate.workloads.get(id) {
            for l in &w.labels {
                insert_sorted(self.label_members.entry(l.clone()).or_default(), idx);
            }
        }
        self.refresh_online_ips(idx);
        idx
    }

    /// Re-reads one workload's online addresses into the dense table.
    pub(super) fn refresh_online_ips(&mut self, w: u32) {
        let ips = self.id_of[w as usize]
            .as_ref()
            .and_then(|id| self.estate.workloads.get(id))
            .filter(|wl| wl.online)
            .map(|wl| wl.interfaces.clone())
            .unwrap_or_default();
        self.online_ips[w as usize] = ips;
    }

    /// Recomputes every label group's full label set (nested groups expanded).
    pub(super) fn expand_groups(&mut self) {
        let mut out = HashMap::new();
        for id in self.policy.label_groups.keys() {
            let mut labels = BTreeSet::new();
            let mut stack = vec![id.clone()];
            let mut seen = BTreeSet::new();
            while let Some(g) = stack.pop() {
                if !seen.insert(g.clone()) {
                    continue; // a cycle (refused by validation) must not hang us
                }
                if let Some(group) = self.policy.label_groups.get(&g) {
                    labels.extend(group.labels.iter().cloned());
                    stack.extend(group.sub_groups.iter().cloned());
                }
            }
            out.insert(id.clone(), labels);
        }
        self.group_labels = out;
    }

    /// Moves workload `w` from its `old` labels' member lists to its current ones.
    pub(super) fn reindex_workload_labels(&mut self, w: u32, id: &Id, old: &[Id]) {
        let new_labels: Vec<Id> = self
            .estate
            .workloads
            .get(id)
            .map(|x| x.labels.clone())
            .unwrap_or_default();
        for l in old {
            if let Some(members) = self.label_members.get_mut(l) {
                remove_sorted(members, w);
            }
        }
        for l in new_labels {
            insert_sorted(self.label_members.entry(l).or_default(), w);
        }
    }
}
