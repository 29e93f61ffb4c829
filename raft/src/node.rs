//! A PCE node's consensus half, once running: the Raft instance over its
//! storage, and the one path every write, read and membership change takes.
//! Starting it (storage, servers, background tasks) is the `start` module's job,
//! so this module imports no server: the servers call the node, never the
//! reverse.
//!
//! - A write goes to [`Node::write`] on any node: if this node leads, it is
//!   proposed here; otherwise it is forwarded to the leader over the mutual-TLS
//!   federation channel. Retries (leader changes, lost answers) resend the same
//!   client id and serial, and the state machine applies a request once.
//! - A read is served from the local replica and says which revision it reflects;
//!   a linearizable read first obtains a read index from the leader (ReadIndex)
//!   and waits until the local replica has applied it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Raft, ServerState};
use sc_proto::federation::federation_client::FederationClient;
use sc_proto::federation::{
    FlowQuery, FlowQueryReply, ReadIndexRequest, VenPoliciesRequest, VenPolicy, WriteRequest,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec;
use crate::config::{Timeouts, Tuning};
use crate::convert::{is_not_leader, membership_request, membership_view, status_from_proto};
use crate::error::Error;
use crate::network::{NetFaults, Peers, TlsMaterial};
use crate::runtime::ConsensusRuntime;
use crate::status::{NodeStatus, PeerStatus};
use crate::storage::engine::DiskFaults;
use crate::storage::state_machine::{ChangeNotice, KvList, ReadResult};
use crate::storage::{NodeLog, ReadView};
use crate::types::{Command, CommandResponse, KvEntry, NodeId, NodeInfo, TypeConfig};

/// Defined with the crate's other domain types (so the wire conversions can use
/// them without importing the node); named here as part of the node's API.
pub use crate::types::{Consistency, MembershipOp, MembershipView};

/// Everything needed to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Raft id, unique in the cluster and never reused.
    pub id: NodeId,
    /// Name, region and the address peers reach this node at.
    pub info: NodeInfo,
    /// The socket to bind (usually the same as `info.addr`).
    pub listen: SocketAddr,
    /// Where the Raft log, state and snapshots live.
    pub data_dir: PathBuf,
    /// This node's certificates.
    pub tls: TlsMaterial,
    /// Timeout profile.
    pub timeouts: Timeouts,
    /// Snapshot and log retention.
    pub tuning: Tuning,
    /// Raft cluster name (appears in logs).
    pub cluster_name: String,
    /// Initialize a new cluster with this node as its only voter, if nothing is on disk.
    pub bootstrap: bool,
    /// Nodes to ask for admission when this node is not yet a member.
    pub join: Vec<NodeInfo>,
    /// Whether to join as a voter (else stay a learner).
    pub voter: bool,
    /// The network fault seam (tests share one across a cluster).
    pub net_faults: NetFaults,
    /// The disk fault seam.
    pub disk_faults: DiskFaults,
}

/// Why one attempt of a routed request did not finish.
pub(crate) enum Attempt {
    /// Leadership is moving or the leader is unreachable: try again.
    Retry(String),
    /// Retrying cannot help.
    Fail(Error),
}

struct Core {
    id: NodeId,
    info: NodeInfo,
    raft: Raft<TypeConfig>,
    view: ReadView,
    log: NodeLog,
    peers: Arc<Peers>,
    timeouts: Timeouts,
    shutdown: watch::Sender<bool>,
    /// What runs on top of this node, for its status.
    services: Mutex<crate::status::Services>,
    /// Answers flow queries for this region, once the member's traffic store
    /// is up (it starts after the node; see [`Node::serve_flow_queries`]).
    flow_queries: Mutex<Option<Arc<dyn FlowQueries>>>,
    /// The policy each VEN connected here enforces, as the member last
    /// published it (a std Mutex: held only to swap or clone the list).
    ven_policies: Mutex<Arc<Vec<VenPolicy>>>,
    /// While a planned transfer moves leadership away from this leader: new
    /// writes wait (until this instant, and only in this term) instead of
    /// growing a log the next leader would then have to catch up on.
    transfer_hold: Mutex<Option<(Instant, u64)>>,
    /// Writes on their way into this leader's log hold it shared; a planned
    /// transfer takes it exclusively to wait them out before it holds new
    /// ones, so no entry is appended after the target has caught up.
    write_gate: tokio::sync::RwLock<()>,
    /// Gathers concurrent writes into shared entries (leader only).
    proposer: crate::proposer::Proposer,
    /// Linearizable reads share one read index per round (`None`: that
    /// round failed, and each of its readers asks on its own for its error).
    read_index: crate::coalesce::Coalescer<Option<u64>>,
    /// Background tasks (server, joiner), awaited on shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The threads all of the above runs on; stopped last.
    runtime: Arc<ConsensusRuntime>,
    /// Event counters for Prometheus.
    instruments: crate::instruments::Instruments,
}

/// What [`crate::start`] builds a node from; the node adds its own bookkeeping.
pub(crate) struct NodeParts {
    pub(crate) id: NodeId,
    pub(crate) info: NodeInfo,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) view: ReadView,
    pub(crate) log: NodeLog,
    pub(crate) peers: Arc<Peers>,
    pub(crate) timeouts: Timeouts,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) runtime: Arc<ConsensusRuntime>,
}

