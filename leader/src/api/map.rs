//! The app group map: app groups (workloads sharing app and env labels, and
//! loc when asked) as nodes, the traffic between them as edges, with the
//! decision mix and rule coverage of each, from every region.
//!
//! The body is an Explorer query (the same filters and time range); every
//! region aggregates its matching flows into edges between groups before
//! answering (`FlowQuery.group_keys`), so a map over millions of flows
//! crosses the federation as edges. This node then names the ends (an
//! address by the IP lists holding it, else `internet` or `private`), adds
//! each group's workloads from its replica, and merges the regions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use sc_policy::compute::ip_list_set;
use sc_proto::federation::MapEdge;
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::objects::{LabelDoc, WorkloadDoc};
use sc_store::record::Record;
use sc_store::time::iso8601;
use sc_store::world::{load_raw, world_of};

use super::spec::{one, Api, Op};
use super::traffic::{may_query, resolve, RegionResult, TrafficQueryIn, REGION_TIMEOUT};
use super::{answer_of, CtxExt, Shared};
use crate::error::ApiError;

/// How groups are made (query string).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MapParams {
    /// Group by app, env and loc (default: app and env).
    #[serde(default)]
    include_location: bool,
}

/// A label of a group.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct GroupLabel {
    href: String,
    key: String,
    value: String,
}

/// A node of the map.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct MapNode {
    /// `app=<id>|env=<id>`, `unlabelled`, `ip_list:<id>`, `internet` or `private`.
    id: String,
    /// `app_group`, `unlabelled`, `ip_list`, `internet` or `private`.
    kind: &'static str,
    /// For people: the label values, or the IP list's name.
    name: String,
    labels: Vec<GroupLabel>,
    /// Workloads in the group (0 for addresses).
    workloads: u64,
    /// Workloads per enforcement mode.
    enforcement_modes: BTreeMap<String, u64>,
    /// The regions its managed workloads are served from.
    regions: Vec<String>,
}

/// Connections on one service of an edge.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct EdgeService {
    port: u32,
    proto: u32,
    connections: u64,
}

/// Connections by decision.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
struct DecisionMix {
    allowed: u64,
    potentially_blocked: u64,
    blocked: u64,
    unknown: u64,
}

/// An edge of the map: the traffic from one node to another.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct MapEdgeOut {
    src: String,
    dst: String,
    services: Vec<EdgeService>,
    connections: u64,
    policy_decisions: DecisionMix,
    /// Allowed ÷ all connections observed: how much of this traffic the
    /// active policy already allows.
    rule_coverage: f64,
    last_detected: String,
    /// The Explorer query body that lists this edge's flows (its group ends).
    #[schema(value_type = Object)]
    flows_query: Value,
}

/// The map.
#[derive(Debug, Clone, Serialize, ToSchema)]
struct AppGroupMap {
    /// The label keys groups are made of.
    group_by: Vec<String>,
    nodes: Vec<MapNode>,
    edges: Vec<MapEdgeOut>,
    /// Every region asked, and whether it answered.
    regions: Vec<RegionResult>,
}

/// The label ids of a group id (`unlabelled`: none); `None` for address ends.
fn members_of(id: &str) -> Option<Vec<Id>> {
    if id == "unlabelled" {
        return Some(vec![]);
    }
    if id.starts_with("ip:") || id.starts_with("ip_list:") || id == "internet" || id == "private" {
        return None;
    }
    id.split('|')
        .map(|part| part.split_once('=').map(|(_, l)| l.to_string()))
        .collect()
}

/// Names an address end: the IP lists holding it, else internet or private.
fn address_node(
    ip: &str,
    lists: &[(Id, String, sc_policy::addr::AddrSet)],
) -> (String, &'static str, String) {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        return ("internet".into(), "internet", "internet".into());
    };
    if let Some((id, name, _)) = lists.iter().find(|(_, _, set)| set.contains(addr)) {
        return (format!("ip_list:{id}"), "ip_list", name.clone());
    }
    let private = match addr {
        IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local(),
        IpAddr::V6(a) => a.is_loopback() || (a.segments()[0] & 0xfe00) == 0xfc00,
    };
    if private {
        ("private".into(), "private", "private".into())
    } else {
        ("internet".into(), "internet", "internet".into())
    }
}

