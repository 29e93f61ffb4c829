//! The stored form of every policy object, what the policy model makes of it,
//! and what it refers to. Stored objects hold ids, never hrefs: hrefs belong to
//! the API, which makes them on the way out and resolves them on the way in.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use sc_policy::model::VisibilityLevel;
use sc_policy::model::{self as m, Actor, EnforcementMode, PortRange, ServiceRef};

use crate::keys::{Id, Kind};
use crate::record::Object;

/// A label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelDoc {
    /// `role`, `app`, `env`, `loc` or custom.
    pub key: String,
    /// The value.
    pub value: String,
    /// Free text.
    pub description: Option<String>,
    /// Illumio's external-reference pair, kept for tools that sync from a CMDB.
    pub external_data_set: Option<String>,
    /// See above.
    pub external_data_reference: Option<String>,
}

impl Object for LabelDoc {
    const KIND: Kind = Kind::Label;
    fn unique_name(&self) -> Option<String> {
        Some(format!("{}={}", self.key, self.value))
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        vec![]
    }
}

// ---------------------------------------------------------------- label groups

/// A label group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelGroupDoc {
    /// Name.
    pub name: String,
    /// The key of every member.
    pub key: String,
    /// Free text.
    pub description: Option<String>,
    /// Member labels.
    pub labels: Vec<Id>,
    /// Member groups.
    pub sub_groups: Vec<Id>,
}

impl Object for LabelGroupDoc {
    const KIND: Kind = Kind::LabelGroup;
    fn unique_name(&self) -> Option<String> {
        Some(self.name.clone())
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        self.labels
            .iter()
            .map(|l| (Kind::Label, l.clone()))
            .chain(
                self.sub_groups
                    .iter()
                    .map(|g| (Kind::LabelGroup, g.clone())),
            )
            .collect()
    }
}

impl LabelGroupDoc {
    /// The policy model's form.
    pub fn model(&self, id: &str) -> m::LabelGroup {
        m::LabelGroup {
            id: id.to_string(),
            name: self.name.clone(),
            key: self.key.clone(),
            labels: self.labels.clone(),
            sub_groups: self.sub_groups.clone(),
        }
    }
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDoc {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Ports.
    pub ports: Vec<PortRange>,
}

impl Object for ServiceDoc {
    const KIND: Kind = Kind::Service;
    fn unique_name(&self) -> Option<String> {
        Some(self.name.clone())
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        vec![]
    }
}

/// The built-in "All Services" service: a rule naming it opens every port.
pub const ALL_SERVICES_ID: &str = "all-services";
/// The built-in "Any (0.0.0.0/0 and ::/0)" IP list.
pub const ANY_IP_LIST_ID: &str = "any";

// ---------------------------------------------------------------- IP lists

/// One range as Illumio writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct IpRangeJson {
    /// An address or a CIDR.
    pub from_ip: String,
    /// The last address of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ip: Option<String>,
    /// Excluded rather than included.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclusion: bool,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An IP list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpListDoc {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Ranges, as given.
    pub ip_ranges: Vec<IpRangeJson>,
}

impl IpRangeJson {
    /// The range as the policy engine parses it (`a.b.c.d/n` or `from-to`).
    pub fn text(&self) -> String {
        match &self.to_ip {
            Some(to) => format!("{}-{to}", self.from_ip),
            None => self.from_ip.clone(),
        }
    }
}

impl Object for IpListDoc {
    const KIND: Kind = Kind::IpList;
    fn unique_name(&self) -> Option<String> {
        Some(self.name.clone())
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        vec![]
    }
}

impl IpListDoc {
    /// The policy model's form.
    pub fn model(&self, id: &str) -> m::IpList {
        let (ex, inc): (Vec<_>, Vec<_>) = self.ip_ranges.iter().partition(|r| r.exclusion);
        m::IpList {
            id: id.to_string(),
            name: self.name.clone(),
            ranges: inc.iter().map(|r| r.text()).collect(),
            exclusions: ex.iter().map(|r| r.text()).collect(),
        }
    }
}

/// The object an actor names, if it names one.
pub fn actor_ref(a: &Actor) -> Option<(Kind, Id)> {
    match a {
        Actor::AllWorkloads => None,
        Actor::Label(id) => Some((Kind::Label, id.clone())),
        Actor::LabelGroup(id) => Some((Kind::LabelGroup, id.clone())),
        Actor::Workload(id) => Some((Kind::Workload, id.clone())),
        Actor::IpList(id) => Some((Kind::IpList, id.clone())),
    }
}

/// What a rule-like object refers to.
pub fn sides_refs(
    providers: &[Actor],
    consumers: &[Actor],
    services: &[ServiceRef],
) -> Vec<(Kind, Id)> {
    providers
        .iter()
        .chain(consumers)
        .filter_map(actor_ref)
        .chain(service_refs(services))
        .collect()
}

