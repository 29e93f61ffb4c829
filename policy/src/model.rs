//! The policy objects, as the ops team edits them.
//!
//! Labels and workloads are *live* objects (a workload's labels and addresses are
//! facts, applied at once, as in Illumio); label groups, services, IP lists,
//! rulesets and enforcement boundaries are *policy* objects, edited in a draft and
//! provisioned into numbered versions (see [`crate::version`]).
//!
//! Every object has a stable id; [`href`] turns it into the API's href.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::key::ObjectKind;

/// An object id, unique within its kind.
pub type Id = String;

/// The href of an object, as Illumio's API spells it.
pub fn href(org: u64, kind: ObjectKind, id: &str) -> String {
    match kind {
        ObjectKind::Label | ObjectKind::Workload => format!("/orgs/{org}/{}/{id}", kind.segment()),
        _ => format!("/orgs/{org}/sec_policy/draft/{}/{id}", kind.segment()),
    }
}

/// A `{key, value}` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// Id.
    pub id: Id,
    /// `role`, `app`, `env`, `loc`, or a custom key.
    pub key: String,
    /// The value, e.g. `web`.
    pub value: String,
}

/// Labels (and other groups) of one key, usable wherever a label is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelGroup {
    /// Id.
    pub id: Id,
    /// Display name.
    pub name: String,
    /// The key every member has.
    pub key: String,
    /// Member labels.
    #[serde(default)]
    pub labels: Vec<Id>,
    /// Member groups (nested), of the same key.
    #[serde(default)]
    pub sub_groups: Vec<Id>,
}

/// How much of its policy a workload's firewall enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EnforcementMode {
    /// Nothing is programmed.
    Idle,
    /// Flows are reported, never blocked.
    VisibilityOnly,
    /// Only deny rules are enforced; everything else is allowed.
    Selective,
    /// Default deny: only allowed flows pass, in and out.
    Full,
}

/// How much a workload's VEN reports (Illumio's `visibility_level`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VisibilityLevel {
    /// Every connection, allowed or not.
    FlowFullDetail,
    /// Every connection, summarised (the default).
    #[default]
    FlowSummary,
    /// Only what was (or would be) blocked.
    FlowDrops,
    /// Nothing.
    FlowOff,
    /// Everything, with byte counts where collected.
    EnhancedDataCollection,
}

/// A host or VM (managed when it runs a VEN).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Id.
    pub id: Id,
    /// Display name.
    pub name: String,
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// Interface addresses (IPv4 and IPv6).
    #[serde(default)]
    pub interfaces: Vec<IpAddr>,
    /// Label ids, at most one per key.
    #[serde(default)]
    pub labels: Vec<Id>,
    /// Runs a VEN (gets compiled rules); unmanaged workloads are only peers.
    #[serde(default)]
    pub managed: bool,
    /// Enforcement mode.
    pub mode: EnforcementMode,
    /// Offline workloads drop out of their peers' rules.
    #[serde(default = "yes")]
    pub online: bool,
    /// What its VEN reports of the traffic its firewall decides.
    #[serde(default)]
    pub visibility: VisibilityLevel,
}

fn yes() -> bool {
    true
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP
    Tcp,
    /// UDP
    Udp,
    /// ICMP and ICMPv6 (no ports)
    Icmp,
}

/// A protocol with a port or port range (`port: None` means every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// Protocol.
    pub proto: Proto,
    /// First port; `None` for all ports (and for ICMP).
    #[serde(default)]
    pub port: Option<u16>,
    /// Last port of a range, inclusive.
    #[serde(default)]
    pub to_port: Option<u16>,
}

impl PortRange {
    /// The inclusive port interval (`None` = every port).
    pub fn interval(&self) -> Option<(u16, u16)> {
        self.port.map(|p| (p, self.to_port.unwrap_or(p)))
    }

    /// Whether a flow with `proto` and `port` falls in this range.
    pub fn matches(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto
            && match self.interval() {
                None => true,
                Some((a, b)) => (a..=b).contains(&port),
            }
    }
}

/// A named list of ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Id.
    pub id: Id,
    /// Display name.
    pub name: String,
    /// Its ports.
    pub ports: Vec<PortRange>,
}

/// Addresses outside the managed estate: CIDRs and ranges, minus exclusions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpList {
    /// Id.
    pub id: Id,
    /// Display name.
    pub name: String,
    /// Included addresses: `a.b.c.d`, `a.b.c.d/n`, `a-b` (IPv4 or IPv6).
    pub ranges: Vec<String>,
    /// Excluded addresses, same forms.
    #[serde(default)]
    pub exclusions: Vec<String>,
}

