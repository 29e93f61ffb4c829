//! One cached gRPC channel per peer, shared by the Raft and federation clients.
//!
//! A tonic `Channel` multiplexes many concurrent calls over one HTTP/2
//! connection and reconnects on its own, so a node keeps exactly one per peer and
//! replaces it only when the peer's address changes in the membership.

use std::collections::HashMap;
use std::sync::Mutex;

use sc_proto::federation::federation_client::FederationClient;
use sc_proto::raft::raft_service_client::RaftServiceClient;
use sc_proto::version::{stamped, Stamped};
use tonic::transport::{Channel, Endpoint};

use super::faults::{LinkCut, NetFaults};
use super::tls::TlsMaterial;
use crate::config::Timeouts;
use crate::types::{NodeId, NodeInfo};

/// The biggest message accepted or sent: a batch of log entries at most.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Why a peer could not be called.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The fault seam dropped the call.
    #[error(transparent)]
    Cut(#[from] LinkCut),
    /// This node is fenced: it sends nothing.
    #[error(transparent)]
    Fenced(#[from] super::fence::Fenced),
    /// The peer's address or TLS settings are unusable.
    #[error("cannot set up a channel to {peer}: {reason}")]
    Channel {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
}

/// The channel cache of one node.
pub struct Peers {
    self_id: NodeId,
    tls: TlsMaterial,
    faults: NetFaults,
    fence: super::Fence,
    timeouts: Timeouts,
    /// The consensus runtime, where every channel's connection tasks run (see
    /// [`crate::runtime`]).
    spawn: tokio::runtime::Handle,
    /// A std mutex: held only to look up or insert, never across an await.
    channels: Mutex<HashMap<NodeId, (NodeInfo, Channel)>>,
    /// Set when a peer refused this node's vote request because its own log
    /// is longer; the election timer reads and clears it (see
    /// [`Peers::saw_greater_log`]).
    greater_log: std::sync::atomic::AtomicBool,
    /// A planned leader transfer in progress (see [`super::transfer`]).
    transfer: super::Transfer,
    /// Which connections carry a leader's traffic, and a leader found gone
    /// (see [`super::liveness`]).
    liveness: super::Liveness,
    /// Peers whose Raft RPCs fail: since when, how often, and the last
    /// failure (see [`Peers::note_rpc`]).
    failing: Mutex<HashMap<NodeId, Failing>>,
}

/// One peer's run of failed Raft RPCs.
struct Failing {
    since: std::time::Instant,
    failures: u64,
    last: std::time::Instant,
}

/// A run of failures with no call for this long is over (this node stopped
/// leading, say): the next failure starts a new one, and is logged.
const FAILING_FORGOTTEN: std::time::Duration = std::time::Duration::from_secs(30);

impl Peers {
    /// A cache for node `self_id`, presenting `tls` to every peer, whose
    /// channels run their connection tasks on `spawn`.
    pub(crate) fn new(
        self_id: NodeId,
        tls: TlsMaterial,
        faults: NetFaults,
        timeouts: Timeouts,
        spawn: tokio::runtime::Handle,
    ) -> Self {
        Peers {
            self_id,
            tls,
            faults,
            fence: super::Fence::default(),
            timeouts,
            spawn,
            channels: Mutex::new(HashMap::new()),
            greater_log: std::sync::atomic::AtomicBool::new(false),
            transfer: super::Transfer::default(),
            liveness: super::Liveness::default(),
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// Notes how a Raft RPC to `to` went, and logs only the changes: the
    /// first failure (WARN, with its error) and the first success after
    /// failures (INFO, with how many failed and for how long). openraft logs
    /// each failed heartbeat five times over; a fenced peer made 33 lines a
    /// second, so those lines are filtered out and these stand for them
    /// (issue 20).
    pub(crate) fn note_rpc(&self, to: NodeId, error: Option<&dyn std::fmt::Display>) {
        let Ok(mut failing) = self.failing.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        match error {
            Some(e) => {
                let run = failing
                    .get_mut(&to)
                    .filter(|f| now.duration_since(f.last) < FAILING_FORGOTTEN);
                match run {
                    Some(f) => {
                        f.failures += 1;
                        f.last = now;
                    }
                    None => {
                        tracing::warn!(
                            peer = to,
                            error = %e,
                            "Raft messages to a peer fail; logged again when they get through"
                        );
                        failing.insert(
                            to,
                            Failing {
                                since: now,
                                failures: 1,
                                last: now,
                            },
                        );
                    }
                }
            }
            None => {
                if let Some(f) = failing.remove(&to) {
                    tracing::info!(
                        peer = to,
                        failures = f.failures,
                        for_ms = f.since.elapsed().as_millis() as u64,
                        "Raft messages reach the peer again"
                    );
                }
            }
        }
    }

    /// Records that a peer refused our vote request with a longer log than
    /// ours. Such a candidate cannot win; campaigning again at once only
    /// raises the term and deposes the candidates that can (openraft's own
    /// timer backs off in this case too, and ours replaces it).
    pub(crate) fn saw_greater_log(&self) {
        self.greater_log
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a peer had a longer log since the last call (and forgets it).
    pub(crate) fn take_greater_log(&self) -> bool {
        self.greater_log
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// The node's fence (shared with its servers, which refuse while it stands).
    pub fn fence(&self) -> &super::Fence {
        &self.fence
    }

    /// A planned leader transfer in progress, as this node knows it.
    pub fn transfer(&self) -> &super::Transfer {
        &self.transfer
    }

    /// Connections that carry a leader's traffic, and a leader found gone.
    pub fn liveness(&self) -> &super::Liveness {
        &self.liveness
    }

    /// A connection from `conn` to this node's Raft server has closed. If it
    /// carried a leader's AppendEntries, a task checks whether that node's
    /// process is gone and marks it so (see [`super::liveness`]).
    pub(crate) fn connection_closed(self: &std::sync::Arc<Self>, conn: std::net::SocketAddr) {
        let Some((node, addr)) = self.liveness.closed(conn) else {
            return;
        };
        let peers = self.clone();
        self.spawn.spawn(async move {
            if peers.process_gone(node, &addr).await {
                tracing::info!(
                    node,
                    %addr,
                    "the leader's connection closed and its address refuses connections: its process is gone"
                );
                peers.liveness.mark_gone(node);
            }
        });
    }

    /// Whether nothing listens at `addr` where node `node` did: its process
    /// is gone. A fenced node or a cut link knows nothing (it sends nothing),
    /// and a probe gets one heartbeat to be answered.
    pub(crate) async fn process_gone(&self, node: NodeId, addr: &str) -> bool {
        if self.gate(node).await.is_err() {
            return false;
        }
        super::liveness::refuses(addr, self.timeouts.heartbeat).await
    }

    /// This node's timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The TLS material presented to peers.
    pub fn tls(&self) -> &TlsMaterial {
        &self.tls
    }

    /// This node's id.
    pub fn self_id(&self) -> NodeId {
        self.self_id
    }

    /// Passes this node's fence and the fault seam for a call to `to`.
    pub async fn gate(&self, to: NodeId) -> Result<(), PeerError> {
        self.fence.check()?;
        Ok(self.faults.gate(self.self_id, to).await?)
    }

    /// The channel to `id`, created lazily (no I/O here) and cached.
    pub fn channel(&self, id: NodeId, info: &NodeInfo) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock().map_err(|_| PeerError::Channel {
            peer: info.to_string(),
            reason: "channel cache lock poisoned".into(),
        })?;
        if let Some((known, ch)) = channels.get(&id) {
            if known == info {
                return Ok(ch.clone());
            }
        }
        let ch = endpoint(&self.tls, info, &self.timeouts)?
            .executor(crate::runtime::SpawnOn(self.spawn.clone()))
            .connect_lazy();
        channels.insert(id, (info.clone(), ch.clone()));
        Ok(ch)
    }

    /// A Raft RPC client for `id`, after the fault seam.
    pub async fn raft_client(
        &self,
        id: NodeId,
        info: &NodeInfo,
    ) -> Result<RaftServiceClient<Stamped>, PeerError> {
        self.gate(id).await?;
        Ok(RaftServiceClient::new(stamped(self.channel(id, info)?))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// A federation client for `id`, after the fault seam.
    pub async fn federation_client(
        &self,
        id: NodeId,
        info: &NodeInfo,
    ) -> Result<FederationClient<Stamped>, PeerError> {
        self.gate(id).await?;
        Ok(FederationClient::new(stamped(self.channel(id, info)?))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// A lazily connecting mutual-TLS channel to `info`, on the caller's runtime
/// (for the CLI and clients; a node's own channels come from [`Peers`]).
pub fn connect_lazy(
    tls: &TlsMaterial,
    info: &NodeInfo,
    timeouts: &Timeouts,
) -> Result<Channel, PeerError> {
    Ok(endpoint(tls, info, timeouts)?.connect_lazy())
}

/// The mutual-TLS endpoint settings every channel to a node shares.
fn endpoint(
    tls: &TlsMaterial,
    info: &NodeInfo,
    timeouts: &Timeouts,
) -> Result<Endpoint, PeerError> {
    let err = |reason: String| PeerError::Channel {
        peer: info.to_string(),
        reason,
    };
    let endpoint = Endpoint::from_shared(format!("https://{}", info.addr))
        .map_err(|e| err(e.to_string()))?
        .tls_config(tls.client_config(&info.name, timeouts.connect))
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(timeouts.heartbeat.max(std::time::Duration::from_secs(1)))
        .keep_alive_while_idle(true);
    Ok(endpoint)
}
