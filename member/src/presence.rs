//! Online/offline state of the workloads a member serves, recorded in batches.
//!
//! A VEN connecting or going away changes its workload's `online` flag, which is
//! a replicated write (peers' rules follow it). When a whole region's VENs come
//! or go at once (a member restart, a network blip, a fleet reboot), one write
//! per VEN would be thousands of Raft commands in a second: operators' writes
//! would queue behind them and the leader could miss its heartbeats. So changes
//! are queued and committed together, one command per batch, the latest state
//! of each workload winning; the policy caches then see one change notice and
//! recompute incrementally.
//!
//! Online records which member serves the VEN (`served_by`); a member marks a
//! workload offline only while it is still the one recorded. A member that lost
//! its VENs to a fence or a partition retries its offline writes until it can
//! reach the leader again, and by then the VENs have been claimed by the member
//! they failed over to: those stale writes are skipped, not applied.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use sc_store::db::{Db, Txn};
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::objects::{InterfaceJson, WorkloadDoc};
use sc_store::record::Record;
use sc_store::{transact, PlanError, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Most workloads in one command (2 operations each, far below the command
/// limits). A command is one Raft entry, replicated whole: 1,024 workload
/// records (about a megabyte) took a debug-built follower longer than the one
/// heartbeat openraft waits for an append, and thousands of VENs leaving at
/// once then stalled commits; 256 keeps each entry near a quarter of that.
pub const MAX_BATCH: usize = 256;

/// How long the first change of a batch waits for others to join it.
const LINGER: Duration = Duration::from_millis(50);

/// Pause before retrying a batch that could not be committed (no leader).
const RETRY: Duration = Duration::from_millis(500);

/// One workload's wanted state: online or not, and the addresses its VEN
/// reported (`None`: unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wanted {
    online: bool,
    addresses: Option<Vec<IpAddr>>,
}

impl Wanted {
    /// A newer state over this one: its online flag, and its addresses if it
    /// reported any (a later plain online/offline keeps earlier addresses).
    fn absorb(&mut self, newer: Wanted) {
        self.online = newer.online;
        if newer.addresses.is_some() {
            self.addresses = newer.addresses;
        }
    }
}

/// The queue of state changes; cheap to call from every stream.
#[derive(Clone)]
pub struct Presence {
    tx: mpsc::UnboundedSender<(Id, Wanted)>,
    member: String,
}

impl Presence {
    /// Starts the writer for member `member`; it ends when every `Presence`
    /// handle is dropped.
    pub fn start(db: Db, member: &str) -> (Presence, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(db, member.to_string(), rx));
        (
            Presence {
                tx,
                member: member.to_string(),
            },
            task,
        )
    }

    /// Whether a VEN streaming here must (re)claim its workload: it is offline,
    /// or recorded as served by another member.
    pub fn must_claim(&self, doc: &WorkloadDoc) -> bool {
        !doc.online || doc.served_by.as_deref() != Some(self.member.as_str())
    }

    /// Records that a workload's VEN is (not) connected to this member.
    pub fn set(&self, id: &str, online: bool) {
        let wanted = Wanted {
            online,
            addresses: None,
        };
        let _ = self.tx.send((id.to_string(), wanted));
    }

    /// Records that a workload's VEN is connected here with these addresses
    /// (its host moved: a DR site, a new subnet). The workload keeps its
    /// identity; peers' rules follow the new addresses when the write lands.
    pub fn set_addresses(&self, id: &str, addresses: Vec<IpAddr>) {
        let wanted = Wanted {
            online: true,
            addresses: Some(addresses),
        };
        let _ = self.tx.send((id.to_string(), wanted));
    }

    /// Whether `addresses` differ from the workload's recorded interfaces.
    pub fn addresses_differ(doc: &WorkloadDoc, addresses: &[IpAddr]) -> bool {
        !same_addresses(doc, addresses)
    }
}

fn same_addresses(doc: &WorkloadDoc, addresses: &[IpAddr]) -> bool {
    doc.interfaces.len() == addresses.len()
        && doc
            .interfaces
            .iter()
            .zip(addresses)
            .all(|(i, a)| i.address == *a)
}

