//! Probes, the spec, async jobs, and small org settings.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use sc_raft::NodeStatus;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::spec::{many, one, Api, Op};
use super::{answer, answer_of, CtxExt, Shared};
use crate::docs::HrefJson;
use crate::error::ApiError;
use crate::jobs::Job;
use crate::rbac::Role;
use sc_store::keys;

/// This node's health, as a load balancer reads it (Illumio's shape: a list
/// with one entry per node asked). The answer is 503 when the region cannot
/// serve (fenced, no leader, cut off), so a probe takes it out of rotation.
#[derive(Serialize, ToSchema)]
struct Health {
    fqdn: String,
    region: String,
    /// `normal` when the region serves, else `unavailable`.
    status: &'static str,
    /// Why it does not serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The leader's name, if known.
    leader: Option<String>,
    is_leader: bool,
    /// The cluster's topology and Raft state: only for a caller with
    /// credentials (an anonymous probe learns up or down, not the layout).
    #[serde(skip_serializing_if = "Option::is_none")]
    raft: Option<NodeStatus>,
}

/// The leader, as a GSLB probe reads it.
#[derive(Serialize, ToSchema)]
struct Leader {
    leader: String,
    region: String,
}

/// A role (`scoped`: it may be given in a scope of labels).
#[derive(Serialize, ToSchema)]
struct RoleOut {
    href: String,
    scoped: bool,
}

/// Whatever a collection's items were: the result of an async job.
#[derive(Serialize, ToSchema)]
#[schema(value_type = Vec<Object>)]
struct Datafile(Value);

async fn health(State(s): State<Shared>, headers: HeaderMap) -> Result<Response, ApiError> {
    let node = s.db.node();
    let info = node.info();
    let reason = node.unable_to_serve().await;
    // Credentials are optional here; wrong ones are refused like anywhere.
    let raft = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(h) => {
            crate::auth::authenticate(&s.db, h.to_str().ok()).await?;
            Some(node.status())
        }
    };
    let v = [Health {
        fqdn: info.name.clone(),
        region: info.region.clone(),
        status: if reason.is_none() {
            "normal"
        } else {
            "unavailable"
        },
        reason: reason.clone(),
        leader: node.leader_info().map(|l| l.name),
        is_leader: node.is_leader(),
        raft,
    }];
    let rev = s.db.revision().await.unwrap_or(0);
    let code = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    answer_of(code, &v, rev)
}

async fn leader(State(s): State<Shared>) -> Result<Response, ApiError> {
    let node = s.db.node();
    let rev = s.db.revision().await.unwrap_or(0);
    if node.is_leader() {
        let info = node.info();
        let v = Leader {
            leader: info.name.clone(),
            region: info.region.clone(),
        };
        return answer_of(StatusCode::OK, &v, rev);
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_leader",
        match node.leader_info() {
            Some(l) => format!(
                "this node is a member; the leader is {} in {}",
                l.name, l.region
            ),
            None => "this node is a member and knows no leader right now".to_string(),
        },
    ))
}

async fn spec() -> Response {
    answer(StatusCode::OK, super::spec::document(), 0)
}

async fn job(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = p.get("id").cloned().unwrap_or_default();
    let v = s
        .jobs
        .status(&ctx.0.who.user_id, &id)
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    answer_of(StatusCode::OK, &v, 0)
}

async fn datafile(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = p.get("id").cloned().unwrap_or_default();
    let v = s
        .jobs
        .result(&ctx.0.who.user_id, &id)
        .ok_or_else(|| ApiError::not_found(format!("datafile {id}")))?;
    Ok(answer(StatusCode::OK, &v, 0))
}

async fn settings(_ctx: CtxExt) -> Result<Response, ApiError> {
    let v = HrefJson {
        href: format!("/orgs/{}/settings/workloads", keys::ORG),
    };
    answer_of(StatusCode::OK, &v, 0)
}

async fn roles(_ctx: CtxExt) -> Result<Response, ApiError> {
    let v: Vec<RoleOut> = Role::ALL
        .iter()
        .map(|r| RoleOut {
            href: format!("/orgs/{}/roles/{}", keys::ORG, r.name()),
            scoped: r.scoped(),
        })
        .collect();
    answer_of(StatusCode::OK, &v, 0)
}

/// The OpenAPI document itself, as a schema: any JSON object.
#[derive(Serialize, ToSchema)]
#[schema(value_type = Object)]
struct OpenApiDocument(Value);

pub(super) fn api() -> Api {
    let org = "/api/v2/orgs/{org}";
    Api::default()
        .at(
            Method::GET,
            "/api/v2/health",
            Op::new("This node's health, for load balancers: 503 when its region cannot serve (fenced, no leader, cut off). No credentials needed; with them, the Raft topology too.")
                .answer(200, many::<Health>())
                .public(),
            health,
        )
        .at(
            Method::GET,
            "/api/v2/supercluster/leader",
            Op::new("200 on the leader, 404 on members (GSLB probe).")
                .answer(200, one::<Leader>())
                .public(),
            leader,
        )
        .at(
            Method::GET,
            "/api/v2/openapi.json",
            Op::new("This document.")
                .answer(200, one::<OpenApiDocument>())
                .public(),
            spec,
        )
        .at(
            Method::GET,
            &format!("{org}/jobs/{{id}}"),
            Op::new("An async collection job.").answer(200, one::<Job>()),
            job,
        )
        .at(
            Method::GET,
            &format!("{org}/datafiles/{{id}}"),
            Op::new("An async job's result: the collection's items.")
                .answer(200, one::<Datafile>()),
            datafile,
        )
        .at(
            Method::GET,
            &format!("{org}/settings/workloads"),
            Op::new("Workload settings (a connection check for clients).")
                .answer(200, one::<HrefJson>()),
            settings,
        )
        .at(
            Method::GET,
            &format!("{org}/roles"),
            Op::new("The roles.").answer(200, many::<RoleOut>()),
            roles,
        )
}
