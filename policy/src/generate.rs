//! The policy generator: allow rules proposed from observed connections, for
//! one app group, so an operator can move it to full enforcement without
//! breaking what it does today.
//!
//! An app group is the workloads carrying every label of its scope (app and
//! env, and loc when the org groups by location). The connections its policy
//! decides are those into the group, from anywhere, and those out of it to
//! addresses. For each, the engine says whether the draft already allows it,
//! as if both ends enforced in full: coverage means "a rule allows it",
//! whatever the enforcement modes are today. For those it does not allow,
//! the generator proposes:
//! - **intra-scope** rules: the destination's role from the source's role;
//! - **extra-scope** rules: from another app group's role (its labels; a
//!   workload without app group labels is named by itself);
//! - **IP-list** rules: from, or to, the narrowest IP list holding the address
//!   (an address in no IP list is reported, not guessed at);
//! - with `ring_fence`, one rule for everything inside the group instead of
//!   the intra-scope rules (the guard rails allow it only inside a scope).
//!
//! Connections out of the group into another app group are decided by that
//! group's policy (its provider side) and reported as such. Proposals are
//! merged per (providers, consumers) with their services, ranked by the
//! connections they allow, and meant for the draft ruleset whose scope is the
//! app group (a new one if there is none). Once they are in the draft, a
//! second run over the same traffic proposes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::compute::{ip_list_set, Engine};
use crate::flowlog::{decide, proto_of, Decision, Direction};
use crate::model::{
    Actor, EnforcementMode, Estate, Id, PolicySet, PortRange, Proto, Rule, RuleSet, ServiceRef,
    Workload,
};

/// One end of an observed connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// A workload of the estate, by id.
    Workload(Id),
    /// An address that is no workload.
    Address(IpAddr),
}

/// Connections observed from one end to another on one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Who opened them.
    pub src: End,
    /// Who received them.
    pub dst: End,
    /// The IP protocol number (6 TCP, 17 UDP, 1 and 58 ICMP).
    pub proto: u8,
    /// The destination port (ignored for ICMP).
    pub port: u16,
    /// How many.
    pub connections: u64,
}

/// What a proposed rule is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Both ends inside the app group.
    IntraScope,
    /// Everything inside the app group, in one rule.
    RingFence,
    /// Consumers in other app groups.
    ExtraScope,
    /// An IP list on the other end.
    IpList,
}

impl Kind {
    /// The name the API and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IntraScope => "intra_scope",
            Kind::RingFence => "ring_fence",
            Kind::ExtraScope => "extra_scope",
            Kind::IpList => "ip_list",
        }
    }
}

/// A proposed rule and the observed connections it would allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// What it is for.
    pub kind: Kind,
    /// The rule (its id is a placeholder until it is written).
    pub rule: Rule,
    /// Observed connections it allows that the draft did not.
    pub connections: u64,
}

/// The ruleset proposals belong in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The draft's enabled ruleset whose scope is exactly the app group.
    Existing(Id),
    /// None has that scope: a new one.
    New {
        /// The app group's label values, `|`-joined.
        name: String,
        /// The app group's labels.
        scope: Vec<Actor>,
    },
}

/// Observed connections no proposal is made for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Left {
    /// Out of the group into another app group: that group's policy.
    pub other_group: u64,
    /// Addresses in no IP list, with their connections: name them in an IP
    /// list and run again.
    pub unnamed: BTreeMap<IpAddr, u64>,
    /// An end that is no longer in the estate, a protocol policy cannot
    /// name, or no VEN on either end to decide.
    pub undecided: u64,
}

/// What the generator found and proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Where the proposals go.
    pub target: Target,
    /// The rules, most connections first.
    pub proposals: Vec<Proposal>,
    /// Observed connections the app group's policy decides.
    pub observed: u64,
    /// Of those, allowed by the draft as it is.
    pub allowed_before: u64,
    /// Of those, allowed by the draft with the proposals.
    pub allowed_after: u64,
    /// What no proposal covers, and why.
    pub left: Left,
}

/// Which way a governed connection crosses the group's edge.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Intra,
    FromGroup,
    FromAddress,
    ToAddress,
}

/// The placeholder id of the ruleset a [`Target::New`] becomes.
const NEW_RULE_SET: &str = "generated";

