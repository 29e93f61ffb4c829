//! What a member tells Prometheus about the VENs it serves and the traffic it
//! keeps: VENs connected and up to date, how long a policy push takes to be
//! acknowledged, how often a VEN arrives behind (a resync), flow summaries
//! stored, and region-local flow queries.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The VEN service's instruments; cheap to clone (clones share the series).
#[derive(Clone)]
pub struct VenMetrics {
    pub(crate) connected: Gauge,
    pub(crate) current: Gauge,
    pub(crate) push_ack: Histogram,
    pub(crate) streams: Counter,
    pub(crate) resyncs: Counter,
    pub(crate) flows_stored: Counter,
    pub(crate) flow_ingest: Histogram,
    pub(crate) flow_query: Histogram,
}

impl Default for VenMetrics {
    fn default() -> Self {
        VenMetrics {
            connected: Gauge::default(),
            current: Gauge::default(),
            // 0.25 ms to about 8 s, doubling: on a LAN a push is acknowledged
            // in about a millisecond; seconds mean a VEN's firewall is slow
            // to program or the member is overloaded.
            push_ack: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            streams: Counter::default(),
            resyncs: Counter::default(),
            flows_stored: Counter::default(),
            // 0.1 ms to about 3 s: a report of a few hundred summaries is
            // stored in about a millisecond.
            flow_ingest: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            // 0.5 ms to about 16 s: selective queries take milliseconds,
            // broad ones over millions of summaries seconds.
            flow_query: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
        }
    }
}

impl VenMetrics {
    /// Registers the member's series into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pce_vens_connected",
            "VENs with a policy stream open at this member",
            self.connected.clone(),
        );
        registry.register(
            "pce_vens_current",
            "Connected VENs that acknowledged their current policy",
            self.current.clone(),
        );
        registry.register_with_unit(
            "pce_ven_policy_push_ack_duration",
            "Time from sending a VEN its new policy to its acknowledgement that the policy is enforced",
            Unit::Seconds,
            self.push_ack.clone(),
        );
        registry.register(
            "pce_ven_streams_opened",
            "Policy streams opened by VENs (connects and reconnects)",
            self.streams.clone(),
        );
        registry.register(
            "pce_ven_resyncs",
            "Streams whose VEN arrived enforcing an older policy and was sent the current one",
            self.resyncs.clone(),
        );
        registry.register(
            "pce_flow_summaries_stored",
            "Flow summaries reported by VENs and stored in the region's traffic store",
            self.flows_stored.clone(),
        );
        registry.register_with_unit(
            "pce_flow_ingest_duration",
            "Time to resolve and store one VEN's flow report in the region's traffic store",
            Unit::Seconds,
            self.flow_ingest.clone(),
        );
        registry.register_with_unit(
            "pce_flow_query_duration",
            "Time to answer a flow query from the region's traffic store (local or from a global query)",
            Unit::Seconds,
            self.flow_query.clone(),
        );
    }
}
