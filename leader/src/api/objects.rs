//! Create, read, update, delete for the kinds that are one object each: labels,
//! label groups, services, IP lists, enforcement boundaries, workloads, pairing
//! profiles (and pairing keys). One generic implementation over [`Doc`].

use crate::transact;
use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{PartialSchema, ToSchema};

use super::spec::{many, one, refer, register, Api, Body, Op, Schemas};
use super::{answer, answer_of, collection, no_content, Ctx, CtxExt, Shared};
use crate::docs::*;
use crate::error::ApiError;
use crate::rbac::{Action, Principal};
use sc_store::db::Txn;
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::objects::*;
use sc_store::record::{encode, Meta, Record, RECORD_V};
use sc_store::time::iso8601;
use sc_store::world::{first_referrer, World, MAX_OBJECTS};

/// Path parameters, by name.
pub type Params = Path<HashMap<String, String>>;

/// Which space a request addresses: live kinds have one; policy kinds name
/// `draft` or `active` in the path, and only the draft is writable.
pub fn space_of(
    kind: Kind,
    params: &HashMap<String, String>,
    write: bool,
) -> Result<Space, ApiError> {
    if let Some(org) = params.get("org") {
        if org != &keys::ORG.to_string() {
            return Err(ApiError::not_found(format!("org {org}")));
        }
    }
    if !kind.provisioned() {
        return Ok(Space::Live);
    }
    match params.get("pversion").map(String::as_str) {
        Some("draft") => Ok(Space::Draft),
        Some("active") if !write => Ok(Space::Active),
        Some("active") => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "active_is_read_only",
            "the active policy changes only by provisioning; edit sec_policy/draft",
        )),
        Some(other) => Err(ApiError::not_found(format!(
            "policy version {other:?} (use draft or active)"
        ))),
        None => Ok(Space::Draft),
    }
}

/// The `{id}` path parameter, checked.
pub fn id_param(params: &HashMap<String, String>, name: &str) -> Result<Id, ApiError> {
    let id = params.get(name).cloned().unwrap_or_default();
    if !keys::valid_id(&id) {
        return Err(ApiError::not_found(format!("object {id:?}")));
    }
    Ok(id)
}

/// What every object's answer carries besides its fields.
#[derive(Serialize, ToSchema)]
struct ObjectMeta {
    href: String,
    /// ISO 8601.
    created_at: String,
    /// ISO 8601.
    updated_at: String,
    created_by: HrefJson,
    updated_by: HrefJson,
}

/// What a workload's answer adds: state the API does not take as input.
#[derive(Serialize, ToSchema)]
struct WorkloadState {
    /// Paired with a VEN.
    managed: bool,
    quarantined: bool,
    suspended: bool,
    /// The region whose members serve its VEN.
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
}

/// The schema of [`object_json`]'s answer for `D`: the fields of its input
/// type (which answers may extend, so without `additionalProperties: false`),
/// the metadata, and what the kind adds (a workload's state, a ruleset's rules).
pub fn object_schema<D: Doc>(out: &mut Schemas) -> Value {
    refer::<D::Input>(out);
    let mut fields = serde_json::to_value(D::Input::schema()).unwrap_or_default();
    if let Some(o) = fields.as_object_mut() {
        o.remove("additionalProperties");
    }
    let mut all = vec![fields, refer::<ObjectMeta>(out)];
    match D::KIND {
        Kind::Workload => all.push(refer::<WorkloadState>(out)),
        Kind::RuleSet => {
            // The input's inline `rules` (create only) are answered as objects.
            if let Some(p) = all[0]["properties"].as_object_mut() {
                p.remove("rules");
            }
            let rules = object_schema::<RuleDoc>(out);
            let deny = object_schema::<DenyRuleDoc>(out);
            all.push(json!({
                "type": "object",
                "required": ["rules", "deny_rules"],
                "properties": {
                    "rules": {"type": "array", "items": rules},
                    "deny_rules": {"type": "array", "items": deny},
                },
            }));
        }
        _ => {}
    }
    register(out, D::SCHEMA, json!({ "allOf": all }))
}

