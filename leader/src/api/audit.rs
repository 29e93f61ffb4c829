//! The audit trail: one event per accepted or refused write, in the replicated
//! store, readable at `GET /orgs/{org}/events` (Illumio's events API).

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{collection, AppState, Ctx, CtxExt, Shared};
use crate::db::Txn;
use crate::error::{ApiError, ErrorEntry};
use crate::keys;
use crate::rbac::Action;
use crate::time::iso8601;

/// One audited write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (ms).
    pub time_ms: u64,
    /// `{resource}.{create|update|delete}`.
    pub event_type: String,
    /// `success` or `failure`.
    pub status: String,
    /// The user's href.
    pub actor: String,
    /// The user's name.
    pub username: String,
    /// HTTP method and path.
    pub api_method: String,
    /// Request path.
    pub api_endpoint: String,
    /// The answer's status code.
    pub http_status: u16,
    /// Caller address.
    pub src_ip: String,
    /// The node that took the request.
    pub node: String,
    /// Its region.
    pub region: String,
    /// The object written, when known.
    pub resource: String,
    /// Why it was refused.
    pub errors: Vec<(String, String)>,
}

impl AuditEvent {
    /// An event for `ctx`'s request.
    pub fn of(
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

    /// Adds the event to a transaction.
    pub fn add_to(&self, txn: &mut Txn) -> Result<(), ApiError> {
        txn.put(keys::audit(self.time_ms, rand::random()), self)?;
        Ok(())
    }

    fn json(&self, key: &str) -> Value {
        json!({
            "href": format!("/orgs/{}/events/{key}", keys::ORG),
            "timestamp": iso8601(self.time_ms),
            "event_type": self.event_type,
            "status": self.status,
            "severity": if self.status == "success" { "info" } else { "warning" },
            "created_by": {"user": {"href": self.actor, "username": self.username}},
            "action": {
                "api_method": self.api_method,
                "api_endpoint": self.api_endpoint,
                "http_status_code": self.http_status,
                "src_ip": self.src_ip,
            },
            "pce_fqdn": self.node,
            "region": self.region,
            "resource": self.resource,
            "errors": self.errors.iter().map(|(t, m)| json!({"token": t, "message": m})).collect::<Vec<_>>(),
        })
    }
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
    let ev = AuditEvent::of(ctx, state, &ctx.path, "failure", status.as_u16(), errors);
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
        .map(|e| e.value.json(&keys::id_of(&e.key, keys::AUDIT)))
        .collect();
    collection(&ctx, &s, items, rev)
}

pub(super) fn routes() -> Router<Shared> {
    Router::new().route("/api/v2/orgs/{org}/events", get(list))
}
