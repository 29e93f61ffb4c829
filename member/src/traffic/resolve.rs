//! Who an address is: the workload whose interface has it, with its labels as
//! they are now (a flow keeps the labels of the time it was seen).
//!
//! The index is built from the local replica and rebuilt when older than
//! [`MAX_AGE`], so ingest never reads the store per flow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sc_proto::federation::{FlowLabel, FlowWorkload};
use sc_store::db::Db;
use sc_store::keys::{self, Kind, Space};
use sc_store::objects::{LabelDoc, WorkloadDoc};
use sc_store::record::Record;
use sc_store::world::MAX_OBJECTS;

use crate::error::MemberError;

/// How stale the index may get before ingest rebuilds it.
pub const MAX_AGE: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Index {
    by_ip: HashMap<IpAddr, Arc<FlowWorkload>>,
    by_id: HashMap<String, Arc<FlowWorkload>>,
    built: Option<Instant>,
}

/// The address → workload index of one region.
pub struct Resolver {
    db: Db,
    index: Mutex<Arc<Index>>,
}

fn mode_name(m: sc_policy::model::EnforcementMode) -> String {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Resolver {
    /// An index over `db` (built on first use).
    pub fn new(db: Db) -> Resolver {
        Resolver {
            db,
            index: Mutex::new(Arc::new(Index::default())),
        }
    }

    async fn current(&self) -> Result<Arc<Index>, MemberError> {
        let idx = self
            .index
            .lock()
            .map_err(|_| MemberError::Poisoned)?
            .clone();
        if idx.built.is_some_and(|t| t.elapsed() < MAX_AGE) {
            return Ok(idx);
        }
        let fresh = Arc::new(self.build().await?);
        *self.index.lock().map_err(|_| MemberError::Poisoned)? = fresh.clone();
        Ok(fresh)
    }

    async fn build(&self) -> Result<Index, MemberError> {
        let lp = keys::obj_prefix(Space::Live, Kind::Label);
        let (labels, _) = self.db.scan::<Record<LabelDoc>>(&lp, MAX_OBJECTS).await?;
        let labels: HashMap<String, LabelDoc> = labels
            .into_iter()
            .map(|l| (keys::id_of(&l.key, &lp), l.value.doc))
            .collect();
        let wp = keys::obj_prefix(Space::Live, Kind::Workload);
        let (wls, _) = self
            .db
            .scan::<Record<WorkloadDoc>>(&wp, MAX_OBJECTS)
            .await?;
        let mut idx = Index {
            built: Some(Instant::now()),
            ..Index::default()
        };
        for w in wls {
            let id = keys::id_of(&w.key, &wp);
            let d = &w.value.doc;
            let fw = Arc::new(FlowWorkload {
                id: id.clone(),
                name: d.name.clone(),
                hostname: d.hostname.clone(),
                labels: d
                    .labels
                    .iter()
                    .filter_map(|l| {
                        labels.get(l).map(|doc| FlowLabel {
                            id: l.clone(),
                            key: doc.key.clone(),
                            value: doc.value.clone(),
                        })
                    })
                    .collect(),
                enforcement_mode: mode_name(d.enforcement_mode),
                managed: d.managed,
            });
            for i in &d.interfaces {
                idx.by_ip.insert(i.address, fw.clone());
            }
            idx.by_id.insert(id, fw);
        }
        Ok(idx)
    }

    /// The workload that has `ip`, if any.
    pub async fn workload_at(&self, ip: IpAddr) -> Result<Option<FlowWorkload>, MemberError> {
        Ok(self.current().await?.by_ip.get(&ip).map(|w| (**w).clone()))
    }

    /// Whether `id` is a workload of the store now (a paired VEN's).
    pub async fn exists(&self, id: &str) -> Result<bool, MemberError> {
        let idx = self.current().await?;
        if idx.by_id.contains_key(id) {
            return Ok(true);
        }
        // Paired in the last instants: look once before refusing.
        let key = keys::obj(Space::Live, Kind::Workload, id);
        Ok(self.db.raw(&key).await?.is_some())
    }
}
