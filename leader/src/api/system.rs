//! Probes, the spec, async jobs, and small org settings.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use super::{answer, CtxExt, Shared};
use crate::error::ApiError;
use crate::rbac::Role;
use sc_store::keys;

/// Every endpoint: method, path, what it does. The OpenAPI document is generated
/// from this table, and a test checks that each entry is routed.
pub const ROUTES: &[(&str, &str, &str)] = &[
    (
        "get",
        "/api/v2/health",
        "This node's health (no credentials; for load balancers).",
    ),
    (
        "get",
        "/api/v2/supercluster/leader",
        "200 on the leader, 404 on members (GSLB probe).",
    ),
    ("get", "/api/v2/openapi.json", "This document."),
    (
        "get",
        "/api/v2/supercluster/status",
        "Every node's role, term, indexes, lag, fence and VENs (owner).",
    ),
    (
        "put",
        "/api/v2/supercluster/fence",
        "Fence this node for a drill: {\"seconds\": N, \"keep_serving\": false}; it lifts itself after N s (owner).",
    ),
    (
        "delete",
        "/api/v2/supercluster/fence",
        "Lift this node's drill fence (owner).",
    ),
    (
        "post",
        "/api/v2/supercluster/membership",
        "Add a node as learner, promote, demote or remove one (owner).",
    ),
    (
        "get",
        "/api/v2/supercluster/backup",
        "The whole store at one point of history, checksummed (owner).",
    ),
    (
        "post",
        "/api/v2/supercluster/restore",
        "Load a backup into a new cluster, then read every key back (owner).",
    ),
    (
        "post",
        "/api/v2/supercluster/campaign",
        "Move leadership to this node (planned transfer; owner).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/labels",
        "List labels (filters: key, value).",
    ),
    ("post", "/api/v2/orgs/{org}/labels", "Create a label."),
    ("get", "/api/v2/orgs/{org}/labels/{id}", "Read a label."),
    (
        "put",
        "/api/v2/orgs/{org}/labels/{id}",
        "Change a label (partial).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/labels/{id}",
        "Delete an unused label.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/workloads",
        "List workloads (filters: name, hostname, labels, managed, online, enforcement_mode).",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/workloads",
        "Create an unmanaged workload.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/workloads/bulk_create",
        "Create up to 1,000 unmanaged workloads.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/workloads/{id}/quarantine",
        "Isolate a workload, or lift it: all its traffic is denied but its VEN's channel to the PCE.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/workloads/{id}/suspend",
        "Suspend a workload's VEN (it enforces nothing), or resume it.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/workloads/{id}/unpair",
        "Unpair a workload: it is deleted and its VEN removes its table and forgets its identity.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/workloads/{id}",
        "Read a workload.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/workloads/{id}",
        "Change a workload (partial).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/workloads/{id}",
        "Delete a workload.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/pairing_profiles",
        "List pairing profiles.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/pairing_profiles",
        "Create a pairing profile.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/pairing_profiles/{id}",
        "Read a pairing profile.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/pairing_profiles/{id}",
        "Change a pairing profile.",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/pairing_profiles/{id}",
        "Delete a pairing profile.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/pairing_profiles/{id}/pairing_key",
        "Issue a pairing key (shown once).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/label_groups",
        "List label groups (draft or active).",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/label_groups",
        "Create a label group (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/label_groups/{id}",
        "Read a label group.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/label_groups/{id}",
        "Change a label group (draft).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/label_groups/{id}",
        "Delete a label group (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/services",
        "List services.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/services",
        "Create a service (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/services/{id}",
        "Read a service.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/services/{id}",
        "Change a service (draft).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/services/{id}",
        "Delete a service (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/ip_lists",
        "List IP lists.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/ip_lists",
        "Create an IP list (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/ip_lists/{id}",
        "Read an IP list.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/ip_lists/{id}",
        "Change an IP list (draft).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/ip_lists/{id}",
        "Delete an IP list (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/enforcement_boundaries",
        "List enforcement boundaries.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/enforcement_boundaries",
        "Create an enforcement boundary (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/enforcement_boundaries/{id}",
        "Read an enforcement boundary.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/enforcement_boundaries/{id}",
        "Change an enforcement boundary (draft).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/enforcement_boundaries/{id}",
        "Delete an enforcement boundary (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets",
        "List rulesets with their rules (in your scope).",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets",
        "Create a ruleset, optionally with rules (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}",
        "Read a ruleset with its rules.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}",
        "Change a ruleset's name, scope, enabled (draft).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}",
        "Delete a ruleset and its rules (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/sec_rules",
        "List a ruleset's allow rules.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/sec_rules",
        "Add an allow rule (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/sec_rules/{rule}",
        "Read an allow rule.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/sec_rules/{rule}",
        "Change an allow rule (draft).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/sec_rules/{rule}",
        "Delete an allow rule (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/deny_rules",
        "List a ruleset's deny rules.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/deny_rules",
        "Add a deny rule (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/deny_rules/{rule}",
        "Read a deny rule.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/deny_rules/{rule}",
        "Change a deny rule (draft).",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/rule_sets/{id}/deny_rules/{rule}",
        "Delete a deny rule (draft).",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy",
        "List provisioned versions.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy",
        "Provision the draft (all, or change_subset) as the next version.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/pending",
        "Pending changes of the draft.",
    ),
    (
        "delete",
        "/api/v2/orgs/{org}/sec_policy/pending",
        "Revert every pending change.",
    ),
    (
        "put",
        "/api/v2/orgs/{org}/sec_policy/delete",
        "Revert the pending changes in change_subset.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/impact",
        "Workloads a provision would change.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/sec_policy/{pversion}",
        "One version, its changes and affected workloads.",
    ),
    (
        "post",
        "/api/v2/orgs/{org}/sec_policy/{pversion}/restore",
        "Roll back: a new version equal to this one.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/events",
        "Audit events, newest first.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/jobs/{id}",
        "An async collection job.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/datafiles/{id}",
        "An async job's result.",
    ),
    (
        "get",
        "/api/v2/orgs/{org}/settings/workloads",
        "Workload settings (connection check).",
    ),
    ("get", "/api/v2/orgs/{org}/roles", "The roles."),
    ("get", "/api/v2/users", "List users."),
    ("post", "/api/v2/users", "Create a user with roles."),
    ("get", "/api/v2/users/{id}", "Read a user."),
    ("put", "/api/v2/users/{id}", "Change a user's roles."),
    (
        "delete",
        "/api/v2/users/{id}",
        "Delete a user and their keys.",
    ),
    (
        "get",
        "/api/v2/users/{id}/api_keys",
        "List a user's API keys.",
    ),
    (
        "post",
        "/api/v2/users/{id}/api_keys",
        "Create an API key (secret shown once).",
    ),
    (
        "delete",
        "/api/v2/users/{id}/api_keys/{key}",
        "Delete an API key.",
    ),
];

