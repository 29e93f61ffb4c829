//! Provisioning: pending changes, impact, provision, revert, versions, restore.
//!
//! A provision is one Raft command: it copies the chosen draft objects over the
//! active ones, records what changed under the new version number, and carries
//! the affected workloads, guarded by the store epoch so that a draft edited
//! meanwhile makes it plan again rather than provision something nobody saw.

use crate::transact;
use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::objects::{readable_json, space_of, Params};
use super::spec::{many, one, Api, Op};
use super::{answer_of, collection, no_content, values, Ctx, CtxExt, Shared};
use crate::docs::HrefJson;
use crate::error::ApiError;
use crate::rbac::Action;
use sc_store::db::Txn;
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::record::{decode, Record};
use sc_store::time::iso8601;
use sc_store::world::{load_raw, world_of, Raw, MAX_OBJECTS, POLICY_KINDS};

/// A provisioned version's metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionDoc {
    /// 1, 2, ...
    pub number: u64,
    /// The `update_description`.
    pub note: String,
    /// Who provisioned (href).
    pub author: String,
    /// When (ms).
    pub time_ms: u64,
    /// Changed objects per kind.
    pub object_counts: BTreeMap<String, u64>,
    /// How many workloads' rules changed.
    pub workloads_affected: u64,
    /// The version this one restored, for rollbacks.
    pub restored_from: Option<u64>,
}

/// A unit of provisioning: a top-level policy object (a ruleset with its rules).
type Unit = (Kind, Id);
/// The objects of each unit, by (kind, id), with their docs (metadata dropped).
type Units = BTreeMap<Unit, UnitObjects>;
/// One unit's objects: (kind, id) → (doc, raw record).
type UnitObjects = BTreeMap<(Kind, Id), (Value, Vec<u8>)>;

fn unit_of(kind: Kind, id: &str) -> Unit {
    match kind {
        Kind::SecRule | Kind::DenyRule => (
            Kind::RuleSet,
            id.split('/').next().unwrap_or(id).to_string(),
        ),
        k => (k, id.to_string()),
    }
}

fn units(raw: &Raw) -> Result<Units, ApiError> {
    let mut out = Units::new();
    for ((kind, id), bytes) in raw {
        let rec: Record<Value> = decode(bytes)?;
        out.entry(unit_of(*kind, id))
            .or_default()
            .insert((*kind, id.clone()), (rec.doc, bytes.clone()));
    }
    Ok(out)
}

fn same(a: Option<&UnitObjects>, b: Option<&UnitObjects>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, (va, _)), (kb, (vb, _)))| ka == kb && va == vb)
        }
        _ => false,
    }
}

/// `create`, `update` or `delete` for each unit that differs from `from` to `to`.
fn diff(from: &Units, to: &Units) -> BTreeMap<Unit, &'static str> {
    from.keys()
        .chain(to.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|u| !same(from.get(*u), to.get(*u)))
        .map(|u| {
            let how = match (from.contains_key(u), to.contains_key(u)) {
                (false, _) => "create",
                (_, false) => "delete",
                _ => "update",
            };
            (u.clone(), how)
        })
        .collect()
}

/// Draft, active and estate, read at one point (guarded by the epoch revision).
struct Snapshot {
    epoch: Option<u64>,
    version: (u64, Option<u64>),
    draft: Units,
    active: Units,
    active_raw: Raw,
    estate_raw: Raw,
}

