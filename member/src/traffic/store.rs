//! The sled traffic store. Keys sort by minute bucket, so a time range is a
//! key range and retention is a range delete; one key per (bucket, reporter,
//! src, dst, port, proto, direction, decision, rule) merges the reports of one
//! minute. Values are a format byte and the protobuf `TrafficFlow` (tagged
//! fields: a newer node can read an older record).
//!
//! A query that names labels on a side (the selective Explorer query: one
//! app's traffic) skips, before decoding, every stored flow whose bytes do not
//! hold one of those label ids (the protobuf keeps strings verbatim). `pce bench
//! flows` measured the alternatives at a million flows: decoding every flow of
//! the day took 2 s; a label index tree made the query 0.35 s but cut ingest
//! from 67,000 to 7,000 flows/s and tripled the bytes per flow; the byte
//! prefilter keeps ingest and size and is measured in docs/benchmarks.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use sc_proto::federation::{FlowQuery, FlowQueryReply, TrafficFlow};

use super::filter;
use crate::error::MemberError;

/// The format byte of a stored flow.
const RECORD_V: u8 = 1;
/// Width of a merge bucket.
pub const BUCKET_MS: u64 = 60_000;

/// What the VEN service and the query path need of a region's traffic.
pub trait TrafficStore: Send + Sync {
    /// Stores resolved summaries, merging those of the same key and minute.
    fn ingest(&self, flows: &[TrafficFlow]) -> Result<usize, MemberError>;
    /// The flows matching `q`, merged over the time range, newest first,
    /// capped at `q.max_results`, with the count before the cap.
    fn query(&self, q: &FlowQuery) -> Result<FlowQueryReply, MemberError>;
    /// Drops buckets older than the retention; returns how many flows went.
    fn expire(&self, now_ms: u64) -> Result<usize, MemberError>;
}

/// The embedded store (one sled tree in the member's flow directory).
#[derive(Clone)]
pub struct SledTraffic {
    tree: sled::Tree,
    retention: Duration,
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

fn encode(f: &TrafficFlow) -> Vec<u8> {
    let mut v = Vec::with_capacity(f.encoded_len() + 1);
    v.push(RECORD_V);
    f.encode(&mut v).unwrap_or_default();
    v
}

fn decode(v: &[u8]) -> Option<TrafficFlow> {
    match v.split_first() {
        Some((&RECORD_V, rest)) => TrafficFlow::decode(rest).ok(),
        _ => None,
    }
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
    /// Opens (or creates) the store in `dir`, keeping flows for `retention`.
    pub fn open(dir: &Path, retention: Duration) -> Result<SledTraffic, MemberError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(SledTraffic {
            tree: db.open_tree("traffic")?,
            retention,
        })
    }
}

impl SledTraffic {
    /// Writes what sled holds in memory to its files (benchmarks measure the
    /// bytes on disk after it).
    pub fn flush(&self) -> Result<(), MemberError> {
        self.tree.flush()?;
        Ok(())
    }
}

impl TrafficStore for SledTraffic {
    fn ingest(&self, flows: &[TrafficFlow]) -> Result<usize, MemberError> {
        for f in flows {
            let mut key = bucket(f.last_ms).to_be_bytes().to_vec();
            key.extend_from_slice(&identity(f));
            self.tree.fetch_and_update(&key, |old| {
                let mut acc = match old.and_then(decode) {
                    Some(mut acc) => {
                        merge(&mut acc, f);
                        acc
                    }
                    None => f.clone(),
                };
                acc.region = f.region.clone();
                Some(encode(&acc))
            })?;
        }
        Ok(flows.len())
    }

    fn query(&self, q: &FlowQuery) -> Result<FlowQueryReply, MemberError> {
        let from = bucket(q.start_ms).to_be_bytes();
        let to = if q.end_ms == 0 {
            u64::MAX
        } else {
            bucket(q.end_ms).saturating_add(BUCKET_MS)
        }
        .to_be_bytes();
        let mut merged: BTreeMap<Vec<u8>, TrafficFlow> = BTreeMap::new();
        let mut add = |v: &[u8]| {
            let Some(f) = decode(v) else { return };
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
        // A flow can match only if it holds one of the labels a side requires
        // (either side may match when the sides are ORed: then no prefilter).
        let required = if q.either_side {
            None
        } else {
            required_labels(q.destinations.as_ref()).or(required_labels(q.sources.as_ref()))
        };
        let finders: Vec<memchr::memmem::Finder> = required
            .iter()
            .flatten()
            .map(|l| memchr::memmem::Finder::new(l.as_bytes()).into_owned())
            .collect();
        for item in self.tree.range(from..to) {
            let (_, v) = item?;
            if !finders.is_empty() && !finders.iter().any(|f| f.find(&v).is_some()) {
                continue;
            }
            add(&v);
        }
        let matches = merged.len() as u64;
        let mut flows: Vec<TrafficFlow> = merged.into_values().collect();
        flows.sort_by_key(|f| std::cmp::Reverse(f.last_ms));
        flows.truncate(q.max_results as usize);
        Ok(FlowQueryReply { flows, matches })
    }

    fn expire(&self, now_ms: u64) -> Result<usize, MemberError> {
        let cutoff = bucket(now_ms.saturating_sub(self.retention.as_millis() as u64));
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.tree.range(..cutoff.to_be_bytes().to_vec()) {
            let (k, _) = item?;
            batch.remove(k);
            n += 1;
        }
        self.tree.apply_batch(batch)?;
        Ok(n)
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
        let s = SledTraffic::open(dir.path(), Duration::from_secs(3600)).unwrap();
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
        let s = SledTraffic::open(dir.path(), Duration::from_secs(120)).unwrap();
        s.ingest(&[flow("10.0.0.1", 60_000, 1), flow("10.0.0.2", 300_000, 1)])
            .unwrap();
        assert_eq!(s.expire(400_000).unwrap(), 1);
        let r = s
            .query(&FlowQuery {
                max_results: 10,
                ..FlowQuery::default()
            })
            .unwrap();
        assert_eq!(r.matches, 1);
    }

    #[test]
    fn a_query_naming_labels_skips_by_bytes_and_finds_what_the_full_decode_finds() {
        use sc_proto::federation::flow_actor::Kind;
        use sc_proto::federation::{ActorSet, FlowActor, FlowLabel, FlowSide, FlowWorkload};
        let dir = tempfile::tempdir().unwrap();
        let s = SledTraffic::open(dir.path(), Duration::from_secs(3600)).unwrap();
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
}
