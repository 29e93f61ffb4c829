//! Probes, the spec, async jobs, and small org settings.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
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
/// with one entry per node asked).
#[derive(Serialize, ToSchema)]
struct Health {
    fqdn: String,
    region: String,
    /// `normal` when the node knows a leader, else `warning`.
    status: &'static str,
    /// The leader's name, if known.
    leader: Option<String>,
    is_leader: bool,
    raft: NodeStatus,
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

async fn health(State(s): State<Shared>) -> Result<Response, ApiError> {
    let st = s.db.node().status();
    let info = s.db.node().info();
    let leader = s.db.node().leader_info();
    let v = [Health {
        fqdn: info.name.clone(),
        region: info.region.clone(),
        status: if leader.is_some() {
            "normal"
        } else {
            "warning"
        },
        leader: leader.map(|l| l.name),
        is_leader: s.db.node().is_leader(),
        raft: st,
    }];
    let rev = s.db.revision().await.unwrap_or(0);
    answer_of(StatusCode::OK, &v, rev)
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
    _ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = p.get("id").cloned().unwrap_or_default();
    let v = s
        .jobs
        .status(&id)
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    answer_of(StatusCode::OK, &v, 0)
}

async fn datafile(
    State(s): State<Shared>,
    _ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let id = p.get("id").cloned().unwrap_or_default();
    let v = s
        .jobs
        .result(&id)
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
            Op::new("This node's health (no credentials; for load balancers).")
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
