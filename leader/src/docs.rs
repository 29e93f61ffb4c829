//! The JSON the API reads and writes for every stored object (Illumio's
//! shapes). The stored form itself is `sc_store::objects`.
//!
//! Stored objects hold ids, never hrefs; hrefs are made on the way out and
//! resolved on the way in, where a bad one becomes an error naming its field.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use sc_policy::model::VisibilityLevel;
use sc_policy::model::{Actor, EnforcementMode, PortRange, Proto, ServiceRef};
use sc_store::db::{Db, Txn};
use sc_store::keys::{self, href, Id, Kind, Space};
use sc_store::objects::*;
use sc_store::record::{decode_doc, Object};
use sc_store::world::World;

use crate::error::ApiError;

/// References met while parsing input: each must exist when the write commits.
#[derive(Debug, Default)]
pub struct Refs {
    /// (field, kind, id)
    pub list: Vec<(String, Kind, Id)>,
}

/// `{"href": "..."}`. Other fields are ignored: clients (Illumio's Python client
/// among them) embed whole objects where a reference is expected, and only the
/// href identifies it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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

/// A stored object kind as the API sees it: one type is both its request body
/// and the fields of its answer, so what GET shows is what PUT merges into and
/// the document's schema for it is derived, not written.
pub trait Doc: Object {
    /// The request body shape (strict: unknown fields are refused).
    type Input: DeserializeOwned + Serialize + ToSchema;
    /// The answer's schema name in the OpenAPI document.
    const SCHEMA: &'static str;
    /// Parses a request into a doc, collecting references.
    fn from_input(input: Self::Input, refs: &mut Refs) -> Result<Self, ApiError>;
    /// The doc in input shape (GET returns this plus metadata; PUT merges into it).
    fn to_input(&self) -> Self::Input;
    /// [`Doc::to_input`] as a JSON object.
    fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(self.to_input()) {
            Ok(Value::Object(m)) => m,
            // Every input type is a struct of JSON-representable fields.
            _ => Map::new(),
        }
    }
}

fn href_list(space: Space, kind: Kind, ids: &[Id]) -> Vec<HrefJson> {
    ids.iter()
        .map(|id| HrefJson {
            href: href(space, kind, id),
        })
        .collect()
}

/// Request body of a label.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelIn {
    key: String,
    value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_data_set: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_data_reference: Option<String>,
}

/// Characters that change how text around them is shown rather than being
/// shown: bidirectional embeddings, overrides and isolates (a name that reads
/// differently than it sorts, "Trojan Source"), besides control characters
/// (NUL, terminal escapes).
pub(crate) fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.trim().is_empty() || s.len() > max || s.chars().any(deceptive) {
        return Err(ApiError::field(
            field,
            format!("must be 1-{max} printable characters (no control or bidirectional-override characters)"),
        ));
    }
    Ok(())
}

/// Optional free text (descriptions, external references): up to 4096 bytes,
/// line breaks and tabs allowed, no other control or bidirectional-override
/// characters (they would reach terminals and the console as escapes).
pub(crate) fn free_text(field: &str, s: Option<String>) -> Result<Option<String>, ApiError> {
    if let Some(t) = &s {
        if t.len() > 4096 || t.chars().any(|c| deceptive(c) && c != '\n' && c != '\t') {
            return Err(ApiError::field(
                field,
                "must be at most 4096 bytes of printable text (line breaks and tabs allowed; no other control or bidirectional-override characters)",
            ));
        }
    }
    Ok(s)
}

impl Doc for LabelDoc {
    type Input = LabelIn;
    const SCHEMA: &'static str = "Label";
    fn from_input(i: LabelIn, _: &mut Refs) -> Result<Self, ApiError> {
        check_text("key", &i.key, 64)?;
        check_text("value", &i.value, 255)?;
        Ok(LabelDoc {
            key: i.key,
            value: i.value,
            description: free_text("description", i.description)?,
            external_data_set: free_text("external_data_set", i.external_data_set)?,
            external_data_reference: free_text(
                "external_data_reference",
                i.external_data_reference,
            )?,
        })
    }
    fn to_input(&self) -> LabelIn {
        LabelIn {
            key: self.key.clone(),
            value: self.value.clone(),
            description: self.description.clone(),
            external_data_set: self.external_data_set.clone(),
            external_data_reference: self.external_data_reference.clone(),
        }
    }
}

