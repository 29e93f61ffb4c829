//! The DR runbook's endpoints: the cluster as the operator sees it, the drill
//! fence, and planned leadership moves. Owner role only: they change which
//! region serves, not policy.

use std::time::Duration;

use axum::extract::State;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::Response;
use sc_raft::NodeStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::spec::{one, Api, Body, Op};
use super::{answer_of, CtxExt, Shared};
use crate::error::ApiError;
use crate::rbac::Action;

/// Refuses callers without the owner role.
pub(super) fn owner_only(ctx: &super::Ctx) -> Result<(), ApiError> {
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
    let infos: std::collections::HashMap<u64, sc_raft::NodeInfo> =
        node.member_infos().into_iter().collect();
    let mut nodes = Vec::new();
    for (id, r) in node.cluster_status().await {
        let (status, error) = match r {
            Ok(st) => (Some(st), None),
            Err(e) => (None, Some(e)),
        };
        // Named from the membership even when it does not answer, so an
        // operator can tell which region is gone (and remove it by name).
        let info = infos.get(&id);
        nodes.push(NodeReport {
            id,
            name: info.map(|i| i.name.clone()),
            region: info.map(|i| i.region.clone()),
            addr: info.map(|i| i.addr.clone()),
            reachable: status.is_some(),
            status,
            error,
        });
    }
    let v = ClusterStatus {
        asked: node.info().name.clone(),
        leader: node.leader_info().map(|l| l.name),
        nodes,
    };
    answer_of(StatusCode::OK, &v, s.db.revision().await.unwrap_or(0))
}

/// The supercluster as one node sees it.
#[derive(Serialize, ToSchema)]
struct ClusterStatus {
    /// The node that answered.
    asked: String,
    /// The leader's name, if the answering node knows one.
    leader: Option<String>,
    nodes: Vec<NodeReport>,
}