/// Proposes rules for app group `group` (its label ids) from `observed`,
/// against `draft` (see the module comment).
pub fn generate(
    estate: &Estate,
    draft: &PolicySet,
    observed: &[Observed],
    group: &[Id],
    ring_fence: bool,
) -> Report {
    let keys: Vec<&str> = group
        .iter()
        .filter_map(|l| estate.labels.get(l).map(|l| l.key.as_str()))
        .collect();
    let in_group = |w: &Workload| group.iter().all(|l| w.labels.contains(l));
    let lists: Vec<(u128, Id, crate::addr::AddrSet)> = draft
        .ip_lists
        .values()
        .map(|l| {
            let set = ip_list_set(l);
            (set.size(), l.id.clone(), set)
        })
        .collect();
    let narrowest = |ip: IpAddr| {
        lists
            .iter()
            .filter(|(_, _, set)| set.contains(ip))
            .min_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)))
            .map(|(_, id, _)| Actor::IpList(id.clone()))
    };
    let role = |w: &Workload| -> Vec<Actor> {
        w.labels
            .iter()
            .find(|l| estate.labels.get(*l).is_some_and(|l| l.key == "role"))
            .map_or(vec![Actor::AllWorkloads], |l| vec![Actor::Label(l.clone())])
    };
    // Another group's workload by its role and group labels, or by itself.
    let identity = |w: &Workload| -> Vec<Actor> {
        let mut out = Vec::new();
        for k in &keys {
            match w
                .labels
                .iter()
                .find(|l| estate.labels.get(*l).is_some_and(|l| l.key == *k))
            {
                Some(l) => out.push(Actor::Label(l.clone())),
                None => return vec![Actor::Workload(w.id.clone())],
            }
        }
        let r = role(w);
        if r != [Actor::AllWorkloads] {
            out.splice(0..0, r);
        }
        out
    };
    let target = target_of(estate, draft, group);
    let before = decider(estate, draft, observed);
    let mut report = Report {
        target: target.clone(),
        proposals: vec![],
        observed: 0,
        allowed_before: 0,
        allowed_after: 0,
        left: Left::default(),
    };
    // (kind, providers, consumers, extra-scope) → (services, connections).
    type Slot = (BTreeSet<ServiceRef>, u64);
    let mut merged: BTreeMap<(Kind, Vec<Actor>, Vec<Actor>, bool), Slot> = BTreeMap::new();
    let mut governed: Vec<&Observed> = Vec::new();
    for c in observed {
        let n = c.connections;
        let end = |e: &End| match e {
            End::Workload(id) => estate.workloads.get(id).map(Some),
            End::Address(_) => Some(None),
        };
        let (Some(src), Some(dst), Some(proto)) = (end(&c.src), end(&c.dst), proto_of(c.proto))
        else {
            report.left.undecided += n;
            continue;
        };
        let (src_in, dst_in) = (src.is_some_and(in_group), dst.is_some_and(in_group));
        let way = match (src, dst) {
            (Some(_), Some(_)) if src_in && dst_in => Way::Intra,
            (Some(_), _) if dst_in => Way::FromGroup,
            (None, _) if dst_in => Way::FromAddress,
            (_, None) if src_in => Way::ToAddress,
            (_, Some(_)) if src_in => {
                report.left.other_group += n;
                continue;
            }
            _ => continue,
        };
        let Some(ok) = allowed(&before, c) else {
            report.left.undecided += n;
            continue;
        };
        report.observed += n;
        governed.push(c);
        if ok {
            report.allowed_before += n;
            continue;
        }
        let service = ServiceRef::Port(PortRange {
            proto,
            port: (proto != Proto::Icmp).then_some(c.port),
            to_port: None,
        });
        let address = |e: &End| match e {
            End::Address(a) => Some(*a),
            End::Workload(_) => None,
        };
        let (kind, providers, consumers, extra) = match (way, src, dst) {
            (Way::Intra, _, _) if ring_fence => (
                Kind::RingFence,
                vec![Actor::AllWorkloads],
                vec![Actor::AllWorkloads],
                false,
            ),
            (Way::Intra, Some(s), Some(d)) => (Kind::IntraScope, role(d), role(s), false),
            (Way::FromGroup, Some(s), Some(d)) => (Kind::ExtraScope, role(d), identity(s), true),
            (Way::FromAddress, _, Some(d)) => match address(&c.src).map(|a| (a, narrowest(a))) {
                Some((_, Some(list))) => (Kind::IpList, role(d), vec![list], false),
                Some((a, None)) => {
                    *report.left.unnamed.entry(a).or_default() += n;
                    continue;
                }
                None => continue,
            },
            (Way::ToAddress, Some(s), _) => match address(&c.dst).map(|a| (a, narrowest(a))) {
                Some((_, Some(list))) => (Kind::IpList, vec![list], role(s), false),
                Some((a, None)) => {
                    *report.left.unnamed.entry(a).or_default() += n;
                    continue;
                }
                None => continue,
            },
            _ => continue,
        };
        let slot = merged
            .entry((kind, providers, consumers, extra))
            .or_default();
        if kind == Kind::RingFence {
            slot.0.insert(ServiceRef::All);
        } else {
            slot.0.insert(service);
        }
        slot.1 += n;
    }
    let mut proposals: Vec<Proposal> = merged
        .into_iter()
        .enumerate()
        .map(
            |(i, ((kind, providers, consumers, extra), (services, n)))| Proposal {
                kind,
                rule: Rule {
                    id: format!("proposed-{i}"),
                    enabled: true,
                    providers,
                    consumers,
                    services: services.into_iter().collect(),
                    unscoped_consumers: extra,
                    deliberately_broad: false,
                },
                connections: n,
            },
        )
        .collect();
    proposals.sort_by(|a, b| {
        b.connections
            .cmp(&a.connections)
            .then(a.kind.cmp(&b.kind))
            .then(a.rule.id.cmp(&b.rule.id))
    });
    // With the proposals in the draft: what would be allowed then.
    let mut after = draft.clone();
    let set = match &target {
        Target::Existing(id) => after.rule_sets.get_mut(id),
        Target::New { name, scope } => Some(
            after
                .rule_sets
                .entry(NEW_RULE_SET.to_string())
                .or_insert_with(|| RuleSet {
                    id: NEW_RULE_SET.into(),
                    name: name.clone(),
                    enabled: true,
                    scope: scope.clone(),
                    rules: vec![],
                    deny_rules: vec![],
                }),
        ),
    };
    if let Some(set) = set {
        set.rules.extend(proposals.iter().map(|p| p.rule.clone()));
    }
    let after = decider(estate, &after, observed);
    report.allowed_after = governed
        .iter()
        .filter(|c| allowed(&after, c) == Some(true))
        .map(|c| c.connections)
        .sum();
    report.proposals = proposals;
    report
}

