//! Rulesets and their rules: a ruleset is a header object plus one object per
//! allow rule (`sec_rules`) and per deny rule (`deny_rules`), so editing one rule
//! of a large ruleset is a small write. Access follows the ruleset's scope.

use crate::transact;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::objects::{
    changes_schema, id_param, may_write, merge_input, object_json, object_schema, space_of, update,
    Params,
};
use super::spec::{one, Api, Body, Op};
use super::{answer, collection, no_content, Ctx, CtxExt, Shared};
use crate::docs::*;
use crate::error::ApiError;
use sc_store::db::{Stored, Txn};
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::objects::*;
use sc_store::record::{encode, Meta, Object, Record, RECORD_V};
use sc_store::world::{World, MAX_OBJECTS};

fn model(id: &str, doc: &RuleSetDoc) -> sc_policy::model::RuleSet {
    sc_policy::model::RuleSet {
        id: id.to_string(),
        name: doc.name.clone(),
        enabled: doc.enabled,
        scope: doc.scope.clone(),
        rules: vec![],
        deny_rules: vec![],
    }
}

async fn children<R: Doc>(
    s: &Shared,
    space: Space,
    rs: &str,
) -> Result<Vec<Stored<Record<R>>>, ApiError> {
    Ok(s.db
        .scan::<Record<R>>(&keys::rules_prefix(space, R::KIND, rs), MAX_OBJECTS)
        .await?
        .0)
}

/// A ruleset with its rules, as the API shows it.
async fn rule_set_json(
    s: &Shared,
    space: Space,
    id: &str,
    rec: &Record<RuleSetDoc>,
) -> Result<Value, ApiError> {
    let mut v = object_json(space, id, rec);
    let rules: Vec<Value> = children::<RuleDoc>(s, space, id)
        .await?
        .iter()
        .map(|r| {
            object_json(
                space,
                &format!(
                    "{id}/{}",
                    keys::id_of(&r.key, &keys::rules_prefix(space, Kind::SecRule, id))
                ),
                &r.value,
            )
        })
        .collect();
    let deny: Vec<Value> = children::<DenyRuleDoc>(s, space, id)
        .await?
        .iter()
        .map(|r| {
            object_json(
                space,
                &format!(
                    "{id}/{}",
                    keys::id_of(&r.key, &keys::rules_prefix(space, Kind::DenyRule, id))
                ),
                &r.value,
            )
        })
        .collect();
    v["rules"] = json!(rules);
    v["deny_rules"] = json!(deny);
    Ok(v)
}

async fn list(State(s): State<Shared>, ctx: CtxExt, Path(p): Params) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(Kind::RuleSet, &p, false)?;
    ctx.allow_query(&["name", "max_results"])?;
    let prefix = keys::obj_prefix(space, Kind::RuleSet);
    let (sets, rev) =
        s.db.scan::<Record<RuleSetDoc>>(&prefix, MAX_OBJECTS)
            .await?;
    let mut items = Vec::new();
    for rs in &sets {
        let id = keys::id_of(&rs.key, &prefix);
        if !ctx.who.may_read_rule_set(&model(&id, &rs.value.doc)) {
            continue;
        }
        if let Some(n) = ctx.query.get("name") {
            if !rs.value.doc.name.to_lowercase().contains(&n.to_lowercase()) {
                continue;
            }
        }
        items.push(rule_set_json(&s, space, &id, &rs.value).await?);
    }
    collection(&ctx, &s, items, rev)
}

async fn header(
    s: &Shared,
    space: Space,
    id: &str,
) -> Result<Stored<Record<RuleSetDoc>>, ApiError> {
    s.db.get::<Record<RuleSetDoc>>(&keys::obj(space, Kind::RuleSet, id))
        .await?
        .ok_or_else(|| ApiError::not_found(keys::href(space, Kind::RuleSet, id)))
}

async fn read(State(s): State<Shared>, ctx: CtxExt, Path(p): Params) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(Kind::RuleSet, &p, false)?;
    ctx.allow_query(&[])?;
    let id = id_param(&p, "id")?;
    let rev = s.db.revision().await?;
    let rs = header(&s, space, &id).await?;
    if !ctx.who.may_read_rule_set(&model(&id, &rs.value.doc)) {
        return Err(ApiError::forbidden("this ruleset is outside your scope"));
    }
    Ok(answer(
        StatusCode::OK,
        &rule_set_json(&s, space, &id, &rs.value).await?,
        rev,
    ))
}