/// One node's own status, or why it could not be asked.
#[derive(Serialize, ToSchema)]
struct NodeReport {
    id: u64,
    /// Its name, region and Raft address, as the membership records them.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<NodeStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// A node's drill fence after a change.
#[derive(Serialize, ToSchema)]
struct FenceState {
    node: String,
    /// How long the fence stands (none: lifted).
    fenced_for_ms: Option<u64>,
}

/// Who leads after a planned transfer.
#[derive(Serialize, ToSchema)]
struct Campaign {
    leader: String,
    term: u64,
    /// False when this node already led.
    moved: bool,
}

/// What a restore loaded and verified.
#[derive(Serialize, ToSchema)]
struct Restored {
    keys: usize,
    /// Raft commands it took.
    commands: usize,
    /// The revision the backup was taken at.
    source_revision: u64,
    /// Every key was read back and compared.
    verified: bool,
}

/// The members after a membership change (node ids).
#[derive(Serialize, ToSchema)]
struct Membership {
    voters: Vec<u64>,
    learners: Vec<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FenceBody {
    /// How long the fence stands before it lifts itself.
    seconds: u64,
    /// Keep serving clients from the replica (a partition, not a region loss).
    #[serde(default)]
    keep_serving: bool,
    /// Fence even though too few voters would be left to elect a leader or
    /// commit (writes stop until a fence lifts).
    #[serde(default)]
    force: bool,
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
    if !body.force {
        quorum_survives_fence(&s).await?;
    }
    // Recorded before it is raised: a fenced node writes nothing.
    let ev = super::audit::event_of(&ctx, &s, &ctx.path, "success", 200, vec![]);
    let mut txn = sc_store::db::Txn::default();
    ev.add_to(&mut txn)?;
    commit_batch(&s, txn).await?;
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
    let v = FenceState {
        node: node.info().name.clone(),
        fenced_for_ms: Some(body.seconds * 1000),
    };
    answer_of(StatusCode::OK, &v, 0)
}

/// Refuses a fence that would leave fewer than a majority of voters able to
/// vote (counting those already fenced or unreachable): the cluster could
/// then neither elect nor commit.
async fn quorum_survives_fence(s: &Shared) -> Result<(), ApiError> {
    let node = s.db.node();
    let me = node.id();
    let voters = node.membership_view().voters;
    if !voters.contains(&me) {
        return Ok(());
    }
    let mut able = 0usize;
    for (id, r) in node.cluster_status().await {
        let up = matches!(&r, Ok(st) if st.fenced_for_ms.is_none());
        if id != me && voters.contains(&id) && up {
            able += 1;
        }
    }
    let need = voters.len() / 2 + 1;
    if able >= need {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "quorum_at_risk",
        format!(
            "fencing {} leaves {able} of {} voters able to vote; electing a leader and committing writes need {need}, so writes would stop until a fence lifts. Lift the other fence first, or fence with force to do it anyway",
            node.info().name,
            voters.len()
        ),
    ))
}

/// Lifts this node's fence.
async fn unfence(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let node = s.db.node();
    node.fence().lift();
    tracing::warn!(by = %ctx.who.username, "drill fence lifted");
    let v = FenceState {
        node: node.info().name.clone(),
        fenced_for_ms: None,
    };
    answer_of(StatusCode::OK, &v, 0)
}

/// Makes this node the leader: a planned transfer. It first catches up with
/// everything committed (so it can win), then campaigns, and answers once it
/// leads, or 409 if it did not win in time (nothing else changed then).
async fn campaign(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let node = s.db.node();
    if node.is_leader() {
        let v = Campaign {
            leader: node.info().name.clone(),
            term: node.status().term,
            moved: false,
        };
        return answer_of(StatusCode::OK, &v, 0);
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
    let t = node.timeouts();
    let window = t.election_max * 4 + t.rpc;
    // The leader holds new writes (they wait, none fails) until this node
    // has its whole log: a campaign with a shorter log would lose.
    node.ask_leader_to_prepare_transfer(window)
        .await
        .map_err(|e| {
            ApiError::conflict(
                "transfer_failed",
                format!("the leader could not prepare the transfer: {e}"),
            )
        })?;
    node.campaign().await.map_err(ApiError::internal)?;
    let deadline = tokio::time::Instant::now() + window;
    // The first campaign may lose: the followers refuse it while their
    // leader lease runs (one and a half heartbeats), and the old leader steps
    // down on seeing the higher term. Once the leases have run out, this node
    // campaigns again at once: before any other node's election timer (at
    // least election_min) lets it campaign, so the transfer does not become
    // a race the old leader can win.
    let lease = t.lease() + t.heartbeat;
    let mut last = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline {
        if !node.is_leader() && last.elapsed() >= lease {
            node.campaign().await.map_err(ApiError::internal)?;
            last = tokio::time::Instant::now();
            tracing::info!("planned transfer: the leases have run out; campaigning again");
        }
        if node.is_leader() {
            node.end_transfer();
            let v = Campaign {
                leader: node.info().name.clone(),
                term: node.status().term,
                moved: true,
            };
            return answer_of(StatusCode::OK, &v, 0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.end_transfer();
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

/// A file in the temp directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(what: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!(
            "pce-{what}-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        )))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Largest backup `restore` accepts (the body is held in memory once).
pub const MAX_BACKUP_BYTES: usize = 512 * 1024 * 1024;

/// The whole store at one point of history, in the checksummed snapshot format
/// (magic, records, CRC-32). The revision it reflects is in `X-Revision`.
async fn backup(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    // Everything acknowledged before the call is in it.
    s.db.linearize().await?;
    let tmp = TempFile::new("backup");
    let node = s.db.node().clone();
    let path = tmp.0.clone();
    let revision = tokio::task::spawn_blocking(move || node.dump(&path))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let bytes = std::fs::read(&tmp.0).map_err(ApiError::internal)?;
    tracing::info!(revision, bytes = bytes.len(), by = %ctx.who.username, "backup taken");
    let mut resp = Response::new(axum::body::Body::from(bytes));
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut()
        .insert("x-revision", axum::http::HeaderValue::from(revision));
    Ok(resp)
}

/// Loads a backup into this cluster, which must hold no policy yet (a new
/// cluster), then reads every key back and compares. Refused, with nothing
/// written, if the file is truncated or altered (checksum, structure) or the
/// cluster is not new.
async fn restore(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    owner_only(&ctx)?;
    let tmp = TempFile::new("restore");
    std::fs::write(&tmp.0, &ctx.body).map_err(ApiError::internal)?;
    let path = tmp.0.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut kv = Vec::new();
        let header = sc_raft::storage::snapshot::read_snapshot(&path, |r| {
            if let sc_raft::storage::snapshot::SnapRecord::Kv { key, entry } = r {
                kv.push((key, entry.value));
            }
            Ok(())
        })?;
        Ok::<_, std::io::Error>((header.1, kv))
    })
    .await
    .map_err(ApiError::internal)?;
    let (source_revision, kv) = read.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_backup",
            format!("the backup is damaged, truncated or not a backup: {e}; nothing was restored"),
        )
    })?;
    s.db.linearize().await?;
    // New: no object but the built-ins every cluster starts with.
    let existing = s.db.raw_scan(b"o/", 16).await?;
    let builtin = |k: &[u8]| {
        [
            (
                sc_store::keys::Kind::Service,
                sc_store::objects::ALL_SERVICES_ID,
            ),
            (
                sc_store::keys::Kind::IpList,
                sc_store::objects::ANY_IP_LIST_ID,
            ),
        ]
        .iter()
        .any(|(kind, id)| {
            [sc_store::keys::Space::Draft, sc_store::keys::Space::Active]
                .iter()
                .any(|sp| sc_store::keys::obj(*sp, *kind, id) == k)
        })
    };
    let found = match existing.iter().find(|(k, _)| !builtin(k)) {
        Some((k, _)) => Some(String::from_utf8_lossy(k).to_string()),
        None => {
            s.db.raw(sc_store::keys::VERSION)
                .await?
                .map(|_| "a provisioned policy version".to_string())
        }
    };
    if let Some(found) = found {
        return Err(ApiError::conflict(
            "not_empty",
            format!("this cluster already holds policy ({found}); restore only into a new cluster"),
        ));
    }
    let kv: Vec<(Vec<u8>, Vec<u8>)> = kv
        .into_iter()
        .filter(|(k, _)| !sc_store::keys::NODE_LOCAL.iter().any(|p| k.starts_with(p)))
        .collect();
    // Batches well inside the command limits, and small enough that a
    // follower takes each in well under one heartbeat: openraft gives an
    // AppendEntries exactly one heartbeat before it sends the same entries
    // again, so a 4 MiB command replicated to a slow (debug-built) follower
    // was resent for ever and the restore timed out.
    let mut txn = sc_store::db::Txn::default();
    let mut bytes = 0usize;
    let mut commands = 0usize;
    for (k, v) in &kv {
        if txn.len() >= 1024 || bytes + k.len() + v.len() > 256 * 1024 {
            commit_batch(&s, std::mem::take(&mut txn)).await?;
            commands += 1;
            bytes = 0;
        }
        bytes += k.len() + v.len();
        txn.put_raw(k.clone(), v.clone());
    }
    if !txn.is_empty() {
        commit_batch(&s, txn).await?;
        commands += 1;
    }
    // Verify: every key reads back with the bytes of the backup.
    let mut mismatched = Vec::new();
    for (k, v) in &kv {
        match s.db.raw(k).await? {
            Some((got, _)) if got == *v => {}
            _ => mismatched.push(String::from_utf8_lossy(k).to_string()),
        }
    }
    if !mismatched.is_empty() {
        return Err(ApiError::internal(format!(
            "restore verification failed for {} keys, e.g. {}",
            mismatched.len(),
            mismatched[0]
        )));
    }
    tracing::warn!(keys = kv.len(), commands, source_revision, by = %ctx.who.username, "backup restored");
    let v = Restored {
        keys: kv.len(),
        commands,
        source_revision,
        verified: true,
    };
    answer_of(StatusCode::OK, &v, s.db.revision().await.unwrap_or(0))
}

async fn commit_batch(s: &Shared, txn: sc_store::db::Txn) -> Result<(), ApiError> {
    match s.db.commit(txn).await {
        Ok(_) => Ok(()),
        Err(sc_store::db::CommitError::Store(e)) => Err(e.into()),
        Err(sc_store::db::CommitError::Conflict(c)) => Err(ApiError::conflict(
            "concurrent_modification",
            format!(
                "restore interrupted by a concurrent write ({c}); start again on a new cluster"
            ),
        )),
    }
}

#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
enum MembershipAction {
    AddLearner,
    Promote,
    Demote,
    Remove,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MembershipBody {
    action: MembershipAction,
    node_id: u64,
    /// For `add_learner`: the new node's name, region and Raft address.
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    addr: Option<String>,
    /// Demote or remove even though fewer than three voters would be left
    /// (the loss of any one region would then stop writes).
    #[serde(default)]
    force: bool,
}

/// Refuses a demotion or removal that leaves no voter, or (without `force`)
/// fewer than three: with two, losing either region stops writes.
fn voters_after_change(
    s: &Shared,
    op: sc_raft::MembershipOp,
    id: u64,
    force: bool,
) -> Result<(), ApiError> {
    use sc_raft::MembershipOp as Op;
    if !matches!(op, Op::Demote | Op::Remove) {
        return Ok(());
    }
    let voters = s.db.node().membership_view().voters;
    if !voters.contains(&id) {
        return Ok(());
    }
    let left = voters.len() - 1;
    if left == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_voter",
            format!(
                "node {id} is the only voter, and a cluster needs one: promote another node first"
            ),
        ));
    }
    if left < 3 && !force {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "fault_tolerance_lost",
            format!(
                "after this, {left} voter{} would be left: {}. Add or promote a region first, or send force to do it anyway",
                if left == 1 { "" } else { "s" },
                if left == 1 {
                    "the loss of that one region stops writes"
                } else {
                    "the loss of either region stops writes"
                }
            ),
        ));
    }
    Ok(())
}

