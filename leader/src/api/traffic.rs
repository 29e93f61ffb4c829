//! Explorer: traffic flow queries in Illumio's dialect, answered from every
//! region. The asking node resolves the query against its replica (label
//! groups to labels, IP lists to ranges), fans it out to every node over the
//! federation service, and merges; a region that does not answer is named in
//! the job's `regions`, never silently left out.
//!
//! Async queries (`traffic_flows/async_queries`) run as jobs of the node that
//! took them, owned by the user who made them; the synchronous
//! `traffic_analysis_queries` answers at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sc_policy::addr::{AddrSet, Family, IpRange};
use sc_policy::flowlog::{self, Direction};
use sc_proto::federation::flow_actor::Kind as ActorKind;
use sc_proto::federation::{ActorSet, FlowActor, FlowQuery, FlowSide, ServiceMatch, TrafficFlow};
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::objects::{IpListDoc, LabelGroupDoc};
use sc_store::record::Record;
use sc_store::time::{iso8601, now_ms, parse_iso8601};
use sc_store::world::{load_raw, world_of, POLICY_KINDS};

use super::spec::{many, one, Api, Op};
use super::{answer_of, no_content, Ctx, CtxExt, Shared};
use crate::docs::{HrefJson, Refs};
use crate::error::ApiError;
use crate::rbac::{Action, Principal};

/// The most flows one query may ask for (Illumio's limit).
pub const MAX_RESULTS: u64 = 200_000;
/// How long a region may take to answer its part.
pub(super) const REGION_TIMEOUT: Duration = Duration::from_secs(10);
/// Jobs kept per node; the oldest finished ones go first.
const MAX_JOBS: usize = 256;

/// One filter of a query side: exactly one of the fields.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FilterIn {
    #[serde(default)]
    label: Option<HrefJson>,
    #[serde(default)]
    label_group: Option<HrefJson>,
    #[serde(default)]
    workload: Option<HrefJson>,
    #[serde(default)]
    ip_list: Option<HrefJson>,
    #[serde(default)]
    ip_address: Option<IpAddressIn>,
    /// `ams`: all workloads.
    #[serde(default)]
    actors: Option<String>,
    /// Not supported here (no DNS data is collected); refused.
    #[serde(default)]
    fqdn: Option<String>,
    /// Not supported here (every reported flow is unicast); refused.
    #[serde(default)]
    transmission: Option<String>,
}

/// An address, as a string or `{"value": ...}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum IpAddressIn {
    Text(String),
    Value { value: String },
}

/// A side: `include` is an OR of ANDs, `exclude` any of them.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FilterBlock {
    #[serde(default)]
    include: Vec<Vec<FilterIn>>,
    #[serde(default)]
    exclude: Vec<FilterIn>,
}

/// A service filter (`proto` by IANA number).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ServicePortIn {
    #[serde(default)]
    proto: Option<u8>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    to_port: Option<u16>,
    /// Not collected by this VEN; refused when given.
    #[serde(default)]
    process_name: Option<String>,
    #[serde(default)]
    windows_service_name: Option<String>,
}

/// Services to include (any) and exclude.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ServiceBlock {
    #[serde(default)]
    include: Vec<ServicePortIn>,
    #[serde(default)]
    exclude: Vec<ServicePortIn>,
}

fn yes() -> bool {
    true
}

/// An Explorer query (Illumio's `traffic_analysis_queries` body).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TrafficQueryIn {
    /// ISO 8601, e.g. `2026-12-01T00:00:00Z`.
    pub(super) start_date: String,
    /// ISO 8601; after `start_date`.
    pub(super) end_date: String,
    #[serde(default)]
    sources: FilterBlock,
    #[serde(default)]
    destinations: FilterBlock,
    #[serde(default)]
    services: ServiceBlock,
    /// Any of `allowed`, `potentially_blocked`, `blocked`, `unknown`; none: all.
    #[serde(default)]
    policy_decisions: Vec<String>,
    /// Accepted for compatibility: flows are matched by their resolved ends.
    #[serde(default = "yes")]
    exclude_workloads_from_ip_list_query: bool,
    /// `and` (default) or `or`.
    #[serde(default)]
    sources_destinations_query_op: Option<String>,
    /// 1 to 200,000 (default 100,000).
    #[serde(default)]
    max_results: Option<u64>,
    /// The job's name (async queries).
    #[serde(default)]
    query_name: Option<String>,
}

