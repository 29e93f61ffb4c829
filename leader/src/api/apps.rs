//! Application DR: moving an application's workloads to another region
//! (`pce dr move-app`). A workload's region is the one whose nodes compile
//! its policy and serve its VEN; moving it changes only that. Identity,
//! labels and policy stay, so its rules and its peers' rules are unchanged
//! unless its host's addresses change too (the VEN reports them).

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::transact;
use sc_store::db::Txn;
use sc_store::keys::{self, Kind, Space};
use sc_store::objects::WorkloadDoc;
use sc_store::record::Record;
use sc_store::world::MAX_OBJECTS;

use super::dr::owner_only;
use super::spec::{one, Api, Op};
use super::{answer_of, CtxExt, Shared};
use crate::error::ApiError;

/// Workloads moved per Raft command: each is one record rewrite, and the
/// presence writer's batches show a quarter-megabyte entry stays well inside
/// one heartbeat on a follower.
const PER_COMMAND: usize = 256;

/// Which application to move, and where.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MoveAppBody {
    /// The value of its `app` label.
    app: String,
    /// The value of its `env` label.
    env: String,
    /// The region whose nodes serve it from now on.
    to: String,
}

/// What moved.
#[derive(Serialize, ToSchema)]
struct MovedApp {
    app: String,
    env: String,
    to: String,
    /// The workloads moved now (hrefs).
    moved: Vec<String>,
    /// Workloads of the application already served by `to`.
    already_there: usize,
    /// The store revision after the last move (0 when none moved).
    revision: u64,
}

/// The label id of `key=value`, or what to fix.
async fn label(s: &Shared, field: &str, key: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::field(field, "must not be empty"));
    }
    let name = keys::name(Space::Live, Kind::Label, &format!("{key}={value}"));
    s.db.get::<String>(&name)
        .await?
        .map(|v| v.value)
        .ok_or_else(|| ApiError::reference(field, format!("there is no label {key}={value}")))
}

/// Moves every managed workload labelled `app` and `env` to region `to`.
async fn move_app(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let body: MoveAppBody = ctx.parse()?;
    let mut regions: Vec<String> =
        s.db.node()
            .member_infos()
            .into_iter()
            .map(|(_, i)| i.region)
            .collect();
    regions.sort();
    regions.dedup();
    if !regions.contains(&body.to) {
        return Err(ApiError::field(
            "to",
            format!(
                "{:?} is not a region of the cluster; the regions are: {}",
                body.to,
                regions.join(", ")
            ),
        ));
    }
    let app = label(&s, "app", "app", &body.app).await?;
    let env = label(&s, "env", "env", &body.env).await?;
    let prefix = keys::obj_prefix(Space::Live, Kind::Workload);
    let (all, _) =
        s.db.scan::<Record<WorkloadDoc>>(&prefix, MAX_OBJECTS)
            .await?;
    let of_app: Vec<_> = all
        .into_iter()
        .filter(|w| {
            let d = &w.value.doc;
            d.managed && d.labels.contains(&app) && d.labels.contains(&env)
        })
        .collect();
    if of_app.is_empty() {
        return Err(ApiError::invalid(
            "no_workloads",
            format!(
                "no managed workload is labelled app={} and env={}",
                body.app, body.env
            ),
        ));
    }
    let ids: Vec<String> = of_app
        .iter()
        .filter(|w| w.value.doc.region.as_deref() != Some(body.to.as_str()))
        .map(|w| keys::id_of(&w.key, &prefix))
        .collect();
    let already_there = of_app.len() - ids.len();
    let mut moved = Vec::new();
    let mut revision = 0;
    for chunk in ids.chunks(PER_COMMAND) {
        let chunk_result = transact!(&s.db, async {
            let mut txn = Txn::default();
            let mut done = Vec::new();
            for id in chunk {
                let key = keys::obj(Space::Live, Kind::Workload, id);
                // Re-read under the transaction's precondition: gone or
                // already moved since the scan is skipped, not an error.
                let Some(cur) = s.db.get::<Record<WorkloadDoc>>(&key).await? else {
                    continue;
                };
                if cur.value.doc.region.as_deref() == Some(body.to.as_str()) {
                    continue;
                }
                let mut rec = cur.value.clone();
                rec.doc.region = Some(body.to.clone());
                rec.meta.updated_at = ctx.now;
                rec.meta.updated_by = ctx.who.href();
                txn.expect(key.clone(), Some(cur.rev));
                txn.put(key, &rec)?;
                done.push(keys::href(Space::Live, Kind::Workload, id));
            }
            ctx.audit(&mut txn, &s, &ctx.path)?;
            Ok((txn, done))
        });
        let (done, rev) = match chunk_result {
            Ok(r) => r,
            // Commands before this one are committed: say so, so the
            // operator knows running it again finishes the move.
            Err(mut e) if !moved.is_empty() => {
                for entry in &mut e.errors {
                    entry.message = format!(
                        "{} (after {} of {} workloads moved to {}; run the move again to finish it)",
                        entry.message,
                        moved.len(),
                        ids.len(),
                        body.to
                    );
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        moved.extend(done);
        revision = rev;
    }
    tracing::warn!(app = %body.app, env = %body.env, to = %body.to, workloads = moved.len(), by = %ctx.who.username, "application moved");
    let v = MovedApp {
        app: body.app,
        env: body.env,
        to: body.to,
        moved,
        already_there,
        revision,
    };
    answer_of(StatusCode::OK, &v, revision)
}

pub(super) fn api() -> Api {
    Api::default().at(
        Method::POST,
        "/api/v2/supercluster/move_app",
        Op::new(
            "Move an application's workloads (app and env labels) to another region's nodes; \
             their VENs re-home there, identity and policy kept (owner).",
        )
        .body(one::<MoveAppBody>())
        .answer(200, one::<MovedApp>()),
        move_app,
    )
}
