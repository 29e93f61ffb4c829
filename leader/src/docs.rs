//! The stored form of every object (what the KV holds), the JSON the API reads
//! and writes for it (Illumio's shapes), and the policy model it feeds.
//!
//! Stored docs hold ids, never hrefs; hrefs are made on the way out and resolved
//! on the way in, where a bad one becomes an error naming its field.

use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use sc_policy::model::{self as m, Actor, EnforcementMode, PortRange, Proto, ServiceRef};

use crate::error::ApiError;
use crate::keys::{self, href, Id, Kind, Space};

/// Who made and last changed an object, and when: Illumio's metadata fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Creation time (ms).
    pub created_at: u64,
    /// Last change (ms).
    pub updated_at: u64,
    /// User href.
    pub created_by: String,
    /// User href.
    pub updated_by: String,
}

/// The record format version; bump when a stored shape changes incompatibly.
pub const RECORD_V: u8 = 1;

/// One stored object: format version, metadata, the doc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record<T> {
    /// Format version ([`RECORD_V`]).
    pub v: u8,
    /// Metadata.
    pub meta: Meta,
    /// The object.
    pub doc: T,
}

/// Decodes a stored record, refusing other format versions.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("stored record: {e}")))
}

/// Encodes a value for the store.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(ApiError::internal)
}

/// References met while parsing input: each must exist when the write commits.
#[derive(Debug, Default)]
pub struct Refs {
    /// (field, kind, id)
    pub list: Vec<(String, Kind, Id)>,
}

/// `{"href": "..."}`. Other fields are ignored: clients (Illumio's Python client
/// among them) embed whole objects where a reference is expected, and only the
/// href identifies it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HrefJson {
    /// The href.
    pub href: String,
}

impl Refs {
    /// Resolves an href that must name one of `kinds`.
    pub fn href(&mut self, field: &str, href: &str, kinds: &[Kind]) -> Result<Id, ApiError> {
        match keys::parse_href(href) {
            Some((kind, id)) if kinds.contains(&kind) => {
                self.list.push((field.to_string(), kind, id.clone()));
                Ok(id)
            }
            Some((kind, _)) => Err(ApiError::reference(
                field,
                format!(
                    "{href} is a {}, expected one of: {}",
                    kind.segment(),
                    kinds
                        .iter()
                        .map(|k| k.segment())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            None => Err(ApiError::reference(
                field,
                format!("{href:?} is not an href of this PCE (org {})", keys::ORG),
            )),
        }
    }
}

/// A stored object kind: its doc, its input JSON, and conversions.
pub trait Doc: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// The kind.
    const KIND: Kind;
    /// The request body shape (strict: unknown fields are refused).
    type Input: DeserializeOwned;
    /// Parses a request into a doc, collecting references.
    fn from_input(input: Self::Input, refs: &mut Refs) -> Result<Self, ApiError>;
    /// The doc in input shape (GET returns this plus metadata; PUT merges into it).
    fn to_json(&self) -> Map<String, Value>;
    /// A name that must be unique within the kind, if the kind has one.
    fn unique_name(&self) -> Option<String>;
    /// Every object this one refers to.
    fn refs(&self) -> Vec<(Kind, Id)>;
}

fn opt_str(m: &mut Map<String, Value>, k: &str, v: &Option<String>) {
    if let Some(v) = v {
        m.insert(k.into(), Value::String(v.clone()));
    }
}

fn href_list(space: Space, kind: Kind, ids: &[Id]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| json!({ "href": href(space, kind, id) }))
            .collect(),
    )
}

// ---------------------------------------------------------------- labels

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

/// Request body of a label.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelIn {
    key: String,
    value: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    external_data_set: Option<String>,
    #[serde(default)]
    external_data_reference: Option<String>,
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.trim().is_empty() || s.len() > max || s.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            format!("must be 1-{max} printable characters"),
        ));
    }
    Ok(())
}

