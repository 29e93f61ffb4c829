//! The sled traffic store. Keys sort by bucket, so a time range is a key
//! range and retention is a range delete; one key per (bucket, reporter, src,
//! dst, port, proto, direction, decision, rule) merges the reports of one
//! bucket. Values are a format byte, the ids of the ends' workload snapshots
//! (see [`super::snapshots`]) and the protobuf `TrafficFlow` without them
//! (tagged fields: a newer node can read an older record; records of the
//! first format, snapshots inline, are rewritten when the store opens).
//!
//! Three tiers, one tree each: minute buckets for the last hour, then rolled
//! up into hour buckets, after a day into day buckets (the same flow's
//! summaries merge: counts and bytes add, the time range widens), so a day's
//! flows cost what its distinct flows cost, not what its minutes did. A
//! query reads each tier's range; a rolled-up flow matches when its time
//! range meets the query's. Retention removes buckets by age and, past the
//! disk budget, the oldest buckets first.
//!
//! A query that names labels on a side (the selective Explorer query: one
//! app's traffic) first finds the snapshots holding them, then skips every
//! stored flow whose end is not one of those by reading its 17-byte head,
//! before decoding. `pce bench flows` measured the alternatives at a million
//! flows (docs/benchmarks.md): decoding every flow took 2 s; a label index
//! tree 0.35 s, but cut ingest from 67,000 to 7,000 flows/s and tripled the
//! bytes per flow; a byte search for the label ids in whole records 0.95 s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use sc_proto::federation::{FlowEnd, FlowQuery, FlowQueryReply, TrafficFlow};

use super::edge_cache::{self, EdgeCache};
use super::edges::{Edges, Grouping};
use super::filter;
use super::snapshots::Snapshots;
use crate::error::MemberError;

/// The first format: the whole flow, ends' workloads inline.
const RECORD_V1: u8 = 1;
/// The format byte of a stored flow: ends' workloads as snapshot ids.
const RECORD_V: u8 = 2;
/// Format byte and the two snapshot ids.
const HEAD: usize = 17;
/// Width of a merge bucket where flows arrive.
pub const BUCKET_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// How long a region keeps its traffic, in what detail, and in how much disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Buckets older than this go.
    pub retention: Duration,
    /// Past this many bytes of keys and values, the oldest buckets go.
    pub max_bytes: u64,
    /// Minute buckets older than this are rolled up into hours.
    pub minutes_for: Duration,
    /// Hour buckets older than this are rolled up into days.
    pub hours_for: Duration,
}

impl Limits {
    /// Kept for `retention`, within `max_bytes`; minutes for an hour, hours
    /// for a day.
    pub fn new(retention: Duration, max_bytes: u64) -> Limits {
        Limits {
            retention,
            max_bytes,
            minutes_for: Duration::from_secs(3600),
            hours_for: Duration::from_secs(86_400),
        }
    }
}

/// What a maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Stored flows merged into a coarser bucket.
    pub rolled_up: usize,
    /// Stored flows dropped by age.
    pub expired: usize,
    /// Stored flows dropped to stay within the disk budget.
    pub over_budget: usize,
    /// Stored flows the default app group map sums (read only from the
    /// buckets written since the last maintenance).
    pub mapped: u64,
}

/// What the VEN service and the query path need of a region's traffic.
pub trait TrafficStore: Send + Sync {
    /// Stores resolved summaries, merging those of the same key and minute.
    fn ingest(&self, flows: &[TrafficFlow]) -> Result<usize, MemberError>;
    /// The flows matching `q`, merged over the time range, newest first,
    /// capped at `q.max_results`, with the count before the cap.
    fn query(&self, q: &FlowQuery) -> Result<FlowQueryReply, MemberError>;
    /// Rolls old buckets up, drops those past the retention and, past the
    /// disk budget, the oldest.
    fn maintain(&self, now_ms: u64) -> Result<Maintained, MemberError>;
}

/// The embedded store: the member's flow directory holds one sled tree per
/// time partition (see [`Part`]), so rolling a partition up or expiring it
/// drops a whole tree instead of deleting its keys one by one (sled keeps the
/// emptied nodes of a tree whose keys are deleted, and `pce bench flows`
/// measured queries three times slower over such a tree).
#[derive(Clone)]
pub struct SledTraffic {
    db: sled::Db,
    parts: std::sync::Arc<std::sync::RwLock<BTreeMap<Part, sled::Tree>>>,
    limits: Limits,
    /// Bytes of keys and values held, for the budget.
    bytes: std::sync::Arc<AtomicU64>,
    snapshots: std::sync::Arc<Snapshots>,
    /// The map's edges of buckets that have not changed since.
    edge_cache: std::sync::Arc<EdgeCache>,
}

/// A time partition: a tier (0 minute buckets, an hour per partition; 1 hour
/// buckets, a day per partition; 2 day buckets, a day per partition) and the
/// partition's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Part {
    tier: u8,
    start: u64,
}

/// Bucket width and partition span of each tier.
const TIERS: [(u64, u64); 3] = [(BUCKET_MS, HOUR_MS), (HOUR_MS, DAY_MS), (DAY_MS, DAY_MS)];

impl Part {
    /// The partition of tier `tier` holding the bucket that starts at `at`.
    fn of(tier: u8, at: u64) -> Part {
        let span = TIERS[tier as usize].1;
        Part {
            tier,
            start: at - at % span,
        }
    }

    fn width(self) -> u64 {
        TIERS[self.tier as usize].0
    }

    fn end(self) -> u64 {
        self.start + TIERS[self.tier as usize].1
    }

    fn name(self) -> String {
        format!("traffic.{}.{:016x}", self.tier, self.start)
    }