fn new_record<D>(ctx: &Ctx, doc: D) -> Record<D> {
    Record {
        v: RECORD_V,
        meta: Meta {
            created_at: ctx.now,
            updated_at: ctx.now,
            created_by: ctx.who.href(),
            updated_by: ctx.who.href(),
        },
        doc,
    }
}

fn broad_guard(ctx: &Ctx, rule: &RuleDoc) -> Result<(), ApiError> {
    if rule.deliberately_broad && !ctx.who.is_global_admin() {
        return Err(ApiError::forbidden(
            "only global owners and admins may set deliberately_broad on a rule",
        ));
    }
    Ok(())
}

async fn create(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(Kind::RuleSet, &p, true)?;
    let mut input: RuleSetIn = ctx.parse()?;
    let inline = input.rules.take().unwrap_or_default();
    let mut refs = Refs::default();
    let doc = RuleSetDoc::from_input(input, &mut refs)?;
    let mut rules = Vec::new();
    for (n, r) in inline.into_iter().enumerate() {
        let mut rr = Refs::default();
        let rule = RuleDoc::from_input(r, &mut rr)?;
        broad_guard(&ctx, &rule)?;
        refs.list.extend(
            rr.list
                .into_iter()
                .map(|(f, k, i)| (format!("rules[{n}].{f}"), k, i)),
        );
        rules.push((keys::new_id(), rule));
    }
    let id = keys::new_id();
    if !ctx.who.may_write_rule_set(&model(&id, &doc)) {
        return Err(ApiError::forbidden(
            "this ruleset's scope is outside your scope",
        ));
    }
    let (rec, rev) = transact!(&s.db, async {
        let mut txn = Txn::default();
        let mut world = World::default();
        resolve(&s.db, &refs.list, &mut txn, &mut world).await?;
        super::objects::claim_name(&s, &mut txn, space, &id, None, &doc).await?;
        let rec = new_record(&ctx, doc.clone());
        let key = keys::obj(space, Kind::RuleSet, &id);
        world.add(Kind::RuleSet, &id, &encode(&rec)?)?;
        txn.expect(key.clone(), None);
        txn.put(key, &rec)?;
        for (rid, rule) in &rules {
            let full = format!("{id}/{rid}");
            let r = new_record(&ctx, rule.clone());
            world.add(Kind::SecRule, &full, &encode(&r)?)?;
            txn.put(keys::obj(space, Kind::SecRule, &full), &r)?;
        }
        world.check(&format!("rule_sets/{id}"))?;
        ctx.audit(&mut txn, &s, &keys::href(space, Kind::RuleSet, &id))?;
        Ok((txn, rec))
    })?;
    let v = rule_set_json(&s, space, &id, &rec).await?;
    Ok(answer(StatusCode::CREATED, &v, rev))
}

async fn remove(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(Kind::RuleSet, &p, true)?;
    let id = id_param(&p, "id")?;
    let (_, rev) = transact!(&s.db, async {
        let rs = header(&s, space, &id).await?;
        may_write(&ctx.who, &rs.value.doc)?;
        let mut txn = Txn::default();
        let epoch = s.db.rev(keys::EPOCH).await?;
        txn.expect(keys::EPOCH.to_vec(), epoch);
        txn.delete(rs.key.clone());
        txn.delete(keys::name(space, Kind::RuleSet, &rs.value.doc.name));
        for kind in [Kind::SecRule, Kind::DenyRule] {
            for (k, _) in
                s.db.raw_scan(&keys::rules_prefix(space, kind, &id), MAX_OBJECTS)
                    .await?
            {
                txn.delete(k);
            }
        }
        ctx.audit(&mut txn, &s, &keys::href(space, Kind::RuleSet, &id))?;
        Ok((txn, ()))
    })?;
    Ok(no_content(rev))
}