/// Request body of a label group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelGroupIn {
    name: String,
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default)]
    labels: Vec<HrefJson>,
    #[serde(default)]
    sub_groups: Vec<HrefJson>,
}

impl Doc for LabelGroupDoc {
    type Input = LabelGroupIn;
    const SCHEMA: &'static str = "LabelGroup";
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
            description: free_text("description", i.description)?,
            labels,
            sub_groups,
        })
    }
    fn to_input(&self) -> LabelGroupIn {
        LabelGroupIn {
            name: self.name.clone(),
            key: self.key.clone(),
            description: self.description.clone(),
            labels: href_list(Space::Live, Kind::Label, &self.labels),
            sub_groups: href_list(Space::Draft, Kind::LabelGroup, &self.sub_groups),
        }
    }
}

// ---------------------------------------------------------------- services

/// One port entry as Illumio writes it (`proto` is the IANA number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

/// Request body of a service.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceIn {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default)]
    service_ports: Vec<PortJson>,
}

impl Doc for ServiceDoc {
    type Input = ServiceIn;
    const SCHEMA: &'static str = "Service";
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
            description: free_text("description", i.description)?,
            ports,
        })
    }
    fn to_input(&self) -> ServiceIn {
        ServiceIn {
            name: self.name.clone(),
            description: self.description.clone(),
            service_ports: self.ports.iter().map(PortJson::from_model).collect(),
        }
    }
}

/// Request body of an IP list.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IpListIn {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default)]
    ip_ranges: Vec<IpRangeJson>,
}

impl Doc for IpListDoc {
    type Input = IpListIn;
    const SCHEMA: &'static str = "IpList";
    fn from_input(i: IpListIn, _: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        for (n, r) in i.ip_ranges.iter().enumerate() {
            sc_policy::addr::IpRange::parse(&r.text())
                .map_err(|e| ApiError::field(&format!("ip_ranges[{n}]"), e))?;
        }
        Ok(IpListDoc {
            name: i.name,
            description: free_text("description", i.description)?,
            ip_ranges: i.ip_ranges,
        })
    }
    fn to_input(&self) -> IpListIn {
        IpListIn {
            name: self.name.clone(),
            description: self.description.clone(),
            ip_ranges: self.ip_ranges.clone(),
        }
    }
}

// ---------------------------------------------------------------- actors and services of rules

/// A rule side as Illumio writes it: exactly one of the fields.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActorJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actors: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<HrefJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label_group: Option<HrefJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workload: Option<HrefJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

impl ActorJson {
    fn from_model(a: &Actor) -> ActorJson {
        let h = |space, kind, id| {
            Some(HrefJson {
                href: href(space, kind, id),
            })
        };
        match a {
            Actor::AllWorkloads => ActorJson {
                actors: Some("ams".into()),
                ..ActorJson::default()
            },
            Actor::Label(id) => ActorJson {
                label: h(Space::Live, Kind::Label, id),
                ..ActorJson::default()
            },
            Actor::LabelGroup(id) => ActorJson {
                label_group: h(Space::Draft, Kind::LabelGroup, id),
                ..ActorJson::default()
            },
            Actor::Workload(id) => ActorJson {
                workload: h(Space::Live, Kind::Workload, id),
                ..ActorJson::default()
            },
            Actor::IpList(id) => ActorJson {
                ip_list: h(Space::Draft, Kind::IpList, id),
                ..ActorJson::default()
            },
        }
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

impl ServiceRefJson {
    fn from_model(s: &ServiceRef) -> ServiceRefJson {
        let by_href = |id: &str| ServiceRefJson {
            href: Some(href(Space::Draft, Kind::Service, id)),
            proto: None,
            port: None,
            to_port: None,
        };
        match s {
            ServiceRef::All => by_href(ALL_SERVICES_ID),
            ServiceRef::Service(id) => by_href(id),
            ServiceRef::Port(p) => {
                let p = PortJson::from_model(p);
                ServiceRefJson {
                    href: None,
                    proto: Some(p.proto),
                    port: p.port,
                    to_port: p.to_port,
                }
            }
        }
    }
}

impl Serialize for ServiceRefJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.href, self.proto) {
            (Some(h), _) => HrefJson { href: h.clone() }.serialize(s),
            (None, proto) => PortJson {
                proto: proto.unwrap_or_default(),
                port: self.port,
                to_port: self.to_port,
            }
            .serialize(s),
        }
    }
}