async fn snapshot(s: &Shared) -> Result<Snapshot, ApiError> {
    let epoch = s.db.rev(keys::EPOCH).await?;
    let version = match s.db.get::<u64>(keys::VERSION).await? {
        Some(v) => (v.value, Some(v.rev)),
        None => (0, None),
    };
    let draft_raw = load_raw(&s.db, Space::Draft, &POLICY_KINDS).await?;
    let active_raw = load_raw(&s.db, Space::Active, &POLICY_KINDS).await?;
    let estate_raw = load_raw(&s.db, Space::Live, &[Kind::Label, Kind::Workload]).await?;
    Ok(Snapshot {
        epoch,
        version,
        draft: units(&draft_raw)?,
        active: units(&active_raw)?,
        active_raw,
        estate_raw,
    })
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ChangeSubset {
    #[serde(default)]
    label_groups: Vec<HrefJson>,
    #[serde(default)]
    services: Vec<HrefJson>,
    #[serde(default)]
    ip_lists: Vec<HrefJson>,
    #[serde(default)]
    rule_sets: Vec<HrefJson>,
    #[serde(default)]
    enforcement_boundaries: Vec<HrefJson>,
}

impl ChangeSubset {
    fn units(&self) -> Result<Vec<Unit>, ApiError> {
        let mut out = Vec::new();
        for (field, list, kind) in [
            ("label_groups", &self.label_groups, Kind::LabelGroup),
            ("services", &self.services, Kind::Service),
            ("ip_lists", &self.ip_lists, Kind::IpList),
            ("rule_sets", &self.rule_sets, Kind::RuleSet),
            (
                "enforcement_boundaries",
                &self.enforcement_boundaries,
                Kind::Boundary,
            ),
        ] {
            for (n, h) in list.iter().enumerate() {
                match keys::parse_href(&h.href) {
                    Some((k, id)) if k == kind => out.push((k, id)),
                    _ => {
                        return Err(ApiError::reference(
                            &format!("change_subset.{field}[{n}]"),
                            format!("{:?} is not a {field} href", h.href),
                        ))
                    }
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProvisionIn {
    update_description: String,
    #[serde(default)]
    change_subset: Option<ChangeSubset>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SubsetIn {
    #[serde(default)]
    change_subset: Option<ChangeSubset>,
}

/// The pending units to act on: all, or the subset (each must be pending).
fn chosen(
    pending: &BTreeMap<Unit, &'static str>,
    subset: &Option<ChangeSubset>,
) -> Result<Vec<Unit>, ApiError> {
    match subset {
        None => Ok(pending.keys().cloned().collect()),
        Some(sub) => {
            let units = sub.units()?;
            for u in &units {
                if !pending.contains_key(u) {
                    return Err(ApiError::invalid(
                        "not_pending",
                        format!(
                            "change_subset: {} has no pending change",
                            keys::href(Space::Draft, u.0, &u.1)
                        ),
                    ));
                }
            }
            Ok(units)
        }
    }
}

fn rs_model(units: &Units, u: &Unit) -> Option<sc_policy::model::RuleSet> {
    let objs = units.get(u)?;
    let w = world_of(objs.iter().map(|(k, (_, b))| (k, b))).ok()?;
    w.policy.rule_sets.get(&u.1).cloned()
}

/// Refuses when some chosen change is outside what the caller may provision.
fn check_provision(ctx: &Ctx, snap: &Snapshot, chosen: &[Unit]) -> Result<(), ApiError> {
    let outside: Vec<String> = chosen
        .iter()
        .filter(|u| {
            let forms: Vec<_> = [rs_model(&snap.draft, u), rs_model(&snap.active, u)]
                .into_iter()
                .flatten()
                .collect();
            !ctx.who
                .may_provision(u.0 == Kind::RuleSet, &forms.iter().collect::<Vec<_>>())
        })
        .map(|u| keys::href(Space::Draft, u.0, &u.1))
        .collect();
    if outside.is_empty() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "these pending changes are outside what you may provision: {}",
            outside.join(", ")
        )))
    }
}

/// The active set after applying `chosen` units from `from`.
fn apply_units(active: &Raw, from: &Units, chosen: &[Unit]) -> Raw {
    let set: BTreeSet<&Unit> = chosen.iter().collect();
    let mut out: Raw = active
        .iter()
        .filter(|((k, id), _)| !set.contains(&unit_of(*k, id)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for u in chosen {
        if let Some(objs) = from.get(u) {
            for (k, (_, bytes)) in objs {
                out.insert(k.clone(), bytes.clone());
            }
        }
    }
    out
}

struct Plan {
    affected: BTreeSet<Id>,
}

fn plan(snap: &Snapshot, new_active: &Raw) -> Result<Plan, ApiError> {
    let before = world_of(snap.estate_raw.iter().chain(snap.active_raw.iter()))?;
    let after = world_of(snap.estate_raw.iter().chain(new_active.iter()))?;
    if let Err(errors) = sc_policy::validate::validate(&after.estate, &after.policy) {
        return Err(ApiError::validation(&errors));
    }
    let affected = sc_policy::version::affected(&after.estate, &before.policy, &after.policy);
    Ok(Plan { affected })
}

/// Writes version `n`: active objects of the chosen units, their history, metadata.
#[allow(clippy::too_many_arguments)]
fn write_version(
    txn: &mut Txn,
    ctx: &Ctx,
    n: u64,
    note: &str,
    chosen: &[Unit],
    from: &Units,
    active: &Units,
    affected: &BTreeSet<Id>,
    restored_from: Option<u64>,
) -> Result<VersionDoc, ApiError> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for u in chosen {
        *counts.entry(u.0.segment().to_string()).or_default() += 1;
        let empty = BTreeMap::new();
        let new = from.get(u).unwrap_or(&empty);
        let old = active.get(u).unwrap_or(&empty);
        for (k, id) in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
            let key = keys::obj(Space::Active, *k, id);
            match new.get(&(*k, id.clone())) {
                Some((_, bytes)) => {
                    txn.put_raw(key, bytes.clone());
                    txn.put_raw(keys::version_obj(n, *k, id), bytes.clone());
                }
                None => {
                    txn.delete(key);
                    txn.put_raw(keys::version_obj(n, *k, id), b"null".to_vec());
                }
            }
        }
    }
    let ids: Vec<&Id> = affected.iter().collect();
    for (i, chunk) in ids.chunks(1000).enumerate() {
        txn.put(keys::version_affected(n, i), &chunk)?;
    }
    let doc = VersionDoc {
        number: n,
        note: note.to_string(),
        author: ctx.who.href(),
        time_ms: ctx.now,
        object_counts: counts,
        workloads_affected: affected.len() as u64,
        restored_from,
    };
    txn.put(keys::version(n), &doc)?;
    txn.put(keys::VERSION.to_vec(), &n)?;
    Ok(doc)
}

/// A provisioned version as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Version {
    href: String,
    version: u64,
    /// The provision's `update_description`.
    commit_message: String,
    /// How many workloads' rules changed.
    workloads_affected: u64,
    /// Changed objects per kind.
    object_counts: BTreeMap<String, u64>,
    created_at: String,
    created_by: HrefJson,
    /// The version a rollback restored.
    restored_from: Option<u64>,
}

impl Version {
    fn of(v: &VersionDoc) -> Version {
        Version {
            href: format!("/orgs/{}/sec_policy/{}", keys::ORG, v.number),
            version: v.number,
            commit_message: v.note.clone(),
            workloads_affected: v.workloads_affected,
            object_counts: v.object_counts.clone(),
            created_at: iso8601(v.time_ms),
            created_by: HrefJson {
                href: v.author.clone(),
            },
            restored_from: v.restored_from,
        }
    }
}

/// One version with the objects it changed and the workloads it affected.
#[derive(Debug, Serialize, ToSchema)]
struct VersionDetail {
    #[serde(flatten)]
    version: Version,
    changes: Vec<VersionChange>,
    affected_workloads: Vec<HrefJson>,
}

/// An object a version changed (`deleted`: removed from the active policy).
#[derive(Debug, Serialize, ToSchema)]
struct VersionChange {
    href: String,
    deleted: bool,
}

/// A pending change of the draft.
#[derive(Debug, Serialize, ToSchema)]
struct PendingChange {
    href: String,
    /// `create`, `update` or `delete`.
    update_type: &'static str,
}

/// Pending changes by object kind (`rule_sets`, `services`, ...); kinds
/// without changes are left out.
#[derive(Debug, Serialize, ToSchema)]
struct Pending(BTreeMap<&'static str, Vec<PendingChange>>);

/// What a provision would change.
#[derive(Debug, Serialize, ToSchema)]
struct Impact {
    workloads_affected: usize,
    /// Their hrefs.
    workloads: Vec<String>,
}

async fn provision(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Label, &p, true)?;
    let input: ProvisionIn = ctx.parse()?;
    crate::docs::free_text("update_description", Some(input.update_description.clone()))?;
    let (doc, rev) = transact!(&s.db, async {
        let snap = snapshot(&s).await?;
        let pending = diff(&snap.active, &snap.draft);
        let chosen = chosen(&pending, &input.change_subset)?;
        if chosen.is_empty() {
            return Err(ApiError::invalid(
                "nothing_to_provision",
                "the draft has no pending changes",
            ));
        }
        check_provision(&ctx, &snap, &chosen)?;
        let new_active = apply_units(&snap.active_raw, &snap.draft, &chosen);
        let plan = plan(&snap, &new_active)?;
        let n = snap.version.0 + 1;
        let mut txn = Txn::default();
        txn.expect(keys::EPOCH.to_vec(), snap.epoch);
        txn.expect(keys::VERSION.to_vec(), snap.version.1);
        let doc = write_version(
            &mut txn,
            &ctx,
            n,
            &input.update_description,
            &chosen,
            &snap.draft,
            &snap.active,
            &plan.affected,
            None,
        )?;
        ctx.audit(&mut txn, &s, &format!("/orgs/{}/sec_policy/{n}", keys::ORG))?;
        Ok((txn, doc))
    })?;
    answer_of(StatusCode::CREATED, &Version::of(&doc), rev)
}

/// Policy reads need a role (any: scoped ones see their scope's part).
fn needs_a_role(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.who.may(Action::ReadObjects) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "reading the policy needs a role; ask an owner to give your user one",
        ))
    }
}