/// Plans a write of one rule `rid` of ruleset `rs`.
#[allow(clippy::too_many_arguments)]
async fn plan_rule<R: Doc>(
    s: &Shared,
    ctx: &Ctx,
    space: Space,
    rs: &str,
    rid: &str,
    refs: &Refs,
    old: Option<(&Record<R>, u64)>,
    doc: R,
) -> Result<(Txn, Record<R>), ApiError> {
    let set = header(s, space, rs).await?;
    if !ctx.who.may_write_rule_set(&model(rs, &set.value.doc)) {
        return Err(ApiError::forbidden("this ruleset is outside your scope"));
    }
    let mut txn = Txn::default();
    let mut world = World::default();
    txn.expect(set.key.clone(), Some(set.rev));
    world.add(Kind::RuleSet, rs, &encode(&set.value)?)?;
    // The scope's labels join the small world so the ruleset validates whole.
    let mut all = refs.list.clone();
    all.extend(
        set.value
            .doc
            .refs()
            .into_iter()
            .map(|(k, id)| ("scope".to_string(), k, id)),
    );
    resolve(&s.db, &all, &mut txn, &mut world).await?;
    let full = format!("{rs}/{rid}");
    let key = keys::obj(space, R::KIND, &full);
    txn.expect(key.clone(), old.map(|(_, r)| r));
    let rec = match old {
        Some((o, _)) => Record {
            v: RECORD_V,
            meta: Meta {
                updated_at: ctx.now,
                updated_by: ctx.who.href(),
                ..o.meta.clone()
            },
            doc,
        },
        None => new_record(ctx, doc),
    };
    world.add(R::KIND, &full, &encode(&rec)?)?;
    world.check(&format!("rule_sets/{rs}"))?;
    txn.put(key, &rec)?;
    ctx.audit(&mut txn, s, &keys::href(space, R::KIND, &full))?;
    Ok((txn, rec))
}

fn rule_guard<R: Doc>(ctx: &Ctx, doc: &R) -> Result<(), ApiError> {
    if R::KIND == Kind::SecRule {
        if let Ok(r) = serde_json::from_value::<RuleDoc>(
            serde_json::to_value(doc).map_err(ApiError::internal)?,
        ) {
            broad_guard(ctx, &r)?;
        }
    }
    Ok(())
}

fn rs_param(p: &std::collections::HashMap<String, String>) -> Result<Id, ApiError> {
    id_param(p, "id")
}

async fn rule_list<R: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(R::KIND, &p, false)?;
    ctx.allow_query(&["max_results"])?;
    let rs = rs_param(&p)?;
    let rev = s.db.revision().await?;
    let set = header(&s, space, &rs).await?;
    if !ctx.who.may_read_rule_set(&model(&rs, &set.value.doc)) {
        return Err(ApiError::forbidden("this ruleset is outside your scope"));
    }
    let prefix = keys::rules_prefix(space, R::KIND, &rs);
    let items = children::<R>(&s, space, &rs)
        .await?
        .iter()
        .map(|r| {
            object_json(
                space,
                &format!("{rs}/{}", keys::id_of(&r.key, &prefix)),
                &r.value,
            )
        })
        .collect();
    collection(&ctx, &s, items, rev)
}

async fn rule_read<R: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(R::KIND, &p, false)?;
    ctx.allow_query(&[])?;
    let (rs, rid) = (rs_param(&p)?, id_param(&p, "rule")?);
    let rev = s.db.revision().await?;
    let set = header(&s, space, &rs).await?;
    if !ctx.who.may_read_rule_set(&model(&rs, &set.value.doc)) {
        return Err(ApiError::forbidden("this ruleset is outside your scope"));
    }
    let full = format!("{rs}/{rid}");
    let r =
        s.db.get::<Record<R>>(&keys::obj(space, R::KIND, &full))
            .await?
            .ok_or_else(|| ApiError::not_found(keys::href(space, R::KIND, &full)))?;
    Ok(answer(
        StatusCode::OK,
        &object_json(space, &full, &r.value),
        rev,
    ))
}

async fn rule_create<R: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(R::KIND, &p, true)?;
    let rs = rs_param(&p)?;
    let mut refs = Refs::default();
    let doc = R::from_input(ctx.parse()?, &mut refs)?;
    rule_guard(&ctx, &doc)?;
    let rid = keys::new_id();
    let (rec, rev) = transact!(&s.db, async {
        plan_rule(&s, &ctx, space, &rs, &rid, &refs, None, doc.clone()).await
    })?;
    Ok(answer(
        StatusCode::CREATED,
        &object_json(space, &format!("{rs}/{rid}"), &rec),
        rev,
    ))
}