/// A shared read-index round, as [`Node::linearize`] awaits it.
type ReadIndexRound<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<Option<u64>>> + Send + 'a>>;

/// A running node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    core: Arc<Core>,
}

impl Node {
    /// A node over started parts, with no background task yet. Only
    /// [`Node::start`] (in the `start` module) calls it.
    pub(crate) fn assemble(parts: NodeParts) -> Node {
        let NodeParts {
            id,
            info,
            raft,
            view,
            log,
            peers,
            timeouts,
            shutdown,
            runtime,
        } = parts;
        let log_fsync = log.fsync_seconds();
        let proposer = crate::proposer::Proposer::start(raft.clone(), runtime.handle());
        Node {
            core: Arc::new(Core {
                id,
                info,
                raft,
                view,
                log,
                peers,
                timeouts,
                shutdown,
                services: Mutex::new(crate::status::Services::default()),
                flow_queries: Mutex::new(None),
                ven_policies: Mutex::new(Arc::new(Vec::new())),
                transfer_hold: Mutex::new(None),
                write_gate: tokio::sync::RwLock::new(()),
                proposer,
                read_index: crate::coalesce::Coalescer::new(),
                tasks: Mutex::new(Vec::new()),
                runtime,
                instruments: crate::instruments::Instruments::new(log_fsync),
            }),
        }
    }

    /// The node's event counters (see [`crate::instruments`]).
    pub(crate) fn instruments(&self) -> &crate::instruments::Instruments {
        &self.core.instruments
    }

    /// Size of the current snapshot file, if there is one.
    pub(crate) fn snapshot_bytes(&self) -> Option<u64> {
        self.core.view.snapshot_bytes()
    }

    /// Adds a background task, awaited (or aborted) on shutdown.
    pub(crate) fn push_task(&self, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.core.tasks.lock() {
            tasks.push(task);
        }
    }

