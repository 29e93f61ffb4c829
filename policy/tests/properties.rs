//! Property tests: on random estates and policies, the fast engine agrees with
//! the naive reference evaluator on every sampled flow, and an incremental update
//! equals a full recompute and names exactly the workloads whose output changed.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use proptest::prelude::*;
use sc_policy::compute::Verdict;
use sc_policy::flowlog::{self, Decision, Direction};
use sc_policy::model::*;
use sc_policy::reference::{inbound_allowed, outbound_allowed, Flow};
use sc_policy::{Change, Engine};

const ROLES: [&str; 3] = ["web", "app", "db"];
const ENVS: [&str; 2] = ["prod", "dev"];
const PORTS: [u16; 4] = [22, 80, 443, 5432];

fn base_labels() -> Estate {
    let mut e = Estate::default();
    for (k, vs) in [("role", &ROLES[..]), ("env", &ENVS[..])] {
        for v in vs {
            let id = format!("{k}-{v}");
            e.labels.insert(
                id.clone(),
                Label {
                    id,
                    key: k.into(),
                    value: v.to_string(),
                },
            );
        }
    }
    e
}

fn addr(i: usize, v6: bool) -> IpAddr {
    if v6 {
        format!("2001:db8::{:x}", i + 1).parse().unwrap()
    } else {
        format!("10.0.{}.{}", i / 200, i % 200 + 1).parse().unwrap()
    }
}

fn arb_mode() -> impl Strategy<Value = EnforcementMode> {
    prop_oneof![
        Just(EnforcementMode::Idle),
        Just(EnforcementMode::VisibilityOnly),
        Just(EnforcementMode::Selective),
        Just(EnforcementMode::Full),
        Just(EnforcementMode::Full),
    ]
}

/// (role, env, managed, online, mode, has_v6)
type WlSpec = (
    Option<usize>,
    Option<usize>,
    bool,
    bool,
    EnforcementMode,
    bool,
);

fn arb_workload() -> impl Strategy<Value = WlSpec> {
    (
        proptest::option::of(0..3usize),
        proptest::option::of(0..2usize),
        any::<bool>(),
        prop::bool::weighted(0.85),
        arb_mode(),
        prop::bool::weighted(0.3),
    )
}

fn build_workload(i: usize, s: &WlSpec) -> Workload {
    let mut labels = Vec::new();
    if let Some(r) = s.0 {
        labels.push(format!("role-{}", ROLES[r]));
    }
    if let Some(e) = s.1 {
        labels.push(format!("env-{}", ENVS[e]));
    }
    let mut interfaces = vec![addr(i, false)];
    if s.5 {
        interfaces.push(addr(i, true));
    }
    Workload {
        id: format!("w{i:02}"),
        name: format!("w{i}"),
        hostname: String::new(),
        interfaces,
        labels,
        managed: s.2,
        mode: s.4,
        online: s.3,
        visibility: Default::default(),
    }
}

fn arb_actor() -> impl Strategy<Value = Actor> {
    prop_oneof![
        4 => (0..3usize).prop_map(|r| Actor::Label(format!("role-{}", ROLES[r]))),
        2 => (0..2usize).prop_map(|e| Actor::Label(format!("env-{}", ENVS[e]))),
        1 => Just(Actor::LabelGroup("g-front".into())),
        1 => Just(Actor::AllWorkloads),
        1 => (0..12usize).prop_map(|i| Actor::Workload(format!("w{i:02}"))),
        1 => Just(Actor::IpList("ext".into())),
    ]
}

fn arb_service() -> impl Strategy<Value = ServiceRef> {
    prop_oneof![
        4 => (0..4usize).prop_map(|p| ServiceRef::Port(PortRange { proto: Proto::Tcp, port: Some(PORTS[p]), to_port: None })),
        1 => Just(ServiceRef::Port(PortRange { proto: Proto::Tcp, port: Some(80), to_port: Some(443) })),
        1 => Just(ServiceRef::Service("web".into())),
        1 => Just(ServiceRef::All),
    ]
}

/// (allow?, override?, providers, consumers, services, unscoped)
type RuleSpec = (u8, Vec<Actor>, Vec<Actor>, Vec<ServiceRef>, bool);

