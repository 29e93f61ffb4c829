//! What a node reports about itself and, if leader, about replication to its peers.
//!
//! One struct serves `pce status` (a table), scripts (`--json`) and the
//! federation `Status` RPC, so the three never disagree.

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// One node's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatus {
    /// Raft id.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// gRPC address.
    pub addr: String,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The leader this node follows, if it knows one.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last log index written locally.
    pub last_log_index: Option<u64>,
    /// Last log index applied to the local replica.
    pub last_applied: Option<u64>,
    /// Last log index known committed.
    pub committed: Option<u64>,
    /// Last log index covered by the local snapshot.
    pub snapshot: Option<u64>,
    /// Last log index purged from the local log (entries up to it exist only in
    /// the snapshot).
    pub purged: Option<u64>,
    /// Store revision of the local replica.
    pub revision: u64,
    /// For a leader: time since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Every member of the cluster, with replication progress when this node leads.
    pub peers: Vec<PeerStatus>,
    /// While fenced for a drill: milliseconds until the fence lifts itself.
    pub fenced_for_ms: Option<u64>,
    /// A membership change is in flight here (joint configuration, or not yet
    /// applied): while it is, losing a region can leave the others unable to
    /// elect, so drills and `pce up` wait for it to end.
    #[serde(default)]
    pub membership_changing: bool,
    /// What the node serves beside Raft (filled by the program that runs it).
    pub services: Services,
}

/// The services a node runs on top of Raft, as the DR runbook needs to see them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Services {
    /// Admin API address (`host:port`), if it serves one.
    pub api: Option<String>,
    /// VENs with an open policy stream here.
    pub vens_connected: Option<u64>,
    /// Of those, the VENs whose acknowledged policy is the current one.
    pub vens_current: Option<u64>,
    /// VENs that came back (since the node started) enforcing an older
    /// policy than their current one and were sent it again. A VEN that moves
    /// to a sibling of its node is current there, so a node-loss drill checks
    /// this stays put: a push storm would show here.
    #[serde(default)]
    pub ven_resyncs: Option<u64>,
    /// The operating-system process the node runs in: a drill that kills a
    /// node with `kill -9` kills this, and refuses when other nodes share it
    /// (`pce up` runs every node in one process).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The release the node runs (`pce --version`), and the protocol it
    /// speaks: during a rolling upgrade, which nodes are done.
    #[serde(default)]
    pub release: Option<String>,
    /// See `release`.
    #[serde(default)]
    pub protocol: Option<u32>,
}

/// One member as seen from the reporting node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerStatus {
    /// Raft id.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Region.
    pub region: String,
    /// gRPC address.
    pub addr: String,
    /// Voter (true) or learner.
    pub voter: bool,
    /// Highest index replicated to it (leader only).
    pub matched: Option<u64>,
    /// Entries it is behind the leader's log (leader only).
    pub lag: Option<u64>,
}
