//! The naive reference evaluator: "is a flow from a to b on port p allowed?",
//! answered straight from the definitions, with no index, no address merging and
//! no caching. It is slow on purpose and exists to check the fast engine.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::addr::IpRange;
use crate::model::{Actor, EnforcementMode, Estate, PolicySet, Proto, ServiceRef, Workload};

/// A flow between two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub proto: Proto,
    /// Destination port (ignored for ICMP).
    pub port: u16,
}

/// A rule, flattened for the naive walk.
struct Naive<'a> {
    deny: bool,
    override_deny: bool,
    providers: &'a [Actor],
    consumers: &'a [Actor],
    services: &'a [ServiceRef],
    scope: &'a [Actor],
    unscoped_consumers: bool,
}

fn all_rules(policy: &PolicySet) -> Vec<Naive<'_>> {
    let mut out = Vec::new();
    for rs in policy.rule_sets.values().filter(|rs| rs.enabled) {
        for r in rs.rules.iter().filter(|r| r.enabled) {
            out.push(Naive {
                deny: false,
                override_deny: false,
                providers: &r.providers,
                consumers: &r.consumers,
                services: &r.services,
                scope: &rs.scope,
                unscoped_consumers: r.unscoped_consumers,
            });
        }
        for r in rs.deny_rules.iter().filter(|r| r.enabled) {
            out.push(Naive {
                deny: true,
                override_deny: r.override_deny,
                providers: &r.providers,
                consumers: &r.consumers,
                services: &r.services,
                scope: &rs.scope,
                unscoped_consumers: r.unscoped_consumers,
            });
        }
    }
    for b in policy.boundaries.values() {
        out.push(Naive {
            deny: true,
            override_deny: b.override_deny,
            providers: &b.providers,
            consumers: &b.consumers,
            services: &b.services,
            scope: &[],
            unscoped_consumers: true,
        });
    }
    out
}

fn group_members(policy: &PolicySet, group: &str, seen: &mut BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !seen.insert(group.to_string()) {
        return out;
    }
    if let Some(g) = policy.label_groups.get(group) {
        out.extend(g.labels.iter().cloned());
        for s in &g.sub_groups {
            out.extend(group_members(policy, s, seen));
        }
    }
    out
}

/// Does workload `w` satisfy the label and label-group actors of `actors`
/// (labels of one key are alternatives, keys are combined)? `None` if there are none.
fn labels_match(
    estate: &Estate,
    policy: &PolicySet,
    w: &Workload,
    actors: &[Actor],
) -> Option<bool> {
    let mut keys: Vec<(String, BTreeSet<String>)> = Vec::new();
    for a in actors {
        let (key, labels) = match a {
            Actor::Label(l) => (
                estate
                    .labels
                    .get(l)
                    .map(|x| x.key.clone())
                    .unwrap_or_default(),
                BTreeSet::from([l.clone()]),
            ),
            Actor::LabelGroup(g) => (
                policy
                    .label_groups
                    .get(g)
                    .map(|x| x.key.clone())
                    .unwrap_or_default(),
                group_members(policy, g, &mut BTreeSet::new()),
            ),
            _ => continue,
        };
        match keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, set)) => set.extend(labels),
            None => keys.push((key, labels)),
        }
    }
    if keys.is_empty() {
        return None;
    }
    Some(
        keys.iter()
            .all(|(_, set)| w.labels.iter().any(|l| set.contains(l))),
    )
}

fn actors_match(estate: &Estate, policy: &PolicySet, w: &Workload, actors: &[Actor]) -> bool {
    actors.iter().any(|a| {
        matches!(a, Actor::AllWorkloads) || matches!(a, Actor::Workload(id) if *id == w.id)
    }) || labels_match(estate, policy, w, actors) == Some(true)
}

fn in_scope(estate: &Estate, policy: &PolicySet, w: &Workload, scope: &[Actor]) -> bool {
    labels_match(estate, policy, w, scope).unwrap_or(true)
}

fn in_ip_lists(policy: &PolicySet, actors: &[Actor], addr: IpAddr) -> bool {
    let hit = |list: &[String]| {
        list.iter().filter_map(|s| IpRange::parse(s).ok()).any(|r| {
            let h = IpRange::host(addr);
            r.family == h.family && r.first <= h.first && h.first <= r.last
        })
    };
    actors.iter().any(|a| match a {
        Actor::IpList(id) => policy
            .ip_lists
            .get(id)
            .is_some_and(|l| hit(&l.ranges) && !hit(&l.exclusions)),
        _ => false,
    })
}

fn service_match(policy: &PolicySet, services: &[ServiceRef], proto: Proto, port: u16) -> bool {
    services.iter().any(|s| match s {
        ServiceRef::All => true,
        ServiceRef::Port(p) => p.matches(proto, port),
        ServiceRef::Service(id) => policy
            .services
            .get(id)
            .is_some_and(|svc| svc.ports.iter().any(|p| p.matches(proto, port))),
    })
}

/// Is an address one of the (online) workloads on `side` of `rule`, or in its IP lists?
fn addr_on_side(
    estate: &Estate,
    policy: &PolicySet,
    rule: &Naive,
    side: &[Actor],
    scoped: bool,
    addr: IpAddr,
) -> bool {
    estate.workloads.values().any(|c| {
        c.online
            && c.interfaces.contains(&addr)
            && (!scoped || in_scope(estate, policy, c, rule.scope))
            && actors_match(estate, policy, c, side)
    }) || in_ip_lists(policy, side, addr)
}

/// The inbound verdict of workload `w` on a flow.
pub fn inbound_allowed(estate: &Estate, policy: &PolicySet, w: &Workload, flow: &Flow) -> bool {
    if !w.managed
        || matches!(
            w.mode,
            EnforcementMode::Idle | EnforcementMode::VisibilityOnly
        )
    {
        return true;
    }
    let (mut over, mut allow, mut deny) = (false, false, false);
    for r in all_rules(policy) {
        let hit = in_scope(estate, policy, w, r.scope)
            && actors_match(estate, policy, w, r.providers)
            && service_match(policy, r.services, flow.proto, flow.port)
            && addr_on_side(
                estate,
                policy,
                &r,
                r.consumers,
                !r.unscoped_consumers,
                flow.src,
            );
        if hit {
            match (r.deny, r.override_deny) {
                (true, true) => over = true,
                (true, false) => deny = true,
                (false, _) => allow = true,
            }
        }
    }
    if over {
        false
    } else if allow {
        true
    } else if deny {
        false
    } else {
        w.mode != EnforcementMode::Full
    }
}

/// The outbound verdict of workload `w` on a flow (only full mode restricts).
pub fn outbound_allowed(estate: &Estate, policy: &PolicySet, w: &Workload, flow: &Flow) -> bool {
    if !w.managed || w.mode != EnforcementMode::Full {
        return true;
    }
    all_rules(policy).iter().any(|r| {
        !r.deny
            && (r.unscoped_consumers || in_scope(estate, policy, w, r.scope))
            && actors_match(estate, policy, w, r.consumers)
            && service_match(policy, r.services, flow.proto, flow.port)
            && addr_on_side(estate, policy, r, r.providers, true, flow.dst)
    })
}
