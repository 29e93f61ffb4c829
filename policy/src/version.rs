//! Draft and versions: the draft accumulates changes; provisioning turns it into
//! the next numbered, immutable active version.
//!
//! Everything here is plain data and functions of their inputs (the caller passes
//! the time), so every Raft replica that applies the same command computes the
//! same version, byte for byte.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::compute::{Change, Engine};
use crate::guard::rule_set_within_scope;
use crate::key::ObjectKind;
use crate::model::{Actor, Estate, Id, PolicySet};
use crate::validate::{validate, ValidationError};

/// How an object differs between two policy sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the newer set.
    Created,
    /// In both, different.
    Updated,
    /// Only in the older set.
    Deleted,
}

/// One object that differs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PendingChange {
    /// Object kind.
    pub kind: ObjectKind,
    /// Object id.
    pub id: Id,
    /// How it differs.
    pub change: ChangeKind,
}

/// One provisioned version. Never modified after it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// 1, 2, 3, ...
    pub number: u64,
    /// The active policy objects of this version.
    pub policy: PolicySet,
    /// Who provisioned it.
    pub author: String,
    /// Why.
    pub note: String,
    /// When (milliseconds since the epoch, supplied by the caller).
    pub time_ms: u64,
    /// What changed from the previous version.
    pub changes: Vec<PendingChange>,
    /// Workloads whose compiled rules changed.
    pub affected_workloads: BTreeSet<Id>,
}

/// Why a draft operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Provisioning with no pending change.
    #[error("nothing to provision: the draft equals the active version")]
    NothingPending,
    /// The draft does not validate.
    #[error("the draft is invalid: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ValidationError>),
    /// A version number that does not exist.
    #[error("there is no policy version {0}")]
    NoSuchVersion(u64),
    /// Reverting an object that has no pending change.
    #[error("{kind:?} {id} has no pending change to revert")]
    NotPending {
        /// Kind.
        kind: ObjectKind,
        /// Id.
        id: Id,
    },
    /// A scoped user's provision would carry changes outside its scope.
    #[error("these pending changes are outside your scope: {}", .0.iter().map(|c| format!("{:?} {}", c.kind, c.id)).collect::<Vec<_>>().join(", "))]
    OutsideScope(Vec<PendingChange>),
}

fn diff_map<T: PartialEq>(
    kind: ObjectKind,
    a: &BTreeMap<Id, T>,
    b: &BTreeMap<Id, T>,
    out: &mut Vec<PendingChange>,
) {
    for (id, x) in a {
        match b.get(id) {
            None => out.push(PendingChange {
                kind,
                id: id.clone(),
                change: ChangeKind::Deleted,
            }),
            Some(y) if x != y => out.push(PendingChange {
                kind,
                id: id.clone(),
                change: ChangeKind::Updated,
            }),
            _ => {}
        }
    }
    for id in b.keys().filter(|id| !a.contains_key(*id)) {
        out.push(PendingChange {
            kind,
            id: id.clone(),
            change: ChangeKind::Created,
        });
    }
}

/// The objects that differ from `a` to `b`, sorted.
pub fn diff(a: &PolicySet, b: &PolicySet) -> Vec<PendingChange> {
    let mut out = Vec::new();
    diff_map(
        ObjectKind::LabelGroup,
        &a.label_groups,
        &b.label_groups,
        &mut out,
    );
    diff_map(ObjectKind::Service, &a.services, &b.services, &mut out);
    diff_map(ObjectKind::IpList, &a.ip_lists, &b.ip_lists, &mut out);
    diff_map(ObjectKind::RuleSet, &a.rule_sets, &b.rule_sets, &mut out);
    diff_map(
        ObjectKind::EnforcementBoundary,
        &a.boundaries,
        &b.boundaries,
        &mut out,
    );
    out.sort();
    out
}

/// The workloads whose compiled rules differ between two policy sets.
///
/// One engine is built from `before` and updated to `after` with the objects
/// that differ: the incremental update names exactly the workloads whose
/// compiled policy changed (a property test holds it to a full recompute).
/// Building a second engine from `after` and comparing every workload's
/// policy, as this did before, doubled a provision's planning cost.
pub fn affected(estate: &Estate, before: &PolicySet, after: &PolicySet) -> BTreeSet<Id> {
    let changes: Vec<Change> = diff(before, after)
        .into_iter()
        .filter_map(|c| match c.kind {
            ObjectKind::LabelGroup => Some(Change::LabelGroup(c.id)),
            ObjectKind::Service => Some(Change::Service(c.id)),
            ObjectKind::IpList => Some(Change::IpList(c.id)),
            ObjectKind::RuleSet => Some(Change::RuleSet(c.id)),
            ObjectKind::EnforcementBoundary => Some(Change::Boundary(c.id)),
            // Not part of a policy set: `diff` never reports them.
            ObjectKind::Label | ObjectKind::Workload => None,
        })
        .collect();
    if changes.is_empty() {
        return BTreeSet::new();
    }
    let mut engine = Engine::new(estate.clone(), before.clone());
    engine.update(&changes, |_, policy| *policy = after.clone())
}

