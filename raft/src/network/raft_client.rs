//! openraft's `RaftNetwork` over gRPC: how a node sends Raft RPCs to its peers.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Snapshot, Vote};
use sc_proto::raft::{snapshot_chunk, RaftPayload, SnapshotChunk};
use tokio::io::AsyncReadExt;

use super::peers::{PeerError, Peers};
use crate::codec;
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Size of one streamed snapshot piece: large enough to keep the link busy, small
/// enough that neither side buffers much.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Creates one [`PeerClient`] per replication target; openraft calls it.
pub struct NetworkFactory {
    peers: Arc<Peers>,
}

impl NetworkFactory {
    /// A factory sending through `peers`.
    pub fn new(peers: Arc<Peers>) -> Self {
        NetworkFactory { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            node: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// Sends Raft RPCs to one peer over its cached channel.
pub struct PeerClient {
    target: NodeId,
    node: NodeInfo,
    peers: Arc<Peers>,
}

type RpcErr<E = RaftError<NodeId>> = RPCError<NodeId, NodeInfo, E>;

fn unreachable<E: std::error::Error>(e: &PeerError) -> RpcErr<E> {
    RPCError::Unreachable(Unreachable::new(e))
}

/// Maps a gRPC failure: a connection that cannot be made is `Unreachable` (openraft
/// backs off), anything else a network error.
fn from_status<E: std::error::Error>(s: &tonic::Status) -> RpcErr<E> {
    match s.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(s)),
        _ => RPCError::Network(NetworkError::new(s)),
    }
}

/// Notes a call to `to` as failed if it is dropped before it ends.
struct Noted<'a> {
    peers: &'a Peers,
    to: NodeId,
    done: bool,
}

impl Drop for Noted<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.peers
                .note_rpc(self.to, Some(&"no answer before openraft's deadline"));
        }
    }
}

impl PeerClient {
    /// One unary call through the fault seam, within `ttl`.
    async fn send<F, Fut>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        data: Vec<u8>,
        call: F,
    ) -> Result<RaftPayload, RpcErr>
    where
        F: FnOnce(
            sc_proto::raft::raft_service_client::RaftServiceClient<tonic::transport::Channel>,
            RaftPayload,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self
            .peers
            .raft_client(self.target, &self.node)
            .await
            .map_err(|e| unreachable(&e))?;
        match tokio::time::timeout(ttl, call(client, RaftPayload { data })).await {
            Err(_) => Err(self.timeout(action, ttl)),
            Ok(Err(status)) => Err(from_status(&status)),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
        }
    }

    fn timeout<E: std::error::Error>(&self, action: RPCTypes, after: Duration) -> RpcErr<E> {
        RPCError::Timeout(Timeout {
            action,
            id: self.peers.self_id(),
            target: self.target,
            timeout: after,
        })
    }

    /// Sends one unary payload RPC and decodes the peer's `Result`.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        action: RPCTypes,
        req: &Req,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RpcErr>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(
            sc_proto::raft::raft_service_client::RaftServiceClient<tonic::transport::Channel>,
            RaftPayload,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let data = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // openraft drops this future at its own deadline (a heartbeat for
        // AppendEntries) when the peer does not answer; the guard notes that
        // as a failure, so a black-holed peer is reported too.
        let mut noted = Noted {
            peers: &self.peers,
            to: self.target,
            done: false,
        };
        let reply = self.send(action, ttl, data, call).await;
        noted.done = true;
        self.peers.note_rpc(
            self.target,
            reply.as_ref().err().map(|e| e as &dyn std::fmt::Display),
        );
        let reply = reply?;
        let result: Result<Resp, RaftError<NodeId>> =
            codec::decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// After an unreachable peer, openraft sends it nothing (not even
    /// heartbeats) for one backoff step; its default is 500 ms. A peer that
    /// restarts inside that step hears from no leader, its log stays behind,
    /// and if the leader then dies it campaigns in vain and splits the first
    /// round of votes (a 1.25 s failover in `pce bench failover`). One heartbeat
    /// per step keeps a restarted peer in step, and a refused connection costs
    /// next to nothing.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.peers.timeouts().heartbeat))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let ttl = option.hard_ttl().max(self.peers.timeouts().rpc);
        self.unary(RPCTypes::AppendEntries, &rpc, ttl, |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let ttl = option.hard_ttl().max(self.peers.timeouts().rpc);
        let ours = rpc.last_log_id;
        let resp: VoteResponse<NodeId> = self
            .unary(RPCTypes::Vote, &rpc, ttl, |mut c, p| async move {
                c.vote(p).await
            })
            .await?;
        if !resp.vote_granted && resp.last_log_id > ours {
            self.peers.saw_greater_log();
        }
        Ok(resp)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let net = |e: &dyn std::error::Error| {
            StreamingError::Network(NetworkError::new(&std::io::Error::other(e.to_string())))
        };
        let header = codec::encode(&(vote, &snapshot.meta)).map_err(|e| net(&e))?;
        let mut file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(|e| net(&e))?;
        let mut client = match self.peers.raft_client(self.target, &self.node).await {
            Ok(c) => c,
            Err(e) => return Err(StreamingError::Unreachable(Unreachable::new(&e))),
        };

        // A bounded channel: the file is read only as fast as the peer takes it.
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        let reader = tokio::spawn(async move {
            let first = SnapshotChunk {
                part: Some(snapshot_chunk::Part::Header(header)),
            };
            if tx.send(first).await.is_err() {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buf.truncate(n);
                if tx
                    .send(SnapshotChunk {
                        part: Some(snapshot_chunk::Part::Data(buf)),
                    })
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        });
        let ttl = self.peers.timeouts().snapshot;
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let outcome = tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = tokio::time::timeout(ttl, call) => match r {
                Err(_) => Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.peers.self_id(),
                    target: self.target,
                    timeout: ttl,
                })),
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    Err(StreamingError::Unreachable(Unreachable::new(&status)))
                }
                Ok(Err(status)) => Err(StreamingError::Network(NetworkError::new(&status))),
                Ok(Ok(reply)) => Ok(reply.into_inner()),
            },
        };
        reader.abort();
        let reply = outcome?;
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            codec::decode(&reply.data).map_err(|e| net(&e))?;
        result.map_err(|e| {
            StreamingError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}