    fn parse(name: &[u8]) -> Option<Part> {
        let s = std::str::from_utf8(name).ok()?.strip_prefix("traffic.")?;
        let (tier, start) = s.split_once('.')?;
        let tier: u8 = tier.parse().ok()?;
        ((tier as usize) < TIERS.len()).then_some(())?;
        Some(Part {
            tier,
            start: u64::from_str_radix(start, 16).ok()?,
        })
    }
}

/// A flow as stored: its ends' snapshot ids, and the rest.
struct Stored {
    src_w: u64,
    dst_w: u64,
    /// The flow with its ends' workloads left out.
    flow: TrafficFlow,
}

/// The labels one side of `q` must have one of, when every AND set of its
/// include names at least one label: the first label of each set.
fn required_labels(side: Option<&sc_proto::federation::FlowSide>) -> Option<Vec<String>> {
    use sc_proto::federation::flow_actor::Kind;
    let side = side?;
    if side.include.is_empty() {
        return None;
    }
    side.include
        .iter()
        .map(|set| {
            set.all.iter().find_map(|a| match &a.kind {
                Some(Kind::Label(id)) => Some(id.clone()),
                _ => None,
            })
        })
        .collect()
}

/// The identity of a flow within a bucket (and, without the bucket, across them).
fn identity(f: &TrafficFlow) -> Vec<u8> {
    let ip = |e: &Option<sc_proto::federation::FlowEnd>| {
        e.as_ref().map(|e| e.ip.clone()).unwrap_or_default()
    };
    let mut k = Vec::with_capacity(96);
    for part in [
        f.reporter.as_str(),
        &ip(&f.src),
        &ip(&f.dst),
        &f.direction,
        &f.decision,
        &f.rule,
    ] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(&f.port.to_be_bytes());
    k.extend_from_slice(&f.proto.to_be_bytes());
    k
}

fn bucket(ms: u64) -> u64 {
    ms - ms % BUCKET_MS
}

/// A stored flow's key: its bucket, its destination's snapshot (so a query
/// naming destination labels reads only their keys), its identity.
fn key_of(bucket: u64, s: &Stored) -> Vec<u8> {
    let mut key = bucket.to_be_bytes().to_vec();
    key.extend_from_slice(&s.dst_w.to_be_bytes());
    key.extend_from_slice(&identity(&s.flow));
    key
}

/// The buckets of the first and last keys of `tree`.
fn span(tree: &sled::Tree) -> Result<Option<(u64, u64)>, MemberError> {
    let at = |k: &[u8]| {
        k.get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    };
    Ok(match (tree.first()?, tree.last()?) {
        (Some((a, _)), Some((b, _))) => Some((at(&a), at(&b))),
        _ => None,
    })
}

/// Hands `f` every stored flow of `tree` in buckets `from..to` whose
/// destination is one of `snapshots` (sorted): keys sort by bucket, then
/// destination, so each is one short range per bucket.
fn seek(
    tree: &sled::Tree,
    from: u64,
    to: u64,
    width: u64,
    snapshots: &[u64],
    mut f: impl FnMut(&[u8]),
) -> Result<(), MemberError> {
    let Some((first, last)) = span(tree)? else {
        return Ok(());
    };
    let mut b = from.max(first);
    while b < to && b <= last {
        for w in snapshots {
            let lo = [b.to_be_bytes(), w.to_be_bytes()].concat();
            let hi = [b.to_be_bytes(), (w + 1).to_be_bytes()].concat();
            for item in tree.range(lo..hi) {
                f(&item?.1);
            }
        }
        b += width;
    }
    Ok(())
}

/// Merges `f` into `tree` at `key`; returns the growth in bytes.
fn merge_into(tree: &sled::Tree, key: &[u8], f: &Stored) -> Result<i64, MemberError> {
    let mut grew = 0i64;
    tree.fetch_and_update(key, |old| {
        let before = old.map_or(0, |v| (key.len() + v.len()) as i64);
        let v = match old.and_then(decode_stored) {
            Some(mut acc) => {
                if f.flow.last_ms >= acc.flow.last_ms {
                    (acc.src_w, acc.dst_w) = (f.src_w, f.dst_w);
                }
                merge(&mut acc.flow, &f.flow);
                acc.flow.region = f.flow.region.clone();
                encode(&acc)
            }
            None => encode(f),
        };
        grew = (key.len() + v.len()) as i64 - before;
        Some(v)
    })?;
    Ok(grew)
}

fn encode(s: &Stored) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.flow.encoded_len() + HEAD);
    v.push(RECORD_V);
    v.extend_from_slice(&s.src_w.to_be_bytes());
    v.extend_from_slice(&s.dst_w.to_be_bytes());
    s.flow.encode(&mut v).unwrap_or_default();
    v
}

/// The snapshot ids of a stored flow, read from its head alone.
fn ends(v: &[u8]) -> Option<(u64, u64)> {
    if v.first() != Some(&RECORD_V) || v.len() < HEAD {
        return None;
    }
    let id = |r: std::ops::Range<usize>| v.get(r)?.try_into().ok().map(u64::from_be_bytes);
    Some((id(1..9)?, id(9..17)?))
}

fn decode_stored(v: &[u8]) -> Option<Stored> {
    let (src_w, dst_w) = ends(v)?;
    Some(Stored {
        src_w,
        dst_w,
        flow: TrafficFlow::decode(&v[HEAD..]).ok()?,
    })
}

/// Adds `new` into `acc` (same identity): counts and bytes add, the time
/// range widens, the ends and the state are the latest.
fn merge(acc: &mut TrafficFlow, new: &TrafficFlow) {
    acc.num_connections += new.num_connections;
    acc.dst_bi += new.dst_bi;
    acc.dst_bo += new.dst_bo;
    acc.first_ms = acc.first_ms.min(new.first_ms);
    if new.last_ms >= acc.last_ms {
        acc.last_ms = new.last_ms;
        acc.src = new.src.clone();
        acc.dst = new.dst.clone();
        if !new.state.is_empty() {
            acc.state = new.state.clone();
        }
    }
}

