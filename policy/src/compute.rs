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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addr::{AddrSet, IpRange};
use crate::model::{
    Actor, EnforcementMode, Estate, Id, PolicySet, PortRange, Proto, RuleRef, ServiceRef, Workload,
};

/// What a compiled rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// Override deny: beats allow rules.
    OverrideDeny,
    /// Allow.
    Allow,
    /// Deny (beaten by allow rules).
    Deny,
}

/// The ports a compiled rule covers: every port of every protocol, or a sorted list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ports {
    /// Every protocol and port.
    All,
    /// These ranges (sorted, deduplicated).
    Some(Vec<PortRange>),
}

impl Ports {
    /// Whether a flow on `proto`/`port` is covered.
    pub fn matches(&self, proto: Proto, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::Some(list) => list.iter().any(|p| p.matches(proto, port)),
        }
    }
}

/// One rule as a workload's firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompiledRule {
    /// Allow or deny.
    pub action: Action,
    /// The remote addresses (sources inbound, destinations outbound).
    pub peers: Arc<AddrSet>,
    /// The ports on this workload (inbound) or on the peer (outbound).
    pub ports: Arc<Ports>,
    /// Which policy rule it comes from.
    pub source: Arc<RuleRef>,
}

/// Everything one workload's firewall needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompiledPolicy {
    /// The workload.
    pub workload: Id,
    /// Its enforcement mode.
    pub mode: EnforcementMode,
    /// Its own addresses.
    pub addresses: Vec<IpAddr>,
    /// Inbound rules in precedence order: override deny, allow, deny.
    pub inbound: Vec<CompiledRule>,
    /// Outbound allow rules (full mode only; everything else is dropped).
    pub outbound: Vec<CompiledRule>,
}

/// A flow's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passes.
    Allowed,
    /// Dropped.
    Blocked,
}

impl CompiledPolicy {
    /// The verdict on an inbound flow from `src`, and the rule that decided it
    /// (`None`: the mode's default).
    pub fn decide_inbound(
        &self,
        src: IpAddr,
        proto: Proto,
        port: u16,
    ) -> (Verdict, Option<&CompiledRule>) {
        if matches!(
            self.mode,
            EnforcementMode::Idle | EnforcementMode::VisibilityOnly
        ) {
            return (Verdict::Allowed, None);
        }
        // Rules are in precedence order, so the first match decides.
        for r in &self.inbound {
            if r.peers.contains(src) && r.ports.matches(proto, port) {
                let v = if r.action == Action::Allow {
                    Verdict::Allowed
                } else {
                    Verdict::Blocked
                };
                return (v, Some(r));
            }
        }
        let default = if self.mode == EnforcementMode::Full {
            Verdict::Blocked
        } else {
            Verdict::Allowed
        };
        (default, None)
    }

    /// The verdict on an outbound flow to `dst`.
    pub fn decide_outbound(
        &self,
        dst: IpAddr,
        proto: Proto,
        port: u16,
    ) -> (Verdict, Option<&CompiledRule>) {
        if self.mode != EnforcementMode::Full {
            return (Verdict::Allowed, None);
        }
        match self
            .outbound
            .iter()
            .find(|r| r.peers.contains(dst) && r.ports.matches(proto, port))
        {
            Some(r) => (Verdict::Allowed, Some(r)),
            None => (Verdict::Blocked, None),
        }
    }
}

/// Sorted, deduplicated workload indexes.
type Members = Vec<u32>;

/// A rule's dense index (see `Engine::intern`).
type Rx = u32;