/// The draft's enabled ruleset scoped to exactly the group, else a new one.
fn target_of(estate: &Estate, draft: &PolicySet, group: &[Id]) -> Target {
    let want: BTreeSet<Actor> = group.iter().cloned().map(Actor::Label).collect();
    if let Some(rs) = draft
        .rule_sets
        .values()
        .find(|rs| rs.enabled && rs.scope.iter().cloned().collect::<BTreeSet<_>>() == want)
    {
        return Target::Existing(rs.id.clone());
    }
    Target::New {
        name: group
            .iter()
            .map(|l| {
                estate
                    .labels
                    .get(l)
                    .map_or(l.as_str(), |l| l.value.as_str())
            })
            .collect::<Vec<_>>()
            .join(" | "),
        scope: group.iter().cloned().map(Actor::Label).collect(),
    }
}

/// An engine over just the workloads the connections name, each online and,
/// when managed, in full enforcement: whether a rule allows a connection,
/// whatever the modes are today. Peer sets then hold only those workloads'
/// addresses, which are the only ones asked about.
fn decider(estate: &Estate, policy: &PolicySet, observed: &[Observed]) -> Engine {
    let mut small = Estate {
        labels: estate.labels.clone(),
        workloads: BTreeMap::new(),
    };
    for c in observed {
        for e in [&c.src, &c.dst] {
            if let End::Workload(id) = e {
                if let Some(w) = estate.workloads.get(id) {
                    let mut w = w.clone();
                    w.online = true;
                    if w.managed {
                        w.mode = EnforcementMode::Full;
                    }
                    small.workloads.insert(id.clone(), w);
                }
            }
        }
    }
    Engine::new(small, policy.clone())
}

