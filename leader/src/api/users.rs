//! Users, their roles, and their API keys (`/api/v2/users`, global as in Illumio).

use crate::transact;
use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::spec::{many, one, Api, Op};
use super::{answer_of, collection, no_content, values, Ctx, CtxExt, Shared};
use crate::auth::{new_api_key, ApiKeyDoc, UserDoc};
use crate::docs::{resolve, HrefJson, Refs};
use crate::error::ApiError;
use crate::rbac::{Action, Permission, Role};
use sc_store::db::Txn;
use sc_store::keys::{self, Id, Kind};
use sc_store::time::iso8601;
use sc_store::world::{World, MAX_OBJECTS};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PermissionIn {
    role: HrefJson,
    #[serde(default)]
    scope: Vec<ScopeLabel>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ScopeLabel {
    label: HrefJson,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserIn {
    username: String,
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    permissions: Vec<PermissionIn>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserUpdate {
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    permissions: Option<Vec<PermissionIn>>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct KeyIn {
    #[serde(default)]
    name: Option<String>,
}

fn permissions(list: &[PermissionIn], refs: &mut Refs) -> Result<Vec<Permission>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(n, p)| {
            let name = p
                .role
                .href
                .strip_prefix(&format!("/orgs/{}/roles/", keys::ORG))
                .and_then(Role::from_name)
                .ok_or_else(|| {
                    ApiError::reference(
                        &format!("permissions[{n}].role"),
                        format!(
                            "{:?} is not a role; use /orgs/{}/roles/{{{}}}",
                            p.role.href,
                            keys::ORG,
                            Role::ALL.map(Role::name).join("|")
                        ),
                    )
                })?;
            if !name.scoped() && !p.scope.is_empty() {
                return Err(ApiError::field(
                    &format!("permissions[{n}].scope"),
                    format!("{} is a global role and takes no scope", name.name()),
                ));
            }
            let scope = p
                .scope
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    refs.href(
                        &format!("permissions[{n}].scope[{i}]"),
                        &l.label.href,
                        &[Kind::Label],
                    )
                })
                .collect::<Result<_, _>>()?;
            Ok(Permission { role: name, scope })
        })
        .collect()
}

/// A user as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
struct User {
    href: String,
    username: String,
    full_name: Option<String>,
    /// A role in a scope (an empty scope: everywhere).
    permissions: Vec<PermissionIn>,
    created_at: String,
    created_by: HrefJson,
}

fn user_json(id: &str, u: &UserDoc) -> User {
    let href = |h: String| HrefJson { href: h };
    User {
        href: format!("/users/{id}"),
        username: u.username.clone(),
        full_name: u.full_name.clone(),
        permissions: u
            .permissions
            .iter()
            .map(|p| PermissionIn {
                role: href(format!("/orgs/{}/roles/{}", keys::ORG, p.role.name())),
                scope: p
                    .scope
                    .iter()
                    .map(|l| ScopeLabel {
                        label: href(keys::href(keys::Space::Live, Kind::Label, l)),
                    })
                    .collect(),
            })
            .collect(),
        created_at: iso8601(u.created_at),
        created_by: href(u.created_by.clone()),
    }
}

/// An API key as listed (its secret is never shown again).
#[derive(Debug, Serialize, ToSchema)]
struct ApiKey {
    href: String,
    key_id: String,
    /// The HTTP Basic user name of this key.
    auth_username: String,
    name: String,
    created_at: String,
}

/// A new API key with its secret, shown once.
#[derive(Debug, Serialize, ToSchema)]
struct NewApiKey {
    #[serde(flatten)]
    key: ApiKey,
    /// The HTTP Basic password of this key.
    secret: String,
}

fn owner_only(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.who.may(Action::ManageUsers) {
        Ok(())
    } else {
        Err(ApiError::forbidden("managing users needs the owner role"))
    }
}

fn user_id(p: &HashMap<String, String>) -> Result<Id, ApiError> {
    let id = p.get("id").cloned().unwrap_or_default();
    if keys::valid_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("user {id:?}")))
    }
}

async fn list(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    owner_only(&ctx)?;
    ctx.allow_query(&["max_results"])?;
    let (users, rev) = s.db.scan::<UserDoc>(keys::USERS, MAX_OBJECTS).await?;
    let items = users
        .iter()
        .map(|u| user_json(&keys::id_of(&u.key, keys::USERS), &u.value));
    let items = values(items)?;
    collection(&ctx, &s, items, rev)
}