/// One end of a flow.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct FlowNodeOut {
    ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<FlowWorkloadOut>,
}

/// The workload an end was when the flow was seen.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct FlowWorkloadOut {
    href: String,
    name: String,
    hostname: String,
    labels: Vec<FlowLabelOut>,
    enforcement_mode: String,
}

/// A label of an end.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct FlowLabelOut {
    href: String,
    key: String,
    value: String,
}

/// A flow's service.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct FlowServiceOut {
    port: u16,
    proto: u8,
}

/// When a flow was first and last seen.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct TimestampRange {
    first_detected: String,
    last_detected: String,
}

/// A traffic flow as Illumio's Explorer answers it.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct TrafficFlowOut {
    src: FlowNodeOut,
    dst: FlowNodeOut,
    service: FlowServiceOut,
    num_connections: u64,
    /// The last connection's state: `A` active, `C` closed, `T` timed out,
    /// `N` new (logged, not yet tracked); absent when not collected.
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    timestamp_range: TimestampRange,
    /// `allowed`, `potentially_blocked`, `blocked`, or `unknown` where
    /// neither the VEN nor its member's policy could decide.
    policy_decision: String,
    /// What the current draft would decide (after `PUT {job}/update_rules`).
    #[serde(skip_serializing_if = "Option::is_none")]
    draft_policy_decision: Option<String>,
    /// Bytes into the destination, at `enhanced_data_collection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_bi: Option<u64>,
    /// Bytes out of the destination, at `enhanced_data_collection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    dst_bo: Option<u64>,
    /// `inbound` or `outbound`, seen from the reporting workload.
    flow_direction: String,
    transmission: &'static str,
    /// The rule that decided (`<ruleset>/<rule>` or a boundary id; absent:
    /// the enforcement mode's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    /// The region whose member stores it.
    region: String,
}

/// What one region answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct RegionResult {
    pub(super) pce_fqdn: String,
    pub(super) region: String,
    pub(super) responded: bool,
    /// Flows that matched there, before the cap.
    pub(super) matches_count: u64,
    /// Flows it returned.
    pub(super) flows_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) error: Option<String>,
}

impl RegionResult {
    /// What `info`'s region answered to a global query (flows or edges).
    pub(super) fn of(
        info: sc_raft::NodeInfo,
        r: &Result<sc_proto::federation::FlowQueryReply, String>,
    ) -> RegionResult {
        match r {
            Ok(reply) => RegionResult {
                pce_fqdn: info.name,
                region: info.region,
                responded: true,
                matches_count: reply.matches,
                flows_count: (reply.flows.len() + reply.edges.len()) as u64,
                error: None,
            },
            Err(e) => RegionResult {
                pce_fqdn: info.name,
                region: info.region,
                responded: false,
                matches_count: 0,
                flows_count: 0,
                error: Some(e.clone()),
            },
        }
    }

    /// Regions in a stable order: by region, then node.
    pub(super) fn sort(list: &mut [RegionResult]) {
        list.sort_by(|a, b| a.region.cmp(&b.region).then(a.pce_fqdn.cmp(&b.pce_fqdn)));
    }
}