/// The schema of a PUT body for `D`: the input's fields, none required (the
/// fields given replace the object's, the others stay).
pub fn changes_schema<D: Doc>(out: &mut Schemas) -> Value {
    refer::<D::Input>(out);
    let mut fields = serde_json::to_value(D::Input::schema()).unwrap_or_default();
    if let Some(o) = fields.as_object_mut() {
        o.remove("required");
    }
    register(out, &format!("{}Changes", D::SCHEMA), fields)
}

/// An object as the API shows it: its fields, href and metadata.
pub fn object_json<D: Doc>(space: Space, id: &str, rec: &Record<D>) -> Value {
    let mut m: Map<String, Value> = rec.doc.to_json();
    m.insert("href".into(), json!(keys::href(space, D::KIND, id)));
    m.insert("created_at".into(), json!(iso8601(rec.meta.created_at)));
    m.insert("updated_at".into(), json!(iso8601(rec.meta.updated_at)));
    m.insert("created_by".into(), json!({"href": rec.meta.created_by}));
    m.insert("updated_by".into(), json!({"href": rec.meta.updated_by}));
    if D::KIND == Kind::Workload {
        if let Ok(w) = serde_json::from_value::<WorkloadDoc>(
            serde_json::to_value(&rec.doc).unwrap_or_default(),
        ) {
            m.insert("managed".into(), json!(w.managed));
            m.insert("quarantined".into(), json!(w.quarantined));
            m.insert("suspended".into(), json!(w.suspended));
            if let Some(r) = w.region {
                m.insert("region".into(), json!(r));
            }
        }
    }
    Value::Object(m)
}

fn labels_of<D: Doc>(doc: &D) -> Vec<Id> {
    doc.refs()
        .into_iter()
        .filter(|(k, _)| *k == Kind::Label)
        .map(|(_, id)| id)
        .collect()
}

/// A ruleset doc as the model (for scope checks), from any doc of that kind.
pub fn rule_set_model<D: Doc>(doc: &D) -> Option<sc_policy::model::RuleSet> {
    let d: RuleSetDoc = serde_json::from_value(serde_json::to_value(doc).ok()?).ok()?;
    Some(sc_policy::model::RuleSet {
        id: String::new(),
        name: d.name,
        enabled: d.enabled,
        scope: d.scope,
        rules: vec![],
        deny_rules: vec![],
    })
}

fn may_read<D: Doc>(who: &Principal, doc: &D) -> bool {
    match D::KIND {
        Kind::Workload => who.may_read_workload(&labels_of(doc)),
        Kind::RuleSet => rule_set_model(doc).is_some_and(|rs| who.may_read_rule_set(&rs)),
        _ => who.may(Action::ReadObjects),
    }
}

/// A stored record of any kind as the API shows it, or `None` when `who` may
/// not read it (for views that mix kinds, such as a version's changes). A
/// rule is judged by its own fields only; callers check its ruleset.
pub fn readable_json(
    who: &Principal,
    space: Space,
    kind: Kind,
    id: &str,
    bytes: &[u8],
) -> Result<Option<Value>, ApiError> {
    fn one<D: Doc>(
        who: &Principal,
        space: Space,
        id: &str,
        bytes: &[u8],
    ) -> Result<Option<Value>, ApiError> {
        let rec: Record<D> = sc_store::record::decode(bytes)?;
        Ok(may_read(who, &rec.doc).then(|| object_json(space, id, &rec)))
    }
    match kind {
        Kind::Label => one::<LabelDoc>(who, space, id, bytes),
        Kind::LabelGroup => one::<LabelGroupDoc>(who, space, id, bytes),
        Kind::Service => one::<ServiceDoc>(who, space, id, bytes),
        Kind::IpList => one::<IpListDoc>(who, space, id, bytes),
        Kind::RuleSet => one::<RuleSetDoc>(who, space, id, bytes),
        Kind::SecRule => one::<RuleDoc>(who, space, id, bytes),
        Kind::DenyRule => one::<DenyRuleDoc>(who, space, id, bytes),
        Kind::Boundary => one::<BoundaryDoc>(who, space, id, bytes),
        Kind::Workload => one::<WorkloadDoc>(who, space, id, bytes),
        Kind::PairingProfile => one::<PairingProfileDoc>(who, space, id, bytes),
    }
}