fn union(a: &[u32], b: &[u32]) -> Members {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn intersect(a: &[u32], b: &[u32]) -> Members {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn insert_sorted(v: &mut Members, x: u32) {
    if let Err(pos) = v.binary_search(&x) {
        v.insert(pos, x);
    }
}

fn remove_sorted(v: &mut Members, x: u32) {
    if let Ok(pos) = v.binary_search(&x) {
        v.remove(pos);
    }
}

/// One policy rule, resolved.
#[derive(Debug, Clone, PartialEq)]
struct RuleData {
    action: Action,
    providers: Members,
    consumers: Members,
    /// Online consumers' addresses and consumer IP lists: the peers of inbound rules.
    consumer_peers: Arc<AddrSet>,
    /// Online providers' addresses and provider IP lists: the peers of outbound rules.
    provider_peers: Arc<AddrSet>,
    ports: Arc<Ports>,
}

/// What a rule refers to, for the change → rule indexes.
#[derive(Debug, Clone, Default)]
struct RuleRefs {
    labels: BTreeSet<Id>,
    scope_labels: BTreeSet<Id>,
    groups: BTreeSet<Id>,
    workloads: BTreeSet<Id>,
    ip_lists: BTreeSet<Id>,
    services: BTreeSet<Id>,
    /// Uses `AllWorkloads`: any workload change may touch it.
    all: bool,
}

/// A changed object, as reported to [`Engine::update`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// A workload added, changed (labels, addresses, mode, online) or removed.
    Workload(Id),
    /// A label added, changed or removed.
    Label(Id),
    /// A label group added, changed or removed.
    LabelGroup(Id),
    /// A service added, changed or removed.
    Service(Id),
    /// An IP list added, changed or removed.
    IpList(Id),
    /// A ruleset (with its rules) added, changed or removed.
    RuleSet(Id),
    /// An enforcement boundary added, changed or removed.
    Boundary(Id),
}

/// The engine: an estate, a policy set, and every managed workload's compiled policy.
pub struct Engine {
    estate: Estate,
    policy: PolicySet,
    /// Workload id ↔ dense index (indexes are never reused while the engine lives).
    index_of: HashMap<Id, u32>,
    id_of: Vec<Option<Id>>,
    /// Dense index → the workload's addresses while it is online (empty when
    /// offline or gone). Resolving a rule reads these for every member: with
    /// 10k members, a string-keyed lookup per member was most of a provision's
    /// recompute.
    online_ips: Vec<Vec<IpAddr>>,
    /// Every live workload index, sorted.
    all: Members,
    /// Label id → workloads carrying it.
    label_members: HashMap<Id, Members>,
    /// Label group id → every label in it (nested groups expanded).
    group_labels: HashMap<Id, BTreeSet<Id>>,
    /// Rules are interned: a dense index per rule, never reused, so indexes hold
    /// small integers instead of ids.
    rule_ix: HashMap<RuleRef, Rx>,
    rule_ref: Vec<Arc<RuleRef>>,
    /// Ruleset id → every rule of it ever interned.
    by_rule_set: HashMap<Id, BTreeSet<Rx>>,
    rules: HashMap<Rx, RuleData>,
    refs: HashMap<Rx, RuleRefs>,
    /// Reverse indexes: object → rules that mention it.
    /// Labels named by a rule's actors (groups expanded): who can be a member.
    by_label: HashMap<Id, BTreeSet<Rx>>,
    /// Labels named by a rule's scope: whose meaning a label edit can change.
    by_scope_label: HashMap<Id, BTreeSet<Rx>>,
    by_group: HashMap<Id, BTreeSet<Rx>>,
    by_workload: HashMap<Id, BTreeSet<Rx>>,
    by_ip_list: HashMap<Id, BTreeSet<Rx>>,
    by_service: HashMap<Id, BTreeSet<Rx>>,
    by_all: BTreeSet<Rx>,
    /// Workload → rules it provides for / consumes from.
    as_provider: HashMap<u32, BTreeSet<Rx>>,
    as_consumer: HashMap<u32, BTreeSet<Rx>>,
    compiled: HashMap<u32, Arc<CompiledPolicy>>,
}

fn deny_action(override_deny: bool) -> Action {
    if override_deny {
        Action::OverrideDeny
    } else {
        Action::Deny
    }
}

fn rank(a: Action) -> u8 {
    match a {
        Action::OverrideDeny => 0,
        Action::Allow => 1,
        Action::Deny => 2,
    }
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

    fn add_workload_index(&mut self, id: &Id) -> u32 {
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
    fn refresh_online_ips(&mut self, w: u32) {
        let ips = self.id_of[w as usize]
            .as_ref()
            .and_then(|id| self.estate.workloads.get(id))
            .filter(|wl| wl.online)
            .map(|wl| wl.interfaces.clone())
            .unwrap_or_default();
        self.online_ips[w as usize] = ips;
    }

    fn expand_groups(&mut self) {
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

    fn rule_refs_in_policy(&self) -> Vec<RuleRef> {
        let mut out = Vec::new();
        for rs in self.policy.rule_sets.values() {
            out.extend(rule_refs_of_rule_set(rs));
        }
        for b in self.policy.boundaries.keys() {
            out.push(RuleRef::Boundary {
                boundary: b.clone(),
            });
        }
        out
    }

    /// The dense index of a rule, assigned on first sight.
    fn intern(&mut self, r: RuleRef) -> Rx {
        if let Some(&x) = self.rule_ix.get(&r) {
            return x;
        }
        let x = self.rule_ref.len() as Rx;
        if let RuleRef::Allow { rule_set, .. } | RuleRef::Deny { rule_set, .. } = &r {
            self.by_rule_set
                .entry(rule_set.clone())
                .or_default()
                .insert(x);
        }
        self.rule_ref.push(Arc::new(r.clone()));
        self.rule_ix.insert(r, x);
        x
    }

    /// The actors, services and scope of a rule, if it exists and is enabled.
    fn rule_parts(&self, r: Rx) -> Option<RuleParts<'_>> {
        let r = &**self.rule_ref.get(r as usize)?;
        match r {
            RuleRef::Allow { rule_set, rule } | RuleRef::Deny { rule_set, rule } => {
                let rs = self
                    .policy
                    .rule_sets
                    .get(rule_set)
                    .filter(|rs| rs.enabled)?;
                let scope = Some(&rs.scope);
                if matches!(r, RuleRef::Allow { .. }) {
                    let x = rs.rules.iter().find(|x| &x.id == rule && x.enabled)?;
                    Some(RuleParts {
                        action: Action::Allow,
                        providers: &x.providers,
                        consumers: &x.consumers,
                        services: &x.services,
                        scope,
                        unscoped_consumers: x.unscoped_consumers,
                    })
                } else {
                    let x = rs.deny_rules.iter().find(|x| &x.id == rule && x.enabled)?;
                    Some(RuleParts {
                        action: deny_action(x.override_deny),
                        providers: &x.providers,
                        consumers: &x.consumers,
                        services: &x.services,
                        scope,
                        unscoped_consumers: x.unscoped_consumers,
                    })
                }
            }
            RuleRef::Boundary { boundary } => {
                let b = self.policy.boundaries.get(boundary)?;
                Some(RuleParts {
                    action: deny_action(b.override_deny),
                    providers: &b.providers,
                    consumers: &b.consumers,
                    services: &b.services,
                    scope: None,
                    unscoped_consumers: true,
                })
            }
        }
    }

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

    fn index_refs(&mut self, r: Rx) {
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

    fn unindex_refs(&mut self, r: Rx) {
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

    /// Workloads matching a list of actors: all-workloads ∪ named workloads ∪ the
    /// label expression (labels of one key are alternatives, keys are combined).
    fn matching(&self, actors: &[Actor]) -> Members {
        if actors.contains(&Actor::AllWorkloads) {
            return self.all.clone();
        }
        let mut out: Members = Vec::new();
        for a in actors {
            if let Actor::Workload(id) = a {
                if let Some(&w) = self.index_of.get(id) {
                    insert_sorted(&mut out, w);
                }
            }
        }
        let labels = self.label_expression(actors);
        if let Some(set) = labels {
            out = union(&out, &set);
        }
        out
    }

    /// The workloads matching the label and label-group actors of a list, or
    /// `None` if the list has none.
    fn label_expression(&self, actors: &[Actor]) -> Option<Members> {
        let mut by_key: BTreeMap<String, BTreeSet<Id>> = BTreeMap::new();
        for a in actors {
            match a {
                Actor::Label(l) => {
                    let key = self
                        .estate
                        .labels
                        .get(l)
                        .map(|x| x.key.clone())
                        .unwrap_or_default();
                    by_key.entry(key).or_default().insert(l.clone());
                }
                Actor::LabelGroup(g) => {
                    let key = self
                        .policy
                        .label_groups
                        .get(g)
                        .map(|x| x.key.clone())
                        .unwrap_or_default();
                    let entry = by_key.entry(key).or_default();
                    if let Some(ls) = self.group_labels.get(g) {
                        entry.extend(ls.iter().cloned());
                    }
                }
                _ => {}
            }
        }
        let mut result: Option<Members> = None;
        for labels in by_key.values() {
            let mut members: Members = Vec::new();
            for l in labels {
                if let Some(m) = self.label_members.get(l) {
                    members = union(&members, m);
                }
            }
            result = Some(match result {
                None => members,
                Some(r) => intersect(&r, &members),
            });
        }
        result
    }

    fn ip_list_addrs(&self, actors: &[Actor]) -> AddrSet {
        let mut set = AddrSet::new();
        for a in actors {
            if let Actor::IpList(id) = a {
                if let Some(l) = self.policy.ip_lists.get(id) {
                    set.extend(&ip_list_set(l));
                }
            }
        }
        set
    }

    fn online_addrs(&self, members: &[u32]) -> AddrSet {
        let mut ips = Vec::with_capacity(members.len());
        for &w in members {
            if let Some(a) = self.online_ips.get(w as usize) {
                ips.extend(a.iter().copied());
            }
        }
        AddrSet::from_ips(ips)
    }

    fn resolve(&self, r: Rx) -> Option<RuleData> {
        let p = self.rule_parts(r)?;
        let scope = match p.scope {
            Some(s) if !s.is_empty() => self.label_expression(s),
            _ => None,
        };
        let mut providers = self.matching(p.providers);
        let mut consumers = self.matching(p.consumers);
        if let Some(scope) = &scope {
            providers = intersect(&providers, scope);
            if !p.unscoped_consumers {
                consumers = intersect(&consumers, scope);
            }
        }
        let consumer_peers = self
            .online_addrs(&consumers)
            .union(&self.ip_list_addrs(p.consumers));
        let provider_peers = self
            .online_addrs(&providers)
            .union(&self.ip_list_addrs(p.providers));
        Some(RuleData {
            action: p.action,
            providers,
            consumers,
            consumer_peers: Arc::new(consumer_peers),
            provider_peers: Arc::new(provider_peers),
            ports: Arc::new(self.ports(p.services)),
        })
    }

    fn ports(&self, services: &[ServiceRef]) -> Ports {
        let mut list = BTreeSet::new();
        for s in services {
            match s {
                ServiceRef::All => return Ports::All,
                ServiceRef::Port(p) => {
                    list.insert(*p);
                }
                ServiceRef::Service(id) => {
                    if let Some(svc) = self.policy.services.get(id) {
                        list.extend(svc.ports.iter().copied());
                    }
                }
            }
        }
        Ports::Some(list.into_iter().collect())
    }

    fn link(&mut self, r: Rx, data: &RuleData) {
        for &w in &data.providers {
            self.as_provider.entry(w).or_default().insert(r);
        }
        for &w in &data.consumers {
            self.as_consumer.entry(w).or_default().insert(r);
        }
    }

    fn unlink(&mut self, r: Rx, data: &RuleData) {
        for w in &data.providers {
            if let Some(s) = self.as_provider.get_mut(w) {
                s.remove(&r);
            }
        }
        for w in &data.consumers {
            if let Some(s) = self.as_consumer.get_mut(w) {
                s.remove(&r);
            }
        }
    }

    fn compile(&self, w: u32) -> Option<CompiledPolicy> {
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
        })
    }

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
        let mut touched: BTreeSet<Rx> = BTreeSet::new();
        // Rules touched only because their rule set changed are kept apart: an
        // edit usually changes one rule of a set, and re-resolving the others
        // (each against every member workload) was the cost of a provision that
        // grew with the size of the set.
        let mut in_sets: BTreeSet<Rx> = BTreeSet::new();
        let mut old_workloads: BTreeMap<Id, Option<Workload>> = BTreeMap::new();
        let mut groups_changed = false;
        for c in changes {
            if matches!(c, Change::RuleSet(_)) {
                self.rules_touched_by(c, &mut in_sets);
            } else {
                self.rules_touched_by(c, &mut touched);
            }
            match c {
                Change::Workload(id) => {
                    old_workloads.insert(id.clone(), self.estate.workloads.get(id).cloned());
                }
                Change::LabelGroup(_) => groups_changed = true,
                _ => {}
            }
        }
        let parts_before: HashMap<Rx, OwnedParts> = in_sets
            .iter()
            .filter_map(|&r| Some((r, self.rule_parts(r)?.to_owned())))
            .collect();
        mutate(&mut self.estate, &mut self.policy);

        // ...and after it. Keep the workload indexes current first.
        let mut direct: BTreeSet<u32> = BTreeSet::new();
        let mut indexes: BTreeMap<Id, u32> = BTreeMap::new();
        for (id, old) in &old_workloads {
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
        for c in changes {
            if matches!(c, Change::RuleSet(_)) {
                self.rules_touched_by(c, &mut in_sets);
            } else {
                self.rules_touched_by(c, &mut touched);
            }
        }

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
            // Only rules naming a group whose expansion moved are touched (a nested
            // group's change moves every group containing it).
            let before = std::mem::take(&mut self.group_labels);
            self.expand_groups();
            let ids: BTreeSet<&Id> = before.keys().chain(self.group_labels.keys()).collect();
            for g in ids {
                if before.get(g) != self.group_labels.get(g) {
                    touched.extend(self.by_group.get(g).into_iter().flatten().copied());
                }
            }
        }
        // New rules and boundaries get an index now.
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
        // A rule of a changed set whose definition (and set scope) is what it
        // was, and that nothing else touched, resolves to what it did.
        for r in in_sets {
            let now = self.rule_parts(r).map(|p| p.to_owned());
            if touched.contains(&r) || now.as_ref() != parts_before.get(&r) {
                touched.insert(r);
            }
        }
        // Rule definitions may have changed: re-index the touched ones.
        for &r in &touched {
            self.unindex_refs(r);
            if self.rule_parts(r).is_some() {
                self.index_refs(r);
            }
        }

        // Re-resolve touched rules and collect the workloads whose inputs moved.
        let mut affected: BTreeSet<u32> = direct;
        for r in touched {
            let old = self.rules.remove(&r);
            let new = self.resolve(r);
            if old == new {
                if let Some(d) = old {
                    self.rules.insert(r, d);
                }
                continue;
            }
            let empty = Vec::new();
            let (op, oc) = old
                .as_ref()
                .map_or((&empty, &empty), |d| (&d.providers, &d.consumers));
            let (np, nc) = new
                .as_ref()
                .map_or((&empty, &empty), |d| (&d.providers, &d.consumers));
            let inbound_same = match (&old, &new) {
                (Some(a), Some(b)) => {
                    a.action == b.action
                        && a.consumer_peers == b.consumer_peers
                        && a.ports == b.ports
                }
                _ => false,
            };
            let outbound_same = match (&old, &new) {
                (Some(a), Some(b)) => {
                    a.action == b.action
                        && a.provider_peers == b.provider_peers
                        && a.ports == b.ports
                }
                _ => false,
            };
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
            if let Some(d) = &old {
                self.unlink(r, d);
            }
            if let Some(d) = new {
                self.link(r, &d);
                self.rules.insert(r, d);
            }
        }
        self.recompile(affected)
    }

    /// Recompiles the given workloads and returns those whose output changed.
    fn recompile(&mut self, affected: BTreeSet<u32>) -> BTreeSet<Id> {
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

    /// Does workload `w` satisfy the label/label-group part of `actors`?
    /// `None` if the list has no label actors.
    fn labels_match(&self, w: &Workload, actors: &[Actor]) -> Option<bool> {
        let mut keys: Vec<(&str, bool)> = Vec::new();
        for a in actors {
            let (key, hit) = match a {
                Actor::Label(l) => (
                    self.estate
                        .labels
                        .get(l)
                        .map(|x| x.key.as_str())
                        .unwrap_or(""),
                    w.labels.contains(l),
                ),
                Actor::LabelGroup(g) => (
                    self.policy
                        .label_groups
                        .get(g)
                        .map(|x| x.key.as_str())
                        .unwrap_or(""),
                    self.group_labels
                        .get(g)
                        .is_some_and(|ls| w.labels.iter().any(|l| ls.contains(l))),
                ),
                _ => continue,
            };
            match keys.iter_mut().find(|(k, _)| *k == key) {
                Some((_, any)) => *any |= hit,
                None => keys.push((key, hit)),
            }
        }
        (!keys.is_empty()).then(|| keys.iter().all(|(_, hit)| *hit))
    }

    fn workload_matches(&self, w: &Workload, actors: &[Actor]) -> bool {
        actors.iter().any(|a| {
            matches!(a, Actor::AllWorkloads) || matches!(a, Actor::Workload(id) if *id == w.id)
        }) || self.labels_match(w, actors) == Some(true)
    }

    /// Brings one rule up to date after workload changes, without resolving it
    /// again: each changed workload joins or leaves the rule's sides, and a side's
    /// peer set is rebuilt only if a member of it came, went or moved.
    fn patch_rule(
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

    fn reindex_workload_labels(&mut self, w: u32, id: &Id, old: &[Id]) {
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

    /// The rules a change can affect, by the current indexes.
    fn rules_touched_by(&self, c: &Change, out: &mut BTreeSet<Rx>) {
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

fn symmetric_difference(a: &[u32], b: &[u32]) -> Vec<u32> {
    let both = intersect(a, b);
    union(a, b)
        .into_iter()
        .filter(|x| both.binary_search(x).is_err())
        .collect()
}

struct RuleParts<'a> {
    action: Action,
    providers: &'a [Actor],
    consumers: &'a [Actor],
    services: &'a [ServiceRef],
    scope: Option<&'a Vec<Actor>>,
    unscoped_consumers: bool,
}

/// A rule's definition as it stood before an update, to tell whether it moved.
#[derive(PartialEq)]
struct OwnedParts {
    action: Action,
    providers: Vec<Actor>,
    consumers: Vec<Actor>,
    services: Vec<ServiceRef>,
    scope: Option<Vec<Actor>>,
    unscoped_consumers: bool,
}

impl RuleParts<'_> {
    fn to_owned(&self) -> OwnedParts {
        OwnedParts {
            action: self.action,
            providers: self.providers.to_vec(),
            consumers: self.consumers.to_vec(),
            services: self.services.to_vec(),
            scope: self.scope.cloned(),
            unscoped_consumers: self.unscoped_consumers,
        }
    }
}

fn rule_refs_of_rule_set(rs: &crate::model::RuleSet) -> Vec<RuleRef> {
    let mut out = Vec::new();
    for r in &rs.rules {
        out.push(RuleRef::Allow {
            rule_set: rs.id.clone(),
            rule: r.id.clone(),
        });
    }
    for r in &rs.deny_rules {
        out.push(RuleRef::Deny {
            rule_set: rs.id.clone(),
            rule: r.id.clone(),
        });
    }
    out
}

/// The addresses of an IP list: its ranges minus its exclusions (unparseable
/// entries, refused by validation, are skipped).
pub fn ip_list_set(l: &crate::model::IpList) -> AddrSet {
    let parse =
        |v: &[String]| AddrSet::from_ranges(v.iter().filter_map(|s| IpRange::parse(s).ok()));
    parse(&l.ranges).minus(&parse(&l.exclusions))
}