async fn rule_update<R: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(R::KIND, &p, true)?;
    let (rs, rid) = (rs_param(&p)?, id_param(&p, "rule")?);
    let body = ctx.object()?;
    let full = format!("{rs}/{rid}");
    let (_, rev) = transact!(&s.db, async {
        let cur =
            s.db.get::<Record<R>>(&keys::obj(space, R::KIND, &full))
                .await?
                .ok_or_else(|| ApiError::not_found(keys::href(space, R::KIND, &full)))?;
        let mut refs = Refs::default();
        let doc = merge_input(&cur.value.doc, body.clone(), &mut refs)?;
        rule_guard(&ctx, &doc)?;
        plan_rule(
            &s,
            &ctx,
            space,
            &rs,
            &rid,
            &refs,
            Some((&cur.value, cur.rev)),
            doc,
        )
        .await
    })?;
    Ok(no_content(rev))
}

async fn rule_delete<R: Doc>(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let space = space_of(R::KIND, &p, true)?;
    let (rs, rid) = (rs_param(&p)?, id_param(&p, "rule")?);
    let full = format!("{rs}/{rid}");
    let (_, rev) = transact!(&s.db, async {
        let set = header(&s, space, &rs).await?;
        if !ctx.who.may_write_rule_set(&model(&rs, &set.value.doc)) {
            return Err(ApiError::forbidden("this ruleset is outside your scope"));
        }
        let key = keys::obj(space, R::KIND, &full);
        let rev =
            s.db.rev(&key)
                .await?
                .ok_or_else(|| ApiError::not_found(keys::href(space, R::KIND, &full)))?;
        let mut txn = Txn::default();
        txn.expect(key.clone(), Some(rev));
        txn.delete(key);
        ctx.audit(&mut txn, &s, &keys::href(space, R::KIND, &full))?;
        Ok((txn, ()))
    })?;
    Ok(no_content(rev))
}

fn rule_api<R: Doc>(api: Api, noun: &str) -> Api {
    let base = format!(
        "/api/v2/orgs/{{org}}/sec_policy/{{pversion}}/rule_sets/{{id}}/{}",
        R::KIND.segment()
    );
    let item = format!("{base}/{{rule}}");
    api.at(
        Method::GET,
        &base,
        Op::described(format!("List a ruleset's {noun}s."))
            .answer(200, Body::List(object_schema::<R>))
            .query(&["max_results"]),
        rule_list::<R>,
    )
    .at(
        Method::POST,
        &base,
        Op::described(format!("Add {noun} (draft)."))
            .body(one::<R::Input>())
            .answer(201, Body::One(object_schema::<R>)),
        rule_create::<R>,
    )
    .at(
        Method::GET,
        &item,
        Op::described(format!("Read {noun}.")).answer(200, Body::One(object_schema::<R>)),
        rule_read::<R>,
    )
    .at(
        Method::PUT,
        &item,
        Op::described(format!(
            "Change {noun} (draft): the fields given replace the rule's."
        ))
        .body(Body::One(changes_schema::<R>)),
        rule_update::<R>,
    )
    .at(
        Method::DELETE,
        &item,
        Op::described(format!("Delete {noun} (draft).")),
        rule_delete::<R>,
    )
}

pub(super) fn api() -> Api {
    let base = "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets";
    let item = format!("{base}/{{id}}");
    let api = Api::default()
        .at(
            Method::GET,
            base,
            Op::new("List rulesets with their rules (in your scope; filter: name).")
                .answer(200, Body::List(object_schema::<RuleSetDoc>))
                .query(&["name", "max_results"]),
            list,
        )
        .at(
            Method::POST,
            base,
            Op::new("Create a ruleset, optionally with allow rules (draft).")
                .body(one::<RuleSetIn>())
                .answer(201, Body::One(object_schema::<RuleSetDoc>)),
            create,
        )
        .at(
            Method::GET,
            &item,
            Op::new("Read a ruleset with its rules.")
                .answer(200, Body::One(object_schema::<RuleSetDoc>)),
            read,
        )
        .at(
            Method::PUT,
            &item,
            Op::new("Change a ruleset's name, description, scope or enabled (draft); rules are edited through sec_rules and deny_rules.")
                .body(Body::One(changes_schema::<RuleSetDoc>)),
            update::<RuleSetDoc>,
        )
        .at(
            Method::DELETE,
            &item,
            Op::new("Delete a ruleset and its rules (draft)."),
            remove,
        );
    rule_api::<DenyRuleDoc>(rule_api::<RuleDoc>(api, "an allow rule"), "a deny rule")
}