impl Doc for LabelDoc {
    const KIND: Kind = Kind::Label;
    type Input = LabelIn;
    fn from_input(i: LabelIn, _: &mut Refs) -> Result<Self, ApiError> {
        check_text("key", &i.key, 64)?;
        check_text("value", &i.value, 255)?;
        Ok(LabelDoc {
            key: i.key,
            value: i.value,
            description: i.description,
            external_data_set: i.external_data_set,
            external_data_reference: i.external_data_reference,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("key".into(), json!(self.key));
        m.insert("value".into(), json!(self.value));
        opt_str(&mut m, "description", &self.description);
        opt_str(&mut m, "external_data_set", &self.external_data_set);
        opt_str(
            &mut m,
            "external_data_reference",
            &self.external_data_reference,
        );
        m
    }
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

/// Request body of a label group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelGroupIn {
    name: String,
    key: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    labels: Vec<HrefJson>,
    #[serde(default)]
    sub_groups: Vec<HrefJson>,
}

impl Doc for LabelGroupDoc {
    const KIND: Kind = Kind::LabelGroup;
    type Input = LabelGroupIn;
    fn from_input(i: LabelGroupIn, refs: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        check_text("key", &i.key, 64)?;
        let labels = i
            .labels
            .iter()
            .enumerate()
            .map(|(n, h)| refs.href(&format!("labels[{n}]"), &h.href, &[Kind::Label]))
            .collect::<Result<_, _>>()?;
        let sub_groups = i
            .sub_groups
            .iter()
            .enumerate()
            .map(|(n, h)| refs.href(&format!("sub_groups[{n}]"), &h.href, &[Kind::LabelGroup]))
            .collect::<Result<_, _>>()?;
        Ok(LabelGroupDoc {
            name: i.name,
            key: i.key,
            description: i.description,
            labels,
            sub_groups,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("key".into(), json!(self.key));
        opt_str(&mut m, "description", &self.description);
        m.insert(
            "labels".into(),
            href_list(Space::Live, Kind::Label, &self.labels),
        );
        m.insert(
            "sub_groups".into(),
            href_list(Space::Draft, Kind::LabelGroup, &self.sub_groups),
        );
        m
    }
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

// ---------------------------------------------------------------- services

/// One port entry as Illumio writes it (`proto` is the IANA number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortJson {
    /// IANA protocol: 6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6.
    pub proto: u8,
    /// First port (none: all ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Last port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<u16>,
}

impl PortJson {
    fn model(&self, field: &str) -> Result<PortRange, ApiError> {
        let proto = match self.proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 | 58 => Proto::Icmp,
            p => {
                return Err(ApiError::field(
                    &format!("{field}.proto"),
                    format!("{p} is not supported; use 6 (TCP), 17 (UDP), 1 (ICMP) or 58 (ICMPv6)"),
                ))
            }
        };
        if proto == Proto::Icmp && (self.port.is_some() || self.to_port.is_some()) {
            return Err(ApiError::field(field, "ICMP has no ports"));
        }
        if self.to_port.is_some() && self.port.is_none() {
            return Err(ApiError::field(&format!("{field}.to_port"), "needs port"));
        }
        if let (Some(a), Some(b)) = (self.port, self.to_port) {
            if b < a {
                return Err(ApiError::field(
                    &format!("{field}.to_port"),
                    format!("{b} is below port {a}"),
                ));
            }
        }
        Ok(PortRange {
            proto,
            port: self.port,
            to_port: self.to_port,
        })
    }

    fn from_model(p: &PortRange) -> PortJson {
        PortJson {
            proto: match p.proto {
                Proto::Tcp => 6,
                Proto::Udp => 17,
                Proto::Icmp => 1,
            },
            port: p.port,
            to_port: p.to_port,
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

/// Request body of a service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    service_ports: Vec<PortJson>,
}

impl Doc for ServiceDoc {
    const KIND: Kind = Kind::Service;
    type Input = ServiceIn;
    fn from_input(i: ServiceIn, _: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        let ports = i
            .service_ports
            .iter()
            .enumerate()
            .map(|(n, p)| p.model(&format!("service_ports[{n}]")))
            .collect::<Result<_, _>>()?;
        Ok(ServiceDoc {
            name: i.name,
            description: i.description,
            ports,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        opt_str(&mut m, "description", &self.description);
        let ports: Vec<PortJson> = self.ports.iter().map(PortJson::from_model).collect();
        m.insert("service_ports".into(), json!(ports));
        m
    }
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

/// Request body of an IP list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpListIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    ip_ranges: Vec<IpRangeJson>,
}

impl IpRangeJson {
    fn text(&self) -> String {
        match &self.to_ip {
            Some(to) => format!("{}-{to}", self.from_ip),
            None => self.from_ip.clone(),
        }
    }
}

impl Doc for IpListDoc {
    const KIND: Kind = Kind::IpList;
    type Input = IpListIn;
    fn from_input(i: IpListIn, _: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        for (n, r) in i.ip_ranges.iter().enumerate() {
            sc_policy::addr::IpRange::parse(&r.text())
                .map_err(|e| ApiError::field(&format!("ip_ranges[{n}]"), e))?;
        }
        Ok(IpListDoc {
            name: i.name,
            description: i.description,
            ip_ranges: i.ip_ranges,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        opt_str(&mut m, "description", &self.description);
        m.insert("ip_ranges".into(), json!(self.ip_ranges));
        m
    }
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

// ---------------------------------------------------------------- actors and services of rules

/// A rule side as Illumio writes it: exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorJson {
    #[serde(default)]
    actors: Option<String>,
    #[serde(default)]
    label: Option<HrefJson>,
    #[serde(default)]
    label_group: Option<HrefJson>,
    #[serde(default)]
    workload: Option<HrefJson>,
    #[serde(default)]
    ip_list: Option<HrefJson>,
}

fn actors_in(list: &[ActorJson], field: &str, refs: &mut Refs) -> Result<Vec<Actor>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(n, a)| {
            let f = format!("{field}[{n}]");
            match (&a.actors, &a.label, &a.label_group, &a.workload, &a.ip_list) {
                (Some(s), None, None, None, None) if s == "ams" => Ok(Actor::AllWorkloads),
                (Some(s), None, None, None, None) => Err(ApiError::field(
                    &format!("{f}.actors"),
                    format!("{s:?}: the only value is \"ams\" (all workloads)"),
                )),
                (None, Some(h), None, None, None) => {
                    Ok(Actor::Label(refs.href(&f, &h.href, &[Kind::Label])?))
                }
                (None, None, Some(h), None, None) => Ok(Actor::LabelGroup(refs.href(
                    &f,
                    &h.href,
                    &[Kind::LabelGroup],
                )?)),
                (None, None, None, Some(h), None) => Ok(Actor::Workload(refs.href(
                    &f,
                    &h.href,
                    &[Kind::Workload],
                )?)),
                (None, None, None, None, Some(h)) => {
                    Ok(Actor::IpList(refs.href(&f, &h.href, &[Kind::IpList])?))
                }
                _ => Err(ApiError::field(
                    &f,
                    "give exactly one of actors, label, label_group, workload, ip_list",
                )),
            }
        })
        .collect()
}

fn actor_json(a: &Actor) -> Value {
    match a {
        Actor::AllWorkloads => json!({"actors": "ams"}),
        Actor::Label(id) => json!({"label": {"href": href(Space::Live, Kind::Label, id)}}),
        Actor::LabelGroup(id) => {
            json!({"label_group": {"href": href(Space::Draft, Kind::LabelGroup, id)}})
        }
        Actor::Workload(id) => json!({"workload": {"href": href(Space::Live, Kind::Workload, id)}}),
        Actor::IpList(id) => json!({"ip_list": {"href": href(Space::Draft, Kind::IpList, id)}}),
    }
}

fn actor_ref(a: &Actor) -> Option<(Kind, Id)> {
    match a {
        Actor::AllWorkloads => None,
        Actor::Label(id) => Some((Kind::Label, id.clone())),
        Actor::LabelGroup(id) => Some((Kind::LabelGroup, id.clone())),
        Actor::Workload(id) => Some((Kind::Workload, id.clone())),
        Actor::IpList(id) => Some((Kind::IpList, id.clone())),
    }
}

/// An ingress service: a service (by href; an embedded service object is read
/// for its href only) or an inline port (strict: `proto`, `port`, `to_port`).
#[derive(Debug)]
pub struct ServiceRefJson {
    href: Option<String>,
    proto: Option<u8>,
    port: Option<u16>,
    to_port: Option<u16>,
}

impl<'de> Deserialize<'de> for ServiceRefJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = Value::deserialize(d)?;
        if let Some(h) = v.get("href") {
            let href = h
                .as_str()
                .ok_or_else(|| D::Error::custom("invalid type: href must be a string"))?;
            return Ok(ServiceRefJson {
                href: Some(href.to_string()),
                proto: None,
                port: None,
                to_port: None,
            });
        }
        let p: PortJson = serde_json::from_value(v).map_err(D::Error::custom)?;
        Ok(ServiceRefJson {
            href: None,
            proto: Some(p.proto),
            port: p.port,
            to_port: p.to_port,
        })
    }
}

fn services_in(
    list: &[ServiceRefJson],
    field: &str,
    refs: &mut Refs,
) -> Result<Vec<ServiceRef>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(n, s)| {
            let f = format!("{field}[{n}]");
            match (&s.href, s.proto) {
                (Some(h), None) if s.port.is_none() && s.to_port.is_none() => {
                    let id = refs.href(&f, h, &[Kind::Service])?;
                    Ok(if id == ALL_SERVICES_ID {
                        ServiceRef::All
                    } else {
                        ServiceRef::Service(id)
                    })
                }
                (None, Some(proto)) => Ok(ServiceRef::Port(
                    PortJson {
                        proto,
                        port: s.port,
                        to_port: s.to_port,
                    }
                    .model(&f)?,
                )),
                _ => Err(ApiError::field(
                    &f,
                    "give either href or proto (with port, to_port)",
                )),
            }
        })
        .collect()
}

fn service_json(s: &ServiceRef) -> Value {
    match s {
        ServiceRef::All => json!({"href": href(Space::Draft, Kind::Service, ALL_SERVICES_ID)}),
        ServiceRef::Service(id) => json!({"href": href(Space::Draft, Kind::Service, id)}),
        ServiceRef::Port(p) => json!(PortJson::from_model(p)),
    }
}

/// The three sides every rule-like object has, as Illumio writes them.
fn sides_json(
    m: &mut Map<String, Value>,
    providers: &[Actor],
    consumers: &[Actor],
    services: &[ServiceRef],
) {
    m.insert(
        "providers".into(),
        providers.iter().map(actor_json).collect(),
    );
    m.insert(
        "consumers".into(),
        consumers.iter().map(actor_json).collect(),
    );
    m.insert(
        "ingress_services".into(),
        services.iter().map(service_json).collect(),
    );
}

/// What a rule-like object refers to.
fn sides_refs(
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

fn service_refs(list: &[ServiceRef]) -> impl Iterator<Item = (Kind, Id)> + '_ {
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

/// Request body of a ruleset (`rules` only on create).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    scopes: Vec<Vec<ActorJson>>,
    /// Rules given inline when creating.
    #[serde(default)]
    pub rules: Option<Vec<RuleIn>>,
}

fn yes() -> bool {
    true
}

impl Doc for RuleSetDoc {
    const KIND: Kind = Kind::RuleSet;
    type Input = RuleSetIn;
    fn from_input(i: RuleSetIn, refs: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        if i.rules.is_some() {
            return Err(ApiError::field(
                "rules",
                "rules are given only when creating a ruleset; edit them through its sec_rules",
            ));
        }
        if i.scopes.len() > 1 {
            return Err(ApiError::field(
                "scopes",
                format!(
                    "{} scopes given; this PCE supports one scope per ruleset (split the ruleset)",
                    i.scopes.len()
                ),
            ));
        }
        let scope = match i.scopes.first() {
            Some(s) => actors_in(s, "scopes[0]", refs)?,
            None => vec![],
        };
        Ok(RuleSetDoc {
            name: i.name,
            description: i.description,
            enabled: i.enabled,
            scope,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        opt_str(&mut m, "description", &self.description);
        m.insert("enabled".into(), json!(self.enabled));
        let scope: Vec<Value> = self.scope.iter().map(actor_json).collect();
        m.insert("scopes".into(), json!([scope]));
        m
    }
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

/// How labels resolve (only "workloads" is supported here).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveJson {
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    consumers: Vec<String>,
}

/// Request body of an allow rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleIn {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    description: Option<String>,
    providers: Vec<ActorJson>,
    consumers: Vec<ActorJson>,
    ingress_services: Vec<ServiceRefJson>,
    #[serde(default)]
    unscoped_consumers: bool,
    #[serde(default)]
    resolve_labels_as: Option<ResolveJson>,
    /// Supercluster's guard rail: set to confirm a rule that opens everything.
    #[serde(default)]
    deliberately_broad: bool,
}

fn check_resolve(r: &Option<ResolveJson>) -> Result<(), ApiError> {
    if let Some(r) = r {
        for (side, list) in [("providers", &r.providers), ("consumers", &r.consumers)] {
            if list.iter().any(|s| s != "workloads") {
                return Err(ApiError::field(
                    &format!("resolve_labels_as.{side}"),
                    "only \"workloads\" is supported",
                ));
            }
        }
    }
    Ok(())
}

impl Doc for RuleDoc {
    const KIND: Kind = Kind::SecRule;
    type Input = RuleIn;
    fn from_input(i: RuleIn, refs: &mut Refs) -> Result<Self, ApiError> {
        check_resolve(&i.resolve_labels_as)?;
        Ok(RuleDoc {
            enabled: i.enabled,
            description: i.description,
            providers: actors_in(&i.providers, "providers", refs)?,
            consumers: actors_in(&i.consumers, "consumers", refs)?,
            services: services_in(&i.ingress_services, "ingress_services", refs)?,
            unscoped_consumers: i.unscoped_consumers,
            deliberately_broad: i.deliberately_broad,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("enabled".into(), json!(self.enabled));
        opt_str(&mut m, "description", &self.description);
        sides_json(&mut m, &self.providers, &self.consumers, &self.services);
        m.insert("unscoped_consumers".into(), json!(self.unscoped_consumers));
        m.insert(
            "resolve_labels_as".into(),
            json!({"providers": ["workloads"], "consumers": ["workloads"]}),
        );
        if self.deliberately_broad {
            m.insert("deliberately_broad".into(), json!(true));
        }
        m
    }
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

/// Request body of a deny rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRuleIn {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    description: Option<String>,
    providers: Vec<ActorJson>,
    consumers: Vec<ActorJson>,
    ingress_services: Vec<ServiceRefJson>,
    #[serde(default)]
    unscoped_consumers: bool,
    #[serde(default, rename = "override")]
    override_deny: bool,
}

impl Doc for DenyRuleDoc {
    const KIND: Kind = Kind::DenyRule;
    type Input = DenyRuleIn;
    fn from_input(i: DenyRuleIn, refs: &mut Refs) -> Result<Self, ApiError> {
        Ok(DenyRuleDoc {
            enabled: i.enabled,
            description: i.description,
            providers: actors_in(&i.providers, "providers", refs)?,
            consumers: actors_in(&i.consumers, "consumers", refs)?,
            services: services_in(&i.ingress_services, "ingress_services", refs)?,
            unscoped_consumers: i.unscoped_consumers,
            override_deny: i.override_deny,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("enabled".into(), json!(self.enabled));
        opt_str(&mut m, "description", &self.description);
        sides_json(&mut m, &self.providers, &self.consumers, &self.services);
        m.insert("unscoped_consumers".into(), json!(self.unscoped_consumers));
        m.insert("override".into(), json!(self.override_deny));
        m
    }
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

/// Request body of an enforcement boundary.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundaryIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    providers: Vec<ActorJson>,
    consumers: Vec<ActorJson>,
    ingress_services: Vec<ServiceRefJson>,
}

impl Doc for BoundaryDoc {
    const KIND: Kind = Kind::Boundary;
    type Input = BoundaryIn;
    fn from_input(i: BoundaryIn, refs: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        Ok(BoundaryDoc {
            name: i.name,
            description: i.description,
            providers: actors_in(&i.providers, "providers", refs)?,
            consumers: actors_in(&i.consumers, "consumers", refs)?,
            services: services_in(&i.ingress_services, "ingress_services", refs)?,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        opt_str(&mut m, "description", &self.description);
        sides_json(&mut m, &self.providers, &self.consumers, &self.services);
        m
    }
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
#[serde(deny_unknown_fields)]
pub struct InterfaceJson {
    /// Interface name, e.g. `eth0`.
    pub name: String,
    /// Its address.
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
    /// The member whose stream made the workload online. Only that member may
    /// mark it offline: a member that lost its VEN (fenced, partitioned) must not
    /// overwrite the state another member has since claimed.
    #[serde(default)]
    pub served_by: Option<String>,
}

/// Request body of a workload (unmanaged, created by the API).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    interfaces: Vec<InterfaceJson>,
    #[serde(default)]
    labels: Vec<HrefJson>,
    #[serde(default = "default_mode")]
    enforcement_mode: EnforcementMode,
    #[serde(default = "yes")]
    online: bool,
    #[serde(default)]
    public_ip: Option<String>,
}

fn default_mode() -> EnforcementMode {
    EnforcementMode::VisibilityOnly
}

impl Doc for WorkloadDoc {
    const KIND: Kind = Kind::Workload;
    type Input = WorkloadIn;
    fn from_input(i: WorkloadIn, refs: &mut Refs) -> Result<Self, ApiError> {
        let hostname = i.hostname.unwrap_or_default();
        let name = i.name.unwrap_or_else(|| hostname.clone());
        check_text("name", &name, 255)?;
        if !hostname.is_empty() {
            check_text("hostname", &hostname, 255)?;
        }
        let labels = i
            .labels
            .iter()
            .enumerate()
            .map(|(n, h)| refs.href(&format!("labels[{n}]"), &h.href, &[Kind::Label]))
            .collect::<Result<_, _>>()?;
        Ok(WorkloadDoc {
            name,
            hostname,
            description: i.description,
            interfaces: i.interfaces,
            labels,
            enforcement_mode: i.enforcement_mode,
            online: i.online,
            managed: false,
            public_ip: i.public_ip,
            region: None,
            quarantined: false,
            suspended: false,
            served_by: None,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("hostname".into(), json!(self.hostname));
        opt_str(&mut m, "description", &self.description);
        m.insert("interfaces".into(), json!(self.interfaces));
        m.insert(
            "labels".into(),
            href_list(Space::Live, Kind::Label, &self.labels),
        );
        m.insert("enforcement_mode".into(), json!(self.enforcement_mode));
        m.insert("online".into(), json!(self.online));
        opt_str(&mut m, "public_ip", &self.public_ip);
        m
    }
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
}

/// `"unlimited"` or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Limit {
    /// A number.
    N(u64),
    /// The word `unlimited`.
    Word(String),
}

fn limit(field: &str, l: &Option<Limit>) -> Result<Option<u64>, ApiError> {
    match l {
        None => Ok(None),
        Some(Limit::N(0)) => Err(ApiError::field(
            field,
            "must be at least 1 or \"unlimited\"",
        )),
        Some(Limit::N(n)) => Ok(Some(*n)),
        Some(Limit::Word(w)) if w == "unlimited" => Ok(None),
        Some(Limit::Word(w)) => Err(ApiError::field(
            field,
            format!("{w:?}: give a number or \"unlimited\""),
        )),
    }
}

/// Request body of a pairing profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingProfileIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    labels: Vec<HrefJson>,
    #[serde(default = "default_mode")]
    enforcement_mode: EnforcementMode,
    #[serde(default)]
    allowed_uses_per_key: Option<Limit>,
    #[serde(default)]
    key_lifespan: Option<Limit>,
}

impl Doc for PairingProfileDoc {
    const KIND: Kind = Kind::PairingProfile;
    type Input = PairingProfileIn;
    fn from_input(i: PairingProfileIn, refs: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        let labels = i
            .labels
            .iter()
            .enumerate()
            .map(|(n, h)| refs.href(&format!("labels[{n}]"), &h.href, &[Kind::Label]))
            .collect::<Result<_, _>>()?;
        Ok(PairingProfileDoc {
            name: i.name,
            description: i.description,
            enabled: i.enabled,
            labels,
            enforcement_mode: i.enforcement_mode,
            allowed_uses_per_key: limit("allowed_uses_per_key", &i.allowed_uses_per_key)?,
            key_lifespan: limit("key_lifespan", &i.key_lifespan)?,
        })
    }
    fn to_json(&self) -> Map<String, Value> {
        let lim = |v: Option<u64>| v.map(|n| json!(n)).unwrap_or(json!("unlimited"));
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        opt_str(&mut m, "description", &self.description);
        m.insert("enabled".into(), json!(self.enabled));
        m.insert(
            "labels".into(),
            href_list(Space::Live, Kind::Label, &self.labels),
        );
        m.insert("enforcement_mode".into(), json!(self.enforcement_mode));
        m.insert(
            "allowed_uses_per_key".into(),
            lim(self.allowed_uses_per_key),
        );
        m.insert("key_lifespan".into(), lim(self.key_lifespan));
        m
    }
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
