//! openraft's `RaftNetwork` over gRPC: how a node sends Raft RPCs to its peers.

use std::future::Future;
use std::sync::Arc;

use crate::storage::durable::Durable;
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

use super::append_stream::AppendStream;
use super::peers::{PeerError, Peers};
use crate::codec;
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// Size of one streamed snapshot piece: large enough to keep the link busy, small
/// enough that neither side buffers much.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Creates one [`PeerClient`] per replication target; openraft calls it.
pub struct NetworkFactory {
    peers: Arc<Peers>,
    log: Durable,
}

impl NetworkFactory {
    /// A factory sending through `peers`, for a node whose log is `log`.
    pub(crate) fn new(peers: Arc<Peers>, log: Durable) -> Self {
        NetworkFactory { peers, log }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            node: node.clone(),
            peers: self.peers.clone(),
            log: self.log.clone(),
            stream: None,
            offer: StreamOffer::default(),
        }
    }
}

/// Sends Raft RPCs to one peer over its cached channel.
pub struct PeerClient {
    target: NodeId,
    node: NodeInfo,
    peers: Arc<Peers>,
    /// This node's log: a follower's acknowledgement counts only as far as
    /// this node's own copy is on disk (decision 0027).
    log: Durable,
    /// The open AppendEntries stream to the peer, if any.
    stream: Option<AppendStream>,
    /// Whether the peer is offered the stream or sent calls.
    offer: StreamOffer,
}

/// How long a peer without the append stream is sent calls before the stream
/// is offered again. Offering costs one refused opening, a round trip, so a
/// peer of an older release pays one per this interval.
const STREAM_RETRY: Duration = Duration::from_secs(30);

/// Whether a peer is sent AppendEntries on the stream or as calls. A peer
/// whose release has no stream is sent calls, but only for
/// [`STREAM_RETRY`]: openraft keeps a peer's client for as long as the leader
/// leads, and in a rolling upgrade the peer may restart on a release that has
/// the stream.
#[derive(Default)]
struct StreamOffer {
    /// When the peer last refused the stream.
    refused_at: Option<tokio::time::Instant>,
    /// Whether it ever did (for the log: the first refusal is news).
    refused_before: bool,
}

impl StreamOffer {
    /// True while the peer's last refusal is recent; after that the stream
    /// is offered again.
    fn calls_only(&mut self, now: tokio::time::Instant) -> bool {
        match self.refused_at {
            Some(at) if now.saturating_duration_since(at) < STREAM_RETRY => true,
            Some(_) => {
                self.refused_at = None;
                false
            }
            None => false,
        }
    }

