//! Guard rails: a rule that opens everything, and what a scoped user may touch.
//!
//! These are plain functions so the API layer (which knows who is asking) can
//! call them; this crate knows nothing of users.

use crate::model::{Actor, Rule, RuleSet, ServiceRef};

/// The message given for a refused broad rule.
pub const BROAD_MESSAGE: &str =
    "this rule opens every workload to every consumer on every service; set deliberately_broad (global admins only) if that is really meant";

/// Whether `rule`, in a ruleset with `scope`, lets every workload reach every
/// workload on every service. All workloads to all workloads inside a
/// scope is an app group's ring-fence (everything in the app may talk to
/// itself), which the policy generator proposes: only an empty scope, or
/// consumers from anywhere, make it open everything.
pub fn opens_everything(scope: &[Actor], rule: &Rule) -> bool {
    rule.providers.contains(&Actor::AllWorkloads)
        && rule.consumers.contains(&Actor::AllWorkloads)
        && rule.services.contains(&ServiceRef::All)
        && (scope.is_empty() || rule.unscoped_consumers)
}

/// Whether a ruleset lies inside a scoped role's scope: the ruleset's scope must
/// carry every label of the role's scope, so it can only narrow it. An empty
/// ruleset scope (everything) is inside no scope; an empty role scope (global)
/// contains everything.
pub fn rule_set_within_scope(rule_set: &RuleSet, role_scope: &[Actor]) -> bool {
    role_scope.iter().all(|a| rule_set.scope.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(scope: Vec<Actor>) -> RuleSet {
        RuleSet {
            id: "r".into(),
            name: "r".into(),
            enabled: true,
            scope,
            rules: vec![],
            deny_rules: vec![],
        }
    }

    #[test]
    fn a_scoped_user_stays_inside_its_scope() {
        let app = Actor::Label("app-crm".into());
        let env = Actor::Label("env-prod".into());
        assert!(rule_set_within_scope(
            &rs(vec![app.clone(), env.clone()]),
            std::slice::from_ref(&app)
        ));
        assert!(!rule_set_within_scope(
            &rs(vec![env.clone()]),
            std::slice::from_ref(&app)
        ));
        assert!(!rule_set_within_scope(&rs(vec![]), &[app]));
        assert!(rule_set_within_scope(&rs(vec![]), &[]));
    }

    #[test]
    fn only_all_to_all_on_all_is_broad() {
        let mut r = Rule {
            id: "1".into(),
            enabled: true,
            providers: vec![Actor::AllWorkloads],
            consumers: vec![Actor::AllWorkloads],
            services: vec![ServiceRef::All],
            unscoped_consumers: false,
            deliberately_broad: false,
        };
        assert!(opens_everything(&[], &r));
        // A ring-fence: all of one app to all of it.
        let app = [Actor::Label("app-crm".into())];
        assert!(!opens_everything(&app, &r));
        r.unscoped_consumers = true;
        assert!(opens_everything(&app, &r));
        r.services = vec![ServiceRef::Service("https".into())];
        assert!(!opens_everything(&[], &r));
    }
}