/// What the policy generator wrote.
pub(super) struct Written {
    /// The draft ruleset (id).
    pub(super) rule_set: Id,
    /// Its name.
    pub(super) name: String,
    /// The rules, as `<ruleset>/<rule>` ids, in the order given.
    pub(super) rules: Vec<Id>,
    /// The store revision of the write.
    pub(super) revision: u64,
}

/// A free ruleset name for a generated ruleset: the app group's own, else
/// with "(generated)" and a number added.
async fn free_name(s: &Shared, base: &str) -> Result<String, ApiError> {
    for n in 0..100 {
        let name = match n {
            0 => base.to_string(),
            1 => format!("{base} (generated)"),
            n => format!("{base} (generated {n})"),
        };
        if s.db
            .rev(&keys::name(Space::Draft, Kind::RuleSet, &name))
            .await?
            .is_none()
        {
            return Ok(name);
        }
    }
    Err(ApiError::invalid(
        "name_in_use",
        format!("name: every ruleset name made from {base:?} is taken; rename one"),
    ))
}

/// Writes the policy generator's rules into the draft: into the ruleset
/// `target` names, or a new one scoped to the app group, all in one
/// transaction validated as the ruleset's whole (guard rails included),
/// with an audit event per object.
pub(super) async fn add_generated(
    s: &Shared,
    ctx: &Ctx,
    target: &sc_policy::generate::Target,
    rules: &[RuleDoc],
) -> Result<Written, ApiError> {
    use sc_policy::generate::Target;
    let space = Space::Draft;
    let (written, rev) = transact!(&s.db, async {
        let mut txn = Txn::default();
        let mut world = World::default();
        let mut refs: Vec<(String, Kind, Id)> = Vec::new();
        let (id, name) = match target {
            Target::Existing(id) => {
                let set = header(s, space, id).await?;
                if !ctx.who.may_write_rule_set(&model(id, &set.value.doc)) {
                    return Err(ApiError::forbidden("this ruleset is outside your scope"));
                }
                txn.expect(set.key.clone(), Some(set.rev));
                world.add(Kind::RuleSet, id, &encode(&set.value)?)?;
                refs.extend(
                    set.value
                        .doc
                        .refs()
                        .into_iter()
                        .map(|(k, i)| ("scope".to_string(), k, i)),
                );
                (id.clone(), set.value.doc.name.clone())
            }
            Target::New { name, scope } => {
                let id = keys::new_id();
                let doc = RuleSetDoc {
                    name: free_name(s, name).await?,
                    description: Some("Made by the policy generator".into()),
                    enabled: true,
                    scope: scope.clone(),
                };
                if !ctx.who.may_write_rule_set(&model(&id, &doc)) {
                    return Err(ApiError::forbidden(
                        "this ruleset's scope is outside your scope",
                    ));
                }
                refs.extend(
                    doc.refs()
                        .into_iter()
                        .map(|(k, i)| ("scope".to_string(), k, i)),
                );
                super::objects::claim_name(s, &mut txn, space, &id, None, &doc).await?;
                let rec = new_record(ctx, doc.clone());
                let key = keys::obj(space, Kind::RuleSet, &id);
                world.add(Kind::RuleSet, &id, &encode(&rec)?)?;
                txn.expect(key.clone(), None);
                txn.put(key, &rec)?;
                ctx.audit(&mut txn, s, &keys::href(space, Kind::RuleSet, &id))?;
                (id, doc.name)
            }
        };
        for (n, r) in rules.iter().enumerate() {
            refs.extend(
                r.refs()
                    .into_iter()
                    .map(|(k, i)| (format!("rules[{n}]"), k, i)),
            );
        }
        resolve(&s.db, &refs, &mut txn, &mut world).await?;
        let mut ids = Vec::new();
        for r in rules {
            let full = format!("{id}/{}", keys::new_id());
            let rec = new_record(ctx, r.clone());
            world.add(Kind::SecRule, &full, &encode(&rec)?)?;
            txn.put(keys::obj(space, Kind::SecRule, &full), &rec)?;
            ctx.audit(&mut txn, s, &keys::href(space, Kind::SecRule, &full))?;
            ids.push(full);
        }
        world.check(&format!("rule_sets/{id}"))?;
        Ok((txn, (id, name, ids)))
    })?;
    let (rule_set, name, rules) = written;
    Ok(Written {
        rule_set,
        name,
        rules,
        revision: rev,
    })
}