/// Of these workloads, those the caller may read (a scoped user sees the
/// workloads of its scope; a workload deleted since is left out).
async fn readable_workloads(
    s: &Shared,
    ctx: &Ctx,
    ids: impl IntoIterator<Item = Id>,
) -> Result<Vec<Id>, ApiError> {
    if ctx.who.reads_everything() {
        return Ok(ids.into_iter().collect());
    }
    let mut out = Vec::new();
    for id in ids {
        let w =
            s.db.get::<Record<sc_store::objects::WorkloadDoc>>(&keys::obj(
                Space::Live,
                Kind::Workload,
                &id,
            ))
            .await?;
        if w.is_some_and(|w| ctx.who.may_read_workload(&w.value.doc.labels)) {
            out.push(id);
        }
    }
    Ok(out)
}

async fn pending(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Label, &p, false)?;
    ctx.allow_query(&[])?;
    needs_a_role(&ctx)?;
    let rev = s.db.revision().await?;
    let snap = snapshot(&s).await?;
    let mut out = BTreeMap::new();
    for ((kind, id), how) in diff(&snap.active, &snap.draft) {
        // A ruleset's change shows only to those who may read it (as drafted
        // or as active).
        if kind == Kind::RuleSet {
            let mut readable = false;
            for units in [&snap.draft, &snap.active] {
                if let Some((_, bytes)) = units
                    .get(&(kind, id.clone()))
                    .and_then(|u| u.get(&(kind, id.clone())))
                {
                    readable |= readable_json(&ctx.who, Space::Draft, kind, &id, bytes)?.is_some();
                }
            }
            if !readable {
                continue;
            }
        }
        out.entry(kind.segment())
            .or_insert_with(Vec::new)
            .push(PendingChange {
                href: keys::href(Space::Draft, kind, &id),
                update_type: how,
            });
    }
    answer_of(StatusCode::OK, &Pending(out), rev)
}