pub fn may_write<D: Doc>(who: &Principal, doc: &D) -> Result<(), ApiError> {
    let ok = match D::KIND {
        Kind::Workload | Kind::PairingProfile => who.may_write_workload(&labels_of(doc)),
        Kind::RuleSet => rule_set_model(doc).is_some_and(|rs| who.may_write_rule_set(&rs)),
        _ => who.may(Action::WriteObjects),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "your roles do not allow changing this {} (outside your scope or role)",
            D::KIND.segment()
        )))
    }
}

fn builtin(kind: Kind, id: &str) -> bool {
    (kind == Kind::Service && id == ALL_SERVICES_ID)
        || (kind == Kind::IpList && id == ANY_IP_LIST_ID)
}

/// Query parameters each kind filters on (plus `max_results`).
fn filters(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Label => &["key", "value", "max_results"],
        Kind::Workload => &[
            "name",
            "hostname",
            "labels",
            "managed",
            "online",
            "enforcement_mode",
            "max_results",
        ],
        _ => &["name", "max_results"],
    }
}

/// Whether an object's JSON passes the query's filters: `name`, `value`,
/// `hostname` match a part of the field; `labels` is Illumio's JSON list of
/// lists of label hrefs (any inner list all of whose labels the object has).
fn matches(ctx: &Ctx, obj: &Value) -> Result<bool, ApiError> {
    for (k, want) in &ctx.query {
        let field = obj.get(k);
        let ok = match k.as_str() {
            "max_results" => true,
            "name" | "value" | "hostname" => field
                .and_then(Value::as_str)
                .is_some_and(|s| s.to_lowercase().contains(&want.to_lowercase())),
            "labels" => {
                let sets: Vec<Vec<String>> = serde_json::from_str(want).map_err(|_| {
                    ApiError::query("labels: give a JSON list of lists of label hrefs")
                })?;
                let have: Vec<&str> = field
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|l| l.get("href").and_then(Value::as_str))
                            .collect()
                    })
                    .unwrap_or_default();
                sets.iter()
                    .any(|set| set.iter().all(|h| have.contains(&h.as_str())))
            }
            _ => match field {
                Some(Value::String(s)) => s == want,
                Some(Value::Bool(b)) => &b.to_string() == want,
                _ => false,
            },
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn list<D: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(D::KIND, &p, false)?;
    ctx.allow_query(filters(D::KIND))?;
    let prefix = keys::obj_prefix(space, D::KIND);
    let (objs, rev) = s.db.scan::<Record<D>>(&prefix, MAX_OBJECTS).await?;
    let mut items = Vec::new();
    for o in &objs {
        if !may_read(&ctx.who, &o.value.doc) {
            continue;
        }
        let v = object_json(space, &keys::id_of(&o.key, &prefix), &o.value);
        if matches(&ctx, &v)? {
            items.push(v);
        }
    }
    collection(&ctx, &s, items, rev)
}

async fn read<D: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(D::KIND, &p, false)?;
    ctx.allow_query(&[])?;
    let id = id_param(&p, "id")?;
    let key = keys::obj(space, D::KIND, &id);
    let rev = s.db.revision().await?;
    let o =
        s.db.get::<Record<D>>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(keys::href(space, D::KIND, &id)))?;
    if !may_read(&ctx.who, &o.value.doc) {
        return Err(ApiError::forbidden("this object is outside your scope"));
    }
    Ok(answer(
        StatusCode::OK,
        &object_json(space, &id, &o.value),
        rev,
    ))
}

/// Adds the name-index preconditions and puts for a (new or renamed) object.
pub async fn claim_name<D: Doc>(
    s: &Shared,
    txn: &mut Txn,
    space: Space,
    id: &str,
    old: Option<&D>,
    new: &D,
) -> Result<(), ApiError> {
    let old_name = old.and_then(|o| o.unique_name());
    let Some(name) = new.unique_name() else {
        return Ok(());
    };
    if old_name.as_deref() == Some(name.as_str()) {
        return Ok(());
    }
    let key = keys::name(space, D::KIND, &name);
    if s.db.rev(&key).await?.is_some() {
        return Err(ApiError::invalid(
            "name_in_use",
            format!(
                "name: another {} is already named {name:?}",
                D::KIND.segment()
            ),
        ));
    }
    txn.expect(key.clone(), None);
    txn.put(key, &id)?;
    if let Some(old) = old_name {
        txn.delete(keys::name(space, D::KIND, &old));
    }
    Ok(())
}

