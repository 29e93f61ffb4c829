//! Rule definitions as the engine sees them: every allow rule, deny rule and
//! boundary gets a dense index (interned once, never reused), and
//! [`RuleParts`] reads its actors, services and scope from the policy set in
//! one shape, whatever kind of rule it is.

use std::sync::Arc;

use super::compiled::Action;
use super::engine::{Engine, Rx};
use crate::model::{Actor, RuleRef, RuleSet, ServiceRef};

/// One rule's definition, borrowed from the policy set: allow rules, deny
/// rules and boundaries in the same shape, so resolution has one path.
pub(super) struct RuleParts<'a> {
    pub(super) action: Action,
    pub(super) providers: &'a [Actor],
    pub(super) consumers: &'a [Actor],
    pub(super) services: &'a [ServiceRef],
    pub(super) scope: Option<&'a Vec<Actor>>,
    pub(super) unscoped_consumers: bool,
}

/// A rule's definition as it stood before an update, to tell whether it moved.
#[derive(PartialEq)]
pub(super) struct OwnedParts {
    pub(super) action: Action,
    pub(super) providers: Vec<Actor>,
    pub(super) consumers: Vec<Actor>,
    pub(super) services: Vec<ServiceRef>,
    pub(super) scope: Option<Vec<Actor>>,
    pub(super) unscoped_consumers: bool,
}

impl RuleParts<'_> {
    /// A copy to compare with after the policy set has changed under it.
    pub(super) fn to_owned(&self) -> OwnedParts {
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

/// The action of a deny rule or boundary.
fn deny_action(override_deny: bool) -> Action {
    if override_deny {
        Action::OverrideDeny
    } else {
        Action::Deny
    }
}

/// Every rule of a rule set, allow rules first.
pub(super) fn rule_refs_of_rule_set(rs: &RuleSet) -> Vec<RuleRef> {
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

impl Engine {
    pub(super) fn rule_refs_in_policy(&self) -> Vec<RuleRef> {
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
    pub(super) fn intern(&mut self, r: RuleRef) -> Rx {
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
    pub(super) fn rule_parts(&self, r: Rx) -> Option<RuleParts<'_>> {
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
}