    /// This node's drill fence (see [`crate::network::fence`]).
    pub fn fence(&self) -> &crate::network::Fence {
        self.core.peers.fence()
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// This node's name, region and address.
    pub fn info(&self) -> &NodeInfo {
        &self.core.info
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.core.timeouts
    }

    /// Change notices from the local replica (one per applied command) that
    /// touch a key under one of `prefixes` (`b""` follows every key), and every
    /// whole-replica replacement (a notice without keys).
    pub fn subscribe(&self, prefixes: &[&[u8]]) -> tokio::sync::broadcast::Receiver<ChangeNotice> {
        self.core.view.subscribe(prefixes)
    }

    /// Writes the whole local replica, at one point of history, to `path` in the
    /// checksummed snapshot format: an operator's backup. Returns its revision.
    pub fn dump(&self, path: &std::path::Path) -> Result<u64, Error> {
        self.core.view.dump(path).map_err(|source| Error::Storage {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A digest of the local replica's whole state, to compare replicas.
    pub fn digest(&self) -> Result<u64, Error> {
        self.core.view.digest().map_err(Error::Read)
    }

    /// Resolves, with the reason, when the Raft core has stopped: openraft hit
    /// a fatal error, the watchdog stopped it after a failed sync of the log,
    /// or the node is shutting down. A node whose core stopped while it was
    /// meant to run can neither replicate nor apply, yet its API and VEN
    /// service would go on serving a frozen replica: its process should exit
    /// and be restarted from its data instead.
    ///
    /// It waits on the server metrics channel, which changes only with the
    /// vote, the role, the leader or the membership, and closes when the core
    /// ends; the full metrics channel, which holds the reason, is sent on
    /// every pass of the core's loop (each batch of entries, each heartbeat),
    /// and a waiter there cost the core a wake-up of another thread each time.
    pub async fn failed(&self) -> String {
        let mut server = self.core.raft.server_metrics();
        loop {
            if let Some(reason) = self.stop_reason() {
                return reason;
            }
            if server.changed().await.is_err() {
                return self
                    .stop_reason()
                    .unwrap_or_else(|| "the Raft core stopped".into());
            }
        }
    }

    /// Why the core has stopped, if it has. The core sends its reason to the
    /// full metrics channel before it ends. A failed sync of the log stops the
    /// core from outside (`watchdog::stop_core_on_log_failure`), and openraft
    /// then reports only that it was stopped, so the log's failure is named.
    fn stop_reason(&self) -> Option<String> {
        let stopped = match &self.core.raft.metrics().borrow().running_state {
            Ok(()) => return None,
            Err(e) => e.to_string(),
        };
        Some(if self.core.log.durable().has_failed() {
            format!("a sync of the Raft log failed ({stopped})")
        } else {
            stopped
        })
    }

    /// Stops the server, the Raft instance and background tasks, and closes storage.
    pub async fn shutdown(&self) {
        let _ = self.core.shutdown.send(true);
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let tasks = match self.core.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for mut task in tasks {
            // Graceful stop waits for open calls; do not let a stuck peer hold us.
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.core.runtime.stop();
        tracing::info!(id = self.core.id, "node stopped");
    }

    /// The leader this node knows of, with its address.
    fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let m = self.core.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    /// Whether this node knows a leader right now, so a write can fail fast
    /// (HTTP 503) instead of waiting out the write timeout during an election.
    pub fn has_leader(&self) -> bool {
        self.leader().is_some()
    }

    /// The leader this node knows of, if any (for probes and status answers).
    pub fn leader_info(&self) -> Option<NodeInfo> {
        self.leader().map(|(_, info)| info)
    }

    /// Why this node cannot serve its region right now, if it cannot: fenced,
    /// no leader known, or out of touch with the cluster for longer than an
    /// election window (a leader without a quorum's acknowledgement, a
    /// follower that has not heard from its leader). What a load balancer's
    /// health probe must see, so it stops sending traffic to a cut-off region.
    pub async fn unable_to_serve(&self) -> Option<String> {
        if let Some(left) = self.fence().serving_blocked() {
            return Some(format!(
                "fenced for a drill for another {} s",
                left.as_secs() + 1
            ));
        }
        let window = self.core.timeouts.election_max;
        let m = self.core.raft.metrics().borrow().clone();
        if m.current_leader.is_none() {
            return Some("no leader known (an election is under way, or quorum is lost)".into());
        }
        if m.current_leader == Some(self.core.id) {
            return match m.millis_since_quorum_ack {
                Some(ms) if ms <= window.as_millis() as u64 => None,
                Some(ms) => Some(format!(
                    "leader without a quorum's acknowledgement for {ms} ms"
                )),
                // A single voter acknowledges itself.
                None if self.members().len() <= 1 => None,
                None => Some("leader without a quorum's acknowledgement yet".into()),
            };
        }
        let heard = self
            .core
            .raft
            .with_raft_state(|st| st.vote_last_modified().map(|t| t.elapsed()))
            .await
            .ok()
            .flatten();
        match heard {
            Some(age) if age <= window => None,
            Some(age) => Some(format!(
                "no word from the leader for {} ms",
                age.as_millis()
            )),
            None => Some("no word from the leader since this node started".into()),
        }
    }

    /// Whether this node is the leader right now (by its own view).
    pub fn is_leader(&self) -> bool {
        self.leader().map(|(id, _)| id) == Some(self.core.id)
    }

    /// Commits `cmd` through the leader, wherever it is, and returns the answer
    /// every replica computed. Fails with [`Error::NoLeader`] when no leader can be
    /// reached within the write timeout.
    pub async fn write(&self, cmd: Command) -> Result<CommandResponse, Error> {
        cmd.validate()?;
        let payload = codec::encode(&cmd)?;
        self.route(|node, leader| {
            let cmd = cmd.clone();
            let payload = payload.clone();
            async move {
                match leader {
                    None => node.write_here(cmd).await,
                    Some((id, info)) => node.forward_write(id, &info, payload).await,
                }
            }
        })
        .await
    }

    /// Runs `attempt` against the current leader until it succeeds, fails for
    /// good, or the write timeout passes. `attempt` gets `None` when this node is
    /// the leader, else the leader to forward to.
    async fn route<T, F, Fut>(&self, attempt: F) -> Result<T, Error>
    where
        F: Fn(Node, Option<(NodeId, NodeInfo)>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Attempt>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut last;
        loop {
            let leader = self.leader();
            let tried = leader.as_ref().map(|(id, _)| *id);
            let outcome = match leader {
                Some((id, _)) if id == self.core.id => attempt(self.clone(), None).await,
                Some(leader) => attempt(self.clone(), Some(leader)).await,
                None => Err(Attempt::Retry("no leader elected yet".into())),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(why)) => last = why,
            }
            if started.elapsed() >= self.core.timeouts.write {
                return Err(Error::NoLeader {
                    waited: started.elapsed(),
                    last,
                });
            }
            if *self.core.shutdown.borrow() {
                return Err(Error::Stopped("node is shutting down".into()));
            }
            // Retry as soon as a different leader is known (a failover ends
            // with an election, not at the next backoff step), else after the
            // pause.
            let mut metrics = self.core.raft.metrics();
            let changed = async {
                // Only whether it happened: the guard must not live across an await.
                metrics
                    .wait_for(|m| m.current_leader.is_some() && m.current_leader != tried)
                    .await
                    .is_ok()
            };
            if let Ok(false) = tokio::time::timeout(pause, changed).await {
                // The core has stopped: the next attempt reports it.
                tokio::time::sleep(pause).await;
            }
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Proposes `cmd` on this node, which must be the leader.
    pub(crate) async fn write_here(&self, cmd: Command) -> Result<CommandResponse, Attempt> {
        let _entering = loop {
            let permit = self.core.write_gate.read().await;
            if !self.transfer_held() {
                break permit;
            }
            drop(permit);
            // Leadership is moving on purpose: wait, then let the route send
            // the write to the new leader.
            while self.transfer_held() && self.is_leader() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if !self.is_leader() {
                return Err(Attempt::Retry(
                    "leadership is moving (planned transfer)".into(),
                ));
            }
        };
        let wait = self.core.timeouts.write;
        let Ok(result) = tokio::time::timeout(wait, self.core.proposer.propose(cmd)).await else {
            // A leader cut off from its quorum cannot commit; the entry may still be
            // committed later by this leader, so the outcome is unknown.
            return Err(Attempt::Fail(Error::NoLeader {
                waited: wait,
                last: "not committed in time (outcome unknown: retry with the same client id and serial)".into(),
            }));
        };
        use crate::proposer::ProposeError;
        match result {
            Ok(r) => Ok(r),
            Err(ProposeError::NotLeader(leader)) => {
                Err(Attempt::Retry(format!("leadership moved to {leader:?}")))
            }
            Err(ProposeError::Membership(e)) => Err(Attempt::Fail(Error::Membership(e))),
            Err(ProposeError::Stopped(e)) => Err(Attempt::Fail(Error::Stopped(e))),
        }
    }

    async fn forward_write(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        command: Vec<u8>,
    ) -> Result<CommandResponse, Attempt> {
        let mut client = self
            .core
            .peers
            .federation_client(leader, info)
            .await
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        let call = client.write(WriteRequest {
            command,
            route_to_leader: false,
        });
        let reply = match tokio::time::timeout(self.core.timeouts.write, call).await {
            Err(_) => {
                return Err(Attempt::Retry(format!(
                    "leader {info} did not answer in time"
                )))
            }
            Ok(Err(status)) => return Err(retry_or_fail(info, status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        codec::decode(&reply.response).map_err(|e| {
            Attempt::Fail(Error::Remote {
                peer: info.to_string(),
                message: e.to_string(),
            })
        })
    }

    /// The leader side of ReadIndex: confirms leadership with a quorum and returns
    /// the index a linearizable read must wait for.
    pub(crate) async fn read_index_here(&self) -> Result<u64, Attempt> {
        self.core.instruments.read_index_by_heartbeats.inc();
        match self.core.raft.ensure_linearizable().await {
            Ok(read_log_id) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Attempt::Retry("leadership moved".into()))
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(Attempt::Retry(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(Attempt::Fail(Error::Stopped(f.to_string()))),
        }
    }

    /// The leader side of a follower's ReadIndex: `asker` (the name in its
    /// certificate) may confirm this leadership itself (see
    /// [`crate::read_index`]); else a heartbeat round does.
    pub(crate) async fn read_index_for(
        &self,
        asker: Option<String>,
        claim: Option<crate::read_index::Claim>,
    ) -> Result<u64, Attempt> {
        if let (Some(asker), Some(claim)) = (asker, claim) {
            let me = self.core.id;
            let confirmed = self
                .core
                .raft
                .with_raft_state(move |st| crate::read_index::confirmed_by(st, me, &asker, claim))
                .await
                .map_err(|f| Attempt::Fail(Error::Stopped(f.to_string())))?;
            if let Some(index) = confirmed {
                self.core.instruments.read_index_by_asker.inc();
                return Ok(index);
            }
        }
        self.read_index_here().await
    }

    /// Blocks until this replica reflects every write acknowledged before the call.
    ///
    /// Concurrent readers share one read index (see [`crate::coalesce`]): a
    /// round that started after this call serves it.
    pub async fn linearize(&self) -> Result<(), Error> {
        let node = self.clone();
        // Boxed: the read path nests inside callers' futures (a benchmark's
        // whole run is one), and an unboxed chain this deep overflows the
        // compiler's layout query depth in a clean build.
        let shared: ReadIndexRound<'_> = Box::pin(self.core.read_index.join(move || {
            let node = node.clone();
            async move { node.read_index().await.ok() }
        }));
        let index = match shared.await.flatten() {
            Some(index) => index,
            // The shared round failed: ask alone, for this caller's own error
            // (or a success, if leadership settled meanwhile).
            None => Box::pin(self.read_index()).await?,
        };
        let limit = self.core.timeouts.write;
        if !self.core.view.applied_index(index, limit).await {
            return Err(Error::NoLeader {
                waited: limit,
                last: format!("this replica has not applied the read index {index}"),
            });
        }
        Ok(())
    }

    /// A read index obtained after this call: from this node's Raft if it
    /// leads, else from the leader over the federation service.
    async fn read_index(&self) -> Result<u64, Error> {
        self.route(|node, leader| async move {
            match leader {
                None => node.read_index_here().await,
                Some((id, info)) => {
                    // Read after the read was invoked (this round began after
                    // its caller joined): the vote the leader may count.
                    let claim = node
                        .core
                        .raft
                        .with_raft_state(crate::read_index::Claim::of)
                        .await
                        .map_err(|f| Attempt::Fail(Error::Stopped(f.to_string())))?;
                    let mut client = node
                        .core
                        .peers
                        .federation_client(id, &info)
                        .await
                        .map_err(|e| Attempt::Retry(e.to_string()))?;
                    let request = ReadIndexRequest {
                        follows_term: claim.map_or(0, |c| c.term),
                        follows_leader: claim.map_or(0, |c| c.leader),
                    };
                    match tokio::time::timeout(node.core.timeouts.write, client.read_index(request))
                        .await
                    {
                        Err(_) => Err(Attempt::Retry(format!(
                            "leader {info} did not answer in time"
                        ))),
                        Ok(Err(status)) => Err(retry_or_fail(&info, status)),
                        Ok(Ok(r)) => Ok(r.into_inner().read_index),
                    }
                }
            }
        })
        .await
    }

    /// Reads one key.
    pub async fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<ReadResult<Option<KvEntry>>, Error> {
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        self.core.view.get(key).map_err(Error::Read)
    }

    /// Waits until this replica has applied store revision `revision`, at
    /// most `limit`; whether it did. For read-your-writes through one node:
    /// a write answered with revision N is readable here once this is true.
    pub async fn applied(&self, revision: u64, limit: Duration) -> bool {
        self.core.view.applied(revision, limit).await
    }

    /// Reads up to `limit` keys under `prefix`, in key order.
    pub async fn scan(
        &self,
        prefix: &[u8],
        limit: usize,
        consistency: Consistency,
    ) -> Result<ReadResult<KvList>, Error> {
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        self.core.view.scan(prefix, limit).map_err(Error::Read)
    }

    /// Reads up to `limit` keys under `prefix`, last key first (local replica).
    pub fn scan_newest(&self, prefix: &[u8], limit: usize) -> Result<ReadResult<KvList>, Error> {
        self.core
            .view
            .scan_newest(prefix, limit)
            .map_err(Error::Read)
    }

    /// Changes membership through the leader (forwarded if needed).
    pub async fn change_membership(
        &self,
        op: MembershipOp,
        id: NodeId,
        info: Option<NodeInfo>,
    ) -> Result<MembershipView, Error> {
        if op == MembershipOp::AddLearner && info.is_none() {
            return Err(Error::Membership(
                "adding a learner needs its name, region and address".into(),
            ));
        }
        self.route(|node, leader| {
            let info = info.clone();
            async move {
                match leader {
                    None => node.change_membership_here(op, id, info).await,
                    Some((lid, linfo)) => node.forward_membership(lid, &linfo, op, id, info).await,
                }
            }
        })
        .await
    }

    pub(crate) async fn change_membership_here(
        &self,
        op: MembershipOp,
        id: NodeId,
        info: Option<NodeInfo>,
    ) -> Result<MembershipView, Attempt> {
        let raft = &self.core.raft;
        let ids = BTreeSet::from([id]);
        let is_voter = {
            let m = raft.metrics();
            let m = m.borrow();
            m.membership_config
                .membership()
                .voter_ids()
                .any(|v| v == id)
        };
        if let Some(info) = &info {
            // Callers are told apart by the name in their certificate (the
            // federation service, decision 0026's read index): two members of
            // one name would be one caller.
            let m = raft.metrics();
            let taken = m
                .borrow()
                .membership_config
                .membership()
                .nodes()
                .any(|(other, n)| *other != id && n.name == info.name);
            if taken {
                return Err(Attempt::Fail(Error::Membership(format!(
                    "another member is already named {:?}: remove it first, or give node {id} a name of its own",
                    info.name
                ))));
            }
        }
        let result = match (op, info) {
            (MembershipOp::AddLearner, Some(info)) => raft.add_learner(id, info, true).await,
            (MembershipOp::AddLearner, None) => {
                return Err(Attempt::Fail(Error::Membership("missing node info".into())))
            }
            (MembershipOp::Promote, _) => {
                raft.change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
            }
            (MembershipOp::Demote, _) => {
                raft.change_membership(ChangeMembers::RemoveVoters(ids), true)
                    .await
            }
            (MembershipOp::Remove, _) if is_voter => {
                raft.change_membership(ChangeMembers::RemoveVoters(ids), false)
                    .await
            }
            (MembershipOp::Remove, _) => {
                raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await
            }
        };
        match result {
            Ok(r) => {
                let m = r.membership.clone();
                Ok(match m {
                    Some(m) => MembershipView {
                        voters: m.voter_ids().collect(),
                        learners: m.learner_ids().collect(),
                    },
                    None => self.membership_view(),
                })
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(Attempt::Retry("leadership moved".into()))
            }
            // A previous change is still being committed: wait for it, then retry.
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(e),
            ))) => Err(Attempt::Retry(e.to_string())),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Attempt::Fail(Error::Membership(e.to_string())))
            }
            Err(RaftError::Fatal(f)) => Err(Attempt::Fail(Error::Stopped(f.to_string()))),
        }
    }

    async fn forward_membership(
        &self,
        leader: NodeId,
        linfo: &NodeInfo,
        op: MembershipOp,
        id: NodeId,
        info: Option<NodeInfo>,
    ) -> Result<MembershipView, Attempt> {
        let mut client = self
            .core
            .peers
            .federation_client(leader, linfo)
            .await
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        let req = membership_request(op, id, info.as_ref());
        match tokio::time::timeout(self.core.timeouts.snapshot, client.change_membership(req)).await
        {
            Err(_) => Err(Attempt::Retry(format!(
                "leader {linfo} did not answer in time"
            ))),
            Ok(Err(status)) => Err(retry_or_fail(linfo, status)),
            Ok(Ok(r)) => Ok(membership_view(r.into_inner())),
        }
    }

    /// Asks the node at `info` for its status over the federation service,
    /// as a peer would, within `timeout`: before a node is admitted, whether
    /// it is there, speaks TLS with this cluster's CA, and is who it says.
    pub async fn probe(
        &self,
        id: NodeId,
        info: &NodeInfo,
        timeout: Duration,
    ) -> Result<NodeStatus, String> {
        let mut c = self
            .core
            .peers
            .federation_client(id, info)
            .await
            .map_err(|e| e.to_string())?;
        let r = tokio::time::timeout(timeout, c.status(sc_proto::federation::StatusRequest {}))
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
            .map_err(|s| s.message().to_string())?;
        Ok(status_from_proto(r.into_inner()))
    }

    /// Refuses a caller whose certificate names no member (see
    /// [`crate::network::callers`]); reads the membership in place, with no
    /// copy, as it runs on every forwarded write and read.
    pub fn require_member<T>(
        &self,
        req: &tonic::Request<T>,
        what: &str,
    ) -> Result<(), tonic::Status> {
        let m = self.core.raft.metrics();
        let m = m.borrow();
        let nodes = m.membership_config.membership().nodes().map(|(_, n)| n);
        crate::network::callers::require_member(req, nodes, what)
    }

    /// Every member's id and name, region and address, as this node's
    /// membership records them (answering or not).
    pub fn member_infos(&self) -> Vec<(NodeId, NodeInfo)> {
        self.members()
    }

    /// The membership as this node knows it.
    pub fn membership_view(&self) -> MembershipView {
        let m = self.core.raft.metrics();
        let m = m.borrow();
        let mem = m.membership_config.membership();
        MembershipView {
            voters: mem.voter_ids().collect(),
            learners: mem.learner_ids().collect(),
        }
    }

    /// Keeps asking `seeds` to admit this node until it is a member in the wanted role.
    pub(crate) async fn join_cluster(&self, seeds: Vec<NodeInfo>, voter: bool) {
        let mut pause = Duration::from_millis(200);
        loop {
            let view = self.membership_view();
            let id = self.core.id;
            let member = view.voters.contains(&id) || view.learners.contains(&id);
            if member && (view.voters.contains(&id) || !voter) {
                tracing::info!(
                    id,
                    voter = view.voters.contains(&id),
                    "member of the cluster"
                );
                return;
            }
            let op = if member {
                MembershipOp::Promote
            } else {
                MembershipOp::AddLearner
            };
            for seed in &seeds {
                match self.ask_seed(seed, op).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::info!(seed = %seed, error = %e, "join attempt failed; will retry")
                    }
                }
            }
            // Our own metrics learn of the change when the leader replicates it.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn ask_seed(&self, seed: &NodeInfo, op: MembershipOp) -> Result<(), String> {
        // Seeds are not members of our (empty) membership yet: use a one-off channel.
        let channel =
            crate::network::peers::connect_lazy(&self.core.peers_tls(), seed, &self.core.timeouts)
                .map_err(|e| e.to_string())?;
        let mut client = sc_proto::federation::federation_client::FederationClient::new(
            sc_proto::version::stamped(channel),
        );
        let req = membership_request(op, self.core.id, Some(&self.core.info));
        match tokio::time::timeout(self.core.timeouts.snapshot, client.change_membership(req)).await
        {
            Err(_) => Err("timed out".into()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// This node's status.
    pub fn status(&self) -> NodeStatus {
        let m = self.core.raft.metrics();
        let m = m.borrow().clone();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let last = m.last_log_index;
        let peers = mem
            .nodes()
            .map(|(id, info)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .and_then(|l| l.map(|l| l.index));
                PeerStatus {
                    id: *id,
                    name: info.name.clone(),
                    region: info.region.clone(),
                    addr: info.addr.clone(),
                    voter: voters.contains(id),
                    matched,
                    lag: matched.map(|x| last.unwrap_or(0).saturating_sub(x)),
                }
            })
            .collect();
        NodeStatus {
            id: self.core.id,
            name: self.core.info.name.clone(),
            region: self.core.info.region.clone(),
            addr: self.core.info.addr.clone(),
            role: role.to_string(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: last,
            last_applied: m.last_applied.map(|l| l.index),
            committed: self.core.log.committed_index(),
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            revision: self.core.view.revision().unwrap_or(0),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            peers,
            fenced_for_ms: self.fence().remaining().map(|d| d.as_millis() as u64),
            membership_changing: !membership_settled(&m),
            services: self
                .core
                .services
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
        }
    }

    /// Registers what answers flow queries sent to this node (the member's
    /// traffic store): the federation service hands them over as they come.
    pub fn serve_flow_queries(&self, handler: Arc<dyn FlowQueries>) {
        if let Ok(mut h) = self.core.flow_queries.lock() {
            *h = Some(handler);
        }
    }

    /// This node's own answer to a flow query.
    pub async fn local_flows(&self, q: FlowQuery) -> Result<FlowQueryReply, String> {
        let handler = self.core.flow_queries.lock().ok().and_then(|h| h.clone());
        match handler {
            Some(h) => h.query(q).await,
            None => Err(format!("{} keeps no traffic store", self.core.info.name)),
        }
    }

    /// Asks every node of the cluster (this one directly) for its flows that
    /// match `q`; a node that does not answer within `timeout` is listed with
    /// why, never left out.
    pub async fn fan_out_flows(
        &self,
        q: &FlowQuery,
        timeout: Duration,
    ) -> Vec<(NodeInfo, Result<FlowQueryReply, String>)> {
        self.fan_out(
            timeout,
            || self.local_flows(q.clone()),
            |mut c| async move { c.query_flows(q.clone()).await },
        )
        .await
    }

    /// Publishes the policy each VEN connected here enforces (the member does,
    /// every few seconds), for [`Node::fan_out_ven_policies`].
    pub fn set_ven_policies(&self, vens: Vec<VenPolicy>) {
        if let Ok(mut v) = self.core.ven_policies.lock() {
            *v = Arc::new(vens);
        }
    }

    /// What [`Node::set_ven_policies`] last published here.
    pub fn ven_policies(&self) -> Vec<VenPolicy> {
        self.core
            .ven_policies
            .lock()
            .map(|v| v.as_ref().clone())
            .unwrap_or_default()
    }

    /// Asks every node for the policy its connected VENs enforce; a node that
    /// does not answer within `timeout` is listed with why.
    pub async fn fan_out_ven_policies(
        &self,
        timeout: Duration,
    ) -> Vec<(NodeInfo, Result<Vec<VenPolicy>, String>)> {
        self.fan_out(
            timeout,
            || async { Ok(self.ven_policies()) },
            |mut c| async move {
                c.ven_policies(VenPoliciesRequest {})
                    .await
                    .map(|r| tonic::Response::new(r.into_inner().vens))
            },
        )
        .await
    }

    /// One question to every node of the cluster: this one answers through
    /// `local`, the others through `remote` on their federation service.
    async fn fan_out<T, L, LF, R, RF>(
        &self,
        timeout: Duration,
        local: L,
        remote: R,
    ) -> Vec<(NodeInfo, Result<T, String>)>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T, String>>,
        R: Fn(FederationClient<sc_proto::version::Stamped>) -> RF,
        RF: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let members = self.members();
        let asks = members.into_iter().map(|(id, info)| {
            let (local, remote) = (&local, &remote);
            async move {
                let r = if id == self.core.id {
                    local().await
                } else {
                    async {
                        let c = self
                            .core
                            .peers
                            .federation_client(id, &info)
                            .await
                            .map_err(|e| e.to_string())?;
                        let reply = tokio::time::timeout(timeout, remote(c))
                            .await
                            .map_err(|_| "timed out".to_string())?
                            .map_err(|s| s.message().to_string())?;
                        Ok(reply.into_inner())
                    }
                    .await
                };
                (info, r)
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// Updates what this node reports about the services on top of it.
    pub fn set_services(&self, f: impl FnOnce(&mut crate::status::Services)) {
        if let Ok(mut s) = self.core.services.lock() {
            f(&mut s);
        }
    }

    /// Whether writes are held for a planned transfer (in this term).
    fn transfer_held(&self) -> bool {
        let term = self.core.raft.metrics().borrow().current_term;
        self.core
            .transfer_hold
            .lock()
            .map(|h| h.is_some_and(|(until, t)| t == term && Instant::now() < until))
            .unwrap_or(false)
    }

    /// The leader's side of a planned transfer to `to`: holds new writes for
    /// at most `hold` and answers once `to` has every entry of the log (the
    /// last log index), so its campaign cannot lose for a shorter log. The
    /// hold ends with the term (the transfer happened) or at its deadline.
    pub async fn prepare_transfer(&self, to: NodeId, hold: Duration) -> Result<u64, Error> {
        let term = {
            let m = self.core.raft.metrics().borrow().clone();
            if m.current_leader != Some(self.core.id) {
                return Err(Error::NoLeader {
                    waited: Duration::ZERO,
                    last: format!("node {} does not lead", self.core.id),
                });
            }
            m.current_term
        };
        let until = Instant::now() + hold;
        {
            // Every write already on its way in finishes first; the ones
            // after it wait (see write_here).
            let _all = self.core.write_gate.write().await;
            if let Ok(mut h) = self.core.transfer_hold.lock() {
                *h = Some((until, term));
            }
        }
        self.core.peers.transfer().begin(to, until);
        loop {
            let (last, matched) = {
                let m = self.core.raft.metrics().borrow().clone();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&to).copied().flatten())
                    .map(|l| l.index);
                (m.last_log_index, matched)
            };
            if last.is_some() && matched >= last {
                return Ok(last.unwrap_or(0));
            }
            if Instant::now() >= until {
                if let Ok(mut h) = self.core.transfer_hold.lock() {
                    *h = None;
                }
                self.core.peers.transfer().end();
                return Err(Error::NoLeader {
                    waited: hold,
                    last: format!("node {to} did not catch up with the log in time"),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Ends this node's part in a planned transfer (it leads now, or gave up).
    pub fn end_transfer(&self) {
        self.core.peers.transfer().end();
    }

    /// The new leader's side: asks the current leader to prepare a transfer
    /// to this node (see [`Node::prepare_transfer`]).
    pub async fn ask_leader_to_prepare_transfer(&self, hold: Duration) -> Result<u64, Error> {
        let Some((id, info)) = self.leader() else {
            return Err(Error::NoLeader {
                waited: Duration::ZERO,
                last: "no leader known to transfer from".into(),
            });
        };
        if id == self.core.id {
            return self.prepare_transfer(id, hold).await;
        }
        self.core
            .peers
            .transfer()
            .begin(self.core.id, Instant::now() + hold);
        let mut c = self
            .core
            .peers
            .federation_client(id, &info)
            .await
            .map_err(|e| Error::Remote {
                peer: info.to_string(),
                message: e.to_string(),
            })?;
        let req = sc_proto::federation::PrepareTransferRequest {
            to: self.core.id,
            hold_ms: hold.as_millis() as u64,
        };
        let r = tokio::time::timeout(hold + self.core.timeouts.rpc, c.prepare_transfer(req))
            .await
            .map_err(|_| Error::Remote {
                peer: info.to_string(),
                message: "no answer in time".into(),
            })?
            .map_err(|s| Error::Remote {
                peer: info.to_string(),
                message: s.message().to_string(),
            })?;
        Ok(r.into_inner().last_log_index)
    }

    /// Campaigns for leadership now (a planned leader transfer: openraft 0.9 has
    /// no transfer, so the target starts an election at a higher term; it wins if
    /// its log is as complete as the others', which the caller checks first).
    pub async fn campaign(&self) -> Result<(), Error> {
        self.core
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Polls this node's status until `pred` holds or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&NodeStatus) -> bool,
    ) -> Result<NodeStatus, Error> {
        let started = Instant::now();
        loop {
            let s = self.status();
            if pred(&s) {
                return Ok(s);
            }
            if started.elapsed() > timeout {
                return Err(Error::NoLeader {
                    waited: timeout,
                    last: format!(
                        "node {} never reached: {what}; last status {s:?}",
                        self.core.id
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Builds a snapshot now (normally automatic after `snapshot_every` entries).
    pub async fn trigger_snapshot(&self) -> Result<(), Error> {
        self.core
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Every node of the current membership (voters and learners).
    fn members(&self) -> Vec<(NodeId, NodeInfo)> {
        let m = self.core.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// Status of every member, asked over the federation channel (this node's
    /// own entry is local). A member that cannot be reached is reported as an error.
    /// The members are asked all at once: one after the other, every member
    /// that is down added its RPC timeout, and with two regions lost an
    /// operator's status took longer than the operator's client waits.
    pub async fn cluster_status(&self) -> Vec<(NodeId, Result<NodeStatus, String>)> {
        let asks = self.members().into_iter().map(|(id, info)| async move {
            if id == self.core.id {
                return (id, Ok(self.status()));
            }
            let r = async {
                let mut c = self
                    .core
                    .peers
                    .federation_client(id, &info)
                    .await
                    .map_err(|e| e.to_string())?;
                let reply = tokio::time::timeout(
                    self.core.timeouts.rpc,
                    c.status(sc_proto::federation::StatusRequest {}),
                )
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|s| s.message().to_string())?;
                Ok(status_from_proto(reply.into_inner()))
            }
            .await;
            (id, r)
        });
        // In membership order, as before.
        futures_util::future::join_all(asks).await
    }
}

impl Core {
    fn peers_tls(&self) -> TlsMaterial {
        self.peers.tls().clone()
    }
}

/// Classifies a federation error: leadership moved or the peer is down → retry;
/// a refusal on the merits → fail.
fn retry_or_fail(peer: &NodeInfo, status: tonic::Status) -> Attempt {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Aborted
        | tonic::Code::Unknown => Attempt::Retry(format!("{peer}: {}", status.message())),
        _ if is_not_leader(&status) => Attempt::Retry(format!("{peer}: {}", status.message())),
        tonic::Code::FailedPrecondition => {
            Attempt::Fail(Error::Membership(status.message().to_string()))
        }
        _ => Attempt::Fail(Error::Remote {
            peer: peer.to_string(),
            message: status.message().to_string(),
        }),
    }
}

/// Whether the membership this node sees is settled: one configuration (no
/// joint change in progress), and one this node has applied (so it is
/// committed). While a joint configuration is in effect an election needs a
/// majority of the old voters too, so losing a region then can leave the
/// others unable to elect until it returns: `NodeStatus::membership_changing`
/// is its negation, and whoever is about to fault a region waits on it.
fn membership_settled(m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> bool {
    let joint = m.membership_config.membership().get_joint_config().len() > 1;
    let applied = match (m.membership_config.log_id(), &m.last_applied) {
        (None, _) => true,
        (Some(at), Some(applied)) => at.index <= applied.index,
        (Some(_), None) => false,
    };
    !joint && applied
}

/// What answers this region's part of a global flow query (the member's
/// traffic store); the node only carries queries to it.
#[tonic::async_trait]
pub trait FlowQueries: Send + Sync {
    /// The matching flows this region holds.
    async fn query(&self, q: FlowQuery) -> Result<FlowQueryReply, String>;
}