/// Whether the engine's policy lets `c` through: the destination's inbound
/// rules and the source's outbound rules, for each end with a VEN. `None`
/// when neither end has one.
fn allowed(engine: &Engine, c: &Observed) -> Option<bool> {
    let est = engine.estate();
    let managed = |e: &End| match e {
        End::Workload(id) => est.workloads.get(id).filter(|w| w.managed),
        End::Address(_) => None,
    };
    let addr = |e: &End| match e {
        End::Address(a) => Some(*a),
        End::Workload(id) => est.workloads.get(id)?.interfaces.first().copied(),
    };
    let mut decided = None;
    for (w, direction, peer) in [
        (managed(&c.dst), Direction::Inbound, &c.src),
        (managed(&c.src), Direction::Outbound, &c.dst),
    ] {
        let Some(w) = w else { continue };
        let verdict = engine
            .compiled(&w.id)
            .zip(addr(peer))
            .and_then(|(p, peer)| decide(&p, direction, peer, c.proto, c.port))
            .map(|(d, _)| d == Decision::Allowed)?;
        decided = Some(decided.unwrap_or(true) && verdict);
    }
    decided
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpList, Label, VisibilityLevel};

    fn label(id: &str, key: &str) -> (Id, Label) {
        (
            id.into(),
            Label {
                id: id.into(),
                key: key.into(),
                value: id.into(),
            },
        )
    }

    fn wl(id: &str, ip: &str, labels: &[&str]) -> (Id, Workload) {
        (
            id.into(),
            Workload {
                id: id.into(),
                name: id.into(),
                hostname: id.into(),
                interfaces: vec![ip.parse().unwrap()],
                labels: labels.iter().map(|l| l.to_string()).collect(),
                managed: true,
                mode: EnforcementMode::VisibilityOnly,
                online: true,
                visibility: VisibilityLevel::default(),
            },
        )
    }

    fn estate() -> Estate {
        Estate {
            labels: [
                label("web", "role"),
                label("db", "role"),
                label("shop", "app"),
                label("crm", "app"),
                label("prod", "env"),
            ]
            .into(),
            workloads: [
                wl("w1", "10.0.0.1", &["web", "shop", "prod"]),
                wl("w2", "10.0.0.2", &["db", "shop", "prod"]),
                wl("c1", "10.0.1.1", &["web", "crm", "prod"]),
                wl("x1", "10.0.2.1", &["db"]),
            ]
            .into(),
        }
    }

    fn draft() -> PolicySet {
        let mut p = PolicySet::default();
        p.ip_lists.insert(
            "corp".into(),
            IpList {
                id: "corp".into(),
                name: "corp".into(),
                ranges: vec!["192.0.2.0/24".into()],
                exclusions: vec![],
            },
        );
        p.ip_lists.insert(
            "any".into(),
            IpList {
                id: "any".into(),
                name: "any".into(),
                ranges: vec!["0.0.0.0/0".into()],
                exclusions: vec![],
            },
        );
        p
    }

    fn seen(src: End, dst: End, port: u16, n: u64) -> Observed {
        Observed {
            src,
            dst,
            proto: 6,
            port,
            connections: n,
        }
    }

    fn w(id: &str) -> End {
        End::Workload(id.into())
    }

    fn ip(a: &str) -> End {
        End::Address(a.parse().unwrap())
    }

    fn traffic() -> Vec<Observed> {
        vec![
            seen(w("w1"), w("w2"), 5432, 10),
            seen(w("w1"), w("w2"), 6432, 1),
            seen(w("c1"), w("w2"), 5432, 4),
            seen(w("x1"), w("w1"), 443, 2),
            seen(ip("192.0.2.7"), w("w1"), 443, 5),
            seen(w("w2"), ip("198.51.100.1"), 443, 3),
            seen(w("w2"), ip("2001:db8::1"), 443, 1),
            // Out of the shop into the crm: the crm's policy.
            seen(w("w1"), w("c1"), 80, 6),
            // Not the shop's at all.
            seen(w("c1"), w("x1"), 22, 9),
        ]
    }

    /// Writes `rules` into a new ruleset `rs` where the report said they go.
    fn adopt(policy: &mut PolicySet, target: &Target, rules: Vec<Rule>) {
        let Target::New { name, scope } = target.clone() else {
            panic!("a new ruleset: {target:?}");
        };
        let rs = RuleSet {
            id: "rs".into(),
            name,
            enabled: true,
            scope,
            rules,
            deny_rules: vec![],
        };
        policy.rule_sets.insert("rs".into(), rs);
    }

    fn group() -> Vec<Id> {
        vec!["shop".into(), "prod".into()]
    }

    #[test]
    fn proposes_intra_extra_and_ip_list_rules_ranked_by_connections() {
        let r = generate(&estate(), &draft(), &traffic(), &group(), false);
        let kinds: Vec<(Kind, u64)> = r
            .proposals
            .iter()
            .map(|p| (p.kind, p.connections))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::IntraScope, 11),
                (Kind::IpList, 5),
                (Kind::ExtraScope, 4),
                (Kind::IpList, 3),
                (Kind::ExtraScope, 2),
            ],
            "{:#?}",
            r.proposals
        );
        let intra = &r.proposals[0].rule;
        assert_eq!(intra.providers, vec![Actor::Label("db".into())]);
        assert_eq!(intra.consumers, vec![Actor::Label("web".into())]);
        assert_eq!(intra.services.len(), 2, "5432 and 6432 in one rule");
        assert!(!intra.unscoped_consumers);
        // The narrowest list holding the source, not "any".
        assert_eq!(
            r.proposals[1].rule.consumers,
            vec![Actor::IpList("corp".into())]
        );
        let crm = &r.proposals[2].rule;
        assert!(crm.unscoped_consumers);
        assert_eq!(
            crm.consumers,
            vec![
                Actor::Label("web".into()),
                Actor::Label("crm".into()),
                Actor::Label("prod".into())
            ]
        );
        // Outbound to an address: the list is the provider.
        assert_eq!(
            r.proposals[3].rule.providers,
            vec![Actor::IpList("any".into())]
        );
        // A workload without app group labels is named by itself.
        assert_eq!(
            r.proposals[4].rule.consumers,
            vec![Actor::Workload("x1".into())]
        );
        assert_eq!(r.left.other_group, 6);
        assert_eq!(
            r.left
                .unnamed
                .get(&"2001:db8::1".parse::<IpAddr>().unwrap()),
            Some(&1),
            "no IPv6 list holds it"
        );
        assert_eq!((r.observed, r.allowed_before, r.allowed_after), (26, 0, 25));
        assert!(matches!(&r.target, Target::New { name, .. } if name == "shop | prod"));
    }

    #[test]
    fn a_second_run_over_the_draft_with_the_proposals_proposes_nothing() {
        let (estate, mut policy) = (estate(), draft());
        let first = generate(&estate, &policy, &traffic(), &group(), false);
        adopt(
            &mut policy,
            &first.target,
            first.proposals.iter().map(|p| p.rule.clone()).collect(),
        );
        crate::validate::validate(&estate, &policy).expect("the proposals validate");
        let second = generate(&estate, &policy, &traffic(), &group(), false);
        assert!(second.proposals.is_empty(), "{:#?}", second.proposals);
        assert_eq!(second.target, Target::Existing("rs".into()));
        assert_eq!(second.allowed_before, first.allowed_after);
        assert_eq!(
            second.allowed_before,
            second.observed - 1,
            "the unnamed address"
        );
    }

    #[test]
    fn a_ring_fence_is_one_rule_for_everything_inside_and_passes_the_guard_rails() {
        let (estate, mut policy) = (estate(), draft());
        let r = generate(&estate, &policy, &traffic(), &group(), true);
        let fence: Vec<&Proposal> = r
            .proposals
            .iter()
            .filter(|p| p.kind == Kind::RingFence)
            .collect();
        assert_eq!(fence.len(), 1);
        assert_eq!(fence[0].rule.services, vec![ServiceRef::All]);
        assert!(r.proposals.iter().all(|p| p.kind != Kind::IntraScope));
        adopt(&mut policy, &r.target, vec![fence[0].rule.clone()]);
        crate::validate::validate(&estate, &policy).expect("a ring-fence is no any-to-any");
    }

    #[test]
    fn connections_the_draft_allows_get_no_proposal() {
        let (estate, mut policy) = (estate(), draft());
        policy.rule_sets.insert(
            "rs".into(),
            RuleSet {
                id: "rs".into(),
                name: "db".into(),
                enabled: true,
                scope: vec![],
                rules: vec![Rule {
                    id: "r".into(),
                    enabled: true,
                    providers: vec![Actor::Label("db".into())],
                    consumers: vec![Actor::Label("web".into())],
                    services: vec![ServiceRef::Port(PortRange {
                        proto: Proto::Tcp,
                        port: Some(5432),
                        to_port: None,
                    })],
                    unscoped_consumers: false,
                    deliberately_broad: false,
                }],
                deny_rules: vec![],
            },
        );
        let r = generate(&estate, &policy, &traffic(), &group(), false);
        // web → db:5432 from the shop and from the crm is allowed already.
        assert_eq!(r.allowed_before, 14);
        assert_eq!(r.proposals[0].connections, 5, "{:#?}", r.proposals);
        assert!(r
            .proposals
            .iter()
            .all(|p| p.kind != Kind::ExtraScope || p.connections != 4));
    }
}