/// One side of a rule: who it is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// Workloads with this label.
    Label(Id),
    /// Workloads with any label of this group (nested groups included).
    LabelGroup(Id),
    /// One workload.
    Workload(Id),
    /// The addresses of an IP list.
    IpList(Id),
    /// Every workload.
    AllWorkloads,
}

/// What a rule allows or denies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceRef {
    /// The ports of a service object.
    Service(Id),
    /// An inline port.
    Port(PortRange),
    /// Every protocol and port.
    All,
}

/// An allow rule of a ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Id.
    pub id: Id,
    /// Disabled rules are kept but not enforced.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Who receives the connections.
    pub providers: Vec<Actor>,
    /// Who opens them.
    pub consumers: Vec<Actor>,
    /// On which ports.
    pub services: Vec<ServiceRef>,
    /// Extra-scope: consumers anywhere, not only inside the ruleset's scope.
    #[serde(default)]
    pub unscoped_consumers: bool,
    /// The author confirms that a rule opening everything to everyone is meant.
    #[serde(default)]
    pub deliberately_broad: bool,
}

/// A deny rule of a ruleset (or, with `override_deny`, one that beats allow rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    /// Id.
    pub id: Id,
    /// Disabled rules are kept but not enforced.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whose inbound traffic is denied.
    pub providers: Vec<Actor>,
    /// From whom.
    pub consumers: Vec<Actor>,
    /// On which ports.
    pub services: Vec<ServiceRef>,
    /// Consumers anywhere, not only inside the scope.
    #[serde(default)]
    pub unscoped_consumers: bool,
    /// Beats allow rules (override deny).
    #[serde(default)]
    pub override_deny: bool,
}

/// A scope and its rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// Id.
    pub id: Id,
    /// Display name.
    pub name: String,
    /// Disabled rulesets are kept but not enforced.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Scope: app/env/loc labels (or groups), all of which a workload must carry
    /// (one per key); empty means every workload.
    #[serde(default)]
    pub scope: Vec<Actor>,
    /// Allow rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Deny and override-deny rules.
    #[serde(default)]
    pub deny_rules: Vec<DenyRule>,
}

/// An org-wide deny rule (Illumio's enforcement boundary).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementBoundary {
    /// Id.
    pub id: Id,
    /// Display name.
    pub name: String,
    /// Whose inbound traffic is denied.
    pub providers: Vec<Actor>,
    /// From whom.
    pub consumers: Vec<Actor>,
    /// On which ports.
    pub services: Vec<ServiceRef>,
    /// Beats allow rules.
    #[serde(default)]
    pub override_deny: bool,
}

/// The live objects: facts about the estate, not provisioned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Estate {
    /// Labels by id.
    pub labels: BTreeMap<Id, Label>,
    /// Workloads by id.
    pub workloads: BTreeMap<Id, Workload>,
}

/// The provisionable objects: one draft, or one active version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PolicySet {
    /// Label groups by id.
    pub label_groups: BTreeMap<Id, LabelGroup>,
    /// Services by id.
    pub services: BTreeMap<Id, Service>,
    /// IP lists by id.
    pub ip_lists: BTreeMap<Id, IpList>,
    /// Rulesets by id.
    pub rule_sets: BTreeMap<Id, RuleSet>,
    /// Enforcement boundaries by id.
    pub boundaries: BTreeMap<Id, EnforcementBoundary>,
}

/// Names one rule wherever it lives, for explanations and compiled output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleRef {
    /// An allow rule of a ruleset.
    Allow {
        /// Ruleset id.
        rule_set: Id,
        /// Rule id.
        rule: Id,
    },
    /// A deny rule of a ruleset.
    Deny {
        /// Ruleset id.
        rule_set: Id,
        /// Rule id.
        rule: Id,
    },
    /// An enforcement boundary.
    Boundary {
        /// Boundary id.
        boundary: Id,
    },
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleRef::Allow { rule_set, rule } => {
                write!(f, "allow rule {rule} of ruleset {rule_set}")
            }
            RuleRef::Deny { rule_set, rule } => write!(f, "deny rule {rule} of ruleset {rule_set}"),
            RuleRef::Boundary { boundary } => write!(f, "enforcement boundary {boundary}"),
        }
    }
}
