//! The federation service: what one region asks of another besides Raft itself.
//!
//! A member forwards writes and membership changes to the leader here, asks it
//! for a read index, and any node answers status queries. Requests that reach a
//! node that is not (or no longer) the leader are refused with
//! `FAILED_PRECONDITION` and a message starting with [`NOT_LEADER`]; the sender
//! retries against the leader it then learns of. There is no multi-hop forwarding.

use sc_proto::federation::federation_server::Federation;
use sc_proto::federation::{
    MembershipAction, MembershipReply, MembershipRequest, ReadIndexReply, ReadIndexRequest,
    ReadReply, ReadRequest, StatusReply, StatusRequest, WriteReply, WriteRequest,
};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::node::{Attempt, Consistency, MembershipOp, MembershipView, Node};
use crate::status::{NodeStatus, PeerStatus};
use crate::types::{Command, NodeId, NodeInfo};

/// The start of the message of a refusal because this node does not lead.
pub const NOT_LEADER: &str = "not the leader";

/// The federation gRPC service of one node.
pub struct FederationGrpc {
    node: Node,
}

impl FederationGrpc {
    /// Serves `node`.
    pub fn new(node: Node) -> Self {
        FederationGrpc { node }
    }

    fn leader_only(&self) -> Result<(), Status> {
        if self.node.is_leader() {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "{NOT_LEADER}: node {} does not lead",
                self.node.id()
            )))
        }
    }
}

fn attempt_status(a: Attempt) -> Status {
    match a {
        Attempt::Retry(why) => Status::failed_precondition(format!("{NOT_LEADER}: {why}")),
        Attempt::Fail(e) => e.to_status(),
    }
}

/// Converts a node's info to its wire form.
pub fn node_info_to_proto(id: NodeId, info: &NodeInfo) -> sc_proto::federation::NodeInfo {
    sc_proto::federation::NodeInfo {
        node_id: id,
        name: info.name.clone(),
        region: info.region.clone(),
        addr: info.addr.clone(),
    }
}

/// The wire form of a membership change of node `id` (`info` is needed only to add it).
pub fn membership_request(
    op: MembershipOp,
    id: NodeId,
    info: Option<&NodeInfo>,
) -> MembershipRequest {
    let action = match op {
        MembershipOp::AddLearner => MembershipAction::AddLearner,
        MembershipOp::Promote => MembershipAction::Promote,
        MembershipOp::Demote => MembershipAction::Demote,
        MembershipOp::Remove => MembershipAction::Remove,
    };
    let node = match info {
        Some(i) => node_info_to_proto(id, i),
        None => sc_proto::federation::NodeInfo {
            node_id: id,
            ..Default::default()
        },
    };
    MembershipRequest {
        action: action as i32,
        node: Some(node),
    }
}

/// The change a wire request asks for, if its action is known.
pub fn membership_op(action: i32) -> Option<MembershipOp> {
    match MembershipAction::try_from(action) {
        Ok(MembershipAction::AddLearner) => Some(MembershipOp::AddLearner),
        Ok(MembershipAction::Promote) => Some(MembershipOp::Promote),
        Ok(MembershipAction::Demote) => Some(MembershipOp::Demote),
        Ok(MembershipAction::Remove) => Some(MembershipOp::Remove),
        _ => None,
    }
}

/// The membership a reply reports.
pub fn membership_view(reply: MembershipReply) -> MembershipView {
    MembershipView {
        voters: reply.voters.into_iter().collect(),
        learners: reply.learners.into_iter().collect(),
    }
}

/// Converts a status reply back into the status struct.
pub fn status_from_proto(r: StatusReply) -> NodeStatus {
    let node = r.node.unwrap_or_default();
    NodeStatus {
        id: node.node_id,
        name: node.name,
        region: node.region,
        addr: node.addr,
        role: r.role,
        leader: r.leader_id,
        term: r.term,
        last_log_index: r.last_log_index,
        last_applied: r.last_applied_index,
        committed: r.committed_index,
        snapshot: r.snapshot_index,
        purged: r.purged_index,
        revision: r.revision,
        millis_since_quorum_ack: r.millis_since_quorum_ack,
        fenced_for_ms: r.fenced_for_ms,
        services: crate::status::Services {
            api: r.api_addr,
            vens_connected: r.vens_connected,
            vens_current: r.vens_current,
        },
        peers: r
            .peers
            .into_iter()
            .map(|p| {
                let n = p.node.unwrap_or_default();
                PeerStatus {
                    id: n.node_id,
                    name: n.name,
                    region: n.region,
                    addr: n.addr,
                    voter: p.voter,
                    matched: p.matched_index,
                    lag: p.lag,
                }
            })
            .collect(),
    }
}