/// The services a rule names by id.
pub fn service_refs(list: &[ServiceRef]) -> impl Iterator<Item = (Kind, Id)> + '_ {
    list.iter().filter_map(|s| match s {
        ServiceRef::Service(id) => Some((Kind::Service, id.clone())),
        _ => None,
    })
}

// ---------------------------------------------------------------- rulesets

/// A ruleset's own fields (its rules are separate objects).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSetDoc {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Disabled rulesets are not enforced.
    pub enabled: bool,
    /// The scope: labels and label groups, all of which apply.
    pub scope: Vec<Actor>,
}

impl Object for RuleSetDoc {
    const KIND: Kind = Kind::RuleSet;
    fn unique_name(&self) -> Option<String> {
        Some(self.name.clone())
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        self.scope.iter().filter_map(actor_ref).collect()
    }
}

/// An allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDoc {
    /// Disabled rules are kept, not enforced.
    pub enabled: bool,
    /// Free text.
    pub description: Option<String>,
    /// Receivers.
    pub providers: Vec<Actor>,
    /// Openers.
    pub consumers: Vec<Actor>,
    /// Ports.
    pub services: Vec<ServiceRef>,
    /// Extra-scope.
    pub unscoped_consumers: bool,
    /// The caller confirmed a rule that opens everything.
    pub deliberately_broad: bool,
}

impl Object for RuleDoc {
    const KIND: Kind = Kind::SecRule;
    fn unique_name(&self) -> Option<String> {
        None
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        sides_refs(&self.providers, &self.consumers, &self.services)
    }
}

impl RuleDoc {
    /// The policy model's form.
    pub fn model(&self, id: &str) -> m::Rule {
        m::Rule {
            id: id.to_string(),
            enabled: self.enabled,
            providers: self.providers.clone(),
            consumers: self.consumers.clone(),
            services: self.services.clone(),
            unscoped_consumers: self.unscoped_consumers,
            deliberately_broad: self.deliberately_broad,
        }
    }
}

/// A deny (or override-deny) rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyRuleDoc {
    /// Disabled rules are kept, not enforced.
    pub enabled: bool,
    /// Free text.
    pub description: Option<String>,
    /// Whose inbound traffic is denied.
    pub providers: Vec<Actor>,
    /// From whom.
    pub consumers: Vec<Actor>,
    /// Ports.
    pub services: Vec<ServiceRef>,
    /// Consumers anywhere.
    pub unscoped_consumers: bool,
    /// Beats allow rules.
    pub override_deny: bool,
}

impl Object for DenyRuleDoc {
    const KIND: Kind = Kind::DenyRule;
    fn unique_name(&self) -> Option<String> {
        None
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        sides_refs(&self.providers, &self.consumers, &self.services)
    }
}

impl DenyRuleDoc {
    /// The policy model's form.
    pub fn model(&self, id: &str) -> m::DenyRule {
        m::DenyRule {
            id: id.to_string(),
            enabled: self.enabled,
            providers: self.providers.clone(),
            consumers: self.consumers.clone(),
            services: self.services.clone(),
            unscoped_consumers: self.unscoped_consumers,
            override_deny: self.override_deny,
        }
    }
}

// ---------------------------------------------------------------- boundaries

/// An enforcement boundary (org-wide deny).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundaryDoc {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Whose inbound traffic is denied.
    pub providers: Vec<Actor>,
    /// From whom.
    pub consumers: Vec<Actor>,
    /// Ports.
    pub services: Vec<ServiceRef>,
}

impl Object for BoundaryDoc {
    const KIND: Kind = Kind::Boundary;
    fn unique_name(&self) -> Option<String> {
        Some(self.name.clone())
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        sides_refs(&self.providers, &self.consumers, &self.services)
    }
}

// ---------------------------------------------------------------- workloads

/// A network interface as Illumio writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct InterfaceJson {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// Its address.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = "ip"))]
    pub address: IpAddr,
    /// Prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_block: Option<u8>,
    /// `up`, `down`, `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_state: Option<String>,
}