fn arb_rule() -> impl Strategy<Value = RuleSpec> {
    (
        0..4u8,
        prop::collection::vec(arb_actor(), 1..3),
        prop::collection::vec(arb_actor(), 1..3),
        prop::collection::vec(arb_service(), 1..3),
        any::<bool>(),
    )
}

fn arb_scope() -> impl Strategy<Value = Vec<Actor>> {
    prop_oneof![
        Just(vec![]),
        (0..2usize).prop_map(|e| vec![Actor::Label(format!("env-{}", ENVS[e]))])
    ]
}

fn build_rule_set(id: usize, scope: Vec<Actor>, rules: &[RuleSpec]) -> RuleSet {
    let mut rs = RuleSet {
        id: format!("rs{id}"),
        name: String::new(),
        enabled: true,
        scope,
        rules: vec![],
        deny_rules: vec![],
    };
    for (j, (kind, p, c, s, unscoped)) in rules.iter().enumerate() {
        if *kind < 2 {
            rs.rules.push(Rule {
                id: format!("r{j}"),
                enabled: true,
                providers: p.clone(),
                consumers: c.clone(),
                services: s.clone(),
                unscoped_consumers: *unscoped,
                deliberately_broad: true,
            });
        } else {
            rs.deny_rules.push(DenyRule {
                id: format!("r{j}"),
                enabled: true,
                providers: p.clone(),
                consumers: c.clone(),
                services: s.clone(),
                unscoped_consumers: *unscoped,
                override_deny: *kind == 3,
            });
        }
    }
    rs
}

fn base_policy() -> PolicySet {
    let mut p = PolicySet::default();
    p.label_groups.insert(
        "g-front".into(),
        LabelGroup {
            id: "g-front".into(),
            name: String::new(),
            key: "role".into(),
            labels: vec!["role-web".into()],
            sub_groups: vec!["g-mid".into()],
        },
    );
    p.label_groups.insert(
        "g-mid".into(),
        LabelGroup {
            id: "g-mid".into(),
            name: String::new(),
            key: "role".into(),
            labels: vec!["role-app".into()],
            sub_groups: vec![],
        },
    );
    p.services.insert(
        "web".into(),
        Service {
            id: "web".into(),
            name: String::new(),
            ports: vec![
                PortRange {
                    proto: Proto::Tcp,
                    port: Some(80),
                    to_port: None,
                },
                PortRange {
                    proto: Proto::Tcp,
                    port: Some(443),
                    to_port: None,
                },
            ],
        },
    );
    p.ip_lists.insert(
        "ext".into(),
        IpList {
            id: "ext".into(),
            name: String::new(),
            ranges: vec![
                "10.0.0.0/30".into(),
                "192.168.0.0/24".into(),
                "2001:db8::/126".into(),
            ],
            exclusions: vec!["10.0.0.2".into()],
        },
    );
    p
}

fn arb_world() -> impl Strategy<Value = (Estate, PolicySet)> {
    (
        prop::collection::vec(arb_workload(), 2..12),
        prop::collection::vec((arb_scope(), prop::collection::vec(arb_rule(), 1..4)), 1..4),
    )
        .prop_map(|(wls, sets)| {
            let mut estate = base_labels();
            for (i, s) in wls.iter().enumerate() {
                let w = build_workload(i, s);
                estate.workloads.insert(w.id.clone(), w);
            }
            let mut policy = base_policy();
            for (i, (scope, rules)) in sets.into_iter().enumerate() {
                let rs = build_rule_set(i, scope, &rules);
                policy.rule_sets.insert(rs.id.clone(), rs);
            }
            (estate, policy)
        })
}

/// Every source address worth trying: each workload's, plus outsiders.
fn sources(estate: &Estate) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = estate
        .workloads
        .values()
        .flat_map(|w| w.interfaces.clone())
        .collect();
    v.extend(
        [
            "10.0.0.1",
            "10.0.0.2",
            "192.168.0.9",
            "8.8.8.8",
            "2001:db8::3",
            "2001:db8::ff",
        ]
        .iter()
        .map(|s| s.parse::<IpAddr>().unwrap()),
    );
    v
}