/// Plans a write of `doc` as object `id`: references, name, validation, audit.
pub async fn plan_put<D: Doc>(
    s: &Shared,
    ctx: &Ctx,
    space: Space,
    id: &str,
    refs: &Refs,
    old: Option<(&Record<D>, u64)>,
    doc: D,
) -> Result<(Txn, Record<D>), ApiError> {
    let mut txn = Txn::default();
    let mut world = World::default();
    resolve(&s.db, &refs.list, &mut txn, &mut world).await?;
    let key = keys::obj(space, D::KIND, id);
    txn.expect(key.clone(), old.map(|(_, rev)| rev));
    claim_name(s, &mut txn, space, id, old.map(|(r, _)| &r.doc), &doc).await?;
    let meta = match old {
        Some((r, _)) => Meta {
            updated_at: ctx.now,
            updated_by: ctx.who.href(),
            ..r.meta.clone()
        },
        None => Meta {
            created_at: ctx.now,
            updated_at: ctx.now,
            created_by: ctx.who.href(),
            updated_by: ctx.who.href(),
        },
    };
    let rec = Record {
        v: RECORD_V,
        meta,
        doc,
    };
    world.add(D::KIND, id, &encode(&rec)?)?;
    world.check(&format!("{}/{id}", D::KIND.segment()))?;
    txn.put(key, &rec)?;
    ctx.audit(&mut txn, s, &keys::href(space, D::KIND, id))?;
    Ok((txn, rec))
}

async fn create<D: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(D::KIND, &p, true)?;
    let mut refs = Refs::default();
    let doc = D::from_input(ctx.parse()?, &mut refs)?;
    may_write(&ctx.who, &doc)?;
    let id = keys::new_id();
    let (rec, rev) = transact!(&s.db, async {
        plan_put(&s, &ctx, space, &id, &refs, None, doc.clone()).await
    })?;
    Ok(answer(
        StatusCode::CREATED,
        &object_json(space, &id, &rec),
        rev,
    ))
}

/// Overlays a partial JSON body on a doc's fields (Illumio's PUT semantics).
pub fn merge_input<D: Doc>(
    doc: &D,
    body: Map<String, Value>,
    refs: &mut Refs,
) -> Result<D, ApiError> {
    let mut m = doc.to_json();
    for (k, v) in body {
        m.insert(k, v);
    }
    let input: D::Input = ApiError::parse_value(Value::Object(m))?;
    D::from_input(input, refs)
}

pub async fn update<D: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(D::KIND, &p, true)?;
    let id = id_param(&p, "id")?;
    if builtin(D::KIND, &id) {
        return Err(ApiError::invalid(
            "builtin_object",
            "built-in objects cannot be changed",
        ));
    }
    let body = ctx.object()?;
    let (_, rev) = transact!(&s.db, async {
        let key = keys::obj(space, D::KIND, &id);
        let cur =
            s.db.get::<Record<D>>(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(keys::href(space, D::KIND, &id)))?;
        may_write(&ctx.who, &cur.value.doc)?;
        let mut refs = Refs::default();
        let mut doc = merge_input(&cur.value.doc, body.clone(), &mut refs)?;
        keep_server_fields(&cur.value.doc, &mut doc);
        may_write(&ctx.who, &doc)?;
        plan_put(
            &s,
            &ctx,
            space,
            &id,
            &refs,
            Some((&cur.value, cur.rev)),
            doc,
        )
        .await
    })?;
    Ok(no_content(rev))
}

/// Fields the API does not let callers set survive an update (a workload's
/// `managed` flag and region are set by pairing, quarantine by its own action).
fn keep_server_fields<D: Doc>(old: &D, new: &mut D) {
    if D::KIND == Kind::Workload {
        let (Ok(old), Ok(mut v)) = (serde_json::to_value(old), serde_json::to_value(&*new)) else {
            return;
        };
        for field in ["managed", "region", "quarantined", "suspended", "served_by"] {
            v[field] = old.get(field).cloned().unwrap_or(Value::Null);
        }
        if let Ok(d) = serde_json::from_value(v) {
            *new = d;
        }
    }
}