fn queue(pending: &mut BTreeMap<Id, Wanted>, id: Id, wanted: Wanted) {
    match pending.get_mut(&id) {
        Some(w) => w.absorb(wanted),
        None => {
            pending.insert(id, wanted);
        }
    }
}

async fn run(db: Db, member: String, mut rx: mpsc::UnboundedReceiver<(Id, Wanted)>) {
    let mut pending: BTreeMap<Id, Wanted> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((id, wanted)) => queue(&mut pending, id, wanted),
                None => return,
            }
        }
        let deadline = tokio::time::Instant::now() + LINGER;
        while pending.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((id, wanted))) => queue(&mut pending, id, wanted),
                Ok(None) | Err(_) => break,
            }
        }
        let batch: BTreeMap<Id, Wanted> = pending
            .iter()
            .take(MAX_BATCH)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match write(&db, &member, &batch).await {
            Ok(()) => {
                // Drop what was written; a newer state that arrived meanwhile
                // is still in the channel.
                for id in batch.keys() {
                    pending.remove(id);
                }
            }
            Err(e) => {
                tracing::warn!(
                    workloads = batch.len(),
                    error = %e,
                    "could not record online states; retrying"
                );
                tokio::time::sleep(RETRY).await;
                // Newer states queued meanwhile go over the ones kept here.
                while let Ok((id, wanted)) = rx.try_recv() {
                    queue(&mut pending, id, wanted);
                }
            }
        }
    }
}

/// Commits one batch; workloads already in the wanted state, gone, or claimed
/// by another member since, are skipped.
async fn write(db: &Db, member: &str, batch: &BTreeMap<Id, Wanted>) -> Result<(), StoreError> {
    let r = transact!(db, BatchError, async {
        let mut txn = Txn::default();
        let (mut up, mut down) = (0usize, 0usize);
        for (id, wanted) in batch {
            let online = &wanted.online;
            let key = keys::obj(Space::Live, Kind::Workload, id);
            let Some(cur) = db.get::<Record<WorkloadDoc>>(&key).await? else {
                continue;
            };
            let doc = &cur.value.doc;
            let mine = doc.served_by.as_deref() == Some(member);
            let moved = wanted
                .addresses
                .as_deref()
                .is_some_and(|a| !same_addresses(doc, a));
            let skip = if *online {
                doc.online && mine && !moved
            } else {
                // Offline only from the member that holds it (or from anyone,
                // for a record no member has claimed).
                !doc.online || (doc.served_by.is_some() && !mine)
            };
            if skip {
                continue;
            }
            let mut rec = cur.value.clone();
            rec.doc.online = *online;
            rec.doc.served_by = online.then(|| member.to_string());
            if let (true, Some(addresses)) = (*online && moved, &wanted.addresses) {
                rec.doc.interfaces = addresses
                    .iter()
                    .enumerate()
                    .map(|(i, a)| InterfaceJson {
                        name: format!("if{i}"),
                        address: *a,
                        cidr_block: None,
                        link_state: None,
                    })
                    .collect();
            }
            rec.meta.updated_at = sc_store::time::now_ms();
            txn.expect(key.clone(), Some(cur.rev));
            txn.put(key, &rec)?;
            if *online {
                up += 1;
            } else {
                down += 1;
            }
        }
        if up + down == 0 {
            return Err(BatchError::Unchanged);
        }
        Ok((txn, (up, down)))
    });
    match r {
        Ok(((up, down), rev)) => {
            tracing::info!(online = up, offline = down, rev, "workload states changed");
            Ok(())
        }
        Err(BatchError::Unchanged) => Ok(()),
        Err(BatchError::Store(e)) => Err(e),
    }
}

/// Why a batch was not written.
enum BatchError {
    /// Every workload of the batch is already in the wanted state: nothing to write.
    Unchanged,
    /// The store refused or failed.
    Store(StoreError),
}

impl From<StoreError> for BatchError {
    fn from(e: StoreError) -> Self {
        BatchError::Store(e)
    }
}

/// A batch reads only workloads it then skips if gone: nothing it refuses can
/// be a lagging replica's doing.
impl PlanError for BatchError {
    fn may_be_stale(&self) -> bool {
        false
    }
}
