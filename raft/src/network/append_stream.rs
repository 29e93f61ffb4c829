//! AppendEntries over one long-lived gRPC stream per leader and follower.
//!
//! openraft 0.9 sends a follower one AppendEntries at a time and waits for the
//! answer before the next, entries or commit notice. As unary calls, each of
//! them opened an HTTP/2 stream, encoded and decoded headers and trailers,
//! spawned a handler task on the follower and went out in three socket writes.
//! On a stream each request is one message and each answer another, in order,
//! as etcd's peers talk (rafthttp's streams). The stream carries exactly what
//! the call carried: the same encoded request, the same encoded `Result`.
//!
//! One request is in flight at a time, so the next message on the stream is
//! always the answer to the request just sent. A caller dropped before its
//! answer arrived (openraft gives up at its deadline) leaves that answer
//! unread; the stream is then not used again, and the next request opens a
//! new one.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use sc_proto::raft::raft_service_client::RaftServiceClient;
use sc_proto::raft::RaftPayload;
use sc_proto::version::Stamped;

/// The sending side of one open stream.
pub(crate) struct AppendStream {
    requests: mpsc::Sender<RaftPayload>,
    answers: Streaming<RaftPayload>,
    /// A request went out and its answer has not been read.
    awaiting: bool,
}

impl AppendStream {
    /// Opens a stream to the peer behind `client` with `first` as its first
    /// request, whose answer [`AppendStream::answer`] then reads; `None` when
    /// the peer's release has no such call (it answers UNIMPLEMENTED).
    ///
    /// The first request goes out together with the stream's headers: opening
    /// and the first answer cost one round trip, as a call did. Waiting for the
    /// peer's headers before sending would cost two, and on a link of a few
    /// hundred milliseconds that outlasts openraft's deadline for an
    /// AppendEntries (one heartbeat), so that every attempt would open a new
    /// stream and none would be answered in time.
    pub(crate) async fn open(
        mut client: RaftServiceClient<Stamped>,
        first: Vec<u8>,
    ) -> Result<Option<AppendStream>, Status> {
        // One slot: a request waits only for the one before it to be taken.
        let (requests, outgoing) = mpsc::channel(1);
        requests
            .try_send(RaftPayload { data: first })
            .map_err(|_| Status::internal("a new append stream refused its first request"))?;
        match client.append_stream(ReceiverStream::new(outgoing)).await {
            Ok(answers) => Ok(Some(AppendStream {
                requests,
                answers: answers.into_inner(),
                awaiting: true,
            })),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// Whether an earlier request's answer may still arrive (its caller was
    /// dropped), which would be read as the answer to the next one.
    pub(crate) fn is_spoiled(&self) -> bool {
        self.awaiting
    }

    /// Sends one encoded request and returns its encoded answer.
    pub(crate) async fn call(&mut self, data: Vec<u8>) -> Result<RaftPayload, Status> {
        self.awaiting = true;
        self.requests
            .send(RaftPayload { data })
            .await
            .map_err(|_| Status::unavailable("the append stream to the peer has closed"))?;
        self.answer().await
    }

    /// Reads the answer to the request in flight.
    pub(crate) async fn answer(&mut self) -> Result<RaftPayload, Status> {
        let answer = self
            .answers
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the peer ended the append stream"))?;
        self.awaiting = false;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::time::Duration;

    use futures_util::StreamExt;
    use sc_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
    use sc_proto::raft::SnapshotChunk;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Channel, Server};
    use tonic::{Request, Response};

    use super::*;

    /// A peer that answers each request with the request itself, after as
    /// many milliseconds as its first byte says; one of an older release has
    /// no stream.
    struct Echo {
        streams: bool,
    }

    type Answers = Pin<Box<dyn tokio_stream::Stream<Item = Result<RaftPayload, Status>> + Send>>;

    #[tonic::async_trait]
    impl RaftService for Echo {
        async fn append_entries(
            &self,
            r: Request<RaftPayload>,
        ) -> Result<Response<RaftPayload>, Status> {
            Ok(Response::new(r.into_inner()))
        }

        type AppendStreamStream = Answers;

        async fn append_stream(
            &self,
            r: Request<Streaming<RaftPayload>>,
        ) -> Result<Response<Answers>, Status> {
            if !self.streams {
                return Err(Status::unimplemented("an older release"));
            }
            let answers = r.into_inner().then(|m| async move {
                let m = m?;
                let wait = m.data.first().copied().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
                Ok(m)
            });
            Ok(Response::new(Box::pin(answers)))
        }

        async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn pre_vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            _: Request<Streaming<SnapshotChunk>>,
        ) -> Result<Response<RaftPayload>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    async fn client_of(peer: Echo) -> RaftServiceClient<Stamped> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            Server::builder()
                .add_service(RaftServiceServer::new(peer))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        RaftServiceClient::new(sc_proto::version::stamped(channel))
    }

    #[tokio::test]
    async fn answers_come_back_in_order_and_a_dropped_call_spoils_the_stream() {
        let client = client_of(Echo { streams: true }).await;
        let mut stream = AppendStream::open(client, vec![0, 0])
            .await
            .unwrap()
            .unwrap();
        assert!(stream.is_spoiled(), "the first request is in flight");
        assert_eq!(stream.answer().await.unwrap().data, vec![0, 0]);
        for i in 1..=20u8 {
            let answer = stream.call(vec![0, i]).await.unwrap();
            assert_eq!(answer.data, vec![0, i]);
            assert!(!stream.is_spoiled());
        }
        // A caller that gives up before its answer (openraft's deadline).
        let gave_up = tokio::time::timeout(Duration::from_millis(5), stream.call(vec![100])).await;
        assert!(gave_up.is_err());
        assert!(stream.is_spoiled());
        // Why a spoiled stream is dropped: the next answer is the old one.
        let stale = stream.call(vec![0, 7]).await.unwrap();
        assert_eq!(stale.data, vec![100]);
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_is_told_apart_from_a_failure() {
        let client = client_of(Echo { streams: false }).await;
        assert!(AppendStream::open(client, vec![0]).await.unwrap().is_none());
        let gone = Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let failed = AppendStream::open(
            RaftServiceClient::new(sc_proto::version::stamped(gone)),
            vec![0],
        )
        .await;
        assert_eq!(
            failed.err().map(|s| s.code()),
            Some(tonic::Code::Unavailable)
        );
    }
}
