//! The receiving side of the Raft RPCs: decodes a peer's request, hands it to the
//! local openraft instance, encodes its `Result` back.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::raft::VoteRequest;
use openraft::{Raft, ServerState, Snapshot, SnapshotMeta, Vote};
use sc_proto::raft::raft_service_server::RaftService;
use sc_proto::raft::{snapshot_chunk, RaftPayload, SnapshotChunk};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
use crate::network::Peers;
use crate::storage::{NodeLog, SnapshotFile};
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// The Raft gRPC service of one node.
pub struct RaftGrpc {
    raft: Raft<TypeConfig>,
    /// While it stands, every request is refused (the node is dark to peers).
    fence: crate::network::Fence,
    /// Where incoming snapshots are written while they stream in.
    incoming_dir: PathBuf,
    /// A follower that heard its leader more recently than this refuses a
    /// pre-vote (the shortest election timeout).
    election_min: std::time::Duration,
    /// This node's log, for the pre-vote's comparison.
    log: NodeLog,
    /// The node's peers: a planned transfer (only its target gets this
    /// node's pre-vote), which connections carry the leader's traffic, and
    /// probes of a leader's address.
    peers: Arc<Peers>,
}

impl RaftGrpc {
    /// Serves `raft`, receiving snapshots into `incoming_dir`.
    pub fn new(
        raft: Raft<TypeConfig>,
        incoming_dir: PathBuf,
        fence: crate::network::Fence,
        election_min: std::time::Duration,
        log: NodeLog,
        peers: Arc<Peers>,
    ) -> Self {
        RaftGrpc {
            raft,
            fence,
            incoming_dir,
            election_min,
            log,
            peers,
        }
    }
}

impl RaftGrpc {
    /// Refuses a caller that is not a member (see [`crate::network::callers`]).
    fn member_only<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let nodes = m.membership_config.membership().nodes().map(|(_, n)| n);
        crate::network::callers::require_member(req, nodes, what)
    }

    /// Where member `id` listens, as the membership says.
    fn address_of(&self, id: NodeId) -> Option<String> {
        address_in(&self.raft, id)
    }

    /// The AppendEntries side of the service.
    fn appender(&self) -> Appender {
        Appender {
            raft: self.raft.clone(),
            fence: self.fence.clone(),
            peers: self.peers.clone(),
        }
    }

    /// Whether this node has its own evidence that `leader`'s process is
    /// gone: it saw the process's connection close and its address refuse
    /// (after `renewed`, the leader's last word), or its address refuses now.
    async fn leader_gone(&self, leader: NodeId, renewed: Option<Instant>) -> bool {
        let since = renewed.unwrap_or_else(Instant::now);
        if self.peers.liveness().gone_since(leader, since).is_some() {
            return true;
        }
        let Some(addr) = self.address_of(leader) else {
            return false;
        };
        let gone = self.peers.process_gone(leader, &addr).await;
        if gone {
            self.peers.liveness().mark_gone(leader);
        }
        gone
    }
}

/// A payload this release cannot read: a newer format is a version mismatch
/// the sender must be told of by name (FAILED_PRECONDITION: upgrade this
/// node first), anything else is a bad message.
fn bad_payload(e: crate::codec::CodecError) -> Status {
    use crate::codec::CodecError;
    let newer = |found: u8, reads: u8| {
        if found > reads {
            "upgrade this node to the sender's release (members first, docs/runbook.md)"
        } else {
            "the sender runs a release older than this node reads: upgrade the sender"
        }
    };
    match e {
        // No release wrote format 0: not a version, garbage.
        CodecError::Version { found: 0 } | CodecError::EntryVersion { found: 0 } => {
            Status::invalid_argument(format!("undecodable Raft payload: {e}"))
        }
        CodecError::Version { found } => Status::failed_precondition(format!(
            "this node cannot read the Raft payload ({e}): {}",
            newer(found, crate::codec::FORMAT_VERSION)
        )),
        CodecError::EntryVersion { found } => Status::failed_precondition(format!(
            "this node cannot read the Raft payload ({e}): {}",
            newer(found, crate::codec::ENTRY_FORMAT_VERSION)
        )),
        e => Status::invalid_argument(format!("undecodable Raft payload: {e}")),
    }
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = codec::encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

/// What the pre-vote server reads off the Raft core.
struct Seen {
    leading: bool,
    /// It heard its leader within the shortest election timeout.
    heard: bool,
    /// Whom it follows.
    leader: Option<NodeId>,
    /// openraft's vote lease ([`crate::config::Timeouts::lease`]) has run out.
    lease_over: bool,
    /// The leader's last word.
    renewed: Option<Instant>,
}

/// Removes a half-received snapshot file if it is still there.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where member `id` listens, as `raft`'s membership says.
fn address_in(raft: &Raft<TypeConfig>, id: NodeId) -> Option<String> {
    let m = raft.metrics();
    let m = m.borrow();
    m.membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone())
}