impl utoipa::PartialSchema for ServiceRefJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name(HrefJson::name()))
            .item(utoipa::openapi::Ref::from_schema_name(PortJson::name()))
            .into()
    }
}

impl ToSchema for ServiceRefJson {
    fn schemas(
        out: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        out.push((HrefJson::name().into_owned(), HrefJson::schema()));
        out.push((PortJson::name().into_owned(), PortJson::schema()));
    }
}

fn actors_out(list: &[Actor]) -> Vec<ActorJson> {
    list.iter().map(ActorJson::from_model).collect()
}

fn services_out(list: &[ServiceRef]) -> Vec<ServiceRefJson> {
    list.iter().map(ServiceRefJson::from_model).collect()
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

/// Request body of a ruleset (`rules` only on create).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSetIn {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    scopes: Vec<Vec<ActorJson>>,
    /// Rules given inline when creating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleIn>>,
}

fn yes() -> bool {
    true
}

impl Doc for RuleSetDoc {
    type Input = RuleSetIn;
    const SCHEMA: &'static str = "RuleSet";
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
            description: free_text("description", i.description)?,
            enabled: i.enabled,
            scope,
        })
    }
    fn to_input(&self) -> RuleSetIn {
        RuleSetIn {
            name: self.name.clone(),
            description: self.description.clone(),
            enabled: self.enabled,
            scopes: vec![actors_out(&self.scope)],
            rules: None,
        }
    }
}

/// How labels resolve (only "workloads" is supported here).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveJson {
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    consumers: Vec<String>,
}

/// Request body of an allow rule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleIn {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    providers: Vec<ActorJson>,
    consumers: Vec<ActorJson>,
    ingress_services: Vec<ServiceRefJson>,
    #[serde(default)]
    unscoped_consumers: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resolve_labels_as: Option<ResolveJson>,
    /// Supercluster's guard rail: set to confirm a rule that opens everything.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
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
    type Input = RuleIn;
    const SCHEMA: &'static str = "Rule";
    fn from_input(i: RuleIn, refs: &mut Refs) -> Result<Self, ApiError> {
        check_resolve(&i.resolve_labels_as)?;
        Ok(RuleDoc {
            enabled: i.enabled,
            description: free_text("description", i.description)?,
            providers: actors_in(&i.providers, "providers", refs)?,
            consumers: actors_in(&i.consumers, "consumers", refs)?,
            services: services_in(&i.ingress_services, "ingress_services", refs)?,
            unscoped_consumers: i.unscoped_consumers,
            deliberately_broad: i.deliberately_broad,
        })
    }
    fn to_input(&self) -> RuleIn {
        RuleIn {
            enabled: self.enabled,
            description: self.description.clone(),
            providers: actors_out(&self.providers),
            consumers: actors_out(&self.consumers),
            ingress_services: services_out(&self.services),
            unscoped_consumers: self.unscoped_consumers,
            resolve_labels_as: Some(ResolveJson {
                providers: vec!["workloads".into()],
                consumers: vec!["workloads".into()],
            }),
            deliberately_broad: self.deliberately_broad,
        }
    }
}

/// Request body of a deny rule.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRuleIn {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    type Input = DenyRuleIn;
    const SCHEMA: &'static str = "DenyRule";
    fn from_input(i: DenyRuleIn, refs: &mut Refs) -> Result<Self, ApiError> {
        Ok(DenyRuleDoc {
            enabled: i.enabled,
            description: free_text("description", i.description)?,
            providers: actors_in(&i.providers, "providers", refs)?,
            consumers: actors_in(&i.consumers, "consumers", refs)?,
            services: services_in(&i.ingress_services, "ingress_services", refs)?,
            unscoped_consumers: i.unscoped_consumers,
            override_deny: i.override_deny,
        })
    }
    fn to_input(&self) -> DenyRuleIn {
        DenyRuleIn {
            enabled: self.enabled,
            description: self.description.clone(),
            providers: actors_out(&self.providers),
            consumers: actors_out(&self.consumers),
            ingress_services: services_out(&self.services),
            unscoped_consumers: self.unscoped_consumers,
            override_deny: self.override_deny,
        }
    }
}

