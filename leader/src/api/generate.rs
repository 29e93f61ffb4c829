//! The policy generator's API: allow rules proposed for one app group from
//! the traffic every region observed, with the coverage before and after.
//!
//! Every region aggregates the flows the app group's policy decides (into
//! it, and out of it to addresses: `FlowQuery.governed`, answered by seeks
//! in its store) per workload (`FlowQuery.by_workload`), so the generator
//! sees each workload's current labels, not the ones its flows recorded; this node
//! runs `sc_policy::generate` on its replica's draft and, unless asked for a
//! dry run, writes the proposals into the draft in one transaction. They
//! are never provisioned here: an operator reviews and provisions them.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use sc_policy::generate::{self, End, Observed, Target};
use sc_proto::federation::{flow_actor::Kind as ActorKind, ActorSet, FlowActor, FlowSide};
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::objects::{LabelDoc, RuleDoc};
use sc_store::record::Record;
use sc_store::time::{now_ms, parse_iso8601};
use sc_store::world::{load_raw, world_of, POLICY_KINDS};

use super::spec::{one, Api, Op};
use super::traffic::{may_query, RegionResult, REGION_TIMEOUT};
use super::{answer_of, CtxExt, Shared};
use crate::docs::{Doc, HrefJson, RuleIn};
use crate::error::ApiError;

/// How far back the generator looks when the body names no start.
const DEFAULT_DAYS: u64 = 7;

/// What to generate for.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GenerateIn {
    /// The app group: its app and env labels, and its loc label when groups
    /// are made by location.
    labels: Vec<HrefJson>,
    /// From (ISO 8601 UTC); default: a week before `end_date`.
    #[serde(default)]
    start_date: Option<String>,
    /// To (ISO 8601 UTC); default: now.
    #[serde(default)]
    end_date: Option<String>,
    /// One rule for everything inside the app group instead of role-to-role
    /// rules.
    #[serde(default)]
    ring_fence: bool,
    /// Propose only; write nothing.
    #[serde(default)]
    dry_run: bool,
}

/// A label of the app group.
#[derive(Debug, Serialize, ToSchema)]
struct GroupLabel {
    href: String,
    key: String,
    value: String,
}

/// Where the proposals go.
#[derive(Debug, Serialize, ToSchema)]
struct RuleSetOut {
    /// The draft ruleset (absent in a dry run that would create one).
    #[serde(skip_serializing_if = "Option::is_none")]
    href: Option<String>,
    name: String,
    /// The generator creates it (no draft ruleset is scoped to the group).
    new: bool,
}

/// A proposed rule.
#[derive(Debug, Serialize, ToSchema)]
struct ProposedRule {
    /// `intra_scope`, `ring_fence`, `extra_scope` or `ip_list`.
    kind: &'static str,
    /// Observed connections it allows that the draft did not.
    connections: u64,
    /// The draft rule written (absent in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    href: Option<String>,
    /// The rule, as the rules API takes it.
    rule: RuleIn,
}

/// The fraction of observed connections a rule allows.
#[derive(Debug, Serialize, ToSchema)]
struct Coverage {
    /// Connections the app group's policy decides: into it from anywhere,
    /// out of it to addresses.
    observed_connections: u64,
    /// Allowed by the draft as it was.
    allowed_before: u64,
    /// Allowed by the draft with the proposed rules.
    allowed_after: u64,
    /// `allowed_before ÷ observed_connections` (1 when nothing was observed).
    before: f64,
    /// `allowed_after ÷ observed_connections`.
    after: f64,
}

/// An address in no IP list.
#[derive(Debug, Serialize, ToSchema)]
struct Unnamed {
    ip: String,
    connections: u64,
}

/// Observed connections no rule is proposed for. (Connections out of the
/// group into other app groups are those groups' policy: the regions do
/// not send them.)
#[derive(Debug, Serialize, ToSchema)]
struct LeftOut {
    /// Addresses in no IP list: name them in one and run again.
    unnamed_addresses: Vec<Unnamed>,
    /// Ends gone from the estate, protocols policy cannot name, or no VEN
    /// on either end.
    undecided: u64,
}

/// The generator's report.
#[derive(Debug, Serialize, ToSchema)]
struct GenerateOut {
    labels: Vec<GroupLabel>,
    dry_run: bool,
    rule_set: RuleSetOut,
    /// Most connections first.
    rules: Vec<ProposedRule>,
    coverage: Coverage,
    left_out: LeftOut,
    /// Every region asked, and whether it answered.
    regions: Vec<RegionResult>,
    /// The draft revision written (0 in a dry run or when nothing was new).
    revision: u64,
}

