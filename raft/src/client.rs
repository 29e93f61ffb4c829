//! A client for tools outside a node: the operator CLI, the write benchmark and
//! process-level tests. It speaks the federation service over mutual TLS, so it
//! needs a certificate from the cluster CA like any node.

use sc_proto::federation::federation_client::FederationClient;
use sc_proto::federation::{ReadRequest, StatusRequest, WriteRequest};
use sc_proto::version::{stamped, Stamped};

use crate::codec;
use crate::config::Timeouts;
use crate::convert::{
    membership_request, membership_view, read_result_from_proto, status_from_proto,
};
use crate::error::Error;
use crate::network::peers::{connect_lazy, MAX_MESSAGE};
use crate::network::TlsMaterial;
use crate::status::NodeStatus;
use crate::types::{
    Command, CommandResponse, KvEntry, MembershipOp, MembershipView, NodeId, NodeInfo,
};

/// A connection to one node.
#[derive(Clone)]
pub struct Client {
    target: NodeInfo,
    tls: TlsMaterial,
    timeouts: Timeouts,
    inner: FederationClient<Stamped>,
}

fn remote(target: &NodeInfo, s: tonic::Status) -> Error {
    Error::Remote {
        peer: target.to_string(),
        message: format!("{}: {}", code_name(s.code()), s.message()),
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::FailedPrecondition => "refused",
        tonic::Code::DeadlineExceeded => "timed out",
        _ => "error",
    }
}

impl Client {
    /// A lazily connecting client to `target`, presenting `tls`.
    pub fn new(tls: TlsMaterial, target: NodeInfo, timeouts: Timeouts) -> Result<Client, Error> {
        let channel =
            connect_lazy(&tls, &target, &timeouts).map_err(|e| Error::Options(e.to_string()))?;
        let inner = FederationClient::new(stamped(channel)).max_decoding_message_size(MAX_MESSAGE);
        Ok(Client {
            target,
            tls,
            timeouts,
            inner,
        })
    }

    /// The node this client talks to.
    pub fn target(&self) -> &NodeInfo {
        &self.target
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let r = tokio::time::timeout(
            self.timeouts.rpc * 3,
            self.inner.clone().status(StatusRequest {}),
        )
        .await
        .map_err(|_| Error::Remote {
            peer: self.target.to_string(),
            message: "no answer in time".into(),
        })?
        .map_err(|s| remote(&self.target, s))?;
        Ok(status_from_proto(r.into_inner()))
    }

    /// The status of every member the target knows of, each asked directly.
    pub async fn cluster_status(
        &self,
    ) -> Result<Vec<(NodeId, NodeInfo, Result<NodeStatus, Error>)>, Error> {
        let me = self.status().await?;
        let mut out = Vec::new();
        for p in &me.peers {
            let info = NodeInfo {
                name: p.name.clone(),
                region: p.region.clone(),
                addr: p.addr.clone(),
            };
            let r = if p.id == me.id {
                Ok(me.clone())
            } else {
                match Client::new(self.tls.clone(), info.clone(), self.timeouts.clone()) {
                    Ok(c) => c.status().await,
                    Err(e) => Err(e),
                }
            };
            out.push((p.id, info, r));
        }
        Ok(out)
    }

    /// A client for the current leader (as the target sees it).
    pub async fn leader(&self) -> Result<Client, Error> {
        let s = self.status().await?;
        let leader = s.leader.ok_or_else(|| Error::NoLeader {
            waited: Default::default(),
            last: format!("{} knows no leader", self.target),
        })?;
        let p = s
            .peers
            .iter()
            .find(|p| p.id == leader)
            .ok_or_else(|| Error::Remote {
                peer: self.target.to_string(),
                message: format!("leader {leader} is not in its membership"),
            })?;
        let info = NodeInfo {
            name: p.name.clone(),
            region: p.region.clone(),
            addr: p.addr.clone(),
        };
        Client::new(self.tls.clone(), info, self.timeouts.clone())
    }

    /// Commits `cmd`; the target forwards it to the leader if it does not lead.
    pub async fn write(&self, cmd: &Command) -> Result<CommandResponse, Error> {
        let command = codec::encode(cmd)?;
        let r = self
            .inner
            .clone()
            .write(WriteRequest {
                command,
                route_to_leader: true,
            })
            .await
            .map_err(|s| remote(&self.target, s))?;
        codec::decode(&r.into_inner().response).map_err(|e| Error::Remote {
            peer: self.target.to_string(),
            message: e.to_string(),
        })
    }

    /// Reads `key` and the revision the read reflects.
    pub async fn read(
        &self,
        key: &[u8],
        linearizable: bool,
    ) -> Result<(Option<KvEntry>, u64), Error> {
        let r = self
            .inner
            .clone()
            .read(ReadRequest {
                key: key.to_vec(),
                linearizable,
            })
            .await
            .map_err(|s| remote(&self.target, s))?
            .into_inner();
        let r = read_result_from_proto(r);
        Ok((r.value, r.revision))
    }

    /// Promotes, demotes or removes node `id` (routed to the leader).
    pub async fn change_membership(
        &self,
        op: MembershipOp,
        id: NodeId,
    ) -> Result<MembershipView, Error> {
        if op == MembershipOp::AddLearner {
            return Err(Error::Membership(
                "new regions join by starting with `peers` in their config".into(),
            ));
        }
        let req = membership_request(op, id, None);
        let r = self
            .inner
            .clone()
            .change_membership(req)
            .await
            .map_err(|s| remote(&self.target, s))?
            .into_inner();
        Ok(membership_view(r))
    }
}