/// Request body of an enforcement boundary.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BoundaryIn {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    providers: Vec<ActorJson>,
    consumers: Vec<ActorJson>,
    ingress_services: Vec<ServiceRefJson>,
}

impl Doc for BoundaryDoc {
    type Input = BoundaryIn;
    const SCHEMA: &'static str = "EnforcementBoundary";
    fn from_input(i: BoundaryIn, refs: &mut Refs) -> Result<Self, ApiError> {
        check_text("name", &i.name, 255)?;
        Ok(BoundaryDoc {
            name: i.name,
            description: free_text("description", i.description)?,
            providers: actors_in(&i.providers, "providers", refs)?,
            consumers: actors_in(&i.consumers, "consumers", refs)?,
            services: services_in(&i.ingress_services, "ingress_services", refs)?,
        })
    }
    fn to_input(&self) -> BoundaryIn {
        BoundaryIn {
            name: self.name.clone(),
            description: self.description.clone(),
            providers: actors_out(&self.providers),
            consumers: actors_out(&self.consumers),
            ingress_services: services_out(&self.services),
        }
    }
}

/// Request body of a workload (unmanaged, created by the API).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default)]
    interfaces: Vec<InterfaceJson>,
    #[serde(default)]
    labels: Vec<HrefJson>,
    #[serde(default = "default_mode")]
    enforcement_mode: EnforcementMode,
    #[serde(default = "yes")]
    online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_ip: Option<String>,
    /// What its VEN reports: `flow_summary` (default), `flow_full_detail`,
    /// `flow_drops`, `flow_off` or `enhanced_data_collection`.
    #[serde(default)]
    visibility_level: VisibilityLevel,
}

fn default_mode() -> EnforcementMode {
    EnforcementMode::VisibilityOnly
}

impl Doc for WorkloadDoc {
    type Input = WorkloadIn;
    const SCHEMA: &'static str = "Workload";
    fn from_input(i: WorkloadIn, refs: &mut Refs) -> Result<Self, ApiError> {
        let hostname = i.hostname.unwrap_or_default();
        let name = i.name.unwrap_or_else(|| hostname.clone());
        check_text("name", &name, 255)?;
        if !hostname.is_empty() {
            check_text("hostname", &hostname, 255)?;
        }
        for (n, itf) in i.interfaces.iter().enumerate() {
            check_text(&format!("interfaces[{n}].name"), &itf.name, 64)?;
            let max = if itf.address.is_ipv4() { 32 } else { 128 };
            if itf.cidr_block.is_some_and(|b| b > max) {
                return Err(ApiError::field(
                    &format!("interfaces[{n}].cidr_block"),
                    format!(
                        "a prefix length of {} is not one of 0-{max} for {}",
                        itf.cidr_block.unwrap_or(0),
                        itf.address
                    ),
                ));
            }
            if let Some(state) = &itf.link_state {
                if !matches!(state.as_str(), "up" | "down" | "unknown") {
                    return Err(ApiError::field(
                        &format!("interfaces[{n}].link_state"),
                        "must be up, down or unknown",
                    ));
                }
            }
        }
        if let Some(ip) = &i.public_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ApiError::field(
                    "public_ip",
                    format!("{ip:?} is not an IPv4 or IPv6 address"),
                ));
            }
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
            description: free_text("description", i.description)?,
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
            visibility_level: i.visibility_level,
        })
    }
    fn to_input(&self) -> WorkloadIn {
        WorkloadIn {
            name: Some(self.name.clone()),
            hostname: Some(self.hostname.clone()),
            description: self.description.clone(),
            interfaces: self.interfaces.clone(),
            labels: href_list(Space::Live, Kind::Label, &self.labels),
            enforcement_mode: self.enforcement_mode,
            online: self.online,
            public_ip: self.public_ip.clone(),
            visibility_level: self.visibility_level,
        }
    }
}

