//! The federation service: what one region asks of another besides Raft itself.
//!
//! A member forwards writes and membership changes to the leader here, asks it
//! for a read index, and any node answers status queries. Requests that reach a
//! node that is not (or no longer) the leader are refused with
//! [`crate::convert::not_leader`]; the sender retries against the leader it then
//! learns of. There is no multi-hop forwarding.
//!
//! This is server code on top of [`Node`]: it converts each request with
//! [`crate::convert`] and calls the node; the node never calls back into it.
//! A read answered here also tells the worker's spinner ([`ReadSpin`]), which
//! keeps the worker awake while reads come back to back.

use std::sync::Arc;

use sc_proto::federation::federation_server::Federation;
use sc_proto::federation::{
    FlowQuery, FlowQueryReply, MembershipReply, MembershipRequest, PrepareTransferReply,
    PrepareTransferRequest, ReadIndexReply, ReadIndexRequest, ReadReply, ReadRequest, StatusReply,
    StatusRequest, VenPoliciesReply, VenPoliciesRequest, WriteReply, WriteRequest,
};
use tonic::{Request, Response, Status};

use crate::codec;
use crate::convert::{self, not_leader, ProtoError};
use crate::network::read_spin::ReadSpin;
use crate::node::{Attempt, Node};
use crate::types::Command;

/// The federation gRPC service of one node.
pub struct FederationGrpc {
    node: Node,
    /// Keeps the worker awake between reads that come back to back.
    spin: Arc<ReadSpin>,
}

impl FederationGrpc {
    /// Serves `node`; `spin` is told of every read answered.
    pub fn new(node: Node, spin: Arc<ReadSpin>) -> Self {
        FederationGrpc { node, spin }
    }

    /// Refuses a caller that is not a member (see [`crate::network::callers`]).
    fn member_only<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        self.node.require_member(req, what)
    }

    fn leader_only(&self) -> Result<(), Status> {
        if self.node.is_leader() {
            Ok(())
        } else {
            Err(not_leader(format!("node {} does not lead", self.node.id())))
        }
    }
}

fn attempt_status(a: Attempt) -> Status {
    match a {
        Attempt::Retry(why) => not_leader(why),
        Attempt::Fail(e) => e.to_status(),
    }
}

fn bad_request(e: ProtoError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl Federation for FederationGrpc {
    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        self.node.fence().check()?;
        self.member_only(&request, "Write")?;
        let req = request.into_inner();
        let cmd: Command = codec::decode(&req.command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command: {e}")))?;
        let resp = if req.route_to_leader {
            // `Node::write` checks the command's limits itself.
            self.node.write(cmd).await.map_err(|e| e.to_status())?
        } else {
            cmd.validate()
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.leader_only()?;
            self.node.write_here(cmd).await.map_err(attempt_status)?
        };
        let response = codec::encode(&resp).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(WriteReply { response }))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        self.node.fence().check()?;
        self.member_only(&request, "ReadIndex")?;
        self.leader_only()?;
        let asker = crate::network::callers::caller_name(&request);
        let r = request.into_inner();
        let claim = crate::read_index::Claim::from_wire(r.follows_term, r.follows_leader);
        let read_index = self
            .node
            .read_index_for(asker, claim)
            .await
            .map_err(attempt_status)?;
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
        let caller = crate::network::callers::caller_name(&request);
        let members = self.node.member_infos();
        let (op, id, info) =
            convert::membership_from_proto(request.into_inner()).map_err(bad_request)?;
        // A node may ask to be added as a learner under its own name (it
        // knows only its seeds); anything else needs a member's certificate.
        let self_join = op == crate::MembershipOp::AddLearner
            && info.as_ref().map(|i| &i.name) == caller.as_ref();
        let known = members.is_empty()
            || caller
                .as_ref()
                .is_some_and(|c| members.iter().any(|(_, m)| &m.name == c));
        if !self_join && !known {
            return Err(Status::permission_denied(format!(
                "ChangeMembership: {caller:?} is not a member of this cluster; a node may only ask to join under its own name (operators use the admin API)"
            )));
        }
        // Any node accepts these (a joining node knows only its seeds) and routes
        // them to the leader itself.
        let view = self
            .node
            .change_membership(op, id, info)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(convert::membership_reply(view)))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let arrival = self.spin.arrived();
        self.node.fence().check()?;
        self.member_only(&request, "Read")?;
        let (key, consistency) =
            convert::read_from_proto(request.into_inner()).map_err(bad_request)?;
        let r = self
            .node
            .get(&key, consistency)
            .await
            .map_err(|e| e.to_status())?;
        self.spin.served(arrival);
        Ok(Response::new(convert::read_reply(r)))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(convert::status_to_proto(&self.node.status())))
    }

    async fn query_flows(
        &self,
        request: Request<FlowQuery>,
    ) -> Result<Response<FlowQueryReply>, Status> {
        // A fenced region is down for the drill: it answers no query either.
        self.node.fence().check()?;
        self.member_only(&request, "QueryFlows")?;
        self.node
            .local_flows(request.into_inner())
            .await
            .map(Response::new)
            .map_err(Status::unavailable)
    }

    async fn ven_policies(
        &self,
        request: Request<VenPoliciesRequest>,
    ) -> Result<Response<VenPoliciesReply>, Status> {
        // A fenced region serves no VENs for the drill: it has none to report.
        self.node.fence().check()?;
        self.member_only(&request, "VenPolicies")?;
        Ok(Response::new(VenPoliciesReply {
            vens: self.node.ven_policies(),
        }))
    }

    async fn prepare_transfer(
        &self,
        request: Request<PrepareTransferRequest>,
    ) -> Result<Response<PrepareTransferReply>, Status> {
        self.node.fence().check()?;
        self.member_only(&request, "PrepareTransfer")?;
        self.leader_only()?;
        let req = request.into_inner();
        // Writes wait at most this long: a transfer takes a lease and a vote.
        let hold = std::time::Duration::from_millis(req.hold_ms.min(10_000));
        let last_log_index = self
            .node
            .prepare_transfer(req.to, hold)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(PrepareTransferReply { last_log_index }))
    }
}
