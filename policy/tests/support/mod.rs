//! Builders shared by the policy tests: a small, readable estate and policy.

#![allow(dead_code)]

use std::net::IpAddr;

use sc_policy::model::*;

/// An estate and policy under construction.
#[derive(Default, Clone)]
pub struct World {
    pub estate: Estate,
    pub policy: PolicySet,
}

impl World {
    pub fn new() -> World {
        let mut w = World::default();
        for (key, values) in [
            ("role", &["web", "app", "db"][..]),
            ("env", &["prod", "dev"][..]),
            ("app", &["crm", "erp"][..]),
            ("loc", &["us", "eu"][..]),
        ] {
            for v in values {
                w.label(key, v);
            }
        }
        w
    }

    pub fn label(&mut self, key: &str, value: &str) -> Id {
        let id = format!("{key}-{value}");
        self.estate.labels.insert(
            id.clone(),
            Label {
                id: id.clone(),
                key: key.into(),
                value: value.into(),
            },
        );
        id
    }

    /// A managed, online workload with the given labels ("role-web", ...) and addresses.
    pub fn workload(
        &mut self,
        id: &str,
        labels: &[&str],
        ips: &[&str],
        mode: EnforcementMode,
    ) -> &mut Workload {
        let w = Workload {
            id: id.into(),
            name: id.into(),
            hostname: format!("{id}.example"),
            interfaces: ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            managed: true,
            mode,
            online: true,
            visibility: Default::default(),
        };
        self.estate.workloads.insert(id.into(), w);
        self.estate.workloads.get_mut(id).unwrap()
    }

    pub fn rule_set(&mut self, id: &str, scope: &[&str]) -> &mut RuleSet {
        let rs = RuleSet {
            id: id.into(),
            name: id.into(),
            enabled: true,
            scope: scope.iter().map(|l| Actor::Label(l.to_string())).collect(),
            rules: vec![],
            deny_rules: vec![],
        };
        self.policy.rule_sets.insert(id.into(), rs);
        self.policy.rule_sets.get_mut(id).unwrap()
    }

    pub fn ip_list(&mut self, id: &str, ranges: &[&str], exclusions: &[&str]) {
        self.policy.ip_lists.insert(
            id.into(),
            IpList {
                id: id.into(),
                name: id.into(),
                ranges: ranges.iter().map(|s| s.to_string()).collect(),
                exclusions: exclusions.iter().map(|s| s.to_string()).collect(),
            },
        );
    }

    pub fn engine(&self) -> sc_policy::Engine {
        sc_policy::Engine::new(self.estate.clone(), self.policy.clone())
    }
}

pub fn labels(ids: &[&str]) -> Vec<Actor> {
    ids.iter().map(|l| Actor::Label(l.to_string())).collect()
}

pub fn tcp(port: u16) -> ServiceRef {
    ServiceRef::Port(PortRange {
        proto: Proto::Tcp,
        port: Some(port),
        to_port: None,
    })
}

pub fn allow(
    id: &str,
    providers: Vec<Actor>,
    consumers: Vec<Actor>,
    services: Vec<ServiceRef>,
) -> Rule {
    Rule {
        id: id.into(),
        enabled: true,
        providers,
        consumers,
        services,
        unscoped_consumers: false,
        deliberately_broad: false,
    }
}

pub fn deny(
    id: &str,
    providers: Vec<Actor>,
    consumers: Vec<Actor>,
    services: Vec<ServiceRef>,
    override_deny: bool,
) -> DenyRule {
    DenyRule {
        id: id.into(),
        enabled: true,
        providers,
        consumers,
        services,
        unscoped_consumers: false,
        override_deny,
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
