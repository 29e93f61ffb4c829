//! The regional compiled-policy cache: one policy engine over the replicated
//! active policy and estate, kept current from the store's change notices, that
//! compiles the workloads this member serves (its region's, plus VENs that failed
//! over to it) and says exactly which of them changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use sc_policy::compute::CompiledPolicy;
use sc_policy::model::EnforcementMode;
use sc_policy::{Change, Engine};
use sc_proto::contract::policy_hash;
use sc_store::db::Db;
use sc_store::keys::{self, Id, Kind, Space};
use sc_store::objects::WorkloadDoc;
use sc_store::record::Record;
use sc_store::world::{load_raw, world_of, World, MAX_OBJECTS, POLICY_KINDS};
use tokio::sync::Notify;

use crate::error::MemberError;
use crate::render::RuleTexts;

/// What a VEN receives: one workload's compiled policy, and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The active version it was computed from.
    pub version: u64,
    /// SHA-256 of `json`, hex.
    pub hash: String,
    /// The compiled policy as JSON (the VEN renders nftables from it).
    pub json: String,
    /// The policy itself.
    pub compiled: Arc<CompiledPolicy>,
}

/// Adopted workloads and the region each was of when adopted.
type Adopted = HashMap<Id, Option<String>>;

/// Whether `id` is adopted and still of the region it was adopted from.
fn adopted_now(adopted: &Adopted, id: &str, doc: &WorkloadDoc) -> bool {
    adopted
        .get(id)
        .is_some_and(|r| r.as_deref() == doc.region.as_deref())
}

/// Compiles workload `id` here (`managed`) or stops: adoption and its end.
fn set_managed(engine: &mut Engine, id: &str, managed: bool) {
    let id2 = id.to_string();
    engine.update(&[Change::Workload(id.to_string())], move |estate, _| {
        if let Some(w) = estate.workloads.get_mut(&id2) {
            w.managed = managed;
        }
    });
}

struct Inner {
    engine: Engine,
    version: u64,
    /// Workloads of other regions whose VENs are connected here (failover),
    /// with the region each was of when adopted: an adoption ends when its
    /// workload's region changes (its application moved), so a member does
    /// not keep compiling a workload that now belongs to a third region.
    adopted: Adopted,
    /// Workloads held by an action, whatever the policy says (quarantine, suspension).
    quarantined: HashMap<Id, Hold>,
    /// Rendered policies, filled lazily by the streams that send them: an update
    /// only drops the changed entries, so rendering 10,000 changed policies is
    /// spread over the streams (and both cores) instead of holding the lock.
    rendered: HashMap<Id, Arc<Rendered>>,
    /// Bumped by every update, so a render made from an older engine state is
    /// not cached.
    generation: u64,
}

/// The cache of one member.
pub struct PolicyCache {
    region: String,
    db: Db,
    inner: RwLock<Inner>,
    /// Notifiers of connected workloads (one per stream): pinged when its policy
    /// changes.
    watchers: Mutex<HashMap<Id, Vec<Arc<Notify>>>>,
    /// How many workloads each update changed (for tests and metrics).
    pub pushes: std::sync::atomic::AtomicU64,
    /// Serialised rules shared by the rendered policies.
    texts: RuleTexts,
}

/// An action that overrides a workload's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Nothing: the policy applies.
    None,
    /// Isolated: everything dropped but the VEN's channel.
    Quarantine,
    /// Suspended: nothing enforced (the VEN removes its table) until resumed.
    Suspend,
}

/// The hold a workload's record asks for (suspension wins: it is the operator's
/// explicit "hands off").
pub fn hold_of(doc: &WorkloadDoc) -> Hold {
    if doc.suspended {
        Hold::Suspend
    } else if doc.quarantined {
        Hold::Quarantine
    } else {
        Hold::None
    }
}

fn held(map: &HashMap<Id, Hold>, id: &str) -> Hold {
    map.get(id).copied().unwrap_or(Hold::None)
}