/// An async query job.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct AsyncQuery {
    href: String,
    /// `queued`, `working`, `completed` or `failed`.
    status: &'static str,
    query_name: String,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_at: Option<String>,
    created_by: HrefJson,
    /// When completed: the href of the result (`{href}/download`).
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    /// Flows in the result.
    flows_count: u64,
    /// Flows that matched everywhere, before the cap.
    matches_count: u64,
    /// Every region asked, and whether it answered.
    regions: Vec<RegionResult>,
    /// The draft decisions asked for with `update_rules`: `working` or
    /// `completed` (absent: not asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<&'static str>,
}

struct Job {
    owner: Id,
    info: AsyncQuery,
    /// The flows as the regions answered.
    flows: Vec<TrafficFlow>,
    /// What the draft decides about each, once `update_rules` has run.
    draft: Option<Vec<&'static str>>,
}

/// This node's Explorer jobs.
#[derive(Default)]
pub struct TrafficJobs {
    jobs: Mutex<Vec<(String, Job)>>,
}

/// The labels of a label group, its sub-groups' included.
async fn group_labels(s: &Shared, field: &str, id: &Id) -> Result<BTreeSet<Id>, ApiError> {
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec![id.clone()];
    while let Some(g) = queue.pop() {
        if !seen.insert(g.clone()) {
            continue;
        }
        let key = keys::obj(Space::Active, Kind::LabelGroup, &g);
        let key_draft = keys::obj(Space::Draft, Kind::LabelGroup, &g);
        let rec = match s.db.get::<Record<LabelGroupDoc>>(&key).await? {
            Some(r) => r,
            None => {
                s.db.get::<Record<LabelGroupDoc>>(&key_draft)
                    .await?
                    .ok_or_else(|| {
                        ApiError::reference(field, format!("label group {g} does not exist"))
                    })?
            }
        };
        out.extend(rec.value.doc.labels.iter().cloned());
        queue.extend(rec.value.doc.sub_groups.iter().cloned());
    }
    Ok(out)
}

/// The ranges of an IP list (its exclusions taken out), as CIDRs.
async fn ip_list_cidrs(s: &Shared, field: &str, id: &Id) -> Result<Vec<String>, ApiError> {
    let rec = match s
        .db
        .get::<Record<IpListDoc>>(&keys::obj(Space::Active, Kind::IpList, id))
        .await?
    {
        Some(r) => r,
        None => {
            s.db.get::<Record<IpListDoc>>(&keys::obj(Space::Draft, Kind::IpList, id))
                .await?
                .ok_or_else(|| ApiError::reference(field, format!("IP list {id} does not exist")))?
        }
    };
    let mut inc = Vec::new();
    let mut exc = Vec::new();
    for r in &rec.value.doc.ip_ranges {
        let range = IpRange::parse(&r.text()).map_err(|e| ApiError::internal(e.to_string()))?;
        if r.exclusion {
            exc.push(range);
        } else {
            inc.push(range);
        }
    }
    let set = AddrSet::from_ranges(inc).minus(&AddrSet::from_ranges(exc));
    let mut out = set.cidrs(Family::V4);
    out.extend(set.cidrs(Family::V6));
    Ok(out)
}