impl SledTraffic {
    /// Opens (or creates) the store in `dir`. Counting the bytes held reads
    /// every key once (about a second per million flows); a store of the
    /// first layout (one `traffic` tree, workloads inline) is moved into
    /// partitions.
    pub fn open(dir: &Path, limits: Limits) -> Result<SledTraffic, MemberError> {
        // Flows name workloads and addresses: private like the policy store.
        sc_raft::private::make_private(dir)
            .map_err(|e| MemberError::Start(format!("{}: {e}", dir.display())))?;
        let db = sled::Config::new().path(dir).open()?;
        let snapshots = std::sync::Arc::new(Snapshots::open(&db)?);
        let mut parts = BTreeMap::new();
        for name in db.tree_names() {
            if let Some(p) = Part::parse(&name) {
                parts.insert(p, db.open_tree(&name)?);
            }
        }
        let store = SledTraffic {
            db,
            parts: std::sync::Arc::new(std::sync::RwLock::new(parts)),
            limits,
            bytes: std::sync::Arc::new(AtomicU64::new(0)),
            snapshots,
            edge_cache: std::sync::Arc::default(),
        };
        store.upgrade()?;
        let mut bytes = 0u64;
        for tree in store.trees()?.values() {
            for item in tree.iter() {
                let (k, v) = item?;
                bytes += (k.len() + v.len()) as u64;
            }
        }
        store.bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    /// Moves the first layout's `traffic` tree (records with their ends'
    /// workloads inline, or already split) into minute partitions.
    fn upgrade(&self) -> Result<(), MemberError> {
        if !self.db.tree_names().iter().any(|n| &n[..] == b"traffic") {
            return Ok(());
        }
        let old = self.db.open_tree("traffic")?;
        for item in old.iter() {
            let (k, v) = item?;
            let Some(at) = k
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let stored = match v.first() {
                Some(&RECORD_V1) => match v.get(1..).and_then(|b| TrafficFlow::decode(b).ok()) {
                    Some(f) => self.split(&f)?,
                    None => continue,
                },
                _ => match decode_stored(&v) {
                    Some(s) => s,
                    None => continue,
                },
            };
            let tree = self.part(Part::of(0, at))?;
            merge_into(&tree, &key_of(at, &stored), &stored)?;
        }
        self.db.drop_tree("traffic")?;
        Ok(())
    }

    /// A snapshot of the partitions held.
    fn trees(&self) -> Result<BTreeMap<Part, sled::Tree>, MemberError> {
        Ok(self
            .parts
            .read()
            .map_err(|_| MemberError::Poisoned)?
            .clone())
    }

    /// Partition `p`'s tree, made if new.
    fn part(&self, p: Part) -> Result<sled::Tree, MemberError> {
        if let Some(t) = self
            .parts
            .read()
            .map_err(|_| MemberError::Poisoned)?
            .get(&p)
        {
            return Ok(t.clone());
        }
        let mut parts = self.parts.write().map_err(|_| MemberError::Poisoned)?;
        if let Some(t) = parts.get(&p) {
            return Ok(t.clone());
        }
        let t = self.db.open_tree(p.name())?;
        parts.insert(p, t.clone());
        Ok(t)
    }

    /// Drops partition `p` whole; returns the flows it held.
    fn drop_part(&self, p: Part) -> Result<usize, MemberError> {
        let Some(tree) = self
            .parts
            .write()
            .map_err(|_| MemberError::Poisoned)?
            .remove(&p)
        else {
            return Ok(0);
        };
        let (mut n, mut freed) = (0, 0i64);
        for item in tree.iter() {
            let (k, v) = item?;
            freed += (k.len() + v.len()) as i64;
            n += 1;
        }
        self.db.drop_tree(p.name())?;
        self.edge_cache.forget(p.tier, p.start, u64::MAX);
        self.grew(-freed);
        Ok(n)
    }

    /// A flow as stored, its ends' workloads interned.
    fn split(&self, f: &TrafficFlow) -> Result<Stored, MemberError> {
        let src_w = (self.snapshots).intern(f.src.as_ref().and_then(|e| e.workload.as_ref()))?;
        let dst_w = (self.snapshots).intern(f.dst.as_ref().and_then(|e| e.workload.as_ref()))?;
        let strip = |e: &Option<FlowEnd>| {
            e.as_ref().map(|e| FlowEnd {
                ip: e.ip.clone(),
                workload: None,
            })
        };
        Ok(Stored {
            src_w,
            dst_w,
            flow: TrafficFlow {
                src: strip(&f.src),
                dst: strip(&f.dst),
                ..f.clone()
            },
        })
    }

    /// A stored flow with its ends' workloads back.
    fn decode(&self, v: &[u8]) -> Option<TrafficFlow> {
        let mut s = decode_stored(v)?;
        for (end, id) in [(&mut s.flow.src, s.src_w), (&mut s.flow.dst, s.dst_w)] {
            if let Some(e) = end.as_mut() {
                e.workload = self.snapshots.get(id).map(|w| (*w).clone());
            }
        }
        Some(s.flow)
    }

    /// Writes what sled holds in memory to its files (benchmarks measure the
    /// bytes on disk after it).
    pub fn flush(&self) -> Result<(), MemberError> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes of keys and values held (what the disk budget counts).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn grew(&self, by: i64) {
        if by >= 0 {
            self.bytes.fetch_add(by as u64, Ordering::Relaxed);
        } else {
            let _ = self
                .bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some(b.saturating_sub(by.unsigned_abs()))
                });
        }
    }

    /// The partitions `q`'s time range meets, each with the bucket range to
    /// read (`from..to`) and its bucket width.
    #[allow(clippy::type_complexity)]
    fn ranges(&self, q: &FlowQuery) -> Result<Vec<(Part, sled::Tree, u64, u64, u64)>, MemberError> {
        let end = if q.end_ms == 0 { u64::MAX } else { q.end_ms };
        Ok(self
            .trees()?
            .into_iter()
            .filter(|(p, _)| p.start <= end && p.end() > q.start_ms)
            .map(|(p, tree)| {
                let width = p.width();
                let from = q.start_ms - q.start_ms % width;
                (
                    p,
                    tree,
                    from,
                    (end - end % width).saturating_add(width),
                    width,
                )
            })
            .collect())
    }

    /// A map query naming no labels, workloads or addresses: every flow of
    /// the range summed into edges as it is read, its ends' groups found per
    /// snapshot (thousands) rather than per flow, and no flow decoded whole.
    /// Whole buckets that have not changed since an earlier map of the same
    /// kind are not read again (see [`super::edge_cache`]).
    fn map_edges(&self, q: &FlowQuery, grouping: Grouping) -> Result<FlowQueryReply, MemberError> {
        let kind = edge_cache::kind_of(q, grouping);
        let end = if q.end_ms == 0 { u64::MAX } else { q.end_ms };
        let mut groups: HashMap<u64, (String, bool)> = HashMap::new();
        let mut edges = Edges::default();
        let mut matches = 0;
        for (part, tree, from, to, width) in self.ranges(q)? {
            let Some((first, last)) = span(&tree)? else {
                continue;
            };
            let mut b = from.max(first);
            while b < to && b <= last {
                let slot = (part.tier, part.start, b);
                // Inside the range whole: time filters none of its flows.
                let whole = b >= q.start_ms && b.saturating_add(width) <= end;
                if whole {
                    if let Some(n) = self.edge_cache.visit(slot, &kind, |e| edges.merge(e)) {
                        matches += n;
                        b += width;
                        continue;
                    }
                }
                let generation = self.edge_cache.generation(slot);
                let mut local = Edges::default();
                let n =
                    self.bucket_edges(&tree, b, b + width, q, grouping, &mut groups, &mut local)?;
                let list = local.into_edges();
                list.iter().for_each(|e| edges.merge(e));
                matches += n;
                if whole {
                    self.edge_cache.put(slot, &kind, generation, list, n);
                }
                b += width;
            }
        }
        Ok(FlowQueryReply {
            flows: vec![],
            matches,
            edges: edges.into_edges(),
        })
    }

    /// Sums the flows of `tree` in `from..to` that match `q` into `out`;
    /// returns how many matched. `groups` remembers each snapshot's group.
    #[allow(clippy::too_many_arguments)]
    fn bucket_edges(
        &self,
        tree: &sled::Tree,
        from: u64,
        to: u64,
        q: &FlowQuery,
        grouping: Grouping,
        groups: &mut HashMap<u64, (String, bool)>,
        out: &mut Edges,
    ) -> Result<u64, MemberError> {
        let mut group = |id: u64, ip: &str| -> (String, bool) {
            if id == 0 {
                return (format!("ip:{ip}"), false);
            }
            groups
                .entry(id)
                .or_insert_with(|| match self.snapshots.get(id) {
                    Some(w) => {
                        let end = FlowEnd {
                            ip: String::new(),
                            workload: Some((*w).clone()),
                        };
                        (super::edges::group_of(Some(&end), grouping), w.managed)
                    }
                    None => (format!("ip:{ip}"), false),
                })
                .clone()
        };
        let mut matches = 0;
        for item in tree.range(from.to_be_bytes()..to.to_be_bytes()) {
            let (_, v) = item?;
            let Some(s) = decode_stored(&v) else { continue };
            if !filter::matches(q, &s.flow) {
                continue;
            }
            matches += 1;
            let ip = |e: &Option<FlowEnd>| e.as_ref().map(|e| e.ip.clone()).unwrap_or_default();
            let (src, _) = group(s.src_w, &ip(&s.flow.src));
            let (dst, managed) = group(s.dst_w, &ip(&s.flow.dst));
            out.add(&s.flow, &src, &dst, managed);
        }
        Ok(matches)
    }

    /// Hands `f` every stored flow in `q`'s range that may match it: a
    /// query that needs labels on a side reads only flows whose end there is
    /// a snapshot holding one of them (by seeks for destinations, by each
    /// flow's 17-byte head for sources); others read the whole range.
    fn scan(&self, q: &FlowQuery, mut f: impl FnMut(&[u8])) -> Result<(), MemberError> {
        let prefilter = if q.either_side {
            None
        } else if let Some(l) = required_labels(q.destinations.as_ref()) {
            Some((false, self.snapshots.holding(&l)))
        } else {
            required_labels(q.sources.as_ref()).map(|l| (true, self.snapshots.holding(&l)))
        };
        // Sides ORed, both requiring labels: either end's snapshot must hold
        // them.
        let either = match (
            q.either_side,
            required_labels(q.sources.as_ref()),
            required_labels(q.destinations.as_ref()),
        ) {
            (true, Some(s), Some(d)) => {
                Some((self.snapshots.holding(&s), self.snapshots.holding(&d)))
            }
            _ => None,
        };
        let may_match = |v: &[u8]| match (&prefilter, &either, ends(v)) {
            (_, Some((s, d)), Some((src, dst))) => s.contains(&src) || d.contains(&dst),
            (None, None, _) => true,
            (Some((true, ok)), _, Some((src, _))) => ok.contains(&src),
            (Some((false, ok)), _, Some((_, dst))) => ok.contains(&dst),
            (_, _, None) => false,
        };
        for (_, tree, from, to, width) in self.ranges(q)? {
            match &prefilter {
                Some((false, wanted)) => {
                    let mut wanted: Vec<u64> = wanted.iter().copied().collect();
                    wanted.sort_unstable();
                    seek(&tree, from, to, width, &wanted, &mut f)?;
                }
                _ => {
                    for item in tree.range(from.to_be_bytes()..to.to_be_bytes()) {
                        let (_, v) = item?;
                        if may_match(&v) {
                            f(&v);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes the buckets of partition `p` that begin before `cutoff`.
    fn drop_before(&self, p: Part, tree: &sled::Tree, cutoff: u64) -> Result<usize, MemberError> {
        self.edge_cache.forget(p.tier, p.start, cutoff);
        let mut batch = sled::Batch::default();
        let (mut n, mut freed) = (0, 0i64);
        for item in tree.range(..cutoff.to_be_bytes().to_vec()) {
            let (k, v) = item?;
            freed += (k.len() + v.len()) as i64;
            batch.remove(k);
            n += 1;
        }
        // Counted: sled's reads in the whole process wait for a batch.
        sc_raft::storage::sled_writes::write(|| tree.apply_batch(batch))?;
        self.grew(-freed);
        Ok(n)
    }

    /// Merges partition `p` into the next tier's partitions, then drops it.
    fn roll_up(&self, p: Part, tree: &sled::Tree) -> Result<usize, MemberError> {
        let up = p.tier + 1;
        let width = TIERS[up as usize].0;
        let mut n = 0;
        let mut written = std::collections::BTreeSet::new();
        for item in tree.iter() {
            let (k, v) = item?;
            if let (Some(s), Some(at)) = (
                decode_stored(&v),
                k.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
            ) {
                let at = at - at % width;
                let to = Part::of(up, at);
                let dst = self.part(to)?;
                let mut key = at.to_be_bytes().to_vec();
                key.extend_from_slice(&k[8..]);
                let grew = merge_into(&dst, &key, &s)?;
                self.grew(grew);
                written.insert((to.tier, to.start, at));
            }
            n += 1;
        }
        written
            .into_iter()
            .for_each(|slot| self.edge_cache.touch(slot));
        self.drop_part(p)?;
        Ok(n)
    }
}

impl TrafficStore for SledTraffic {
    fn ingest(&self, flows: &[TrafficFlow]) -> Result<usize, MemberError> {
        let mut grew = 0;
        let mut written = std::collections::BTreeSet::new();
        for f in flows {
            let stored = self.split(f)?;
            let at = bucket(f.last_ms);
            grew += merge_into(&self.part(Part::of(0, at))?, &key_of(at, &stored), &stored)?;
            written.insert((0, Part::of(0, at).start, at));
        }
        // After the writes: a map that read a bucket before it was written
        // must find its kept edges stale (see edge_cache).
        written
            .into_iter()
            .for_each(|slot| self.edge_cache.touch(slot));
        self.grew(grew);
        Ok(flows.len())
    }

    fn query(&self, q: &FlowQuery) -> Result<FlowQueryReply, MemberError> {
        let side_free = |s: &Option<sc_proto::federation::FlowSide>| {
            s.as_ref()
                .is_none_or(|s| s.include.is_empty() && s.exclude.is_empty())
        };
        let grouping = Grouping::of(q);
        if let Some(g) = grouping.filter(|_| side_free(&q.sources) && side_free(&q.destinations)) {
            return self.map_edges(q, g);
        }
        let mut merged: BTreeMap<Vec<u8>, TrafficFlow> = BTreeMap::new();
        let mut add = |v: &[u8], q: &FlowQuery| {
            let Some(f) = self.decode(v) else { return };
            if !filter::matches(q, &f) {
                return;
            }
            match merged.get_mut(&identity(&f)) {
                Some(acc) => merge(acc, &f),
                None => {
                    merged.insert(identity(&f), f);
                }
            }
        };
        let governed = match (
            q.governed,
            required_labels(q.sources.as_ref()),
            required_labels(q.destinations.as_ref()),
        ) {
            (true, Some(s), Some(d)) => Some((s, d)),
            _ => None,
        };
        if let Some((src_labels, dst_labels)) = governed {
            // The policy generator's question, by seeks alone: the flows
            // into the group's snapshots, and those under snapshot 0 (no
            // workload: an address) from them.
            let mut into: Vec<u64> = self.snapshots.holding(&dst_labels).into_iter().collect();
            into.sort_unstable();
            let from_group = self.snapshots.holding(&src_labels);
            let one_side = |keep_src: bool| FlowQuery {
                sources: if keep_src { q.sources.clone() } else { None },
                destinations: if keep_src {
                    None
                } else {
                    q.destinations.clone()
                },
                either_side: false,
                governed: false,
                ..q.clone()
            };
            let (into_q, out_q) = (one_side(false), one_side(true));
            for (_, tree, from, to, width) in self.ranges(q)? {
                seek(&tree, from, to, width, &into, |v| add(v, &into_q))?;
                seek(&tree, from, to, width, &[0], |v| {
                    if ends(v).is_some_and(|(src, _)| from_group.contains(&src)) {
                        add(v, &out_q)
                    }
                })?;
            }
        } else {
            self.scan(q, |v| add(v, q))?;
        }
        let matches = merged.len() as u64;
        if let Some(g) = grouping {
            return Ok(FlowQueryReply {
                edges: super::edges::aggregate(merged.values(), g),
                flows: vec![],
                matches,
            });
        }
        let mut flows: Vec<TrafficFlow> = merged.into_values().collect();
        flows.sort_by_key(|f| std::cmp::Reverse(f.last_ms));
        flows.truncate(q.max_results as usize);
        Ok(FlowQueryReply {
            flows,
            matches,
            edges: vec![],
        })
    }

    fn maintain(&self, now_ms: u64) -> Result<Maintained, MemberError> {
        let ago = |d: Duration| now_ms.saturating_sub(d.as_millis() as u64);
        let mut done = Maintained::default();
        // Whole partitions, finest first: an hour of minutes once all of it
        // is older than `minutes_for`, a day of hours after `hours_for`.
        for (tier, keep) in [(0u8, self.limits.minutes_for), (1, self.limits.hours_for)] {
            let cut = ago(keep);
            for (p, tree) in self.trees()? {
                if p.tier == tier && p.end() <= cut {
                    done.rolled_up += self.roll_up(p, &tree)?;
                }
            }
        }
        // A partition goes once all of it is older than the retention; in the
        // one the retention's start falls in, the buckets before it go.
        let cutoff = ago(self.limits.retention);
        for (p, tree) in self.trees()? {
            if p.end() <= cutoff {
                done.expired += self.drop_part(p)?;
            } else if p.start < cutoff {
                done.expired += self.drop_before(p, &tree, cutoff - cutoff % p.width())?;
            }
        }
        // Past the budget, the oldest partitions go first.
        while self.bytes() > self.limits.max_bytes {
            let trees = self.trees()?;
            let Some(oldest) = trees
                .keys()
                .min_by_key(|p| (p.start, std::cmp::Reverse(p.tier)))
            else {
                break;
            };
            done.over_budget += self.drop_part(*oldest)?;
        }
        // The default map's edges of every whole bucket, read now for the
        // buckets written since (the last minute's, an hour rolled up), so
        // an operator's map seldom reads a bucket itself.
        let warm = FlowQuery {
            end_ms: now_ms,
            group_keys: vec!["app".into(), "env".into()],
            ..FlowQuery::default()
        };
        done.mapped = self
            .map_edges(&warm, Grouping::Labels(&warm.group_keys))?
            .matches;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sc_proto::federation::FlowEnd;

    fn flow(src: &str, last: u64, n: u64) -> TrafficFlow {
        TrafficFlow {
            src: Some(FlowEnd {
                ip: src.into(),
                workload: None,
            }),
            dst: Some(FlowEnd {
                ip: "10.0.0.9".into(),
                workload: None,
            }),
            port: 443,
            proto: 6,
            direction: "inbound".into(),
            decision: "allowed".into(),
            reporter: "w".into(),
            num_connections: n,
            first_ms: last - 10,
            last_ms: last,
            ..TrafficFlow::default()
        }
    }

    #[test]
    fn reports_of_one_flow_merge_and_queries_cap_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledTraffic::open(dir.path(), Limits::new(Duration::from_secs(3600), u64::MAX))
            .unwrap();
        s.ingest(&[flow("10.0.0.1", 61_000, 2), flow("10.0.0.2", 62_000, 1)])
            .unwrap();
        // Same flow, same minute: merged; next minute: merged by the query.
        s.ingest(&[flow("10.0.0.1", 65_000, 3), flow("10.0.0.1", 130_000, 4)])
            .unwrap();
        let r = s
            .query(&FlowQuery {
                max_results: 10,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!(r.matches, 2);
        let one = r
            .flows
            .iter()
            .find(|f| f.src.as_ref().unwrap().ip == "10.0.0.1")
            .unwrap();
        assert_eq!(
            (one.num_connections, one.first_ms, one.last_ms),
            (9, 60_990, 130_000)
        );
        let capped = s
            .query(&FlowQuery {
                max_results: 1,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!((capped.matches, capped.flows.len()), (2, 1));
        assert_eq!(capped.flows[0].last_ms, 130_000, "newest first");
    }

    #[test]
    fn buckets_older_than_the_retention_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            SledTraffic::open(dir.path(), Limits::new(Duration::from_secs(120), u64::MAX)).unwrap();
        s.ingest(&[flow("10.0.0.1", 60_000, 1), flow("10.0.0.2", 300_000, 1)])
            .unwrap();
        assert_eq!(s.maintain(400_000).unwrap().expired, 1);
        let r = s
            .query(&FlowQuery {
                max_results: 10,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!(r.matches, 1);
    }

    #[test]
    fn a_query_naming_labels_skips_by_snapshot_and_finds_what_the_full_decode_finds() {
        use sc_proto::federation::flow_actor::Kind;
        use sc_proto::federation::{ActorSet, FlowActor, FlowLabel, FlowSide, FlowWorkload};
        let dir = tempfile::tempdir().unwrap();
        let s = SledTraffic::open(dir.path(), Limits::new(Duration::from_secs(3600), u64::MAX))
            .unwrap();
        let labelled = |ip: &str, app: &str| FlowEnd {
            ip: ip.into(),
            workload: Some(FlowWorkload {
                id: format!("w-{ip}"),
                labels: vec![FlowLabel {
                    id: app.into(),
                    ..FlowLabel::default()
                }],
                ..FlowWorkload::default()
            }),
        };
        let mut flows = Vec::new();
        for i in 0..40u64 {
            let mut f = flow(&format!("10.0.1.{i}"), 60_000 + i * 30_000, 1);
            f.dst = Some(labelled("10.0.0.9", if i % 4 == 0 { "crm" } else { "erp" }));
            flows.push(f);
        }
        s.ingest(&flows).unwrap();
        let side = |app: &str| FlowSide {
            include: vec![ActorSet {
                all: vec![FlowActor {
                    kind: Some(Kind::Label(app.into())),
                }],
            }],
            exclude: vec![],
        };
        let q = |app: &str, either: bool| FlowQuery {
            max_results: 100,
            destinations: Some(side(app)),
            either_side: either,
            ..FlowQuery::default()
        };
        // The prefiltered query (AND) and the full decode (OR with an empty
        // source side, which takes no prefilter) agree.
        for app in ["crm", "erp", "none"] {
            let indexed = s.query(&q(app, false)).unwrap();
            let scanned = s.query(&q(app, true)).unwrap();
            assert_eq!(indexed, scanned, "{app}");
        }
        assert_eq!(s.query(&q("crm", false)).unwrap().matches, 10);
    }

    #[test]
    fn old_minutes_roll_up_into_hours_and_days_and_answer_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledTraffic::open(
            dir.path(),
            Limits::new(Duration::from_secs(30 * 86_400), u64::MAX),
        )
        .unwrap();
        let now = 10 * DAY_MS;
        // One flow reported every 5 minutes for two days, another now.
        let mut reports = Vec::new();
        let mut t = now - 2 * DAY_MS;
        while t < now - HOUR_MS {
            let mut f = flow("10.0.0.1", t, 2);
            f.dst_bi = 100;
            f.state = "C".into();
            reports.push(f);
            t += 5 * 60_000;
        }
        reports.push(flow("10.0.0.2", now, 1));
        s.ingest(&reports).unwrap();
        let all = FlowQuery {
            max_results: 10,
            start_ms: now - 3 * DAY_MS,
            end_ms: now,
            ..FlowQuery::default()
        };
        let before = s.query(&all).unwrap();
        let keys = |s: &SledTraffic| {
            let mut k = vec![0; 3];
            for (p, t) in s.trees().unwrap() {
                k[p.tier as usize] += t.len();
            }
            k
        };
        assert_eq!(keys(&s)[0], reports.len());
        let bytes_before = s.bytes();
        let done = s.maintain(now).unwrap();
        assert_eq!(done.rolled_up, reports.len() - 1 + 24, "{done:?}");
        assert_eq!(done.expired, 0);
        // Minutes within the hour stay; the last day's hours stay; the day
        // before is one bucket.
        let k = keys(&s);
        assert_eq!(k[0], 1, "{k:?}");
        assert!(k[1] >= 22 && k[1] <= 24, "{k:?}");
        assert!(k[2] >= 1 && k[2] <= 2, "{k:?}");
        assert!(
            s.bytes() < bytes_before / 10,
            "{} of {bytes_before}",
            s.bytes()
        );
        let after = s.query(&all).unwrap();
        assert_eq!(before, after, "the same answer from fewer, coarser buckets");
        let one = after
            .flows
            .iter()
            .find(|f| f.src.as_ref().unwrap().ip == "10.0.0.1")
            .unwrap();
        assert_eq!(one.num_connections, 2 * (reports.len() as u64 - 1));
        assert_eq!(one.dst_bi, 100 * (reports.len() as u64 - 1));
        // A query for one recent hour does not see the rolled-up day.
        let recent = s
            .query(&FlowQuery {
                max_results: 10,
                start_ms: now - 30 * 60_000,
                end_ms: now,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!(recent.matches, 1);
    }

    #[test]
    fn past_the_disk_budget_the_oldest_buckets_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            minutes_for: Duration::from_secs(365 * 86_400),
            ..Limits::new(Duration::from_secs(365 * 86_400), u64::MAX)
        };
        let s = SledTraffic::open(dir.path(), limits).unwrap();
        // One flow an hour: a partition each.
        let now = 1000 * HOUR_MS;
        let flows: Vec<TrafficFlow> = (0..100u64)
            .map(|i| flow(&format!("10.0.1.{i}"), now - (100 - i) * HOUR_MS, 1))
            .collect();
        s.ingest(&flows).unwrap();
        let total = s.bytes();
        assert!(total > 0);
        // Reopened, the count is the same (read back from the trees).
        drop(s);
        // sled lets go of its lock file a moment after the last handle.
        let reopen = || {
            SledTraffic::open(
                dir.path(),
                Limits {
                    max_bytes: total / 4,
                    ..limits
                },
            )
        };
        let t0 = std::time::Instant::now();
        let s = loop {
            match reopen() {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(5) => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        assert_eq!(s.bytes(), total);
        let done = s.maintain(now).unwrap();
        assert!(done.over_budget >= 74 && done.over_budget <= 76, "{done:?}");
        assert!(s.bytes() <= total / 4);
        let left = s
            .query(&FlowQuery {
                max_results: 200,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!(left.matches as usize, 100 - done.over_budget);
        let oldest_kept = left.flows.iter().map(|f| f.last_ms).min().unwrap();
        assert_eq!(
            oldest_kept,
            now - left.matches * HOUR_MS,
            "the newest are kept"
        );
    }

    #[test]
    fn first_format_records_are_rewritten_with_snapshots_when_the_store_opens() {
        use sc_proto::federation::{FlowLabel, FlowWorkload};
        let dir = tempfile::tempdir().unwrap();
        let mut f = flow("10.0.0.1", 61_000, 4);
        f.dst.as_mut().unwrap().workload = Some(FlowWorkload {
            id: "w1".into(),
            labels: vec![FlowLabel {
                id: "app-crm".into(),
                ..FlowLabel::default()
            }],
            ..FlowWorkload::default()
        });
        {
            // A store written by the first format: the whole flow inline.
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let mut v = vec![RECORD_V1];
            f.encode(&mut v).unwrap();
            let mut key = bucket(f.last_ms).to_be_bytes().to_vec();
            key.extend_from_slice(&identity(&f));
            db.open_tree("traffic").unwrap().insert(key, v).unwrap();
            db.flush().unwrap();
        }
        let s = SledTraffic::open(dir.path(), Limits::new(Duration::from_secs(3600), u64::MAX))
            .unwrap();
        let trees = s.trees().unwrap();
        assert_eq!(trees.len(), 1, "moved into one partition");
        let (_, v) = trees.values().next().unwrap().first().unwrap().unwrap();
        assert_eq!(v[0], RECORD_V, "rewritten");
        assert!(!s.db.tree_names().iter().any(|n| &n[..] == b"traffic"));
        let r = s
            .query(&FlowQuery {
                max_results: 10,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!(r.flows, vec![f.clone()], "read back whole");
        // And merged with what comes next as one flow.
        s.ingest(&[f.clone()]).unwrap();
        let r = s
            .query(&FlowQuery {
                max_results: 10,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!((r.matches, r.flows[0].num_connections), (1, 8));
    }

    #[test]
    fn a_map_query_sums_per_snapshot_what_the_whole_flows_would_give() {
        use sc_proto::federation::{FlowLabel, FlowWorkload};
        let dir = tempfile::tempdir().unwrap();
        let s = SledTraffic::open(dir.path(), Limits::new(Duration::from_secs(3600), u64::MAX))
            .unwrap();
        let wl = |i: u64, managed: bool| FlowWorkload {
            id: format!("w{i}"),
            managed,
            labels: vec![
                FlowLabel {
                    id: format!("app{}", i % 3),
                    key: "app".into(),
                    value: format!("a{}", i % 3),
                },
                FlowLabel {
                    id: "prod".into(),
                    key: "env".into(),
                    value: "prod".into(),
                },
            ],
            ..FlowWorkload::default()
        };
        let mut flows = Vec::new();
        for i in 0..60u64 {
            let mut f = flow(&format!("10.0.0.{}", i % 7), 60_000 + i * 20_000, 1 + i % 4);
            // Each address is one workload (or none) throughout.
            f.src.as_mut().unwrap().workload = (i % 7 != 0).then(|| wl(i % 7, true));
            f.dst = Some(if i % 5 == 0 {
                // An address, no workload.
                FlowEnd {
                    ip: format!("203.0.113.{}", i % 4),
                    workload: None,
                }
            } else {
                FlowEnd {
                    ip: format!("10.0.1.{}", i % 4),
                    workload: Some(wl(100 + i % 4, i % 4 < 2)),
                }
            });
            f.direction = if i % 3 == 0 { "outbound" } else { "inbound" }.into();
            f.decision = ["allowed", "blocked", "potentially_blocked"][(i % 3) as usize].into();
            f.port = 80 + (i % 2) as u32;
            flows.push(f);
        }
        s.ingest(&flows).unwrap();
        let keys = vec!["app".to_string(), "env".to_string()];
        let fast = s
            .query(&FlowQuery {
                group_keys: keys.clone(),
                ..FlowQuery::default()
            })
            .unwrap();
        let all = s
            .query(&FlowQuery {
                max_results: 10_000,
                ..FlowQuery::default()
            })
            .unwrap();
        assert!(!fast.edges.is_empty());
        assert_eq!(
            fast.edges,
            super::super::edges::aggregate(
                &all.flows,
                super::super::edges::Grouping::Labels(&keys)
            )
        );
        // The policy generator's question: into or out of app0, per
        // workload. Both ends' snapshots prefilter it; the answer is the
        // aggregate of exactly the flows with an app0 end.
        use sc_proto::federation::{flow_actor, ActorSet, FlowActor, FlowSide};
        let side = || {
            Some(FlowSide {
                include: vec![ActorSet {
                    all: vec![FlowActor {
                        kind: Some(flow_actor::Kind::Label("app0".into())),
                    }],
                }],
                exclude: vec![],
            })
        };
        let touching = s
            .query(&FlowQuery {
                sources: side(),
                destinations: side(),
                either_side: true,
                by_workload: true,
                ..FlowQuery::default()
            })
            .unwrap();
        let app0 = |e: &Option<FlowEnd>| {
            e.as_ref()
                .and_then(|e| e.workload.as_ref())
                .is_some_and(|w| w.labels.iter().any(|l| l.id == "app0"))
        };
        let expected: Vec<&TrafficFlow> = all
            .flows
            .iter()
            .filter(|f| app0(&f.src) || app0(&f.dst))
            .collect();
        assert!(!expected.is_empty() && expected.len() < all.flows.len());
        assert_eq!(touching.matches, expected.len() as u64);
        assert_eq!(
            touching.edges,
            super::super::edges::aggregate(
                expected.iter().copied(),
                super::super::edges::Grouping::Workloads
            )
        );
        assert!(touching
            .edges
            .iter()
            .all(|e| e.src.starts_with("w:") || e.dst.starts_with("w:")));
        // The generator's narrower question, by seeks: into app0, or from
        // app0 to an address.
        let governed = s
            .query(&FlowQuery {
                sources: side(),
                destinations: side(),
                either_side: true,
                by_workload: true,
                governed: true,
                ..FlowQuery::default()
            })
            .unwrap();
        let decided: Vec<&TrafficFlow> = all
            .flows
            .iter()
            .filter(|f| {
                app0(&f.dst)
                    || (app0(&f.src) && f.dst.as_ref().is_some_and(|d| d.workload.is_none()))
            })
            .collect();
        assert!(decided
            .iter()
            .any(|f| f.dst.as_ref().unwrap().workload.is_none()));
        assert!(
            decided.len() < expected.len(),
            "app0 -> other groups left out"
        );
        assert_eq!(governed.matches, decided.len() as u64);
        assert_eq!(
            governed.edges,
            super::super::edges::aggregate(decided, super::super::edges::Grouping::Workloads)
        );

        // Asked again, the map comes from the kept buckets, the same; a
        // flow written into an old bucket is in the next one.
        let again = s
            .query(&FlowQuery {
                group_keys: keys.clone(),
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!(again, fast);
        let mut late = flows[7].clone();
        late.num_connections = 1000;
        s.ingest(&[late]).unwrap();
        let all = s
            .query(&FlowQuery {
                max_results: 10_000,
                ..FlowQuery::default()
            })
            .unwrap();
        let after = s
            .query(&FlowQuery {
                group_keys: keys.clone(),
                ..FlowQuery::default()
            })
            .unwrap();
        assert_ne!(after, fast);
        assert_eq!(
            after.edges,
            super::super::edges::aggregate(
                &all.flows,
                super::super::edges::Grouping::Labels(&keys)
            )
        );
    }
}