/// The app group's label ids, checked: existing labels, app and env (and
/// at most a loc), one per key.
async fn group_of(s: &Shared, labels: &[HrefJson]) -> Result<Vec<(Id, LabelDoc)>, ApiError> {
    let mut out: Vec<(Id, LabelDoc)> = Vec::new();
    for (i, h) in labels.iter().enumerate() {
        let field = format!("labels[{i}]");
        let Some((Kind::Label, id)) = keys::parse_href(&h.href) else {
            return Err(ApiError::reference(
                &field,
                format!("{:?} is not a label href of this PCE", h.href),
            ));
        };
        let doc =
            s.db.get::<Record<LabelDoc>>(&keys::obj(Space::Live, Kind::Label, &id))
                .await?
                .ok_or_else(|| ApiError::reference(&field, format!("{} does not exist", h.href)))?
                .value
                .doc;
        if !matches!(doc.key.as_str(), "app" | "env" | "loc") {
            return Err(ApiError::field(
                &field,
                format!(
                    "a {} label; an app group is made of app, env and loc labels",
                    doc.key
                ),
            ));
        }
        if out.iter().any(|(_, d)| d.key == doc.key) {
            return Err(ApiError::field(
                &field,
                format!("a second {} label; an app group has one per key", doc.key),
            ));
        }
        out.push((id, doc));
    }
    for key in ["app", "env"] {
        if !out.iter().any(|(_, d)| d.key == key) {
            return Err(ApiError::field(
                "labels",
                format!("no {key} label; an app group needs its app and env labels"),
            ));
        }
    }
    Ok(out)
}

/// An observed end from an edge's end (`w:<id>` or `ip:<address>`).
fn end_of(s: &str) -> Option<End> {
    if let Some(id) = s.strip_prefix("w:") {
        return Some(End::Workload(id.to_string()));
    }
    s.strip_prefix("ip:")
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(End::Address)
}

fn time(field: &str, v: Option<&str>, default: u64) -> Result<u64, ApiError> {
    match v {
        None => Ok(default),
        Some(t) => parse_iso8601(t).ok_or_else(|| {
            ApiError::field(
                field,
                "not an ISO 8601 UTC time such as 2026-12-01T00:00:00Z",
            )
        }),
    }
}

