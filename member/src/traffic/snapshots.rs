//! Workload snapshots: the description of a flow's end (workload, name,
//! hostname, labels, mode) as it was at ingest, stored once and referred to
//! by id from every flow that has it.
//!
//! A region has thousands of workloads and millions of flows, so most of a
//! flow's bytes were copies of the same few descriptions (`pce bench flows`
//! measured 0.9 KB per flow with them inline). Interned, a flow is a tenth of
//! that, and a query that names labels decides per snapshot (thousands)
//! instead of per flow (millions): see [`Snapshots::holding`]. A workload
//! relabelled gets a new snapshot; old flows keep the labels they had.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use prost::Message;
use sc_proto::federation::FlowWorkload;

use crate::error::MemberError;

/// The format byte of a stored snapshot.
const SNAPSHOT_V: u8 = 1;

/// The interned descriptions, all held in memory (they are few) and in a tree.
pub struct Snapshots {
    db: sled::Db,
    tree: sled::Tree,
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Arc<FlowWorkload>>,
    by_bytes: HashMap<Vec<u8>, u64>,
}

impl Snapshots {
    /// Loads every snapshot of `db`.
    pub fn open(db: &sled::Db) -> Result<Snapshots, MemberError> {
        let tree = db.open_tree("traffic.workloads")?;
        let mut inner = Inner::default();
        for item in tree.iter() {
            let (k, v) = item?;
            let (Ok(id), Some((&SNAPSHOT_V, bytes))) =
                (<[u8; 8]>::try_from(&k[..]), v.split_first())
            else {
                continue;
            };
            let id = u64::from_be_bytes(id);
            if let Ok(w) = FlowWorkload::decode(bytes) {
                inner.by_bytes.insert(bytes.to_vec(), id);
                inner.by_id.insert(id, Arc::new(w));
            }
        }
        Ok(Snapshots {
            db: db.clone(),
            tree,
            inner: RwLock::new(inner),
        })
    }

    /// The id of `w`'s snapshot, stored first if new; 0 for no workload (an
    /// unmanaged address). Stored before the flows that refer to it, in the
    /// same database, so a crash cannot keep a flow without its snapshot.
    pub fn intern(&self, w: Option<&FlowWorkload>) -> Result<u64, MemberError> {
        let Some(w) = w else { return Ok(0) };
        let bytes = w.encode_to_vec();
        if let Some(id) = self.read()?.by_bytes.get(&bytes) {
            return Ok(*id);
        }
        let mut inner = self.inner.write().map_err(|_| MemberError::Poisoned)?;
        if let Some(id) = inner.by_bytes.get(&bytes) {
            return Ok(*id);
        }
        let id = self.db.generate_id()? + 1;
        let mut v = Vec::with_capacity(bytes.len() + 1);
        v.push(SNAPSHOT_V);
        v.extend_from_slice(&bytes);
        self.tree.insert(id.to_be_bytes(), v)?;
        inner.by_id.insert(id, Arc::new(w.clone()));
        inner.by_bytes.insert(bytes, id);
        Ok(id)
    }

    /// The snapshot `id` (`None` for 0 or an unknown id).
    pub fn get(&self, id: u64) -> Option<Arc<FlowWorkload>> {
        self.read().ok()?.by_id.get(&id).cloned()
    }

    /// The snapshots holding at least one of `labels`: a flow whose end is
    /// not one of them cannot match a side that requires those labels.
    pub fn holding(&self, labels: &[String]) -> HashSet<u64> {
        let Ok(inner) = self.read() else {
            return HashSet::new();
        };
        inner
            .by_id
            .iter()
            .filter(|(_, w)| w.labels.iter().any(|l| labels.contains(&l.id)))
            .map(|(id, _)| *id)
            .collect()
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Inner>, MemberError> {
        self.inner.read().map_err(|_| MemberError::Poisoned)
    }
}
