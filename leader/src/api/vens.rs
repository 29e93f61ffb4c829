//! Which policy each VEN enforces: the operator's "is my provision out
//! there yet?", answered by every region for the VENs connected to it.
//!
//! What a VEN acknowledged is session state of the member it streams from,
//! not replicated (a Raft write per VEN per provision would be a write storm),
//! so this asks every region over the federation service, as the Explorer
//! does, and names a region that did not answer.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use sc_store::keys::{self, Kind, Space};
use sc_store::objects::WorkloadDoc;
use sc_store::record::Record;
use sc_store::world::MAX_OBJECTS;

use super::objects::{space_of, Params};
use super::spec::{one, Api, Op};
use super::traffic::REGION_TIMEOUT;
use super::{answer_of, CtxExt, Shared};
use crate::error::ApiError;

/// The policy one managed workload's VEN enforces.
#[derive(Debug, Serialize, ToSchema)]
struct VenSync {
    /// The workload.
    href: String,
    /// Its region (where its VEN paired).
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    /// Connected to a region that answered.
    connected: bool,
    /// The region whose node its VEN streams from (the one where it is
    /// current, if two see it): after a failover or an application move, where
    /// it went.
    #[serde(skip_serializing_if = "Option::is_none")]
    served_from: Option<String>,
    /// The active version its enforced policy was computed from (a VEN whose
    /// rules a later version did not change keeps an older number and is
    /// still current).
    #[serde(skip_serializing_if = "Option::is_none")]
    applied_version: Option<u64>,
    /// Its enforced policy is the one its member computes from the latest
    /// active version.
    current: bool,
}

/// One region's part of the answer.
#[derive(Debug, Serialize, ToSchema)]
struct SyncRegion {
    region: String,
    pce_fqdn: String,
    responded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Policy sync of every managed workload the caller may read.
#[derive(Debug, Serialize, ToSchema)]
struct PolicySync {
    /// The latest active version.
    latest_version: u64,
    workloads: Vec<VenSync>,
    regions: Vec<SyncRegion>,
}

async fn policy_sync(
    State(s): State<Shared>,
    ctx: CtxExt,
    axum::extract::Path(p): Params,
) -> Result<Response, ApiError> {
    let ctx = ctx.0;
    space_of(Kind::Workload, &p, false)?;
    ctx.allow_query(&[])?;
    let latest = s.db.get::<u64>(keys::VERSION).await?.map_or(0, |v| v.value);
    let prefix = keys::obj_prefix(Space::Live, Kind::Workload);
    let (objs, rev) =
        s.db.scan::<Record<WorkloadDoc>>(&prefix, MAX_OBJECTS)
            .await?;

    let mut regions = Vec::new();
    let mut enforced: BTreeMap<String, (u64, bool, String)> = BTreeMap::new();
    for (info, answer) in s.db.node().fan_out_ven_policies(REGION_TIMEOUT).await {
        regions.push(SyncRegion {
            region: info.region.clone(),
            pce_fqdn: info.name,
            responded: answer.is_ok(),
            error: answer.as_ref().err().cloned(),
        });
        for v in answer.unwrap_or_default() {
            // A VEN seen by two regions (moving between them) counts as
            // current if either has it current.
            let e = enforced.entry(v.workload).or_insert((
                v.applied_version,
                v.current,
                info.region.clone(),
            ));
            if v.current && !e.1 {
                *e = (v.applied_version, true, info.region.clone());
            }
        }
    }
    regions.sort_by(|a, b| a.region.cmp(&b.region).then(a.pce_fqdn.cmp(&b.pce_fqdn)));

    let workloads = objs
        .iter()
        .filter(|o| o.value.doc.managed && ctx.who.may_read_workload(&o.value.doc.labels))
        .map(|o| {
            let id = keys::id_of(&o.key, &prefix);
            let seen = enforced.get(&id);
            VenSync {
                href: keys::href(Space::Live, Kind::Workload, &id),
                region: o.value.doc.region.clone(),
                connected: seen.is_some(),
                served_from: seen.map(|e| e.2.clone()),
                applied_version: seen.map(|e| e.0),
                current: seen.is_some_and(|e| e.1),
            }
        })
        .collect();
    answer_of(
        StatusCode::OK,
        &PolicySync {
            latest_version: latest,
            workloads,
            regions,
        },
        rev,
    )
}

pub(super) fn api() -> Api {
    Api::default().at(
        Method::GET,
        "/api/v2/orgs/{org}/workloads/policy_sync",
        Op::new("The policy each managed workload's VEN enforces (its version, and whether it is the latest computed for it), from every region; a region that does not answer is named.")
            .answer(200, one::<PolicySync>()),
        policy_sync,
    )
}
