//! The DR runbook's endpoints: the cluster as the operator sees it, the drill
//! fence, and planned leadership moves. Owner role only: they change which
//! region serves, not policy.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::{answer, CtxExt, Shared};
use crate::error::ApiError;
use crate::rbac::Action;

/// Refuses callers without the owner role.
fn owner_only(ctx: &super::Ctx) -> Result<(), ApiError> {
    if ctx.who.may(Action::OperateCluster) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "the DR runbook endpoints need an API key of a user with the owner role",
        ))
    }
}

/// Every node's status as this node gathers it (unreachable nodes are listed
/// with the reason), so one call answers "is the supercluster healthy".
async fn status(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let node = s.db.node();
    let mut nodes = Vec::new();
    for (id, r) in node.cluster_status().await {
        nodes.push(match r {
            Ok(st) => json!({"id": id, "reachable": true, "status": st}),
            Err(e) => json!({"id": id, "reachable": false, "error": e}),
        });
    }
    let v = json!({
        "asked": node.info().name,
        "leader": node.leader_info().map(|l| l.name),
        "nodes": nodes,
    });
    Ok(answer(
        StatusCode::OK,
        &v,
        s.db.revision().await.unwrap_or(0),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceBody {
    /// How long the fence stands before it lifts itself.
    seconds: u64,
    /// Keep serving clients from the replica (a partition, not a region loss).
    #[serde(default)]
    keep_serving: bool,
}

/// Fences this node for a drill (see `sc_raft::network::fence`).
async fn fence(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let body: FenceBody = ctx.parse()?;
    let max = sc_raft::network::fence::MAX_FENCE.as_secs();
    if body.seconds == 0 || body.seconds > max {
        return Err(ApiError::field(
            "seconds",
            format!("must be 1..={max} (the fence lifts itself after it)"),
        ));
    }
    let node = s.db.node();
    if body.keep_serving {
        node.fence().partition(Duration::from_secs(body.seconds));
    } else {
        node.fence().raise(Duration::from_secs(body.seconds));
    }
    tracing::warn!(
        seconds = body.seconds,
        keep_serving = body.keep_serving,
        by = %ctx.who.username,
        "node fenced for a drill"
    );
    Ok(answer(
        StatusCode::OK,
        &json!({"node": node.info().name, "fenced_for_ms": body.seconds * 1000}),
        0,
    ))
}

/// Lifts this node's fence.
async fn unfence(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let node = s.db.node();
    node.fence().lift();
    tracing::warn!(by = %ctx.who.username, "drill fence lifted");
    Ok(answer(
        StatusCode::OK,
        &json!({"node": node.info().name, "fenced_for_ms": null}),
        0,
    ))
}

/// Makes this node the leader: a planned transfer. It first catches up with
/// everything committed (so it can win), then campaigns, and answers once it
/// leads, or 409 if it did not win in time (nothing else changed then).
async fn campaign(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let node = s.db.node();
    if node.is_leader() {
        return Ok(answer(
            StatusCode::OK,
            &json!({"leader": node.info().name, "term": node.status().term, "moved": false}),
            0,
        ));
    }
    let st = node.status();
    let voter = st.peers.iter().any(|p| p.id == st.id && p.voter);
    if !voter {
        return Err(ApiError::conflict(
            "not_a_voter",
            format!(
                "{} is a learner; promote it before moving leadership to it",
                st.name
            ),
        ));
    }
    s.db.linearize().await?;
    node.campaign().await.map_err(ApiError::internal)?;
    let t = node.timeouts();
    let deadline = tokio::time::Instant::now() + t.election_max * 4 + t.rpc;
    while tokio::time::Instant::now() < deadline {
        if node.is_leader() {
            return Ok(answer(
                StatusCode::OK,
                &json!({"leader": node.info().name, "term": node.status().term, "moved": true}),
                0,
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(ApiError::conflict(
        "transfer_failed",
        format!(
            "{} campaigned but did not win in time; the leader is {}",
            node.info().name,
            node.leader_info()
                .map(|l| l.name)
                .unwrap_or_else(|| "not known yet".into())
        ),
    ))
}

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v2/supercluster/status", get(status))
        .route("/api/v2/supercluster/fence", put(fence).delete(unfence))
        .route("/api/v2/supercluster/campaign", post(campaign))
}
