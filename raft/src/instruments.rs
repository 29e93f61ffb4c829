//! The counters of events that leave no state behind (elections, leader
//! changes, log fsyncs), owned by a node and fed by the tasks that see them.
//!
//! Apart from [`crate::metrics`], which reads them (and the node's status)
//! for Prometheus, so that the storage and the node can count without
//! knowing anything of the exposition, and no import runs in a circle.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::watch;

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
    /// Read indexes this leader gave a follower on the follower's own vote,
    /// without a heartbeat round (decision 0026).
    pub(crate) read_index_by_asker: Counter,
    /// Read indexes this leader confirmed with a heartbeat round.
    pub(crate) read_index_by_heartbeats: Counter,
}

impl Instruments {
    pub(crate) fn new(log_fsync: Histogram) -> Self {
        Instruments {
            log_fsync,
            elections: Counter::default(),
            leader_changes: Counter::default(),
            read_index_by_asker: Counter::default(),
            read_index_by_heartbeats: Counter::default(),
        }
    }
}

/// Buckets for a disk sync: 50 µs to about 1.6 s, doubling. A healthy SSD
/// syncs in 0.1-1 ms; the top buckets catch a disk that has started to stall.
pub(crate) fn fsync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Counts campaigns and leader changes from openraft's server metrics channel
/// (the watchdog only samples). That channel changes only with the vote, the
/// role, the leader or the membership; the full metrics channel is sent on
/// every pass of the core's loop (each batch of entries, each heartbeat), and
/// each send made the Raft core wake this task on another thread
/// (docs/benchmarks.md, "Waiters on openraft's metrics"). The channel keeps
/// only the latest value, so a campaign is recognised by its lasting trace, a
/// vote for this node in a new term, rather than by the candidate state,
/// which a quick win can skip.
///
/// `saved_term` is the term of the vote on disk when the node started: a
/// campaign of an earlier run is not counted again. The channel's first value
/// is a placeholder (term 0) until the core has read its state, and a
/// bootstrap may already have elected by the time this task first runs, so
/// the value in hand is examined before waiting for the next.
pub(crate) async fn count_elections(
    (id, saved_term): (NodeId, u64),
    mut metrics: watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, crate::NodeInfo>>,
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
