//! Turning stored objects into the policy model: a small world around one
//! object (to validate a single write), a whole space (to provision), or the
//! active policy a member compiles for its VENs.

use std::collections::BTreeMap;

use sc_policy::model::{self as m, Estate, PolicySet};
use sc_policy::validate::validate;

use crate::db::Db;
use crate::error::StoreError;
use crate::keys::{self, Id, Kind, Space};
use crate::objects::*;
use crate::record::{decode_doc, Object};

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

impl World {
    /// Adds one stored object (raw record bytes) of `kind` with `id`.
    pub fn add(&mut self, kind: Kind, id: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let id = id.to_string();
        match kind {
            Kind::Label => {
                let d: LabelDoc = decode_doc(bytes)?;
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
                let d: WorkloadDoc = decode_doc(bytes)?;
                self.estate.workloads.insert(id.clone(), d.model(&id));
            }
            Kind::LabelGroup => {
                let d: LabelGroupDoc = decode_doc(bytes)?;
                self.policy.label_groups.insert(id.clone(), d.model(&id));
            }
            Kind::Service => {
                let d: ServiceDoc = decode_doc(bytes)?;
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
                let d: IpListDoc = decode_doc(bytes)?;
                self.policy.ip_lists.insert(id.clone(), d.model(&id));
            }
            Kind::Boundary => {
                let d: BoundaryDoc = decode_doc(bytes)?;
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
                let d: RuleSetDoc = decode_doc(bytes)?;
                let rs = self.rule_set(&id);
                rs.name = d.name;
                rs.enabled = d.enabled;
                rs.scope = d.scope;
            }
            Kind::SecRule => {
                let (rs, rule) = keys::split_rule_id(&id);
                let d: RuleDoc = decode_doc(bytes)?;
                let model = d.model(rule);
                self.rule_set(rs).rules.push(model);
            }
            Kind::DenyRule => {
                let (rs, rule) = keys::split_rule_id(&id);
                let d: DenyRuleDoc = decode_doc(bytes)?;
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
    pub fn check(&self, object: &str) -> Result<(), StoreError> {
        match validate(&self.estate, &self.policy) {
            Ok(()) => Ok(()),
            Err(errors) => {
                let mine: Vec<_> = errors.into_iter().filter(|e| e.object == object).collect();
                if mine.is_empty() {
                    Ok(())
                } else {
                    Err(StoreError::Invalid(mine))
                }
            }
        }
    }
}

/// Every object of one space, as raw records by (kind, id), for diffs and worlds.
pub type Raw = BTreeMap<(Kind, Id), Vec<u8>>;

/// Loads every object of the given kinds in `space`.
pub async fn load_raw(db: &Db, space: Space, kinds: &[Kind]) -> Result<Raw, StoreError> {
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
) -> Result<World, StoreError> {
    let mut w = World::default();
    for ((kind, id), bytes) in objects {
        w.add(*kind, id, bytes)?;
    }
    Ok(w)
}

/// The references of a stored object of any kind, from its raw record.
pub fn refs_of(kind: Kind, bytes: &[u8]) -> Result<Vec<(Kind, Id)>, StoreError> {
    Ok(match kind {
        Kind::Label => vec![],
        Kind::LabelGroup => decode_doc::<LabelGroupDoc>(bytes)?.refs(),
        Kind::Service => vec![],
        Kind::IpList => vec![],
        Kind::RuleSet => decode_doc::<RuleSetDoc>(bytes)?.refs(),
        Kind::SecRule => decode_doc::<RuleDoc>(bytes)?.refs(),
        Kind::DenyRule => decode_doc::<DenyRuleDoc>(bytes)?.refs(),
        Kind::Boundary => decode_doc::<BoundaryDoc>(bytes)?.refs(),
        Kind::Workload => decode_doc::<WorkloadDoc>(bytes)?.refs(),
        Kind::PairingProfile => decode_doc::<PairingProfileDoc>(bytes)?.refs(),
    })
}

/// The first object (href) that refers to `(kind, id)`, if any: an object in use
/// cannot be deleted. Live targets are checked against draft and active policy
/// too; draft targets against the draft.
pub async fn first_referrer(db: &Db, kind: Kind, id: &str) -> Result<Option<String>, StoreError> {
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