async fn generate(State(s): State<Shared>, ctx: CtxExt) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    may_query(&ctx)?;
    let body: GenerateIn = ctx.parse()?;
    let group = group_of(&s, &body.labels).await?;
    let ids: Vec<Id> = group.iter().map(|(id, _)| id.clone()).collect();
    if !ctx.who.may_read_workload(&ids) {
        return Err(ApiError::forbidden("this app group is outside your scope"));
    }
    let end = time("end_date", body.end_date.as_deref(), now_ms())?;
    let start = time(
        "start_date",
        body.start_date.as_deref(),
        end.saturating_sub(DEFAULT_DAYS * 86_400_000),
    )?;
    if end < start {
        return Err(ApiError::field("end_date", "is before start_date"));
    }

    // Into or out of the group, per workload, from every region.
    let side = || {
        Some(FlowSide {
            include: vec![ActorSet {
                all: ids
                    .iter()
                    .map(|l| FlowActor {
                        kind: Some(ActorKind::Label(l.clone())),
                    })
                    .collect(),
            }],
            exclude: vec![],
        })
    };
    let q = sc_proto::federation::FlowQuery {
        start_ms: start,
        end_ms: end,
        max_results: 1,
        sources: side(),
        destinations: side(),
        either_side: true,
        by_workload: true,
        governed: true,
        ..Default::default()
    };
    let answers = s.db.node().fan_out_flows(&q, REGION_TIMEOUT).await;
    let mut regions = Vec::new();
    let mut observed = Vec::new();
    for (info, r) in answers {
        regions.push(RegionResult::of(info, &r));
        for e in r.map(|r| r.edges).unwrap_or_default() {
            let (Some(src), Some(dst)) = (end_of(&e.src), end_of(&e.dst)) else {
                continue;
            };
            observed.push(Observed {
                src,
                dst,
                proto: u8::try_from(e.proto).unwrap_or(0),
                port: u16::try_from(e.port).unwrap_or(0),
                connections: e.allowed + e.potentially_blocked + e.blocked + e.unknown,
            });
        }
    }
    RegionResult::sort(&mut regions);

    // The generator, on this replica's estate and draft.
    let estate = load_raw(&s.db, Space::Live, &[Kind::Label, Kind::Workload]).await?;
    let draft = load_raw(&s.db, Space::Draft, &POLICY_KINDS).await?;
    let world = world_of(estate.iter().chain(draft.iter()))?;
    let (group_ids, ring_fence) = (ids.clone(), body.ring_fence);
    let (report, name) = tokio::task::spawn_blocking(move || {
        let report = generate::generate(
            &world.estate,
            &world.policy,
            &observed,
            &group_ids,
            ring_fence,
        );
        // The target's name, from the same draft.
        let name = match &report.target {
            Target::Existing(id) => world
                .policy
                .rule_sets
                .get(id)
                .map(|rs| rs.name.clone())
                .unwrap_or_default(),
            Target::New { name, .. } => name.clone(),
        };
        (report, name)
    })
    .await
    .map_err(ApiError::internal)?;
    let target_id = match &report.target {
        Target::Existing(id) => Some(id.clone()),
        Target::New { .. } => None,
    };

    // The target ruleset must be the caller's to write, even when there is
    // nothing new to write (the answer says what would be written).
    let scope_model = sc_policy::model::RuleSet {
        id: target_id.clone().unwrap_or_default(),
        name: name.clone(),
        enabled: true,
        scope: ids
            .iter()
            .cloned()
            .map(sc_policy::model::Actor::Label)
            .collect(),
        rules: vec![],
        deny_rules: vec![],
    };
    if !body.dry_run && !ctx.who.may_write_rule_set(&scope_model) {
        return Err(ApiError::forbidden(
            "writing rules for this app group needs a ruleset manager role covering it; ask for a dry run to see them",
        ));
    }
    let docs: Vec<RuleDoc> = report
        .proposals
        .iter()
        .map(|p| RuleDoc {
            enabled: true,
            description: Some(format!(
                "Proposed by the policy generator ({}) from {} observed connections",
                p.kind.as_str(),
                p.connections
            )),
            providers: p.rule.providers.clone(),
            consumers: p.rule.consumers.clone(),
            services: p.rule.services.clone(),
            unscoped_consumers: p.rule.unscoped_consumers,
            deliberately_broad: false,
        })
        .collect();
    let written = if body.dry_run || docs.is_empty() {
        None
    } else {
        Some(super::rules::add_generated(&s, &ctx, &report.target, &docs).await?)
    };
    let ratio = |n: u64| {
        if report.observed == 0 {
            1.0
        } else {
            n as f64 / report.observed as f64
        }
    };
    let out = GenerateOut {
        labels: group
            .iter()
            .map(|(id, d)| GroupLabel {
                href: keys::href(Space::Live, Kind::Label, id),
                key: d.key.clone(),
                value: d.value.clone(),
            })
            .collect(),
        dry_run: body.dry_run,
        rule_set: RuleSetOut {
            href: written
                .as_ref()
                .map(|w| w.rule_set.clone())
                .or(target_id.clone())
                .map(|id| keys::href(Space::Draft, Kind::RuleSet, &id)),
            name: written.as_ref().map_or(name, |w| w.name.clone()),
            new: target_id.is_none(),
        },
        rules: report
            .proposals
            .iter()
            .zip(docs)
            .enumerate()
            .map(|(i, (p, doc))| ProposedRule {
                kind: p.kind.as_str(),
                connections: p.connections,
                href: written
                    .as_ref()
                    .and_then(|w| w.rules.get(i))
                    .map(|id| keys::href(Space::Draft, Kind::SecRule, id)),
                rule: doc.to_input(),
            })
            .collect(),
        coverage: Coverage {
            observed_connections: report.observed,
            allowed_before: report.allowed_before,
            allowed_after: report.allowed_after,
            before: ratio(report.allowed_before),
            after: ratio(report.allowed_after),
        },
        left_out: LeftOut {
            unnamed_addresses: report
                .left
                .unnamed
                .iter()
                .map(|(ip, n)| Unnamed {
                    ip: ip.to_string(),
                    connections: *n,
                })
                .collect(),
            undecided: report.left.undecided,
        },
        regions,
        revision: written.as_ref().map_or(0, |w| w.revision),
    };
    answer_of(StatusCode::OK, &out, out.revision)
}

pub(super) fn api() -> Api {
    Api::default().at(
        Method::POST,
        "/api/v2/orgs/{org}/policy_generator",
        Op::new("The policy generator: allow rules for one app group from the traffic every region observed (intra-scope, extra-scope, IP lists; or a ring-fence), only for connections the draft does not allow yet, with the coverage before and after. Writes them into the draft (never provisions) unless `dry_run`.")
            .body(one::<GenerateIn>())
            .answer(200, one::<GenerateOut>()),
        generate,
    )
}