async fn create(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    owner_only(&ctx)?;
    let input: UserIn = ctx.parse()?;
    if input.username.trim().is_empty()
        || input.username.len() > 255
        || input.username.contains('/')
        || input.username.chars().any(crate::docs::deceptive)
    {
        return Err(ApiError::field(
            "username",
            "must be 1-255 printable characters without '/' (no control or bidirectional-override characters)",
        ));
    }
    let mut refs = Refs::default();
    let perms = permissions(&input.permissions, &mut refs)?;
    let id = keys::new_id();
    let (doc, rev) = transact!(&s.db, async {
        let mut txn = Txn::default();
        resolve(&s.db, &refs.list, &mut txn, &mut World::default()).await?;
        if s.db.rev(&keys::username(&input.username)).await?.is_some() {
            return Err(ApiError::invalid(
                "name_in_use",
                format!("username: {:?} is taken", input.username),
            ));
        }
        txn.expect(keys::username(&input.username), None);
        txn.put(keys::username(&input.username), &id)?;
        let doc = UserDoc {
            username: input.username.clone(),
            full_name: input.full_name.clone(),
            permissions: perms.clone(),
            created_at: ctx.now,
            created_by: ctx.who.href(),
        };
        txn.expect(keys::user(&id), None);
        txn.put(keys::user(&id), &doc)?;
        ctx.audit(&mut txn, &s, &format!("/users/{id}"))?;
        Ok((txn, doc))
    })?;
    answer_of(StatusCode::CREATED, &user_json(&id, &doc), rev)
}

async fn read(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let id = user_id(&p)?;
    if id != ctx.who.user_id {
        owner_only(&ctx)?;
    }
    let rev = s.db.revision().await?;
    let u =
        s.db.get::<UserDoc>(&keys::user(&id))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("/users/{id}")))?;
    answer_of(StatusCode::OK, &user_json(&id, &u.value), rev)
}

async fn update(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    owner_only(&ctx)?;
    let id = user_id(&p)?;
    let input: UserUpdate = ctx.parse()?;
    let mut refs = Refs::default();
    let perms = input
        .permissions
        .as_deref()
        .map(|p| permissions(p, &mut refs))
        .transpose()?;
    if id == ctx.who.user_id
        && perms
            .as_ref()
            .is_some_and(|p| !p.iter().any(|p| p.role == Role::Owner))
    {
        return Err(ApiError::invalid(
            "last_owner",
            "you cannot remove your own owner role",
        ));
    }
    let (_, rev) = transact!(&s.db, async {
        let cur =
            s.db.get::<UserDoc>(&keys::user(&id))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("/users/{id}")))?;
        let mut txn = Txn::default();
        resolve(&s.db, &refs.list, &mut txn, &mut World::default()).await?;
        let mut doc = cur.value.clone();
        if let Some(f) = &input.full_name {
            doc.full_name = Some(f.clone());
        }
        if let Some(p) = &perms {
            doc.permissions = p.clone();
        }
        txn.expect(keys::user(&id), Some(cur.rev));
        txn.put(keys::user(&id), &doc)?;
        ctx.audit(&mut txn, &s, &format!("/users/{id}"))?;
        Ok((txn, ()))
    })?;
    Ok(no_content(rev))
}

async fn remove(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    owner_only(&ctx)?;
    let id = user_id(&p)?;
    if id == ctx.who.user_id {
        return Err(ApiError::invalid(
            "last_owner",
            "you cannot delete yourself",
        ));
    }
    let (_, rev) = transact!(&s.db, async {
        let cur =
            s.db.get::<UserDoc>(&keys::user(&id))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("/users/{id}")))?;
        let mut txn = Txn::default();
        txn.expect(keys::user(&id), Some(cur.rev));
        txn.delete(keys::user(&id));
        txn.delete(keys::username(&cur.value.username));
        let (ks, _) = s.db.scan::<ApiKeyDoc>(keys::API_KEYS, MAX_OBJECTS).await?;
        for k in ks.iter().filter(|k| k.value.user_id == id) {
            txn.delete(k.key.clone());
        }
        ctx.audit(&mut txn, &s, &format!("/users/{id}"))?;
        Ok((txn, ()))
    })?;
    Ok(no_content(rev))
}

fn self_or_owner(ctx: &Ctx, id: &str) -> Result<(), ApiError> {
    if id == ctx.who.user_id {
        Ok(())
    } else {
        owner_only(ctx)
    }
}

