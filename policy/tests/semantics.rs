//! One test per semantic rule of the brief's "Policy semantics".

mod support;

use sc_policy::compute::{Action, Verdict};
use sc_policy::model::*;
use sc_policy::render::{explain_inbound, nftables};
use sc_policy::{Change, Engine};
use support::*;

/// web(prod) 10.0.1.5, app(prod) 10.0.2.7, db(prod) 10.0.3.9, db(dev) 10.1.3.9.
fn three_tier(mode: EnforcementMode) -> World {
    let mut w = World::new();
    for (id, role, env, ip) in [
        ("web1", "role-web", "env-prod", "10.0.1.5"),
        ("app1", "role-app", "env-prod", "10.0.2.7"),
        ("db1", "role-db", "env-prod", "10.0.3.9"),
        ("db-dev", "role-db", "env-dev", "10.1.3.9"),
        ("web-dev", "role-web", "env-dev", "10.1.1.5"),
    ] {
        w.workload(id, &[role, env, "app-crm"], &[ip], mode);
    }
    w
}

/// Ruleset `crm` scoped to prod: db accepts web on 5432 (rule `id`).
fn web_may_reach_db(w: &mut World, id: &str) {
    w.rule_set("crm", &["env-prod"]).rules.push(allow(
        id,
        labels(&["role-db"]),
        labels(&["role-web"]),
        vec![tcp(5432)],
    ));
}

fn verdict(e: &Engine, dst: &str, src: &str, port: u16) -> Verdict {
    e.compiled(dst)
        .unwrap()
        .decide_inbound(ip(src), Proto::Tcp, port)
        .0
}

#[test]
fn intra_scope_rules_stay_inside_the_scope() {
    let mut w = three_tier(EnforcementMode::Full);
    w.rule_set("crm-prod", &["app-crm", "env-prod"])
        .rules
        .push(allow(
            "1",
            labels(&["role-db"]),
            labels(&["role-web"]),
            vec![tcp(5432)],
        ));
    let e = w.engine();
    assert_eq!(verdict(&e, "db1", "10.0.1.5", 5432), Verdict::Allowed);
    assert_eq!(
        verdict(&e, "db1", "10.0.1.5", 5433),
        Verdict::Blocked,
        "other port"
    );
    assert_eq!(
        verdict(&e, "db1", "10.1.1.5", 5432),
        Verdict::Blocked,
        "web of dev is outside the scope"
    );
    assert_eq!(
        verdict(&e, "db-dev", "10.1.1.5", 5432),
        Verdict::Blocked,
        "db of dev is outside the scope"
    );
    assert_eq!(
        verdict(&e, "db1", "10.0.2.7", 5432),
        Verdict::Blocked,
        "app is not a consumer"
    );
}

#[test]
fn extra_scope_rules_admit_consumers_from_anywhere() {
    let mut w = three_tier(EnforcementMode::Full);
    let mut r = allow(
        "1",
        labels(&["role-db"]),
        labels(&["role-web"]),
        vec![tcp(5432)],
    );
    r.unscoped_consumers = true;
    w.rule_set("crm-prod", &["app-crm", "env-prod"])
        .rules
        .push(r);
    let e = w.engine();
    assert_eq!(
        verdict(&e, "db1", "10.1.1.5", 5432),
        Verdict::Allowed,
        "dev web may reach prod db"
    );
    assert_eq!(
        verdict(&e, "db-dev", "10.0.1.5", 5432),
        Verdict::Blocked,
        "providers stay inside the scope"
    );
}