    /// The peer answered the stream's opening with UNIMPLEMENTED; true the
    /// first time.
    fn refused(&mut self, now: tokio::time::Instant) -> bool {
        self.refused_at = Some(now);
        !std::mem::replace(&mut self.refused_before, true)
    }
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
            sc_proto::raft::raft_service_client::RaftServiceClient<sc_proto::version::Stamped>,
            RaftPayload,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        // The fault seam's delay (inside `raft_client`) counts against `ttl`.
        let exchange = async {
            let client = self
                .peers
                .raft_client(self.target, &self.node)
                .await
                .map_err(|e| unreachable(&e))?;
            call(client, RaftPayload { data })
                .await
                .map_err(|status| from_status(&status))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Err(_) => Err(self.timeout(action, ttl)),
            Ok(reply) => Ok(reply?.into_inner()),
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
    async fn unary<Resp, F, Fut>(
        &self,
        action: RPCTypes,
        data: Result<Vec<u8>, codec::CodecError>,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RpcErr>
    where
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(
            sc_proto::raft::raft_service_client::RaftServiceClient<sc_proto::version::Stamped>,
            RaftPayload,
        ) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let data = data.map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let peers = self.peers.clone();
        let reply = noted(&peers, self.target, self.send(action, ttl, data, call)).await;
        self.answer(reply)
    }

    /// Decodes the peer's `Result` out of its answer.
    // The error is openraft's own, the one every `RaftNetwork` method returns.
    #[allow(clippy::result_large_err)]
    fn answer<Resp: serde::de::DeserializeOwned>(
        &self,
        reply: Result<RaftPayload, RpcErr>,
    ) -> Result<Resp, RpcErr> {
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

    /// Sends one encoded AppendEntries on the peer's stream (opened on first
    /// use), or as a call to a peer whose release has no stream.
    ///
    /// A stream that was already open may have died with its connection since
    /// its last answer (a reset, a restarted peer) without anyone noticing: a
    /// request that fails on it is sent once more, on a new stream, within the
    /// same deadline, as a call would have gone out on a new connection.
    /// AppendEntries may be repeated: the follower takes the same entries at
    /// the same place the same way.
    async fn append_payload(
        &mut self,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<RaftPayload, RpcErr> {
        let action = RPCTypes::AppendEntries;
        let deadline = tokio::time::Instant::now() + ttl;
        if self.stream.as_ref().is_some_and(AppendStream::is_spoiled) {
            self.stream = None;
        }
        if self.offer.calls_only(tokio::time::Instant::now()) {
            return self.call_append(ttl, data).await;
        }
        // The fault seam sees every request, as it sees every call (opening
        // a stream passes it too); a delay it adds counts against the
        // deadline, as the network's own would.
        if self.stream.is_some() {
            match tokio::time::timeout_at(deadline, self.peers.gate(self.target)).await {
                Err(_) => return Err(self.timeout(action, ttl)),
                Ok(gated) => gated.map_err(|e| unreachable(&e))?,
            }
        }
        let mut retried = false;
        loop {
            let fresh = self.stream.is_none();
            let answer = match self.stream.as_mut() {
                Some(stream) => tokio::time::timeout_at(deadline, stream.call(data.clone())).await,
                // The request goes out with the new stream's opening.
                None => match self.open_stream(deadline, ttl, data.clone()).await? {
                    Some(stream) => {
                        let stream = self.stream.insert(stream);
                        tokio::time::timeout_at(deadline, stream.answer()).await
                    }
                    // Only what is left of the deadline: the opening that
                    // was refused already took a round trip of it.
                    None => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        return self.call_append(left, data).await;
                    }
                },
            };
            // A broken or silent stream is not used again.
            let failed = match answer {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(status)) => status,
                Err(_) => {
                    self.stream = None;
                    return Err(self.timeout(action, ttl));
                }
            };
            self.stream = None;
            if fresh || retried {
                return Err(from_status(&failed));
            }
            tracing::debug!(peer = %self.node, status = %failed, "the append stream failed; sending again on a new one");
            retried = true;
        }
    }

    /// Opens the AppendEntries stream to the peer with `first` in flight on
    /// it; `None` (and calls for [`STREAM_RETRY`]) for a peer whose release
    /// has none.
    async fn open_stream(
        &mut self,
        deadline: tokio::time::Instant,
        ttl: Duration,
        first: Vec<u8>,
    ) -> Result<Option<AppendStream>, RpcErr> {
        let client = match tokio::time::timeout_at(
            deadline,
            self.peers.raft_client(self.target, &self.node),
        )
        .await
        {
            Err(_) => return Err(self.timeout(RPCTypes::AppendEntries, ttl)),
            Ok(client) => client.map_err(|e| unreachable(&e))?,
        };
        match tokio::time::timeout_at(deadline, AppendStream::open(client, first)).await {
            Err(_) => Err(self.timeout(RPCTypes::AppendEntries, ttl)),
            Ok(Err(status)) => Err(from_status(&status)),
            Ok(Ok(Some(stream))) => Ok(Some(stream)),
            Ok(Ok(None)) => {
                // Said once per peer client; the offers every STREAM_RETRY
                // of a rolling upgrade are not news.
                if self.offer.refused(tokio::time::Instant::now()) {
                    tracing::info!(peer = %self.node, "the peer's release has no append stream; sending it AppendEntries calls");
                } else {
                    tracing::debug!(peer = %self.node, "the peer still has no append stream");
                }
                Ok(None)
            }
        }
    }

    /// One AppendEntries as a unary call.
    async fn call_append(&self, ttl: Duration, data: Vec<u8>) -> Result<RaftPayload, RpcErr> {
        self.send(RPCTypes::AppendEntries, ttl, data, |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }
}

/// Runs one exchange with `to`, noting its outcome for the peer's health.
/// openraft drops the future at its own deadline (a heartbeat for
/// AppendEntries) when the peer does not answer; the guard notes that as a
/// failure, so a black-holed peer is reported too.
async fn noted(
    peers: &Peers,
    to: NodeId,
    exchange: impl Future<Output = Result<RaftPayload, RpcErr>>,
) -> Result<RaftPayload, RpcErr> {
    let mut guard = Noted {
        peers,
        to,
        done: false,
    };
    let reply = exchange.await;
    guard.done = true;
    peers.note_rpc(
        to,
        reply.as_ref().err().map(|e| e as &dyn std::fmt::Display),
    );
    reply
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
        let (rpc, cut) = cap_entries(rpc, MAX_APPEND_BYTES);
        let data = crate::entry_format::encode_append(&rpc)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let (peers, target) = (self.peers.clone(), self.target);
        let reply = noted(&peers, target, self.append_payload(data, ttl)).await;
        let resp: AppendEntriesResponse<NodeId> = self.answer(reply)?;
        // The follower took the prefix we sent; openraft sends the rest next.
        let resp = match (resp, cut) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (resp, _) => resp,
        };
        // What the follower now holds, which openraft will count towards a
        // commit together with this node's own copy: that copy must be on
        // disk first (this node reports its own appends flushed early).
        let matched = match &resp {
            AppendEntriesResponse::Success => {
                rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id)
            }
            AppendEntriesResponse::PartialSuccess(m) => *m,
            _ => None,
        };
        if let Some(m) = matched {
            self.log
                .wait(m.index)
                .await
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        }
        Ok(resp)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let ttl = option.hard_ttl().max(self.peers.timeouts().rpc);
        let ours = rpc.last_log_id;
        let resp: VoteResponse<NodeId> = self
            .unary(
                RPCTypes::Vote,
                codec::encode(&rpc),
                ttl,
                |mut c, p| async move { c.vote(p).await },
            )
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
        let ttl = self.peers.timeouts().snapshot;
        // The fault seam's delay counts against the transfer's deadline.
        let mut client = match tokio::time::timeout(
            ttl,
            self.peers.raft_client(self.target, &self.node),
        )
        .await
        {
            Err(_) => {
                return Err(StreamingError::Timeout(Timeout {
                    action: RPCTypes::InstallSnapshot,
                    id: self.peers.self_id(),
                    target: self.target,
                    timeout: ttl,
                }))
            }
            Ok(Err(e)) => return Err(StreamingError::Unreachable(Unreachable::new(&e))),
            Ok(Ok(c)) => c,
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

/// The most command bytes one AppendEntries carries (one entry always goes,
/// whatever its size). openraft gives each AppendEntries exactly one
/// heartbeat to be answered and then sends the same entries again: a
/// follower decoding and syncing megabytes of commands (a burst of large
/// batches, a debug build, a slow disk) never answered in time and got the
/// same batch for ever. The count limit (`max_payload_entries`) does not
/// bound bytes; this does, through the `PartialSuccess` answer openraft has
/// for exactly this.
const MAX_APPEND_BYTES: usize = 256 * 1024;

/// Keeps the longest prefix of `rpc`'s entries within `max` command bytes (at
/// least one entry); returns the request and, if entries were left out, the
/// id of the last one kept.
fn cap_entries(
    mut rpc: AppendEntriesRequest<TypeConfig>,
    max: usize,
) -> (
    AppendEntriesRequest<TypeConfig>,
    Option<openraft::LogId<NodeId>>,
) {
    let mut bytes = 0usize;
    let mut keep = 0usize;
    for e in &rpc.entries {
        let size = match &e.payload {
            openraft::EntryPayload::Normal(p) => p.payload_bytes(),
            _ => 0,
        };
        if keep > 0 && bytes + size > max {
            break;
        }
        bytes += size;
        keep += 1;
    }
    if keep == rpc.entries.len() {
        return (rpc, None);
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    (rpc, last)
}

#[cfg(test)]
mod cap_tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;
    use crate::types::{ClientId, Command, Mutation};

    fn entry(index: u64, bytes: usize) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(
                Command {
                    client: ClientId::random(),
                    serial: index,
                    expect_revision: None,
                    compare: vec![],
                    ops: vec![Mutation::Put {
                        key: b"k".to_vec(),
                        value: vec![0; bytes.saturating_sub(1)],
                    }],
                }
                .into(),
            ),
        }
    }

