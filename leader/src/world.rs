//! Turning stored docs into the policy model: a small world around one object
//! (to validate a single write) or a whole space (to provision).

use std::collections::{BTreeMap, BTreeSet};

use sc_policy::model::{self as m, Estate, PolicySet};
use sc_policy::validate::validate;

use crate::db::{Db, Txn};
use crate::docs::*;
use crate::error::ApiError;
use crate::keys::{self, Id, Kind, Space};

/// The largest number of objects one kind may hold (a bound on full scans).
pub const MAX_OBJECTS: usize = 1_000_000;

/// An estate and a policy set, built from stored docs.
#[derive(Debug, Default, Clone)]
pub struct World {
    /// Labels and workloads.
    pub estate: Estate,
    /// Label groups, services, IP lists, rulesets, boundaries.
    pub policy: PolicySet,
}

/// The built-in objects every org has (Illumio's defaults), as docs.
pub fn builtin_service() -> ServiceDoc {
    use sc_policy::model::{PortRange, Proto};
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

fn rec<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    Ok(decode::<Record<T>>(bytes)?.doc)
}

impl World {
    /// Adds one stored object (raw record bytes) of `kind` with `id`.
    pub fn add(&mut self, kind: Kind, id: &str, bytes: &[u8]) -> Result<(), ApiError> {
        let id = id.to_string();
        match kind {
            Kind::Label => {
                let d: LabelDoc = rec(bytes)?;
                self.estate.labels.insert(
                    id.clone(),
                    m::Label {
                        id,
                        key: d.key,
                        value: d.value,
                    },
                );
            }
            Kind::Workload => {
                let d: WorkloadDoc = rec(bytes)?;
                self.estate.workloads.insert(id.clone(), d.model(&id));
            }
            Kind::LabelGroup => {
                let d: LabelGroupDoc = rec(bytes)?;
                self.policy.label_groups.insert(id.clone(), d.model(&id));
            }
            Kind::Service => {
                let d: ServiceDoc = rec(bytes)?;
                self.policy.services.insert(
                    id.clone(),
                    m::Service {
                        id,
                        name: d.name,
                        ports: d.ports,
                    },
                );
            }
            Kind::IpList => {
                let d: IpListDoc = rec(bytes)?;
                self.policy.ip_lists.insert(id.clone(), d.model(&id));
            }
            Kind::Boundary => {
                let d: BoundaryDoc = rec(bytes)?;
                self.policy.boundaries.insert(
                    id.clone(),
                    m::EnforcementBoundary {
                        id,
                        name: d.name,
                        providers: d.providers,
                        consumers: d.consumers,
                        services: d.services,
                        override_deny: false,
                    },
                );
            }
            Kind::RuleSet => {
                let d: RuleSetDoc = rec(bytes)?;
                let rs = self.rule_set(&id);
                rs.name = d.name;
                rs.enabled = d.enabled;
                rs.scope = d.scope;
            }
            Kind::SecRule => {
                let (rs, rule) = id.split_once('/').unwrap_or((&id, ""));
                let d: RuleDoc = rec(bytes)?;
                let model = d.model(rule);
                self.rule_set(rs).rules.push(model);
            }
            Kind::DenyRule => {
                let (rs, rule) = id.split_once('/').unwrap_or((&id, ""));
                let d: DenyRuleDoc = rec(bytes)?;
                let model = d.model(rule);
                self.rule_set(rs).deny_rules.push(model);
            }
            Kind::PairingProfile => {}
        }
        Ok(())
    }

    fn rule_set(&mut self, id: &str) -> &mut m::RuleSet {
        self.policy
            .rule_sets
            .entry(id.to_string())
            .or_insert_with(|| m::RuleSet {
                id: id.to_string(),
                name: String::new(),
                enabled: true,
                scope: vec![],
                rules: vec![],
                deny_rules: vec![],
            })
    }