#[test]
fn precedence_is_override_deny_then_allow_then_deny_then_the_mode_default() {
    for mode in [EnforcementMode::Full, EnforcementMode::Selective] {
        let mut w = three_tier(mode);
        let rs = w.rule_set("crm", &["app-crm"]);
        rs.rules.push(allow(
            "a",
            labels(&["role-db"]),
            labels(&["role-web"]),
            vec![tcp(5432), tcp(22)],
        ));
        rs.deny_rules.push(deny(
            "d",
            labels(&["role-db"]),
            labels(&["role-web"]),
            vec![tcp(5432), tcp(8080)],
            false,
        ));
        rs.deny_rules.push(deny(
            "o",
            labels(&["role-db"]),
            labels(&["role-web"]),
            vec![tcp(22)],
            true,
        ));
        let e = w.engine();
        assert_eq!(
            verdict(&e, "db1", "10.0.1.5", 5432),
            Verdict::Allowed,
            "{mode:?}: allow beats deny"
        );
        assert_eq!(
            verdict(&e, "db1", "10.0.1.5", 22),
            Verdict::Blocked,
            "{mode:?}: override deny beats allow"
        );
        assert_eq!(
            verdict(&e, "db1", "10.0.1.5", 8080),
            Verdict::Blocked,
            "{mode:?}: deny without allow"
        );
        let default = if mode == EnforcementMode::Full {
            Verdict::Blocked
        } else {
            Verdict::Allowed
        };
        assert_eq!(
            verdict(&e, "db1", "10.0.1.5", 9999),
            default,
            "{mode:?}: the mode's default"
        );
        let c = e.compiled("db1").unwrap();
        let order: Vec<Action> = c.inbound.iter().map(|r| r.action).collect();
        assert_eq!(
            order,
            vec![Action::OverrideDeny, Action::Allow, Action::Deny]
        );
    }
}

#[test]
fn idle_and_visibility_only_never_block() {
    for mode in [EnforcementMode::Idle, EnforcementMode::VisibilityOnly] {
        let mut w = three_tier(mode);
        w.rule_set("crm", &[]).deny_rules.push(deny(
            "d",
            labels(&["role-db"]),
            vec![Actor::AllWorkloads],
            vec![ServiceRef::All],
            true,
        ));
        let e = w.engine();
        assert_eq!(
            verdict(&e, "db1", "10.0.1.5", 5432),
            Verdict::Allowed,
            "{mode:?}"
        );
    }
    let w = three_tier(EnforcementMode::Idle);
    let text = nftables(&w.engine().compiled("db1").unwrap());
    assert!(!text.contains("chain"), "idle programs nothing:\n{text}");
}

#[test]
fn nested_label_groups_expand_to_every_member() {
    let mut w = three_tier(EnforcementMode::Full);
    w.policy.label_groups.insert(
        "frontends".into(),
        LabelGroup {
            id: "frontends".into(),
            name: "fe".into(),
            key: "role".into(),
            labels: vec!["role-web".into()],
            sub_groups: vec!["middle".into()],
        },
    );
    w.policy.label_groups.insert(
        "middle".into(),
        LabelGroup {
            id: "middle".into(),
            name: "mid".into(),
            key: "role".into(),
            labels: vec!["role-app".into()],
            sub_groups: vec![],
        },
    );
    w.rule_set("crm", &["env-prod"]).rules.push(allow(
        "1",
        labels(&["role-db"]),
        vec![Actor::LabelGroup("frontends".into())],
        vec![tcp(5432)],
    ));
    let e = w.engine();
    assert_eq!(
        verdict(&e, "db1", "10.0.1.5", 5432),
        Verdict::Allowed,
        "direct member"
    );
    assert_eq!(
        verdict(&e, "db1", "10.0.2.7", 5432),
        Verdict::Allowed,
        "member of a nested group"
    );
}

#[test]
fn labels_of_one_key_are_alternatives_and_keys_combine() {
    let mut w = three_tier(EnforcementMode::Full);
    w.rule_set("all", &[]).rules.push(allow(
        "1",
        labels(&["role-db"]),
        labels(&["role-web", "role-app", "env-prod"]),
        vec![tcp(5432)],
    ));
    let e = w.engine();
    assert_eq!(
        verdict(&e, "db1", "10.0.1.5", 5432),
        Verdict::Allowed,
        "web AND prod"
    );
    assert_eq!(
        verdict(&e, "db1", "10.0.2.7", 5432),
        Verdict::Allowed,
        "app AND prod"
    );
    assert_eq!(
        verdict(&e, "db1", "10.1.1.5", 5432),
        Verdict::Blocked,
        "web but dev"
    );
}