/// The OpenAPI 3.0 document, generated from [`ROUTES`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "2XX": {"description": "Success; `X-Revision` gives the store revision the answer reflects."},
                "4XX": {"description": "Refused; nothing changed.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}},
                "503": {"description": "No leader reachable; see Retry-After.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}},
            },
        });
        if matches!(*method, "post" | "put") {
            op["requestBody"] =
                json!({"content": {"application/json": {"schema": {"type": "object"}}}});
        }
        if !path.starts_with("/api/v2/health")
            && *path != "/api/v2/supercluster/leader"
            && !path.ends_with("openapi.json")
        {
            op["security"] = json!([{"apiKey": []}]);
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Supercluster PCE admin API", "version": "2"},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "basic"}},
            "schemas": {"Errors": {"type": "array", "items": {"type": "object", "required": ["token", "message"], "properties": {"token": {"type": "string"}, "message": {"type": "string"}}}}},
        },
    })
}

async fn health(State(s): State<Shared>) -> Response {
    let st = s.db.node().status();
    let info = s.db.node().info();
    let leader = s.db.node().leader_info();
    let v = json!([{
        "fqdn": info.name,
        "region": info.region,
        "status": if leader.is_some() { "normal" } else { "warning" },
        "leader": leader.map(|l| l.name),
        "is_leader": s.db.node().is_leader(),
        "raft": st,
    }]);
    let rev = s.db.revision().await.unwrap_or(0);
    answer(StatusCode::OK, &v, rev)
}

async fn leader(State(s): State<Shared>) -> Result<Response, ApiError> {
    let node = s.db.node();
    let rev = s.db.revision().await.unwrap_or(0);
    if node.is_leader() {
        let info = node.info();
        return Ok(answer(
            StatusCode::OK,
            &json!({"leader": info.name, "region": info.region}),
            rev,
        ));
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
    answer(StatusCode::OK, &openapi(), 0)
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
    Ok(answer(StatusCode::OK, &v, 0))
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

async fn settings(_ctx: CtxExt) -> Response {
    answer(
        StatusCode::OK,
        &json!({"href": format!("/orgs/{}/settings/workloads", keys::ORG)}),
        0,
    )
}

async fn roles(_ctx: CtxExt) -> Response {
    let v: Vec<Value> = Role::ALL
        .iter()
        .map(|r| json!({"href": format!("/orgs/{}/roles/{}", keys::ORG, r.name()), "scoped": r.scoped()}))
        .collect();
    answer(StatusCode::OK, &Value::Array(v), 0)
}

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v2/health", get(health))
        .route("/api/v2/supercluster/leader", get(leader))
        .route("/api/v2/openapi.json", get(spec))
        .route("/api/v2/orgs/{org}/jobs/{id}", get(job))
        .route("/api/v2/orgs/{org}/datafiles/{id}", get(datafile))
        .route("/api/v2/orgs/{org}/settings/workloads", get(settings))
        .route("/api/v2/orgs/{org}/roles", get(roles))
}