async fn create_key(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let id = user_id(&p)?;
    self_or_owner(&ctx, &id)?;
    let input: KeyIn = if ctx.body.is_empty() {
        KeyIn::default()
    } else {
        ctx.parse()?
    };
    let name = crate::docs::free_text("name", input.name)?.unwrap_or_default();
    let (doc, auth_username, secret) = new_api_key(&id, &name, ctx.now);
    let (_, rev) = transact!(&s.db, async {
        let user_rev =
            s.db.rev(&keys::user(&id))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("/users/{id}")))?;
        let mut txn = Txn::default();
        txn.expect(keys::user(&id), Some(user_rev));
        txn.expect(keys::api_key(&auth_username), None);
        txn.put(keys::api_key(&auth_username), &doc)?;
        ctx.audit(
            &mut txn,
            &s,
            &format!("/users/{id}/api_keys/{}", doc.key_id),
        )?;
        Ok((txn, ()))
    })?;
    let v = NewApiKey {
        key: ApiKey {
            href: format!("/users/{id}/api_keys/{}", doc.key_id),
            key_id: doc.key_id.clone(),
            auth_username,
            name,
            created_at: iso8601(doc.created_at),
        },
        secret,
    };
    answer_of(StatusCode::CREATED, &v, rev)
}

async fn list_keys(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let id = user_id(&p)?;
    self_or_owner(&ctx, &id)?;
    let (ks, rev) = s.db.scan::<ApiKeyDoc>(keys::API_KEYS, MAX_OBJECTS).await?;
    let items = ks.iter().filter(|k| k.value.user_id == id).map(|k| ApiKey {
        href: format!("/users/{id}/api_keys/{}", k.value.key_id),
        key_id: k.value.key_id.clone(),
        auth_username: keys::id_of(&k.key, keys::API_KEYS),
        name: k.value.name.clone(),
        created_at: iso8601(k.value.created_at),
    });
    let items = values(items)?;
    collection(&ctx, &s, items, rev)
}

async fn delete_key(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let id = user_id(&p)?;
    self_or_owner(&ctx, &id)?;
    let key_id = p.get("key").cloned().unwrap_or_default();
    let (_, rev) = transact!(&s.db, async {
        let (ks, _) = s.db.scan::<ApiKeyDoc>(keys::API_KEYS, MAX_OBJECTS).await?;
        let k = ks
            .iter()
            .find(|k| k.value.user_id == id && k.value.key_id == key_id)
            .ok_or_else(|| ApiError::not_found(format!("/users/{id}/api_keys/{key_id}")))?;
        let mut txn = Txn::default();
        txn.expect(k.key.clone(), Some(k.rev));
        txn.delete(k.key.clone());
        ctx.audit(&mut txn, &s, &format!("/users/{id}/api_keys/{key_id}"))?;
        Ok((txn, ()))
    })?;
    Ok(no_content(rev))
}

pub(super) fn api() -> Api {
    Api::default()
        .at(
            Method::GET,
            "/api/v2/users",
            Op::new("List users (owner).")
                .answer(200, many::<User>())
                .query(&["max_results"]),
            list,
        )
        .at(
            Method::POST,
            "/api/v2/users",
            Op::new("Create a user with roles (owner).")
                .body(one::<UserIn>())
                .answer(201, one::<User>()),
            create,
        )
        .at(
            Method::GET,
            "/api/v2/users/{id}",
            Op::new("Read a user (owner, or the user).").answer(200, one::<User>()),
            read,
        )
        .at(
            Method::PUT,
            "/api/v2/users/{id}",
            Op::new("Change a user's full name or roles (owner).").body(one::<UserUpdate>()),
            update,
        )
        .at(
            Method::DELETE,
            "/api/v2/users/{id}",
            Op::new("Delete a user and their keys (owner)."),
            remove,
        )
        .at(
            Method::GET,
            "/api/v2/users/{id}/api_keys",
            Op::new("List a user's API keys.")
                .answer(200, many::<ApiKey>())
                .query(&["max_results"]),
            list_keys,
        )
        .at(
            Method::POST,
            "/api/v2/users/{id}/api_keys",
            Op::new("Create an API key (its secret is shown once); the body is optional.")
                .body(one::<KeyIn>())
                .answer(201, one::<NewApiKey>()),
            create_key,
        )
        .at(
            Method::DELETE,
            "/api/v2/users/{id}/api_keys/{key}",
            Op::new("Delete an API key."),
            delete_key,
        )
}