#[test]
fn ip_lists_with_exclusions_and_ipv6() {
    let mut w = three_tier(EnforcementMode::Full);
    w.workload(
        "db6",
        &["role-db", "env-prod", "app-crm"],
        &["2001:db8::9", "10.0.3.10"],
        EnforcementMode::Full,
    );
    w.ip_list(
        "corp",
        &["192.168.0.0/16", "2001:db8:100::/48"],
        &["192.168.7.0/24", "2001:db8:100::bad"],
    );
    w.rule_set("crm", &["app-crm"]).rules.push(allow(
        "1",
        labels(&["role-db"]),
        vec![Actor::IpList("corp".into())],
        vec![tcp(5432)],
    ));
    let e = w.engine();
    assert_eq!(verdict(&e, "db6", "192.168.1.1", 5432), Verdict::Allowed);
    assert_eq!(
        verdict(&e, "db6", "192.168.7.1", 5432),
        Verdict::Blocked,
        "excluded"
    );
    assert_eq!(
        verdict(&e, "db6", "2001:db8:100::1", 5432),
        Verdict::Allowed,
        "IPv6"
    );
    assert_eq!(
        verdict(&e, "db6", "2001:db8:100::bad", 5432),
        Verdict::Blocked,
        "excluded IPv6 address"
    );
    let text = nftables(&e.compiled("db6").unwrap());
    assert!(
        text.contains("type ipv6_addr")
            && text.contains("ip6 saddr @in0_v6 tcp dport { 5432 } log prefix \"sc:a:in:r:")
            && text.contains("group 7 accept comment"),
        "{text}"
    );
}

#[test]
fn offline_workloads_drop_out_of_their_peers_rules() {
    let mut w = three_tier(EnforcementMode::Full);
    web_may_reach_db(&mut w, "1");
    let mut e = w.engine();
    assert_eq!(verdict(&e, "db1", "10.0.1.5", 5432), Verdict::Allowed);
    let changed = e.update(&[Change::Workload("web1".into())], |estate, _| {
        estate.workloads.get_mut("web1").unwrap().online = false;
    });
    assert_eq!(verdict(&e, "db1", "10.0.1.5", 5432), Verdict::Blocked);
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        vec!["db1".to_string()],
        "only db1's rules changed"
    );
}

#[test]
fn full_mode_restricts_outbound_too_selective_does_not() {
    let mut w = three_tier(EnforcementMode::Full);
    web_may_reach_db(&mut w, "1");
    let e = w.engine();
    let web = e.compiled("web1").unwrap();
    assert_eq!(
        web.decide_outbound(ip("10.0.3.9"), Proto::Tcp, 5432).0,
        Verdict::Allowed
    );
    assert_eq!(
        web.decide_outbound(ip("10.0.3.9"), Proto::Tcp, 22).0,
        Verdict::Blocked
    );
    assert_eq!(
        web.decide_outbound(ip("8.8.8.8"), Proto::Udp, 53).0,
        Verdict::Blocked
    );
    let mut s = three_tier(EnforcementMode::Selective);
    s.rule_set("crm", &["env-prod"]).rules.push(allow(
        "1",
        labels(&["role-db"]),
        labels(&["role-web"]),
        vec![tcp(5432)],
    ));
    let web = s.engine().compiled("web1").unwrap();
    assert!(web.outbound.is_empty());
    assert_eq!(
        web.decide_outbound(ip("8.8.8.8"), Proto::Udp, 53).0,
        Verdict::Allowed
    );
}

#[test]
fn enforcement_boundaries_deny_org_wide() {
    let mut w = three_tier(EnforcementMode::Selective);
    w.policy.boundaries.insert(
        "no-dev-to-prod".into(),
        EnforcementBoundary {
            id: "no-dev-to-prod".into(),
            name: "b".into(),
            providers: labels(&["env-prod"]),
            consumers: labels(&["env-dev"]),
            services: vec![ServiceRef::All],
            override_deny: false,
        },
    );
    let e = w.engine();
    assert_eq!(verdict(&e, "db1", "10.1.1.5", 5432), Verdict::Blocked);
    assert_eq!(
        verdict(&e, "db1", "10.0.1.5", 5432),
        Verdict::Allowed,
        "selective: the rest is allowed"
    );
    let why = explain_inbound(
        &e.compiled("db1").unwrap(),
        ip("10.1.1.5"),
        Proto::Tcp,
        5432,
    );
    assert!(why.contains("enforcement boundary no-dev-to-prod"), "{why}");
}