fn render(texts: &RuleTexts, version: u64, c: &Arc<CompiledPolicy>, hold: Hold) -> Arc<Rendered> {
    let empty = |mode| {
        Arc::new(CompiledPolicy {
            workload: c.workload.clone(),
            mode,
            addresses: c.addresses.clone(),
            inbound: vec![],
            outbound: vec![],
            visibility: c.visibility,
        })
    };
    let compiled = match hold {
        Hold::None => c.clone(),
        // Isolation: full mode with no rules; the VEN keeps its control channel.
        Hold::Quarantine => empty(EnforcementMode::Full),
        // Suspension: idle, so the VEN removes its table.
        Hold::Suspend => empty(EnforcementMode::Idle),
    };
    let json = texts.json(&compiled);
    Arc::new(Rendered {
        version,
        hash: policy_hash(json.as_bytes()),
        json,
        compiled,
    })
}

/// What a change notice's objects are now (see [`PolicyCache::read_changes`]).
struct Fresh {
    world: World,
    quarantine: HashMap<Id, Hold>,
    regions: HashMap<Id, WorkloadDoc>,
}

/// Parses a changed key into the engine change it means.
fn change_of(key: &[u8]) -> Option<Change> {
    let (space, kind, id) = keys::parse(key)?;
    match space {
        Space::Live => {
            return match kind {
                Kind::Label => Some(Change::Label(id)),
                Kind::Workload => Some(Change::Workload(id)),
                _ => None,
            }
        }
        Space::Draft => return None,
        Space::Active => {}
    }
    Some(match kind {
        Kind::LabelGroup => Change::LabelGroup(id),
        Kind::Service => Change::Service(id),
        Kind::IpList => Change::IpList(id),
        Kind::RuleSet => Change::RuleSet(id),
        Kind::SecRule | Kind::DenyRule => Change::RuleSet(keys::split_rule_id(&id).0.to_string()),
        Kind::Boundary => Change::Boundary(id),
        _ => return None,
    })
}

impl PolicyCache {
    /// Builds the cache from the local replica.
    pub async fn load(db: Db, region: &str) -> Result<PolicyCache, MemberError> {
        let (engine, version, quarantined) = Self::build(&db, region, &Adopted::new()).await?;
        let cache = PolicyCache {
            region: region.to_string(),
            db,
            inner: RwLock::new(Inner {
                engine,
                version,
                adopted: Adopted::new(),
                quarantined,
                rendered: HashMap::new(),
                generation: 0,
            }),
            watchers: Mutex::new(HashMap::new()),
            pushes: std::sync::atomic::AtomicU64::new(0),
            texts: RuleTexts::default(),
        };
        Ok(cache)
    }

    async fn build(
        db: &Db,
        region: &str,
        adopted: &Adopted,
    ) -> Result<(Engine, u64, HashMap<Id, Hold>), MemberError> {
        let live = load_raw(db, Space::Live, &[Kind::Label, Kind::Workload]).await?;
        let active = load_raw(db, Space::Active, &POLICY_KINDS).await?;
        let mut world = world_of(live.iter().chain(active.iter()))?;
        let mut quarantined = HashMap::new();
        for ((kind, id), bytes) in &live {
            if *kind == Kind::Workload {
                let rec: Record<WorkloadDoc> = sc_store::record::decode(bytes)?;
                Self::localize(&mut world, id, &rec.doc, region, adopted);
                let h = hold_of(&rec.doc);
                if h != Hold::None {
                    quarantined.insert(id.clone(), h);
                }
            }
        }
        let version = db
            .get::<u64>(keys::VERSION)
            .await?
            .map(|v| v.value)
            .unwrap_or(0);
        Ok((
            Engine::new(world.estate, world.policy),
            version,
            quarantined,
        ))
    }

    /// Workloads of other regions are peers only here, unless adopted.
    fn localize(world: &mut World, id: &str, doc: &WorkloadDoc, region: &str, adopted: &Adopted) {
        if let Some(w) = world.estate.workloads.get_mut(id) {
            let mine = doc.region.as_deref() == Some(region) || adopted_now(adopted, id, doc);
            w.managed = doc.managed && mine;
        }
    }