async fn map(
    State(s): State<Shared>,
    ctx: CtxExt,
    Query(params): Query<MapParams>,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    may_query(&ctx)?;
    let q: TrafficQueryIn = ctx.parse()?;
    let mut fq = resolve(&s, &q).await?;
    let keys: Vec<String> = if params.include_location {
        vec!["app".into(), "env".into(), "loc".into()]
    } else {
        vec!["app".into(), "env".into()]
    };
    fq.group_keys = keys.clone();

    // The estate from the replica: labels, workloads, IP lists.
    let estate = load_raw(&s.db, Space::Live, &[Kind::Label, Kind::Workload]).await?;
    let mut labels: BTreeMap<Id, LabelDoc> = BTreeMap::new();
    let mut workloads: Vec<WorkloadDoc> = Vec::new();
    for ((kind, id), bytes) in &estate {
        match kind {
            Kind::Label => {
                let r: Record<LabelDoc> = sc_store::record::decode(bytes)?;
                labels.insert(id.clone(), r.doc);
            }
            Kind::Workload => {
                let r: Record<WorkloadDoc> = sc_store::record::decode(bytes)?;
                workloads.push(r.doc);
            }
            _ => {}
        }
    }
    let active = load_raw(&s.db, Space::Active, &[Kind::IpList]).await?;
    let world = world_of(active.iter())?;
    let lists: Vec<(Id, String, sc_policy::addr::AddrSet)> = world
        .policy
        .ip_lists
        .values()
        .map(|l| (l.id.clone(), l.name.clone(), ip_list_set(l)))
        .collect();
    let group_of = |ids: &[Id]| -> (String, Vec<Id>) {
        let mut parts = Vec::new();
        let mut members = Vec::new();
        for k in &keys {
            match ids
                .iter()
                .find(|l| labels.get(*l).is_some_and(|d| &d.key == k))
            {
                Some(l) => {
                    parts.push(format!("{k}={l}"));
                    members.push(l.clone());
                }
                None => return ("unlabelled".into(), vec![]),
            }
        }
        (parts.join("|"), members)
    };

    // Nodes: every group of the estate the caller may see.
    let mut nodes: BTreeMap<String, MapNode> = BTreeMap::new();
    let mut node_labels: BTreeMap<String, Vec<Id>> = BTreeMap::new();
    let label_out = |id: &Id| GroupLabel {
        href: keys::href(Space::Live, Kind::Label, id),
        key: labels.get(id).map(|d| d.key.clone()).unwrap_or_default(),
        value: labels.get(id).map(|d| d.value.clone()).unwrap_or_default(),
    };
    let group_node = |id: &str, members: &[Id]| MapNode {
        id: id.to_string(),
        kind: if id == "unlabelled" {
            "unlabelled"
        } else {
            "app_group"
        },
        name: if members.is_empty() {
            "unlabelled".into()
        } else {
            members
                .iter()
                .map(|l| labels.get(l).map(|d| d.value.clone()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" | ")
        },
        labels: members.iter().map(label_out).collect(),
        workloads: 0,
        enforcement_modes: BTreeMap::new(),
        regions: vec![],
    };
    for w in &workloads {
        if !ctx.who.may_read_workload(&w.labels) {
            continue;
        }
        let (id, members) = group_of(&w.labels);
        let n = nodes
            .entry(id.clone())
            .or_insert_with(|| group_node(&id, &members));
        n.workloads += 1;
        let mode = serde_json::to_value(w.enforcement_mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *n.enforcement_modes.entry(mode).or_default() += 1;
        if let Some(r) = &w.region {
            if !n.regions.contains(r) {
                n.regions.push(r.clone());
                n.regions.sort();
            }
        }
        node_labels.insert(id, members);
    }

    // Edges from every region, the address ends named here.
    let answers = s.db.node().fan_out_flows(&fq, REGION_TIMEOUT).await;
    let mut regions = Vec::new();
    let mut merged: BTreeMap<(String, String), (Vec<MapEdge>, DecisionMix)> = BTreeMap::new();
    for (info, r) in answers {
        regions.push(RegionResult::of(info, &r));
        let edges = r.map(|r| r.edges).unwrap_or_default();
        for mut e in edges {
            for end in [&mut e.src, &mut e.dst] {
                if let Some(ip) = end.strip_prefix("ip:").map(str::to_string) {
                    let (id, kind, name) = address_node(&ip, &lists);
                    nodes.entry(id.clone()).or_insert_with(|| MapNode {
                        id: id.clone(),
                        kind,
                        name,
                        labels: vec![],
                        workloads: 0,
                        enforcement_modes: BTreeMap::new(),
                        regions: vec![],
                    });
                    *end = id;
                }
            }
            // Groups seen in traffic that have no workloads now (the flows
            // keep the labels their ends had) are nodes too, if readable.
            for end in [&e.src, &e.dst] {
                let Some(members) = members_of(end) else {
                    continue;
                };
                if !node_labels.contains_key(end) && ctx.who.may_read_workload(&members) {
                    nodes.insert(end.clone(), group_node(end, &members));
                    node_labels.insert(end.clone(), members);
                }
            }
            // A scoped caller sees the edges touching its groups.
            if !(node_labels.contains_key(&e.src) || node_labels.contains_key(&e.dst)) {
                continue;
            }
            let slot = merged
                .entry((e.src.clone(), e.dst.clone()))
                .or_insert_with(|| (vec![], DecisionMix::default()));
            slot.1.allowed += e.allowed;
            slot.1.potentially_blocked += e.potentially_blocked;
            slot.1.blocked += e.blocked;
            slot.1.unknown += e.unknown;
            slot.0.push(e);
        }
    }
    RegionResult::sort(&mut regions);
    let side = |id: &str| -> Value {
        match node_labels.get(id) {
            Some(ls) if !ls.is_empty() => {
                json!({"include": [ls.iter().map(|l| json!({"label": {"href": keys::href(Space::Live, Kind::Label, l)}})).collect::<Vec<_>>()]})
            }
            _ => json!({"include": []}),
        }
    };
    let edges: Vec<MapEdgeOut> = merged
        .into_iter()
        .map(|((src, dst), (list, mix))| {
            let mut services: BTreeMap<(u32, u32), u64> = BTreeMap::new();
            let mut last = 0;
            for e in &list {
                *services.entry((e.port, e.proto)).or_default() +=
                    e.allowed + e.potentially_blocked + e.blocked + e.unknown;
                last = last.max(e.last_ms);
            }
            let total = mix.allowed + mix.potentially_blocked + mix.blocked + mix.unknown;
            MapEdgeOut {
                flows_query: json!({
                    "start_date": q.start_date,
                    "end_date": q.end_date,
                    "sources": side(&src),
                    "destinations": side(&dst),
                }),
                src,
                dst,
                services: services
                    .into_iter()
                    .map(|((port, proto), connections)| EdgeService {
                        port,
                        proto,
                        connections,
                    })
                    .collect(),
                connections: total,
                rule_coverage: if total == 0 {
                    0.0
                } else {
                    mix.allowed as f64 / total as f64
                },
                policy_decisions: mix,
                last_detected: iso8601(last),
            }
        })
        .collect();
    // Nodes: the groups the caller may see, and the ends of its edges (a
    // group outside a scoped caller's scope by its labels only, no counts).
    let seen: BTreeSet<&String> = edges.iter().flat_map(|e| [&e.src, &e.dst]).collect();
    for id in &seen {
        if !nodes.contains_key(*id) {
            if let Some(members) = members_of(id) {
                nodes.insert((*id).clone(), group_node(id, &members));
            }
        }
    }
    let nodes: Vec<MapNode> = nodes
        .into_values()
        .filter(|n| node_labels.contains_key(&n.id) || seen.contains(&n.id))
        .collect();
    answer_of(
        StatusCode::OK,
        &AppGroupMap {
            group_by: keys,
            nodes,
            edges,
            regions,
        },
        0,
    )
}

pub(super) fn api() -> Api {
    Api::default().at(
        Method::POST,
        "/api/v2/orgs/{org}/app_group_map",
        Op::new("The app group map from every region: app groups as nodes, the traffic between them as edges with the decision mix and rule coverage. The body is an Explorer query; `?include_location=true` groups by app, env and loc.")
            .body(one::<TrafficQueryIn>())
            .query(&["include_location"])
            .answer(200, one::<AppGroupMap>()),
        map,
    )
}