/// One filter as the alternatives it stands for (a label group is any of its
/// labels, an IP list any of its ranges).
async fn alternatives(s: &Shared, field: &str, f: &FilterIn) -> Result<Vec<FlowActor>, ApiError> {
    let actor = |k: ActorKind| FlowActor { kind: Some(k) };
    let mut refs = Refs::default();
    let given = [
        f.label.is_some(),
        f.label_group.is_some(),
        f.workload.is_some(),
        f.ip_list.is_some(),
        f.ip_address.is_some(),
        f.actors.is_some(),
        f.fqdn.is_some(),
        f.transmission.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(ApiError::field(
            field,
            "give exactly one of label, label_group, workload, ip_list, ip_address, actors",
        ));
    }
    if let Some(h) = &f.label {
        let id = refs.href(field, &h.href, &[Kind::Label])?;
        if s.db
            .raw(&keys::obj(Space::Live, Kind::Label, &id))
            .await?
            .is_none()
        {
            return Err(ApiError::reference(
                field,
                format!("label {id} does not exist"),
            ));
        }
        return Ok(vec![actor(ActorKind::Label(id))]);
    }
    if let Some(h) = &f.label_group {
        let id = refs.href(field, &h.href, &[Kind::LabelGroup])?;
        let labels = group_labels(s, field, &id).await?;
        return Ok(labels
            .into_iter()
            .map(|l| actor(ActorKind::Label(l)))
            .collect());
    }
    if let Some(h) = &f.workload {
        let id = refs.href(field, &h.href, &[Kind::Workload])?;
        return Ok(vec![actor(ActorKind::Workload(id))]);
    }
    if let Some(h) = &f.ip_list {
        let id = refs.href(field, &h.href, &[Kind::IpList])?;
        let cidrs = ip_list_cidrs(s, field, &id).await?;
        return Ok(cidrs
            .into_iter()
            .map(|c| actor(ActorKind::Cidr(c)))
            .collect());
    }
    if let Some(a) = &f.ip_address {
        let text = match a {
            IpAddressIn::Text(t) | IpAddressIn::Value { value: t } => t.trim().to_string(),
        };
        IpRange::parse(&text)
            .map_err(|e| ApiError::field(&format!("{field}.ip_address"), e.to_string()))?;
        return Ok(vec![actor(ActorKind::Cidr(text))]);
    }
    if let Some(a) = &f.actors {
        if a != "ams" {
            return Err(ApiError::field(
                &format!("{field}.actors"),
                format!("{a:?}: the only value is \"ams\" (all workloads)"),
            ));
        }
        return Ok(vec![actor(ActorKind::AllWorkloads(true))]);
    }
    Err(ApiError::field(
        field,
        "fqdn and transmission filters are not supported: flows carry no DNS names and are all unicast",
    ))
}

/// Resolves one side: each AND set becomes the AND sets of its alternatives'
/// combinations (bounded, so a query cannot explode).
async fn side(s: &Shared, name: &str, b: &FilterBlock) -> Result<FlowSide, ApiError> {
    const MAX_SETS: usize = 10_000;
    let mut include = Vec::new();
    for (i, and) in b.include.iter().enumerate() {
        let mut sets: Vec<Vec<FlowActor>> = vec![vec![]];
        for (j, f) in and.iter().enumerate() {
            let alts = alternatives(s, &format!("{name}.include[{i}][{j}]"), f).await?;
            if alts.is_empty() {
                // A group or list that is empty matches nothing.
                sets.clear();
                break;
            }
            sets = sets
                .into_iter()
                .flat_map(|set| {
                    alts.iter().map(move |a| {
                        let mut next = set.clone();
                        next.push(a.clone());
                        next
                    })
                })
                .collect();
            if sets.len() > MAX_SETS {
                return Err(ApiError::field(
                    &format!("{name}.include[{i}]"),
                    "too many combinations of groups and lists in one AND; split the query",
                ));
            }
        }
        include.extend(
            sets.into_iter()
                .filter(|s| !s.is_empty())
                .map(|all| ActorSet { all }),
        );
    }
    if !b.include.is_empty() && include.is_empty() {
        // Every included set was empty: nothing can match.
        include.push(ActorSet {
            all: vec![FlowActor {
                kind: Some(ActorKind::Workload(String::new())),
            }],
        });
    }
    let mut exclude = Vec::new();
    for (i, f) in b.exclude.iter().enumerate() {
        exclude.extend(alternatives(s, &format!("{name}.exclude[{i}]"), f).await?);
    }
    Ok(FlowSide { include, exclude })
}