/// Plans the deletion of object `id`: refused while anything refers to it.
pub async fn plan_delete<D: Doc>(
    s: &Shared,
    ctx: &Ctx,
    space: Space,
    id: &str,
) -> Result<(Txn, ()), ApiError> {
    let key = keys::obj(space, D::KIND, id);
    let cur =
        s.db.get::<Record<D>>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(keys::href(space, D::KIND, id)))?;
    may_write(&ctx.who, &cur.value.doc)?;
    let epoch = s.db.rev(keys::EPOCH).await?;
    if let Some(r) = first_referrer(&s.db, D::KIND, id).await? {
        return Err(ApiError::invalid(
            "object_in_use",
            format!(
                "{} is referred to by {r}; remove that reference first",
                keys::href(space, D::KIND, id)
            ),
        ));
    }
    let mut txn = Txn::default();
    // Nothing may have changed since the referrer scan.
    txn.expect(keys::EPOCH.to_vec(), epoch);
    txn.expect(key.clone(), Some(cur.rev));
    txn.delete(key);
    if let Some(name) = cur.value.doc.unique_name() {
        txn.delete(keys::name(space, D::KIND, &name));
    }
    ctx.audit(&mut txn, s, &keys::href(space, D::KIND, id))?;
    Ok((txn, ()))
}

async fn remove<D: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(D::KIND, &p, true)?;
    let id = id_param(&p, "id")?;
    if builtin(D::KIND, &id) {
        return Err(ApiError::invalid(
            "builtin_object",
            "built-in objects cannot be deleted",
        ));
    }
    let (_, rev) = transact!(&s.db, async {
        plan_delete::<D>(&s, &ctx, space, &id).await
    })?;
    Ok(no_content(rev))
}

/// The most workloads one bulk request may create.
pub const MAX_BULK: usize = 1000;

async fn bulk_create(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Workload, &p, true)?;
    let inputs: Vec<WorkloadIn> = ctx.parse()?;
    if inputs.len() > MAX_BULK {
        return Err(ApiError::invalid(
            "request_too_large",
            format!(
                "{} workloads given; at most {MAX_BULK} per request",
                inputs.len()
            ),
        ));
    }
    let mut docs = Vec::new();
    let mut refs = Refs::default();
    for (n, i) in inputs.into_iter().enumerate() {
        let mut r = Refs::default();
        let d = WorkloadDoc::from_input(i, &mut r).map_err(|mut e| {
            for entry in &mut e.errors {
                entry.message = format!("[{n}] {}", entry.message);
            }
            e
        })?;
        may_write(&ctx.who, &d)?;
        refs.list.extend(
            r.list
                .into_iter()
                .map(|(f, k, id)| (format!("[{n}].{f}"), k, id)),
        );
        docs.push((keys::new_id(), d));
    }
    let (out, rev) = transact!(&s.db, async {
        let mut txn = Txn::default();
        let mut world = World::default();
        resolve(&s.db, &refs.list, &mut txn, &mut world).await?;
        let mut out = Vec::new();
        for (id, d) in &docs {
            let rec = Record {
                v: RECORD_V,
                meta: Meta {
                    created_at: ctx.now,
                    updated_at: ctx.now,
                    created_by: ctx.who.href(),
                    updated_by: ctx.who.href(),
                },
                doc: d.clone(),
            };
            world.add(Kind::Workload, id, &encode(&rec)?)?;
            let key = keys::obj(Space::Live, Kind::Workload, id);
            txn.expect(key.clone(), None);
            txn.put(key, &rec)?;
            out.push(BulkResult {
                href: keys::href(Space::Live, Kind::Workload, id),
                status: "created",
                errors: vec![],
            });
        }
        for (id, _) in &docs {
            world.check(&format!("workloads/{id}"))?;
        }
        ctx.audit(&mut txn, &s, &format!("{} workloads", docs.len()))?;
        Ok((txn, out))
    })?;
    answer_of(StatusCode::OK, &out, rev)
}

/// One workload of a bulk request (Illumio's shape; all are created or none).
#[derive(Serialize, ToSchema)]
struct BulkResult {
    href: String,
    status: &'static str,
    errors: Vec<String>,
}