/// `"unlimited"` or a number.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingProfileIn {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    labels: Vec<HrefJson>,
    #[serde(default = "default_mode")]
    enforcement_mode: EnforcementMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allowed_uses_per_key: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_lifespan: Option<Limit>,
    /// The visibility level of workloads it pairs (default `flow_summary`).
    #[serde(default)]
    visibility_level: VisibilityLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enforcement_mode_lock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    visibility_level_lock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role_label_lock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app_label_lock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env_label_lock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loc_label_lock: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_traffic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent_software_release: Option<String>,
}

impl Doc for PairingProfileDoc {
    type Input = PairingProfileIn;
    const SCHEMA: &'static str = "PairingProfile";
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
            description: free_text("description", i.description)?,
            enabled: i.enabled,
            labels,
            enforcement_mode: i.enforcement_mode,
            allowed_uses_per_key: limit("allowed_uses_per_key", &i.allowed_uses_per_key)?,
            key_lifespan: limit("key_lifespan", &i.key_lifespan)?,
            visibility_level: i.visibility_level,
            locks: ProfileLocks {
                enforcement_mode_lock: i.enforcement_mode_lock,
                visibility_level_lock: i.visibility_level_lock,
                role_label_lock: i.role_label_lock,
                app_label_lock: i.app_label_lock,
                env_label_lock: i.env_label_lock,
                loc_label_lock: i.loc_label_lock,
                log_traffic: i.log_traffic,
                agent_software_release: i.agent_software_release,
            },
        })
    }
    fn to_input(&self) -> PairingProfileIn {
        let lim = |v: Option<u64>| Some(v.map_or(Limit::Word("unlimited".into()), Limit::N));
        PairingProfileIn {
            name: self.name.clone(),
            description: self.description.clone(),
            enabled: self.enabled,
            labels: href_list(Space::Live, Kind::Label, &self.labels),
            enforcement_mode: self.enforcement_mode,
            allowed_uses_per_key: lim(self.allowed_uses_per_key),
            key_lifespan: lim(self.key_lifespan),
            visibility_level: self.visibility_level,
            enforcement_mode_lock: self.locks.enforcement_mode_lock,
            visibility_level_lock: self.locks.visibility_level_lock,
            role_label_lock: self.locks.role_label_lock,
            app_label_lock: self.locks.app_label_lock,
            env_label_lock: self.locks.env_label_lock,
            loc_label_lock: self.locks.loc_label_lock,
            log_traffic: self.locks.log_traffic,
            agent_software_release: self.locks.agent_software_release.clone(),
        }
    }
}

/// Fetches every referenced object: each must exist (else `invalid_reference`
/// naming the field), each becomes a precondition of `txn`, and each joins `world`.
/// Label groups bring their sub-groups along, so cycles are visible.
pub async fn resolve(
    db: &Db,
    refs: &[(String, Kind, Id)],
    txn: &mut Txn,
    world: &mut World,
) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    let mut queue: Vec<(String, Kind, Id)> = refs.to_vec();
    while let Some((field, kind, id)) = queue.pop() {
        if !seen.insert((kind, id.clone())) {
            continue;
        }
        if kind == Kind::Service && id == ALL_SERVICES_ID {
            continue;
        }
        let key = keys::obj(Space::of(kind), kind, &id);
        let entry = db.raw(&key).await?;
        let Some((bytes, rev)) = entry else {
            return Err(ApiError::reference(
                &field,
                format!(
                    "{} {id} does not exist{}",
                    kind.segment(),
                    if kind.provisioned() {
                        " in the draft"
                    } else {
                        ""
                    }
                ),
            ));
        };
        txn.expect(key, Some(rev));
        world.add(kind, &id, &bytes)?;
        if kind == Kind::LabelGroup {
            let g: LabelGroupDoc = decode_doc(&bytes)?;
            for sub in g.sub_groups {
                queue.push((field.clone(), Kind::LabelGroup, sub));
            }
        }
    }
    Ok(())
}