fn services(list: &[ServicePortIn], field: &str) -> Result<Vec<ServiceMatch>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let f = format!("{field}[{i}]");
            if p.process_name.is_some() || p.windows_service_name.is_some() {
                return Err(ApiError::field(
                    &f,
                    "process and Windows service names are not collected; filter by port and proto",
                ));
            }
            if let (Some(a), Some(b)) = (p.port, p.to_port) {
                if b < a {
                    return Err(ApiError::field(
                        &format!("{f}.to_port"),
                        format!("{b} is below port {a}"),
                    ));
                }
            }
            if p.to_port.is_some() && p.port.is_none() {
                return Err(ApiError::field(&format!("{f}.to_port"), "needs port"));
            }
            Ok(ServiceMatch {
                proto: u32::from(p.proto.unwrap_or(0)),
                port: u32::from(p.port.unwrap_or(0)),
                to_port: u32::from(p.to_port.unwrap_or(0)),
            })
        })
        .collect()
}

/// The query as every region answers it, checked field by field.
pub(super) async fn resolve(s: &Shared, q: &TrafficQueryIn) -> Result<FlowQuery, ApiError> {
    let start = parse_iso8601(&q.start_date).ok_or_else(|| {
        ApiError::field(
            "start_date",
            "not an ISO 8601 UTC time such as 2026-12-01T00:00:00Z",
        )
    })?;
    let end = parse_iso8601(&q.end_date).ok_or_else(|| {
        ApiError::field(
            "end_date",
            "not an ISO 8601 UTC time such as 2026-12-02T00:00:00Z",
        )
    })?;
    if end < start {
        return Err(ApiError::field("end_date", "is before start_date"));
    }
    let max = q.max_results.unwrap_or(100_000);
    if !(1..=MAX_RESULTS).contains(&max) {
        return Err(ApiError::field(
            "max_results",
            format!("{max}: must be 1 to {MAX_RESULTS}"),
        ));
    }
    for (i, d) in q.policy_decisions.iter().enumerate() {
        if !matches!(
            d.as_str(),
            "allowed" | "potentially_blocked" | "blocked" | "unknown"
        ) {
            return Err(ApiError::field(
                &format!("policy_decisions[{i}]"),
                format!("{d:?}: allowed, potentially_blocked, blocked or unknown"),
            ));
        }
    }
    let either_side = match q.sources_destinations_query_op.as_deref() {
        None | Some("and") => false,
        Some("or") => true,
        Some(o) => {
            return Err(ApiError::field(
                "sources_destinations_query_op",
                format!("{o:?}: and or or"),
            ))
        }
    };
    let _ = q.exclude_workloads_from_ip_list_query;
    Ok(FlowQuery {
        start_ms: start,
        end_ms: end,
        max_results: max as u32,
        decisions: q.policy_decisions.clone(),
        sources: Some(side(s, "sources", &q.sources).await?),
        destinations: Some(side(s, "destinations", &q.destinations).await?),
        services_include: services(&q.services.include, "services.include")?,
        services_exclude: services(&q.services.exclude, "services.exclude")?,
        either_side,
        group_keys: vec![],
        by_workload: false,
        governed: false,
    })
}

fn end_out(e: Option<&sc_proto::federation::FlowEnd>) -> FlowNodeOut {
    let Some(e) = e else {
        return FlowNodeOut {
            ip: String::new(),
            workload: None,
        };
    };
    FlowNodeOut {
        ip: e.ip.clone(),
        workload: e.workload.as_ref().map(|w| FlowWorkloadOut {
            href: keys::href(Space::Live, Kind::Workload, &w.id),
            name: w.name.clone(),
            hostname: w.hostname.clone(),
            labels: w
                .labels
                .iter()
                .map(|l| FlowLabelOut {
                    href: keys::href(Space::Live, Kind::Label, &l.id),
                    key: l.key.clone(),
                    value: l.value.clone(),
                })
                .collect(),
            enforcement_mode: w.enforcement_mode.clone(),
        }),
    }
}