    fn request(sizes: &[usize]) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| entry(i as u64 + 1, *s))
                .collect(),
        }
    }

    #[test]
    fn a_peer_that_refused_the_stream_is_offered_it_again_later() {
        let t0 = tokio::time::Instant::now();
        let mut offer = StreamOffer::default();
        assert!(!offer.calls_only(t0), "a new peer is offered the stream");
        assert!(offer.refused(t0), "the first refusal is news");
        assert!(offer.calls_only(t0 + Duration::from_secs(1)));
        assert!(offer.calls_only(t0 + STREAM_RETRY - Duration::from_millis(1)));
        // After the interval the stream is offered again, and stays offered
        // until the peer refuses it again.
        assert!(!offer.calls_only(t0 + STREAM_RETRY));
        assert!(!offer.calls_only(t0 + Duration::from_secs(1)));
        assert!(!offer.refused(t0 + STREAM_RETRY), "a second one is not");
        assert!(offer.calls_only(t0 + STREAM_RETRY + Duration::from_secs(1)));
    }

    #[test]
    fn entries_beyond_the_byte_budget_wait_for_the_next_request() {
        let (rpc, cut) = cap_entries(request(&[100, 100, 100]), 250);
        assert_eq!(rpc.entries.len(), 2);
        assert_eq!(cut.map(|l| l.index), Some(2));
        // Within the budget: everything, and no partial answer.
        let (rpc, cut) = cap_entries(request(&[100, 100]), 250);
        assert_eq!((rpc.entries.len(), cut), (2, None));
        // One entry larger than the budget still goes, alone.
        let (rpc, cut) = cap_entries(request(&[1000, 10]), 250);
        assert_eq!(rpc.entries.len(), 1);
        assert_eq!(cut.map(|l| l.index), Some(1));
        // A heartbeat (no entries) is untouched.
        let (rpc, cut) = cap_entries(request(&[]), 250);
        assert_eq!((rpc.entries.len(), cut), (0, None));
    }
}