/// A pairing key, shown once.
#[derive(Serialize, ToSchema)]
struct PairingKey {
    activation_code: String,
}

async fn pairing_key(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::PairingProfile, &p, true)?;
    let id = id_param(&p, "id")?;
    let code = crate::auth::random_hex(24);
    let (_, rev) = transact!(&s.db, async {
        let key = keys::obj(Space::Live, Kind::PairingProfile, &id);
        let prof =
            s.db.get::<Record<PairingProfileDoc>>(&key)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(keys::href(Space::Live, Kind::PairingProfile, &id))
                })?;
        may_write(&ctx.who, &prof.value.doc)?;
        if !prof.value.doc.enabled {
            return Err(ApiError::invalid(
                "pairing_profile_disabled",
                "this pairing profile is disabled",
            ));
        }
        let doc = PairingKeyDoc {
            profile: id.clone(),
            created_at: ctx.now,
            expires_at: prof.value.doc.key_lifespan.map(|s| ctx.now + s * 1000),
            uses_left: prof.value.doc.allowed_uses_per_key,
        };
        let mut txn = Txn::default();
        txn.expect(key, Some(prof.rev));
        txn.put(keys::pairing_key_of_code(&code), &doc)?;
        ctx.audit(
            &mut txn,
            &s,
            &keys::href(Space::Live, Kind::PairingProfile, &id),
        )?;
        Ok((txn, ()))
    })?;
    answer_of(
        StatusCode::CREATED,
        &PairingKey {
            activation_code: code,
        },
        rev,
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct QuarantineIn {
    quarantined: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SuspendIn {
    suspended: bool,
}

/// Sets one of a workload's action flags (not policy: applied at once, audited).
async fn set_hold(
    s: &Shared,
    ctx: &Ctx,
    id: &str,
    set: impl Fn(&mut WorkloadDoc),
) -> Result<u64, ApiError> {
    let (_, rev) = transact!(&s.db, async {
        let key = keys::obj(Space::Live, Kind::Workload, id);
        let cur =
            s.db.get::<Record<WorkloadDoc>>(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(keys::href(Space::Live, Kind::Workload, id)))?;
        may_write(&ctx.who, &cur.value.doc)?;
        if !cur.value.doc.managed {
            return Err(ApiError::invalid(
                "not_managed",
                "the workload has no VEN to act on",
            ));
        }
        let mut rec = cur.value.clone();
        set(&mut rec.doc);
        rec.meta.updated_at = ctx.now;
        rec.meta.updated_by = ctx.who.href();
        let mut txn = Txn::default();
        txn.expect(key.clone(), Some(cur.rev));
        txn.put(key, &rec)?;
        ctx.audit(&mut txn, s, &keys::href(Space::Live, Kind::Workload, id))?;
        Ok((txn, ()))
    })?;
    Ok(rev)
}

/// Isolates a workload (or lifts it): all its traffic is denied but its VEN's
/// channel to the PCE; the VEN gets it as a policy push.
async fn quarantine(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Workload, &p, true)?;
    let id = id_param(&p, "id")?;
    let input: QuarantineIn = ctx.parse()?;
    let rev = set_hold(&s, &ctx, &id, |d| d.quarantined = input.quarantined).await?;
    Ok(no_content(rev))
}

/// Suspends a workload's VEN (it removes its firewall table and enforces nothing)
/// or resumes it.
async fn suspend(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Workload, &p, true)?;
    let id = id_param(&p, "id")?;
    let input: SuspendIn = ctx.parse()?;
    let rev = set_hold(&s, &ctx, &id, |d| d.suspended = input.suspended).await?;
    Ok(no_content(rev))
}

/// Unpairs a workload: it is deleted (refused while a rule names it), its VEN
/// is told to remove its table and forget its identity.
async fn unpair(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Workload, &p, true)?;
    let id = id_param(&p, "id")?;
    let (_, rev) = transact!(&s.db, async {
        plan_delete::<WorkloadDoc>(&s, &ctx, Space::Live, &id).await
    })?;
    Ok(no_content(rev))
}

/// How the summaries of a kind's endpoints name it.
struct Nouns {
    /// "a label"
    one: &'static str,
    /// "labels"
    many: &'static str,
}