fn flow_out(f: &TrafficFlow) -> TrafficFlowOut {
    TrafficFlowOut {
        src: end_out(f.src.as_ref()),
        dst: end_out(f.dst.as_ref()),
        service: FlowServiceOut {
            port: f.port as u16,
            proto: f.proto as u8,
        },
        num_connections: f.num_connections,
        state: (!f.state.is_empty()).then(|| f.state.clone()),
        timestamp_range: TimestampRange {
            first_detected: iso8601(f.first_ms),
            last_detected: iso8601(f.last_ms),
        },
        policy_decision: f.decision.clone(),
        draft_policy_decision: None,
        dst_bi: (f.dst_bi > 0 || f.dst_bo > 0).then_some(f.dst_bi),
        dst_bo: (f.dst_bi > 0 || f.dst_bo > 0).then_some(f.dst_bo),
        flow_direction: f.direction.clone(),
        transmission: "unicast",
        rule: (!f.rule.is_empty()).then(|| f.rule.clone()),
        region: f.region.clone(),
    }
}

/// Whether `who` may see a flow: one of its ends is a workload in their scope
/// (global readers see all).
fn visible(who: &Principal, f: &TrafficFlow) -> bool {
    let readable = |e: &Option<sc_proto::federation::FlowEnd>| {
        let labels: Vec<Id> = e
            .as_ref()
            .and_then(|e| e.workload.as_ref())
            .map(|w| w.labels.iter().map(|l| l.id.clone()).collect())
            .unwrap_or_default();
        who.may_read_workload(&labels)
    };
    readable(&f.src) || readable(&f.dst)
}

/// Asks every region and merges: newest first, capped.
async fn run_query(
    s: &Shared,
    who: &Principal,
    q: &FlowQuery,
) -> (Vec<TrafficFlow>, Vec<RegionResult>, u64) {
    let answers = s.db.node().fan_out_flows(q, REGION_TIMEOUT).await;
    let mut flows: Vec<TrafficFlow> = Vec::new();
    let mut regions = Vec::new();
    let mut matches = 0;
    for (info, r) in answers {
        regions.push(RegionResult::of(info, &r));
        if let Ok(reply) = r {
            matches += reply.matches;
            flows.extend(reply.flows.into_iter().filter(|f| visible(who, f)));
        }
    }
    flows.sort_by_key(|f| std::cmp::Reverse(f.last_ms));
    flows.truncate(q.max_results as usize);
    RegionResult::sort(&mut regions);
    (flows, regions, matches)
}

pub(super) fn may_query(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.who.may(Action::ReadObjects) {
        Ok(())
    } else {
        Err(ApiError::forbidden("querying traffic needs a role"))
    }
}

async fn analysis(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    may_query(&ctx)?;
    let q: TrafficQueryIn = ctx.parse()?;
    let fq = resolve(&s, &q).await?;
    let (flows, _, _) = run_query(&s, &ctx.who, &fq).await;
    let flows: Vec<TrafficFlowOut> = flows.iter().map(flow_out).collect();
    answer_of(StatusCode::OK, &flows, 0)
}

fn job_href(id: &str) -> String {
    format!("/orgs/{}/traffic_flows/async_queries/{id}", keys::ORG)
}