fn check_engine_matches_reference(
    estate: &Estate,
    policy: &PolicySet,
    engine: &Engine,
) -> Result<(), TestCaseError> {
    for w in estate.workloads.values() {
        let compiled = engine.compiled(&w.id);
        prop_assert_eq!(
            compiled.is_some(),
            w.managed,
            "compiled iff managed: {}",
            w.id
        );
        let Some(c) = compiled else { continue };
        for src in sources(estate) {
            for &port in &PORTS {
                let dst = w.interfaces[0];
                let flow = Flow {
                    src,
                    dst,
                    proto: Proto::Tcp,
                    port,
                };
                let fast = c.decide_inbound(src, Proto::Tcp, port).0 == Verdict::Allowed;
                let slow = inbound_allowed(estate, policy, w, &flow);
                prop_assert_eq!(fast, slow, "inbound {} <- {} :{}", w.id, src, port);
                // The decision a flow is reported with says blocked exactly
                // when the firewall blocks it.
                if let Some((d, _)) = flowlog::decide(&c, Direction::Inbound, src, 6, port) {
                    prop_assert_eq!(d == Decision::Blocked, !slow, "logged inbound {}", w.id);
                }
                // Outbound from this workload to the same address set.
                let out = Flow {
                    src: dst,
                    dst: src,
                    proto: Proto::Tcp,
                    port,
                };
                let fast = c.decide_outbound(src, Proto::Tcp, port).0 == Verdict::Allowed;
                let slow = outbound_allowed(estate, policy, w, &out);
                prop_assert_eq!(fast, slow, "outbound {} -> {} :{}", w.id, src, port);
                if let Some((d, _)) = flowlog::decide(&c, Direction::Outbound, src, 6, port) {
                    prop_assert_eq!(d == Decision::Blocked, !slow, "logged outbound {}", w.id);
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Relabel(usize, WlSpec),
    RemoveWorkload(usize),
    AddWorkload(WlSpec),
    ReplaceRuleSet(usize, Vec<Actor>, Vec<RuleSpec>),
    /// One rule of a set written (or added), the others left as they are: the
    /// shape of a typical provision.
    EditRule(usize, usize, RuleSpec),
    DropRuleSet(usize),
    IpList(Vec<String>),
    Group(Vec<String>),
    Service(u16),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0..12usize, arb_workload()).prop_map(|(i, s)| Mutation::Relabel(i, s)),
        1 => (0..12usize).prop_map(Mutation::RemoveWorkload),
        1 => arb_workload().prop_map(Mutation::AddWorkload),
        3 => (0..4usize, arb_scope(), prop::collection::vec(arb_rule(), 0..4)).prop_map(|(i, s, r)| Mutation::ReplaceRuleSet(i, s, r)),
        1 => (0..4usize).prop_map(Mutation::DropRuleSet),
        3 => (0..4usize, 0..5usize, arb_rule()).prop_map(|(i, j, r)| Mutation::EditRule(i, j, r)),
        1 => prop::collection::vec(prop_oneof![Just("10.0.0.0/29".to_string()), Just("10.0.0.5".to_string()), Just("2001:db8::1".to_string()), Just("192.168.0.0/25".to_string())], 1..3).prop_map(Mutation::IpList),
        1 => prop::collection::vec((0..3usize).prop_map(|r| format!("role-{}", ROLES[r])), 0..3).prop_map(Mutation::Group),
        1 => (0..4usize).prop_map(|p| Mutation::Service(PORTS[p])),
    ]
}

/// Applies `m` and returns the change list that describes it.
fn mutate(m: &Mutation, estate: &mut Estate, policy: &mut PolicySet) -> Vec<Change> {
    match m {
        Mutation::Relabel(i, s) => {
            let id = format!("w{i:02}");
            if !estate.workloads.contains_key(&id) {
                return vec![];
            }
            estate.workloads.insert(id.clone(), build_workload(*i, s));
            vec![Change::Workload(id)]
        }
        Mutation::RemoveWorkload(i) => {
            let id = format!("w{i:02}");
            estate.workloads.remove(&id);
            vec![Change::Workload(id)]
        }
        Mutation::AddWorkload(s) => {
            let i = 20 + estate.workloads.len();
            let w = build_workload(i, s);
            let id = w.id.clone();
            estate.workloads.insert(id.clone(), w);
            vec![Change::Workload(id)]
        }
        Mutation::ReplaceRuleSet(i, scope, rules) => {
            let rs = build_rule_set(*i, scope.clone(), rules);
            policy.rule_sets.insert(rs.id.clone(), rs);
            vec![Change::RuleSet(format!("rs{i}"))]
        }
        Mutation::EditRule(i, j, rule) => {
            let Some(rs) = policy.rule_sets.get(&format!("rs{i}")) else {
                return vec![];
            };
            // Rebuild the set from its rules with rule j replaced; rule ids are
            // positions, so the untouched rules keep theirs.
            let one = build_rule_set(*i, rs.scope.clone(), std::slice::from_ref(rule));
            let mut rs = rs.clone();
            let id = format!("r{j}");
            rs.rules.retain(|r| r.id != id);
            rs.deny_rules.retain(|r| r.id != id);
            for mut r in one.rules {
                r.id = id.clone();
                rs.rules.push(r);
            }
            for mut r in one.deny_rules {
                r.id = id.clone();
                rs.deny_rules.push(r);
            }
            policy.rule_sets.insert(rs.id.clone(), rs);
            vec![Change::RuleSet(format!("rs{i}"))]
        }
        Mutation::DropRuleSet(i) => {
            policy.rule_sets.remove(&format!("rs{i}"));
            vec![Change::RuleSet(format!("rs{i}"))]
        }
        Mutation::IpList(ranges) => {
            policy.ip_lists.get_mut("ext").unwrap().ranges = ranges.clone();
            vec![Change::IpList("ext".into())]
        }
        Mutation::Group(labels) => {
            policy.label_groups.get_mut("g-mid").unwrap().labels = labels.clone();
            vec![Change::LabelGroup("g-mid".into())]
        }
        Mutation::Service(port) => {
            policy.services.get_mut("web").unwrap().ports[1].port = Some(*port);
            vec![Change::Service("web".into())]
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(192), ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_naive_evaluator((estate, policy) in arb_world()) {
        let engine = Engine::new(estate.clone(), policy.clone());
        check_engine_matches_reference(&estate, &policy, &engine)?;
    }

    #[test]
    fn incremental_updates_equal_a_full_recompute_and_name_exactly_what_changed(
        (estate, policy) in arb_world(),
        mutations in prop::collection::vec(arb_mutation(), 1..5),
    ) {
        let mut engine = Engine::new(estate.clone(), policy.clone());
        let (mut e2, mut p2) = (estate, policy);
        for m in &mutations {
            let before = engine.all_compiled();
            let changes = mutate(m, &mut e2, &mut p2);
            let reported = engine.update(&changes, |e, p| { *e = e2.clone(); *p = p2.clone(); });
            let full = Engine::new(e2.clone(), p2.clone()).all_compiled();
            prop_assert_eq!(&engine.all_compiled(), &full, "after {:?}", m);
            let ids: BTreeSet<&String> = before.keys().chain(full.keys()).collect();
            let really: BTreeSet<String> = ids.into_iter().filter(|id| before.get(*id) != full.get(*id)).cloned().collect();
            prop_assert_eq!(reported, really, "changed set after {:?}", m);
        }
        check_engine_matches_reference(&e2, &p2, &engine)?;
    }

    #[test]
    fn a_provisions_affected_workloads_are_exactly_those_whose_rules_differ(
        (estate, policy) in arb_world(),
        mutations in prop::collection::vec(arb_mutation(), 1..5),
    ) {
        let (mut e2, mut p2) = (estate, policy.clone());
        for m in &mutations {
            mutate(m, &mut e2, &mut p2);
        }
        // The reference: two engines, every workload compared.
        let a = Engine::new(e2.clone(), policy.clone()).all_compiled();
        let b = Engine::new(e2.clone(), p2.clone()).all_compiled();
        let ids: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let really: BTreeSet<String> = ids.into_iter().filter(|id| a.get(*id) != b.get(*id)).cloned().collect();
        prop_assert_eq!(sc_policy::version::affected(&e2, &policy, &p2), really, "after {:?}", mutations);
    }
}