#[test]
fn compute_is_deterministic_to_the_byte() {
    let mut w = three_tier(EnforcementMode::Full);
    let rs = w.rule_set("crm", &["app-crm"]);
    rs.rules.push(allow(
        "b",
        labels(&["role-db"]),
        labels(&["role-web", "role-app"]),
        vec![tcp(5432), tcp(5433)],
    ));
    rs.rules.push(allow(
        "a",
        labels(&["role-app"]),
        labels(&["role-web"]),
        vec![tcp(8080)],
    ));
    let one: Vec<String> = w
        .engine()
        .all_compiled()
        .values()
        .map(|c| nftables(c))
        .collect();
    let two: Vec<String> = w
        .engine()
        .all_compiled()
        .values()
        .map(|c| nftables(c))
        .collect();
    assert_eq!(one, two);
    let db = nftables(&w.engine().compiled("db1").unwrap());
    assert!(
        db.contains("elements = { 10.0.1.5/32, 10.0.2.7/32, 10.1.1.5/32 }")
            || db.contains("10.0.1.5/32"),
        "{db}"
    );
    assert!(
        db.contains("tcp dport { 5432, 5433 } log prefix \"sc:a:in:r:"),
        "{db}"
    );
    assert!(
        db.contains("policy drop")
            && db.contains("ct state established,related accept")
            && db.contains("iif \"lo\" accept")
    );
    assert!(db.starts_with("# Supercluster") && db.contains("delete table inet pce"));
}

#[test]
fn the_explanation_names_the_deciding_rule() {
    let mut w = three_tier(EnforcementMode::Full);
    web_may_reach_db(&mut w, "web-to-db");
    let db = w.engine().compiled("db1").unwrap();
    let yes = explain_inbound(&db, ip("10.0.1.5"), Proto::Tcp, 5432);
    assert!(
        yes.contains("allowed by allow rule web-to-db of ruleset crm"),
        "{yes}"
    );
    let no = explain_inbound(&db, ip("10.0.2.7"), Proto::Tcp, 5432);
    assert!(no.contains("blocked: no rule allows it"), "{no}");
}

#[test]
fn unmanaged_workloads_are_peers_but_get_no_rules() {
    let mut w = three_tier(EnforcementMode::Full);
    w.workload(
        "lb",
        &["role-web", "env-prod"],
        &["10.0.9.9"],
        EnforcementMode::Full,
    )
    .managed = false;
    web_may_reach_db(&mut w, "1");
    let e = w.engine();
    assert!(e.compiled("lb").is_none());
    assert_eq!(verdict(&e, "db1", "10.0.9.9", 5432), Verdict::Allowed);
}

#[test]
fn a_provision_that_touches_one_rule_names_only_the_workloads_it_changes() {
    let mut w = three_tier(EnforcementMode::Full);
    web_may_reach_db(&mut w, "1");
    let mut e = w.engine();
    let changed = e.update(&[Change::RuleSet("crm".into())], |_, p| {
        p.rule_sets.get_mut("crm").unwrap().rules[0].services = vec![tcp(5433)];
    });
    // db1 (provider) and web1 (full-mode consumer, outbound) change; nobody else.
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        vec!["db1".to_string(), "web1".to_string()]
    );
}

#[test]
fn a_flow_is_explained_from_both_ends() {
    let mut w = three_tier(EnforcementMode::Full);
    web_may_reach_db(&mut w, "web-to-db");
    let e = w.engine();
    let ok = sc_policy::render::explain_flow(&e, ip("10.0.1.5"), ip("10.0.3.9"), Proto::Tcp, 5432);
    assert!(
        ok.starts_with("10.0.1.5 -> 10.0.3.9 Tcp/5432: ALLOWED"),
        "{ok}"
    );
    assert!(
        ok.contains("inbound at db1")
            && ok.contains("outbound at web1")
            && ok.contains("web-to-db"),
        "{ok}"
    );
    let no = sc_policy::render::explain_flow(&e, ip("10.0.1.5"), ip("10.0.2.7"), Proto::Tcp, 5432);
    assert!(
        no.contains("BLOCKED") && no.contains("full mode denies outbound by default"),
        "{no}"
    );
}
