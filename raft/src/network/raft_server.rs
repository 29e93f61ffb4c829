//! The receiving side of the Raft RPCs: decodes a peer's request, hands it to the
//! local openraft instance, encodes its `Result` back.

use std::path::PathBuf;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{Raft, ServerState, Snapshot, SnapshotMeta, Vote};
use sc_proto::raft::raft_service_server::RaftService;
use sc_proto::raft::{snapshot_chunk, RaftPayload, SnapshotChunk};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use crate::codec;
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
    /// A planned transfer: only its target gets this node's pre-vote.
    transfer: crate::network::Transfer,
}

impl RaftGrpc {
    /// Serves `raft`, receiving snapshots into `incoming_dir`.
    pub fn new(
        raft: Raft<TypeConfig>,
        incoming_dir: PathBuf,
        fence: crate::network::Fence,
        election_min: std::time::Duration,
        log: NodeLog,
        transfer: crate::network::Transfer,
    ) -> Self {
        RaftGrpc {
            raft,
            fence,
            incoming_dir,
            election_min,
            log,
            transfer,
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
}

fn bad_payload(e: crate::codec::CodecError) -> Status {
    Status::invalid_argument(format!("undecodable Raft payload: {e}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = codec::encode(value).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftPayload { data }))
}

/// Removes a half-received snapshot file if it is still there.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.fence.check()?;
        self.member_only(&request, "AppendEntries")?;
        let req: AppendEntriesRequest<TypeConfig> =
            codec::decode(&request.into_inner().data).map_err(bad_payload)?;
        reply(&self.raft.append_entries(req).await)
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
        if self.transfer.target().is_some_and(|to| to != req.candidate) {
            // Leadership is being handed to another node on purpose.
            return reply(&crate::election::PreVoteResponse { granted: false });
        }
        let ours = self
            .log
            .last_log_id()
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let granted = self
            .raft
            .with_raft_state(move |st| {
                // A leader is alive; a follower that heard its leader within
                // the shortest election timeout believes it is; a candidate
                // whose log is behind ours could not win our real vote.
                let leading = st.server_state == ServerState::Leader;
                let heard = st.vote_ref().is_committed()
                    && st.vote_last_modified().is_some_and(|t| t.elapsed() < min);
                !leading && !heard && req.last_log_id >= ours
            })
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
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