/// A workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadDoc {
    /// Display name.
    pub name: String,
    /// Host name.
    pub hostname: String,
    /// Free text.
    pub description: Option<String>,
    /// Interfaces.
    pub interfaces: Vec<InterfaceJson>,
    /// Labels.
    pub labels: Vec<Id>,
    /// Enforcement mode.
    pub enforcement_mode: EnforcementMode,
    /// Online (VEN heartbeating; always true for unmanaged).
    pub online: bool,
    /// Runs a VEN (set only by pairing).
    pub managed: bool,
    /// Public address, informational.
    pub public_ip: Option<String>,
    /// The region whose member the VEN paired with (managed workloads).
    #[serde(default)]
    pub region: Option<String>,
    /// Isolated: all traffic denied but the VEN's own channel (an action, not policy).
    #[serde(default)]
    pub quarantined: bool,
    /// Suspended: the VEN enforces nothing until resumed (an action, not policy).
    #[serde(default)]
    pub suspended: bool,
    /// What its VEN reports of the traffic its firewall decides.
    #[serde(default)]
    pub visibility_level: VisibilityLevel,
    /// The member whose stream made the workload online. Only that member may
    /// mark it offline: a member that lost its VEN (fenced, partitioned) must not
    /// overwrite the state another member has since claimed.
    #[serde(default)]
    pub served_by: Option<String>,
}

impl Object for WorkloadDoc {
    const KIND: Kind = Kind::Workload;
    fn unique_name(&self) -> Option<String> {
        None
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        self.labels
            .iter()
            .map(|l| (Kind::Label, l.clone()))
            .collect()
    }
}

impl WorkloadDoc {
    /// The policy model's form.
    pub fn model(&self, id: &str) -> m::Workload {
        m::Workload {
            id: id.to_string(),
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            interfaces: self.interfaces.iter().map(|i| i.address).collect(),
            labels: self.labels.clone(),
            managed: self.managed,
            mode: self.enforcement_mode,
            online: self.online,
            visibility: self.visibility_level,
        }
    }
}

// ---------------------------------------------------------------- pairing profiles

/// A pairing profile: what a VEN pairing with one of its keys becomes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingProfileDoc {
    /// Name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Disabled profiles issue no keys and pair nothing.
    pub enabled: bool,
    /// Labels given to paired workloads.
    pub labels: Vec<Id>,
    /// Their enforcement mode.
    pub enforcement_mode: EnforcementMode,
    /// Uses per key (None: unlimited).
    pub allowed_uses_per_key: Option<u64>,
    /// Key lifetime in seconds (None: unlimited).
    pub key_lifespan: Option<u64>,
    /// The visibility level of workloads it pairs.
    #[serde(default)]
    pub visibility_level: VisibilityLevel,
    /// Illumio's locks and settings, kept as given (they guard changes made
    /// on the workload's host, which this PCE does not take).
    #[serde(default)]
    pub locks: ProfileLocks,
}

/// The pairing-profile fields Illumio's clients send that only record a choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProfileLocks {
    /// The enforcement mode may not be changed on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement_mode_lock: Option<bool>,
    /// The visibility level may not be changed on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_level_lock: Option<bool>,
    /// The role label may not be changed on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_label_lock: Option<bool>,
    /// The app label may not be changed on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_label_lock: Option<bool>,
    /// The env label may not be changed on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_label_lock: Option<bool>,
    /// The loc label may not be changed on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loc_label_lock: Option<bool>,
    /// Log traffic (Illumio's older name for visibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_traffic: Option<bool>,
    /// The VEN release to install (recorded only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_software_release: Option<String>,
}

impl Object for PairingProfileDoc {
    const KIND: Kind = Kind::PairingProfile;
    fn unique_name(&self) -> Option<String> {
        Some(self.name.clone())
    }
    fn refs(&self) -> Vec<(Kind, Id)> {
        self.labels
            .iter()
            .map(|l| (Kind::Label, l.clone()))
            .collect()
    }
}

/// A pairing key as stored (the activation code itself is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingKeyDoc {
    /// The profile it pairs into.
    pub profile: Id,
    /// When it was made (ms).
    pub created_at: u64,
    /// When it stops working (ms), if ever.
    pub expires_at: Option<u64>,
    /// Uses left, if limited.
    pub uses_left: Option<u64>,
}

/// The built-in objects every org has (Illumio's defaults), as docs.
pub fn builtin_service() -> ServiceDoc {
    use sc_policy::model::Proto;
    ServiceDoc {
        name: "All Services".into(),
        description: Some("every protocol and port".into()),
        ports: [Proto::Tcp, Proto::Udp, Proto::Icmp]
            .into_iter()
            .map(|proto| PortRange {
                proto,
                port: None,
                to_port: None,
            })
            .collect(),
    }
}

/// See [`builtin_service`].
pub fn builtin_ip_list() -> IpListDoc {
    IpListDoc {
        name: "Any (0.0.0.0/0 and ::/0)".into(),
        description: Some("every address".into()),
        ip_ranges: ["0.0.0.0/0", "::/0"]
            .into_iter()
            .map(|r| IpRangeJson {
                from_ip: r.into(),
                to_ip: None,
                exclusion: false,
                description: None,
            })
            .collect(),
    }
}