fn copy_object(kind: ObjectKind, id: &Id, from: &PolicySet, to: &mut PolicySet) {
    fn one<T: Clone>(id: &Id, from: &BTreeMap<Id, T>, to: &mut BTreeMap<Id, T>) {
        match from.get(id) {
            Some(x) => {
                to.insert(id.clone(), x.clone());
            }
            None => {
                to.remove(id);
            }
        }
    }
    match kind {
        ObjectKind::LabelGroup => one(id, &from.label_groups, &mut to.label_groups),
        ObjectKind::Service => one(id, &from.services, &mut to.services),
        ObjectKind::IpList => one(id, &from.ip_lists, &mut to.ip_lists),
        ObjectKind::RuleSet => one(id, &from.rule_sets, &mut to.rule_sets),
        ObjectKind::EnforcementBoundary => one(id, &from.boundaries, &mut to.boundaries),
        ObjectKind::Label | ObjectKind::Workload => {}
    }
}

/// The live estate, the draft, and every version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// Labels and workloads (not versioned).
    pub estate: Estate,
    /// What admins edit.
    pub draft: PolicySet,
    /// Provisioned versions, oldest first (number = position + 1).
    pub versions: Vec<Version>,
}

impl Store {
    /// The active policy (empty before the first provision).
    pub fn active(&self) -> PolicySet {
        self.versions
            .last()
            .map(|v| v.policy.clone())
            .unwrap_or_default()
    }

    /// The active version number (0 before the first provision).
    pub fn active_version(&self) -> u64 {
        self.versions.len() as u64
    }

    /// What the draft changes relative to the active version.
    pub fn pending(&self) -> Vec<PendingChange> {
        diff(&self.active(), &self.draft)
    }

    /// The workloads a provision would change, computed before it happens.
    pub fn impact(&self) -> BTreeSet<Id> {
        affected(&self.estate, &self.active(), &self.draft)
    }

    /// Drops pending changes: all of them (`None`) or the chosen objects.
    pub fn revert(&mut self, which: Option<&[(ObjectKind, Id)]>) -> Result<usize, VersionError> {
        let active = self.active();
        let pending = self.pending();
        let chosen: Vec<(ObjectKind, Id)> = match which {
            None => pending.iter().map(|p| (p.kind, p.id.clone())).collect(),
            Some(list) => {
                for (kind, id) in list {
                    if !pending.iter().any(|p| p.kind == *kind && &p.id == id) {
                        return Err(VersionError::NotPending {
                            kind: *kind,
                            id: id.clone(),
                        });
                    }
                }
                list.to_vec()
            }
        };
        for (kind, id) in &chosen {
            copy_object(*kind, id, &active, &mut self.draft);
        }
        Ok(chosen.len())
    }

    /// Checks that every pending change lies inside a scoped role's scope: only
    /// rulesets can, and only when both their active and draft forms do.
    pub fn check_scope(&self, scope: &[Actor]) -> Result<(), VersionError> {
        let active = self.active();
        let outside: Vec<PendingChange> = self
            .pending()
            .into_iter()
            .filter(|p| {
                p.kind != ObjectKind::RuleSet
                    || [active.rule_sets.get(&p.id), self.draft.rule_sets.get(&p.id)]
                        .into_iter()
                        .flatten()
                        .any(|rs| !rule_set_within_scope(rs, scope))
            })
            .collect();
        if outside.is_empty() {
            Ok(())
        } else {
            Err(VersionError::OutsideScope(outside))
        }
    }

    /// Makes the draft the next active version.
    pub fn provision(
        &mut self,
        author: &str,
        note: &str,
        time_ms: u64,
    ) -> Result<&Version, VersionError> {
        let changes = self.pending();
        if changes.is_empty() {
            return Err(VersionError::NothingPending);
        }
        validate(&self.estate, &self.draft).map_err(VersionError::Invalid)?;
        let affected_workloads = self.impact();
        self.push(
            self.draft.clone(),
            author,
            note,
            time_ms,
            changes,
            affected_workloads,
        );
        self.versions.last().ok_or(VersionError::NothingPending)
    }

    /// A new version equal to version `to`; the draft becomes it too.
    pub fn rollback(
        &mut self,
        to: u64,
        author: &str,
        note: &str,
        time_ms: u64,
    ) -> Result<&Version, VersionError> {
        let target = self
            .versions
            .get((to as usize).wrapping_sub(1))
            .filter(|_| to >= 1)
            .ok_or(VersionError::NoSuchVersion(to))?
            .policy
            .clone();
        let active = self.active();
        let changes = diff(&active, &target);
        let affected_workloads = affected(&self.estate, &active, &target);
        self.draft = target.clone();
        self.push(target, author, note, time_ms, changes, affected_workloads);
        self.versions.last().ok_or(VersionError::NoSuchVersion(to))
    }

    /// The objects that differ from version `a` to version `b` (0 = empty policy).
    pub fn diff_versions(&self, a: u64, b: u64) -> Result<Vec<PendingChange>, VersionError> {
        Ok(diff(&self.version_policy(a)?, &self.version_policy(b)?))
    }

    fn version_policy(&self, n: u64) -> Result<PolicySet, VersionError> {
        if n == 0 {
            return Ok(PolicySet::default());
        }
        self.versions
            .get(n as usize - 1)
            .map(|v| v.policy.clone())
            .ok_or(VersionError::NoSuchVersion(n))
    }

    fn push(
        &mut self,
        policy: PolicySet,
        author: &str,
        note: &str,
        time_ms: u64,
        changes: Vec<PendingChange>,
        affected_workloads: BTreeSet<Id>,
    ) {
        let number = self.versions.len() as u64 + 1;
        self.versions.push(Version {
            number,
            policy,
            author: author.to_string(),
            note: note.to_string(),
            time_ms,
            changes,
            affected_workloads,
        });
    }
}