/// Adds a region's node as a learner (it must be running, with a certificate
/// from the cluster CA; the call returns once it has caught up), promotes,
/// demotes or removes one. Routed to the leader.
async fn membership(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    use sc_raft::MembershipOp as Op;
    owner_only(&ctx)?;
    let body: MembershipBody = ctx.parse()?;
    let (op, info) = match body.action {
        MembershipAction::AddLearner => {
            let need = |v: Option<String>, f: &str| {
                v.filter(|x| !x.is_empty())
                    .ok_or_else(|| ApiError::field(f, "required to add a node"))
            };
            let name = need(body.name, "name")?;
            if !sc_raft::pki::valid_node_name(&name) {
                return Err(ApiError::field(
                    "name",
                    "must be a DNS label (the name in its certificate)",
                ));
            }
            let info = sc_raft::NodeInfo {
                name,
                region: need(body.region, "region")?,
                addr: need(body.addr, "addr")?,
            };
            // Is it there, and is it who it says? Asked first, so a wrong
            // address fails in seconds with nothing changed, instead of a
            // learner nobody can reach waiting out the catch-up.
            let seen = s
                .db
                .node()
                .probe(body.node_id, &info, Duration::from_secs(5))
                .await
                .map_err(|e| {
                    ApiError::field(
                        "addr",
                        format!(
                            "no Supercluster node answers at {} ({e}); start it first, with a certificate from this cluster's CA, and check the address",
                            info.addr
                        ),
                    )
                })?;
            if seen.name != info.name || seen.id != body.node_id {
                return Err(ApiError::field(
                    "name",
                    format!(
                        "the node at {} is {} (id {}), not {} (id {})",
                        info.addr, seen.name, seen.id, info.name, body.node_id
                    ),
                ));
            }
            (Op::AddLearner, Some(info))
        }
        MembershipAction::Promote => (Op::Promote, None),
        MembershipAction::Demote => (Op::Demote, None),
        MembershipAction::Remove => (Op::Remove, None),
    };
    voters_after_change(&s, op, body.node_id, body.force)?;
    let view =
        s.db.node()
            .change_membership(op, body.node_id, info)
            .await?;
    tracing::warn!(node = body.node_id, by = %ctx.who.username, "membership changed");
    let v = Membership {
        voters: view.voters.into_iter().collect(),
        learners: view.learners.into_iter().collect(),
    };
    answer_of(StatusCode::OK, &v, 0)
}