async fn submit(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    may_query(&ctx)?;
    let q: TrafficQueryIn = ctx.parse()?;
    let fq = resolve(&s, &q).await?;
    let id = keys::new_id();
    let info = AsyncQuery {
        href: job_href(&id),
        status: "queued",
        query_name: q.query_name.clone().unwrap_or_default(),
        created_at: iso8601(ctx.now),
        updated_at: None,
        created_by: HrefJson {
            href: ctx.who.href(),
        },
        result: None,
        flows_count: 0,
        matches_count: 0,
        regions: vec![],
        rules: None,
    };
    {
        let mut jobs = s
            .traffic
            .jobs
            .lock()
            .map_err(|_| ApiError::internal("jobs lock"))?;
        while jobs.len() >= MAX_JOBS {
            jobs.remove(0);
        }
        jobs.push((
            id.clone(),
            Job {
                owner: ctx.who.user_id.clone(),
                info: info.clone(),
                flows: vec![],
                draft: None,
            },
        ));
    }
    let (state, who) = (s.clone(), ctx.who.clone());
    let job_id = id.clone();
    tokio::spawn(async move {
        let (flows, regions, matches) = run_query(&state, &who, &fq).await;
        if let Ok(mut jobs) = state.traffic.jobs.lock() {
            if let Some((_, j)) = jobs.iter_mut().find(|(i, _)| *i == job_id) {
                j.info.status = "completed";
                j.info.updated_at = Some(iso8601(now_ms()));
                j.info.result = Some(format!("{}/download", job_href(&job_id)));
                j.info.flows_count = flows.len() as u64;
                j.info.matches_count = matches;
                j.info.regions = regions;
                j.flows = flows;
            }
        }
    });
    let mut resp = answer_of(StatusCode::ACCEPTED, &info, 0)?;
    resp.headers_mut().insert(
        axum::http::header::LOCATION,
        axum::http::HeaderValue::from_str(&info.href).map_err(ApiError::internal)?,
    );
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(1),
    );
    Ok(resp)
}

/// Runs `f` on the caller's job `id`.
fn with_job<T>(
    s: &Shared,
    ctx: &Ctx,
    p: &HashMap<String, String>,
    f: impl FnOnce(&mut Vec<(String, Job)>, usize) -> T,
) -> Result<T, ApiError> {
    let id = p.get("id").cloned().unwrap_or_default();
    let mut jobs = s
        .traffic
        .jobs
        .lock()
        .map_err(|_| ApiError::internal("jobs lock"))?;
    let i = jobs
        .iter()
        .position(|(j, job)| *j == id && job.owner == ctx.who.user_id)
        .ok_or_else(|| ApiError::not_found(job_href(&id)))?;
    Ok(f(&mut jobs, i))
}

/// Runs `f` on the caller's job `id` once it has completed; before, a 409
/// saying to wait before `what`.
fn completed_job<T>(
    s: &Shared,
    ctx: &Ctx,
    p: &HashMap<String, String>,
    what: &str,
    f: impl FnOnce(&mut Job) -> T,
) -> Result<T, ApiError> {
    with_job(s, ctx, p, |jobs, i| {
        let j = &mut jobs[i].1;
        if j.info.status != "completed" {
            return Err(ApiError::conflict(
                "job_not_completed",
                format!("the query is still running; {what} once its status is completed"),
            ));
        }
        Ok(f(j))
    })?
}

async fn list(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    may_query(&ctx)?;
    let jobs = s
        .traffic
        .jobs
        .lock()
        .map_err(|_| ApiError::internal("jobs lock"))?;
    let mine: Vec<AsyncQuery> = jobs
        .iter()
        .rev()
        .filter(|(_, j)| j.owner == ctx.who.user_id)
        .map(|(_, j)| j.info.clone())
        .collect();
    drop(jobs);
    answer_of(StatusCode::OK, &mine, 0)
}

async fn read(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let info = with_job(&s, &ctx, &p, |jobs, i| jobs[i].1.info.clone())?;
    answer_of(StatusCode::OK, &info, 0)
}

async fn download(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let flows = completed_job(&s, &ctx, &p, "download it", |j| {
        let draft = j.draft.iter().flatten().map(|d| Some(d.to_string()));
        j.flows
            .iter()
            .zip(draft.chain(std::iter::repeat(None)))
            .map(|(f, d)| TrafficFlowOut {
                draft_policy_decision: d,
                ..flow_out(f)
            })
            .collect::<Vec<_>>()
    })?;
    answer_of(StatusCode::OK, &flows, 0)
}

