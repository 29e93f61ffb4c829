//! The audit trail: one event per accepted or refused write, in the replicated
//! store, readable at `GET /orgs/{org}/events` (Illumio's events API).

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use sc_store::audit::AuditEvent;
use sc_store::db::Txn;
use sc_store::keys;
use sc_store::time::iso8601;
use serde_json::{json, Value};

use super::{collection, AppState, Ctx, CtxExt, Shared};
use crate::error::{ApiError, ErrorEntry};
use crate::rbac::Action;

/// An event for `ctx`'s request.
pub fn event_of(
    ctx: &Ctx,
    state: &AppState,
    resource: &str,
    status: &str,
    http_status: u16,
    errors: Vec<(String, String)>,
) -> AuditEvent {
    let info = state.db.node().info();
    AuditEvent {
        time_ms: ctx.now,
        event_type: ctx.event_type.clone(),
        status: status.to_string(),
        actor: ctx.who.href(),
        username: ctx.who.username.clone(),
        api_method: ctx.method.to_string(),
        api_endpoint: ctx.path.clone(),
        http_status,
        src_ip: ctx.src.clone(),
        node: info.name.clone(),
        region: info.region.clone(),
        resource: resource.to_string(),
        errors,
    }
}

/// An event as Illumio's events API shows it.
fn event_json(ev: &AuditEvent, key: &str) -> Value {
    json!({
        "href": format!("/orgs/{}/events/{key}", keys::ORG),
        "timestamp": iso8601(ev.time_ms),
        "event_type": ev.event_type,
        "status": ev.status,
        "severity": if ev.status == "success" { "info" } else { "warning" },
        "created_by": {"user": {"href": ev.actor, "username": ev.username}},
        "action": {
            "api_method": ev.api_method,
            "api_endpoint": ev.api_endpoint,
            "http_status_code": ev.http_status,
            "src_ip": ev.src_ip,
        },
        "pce_fqdn": ev.node,
        "region": ev.region,
        "resource": ev.resource,
        "errors": ev.errors.iter().map(|(t, m)| json!({"token": t, "message": m})).collect::<Vec<_>>(),
    })
}

/// Records a refused write (its own small command), then gives the answer back.
/// Best effort: when no leader is reachable the refusal is only logged.
pub async fn record_refusal(state: &AppState, ctx: &Ctx, resp: Response) -> Response {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.unwrap_or_default();
    let errors: Vec<(String, String)> = serde_json::from_slice::<Vec<ErrorEntry>>(&bytes)
        .map(|v| v.into_iter().map(|e| (e.token, e.message)).collect())
        .unwrap_or_default();
    let ev = event_of(ctx, state, &ctx.path, "failure", status.as_u16(), errors);
    let mut txn = Txn::default();
    let written = match ev.add_to(&mut txn) {
        Ok(()) => state.db.commit(txn).await.is_ok(),
        Err(_) => false,
    };
    if !written {
        tracing::warn!(event = ?ev, "could not record a refused write in the audit trail");
    }
    Response::from_parts(parts, Body::from(bytes))
}

async fn list(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    if !ctx.who.may(Action::ReadAudit) {
        return Err(ApiError::forbidden(
            "reading audit events needs owner, admin or read_only",
        ));
    }
    ctx.allow_query(&["max_results", "event_type", "status", "username"])?;
    let (events, rev) =
        s.db.scan::<AuditEvent>(keys::AUDIT, super::MAX_ASYNC_RESULTS)
            .await?;
    let q = &ctx.query;
    let items: Vec<Value> = events
        .iter()
        .rev()
        .filter(|e| q.get("event_type").is_none_or(|t| &e.value.event_type == t))
        .filter(|e| q.get("status").is_none_or(|t| &e.value.status == t))
        .filter(|e| q.get("username").is_none_or(|t| &e.value.username == t))
        .map(|e| event_json(&e.value, &keys::id_of(&e.key, keys::AUDIT)))
        .collect();
    collection(&ctx, &s, items, rev)
}

pub(super) fn routes() -> Router<Shared> {
    Router::new().route("/api/v2/orgs/{org}/events", get(list))
}