    /// The policy a workload served here should enforce (`None`: not served here
    /// or not managed).
    pub fn policy_of(&self, id: &str) -> Option<Arc<Rendered>> {
        {
            let inner = self.inner.read().ok()?;
            if let Some(r) = inner.rendered.get(id) {
                return Some(r.clone());
            }
        }
        // Render outside the lock: many streams render at once after an update.
        let (c, version, hold, generation) = {
            let inner = self.inner.read().ok()?;
            (
                inner.engine.compiled(id)?,
                inner.version,
                held(&inner.quarantined, id),
                inner.generation,
            )
        };
        let r = render(&self.texts, version, &c, hold);
        let mut inner = self.inner.write().ok()?;
        if inner.generation == generation {
            inner.rendered.insert(id.to_string(), r.clone());
        }
        Some(r)
    }

    /// Starts serving a workload of another region, `region` (its VEN failed
    /// over here).
    pub fn adopt(&self, id: &str, region: Option<&str>) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if inner.engine.compiled(id).is_some()
            || inner
                .adopted
                .insert(id.to_string(), region.map(str::to_string))
                .is_some()
        {
            return;
        }
        if inner.engine.estate().workloads.contains_key(id) {
            set_managed(&mut inner.engine, id, true);
        }
    }

    /// Stops serving a workload of another region whose VEN left (it said
    /// goodbye, or did not come back in time): this member no longer compiles
    /// it on every change. A VEN that fails over here again is adopted again.
    pub fn release(&self, id: &str) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if inner.adopted.remove(id).is_none() {
            return;
        }
        set_managed(&mut inner.engine, id, false);
        inner.rendered.remove(id);
        inner.generation += 1;
    }

    /// Registers a connected workload; the returned notifier fires when its
    /// policy may have changed.
    pub fn watch(&self, id: &str) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        if let Ok(mut w) = self.watchers.lock() {
            w.entry(id.to_string()).or_default().push(n.clone());
        }
        n
    }

    /// Forgets one stream's notifier.
    pub fn unwatch(&self, id: &str, n: &Arc<Notify>) {
        if let Ok(mut w) = self.watchers.lock() {
            if let Some(list) = w.get_mut(id) {
                list.retain(|x| !Arc::ptr_eq(x, n));
                if list.is_empty() {
                    w.remove(id);
                }
            }
        }
    }

    /// Applies one change notice's keys; returns the workloads whose policy changed.
    pub async fn apply(&self, changed_keys: &[Vec<u8>]) -> Result<BTreeSet<Id>, MemberError> {
        let version_changed = changed_keys.iter().any(|k| k == keys::VERSION);
        let mut changes: Vec<Change> = changed_keys.iter().filter_map(|k| change_of(k)).collect();
        changes.sort();
        changes.dedup();
        if changes.is_empty() && !version_changed {
            return Ok(BTreeSet::new());
        }
        // Read the new state of every changed object before taking the lock.
        let Fresh {
            world: mut fresh,
            quarantine,
            regions,
        } = self.read_changes(&changes).await?;
        let version = if version_changed {
            self.db
                .get::<u64>(keys::VERSION)
                .await?
                .map(|v| v.value)
                .unwrap_or(0)
        } else {
            0
        };
        let mut inner = self.inner.write().map_err(|_| MemberError::Poisoned)?;
        if version_changed {
            inner.version = version;
        }
        for (id, doc) in &regions {
            if !adopted_now(&inner.adopted, id, doc) {
                inner.adopted.remove(id);
            }
            let mine = doc.region.as_deref() == Some(self.region.as_str())
                || inner.adopted.contains_key(id);
            if let Some(w) = fresh.estate.workloads.get_mut(id) {
                w.managed = doc.managed && mine;
            }
        }
        let mut quarantine_moved = BTreeSet::new();
        for (id, q) in quarantine {
            if q != held(&inner.quarantined, &id) {
                quarantine_moved.insert(id.clone());
                if q == Hold::None {
                    inner.quarantined.remove(&id);
                } else {
                    inner.quarantined.insert(id, q);
                }
            }
        }
        let World {
            estate: e,
            policy: p,
        } = fresh;
        let applied = changes.clone();
        let mut changed = inner.engine.update(&changes, move |estate, policy| {
            for c in &applied {
                match c {
                    Change::Workload(id) => replace(&mut estate.workloads, id, &e.workloads),
                    Change::Label(id) => replace(&mut estate.labels, id, &e.labels),
                    Change::LabelGroup(id) => {
                        replace(&mut policy.label_groups, id, &p.label_groups)
                    }
                    Change::Service(id) => replace(&mut policy.services, id, &p.services),
                    Change::IpList(id) => replace(&mut policy.ip_lists, id, &p.ip_lists),
                    Change::RuleSet(id) => replace(&mut policy.rule_sets, id, &p.rule_sets),
                    Change::Boundary(id) => replace(&mut policy.boundaries, id, &p.boundaries),
                }
            }
        });
        changed.extend(quarantine_moved);
        inner.generation += 1;
        for id in &changed {
            inner.rendered.remove(id);
        }
        drop(inner);
        self.texts.prune();
        self.notify(&changed);
        // A workload whose record changed but whose policy did not may have
        // moved to another region (its application moved and the rules, the
        // same bytes, did not change): its streams look, and tell the VEN.
        self.wake(regions.keys().filter(|id| !changed.contains(*id)));
        Ok(changed)
    }

    /// The new state of every changed object, read from the replica: the
    /// objects as a small world, and each changed workload's hold and record.
    async fn read_changes(&self, changes: &[Change]) -> Result<Fresh, MemberError> {
        let mut fresh = World::default();
        let mut quarantine: HashMap<Id, Hold> = HashMap::new();
        let mut regions: HashMap<Id, WorkloadDoc> = HashMap::new();
        for c in changes {
            match c {
                Change::Workload(id) => {
                    if let Some((bytes, _)) = self
                        .db
                        .raw(&keys::obj(Space::Live, Kind::Workload, id))
                        .await?
                    {
                        fresh.add(Kind::Workload, id, &bytes)?;
                        let rec: Record<WorkloadDoc> = sc_store::record::decode(&bytes)?;
                        quarantine.insert(id.clone(), hold_of(&rec.doc));
                        regions.insert(id.clone(), rec.doc);
                    }
                }
                Change::Label(id) => self.fetch(&mut fresh, Space::Live, Kind::Label, id).await?,
                Change::LabelGroup(id) => {
                    self.fetch(&mut fresh, Space::Active, Kind::LabelGroup, id)
                        .await?
                }
                Change::Service(id) => {
                    self.fetch(&mut fresh, Space::Active, Kind::Service, id)
                        .await?
                }
                Change::IpList(id) => {
                    self.fetch(&mut fresh, Space::Active, Kind::IpList, id)
                        .await?
                }
                Change::Boundary(id) => {
                    self.fetch(&mut fresh, Space::Active, Kind::Boundary, id)
                        .await?
                }
                Change::RuleSet(id) => {
                    self.fetch(&mut fresh, Space::Active, Kind::RuleSet, id)
                        .await?;
                    for kind in [Kind::SecRule, Kind::DenyRule] {
                        let prefix = keys::rules_prefix(Space::Active, kind, id);
                        for (k, bytes) in self.db.raw_scan(&prefix, MAX_OBJECTS).await? {
                            fresh.add(
                                kind,
                                &format!("{id}/{}", keys::id_of(&k, &prefix)),
                                &bytes,
                            )?;
                        }
                    }
                    // Rules without a header (header deleted) must not resurrect it.
                    if self
                        .db
                        .rev(&keys::obj(Space::Active, Kind::RuleSet, id))
                        .await?
                        .is_none()
                    {
                        fresh.policy.rule_sets.remove(id);
                    }
                }
            }
        }
        Ok(Fresh {
            world: fresh,
            quarantine,
            regions,
        })
    }

    async fn fetch(
        &self,
        w: &mut World,
        space: Space,
        kind: Kind,
        id: &str,
    ) -> Result<(), MemberError> {
        if let Some((bytes, _)) = self.db.raw(&keys::obj(space, kind, id)).await? {
            w.add(kind, id, &bytes)?;
        }
        Ok(())
    }

    /// Rebuilds from the replica (after a snapshot install or a missed notice);
    /// every served workload whose policy differs is notified.
    pub async fn rebuild(&self) -> Result<(), MemberError> {
        let adopted = self
            .inner
            .read()
            .map_err(|_| MemberError::Poisoned)?
            .adopted
            .clone();
        let (engine, version, quarantined) = Self::build(&self.db, &self.region, &adopted).await?;
        let mut inner = self.inner.write().map_err(|_| MemberError::Poisoned)?;
        let before: HashMap<Id, Arc<Rendered>> = std::mem::take(&mut inner.rendered);
        let never_rendered: Vec<Arc<Notify>> = self
            .watchers
            .lock()
            .map(|w| {
                w.iter()
                    .filter(|(id, _)| !before.contains_key(*id))
                    .flat_map(|(_, n)| n.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        inner.engine = engine;
        inner.version = version;
        inner.quarantined = quarantined;
        inner.generation += 1;
        let mut changed = BTreeSet::new();
        for (id, old) in before {
            match inner.engine.compiled(&id) {
                Some(c) => {
                    let r = render(&self.texts, version, &c, held(&inner.quarantined, &id));
                    if r.hash != old.hash {
                        changed.insert(id.clone());
                    }
                    inner.rendered.insert(id, r);
                }
                None => {
                    changed.insert(id);
                }
            }
        }
        drop(inner);
        self.texts.prune();
        self.notify(&changed);
        // A stream whose policy did not exist yet when it asked (its workload's
        // notice had not reached this cache) waits for a notice; after missed
        // notices, this rebuild is that notice. Not counted as pushes: a stream
        // whose policy is still what it sent sends nothing.
        for n in never_rendered {
            n.notify_one();
        }
        Ok(())
    }

    /// Wakes the streams of `ids` without counting a push: they look for
    /// news other than their policy (a rehome).
    fn wake<'a>(&self, ids: impl Iterator<Item = &'a Id>) {
        let Ok(w) = self.watchers.lock() else { return };
        for id in ids {
            for x in w.get(id).into_iter().flatten() {
                x.notify_one();
            }
        }
    }

    fn notify(&self, changed: &BTreeSet<Id>) {
        let Ok(w) = self.watchers.lock() else { return };
        let mut n = 0;
        for id in changed {
            for x in w.get(id).into_iter().flatten() {
                x.notify_one();
                n += 1;
            }
        }
        self.pushes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The keys whose changes the cache acts on (`apply` ignores the rest),
    /// so the node wakes it for no other write.
    pub const FOLLOWED: [&'static [u8]; 2] = [keys::OBJECTS, keys::VERSION];

    /// Follows the store's change notices until the node stops.
    pub async fn follow(
        self: Arc<Self>,
        mut notices: tokio::sync::broadcast::Receiver<sc_raft::ChangeNotice>,
    ) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let result = match notices.recv().await {
                Ok(n) if n.keys.is_empty() => self.rebuild().await,
                Ok(n) => self.apply(&n.keys).await.map(|_| ()),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "policy cache fell behind the change notices; rebuilding"
                    );
                    self.rebuild().await
                }
                Err(RecvError::Closed) => return,
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "policy cache update failed; rebuilding");
                if let Err(e) = self.rebuild().await {
                    tracing::error!(error = %e, "policy cache rebuild failed");
                }
            }
        }
    }
}

fn replace<T: Clone>(
    map: &mut std::collections::BTreeMap<Id, T>,
    id: &Id,
    from: &std::collections::BTreeMap<Id, T>,
) {
    match from.get(id) {
        Some(v) => {
            map.insert(id.clone(), v.clone());
        }
        None => {
            map.remove(id);
        }
    }
}