/// Illumio's `update_rules`: works out what the current draft would decide
/// about each flow of a completed job (`draft_policy_decision`), from the
/// replica's draft, with the engine the members compute policy with. Answers
/// 202; the job's `rules` turns `completed`.
async fn update_rules(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    let (raw, info) = completed_job(&s, &ctx, &p, "update its rules", |j| {
        j.info.rules = Some("working");
        (j.flows.clone(), j.info.clone())
    })?;
    let draft = load_raw(&s.db, Space::Draft, &POLICY_KINDS).await?;
    let estate = load_raw(&s.db, Space::Live, &[Kind::Label, Kind::Workload]).await?;
    let world = world_of(estate.iter().chain(draft.iter()))?;
    let (state, id) = (s.clone(), p.get("id").cloned().unwrap_or_default());
    tokio::spawn(async move {
        let decided = tokio::task::spawn_blocking(move || draft_decisions(world, &raw)).await;
        let Ok(mut jobs) = state.traffic.jobs.lock() else {
            return;
        };
        let Some((_, j)) = jobs.iter_mut().find(|(i, _)| *i == id) else {
            return;
        };
        j.draft = decided.ok();
        j.info.rules = Some("completed");
        j.info.updated_at = Some(iso8601(now_ms()));
    });
    answer_of(StatusCode::ACCEPTED, &info, 0)
}

/// What the draft's compiled policy of each flow's reporting workload decides
/// about it (`unknown` where the firewall would decide nothing).
fn draft_decisions(world: sc_store::world::World, flows: &[TrafficFlow]) -> Vec<&'static str> {
    let engine = sc_policy::compute::Engine::new(world.estate, world.policy);
    flows
        .iter()
        .map(|f| {
            let direction = if f.direction == "outbound" {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            let peer = match direction {
                Direction::Inbound => f.src.as_ref(),
                Direction::Outbound => f.dst.as_ref(),
            }
            .and_then(|e| e.ip.parse().ok());
            let decided = engine
                .compiled(&f.reporter)
                .zip(peer)
                .and_then(|(c, peer)| {
                    flowlog::decide(&c, direction, peer, f.proto as u8, f.port as u16)
                });
            decided.map_or("unknown", |(d, _)| d.as_str())
        })
        .collect()
}

async fn remove(
    State(s): State<Shared>,
    ctx: CtxExt,
    Path(p): Path<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    with_job(&s, &ctx, &p, |jobs, i| {
        jobs.remove(i);
    })?;
    Ok(no_content(0))
}

pub(super) fn api() -> Api {
    let base = "/api/v2/orgs/{org}/traffic_flows";
    let jobs = format!("{base}/async_queries");
    let job = format!("{jobs}/{{id}}");
    Api::default()
        .at(
            Method::POST,
            &format!("{base}/traffic_analysis_queries"),
            Op::new("Explorer, at once: the flows every region holds that match.")
                .body(one::<TrafficQueryIn>())
                .answer(200, many::<TrafficFlowOut>()),
            analysis,
        )
        .at(
            Method::POST,
            &jobs,
            Op::new("Explorer, as a job: answers 202 with the job (`Prefer: respond-async`); poll its href, then download.")
                .body(one::<TrafficQueryIn>())
                .answer(202, one::<AsyncQuery>()),
            submit,
        )
        .at(
            Method::GET,
            &jobs,
            Op::new("Your Explorer jobs, newest first.").answer(200, many::<AsyncQuery>()),
            list,
        )
        .at(
            Method::GET,
            &job,
            Op::new("One of your Explorer jobs, with every region asked and whether it answered.")
                .answer(200, one::<AsyncQuery>()),
            read,
        )
        .at(
            Method::GET,
            &format!("{job}/download"),
            Op::new("A completed job's flows.").answer(200, many::<TrafficFlowOut>()),
            download,
        )
        .at(
            Method::PUT,
            &format!("{job}/update_rules"),
            Op::new("Work out what the current draft would decide about each flow of a completed job (`draft_policy_decision` in its download); answers 202, and the job's `rules` turns `completed`.")
                .answer(202, one::<AsyncQuery>()),
            update_rules,
        )
        .at(
            Method::DELETE,
            &job,
            Op::new("Delete one of your Explorer jobs."),
            remove,
        )
}
