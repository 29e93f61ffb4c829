//! What a node tells Prometheus about its part in Raft.
//!
//! Two kinds of series. Figures the node already keeps (role, term, indexes,
//! each peer's lag) are read from [`Node::status`] at scrape time by a
//! collector, so they can never drift from what `pce status` prints and cost
//! nothing between scrapes. Events that leave no state behind (elections, log
//! fsyncs) are counted where they happen, into instruments the node owns.
//!
//! Nothing here is global: each node registers into the registry its region
//! hands it, so three regions in one `pce up` process expose three sets.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::watch;

use crate::node::Node;
use crate::types::NodeId;

/// Event counters of one node, shared by the tasks that see the events.
#[derive(Clone)]
pub(crate) struct Instruments {
    /// Time of each fsync of the Raft log (one covers many entries).
    pub(crate) log_fsync: Histogram,
    /// Campaigns this node started (it became a candidate).
    pub(crate) elections: Counter,
    /// Times this node saw the leader become another node (the first leader
    /// after a start counts).
    pub(crate) leader_changes: Counter,
}

impl Instruments {
    pub(crate) fn new(log_fsync: Histogram) -> Self {
        Instruments {
            log_fsync,
            elections: Counter::default(),
            leader_changes: Counter::default(),
        }
    }
}

/// Buckets for a disk sync: 50 µs to about 1.6 s, doubling. A healthy SSD
/// syncs in 0.1-1 ms; the top buckets catch a disk that has started to stall.
pub(crate) fn fsync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Counts campaigns and leader changes from openraft's metrics channel (the
/// watchdog only samples). The channel keeps only the latest value, so a
/// campaign is recognised by its lasting trace, a vote for this node in a new
/// term, rather than by the candidate state, which a quick win can skip.
///
/// `saved_term` is the term of the vote on disk when the node started: a
/// campaign of an earlier run is not counted again. The channel's first value
/// is a placeholder (term 0) until the core has read its state, and a
/// bootstrap may already have elected by the time this task first runs, so
/// the value in hand is examined before waiting for the next.
pub(crate) async fn count_elections(
    (id, saved_term): (NodeId, u64),
    mut metrics: watch::Receiver<openraft::RaftMetrics<NodeId, crate::NodeInfo>>,
    instruments: Instruments,
    mut stop: watch::Receiver<bool>,
) {
    let mut campaigned = saved_term;
    let mut leader = None;
    loop {
        let (vote, now_leader) = {
            let m = metrics.borrow_and_update();
            (m.vote, m.current_leader)
        };
        let term = vote.leader_id().get_term();
        if vote.leader_id().voted_for() == Some(id) && term > campaigned {
            instruments.elections.inc();
            campaigned = term;
        }
        // The first leader this run sees counts: after a restart, operators
        // want to see that the node found one.
        if now_leader.is_some() && now_leader != leader {
            instruments.leader_changes.inc();
            leader = now_leader;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

impl Node {
    /// Registers this node's series into `registry`: its Raft state, read at
    /// each scrape, and its event counters.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let i = self.instruments();
        registry.register_with_unit(
            "pce_raft_log_fsync_duration",
            "Time to make the Raft log durable (one fsync covers every entry written since the last)",
            Unit::Seconds,
            i.log_fsync.clone(),
        );
        registry.register(
            "pce_raft_elections",
            "Campaigns this node started (it became a candidate)",
            i.elections.clone(),
        );
        registry.register(
            "pce_raft_leader_changes",
            "Times this node saw the leader become another node (the first leader after a start counts)",
            i.leader_changes.clone(),
        );
        registry.register_collector(Box::new(StatusCollector { node: self.clone() }));
    }
}

/// Reads [`Node::status`] at each scrape.
struct StatusCollector {
    node: Node,
}

impl fmt::Debug for StatusCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusCollector")
            .field("node", &self.node.id())
            .finish()
    }
}

/// The roles a node can be in, so that each has a series (0 or 1) and a
/// dashboard can plot any of them without gaps.
const ROLES: [&str; 5] = ["leader", "follower", "candidate", "learner", "shutdown"];

/// The label set of a series without labels.
const NO_LABELS: [(&str, &str); 0] = [];

/// One unlabelled gauge.
fn gauge<N: prometheus_client::encoding::EncodeGaugeValue + fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.node.status();
        let e = &mut encoder;
        {
            let mut info = e.encode_descriptor(
                "pce_node_info",
                "Always 1: the node's name, region and version as labels",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            let labels = [
                ("name", s.name.as_str()),
                ("region", s.region.as_str()),
                ("version", env!("CARGO_PKG_VERSION")),
            ];
            ConstGauge::new(1i64).encode(info.encode_family(&labels)?)?;
        }
        {
            let mut role = e.encode_descriptor(
                "pce_raft_role",
                "1 for the role this node has now, 0 for the others",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for r in ROLES {
                let v = i64::from(s.role == r);
                ConstGauge::new(v).encode(role.encode_family(&[("role", r)])?)?;
            }
        }
        gauge(e, "pce_raft_term", "Current Raft term", None, s.term as i64)?;
        let index = |v: Option<u64>| v.map_or(-1, |i| i as i64);
        gauge(
            e,
            "pce_raft_last_log_index",
            "Last index written to the local log (-1: empty)",
            None,
            index(s.last_log_index),
        )?;
        gauge(
            e,
            "pce_raft_commit_index",
            "Last index known committed (-1: none)",
            None,
            index(s.committed),
        )?;
        gauge(
            e,
            "pce_raft_applied_index",
            "Last index applied to the local replica (-1: none)",
            None,
            index(s.last_applied),
        )?;
        gauge(
            e,
            "pce_raft_snapshot_index",
            "Last index the local snapshot covers (-1: no snapshot)",
            None,
            index(s.snapshot),
        )?;
        gauge(
            e,
            "pce_store_revision",
            "Revision of the local replica of the policy store",
            None,
            s.revision as i64,
        )?;
        // The next three exist only sometimes (after a first snapshot; on the
        // leader). Their descriptions are always written, so every name is
        // known to a scraper, but no sample is made up: a zero lag on a
        // follower would read as "caught up".
        {
            let mut size = e.encode_descriptor(
                "pce_raft_snapshot_size",
                "Size of the node's current snapshot file (no sample before the first snapshot)",
                Some(&Unit::Bytes),
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            if let Some(bytes) = self.node.snapshot_bytes() {
                ConstGauge::new(bytes as i64).encode(size.encode_family(&NO_LABELS)?)?;
            }
        }
        {
            let mut age = e.encode_descriptor(
                "pce_raft_quorum_ack_age",
                "Leader only: time since a quorum last acknowledged it",
                Some(&Unit::Seconds),
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            if let Some(ms) = s.millis_since_quorum_ack {
                ConstGauge::new(ms as f64 / 1000.0).encode(age.encode_family(&NO_LABELS)?)?;
            }
        }
        let mut lag = e.encode_descriptor(
            "pce_raft_peer_lag_entries",
            "Leader only: log entries each peer is behind the leader",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for p in s.peers.iter().filter(|p| p.id != s.id) {
            if let Some(l) = p.lag {
                let labels = [
                    ("peer", p.name.as_str()),
                    ("peer_region", p.region.as_str()),
                ];
                ConstGauge::new(l as i64).encode(lag.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
