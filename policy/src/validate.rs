//! Validation: every rule of the model, with errors that name the object and field.
//!
//! A draft that fails validation cannot be provisioned; the API layer turns each
//! error into one `{token, message}` entry.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use crate::addr::IpRange;
use crate::model::{Actor, Estate, PolicySet, PortRange, Proto, RuleSet, ServiceRef};

/// One problem with one field of one object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub struct ValidationError {
    /// `kind/id` of the object.
    pub object: String,
    /// The field, e.g. `rules[2].consumers[0]`.
    pub field: String,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

impl ValidationError {
    /// A stable machine-readable name of the problem, for API error tokens.
    /// Derived from the message's fixed opening words, which this module owns.
    pub fn token(&self) -> &'static str {
        let m = self.message.as_str();
        if m.starts_with("refers to") {
            "invalid_reference"
        } else if m.starts_with("label groups form a cycle") {
            "label_group_cycle"
        } else if m.starts_with("a workload has one label per key")
            || m.starts_with("a scope holds one label per key")
        {
            "label_key_conflict"
        } else if m.starts_with("label ") && m.contains("but the group's key")
            || m.starts_with("group ") && m.contains("but this group's key")
        {
            "label_group_key_mismatch"
        } else if m.starts_with("this rule opens every") {
            "rule_too_broad"
        } else {
            "invalid_value"
        }
    }
}

struct Errors(Vec<ValidationError>);