async fn impact(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Label, &p, false)?;
    needs_a_role(&ctx)?;
    let input: SubsetIn = if ctx.body.is_empty() {
        SubsetIn::default()
    } else {
        ctx.parse()?
    };
    let rev = s.db.revision().await?;
    let snap = snapshot(&s).await?;
    let pending = diff(&snap.active, &snap.draft);
    let chosen = chosen(&pending, &input.change_subset)?;
    let new_active = apply_units(&snap.active_raw, &snap.draft, &chosen);
    let plan = plan(&snap, &new_active)?;
    let hrefs: Vec<String> = readable_workloads(&s, &ctx, plan.affected.iter().cloned())
        .await?
        .iter()
        .map(|id| keys::href(Space::Live, Kind::Workload, id))
        .collect();
    answer_of(
        StatusCode::OK,
        &Impact {
            workloads_affected: hrefs.len(),
            workloads: hrefs,
        },
        rev,
    )
}

/// Sets the draft of the given units to their content in `to` (revert, restore),
/// keeping the name index in step.
fn set_draft(txn: &mut Txn, chosen: &[Unit], draft: &Units, to: &Units) -> Result<(), ApiError> {
    let empty = BTreeMap::new();
    for u in chosen {
        let cur = draft.get(u).unwrap_or(&empty);
        let new = to.get(u).unwrap_or(&empty);
        for (k, id) in cur.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
            let key = keys::obj(Space::Draft, *k, id);
            let name = |m: &UnitObjects| {
                m.get(&(*k, id.clone()))
                    .and_then(|(v, _)| v.get("name").and_then(Value::as_str).map(str::to_string))
            };
            if let Some(old) = name(cur) {
                txn.delete(keys::name(Space::Draft, *k, &old));
            }
            match new.get(&(*k, id.clone())) {
                Some((_, bytes)) => {
                    txn.put_raw(key, bytes.clone());
                    if let Some(n) = name(new) {
                        if *k != Kind::SecRule && *k != Kind::DenyRule {
                            txn.put(keys::name(Space::Draft, *k, &n), id)?;
                        }
                    }
                }
                None => {
                    txn.delete(key);
                }
            }
        }
    }
    Ok(())
}

