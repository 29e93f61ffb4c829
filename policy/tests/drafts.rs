//! Validation, the draft, provisioning, impact, diff, rollback and guard rails.

mod support;

use sc_policy::key::ObjectKind;
use sc_policy::model::*;
use sc_policy::validate::validate;
use sc_policy::version::{ChangeKind, PendingChange, Store, VersionError};
use support::*;

fn errors(w: &World) -> Vec<String> {
    match validate(&w.estate, &w.policy) {
        Ok(()) => vec![],
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn has(errors: &[String], needle: &str) -> bool {
    errors.iter().any(|e| e.contains(needle))
}

#[test]
fn validation_names_the_object_and_field() {
    let mut w = World::new();
    w.workload(
        "w1",
        &["role-web", "role-db"],
        &["10.0.0.1"],
        EnforcementMode::Full,
    );
    w.workload("w2", &["role-ghost"], &["10.0.0.2"], EnforcementMode::Full);
    w.policy.label_groups.insert(
        "mixed".into(),
        LabelGroup {
            id: "mixed".into(),
            name: "m".into(),
            key: "role".into(),
            labels: vec!["env-prod".into()],
            sub_groups: vec![],
        },
    );
    w.policy.label_groups.insert(
        "a".into(),
        LabelGroup {
            id: "a".into(),
            name: "a".into(),
            key: "role".into(),
            labels: vec![],
            sub_groups: vec!["b".into()],
        },
    );
    w.policy.label_groups.insert(
        "b".into(),
        LabelGroup {
            id: "b".into(),
            name: "b".into(),
            key: "role".into(),
            labels: vec![],
            sub_groups: vec!["a".into()],
        },
    );
    w.ip_list("bad", &["10.0.0.1/8", "300.1.1.1"], &[]);
    w.policy.services.insert(
        "s".into(),
        Service {
            id: "s".into(),
            name: "s".into(),
            ports: vec![PortRange {
                proto: Proto::Tcp,
                port: Some(90),
                to_port: Some(80),
            }],
        },
    );
    let rs = w.rule_set("rs", &["role-web"]);
    rs.rules
        .push(allow("1", vec![], labels(&["role-web"]), vec![tcp(80)]));
    rs.rules.push(allow(
        "2",
        vec![Actor::Workload("nope".into())],
        labels(&["role-web"]),
        vec![ServiceRef::Service("missing".into())],
    ));
    let e = errors(&w);
    assert!(
        has(
            &e,
            "workloads/w1: labels[1]: a workload has one label per key"
        ),
        "{e:#?}"
    );
    assert!(
        has(
            &e,
            "workloads/w2: labels[0]: refers to label \"role-ghost\""
        ),
        "{e:#?}"
    );
    assert!(has(&e, "label_groups/mixed: labels[0]: label \"env-prod\" has key \"env\" but the group's key is \"role\""), "{e:#?}");
    assert!(
        has(&e, "label_groups/a: sub_groups: label groups form a cycle"),
        "{e:#?}"
    );
    assert!(
        has(&e, "ip_lists/bad: ranges[0]") && has(&e, "host bits are set"),
        "{e:#?}"
    );
    assert!(has(&e, "ip_lists/bad: ranges[1]"), "{e:#?}");
    assert!(
        has(
            &e,
            "services/s: ports[0]: port range 90-80 ends before it starts"
        ),
        "{e:#?}"
    );
    assert!(
        has(
            &e,
            "rule_sets/rs: rules[0].providers: a rule needs at least one actor"
        ),
        "{e:#?}"
    );
    assert!(
        has(
            &e,
            "rule_sets/rs: rules[1].providers[0]: refers to workload \"nope\""
        ),
        "{e:#?}"
    );
    assert!(
        has(
            &e,
            "rule_sets/rs: rules[1].services[0]: refers to service \"missing\""
        ),
        "{e:#?}"
    );
}

#[test]
fn a_rule_opening_everything_needs_to_say_so() {
    let mut w = World::new();
    let broad = allow(
        "1",
        vec![Actor::AllWorkloads],
        vec![Actor::AllWorkloads],
        vec![ServiceRef::All],
    );
    w.rule_set("rs", &[]).rules.push(broad.clone());
    let e = errors(&w);
    assert!(has(&e, "opens every workload to every consumer"), "{e:#?}");
    let mut meant = broad;
    meant.deliberately_broad = true;
    w.rule_set("rs", &[]).rules.push(meant);
    w.policy.rule_sets.get_mut("rs").unwrap().rules.remove(0);
    assert!(errors(&w).is_empty());
}

fn store() -> Store {
    let mut w = World::new();
    w.workload(
        "web1",
        &["role-web", "env-prod"],
        &["10.0.1.5"],
        EnforcementMode::Full,
    );
    w.workload(
        "db1",
        &["role-db", "env-prod"],
        &["10.0.3.9"],
        EnforcementMode::Full,
    );
    w.workload(
        "db2",
        &["role-db", "env-dev"],
        &["10.1.3.9"],
        EnforcementMode::Full,
    );
    Store {
        estate: w.estate,
        draft: w.policy,
        versions: vec![],
    }
}

fn web_to_db(scope: &[&str]) -> RuleSet {
    RuleSet {
        id: "crm".into(),
        name: "crm".into(),
        enabled: true,
        scope: labels(scope),
        rules: vec![allow(
            "1",
            labels(&["role-db"]),
            labels(&["role-web"]),
            vec![tcp(5432)],
        )],
        deny_rules: vec![],
    }
}

#[test]
fn provisioning_makes_numbered_versions_with_their_impact() {
    let mut s = store();
    assert_eq!(
        s.provision("ann", "empty", 1),
        Err(VersionError::NothingPending)
    );
    s.draft
        .rule_sets
        .insert("crm".into(), web_to_db(&["env-prod"]));
    assert_eq!(
        s.pending(),
        vec![PendingChange {
            kind: ObjectKind::RuleSet,
            id: "crm".into(),
            change: ChangeKind::Created
        }]
    );
    let impact = s.impact();
    assert_eq!(
        impact.iter().cloned().collect::<Vec<_>>(),
        vec!["db1".to_string(), "web1".to_string()]
    );
    let v = s
        .provision("ann", "web may reach db", 1000)
        .unwrap()
        .clone();
    assert_eq!(
        (v.number, v.author.as_str(), v.note.as_str(), v.time_ms),
        (1, "ann", "web may reach db", 1000)
    );
    assert_eq!(
        v.affected_workloads, impact,
        "impact predicted exactly what provisioning changed"
    );
    assert!(s.pending().is_empty());
    assert_eq!(s.active_version(), 1);

    // Pending changes can be reverted, all or chosen.
    s.draft.rule_sets.get_mut("crm").unwrap().rules[0].services = vec![tcp(5433)];
    s.draft.services.insert(
        "https".into(),
        Service {
            id: "https".into(),
            name: "https".into(),
            ports: vec![PortRange {
                proto: Proto::Tcp,
                port: Some(443),
                to_port: None,
            }],
        },
    );
    assert_eq!(s.pending().len(), 2);
    assert_eq!(
        s.revert(Some(&[(ObjectKind::Service, "https".into())])),
        Ok(1)
    );
    assert_eq!(s.pending().len(), 1);
    assert!(matches!(
        s.revert(Some(&[(ObjectKind::Service, "https".into())])),
        Err(VersionError::NotPending { .. })
    ));
    assert_eq!(s.revert(None), Ok(1));
    assert!(s.pending().is_empty());

    // Version 2 widens the scope; rollback to 1 is a new version 3 equal to 1.
    s.draft.rule_sets.insert("crm".into(), web_to_db(&[]));
    let v2 = s.provision("bob", "all envs", 2000).unwrap().clone();
    assert_eq!(
        v2.affected_workloads.iter().cloned().collect::<Vec<_>>(),
        vec!["db2".to_string(), "web1".to_string()]
    );
    assert_eq!(
        s.diff_versions(1, 2).unwrap(),
        vec![PendingChange {
            kind: ObjectKind::RuleSet,
            id: "crm".into(),
            change: ChangeKind::Updated
        }]
    );
    let v3 = s.rollback(1, "carol", "undo", 3000).unwrap().clone();
    assert_eq!(v3.number, 3);
    assert_eq!(v3.policy, s.versions[0].policy);
    assert_eq!(s.draft, v3.policy);
    assert!(matches!(
        s.rollback(9, "c", "x", 1),
        Err(VersionError::NoSuchVersion(9))
    ));
    // Versions are kept as they were.
    assert_eq!(s.versions[1], v2);
}

#[test]
fn an_invalid_draft_cannot_be_provisioned_and_nothing_changes() {
    let mut s = store();
    let mut rs = web_to_db(&["env-prod"]);
    rs.rules[0].consumers = vec![Actor::Label("no-such-label".into())];
    s.draft.rule_sets.insert("crm".into(), rs);
    let before = s.clone();
    assert!(matches!(
        s.provision("ann", "bad", 1),
        Err(VersionError::Invalid(_))
    ));
    assert_eq!(s, before);
}

#[test]
fn a_scoped_user_cannot_provision_changes_outside_its_scope() {
    let mut s = store();
    s.draft
        .rule_sets
        .insert("crm".into(), web_to_db(&["env-prod"]));
    assert!(s.check_scope(&labels(&["env-prod"])).is_ok());
    assert!(matches!(
        s.check_scope(&labels(&["env-dev"])),
        Err(VersionError::OutsideScope(_))
    ));
    s.draft.services.insert(
        "https".into(),
        Service {
            id: "https".into(),
            name: "h".into(),
            ports: vec![PortRange {
                proto: Proto::Tcp,
                port: Some(443),
                to_port: None,
            }],
        },
    );
    match s.check_scope(&labels(&["env-prod"])) {
        Err(VersionError::OutsideScope(c)) => assert_eq!(c[0].kind, ObjectKind::Service),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_validation_error_carries_a_stable_token() {
    let mut w = World::new();
    w.workload(
        "w1",
        &["role-web", "role-db", "role-ghost"],
        &["10.0.0.1"],
        EnforcementMode::Full,
    );
    w.policy.label_groups.insert(
        "mixed".into(),
        LabelGroup {
            id: "mixed".into(),
            name: "m".into(),
            key: "role".into(),
            labels: vec!["env-prod".into()],
            sub_groups: vec!["mixed".into()],
        },
    );
    w.ip_list("bad", &["10.0.0.1/8"], &[]);
    w.rule_set("rs", &[]).rules.push(allow(
        "1",
        vec![Actor::AllWorkloads],
        vec![Actor::AllWorkloads],
        vec![ServiceRef::All],
    ));
    let errors = validate(&w.estate, &w.policy).unwrap_err();
    let tokens: std::collections::BTreeSet<&str> = errors.iter().map(|e| e.token()).collect();
    for t in [
        "invalid_reference",
        "label_key_conflict",
        "label_group_key_mismatch",
        "label_group_cycle",
        "invalid_value",
        "rule_too_broad",
    ] {
        assert!(tokens.contains(t), "{t} missing from {errors:#?}");
    }
}
