//! The audit trail: one event per accepted or refused write, in the replicated
//! store, readable at `GET /orgs/{org}/events` (Illumio's events API).

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::Method;
use axum::response::Response;
use sc_store::audit::AuditEvent;
use sc_store::keys;
use sc_store::time::iso8601;
use serde::Serialize;
use utoipa::ToSchema;

use super::spec::{many, Api, Op};
use super::{collection, values, AppState, Ctx, CtxExt, Shared};
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
#[derive(Serialize, ToSchema)]
struct Event {
    href: String,
    /// ISO 8601.
    timestamp: String,
    /// `{resource}.{create|update|delete}`.
    event_type: String,
    /// `success` or `failure`.
    status: String,
    /// `info` for a success, `warning` for a refusal.
    severity: &'static str,
    created_by: EventActor,
    action: EventAction,
    /// The node that took the request.
    pce_fqdn: String,
    region: String,
    resource: String,
    /// Why a refused write was refused.
    errors: Vec<ErrorEntry>,
}

/// Who made the request.
#[derive(Serialize, ToSchema)]
struct EventActor {
    user: EventUser,
}

/// The user behind an event.
#[derive(Serialize, ToSchema)]
struct EventUser {
    href: String,
    username: String,
}

/// The request behind an event.
#[derive(Serialize, ToSchema)]
struct EventAction {
    api_method: String,
    api_endpoint: String,
    http_status_code: u16,
    src_ip: String,
}

fn event_json(ev: &AuditEvent, key: &str) -> Event {
    Event {
        href: format!("/orgs/{}/events/{key}", keys::ORG),
        timestamp: iso8601(ev.time_ms),
        event_type: ev.event_type.clone(),
        status: ev.status.clone(),
        severity: if ev.status == "success" {
            "info"
        } else {
            "warning"
        },
        created_by: EventActor {
            user: EventUser {
                href: ev.actor.clone(),
                username: ev.username.clone(),
            },
        },
        action: EventAction {
            api_method: ev.api_method.clone(),
            api_endpoint: ev.api_endpoint.clone(),
            http_status_code: ev.http_status,
            src_ip: ev.src_ip.clone(),
        },
        pce_fqdn: ev.node.clone(),
        region: ev.region.clone(),
        resource: ev.resource.clone(),
        errors: ev
            .errors
            .iter()
            .map(|(t, m)| ErrorEntry {
                token: t.clone(),
                message: m.clone(),
            })
            .collect(),
    }
}

/// Queues a refused write for the audit trail (written in a batch with other
/// refusals, see [`crate::audit_queue`]), then gives the answer back.
pub async fn record_refusal(state: &AppState, ctx: &Ctx, resp: Response) -> Response {
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let bytes = to_bytes(body, 1 << 20).await.unwrap_or_default();
    let errors: Vec<(String, String)> = serde_json::from_slice::<Vec<ErrorEntry>>(&bytes)
        .map(|v| v.into_iter().map(|e| (e.token, e.message)).collect())
        .unwrap_or_default();
    state.audit_queue.push(event_of(
        ctx,
        state,
        &ctx.path,
        "failure",
        status.as_u16(),
        errors,
    ));
    Response::from_parts(parts, Body::from(bytes))
}

/// The runbook's actions (fence, unfence, leader transfer, membership
/// changes, backup, restore) change no policy object, so no write records
/// them: they are audited here, on success. A fence records itself before it
/// is raised (a fenced node cannot write); see `dr::fence`.
pub fn is_dr_action(method: &Method, path: &str) -> bool {
    let Some(what) = path.strip_prefix("/api/v2/supercluster/") else {
        return false;
    };
    match (method.as_str(), what) {
        ("PUT", "fence") => false,
        ("GET", "backup") => true,
        ("GET", _) => false,
        _ => true,
    }
}

/// Queues the audit event of a DR action that succeeded.
pub fn record_dr_action(state: &AppState, ctx: &Ctx, http_status: u16) {
    state.audit_queue.push(event_of(
        ctx,
        state,
        &ctx.path,
        "success",
        http_status,
        vec![],
    ));
}

async fn list(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    if !ctx.who.may(Action::ReadAudit) {
        return Err(ApiError::forbidden(
            "reading audit events needs owner, admin or read_only",
        ));
    }
    ctx.allow_query(EVENTS.accepts())?;
    // Newest first, read from the newest end: however long the trail, the
    // latest events are the ones listed.
    let (events, rev) =
        s.db.scan_newest::<AuditEvent>(keys::AUDIT, super::MAX_ASYNC_RESULTS)
            .await?;
    let q = &ctx.query;
    let items = events
        .iter()
        .filter(|e| q.get("event_type").is_none_or(|t| &e.value.event_type == t))
        .filter(|e| q.get("status").is_none_or(|t| &e.value.status == t))
        .filter(|e| q.get("username").is_none_or(|t| &e.value.username == t))
        .map(|e| event_json(&e.value, &keys::id_of(&e.key, keys::AUDIT)));
    collection(&ctx, &s, values(items)?, rev)
}

const EVENTS: Op = Op::new("Audit events, newest first (filters: event_type, status, username).")
    .answer(200, many::<Event>())
    .query(&["max_results", "event_type", "status", "username"]);

pub(super) fn api() -> Api {
    Api::default().at(Method::GET, "/api/v2/orgs/{org}/events", EVENTS, list)
}