fn crud<D: Doc>(api: Api, collection_path: &str, n: Nouns) -> Api {
    let item = format!("{collection_path}/{{id}}");
    let draft = if D::KIND.provisioned() {
        " (draft)"
    } else {
        ""
    };
    let filters = filters(D::KIND);
    let by: Vec<&str> = filters
        .iter()
        .copied()
        .filter(|f| *f != "max_results")
        .collect();
    api.at(
        Method::GET,
        collection_path,
        Op::described(format!("List {} (filters: {}).", n.many, by.join(", ")))
            .answer(200, Body::List(object_schema::<D>))
            .query(filters),
        list::<D>,
    )
    .at(
        Method::POST,
        collection_path,
        Op::described(format!("Create {}{draft}.", n.one))
            .body(one::<D::Input>())
            .answer(201, Body::One(object_schema::<D>)),
        create::<D>,
    )
    .at(
        Method::GET,
        &item,
        Op::described(format!("Read {}.", n.one)).answer(200, Body::One(object_schema::<D>)),
        read::<D>,
    )
    .at(
        Method::PUT,
        &item,
        Op::described(format!(
            "Change {}{draft}: the fields given replace the object's.",
            n.one
        ))
        .body(Body::One(changes_schema::<D>)),
        update::<D>,
    )
    .at(
        Method::DELETE,
        &item,
        Op::described(format!("Delete {}{draft}.", n.one)),
        remove::<D>,
    )
}

pub(super) fn api() -> Api {
    let org = "/api/v2/orgs/{org}";
    let policy = "/api/v2/orgs/{org}/sec_policy/{pversion}";
    let mut a = Api::default();
    a = crud::<LabelDoc>(
        a,
        &format!("{org}/labels"),
        Nouns {
            one: "a label",
            many: "labels",
        },
    );
    a = crud::<WorkloadDoc>(
        a,
        &format!("{org}/workloads"),
        Nouns {
            one: "an unmanaged workload",
            many: "workloads",
        },
    );
    a = crud::<PairingProfileDoc>(
        a,
        &format!("{org}/pairing_profiles"),
        Nouns {
            one: "a pairing profile",
            many: "pairing profiles",
        },
    );
    a = crud::<LabelGroupDoc>(
        a,
        &format!("{policy}/label_groups"),
        Nouns {
            one: "a label group",
            many: "label groups (draft or active)",
        },
    );
    a = crud::<ServiceDoc>(
        a,
        &format!("{policy}/services"),
        Nouns {
            one: "a service",
            many: "services (draft or active)",
        },
    );
    a = crud::<IpListDoc>(
        a,
        &format!("{policy}/ip_lists"),
        Nouns {
            one: "an IP list",
            many: "IP lists (draft or active)",
        },
    );
    a = crud::<BoundaryDoc>(
        a,
        &format!("{policy}/enforcement_boundaries"),
        Nouns {
            one: "an enforcement boundary",
            many: "enforcement boundaries (draft or active)",
        },
    );
    a.at(
        Method::PUT,
        &format!("{org}/workloads/bulk_create"),
        Op::new("Create up to 1,000 unmanaged workloads, all or none.")
            .body(many::<WorkloadIn>())
            .answer(200, many::<BulkResult>()),
        bulk_create,
    )
    .at(
        Method::PUT,
        &format!("{org}/workloads/{{id}}/quarantine"),
        Op::new("Isolate a workload, or lift it: all its traffic is denied but its VEN's channel to the PCE.")
            .body(one::<QuarantineIn>()),
        quarantine,
    )
    .at(
        Method::PUT,
        &format!("{org}/workloads/{{id}}/suspend"),
        Op::new("Suspend a workload's VEN (it enforces nothing), or resume it.")
            .body(one::<SuspendIn>()),
        suspend,
    )
    .at(
        Method::PUT,
        &format!("{org}/workloads/{{id}}/unpair"),
        Op::new("Unpair a workload: it is deleted and its VEN removes its table and forgets its identity."),
        unpair,
    )
    .at(
        Method::POST,
        &format!("{org}/pairing_profiles/{{id}}/pairing_key"),
        Op::new("Issue a pairing key (shown once).").answer(201, one::<PairingKey>()),
        pairing_key,
    )
}
