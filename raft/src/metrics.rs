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
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::node::Node;

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
        registry.register(
            "pce_raft_read_index_by_asker",
            "Read indexes this leader gave a follower on the follower's own vote, without a heartbeat round",
            i.read_index_by_asker.clone(),
        );
        registry.register(
            "pce_raft_read_index_by_heartbeats",
            "Read indexes this leader confirmed with a round of heartbeats",
            i.read_index_by_heartbeats.clone(),
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