async fn revert(
    s: &Shared,
    ctx: &Ctx,
    subset: Option<ChangeSubset>,
) -> Result<(usize, u64), ApiError> {
    transact!(&s.db, async {
        let snap = snapshot(s).await?;
        let pending = diff(&snap.active, &snap.draft);
        let chosen = chosen(&pending, &subset)?;
        if chosen.is_empty() {
            return Err(ApiError::invalid(
                "nothing_to_revert",
                "the draft has no pending changes",
            ));
        }
        check_provision(ctx, &snap, &chosen)?;
        let mut txn = Txn::default();
        txn.expect(keys::EPOCH.to_vec(), snap.epoch);
        set_draft(&mut txn, &chosen, &snap.draft, &snap.active)?;
        ctx.audit(&mut txn, s, &format!("{} pending changes", chosen.len()))?;
        Ok((txn, chosen.len()))
    })
}

async fn revert_all(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    space_of(Kind::Label, &p, true)?;
    let (_, rev) = revert(&s, &ctx.0, None).await?;
    Ok(no_content(rev))
}

async fn revert_some(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    space_of(Kind::Label, &p, true)?;
    let input: SubsetIn = ctx.0.parse()?;
    let subset = input.change_subset.ok_or_else(|| {
        ApiError::invalid(
            "missing_field",
            "change_subset: required (or DELETE sec_policy/pending to revert everything)",
        )
    })?;
    let (_, rev) = revert(&s, &ctx.0, Some(subset)).await?;
    Ok(no_content(rev))
}

async fn versions(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Label, &p, false)?;
    ctx.allow_query(VERSIONS.accepts())?;
    needs_a_role(&ctx)?;
    let (vs, rev) = s.db.scan::<VersionDoc>(keys::VERSIONS, MAX_OBJECTS).await?;
    let items = values(vs.iter().rev().map(|v| Version::of(&v.value)))?;
    collection(&ctx, &s, items, rev)
}

fn version_param(p: &std::collections::HashMap<String, String>) -> Result<u64, ApiError> {
    let v = p.get("pversion").cloned().unwrap_or_default();
    v.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::not_found(format!("policy version {v:?}")))
}

async fn version(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Label, &p, false)?;
    ctx.allow_query(&[])?;
    needs_a_role(&ctx)?;
    let n = version_param(&p)?;
    let rev = s.db.revision().await?;
    let v =
        s.db.get::<VersionDoc>(&keys::version(n))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("policy version {n}")))?;
    let prefix = keys::version_objs(n);
    let mut changes = Vec::new();
    for (key, bytes) in s.db.raw_scan(&prefix, MAX_OBJECTS).await? {
        if let Some((kind, id)) = keys::split_kind_id(&keys::id_of(&key, &prefix)) {
            changes.push(VersionChange {
                href: keys::href(Space::Active, kind, &id),
                deleted: bytes == b"null",
            });
        }
    }
    let mut affected = Vec::new();
    for (_, bytes) in
        s.db.raw_scan(&keys::version_affected_prefix(n), MAX_OBJECTS)
            .await?
    {
        let ids: Vec<Id> = decode(&bytes)?;
        affected.extend(
            readable_workloads(&s, &ctx, ids)
                .await?
                .iter()
                .map(|id| HrefJson {
                    href: keys::href(Space::Live, Kind::Workload, id),
                }),
        );
    }
    let detail = VersionDetail {
        version: Version::of(&v.value),
        changes,
        affected_workloads: affected,
    };
    answer_of(StatusCode::OK, &detail, rev)
}