impl Errors {
    fn push(&mut self, object: String, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            object,
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks the estate and a policy set together; returns every problem, sorted.
pub fn validate(estate: &Estate, policy: &PolicySet) -> Result<(), Vec<ValidationError>> {
    let mut e = Errors(Vec::new());
    check_labels(estate, &mut e);
    check_workloads(estate, &mut e);
    check_groups(estate, policy, &mut e);
    check_services(policy, &mut e);
    check_ip_lists(policy, &mut e);
    for rs in policy.rule_sets.values() {
        check_rule_set(rs, estate, policy, &mut e);
    }
    for b in policy.boundaries.values() {
        let obj = format!("enforcement_boundaries/{}", b.id);
        check_sides(
            &b.providers,
            &b.consumers,
            &b.services,
            estate,
            policy,
            &obj,
            "",
            &mut e,
        );
    }
    let mut errors = e.0;
    errors.sort();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_services(policy: &PolicySet, e: &mut Errors) {
    for s in policy.services.values() {
        let obj = format!("services/{}", s.id);
        if s.ports.is_empty() {
            e.push(
                obj.clone(),
                "ports",
                "a service needs at least one port or protocol",
            );
        }
        for (i, p) in s.ports.iter().enumerate() {
            check_port(p, &obj, &format!("ports[{i}]"), e);
        }
    }
}

fn check_ip_lists(policy: &PolicySet, e: &mut Errors) {
    for l in policy.ip_lists.values() {
        let obj = format!("ip_lists/{}", l.id);
        if l.ranges.is_empty() {
            e.push(
                obj.clone(),
                "ranges",
                "an IP list needs at least one address, CIDR or range",
            );
        }
        for (field, list) in [("ranges", &l.ranges), ("exclusions", &l.exclusions)] {
            for (i, r) in list.iter().enumerate() {
                if let Err(err) = IpRange::parse(r) {
                    e.push(obj.clone(), format!("{field}[{i}]"), err.to_string());
                }
            }
        }
    }
}

/// A ruleset's scope (labels and label groups, one per key), its rules and
/// deny rules (every side resolvable; nothing opens everything by accident),
/// and rule ids unique within it.
fn check_rule_set(rs: &RuleSet, estate: &Estate, policy: &PolicySet, e: &mut Errors) {
    let obj = format!("rule_sets/{}", rs.id);
    let mut scope_keys = BTreeSet::new();
    for (i, a) in rs.scope.iter().enumerate() {
        let field = format!("scope[{i}]");
        match a {
            Actor::Label(_) | Actor::LabelGroup(_) => {
                check_actor(a, estate, policy, &obj, &field, e);
                if let Some(key) = actor_key(a, estate, policy) {
                    if !scope_keys.insert(key.clone()) {
                        e.push(
                            obj.clone(),
                            field,
                            format!("a scope holds one label per key; {key:?} appears twice"),
                        );
                    }
                }
            }
            _ => e.push(
                obj.clone(),
                field,
                "a scope holds only labels and label groups",
            ),
        }
    }
    for (i, r) in rs.rules.iter().enumerate() {
        let field = format!("rules[{i}]");
        check_sides(
            &r.providers,
            &r.consumers,
            &r.services,
            estate,
            policy,
            &obj,
            &field,
            e,
        );
        if crate::guard::opens_everything(&rs.scope, r) && !r.deliberately_broad {
            e.push(obj.clone(), field, crate::guard::BROAD_MESSAGE);
        }
    }
    for (i, r) in rs.deny_rules.iter().enumerate() {
        check_sides(
            &r.providers,
            &r.consumers,
            &r.services,
            estate,
            policy,
            &obj,
            &format!("deny_rules[{i}]"),
            e,
        );
    }
    let mut ids = HashSet::new();
    for id in rs
        .rules
        .iter()
        .map(|r| &r.id)
        .chain(rs.deny_rules.iter().map(|r| &r.id))
    {
        if !ids.insert(id) {
            e.push(
                obj.clone(),
                "rules",
                format!("rule id {id:?} is used twice in this ruleset"),
            );
        }
    }
}

fn check_labels(estate: &Estate, e: &mut Errors) {
    let mut seen = BTreeMap::new();
    for l in estate.labels.values() {
        let obj = format!("labels/{}", l.id);
        if l.key.trim().is_empty() {
            e.push(
                obj.clone(),
                "key",
                "must not be empty (role, app, env, loc or a custom key)",
            );
        }
        if l.value.trim().is_empty() {
            e.push(obj.clone(), "value", "must not be empty");
        }
        if let Some(other) = seen.insert((l.key.clone(), l.value.clone()), l.id.clone()) {
            e.push(
                obj,
                "value",
                format!("label {}={} already exists as {other}", l.key, l.value),
            );
        }
    }
}

fn check_workloads(estate: &Estate, e: &mut Errors) {
    for w in estate.workloads.values() {
        let obj = format!("workloads/{}", w.id);
        let mut keys: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, l) in w.labels.iter().enumerate() {
            match estate.labels.get(l) {
                None => e.push(
                    obj.clone(),
                    format!("labels[{i}]"),
                    format!("refers to label {l:?}, which does not exist"),
                ),
                Some(label) => {
                    if let Some(prev) = keys.insert(&label.key, l) {
                        e.push(
                            obj.clone(),
                            format!("labels[{i}]"),
                            format!("a workload has one label per key; {prev:?} and {l:?} both have key {:?}", label.key),
                        );
                    }
                }
            }
        }
    }
}

fn check_groups(estate: &Estate, policy: &PolicySet, e: &mut Errors) {
    for g in policy.label_groups.values() {
        let obj = format!("label_groups/{}", g.id);
        for (i, l) in g.labels.iter().enumerate() {
            match estate.labels.get(l) {
                None => e.push(
                    obj.clone(),
                    format!("labels[{i}]"),
                    format!("refers to label {l:?}, which does not exist"),
                ),
                Some(label) if label.key != g.key => e.push(
                    obj.clone(),
                    format!("labels[{i}]"),
                    format!(
                        "label {l:?} has key {:?} but the group's key is {:?}",
                        label.key, g.key
                    ),
                ),
                _ => {}
            }
        }
        for (i, s) in g.sub_groups.iter().enumerate() {
            match policy.label_groups.get(s) {
                None => e.push(
                    obj.clone(),
                    format!("sub_groups[{i}]"),
                    format!("refers to label group {s:?}, which does not exist"),
                ),
                Some(sub) if sub.key != g.key => e.push(
                    obj.clone(),
                    format!("sub_groups[{i}]"),
                    format!(
                        "group {s:?} has key {:?} but this group's key is {:?}",
                        sub.key, g.key
                    ),
                ),
                _ => {}
            }
        }
        if in_cycle(&g.id, policy) {
            e.push(
                obj,
                "sub_groups",
                "label groups form a cycle through this group",
            );
        }
    }
}

fn in_cycle(start: &str, policy: &PolicySet) -> bool {
    let mut stack: Vec<&str> = vec![start];
    let mut seen = HashSet::new();
    while let Some(id) = stack.pop() {
        if let Some(g) = policy.label_groups.get(id) {
            for s in &g.sub_groups {
                if s == start {
                    return true;
                }
                if seen.insert(s.as_str()) {
                    stack.push(s);
                }
            }
        }
    }
    false
}

fn check_port(p: &PortRange, obj: &str, field: &str, e: &mut Errors) {
    match (p.proto, p.port, p.to_port) {
        (Proto::Icmp, None, None) => {}
        (Proto::Icmp, _, _) => e.push(obj.to_string(), field.to_string(), "ICMP has no ports"),
        (_, None, Some(_)) => e.push(obj.to_string(), field.to_string(), "to_port needs port"),
        (_, Some(a), Some(b)) if b < a => e.push(
            obj.to_string(),
            field.to_string(),
            format!("port range {a}-{b} ends before it starts"),
        ),
        (_, Some(0), _) => e.push(
            obj.to_string(),
            field.to_string(),
            "port 0 is not a port; omit port for all ports",
        ),
        _ => {}
    }
}

fn actor_key(a: &Actor, estate: &Estate, policy: &PolicySet) -> Option<String> {
    match a {
        Actor::Label(id) => estate.labels.get(id).map(|l| l.key.clone()),
        Actor::LabelGroup(id) => policy.label_groups.get(id).map(|g| g.key.clone()),
        _ => None,
    }
}

fn check_actor(
    a: &Actor,
    estate: &Estate,
    policy: &PolicySet,
    obj: &str,
    field: &str,
    e: &mut Errors,
) {
    let missing = match a {
        Actor::Label(id) => (!estate.labels.contains_key(id))
            .then(|| format!("refers to label {id:?}, which does not exist")),
        Actor::LabelGroup(id) => (!policy.label_groups.contains_key(id))
            .then(|| format!("refers to label group {id:?}, which does not exist")),
        Actor::Workload(id) => (!estate.workloads.contains_key(id))
            .then(|| format!("refers to workload {id:?}, which does not exist")),
        Actor::IpList(id) => (!policy.ip_lists.contains_key(id))
            .then(|| format!("refers to IP list {id:?}, which does not exist")),
        Actor::AllWorkloads => None,
    };
    if let Some(m) = missing {
        e.push(obj.to_string(), field.to_string(), m);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_sides(
    providers: &[Actor],
    consumers: &[Actor],
    services: &[ServiceRef],
    estate: &Estate,
    policy: &PolicySet,
    obj: &str,
    prefix: &str,
    e: &mut Errors,
) {
    let dot = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}.")
    };
    for (side, list) in [("providers", providers), ("consumers", consumers)] {
        if list.is_empty() {
            e.push(
                obj.to_string(),
                format!("{dot}{side}"),
                "a rule needs at least one actor on each side",
            );
        }
        for (i, a) in list.iter().enumerate() {
            check_actor(a, estate, policy, obj, &format!("{dot}{side}[{i}]"), e);
        }
    }
    if services.is_empty() {
        e.push(
            obj.to_string(),
            format!("{dot}services"),
            "a rule needs at least one service (or `all`)",
        );
    }
    for (i, s) in services.iter().enumerate() {
        let field = format!("{dot}services[{i}]");
        match s {
            ServiceRef::Service(id) if !policy.services.contains_key(id) => e.push(
                obj.to_string(),
                field,
                format!("refers to service {id:?}, which does not exist"),
            ),
            ServiceRef::Port(p) => check_port(p, obj, &field, e),
            _ => {}
        }
    }
}