    /// Validates with the policy engine and keeps only the errors about `object`
    /// (`{segment}/{id}`): the other objects in a small world were checked when they
    /// were written, and may legitimately miss their own references here.
    pub fn check(&self, object: &str) -> Result<(), ApiError> {
        match validate(&self.estate, &self.policy) {
            Ok(()) => Ok(()),
            Err(errors) => {
                let mine: Vec<_> = errors.into_iter().filter(|e| e.object == object).collect();
                if mine.is_empty() {
                    Ok(())
                } else {
                    Err(ApiError::validation(&mine))
                }
            }
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
            let g: LabelGroupDoc = rec(&bytes)?;
            for sub in g.sub_groups {
                queue.push((field.clone(), Kind::LabelGroup, sub));
            }
        }
    }
    Ok(())
}

/// Every object of one space, as raw records by (kind, id), for diffs and worlds.
pub type Raw = BTreeMap<(Kind, Id), Vec<u8>>;

/// Loads every object of the given kinds in `space`.
pub async fn load_raw(db: &Db, space: Space, kinds: &[Kind]) -> Result<Raw, ApiError> {
    let mut out = Raw::new();
    for &kind in kinds {
        let prefix = keys::obj_prefix(space, kind);
        for (key, bytes) in db.raw_scan(&prefix, MAX_OBJECTS).await? {
            out.insert((kind, keys::id_of(&key, &prefix)), bytes);
        }
    }
    Ok(out)
}

/// The policy kinds, rules included.
pub const POLICY_KINDS: [Kind; 7] = [
    Kind::LabelGroup,
    Kind::Service,
    Kind::IpList,
    Kind::RuleSet,
    Kind::SecRule,
    Kind::DenyRule,
    Kind::Boundary,
];

/// Builds a world from raw objects.
pub fn world_of<'a>(
    objects: impl IntoIterator<Item = (&'a (Kind, Id), &'a Vec<u8>)>,
) -> Result<World, ApiError> {
    let mut w = World::default();
    for ((kind, id), bytes) in objects {
        w.add(*kind, id, bytes)?;
    }
    Ok(w)
}

/// The references of a stored object of any kind, from its raw record.
pub fn refs_of(kind: Kind, bytes: &[u8]) -> Result<Vec<(Kind, Id)>, ApiError> {
    Ok(match kind {
        Kind::Label => vec![],
        Kind::LabelGroup => rec::<LabelGroupDoc>(bytes)?.refs(),
        Kind::Service => vec![],
        Kind::IpList => vec![],
        Kind::RuleSet => rec::<RuleSetDoc>(bytes)?.refs(),
        Kind::SecRule => rec::<RuleDoc>(bytes)?.refs(),
        Kind::DenyRule => rec::<DenyRuleDoc>(bytes)?.refs(),
        Kind::Boundary => rec::<BoundaryDoc>(bytes)?.refs(),
        Kind::Workload => rec::<WorkloadDoc>(bytes)?.refs(),
        Kind::PairingProfile => rec::<PairingProfileDoc>(bytes)?.refs(),
    })
}

/// The first object (href) that refers to `(kind, id)`, if any: an object in use
/// cannot be deleted. Live targets are checked against draft and active policy
/// too; draft targets against the draft.
pub async fn first_referrer(db: &Db, kind: Kind, id: &str) -> Result<Option<String>, ApiError> {
    let spaces: &[Space] = if kind.provisioned() {
        &[Space::Draft]
    } else {
        &[Space::Live, Space::Draft, Space::Active]
    };
    let referrers = [
        Kind::LabelGroup,
        Kind::RuleSet,
        Kind::SecRule,
        Kind::DenyRule,
        Kind::Boundary,
        Kind::Workload,
        Kind::PairingProfile,
    ];
    for &space in spaces {
        for &rk in &referrers {
            if rk.provisioned() == (space == Space::Live) {
                continue;
            }
            let prefix = keys::obj_prefix(space, rk);
            for (key, bytes) in db.raw_scan(&prefix, MAX_OBJECTS).await? {
                if refs_of(rk, &bytes)?
                    .iter()
                    .any(|(k, i)| *k == kind && i == id)
                {
                    return Ok(Some(keys::href(space, rk, &keys::id_of(&key, &prefix))));
                }
            }
        }
    }
    Ok(None)
}