/// One object a version changed: the active policy's view of it just before
/// and just after (absent where it did not exist).
#[derive(Debug, Serialize, ToSchema)]
struct ModifiedObject {
    href: String,
    /// `create`, `update` or `delete`.
    update_type: &'static str,
    #[schema(value_type = Option<Object>)]
    before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    after: Option<Value>,
}

/// A version's diff, object by object, limited to what the caller may read (a
/// rule goes with its ruleset).
async fn modified_objects(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Label, &p, false)?;
    ctx.allow_query(&[])?;
    needs_a_role(&ctx)?;
    let n = version_param(&p)?;
    let rev = s.db.revision().await?;
    if s.db.get::<VersionDoc>(&keys::version(n)).await?.is_none() {
        return Err(ApiError::not_found(format!("policy version {n}")));
    }
    let before = policy_at(&s, n - 1).await?;
    let changed = version_changes(&s, n).await?;
    let mut after = before.clone();
    apply_changes(&mut after, changed.clone());
    // What the caller may read of one side (a rule only with its ruleset).
    let view = |raw: &Raw, kind: Kind, id: &str| -> Result<Option<Value>, ApiError> {
        let Some(bytes) = raw.get(&(kind, id.to_string())) else {
            return Ok(None);
        };
        if matches!(kind, Kind::SecRule | Kind::DenyRule) {
            let rs = id.split('/').next().unwrap_or(id).to_string();
            let parent = raw.get(&(Kind::RuleSet, rs.clone()));
            let readable = match parent {
                Some(b) => readable_json(&ctx.who, Space::Active, Kind::RuleSet, &rs, b)?,
                None => None,
            };
            if readable.is_none() {
                return Ok(None);
            }
        }
        readable_json(&ctx.who, Space::Active, kind, id, bytes)
    };
    let mut out = Vec::new();
    for ((kind, id), _) in changed {
        let (was, is) = (view(&before, kind, &id)?, view(&after, kind, &id)?);
        let update_type = match (&was, &is) {
            (None, None) => continue,
            (None, Some(_)) => "create",
            (Some(_), None) => "delete",
            (Some(_), Some(_)) => "update",
        };
        out.push(ModifiedObject {
            href: keys::href(Space::Active, kind, &id),
            update_type,
            before: was,
            after: is,
        });
    }
    answer_of(StatusCode::OK, &out, rev)
}

/// The active policy as of version `k`, rebuilt from each version's changes.
/// What one version did: each object it changed, with its new record, or
/// `None` where it deleted the object.
type Changes = Vec<((Kind, Id), Option<Vec<u8>>)>;

/// The changes of version `n`.
async fn version_changes(s: &Shared, n: u64) -> Result<Changes, ApiError> {
    let prefix = keys::version_objs(n);
    Ok(s.db
        .raw_scan(&prefix, MAX_OBJECTS)
        .await?
        .into_iter()
        .filter_map(|(key, bytes)| {
            let kid = keys::split_kind_id(&keys::id_of(&key, &prefix))?;
            Some((kid, (bytes != b"null").then_some(bytes)))
        })
        .collect())
}

/// Applies one version's changes to a policy.
fn apply_changes(raw: &mut Raw, changes: Changes) {
    for (kid, bytes) in changes {
        match bytes {
            Some(b) => raw.insert(kid, b),
            None => raw.remove(&kid),
        };
    }
}

