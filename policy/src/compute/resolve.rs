//! Resolution: which workloads a rule's actors and scope match, and the
//! addresses (online workloads' interfaces, IP lists) and ports each side
//! stands for. Done once per rule, so every compiled rule shares its peer set.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::compiled::Ports;
use super::engine::{Engine, RuleData, Rx};
use super::members::{insert_sorted, intersect, union, Members};
use crate::addr::{AddrSet, IpRange};
use crate::model::{Actor, Id, IpList, ServiceRef, Workload};

impl Engine {
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

    /// The addresses of the IP list actors of a list.
    pub(super) fn ip_list_addrs(&self, actors: &[Actor]) -> AddrSet {
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

    /// The addresses of the given workloads that are online.
    pub(super) fn online_addrs(&self, members: &[u32]) -> AddrSet {
        let mut ips = Vec::with_capacity(members.len());
        for &w in members {
            if let Some(a) = self.online_ips.get(w as usize) {
                ips.extend(a.iter().copied());
            }
        }
        AddrSet::from_ips(ips)
    }

    /// Rule `r`'s sides, peer sets and ports from the current indexes
    /// (`None`: gone or disabled).
    pub(super) fn resolve(&self, r: Rx) -> Option<RuleData> {
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

    /// Records `r` under each of its providers and consumers.
    pub(super) fn link(&mut self, r: Rx, data: &RuleData) {
        for &w in &data.providers {
            self.as_provider.entry(w).or_default().insert(r);
        }
        for &w in &data.consumers {
            self.as_consumer.entry(w).or_default().insert(r);
        }
    }

    /// Undoes [`Engine::link`].
    pub(super) fn unlink(&mut self, r: Rx, data: &RuleData) {
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

    /// Does workload `w` satisfy the label/label-group part of `actors`?
    /// `None` if the list has no label actors.
    pub(super) fn labels_match(&self, w: &Workload, actors: &[Actor]) -> Option<bool> {
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

    /// Does workload `w` match any actor of the list?
    pub(super) fn workload_matches(&self, w: &Workload, actors: &[Actor]) -> bool {
        actors.iter().any(|a| {
            matches!(a, Actor::AllWorkloads) || matches!(a, Actor::Workload(id) if *id == w.id)
        }) || self.labels_match(w, actors) == Some(true)
    }
}

/// The addresses of an IP list: its ranges minus its exclusions (unparseable
/// entries, refused by validation, are skipped).
pub fn ip_list_set(l: &IpList) -> AddrSet {
    let parse =
        |v: &[String]| AddrSet::from_ranges(v.iter().filter_map(|s| IpRange::parse(s).ok()));
    parse(&l.ranges).minus(&parse(&l.exclusions))
}