/// What answering AppendEntries needs, apart from the rest of the service, so
/// that a stream's answers can be produced after its handler has returned.
#[derive(Clone)]
struct Appender {
    raft: Raft<TypeConfig>,
    fence: crate::network::Fence,
    peers: Arc<Peers>,
}

impl Appender {
    /// Answers one encoded AppendEntries from `conn`, sent by the node whose
    /// certificate names `caller`.
    async fn append(
        &self,
        caller: Option<&str>,
        conn: Option<SocketAddr>,
        payload: RaftPayload,
    ) -> Result<RaftPayload, Status> {
        self.fence.check()?;
        {
            let m = self.raft.metrics();
            let m = m.borrow();
            let nodes = m.membership_config.membership().nodes().map(|(_, n)| n);
            crate::network::callers::require_named_member(caller, nodes, "AppendEntries")?;
        }
        let req = crate::entry_format::decode_append(&payload.data).map_err(bad_payload)?;
        self.note_leader_connection(conn, &req.vote);
        let data = codec::encode(&self.raft.append_entries(req).await)
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(RaftPayload { data })
    }

    /// Notes which connection the leader's AppendEntries come over, so that
    /// its close can be told apart from any other (see
    /// [`crate::network::liveness`]). One map lookup per request once known.
    fn note_leader_connection(&self, conn: Option<SocketAddr>, vote: &Vote<NodeId>) {
        let (Some(conn), Some(leader)) = (conn, vote.leader_id().voted_for()) else {
            return;
        };
        if !vote.is_committed() || self.peers.liveness().knows(conn, leader) {
            return;
        }
        if let Some(addr) = address_in(&self.raft, leader) {
            self.peers.liveness().heard_over(conn, leader, addr);
        }
    }
}