/// Converts the status struct to its wire form.
pub fn status_to_proto(s: &NodeStatus) -> StatusReply {
    StatusReply {
        node: Some(sc_proto::federation::NodeInfo {
            node_id: s.id,
            name: s.name.clone(),
            region: s.region.clone(),
            addr: s.addr.clone(),
        }),
        role: s.role.clone(),
        leader_id: s.leader,
        term: s.term,
        last_log_index: s.last_log_index,
        last_applied_index: s.last_applied,
        committed_index: s.committed,
        snapshot_index: s.snapshot,
        purged_index: s.purged,
        revision: s.revision,
        millis_since_quorum_ack: s.millis_since_quorum_ack,
        fenced_for_ms: s.fenced_for_ms,
        api_addr: s.services.api.clone(),
        vens_connected: s.services.vens_connected,
        vens_current: s.services.vens_current,
        peers: s
            .peers
            .iter()
            .map(|p| sc_proto::federation::PeerStatus {
                node: Some(sc_proto::federation::NodeInfo {
                    node_id: p.id,
                    name: p.name.clone(),
                    region: p.region.clone(),
                    addr: p.addr.clone(),
                }),
                voter: p.voter,
                matched_index: p.matched,
                lag: p.lag,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Federation for FederationGrpc {
    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        self.node.fence().check()?;
        let req = request.into_inner();
        let cmd: Command = codec::decode(&req.command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command: {e}")))?;
        cmd.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let resp = if req.route_to_leader {
            self.node.write(cmd).await.map_err(|e| e.to_status())?
        } else {
            self.leader_only()?;
            self.node.write_here(cmd).await.map_err(attempt_status)?
        };
        let response = codec::encode(&resp).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(WriteReply { response }))
    }

    async fn read_index(
        &self,
        _: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        self.node.fence().check()?;
        self.leader_only()?;
        let read_index = self.node.read_index_here().await.map_err(attempt_status)?;
        Ok(Response::new(ReadIndexReply {
            read_index,
            leader_id: self.node.id(),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.node.fence().check()?;
        let req = request.into_inner();
        let Some(op) = membership_op(req.action) else {
            return Err(Status::invalid_argument(format!(
                "unknown membership action {}",
                req.action
            )));
        };
        let node = req
            .node
            .ok_or_else(|| Status::invalid_argument("membership change without a node"))?;
        let info = if op == MembershipOp::AddLearner {
            if !crate::pki::valid_node_name(&node.name) || node.addr.is_empty() {
                return Err(Status::invalid_argument(
                    "a new node needs a DNS-label name and an address",
                ));
            }
            Some(NodeInfo {
                name: node.name,
                region: node.region,
                addr: node.addr,
            })
        } else {
            None
        };
        // Any node accepts these (a joining node knows only its seeds) and routes
        // them to the leader itself.
        let view = self
            .node
            .change_membership(op, node.node_id, info)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(MembershipReply {
            voters: view.voters.into_iter().collect(),
            learners: view.learners.into_iter().collect(),
        }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        self.node.fence().check()?;
        let req = request.into_inner();
        if req.key.is_empty() || req.key.len() > crate::types::MAX_KEY_LEN {
            return Err(Status::invalid_argument(format!(
                "key length {} is outside 1..={}",
                req.key.len(),
                crate::types::MAX_KEY_LEN
            )));
        }
        let consistency = if req.linearizable {
            Consistency::Linearizable
        } else {
            Consistency::Local
        };
        let r = self
            .node
            .get(&req.key, consistency)
            .await
            .map_err(|e| e.to_status())?;
        let mut reply = ReadReply {
            revision: r.revision,
            applied_index: r.applied_index,
            ..Default::default()
        };
        if let Some(e) = r.value {
            reply.found = true;
            reply.value = e.value;
            reply.create_revision = e.create_revision;
            reply.mod_revision = e.mod_revision;
            reply.version = e.version;
        }
        Ok(Response::new(reply))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(status_to_proto(&self.node.status())))
    }
}