pub(super) fn api() -> Api {
    let sc = "/api/v2/supercluster";
    Api::default()
        .at(
            Method::POST,
            &format!("{sc}/membership"),
            Op::new("Add a node as learner, promote, demote or remove one (owner).")
                .body(one::<MembershipBody>())
                .answer(200, one::<Membership>()),
            membership,
        )
        .at(
            Method::GET,
            &format!("{sc}/backup"),
            Op::new("The whole store at one point of history, checksummed (owner).")
                .answer(200, Body::Binary),
            backup,
        )
        .at(
            Method::POST,
            &format!("{sc}/restore"),
            Op::new("Load a backup into a new cluster, then read every key back (owner).")
                .body(Body::Binary)
                .answer(200, one::<Restored>()),
            restore,
        )
        .at(
            Method::GET,
            &format!("{sc}/status"),
            Op::new("Every node's role, term, indexes, lag, fence and VENs (owner).")
                .answer(200, one::<ClusterStatus>()),
            status,
        )
        .at(
            Method::PUT,
            &format!("{sc}/fence"),
            Op::new("Fence this node for a drill; it lifts itself after `seconds` (owner).")
                .body(one::<FenceBody>())
                .answer(200, one::<FenceState>()),
            fence,
        )
        .at(
            Method::DELETE,
            &format!("{sc}/fence"),
            Op::new("Lift this node's drill fence (owner).").answer(200, one::<FenceState>()),
            unfence,
        )
        .at(
            Method::POST,
            &format!("{sc}/campaign"),
            Op::new("Move leadership to this node (planned transfer; owner).")
                .answer(200, one::<Campaign>()),
            campaign,
        )
}