async fn policy_at(s: &Shared, k: u64) -> Result<Raw, ApiError> {
    let mut raw = Raw::new();
    for n in 1..=k {
        apply_changes(&mut raw, version_changes(s, n).await?);
    }
    // Built-in objects exist in every version.
    for (kind, id) in [
        (Kind::Service, sc_store::objects::ALL_SERVICES_ID),
        (Kind::IpList, sc_store::objects::ANY_IP_LIST_ID),
    ] {
        if let Some((bytes, _)) = s.db.raw(&keys::obj(Space::Active, kind, id)).await? {
            raw.entry((kind, id.to_string())).or_insert(bytes);
        }
    }
    Ok(raw)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RestoreIn {
    #[serde(default)]
    update_description: Option<String>,
}

async fn restore(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Label, &p, true)?;
    if !ctx.who.may(Action::Rollback) {
        return Err(ApiError::forbidden(
            "restoring an old version needs owner or admin",
        ));
    }
    let k = version_param(&p)?;
    let input: RestoreIn = if ctx.body.is_empty() {
        RestoreIn::default()
    } else {
        ctx.parse()?
    };
    crate::docs::free_text("update_description", input.update_description.clone())?;
    let (doc, rev) = transact!(&s.db, async {
        let snap = snapshot(&s).await?;
        if k > snap.version.0 {
            return Err(ApiError::not_found(format!("policy version {k}")));
        }
        let target_raw = policy_at(&s, k).await?;
        let target = units(&target_raw)?;
        let changed: Vec<Unit> = diff(&snap.active, &target).into_keys().collect();
        let redraft: Vec<Unit> = diff(&snap.draft, &target).into_keys().collect();
        if changed.is_empty() && redraft.is_empty() {
            return Err(ApiError::invalid(
                "nothing_to_provision",
                format!("the active policy already equals version {k}"),
            ));
        }
        let plan = plan(&snap, &target_raw)?;
        let n = snap.version.0 + 1;
        let note = input
            .update_description
            .clone()
            .unwrap_or_else(|| format!("restore version {k}"));
        let mut txn = Txn::default();
        txn.expect(keys::EPOCH.to_vec(), snap.epoch);
        txn.expect(keys::VERSION.to_vec(), snap.version.1);
        let doc = write_version(
            &mut txn,
            &ctx,
            n,
            &note,
            &changed,
            &target,
            &snap.active,
            &plan.affected,
            Some(k),
        )?;
        set_draft(&mut txn, &redraft, &snap.draft, &target)?;
        ctx.audit(&mut txn, &s, &format!("/orgs/{}/sec_policy/{n}", keys::ORG))?;
        Ok((txn, doc))
    })?;
    answer_of(StatusCode::CREATED, &Version::of(&doc), rev)
}

const VERSIONS: Op = Op::new("List provisioned versions, newest first.")
    .answer(200, many::<Version>())
    .query(&["max_results"]);

pub(super) fn api() -> Api {
    let b = "/api/v2/orgs/{org}/sec_policy";
    Api::default()
        .at(Method::GET, b, VERSIONS, versions)
        .at(
            Method::POST,
            b,
            Op::new("Provision the draft (all, or change_subset) as the next version.")
                .body(one::<ProvisionIn>())
                .answer(201, one::<Version>()),
            provision,
        )
        .at(
            Method::GET,
            &format!("{b}/pending"),
            Op::new("Pending changes of the draft.").answer(200, one::<Pending>()),
            pending,
        )
        .at(
            Method::DELETE,
            &format!("{b}/pending"),
            Op::new("Revert every pending change."),
            revert_all,
        )
        .at(
            Method::PUT,
            &format!("{b}/delete"),
            Op::new("Revert the pending changes in change_subset.").body(one::<SubsetIn>()),
            revert_some,
        )
        .at(
            Method::POST,
            &format!("{b}/impact"),
            Op::new(
                "Workloads a provision (all, or change_subset) would change; the body is optional.",
            )
            .body(one::<SubsetIn>())
            .answer(200, one::<Impact>()),
            impact,
        )
        .at(
            Method::GET,
            &format!("{b}/{{pversion}}"),
            Op::new("One version, its changes and affected workloads.")
                .answer(200, one::<VersionDetail>()),
            version,
        )
        .at(
            Method::GET,
            &format!("{b}/{{pversion}}/modified_objects"),
            Op::new("What one version changed, object by object: each as the active policy showed it before and after (limited to what the caller may read).")
                .answer(200, many::<ModifiedObject>()),
            modified_objects,
        )
        .at(
            Method::POST,
            &format!("{b}/{{pversion}}/restore"),
            Op::new("Roll back: a new version equal to this one; the body is optional.")
                .body(one::<RestoreIn>())
                .answer(201, one::<Version>()),
            restore,
        )
}