/// The answers of one append stream, in the order of its requests; it ends
/// with the first request that fails (the sender opens a new stream).
type AnswerStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<RaftPayload, Status>> + Send>>;

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let caller = crate::network::callers::caller_name(&request);
        let conn = request.remote_addr();
        let answer = self
            .appender()
            .append(caller.as_deref(), conn, request.into_inner())
            .await?;
        Ok(Response::new(answer))
    }

    type AppendStreamStream = AnswerStream;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AnswerStream>, Status> {
        self.fence.check()?;
        self.member_only(&request, "AppendEntries")?;
        let caller = crate::network::callers::caller_name(&request);
        let conn = request.remote_addr();
        let requests = request.into_inner();
        let appender = self.appender();
        // Each request is answered before the next is read: openraft sends
        // one at a time, and the answers must come back in order.
        let answers = futures_util::stream::unfold(
            Some((requests, appender, caller)),
            move |state| async move {
                let (mut requests, appender, caller) = state?;
                let answer = match requests.message().await {
                    Ok(Some(payload)) => appender.append(caller.as_deref(), conn, payload).await,
                    Ok(None) => return None,
                    Err(status) => Err(status),
                };
                // After a failure the stream ends: nothing more is read.
                let next = answer.is_ok().then_some((requests, appender, caller));
                Some((answer, next))
            },
        );
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.fence.check()?;
        self.member_only(&request, "Vote")?;
        let req: VoteRequest<NodeId> =
            codec::decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.vote(req).await)
    }

    async fn pre_vote(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.fence.check()?;
        self.member_only(&request, "PreVote")?;
        let req: crate::election::PreVoteRequest =
            codec::decode(&request.into_inner().data).map_err(bad_payload)?;
        let min = self.election_min;
        let lease = self.peers.timeouts().lease();
        if self
            .peers
            .transfer()
            .target()
            .is_some_and(|to| to != req.candidate)
        {
            // Leadership is being handed to another node on purpose.
            return reply(&crate::election::PreVoteResponse { granted: false });
        }
        let ours = self
            .log
            .last_log_id()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let seen = self
            .raft
            .with_raft_state(move |st| {
                let following = st.vote_ref().is_committed();
                let renewed = st.vote_last_modified();
                let silent = renewed.map(|t| t.elapsed());
                Seen {
                    leading: st.server_state == ServerState::Leader,
                    heard: following && silent.is_some_and(|e| e < min),
                    leader: following
                        .then(|| st.vote_ref().leader_id().voted_for())
                        .flatten(),
                    lease_over: silent.is_none_or(|e| e > lease),
                    renewed,
                }
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        // A leader is alive; a candidate whose log is behind ours could not
        // win our real vote.
        let mut granted = !seen.leading && req.last_log_id >= ours;
        if granted && seen.heard {
            // A follower that heard its leader within the shortest election
            // timeout believes it is alive, unless the asker says the
            // leader's process is gone and this node sees so too: openraft's
            // lease has run out here (the real vote would be refused
            // before), and the leader's address refuses connections.
            granted = match (req.leader_gone, seen.leader) {
                (Some(gone), Some(leader)) if gone == leader && seen.lease_over => {
                    self.leader_gone(leader, seen.renewed).await
                }
                _ => false,
            };
            if granted {
                // This node's own timer holds back while the asker campaigns.
                self.peers.liveness().granted_early(req.candidate);
            }
        }
        reply(&crate::election::PreVoteResponse { granted })
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.fence.check()?;
        self.member_only(&request, "InstallSnapshot")?;
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
            Some(SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a snapshot stream must start with its header",
                ))
            }
        };
        let (vote, meta): (Vote<NodeId>, SnapshotMeta<NodeId, NodeInfo>) =
            codec::decode(&header).map_err(bad_payload)?;

        let path = self
            .incoming_dir
            .join(format!("incoming-{:016x}.snap", rand::random::<u64>()));
        let cleanup = RemoveOnDrop(path.clone());
        let io = |e: std::io::Error| Status::internal(format!("writing incoming snapshot: {e}"));
        let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
        while let Some(chunk) = stream.message().await? {
            match chunk.part {
                Some(snapshot_chunk::Part::Data(bytes)) => {
                    file.write_all(&bytes).await.map_err(io)?
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "a snapshot stream has one header, then data",
                    ))
                }
            }
        }
        file.flush().await.map_err(io)?;
        file.sync_all().await.map_err(io)?;
        drop(file);
        tracing::info!(snapshot = %meta.snapshot_id, "received snapshot; installing");
        // The state machine checks the file's checksum before installing a byte of it,
        // and moves it into its own snapshot folder when it keeps it.
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile { path: path.clone() }),
        };
        // From here the file belongs to the install, not to this request: the
        // install runs in a task of its own that removes the file only once
        // the state machine is done with it. If the sender gives up (its
        // request times out on a loaded machine, cancelling this handler), the
        // install still finishes. Removing the file with the handler made the
        // state machine find it gone half-way and stopped the Raft core for
        // good (a storage error is fatal): a follower that looked up but took
        // no part in Raft until restarted.
        let raft = self.raft.clone();
        let installed = tokio::spawn(async move {
            let _cleanup = cleanup;
            raft.install_full_snapshot(vote, snapshot).await
        })
        .await
        .map_err(|e| Status::internal(format!("installing the snapshot: {e}")))?;
        reply(&installed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::CodecError;

    #[test]
    fn a_payload_of_another_format_says_which_side_to_upgrade() {
        let newer = bad_payload(CodecError::EntryVersion { found: 9 });
        assert_eq!(newer.code(), tonic::Code::FailedPrecondition);
        assert!(newer.message().contains("upgrade this node"), "{newer:?}");
        let zero = bad_payload(CodecError::Version { found: 0 });
        assert_eq!(zero.code(), tonic::Code::InvalidArgument, "{zero:?}");
        let garbage = bad_payload(CodecError::Decode("x".into()));
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
    }
}
