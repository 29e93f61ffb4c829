//! The few calls of etcd's v3 gRPC API that `bench compare` makes, declared by
//! hand from the API's field numbers.
//!
//! etcd is measured over gRPC, as its own clients and `etcdctl` talk to it, so
//! neither system pays for a JSON gateway the other skips. Only the fields the
//! benchmark sets or reads are declared: protobuf skips the rest on decode.
//! Generating the whole API would need etcd's `.proto` tree in the project.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sc_proto::framing::LastFrameEnds;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

/// `etcdserverpb.ResponseHeader`: who answered, at which revision.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

/// `etcdserverpb.PutRequest`, without leases and the previous value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.RangeRequest` for one key: `serializable` answers from the
/// member's own replica, otherwise etcd confirms with the leader (ReadIndex).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

/// `mvccpb.KeyValue`, the value only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

/// `etcdserverpb.StatusRequest` (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

/// `etcdserverpb.StatusResponse`: the member's id (in the header) and its leader.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
}

/// A connection to one etcd member; clones share its HTTP/2 connection, as
/// clones of our own `sc_raft::Client` do.
#[derive(Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<LastFrameEnds<Channel>>,
}

impl EtcdClient {
    /// Connects to `endpoint` (`http://host:port`).
    pub async fn connect(endpoint: &str) -> Result<EtcdClient> {
        let channel = Channel::from_shared(endpoint.to_string())
            .map_err(|e| anyhow!("etcd endpoint {endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {endpoint}"))?;
        // Requests end on their message, as our own clients' do
        // (`sc_proto::framing`): both systems get the same client.
        Ok(EtcdClient {
            grpc: tonic::client::Grpc::new(LastFrameEnds::new(channel)),
        })
    }

    async fn unary<Q, R>(&mut self, path: &'static str, req: Q) -> Result<R>
    where
        Q: prost::Message + Send + Sync + 'static,
        R: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| anyhow!("etcd connection: {e}"))?;
        let r = self
            .grpc
            .unary(
                tonic::Request::new(req),
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
            .map_err(|s| anyhow!("etcd {path}: {}", s.message()))?;
        Ok(r.into_inner())
    }

    /// Writes `key` (committed and fsynced on a quorum when this returns).
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<PutResponse> {
        self.unary("/etcdserverpb.KV/Put", PutRequest { key, value })
            .await
    }

    /// Reads `key`, from the member's replica when `serializable`.
    pub async fn get(&mut self, key: Vec<u8>, serializable: bool) -> Result<RangeResponse> {
        self.unary("/etcdserverpb.KV/Range", RangeRequest { key, serializable })
            .await
    }

    /// This member's id and the leader it knows (0: none).
    pub async fn status(&mut self) -> Result<(u64, u64)> {
        let s: StatusResponse = self
            .unary("/etcdserverpb.Maintenance/Status", StatusRequest {})
            .await?;
        let id = s.header.map(|h| h.member_id).unwrap_or(0);
        Ok((id, s.leader))
    }
}
