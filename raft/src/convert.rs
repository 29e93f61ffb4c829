//! Every conversion between the federation protocol's messages and this
//! crate's own types, in one place, both ways.
//!
//! The federation server, the node (when it forwards to the leader) and the
//! operator [`crate::Client`] all speak the same messages; keeping the mapping
//! here means none of them imports another to reuse it, and a field added to
//! the protocol is mapped once. Opaque payloads (a write's command and its
//! answer) are not mapped field by field: they go through [`crate::codec`].
//!
//! This module depends only on the domain types below it ([`crate::types`],
//! [`crate::status`], the read result of the state machine), never on the
//! node or a server.

use sc_proto::federation as proto;
use sc_proto::federation::{
    MembershipAction, MembershipReply, MembershipRequest, ReadReply, ReadRequest, StatusReply,
};
use tonic::Status;

use crate::status::{NodeStatus, PeerStatus, Services};
use crate::storage::state_machine::ReadResult;
use crate::types::MAX_KEY_LEN;
use crate::types::{Consistency, KvEntry, MembershipOp, MembershipView, NodeId, NodeInfo};

/// The start of the message of a refusal because this node does not lead: the
/// sender recognises it (see [`is_not_leader`]) and retries against the leader
/// it then learns of. There is no multi-hop forwarding.
pub const NOT_LEADER: &str = "not the leader";

/// Why a federation request cannot be turned into a request to a node. The
/// server answers it as `INVALID_ARGUMENT` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The membership action is not one this release knows.
    #[error("unknown membership action {0}")]
    UnknownAction(i32),
    /// A membership change names no node.
    #[error("membership change without a node")]
    MissingNode,
    /// A node to add lacks a usable name or an address.
    #[error("a new node needs a DNS-label name and an address")]
    IncompleteNode,
    /// A read's key is empty or too long.
    #[error("key length {0} is outside 1..={MAX_KEY_LEN}")]
    KeyLength(usize),
}

/// The refusal a node answers with when only the leader may serve a request.
pub fn not_leader(why: impl std::fmt::Display) -> Status {
    Status::failed_precondition(format!("{NOT_LEADER}: {why}"))
}

/// Whether a peer's answer is a [`not_leader`] refusal (leadership moved: retry).
pub fn is_not_leader(status: &Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition && status.message().starts_with(NOT_LEADER)
}

/// Converts a node's info to its wire form.
pub fn node_info_to_proto(id: NodeId, info: &NodeInfo) -> proto::NodeInfo {
    proto::NodeInfo {
        node_id: id,
        name: info.name.clone(),
        region: info.region.clone(),
        addr: info.addr.clone(),
    }
}

/// A node's id and info from their wire form.
fn node_info_from_proto(node: proto::NodeInfo) -> (NodeId, NodeInfo) {
    let info = NodeInfo {
        name: node.name,
        region: node.region,
        addr: node.addr,
    };
    (node.node_id, info)
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
        None => proto::NodeInfo {
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

/// The membership change a wire request asks for: what to do, to which node,
/// and (to add a node only) how to reach it, which must be complete.
pub fn membership_from_proto(
    req: MembershipRequest,
) -> Result<(MembershipOp, NodeId, Option<NodeInfo>), ProtoError> {
    let op = membership_op(req.action).ok_or(ProtoError::UnknownAction(req.action))?;
    let (id, info) = node_info_from_proto(req.node.ok_or(ProtoError::MissingNode)?);
    if op != MembershipOp::AddLearner {
        return Ok((op, id, None));
    }
    if !crate::pki::valid_node_name(&info.name) || info.addr.is_empty() {
        return Err(ProtoError::IncompleteNode);
    }
    Ok((op, id, Some(info)))
}

/// The wire form of a membership.
pub fn membership_reply(view: MembershipView) -> MembershipReply {
    MembershipReply {
        voters: view.voters.into_iter().collect(),
        learners: view.learners.into_iter().collect(),
    }
}

/// The membership a reply reports.
pub fn membership_view(reply: MembershipReply) -> MembershipView {
    MembershipView {
        voters: reply.voters.into_iter().collect(),
        learners: reply.learners.into_iter().collect(),
    }
}

/// The key a wire read asks for and how fresh the answer must be.
pub fn read_from_proto(req: ReadRequest) -> Result<(Vec<u8>, Consistency), ProtoError> {
    if req.key.is_empty() || req.key.len() > MAX_KEY_LEN {
        return Err(ProtoError::KeyLength(req.key.len()));
    }
    let consistency = if req.linearizable {
        Consistency::Linearizable
    } else {
        Consistency::Local
    };
    Ok((req.key, consistency))
}

/// The wire form of a read's answer.
pub fn read_reply(r: ReadResult<Option<KvEntry>>) -> ReadReply {
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
    reply
}

/// A read's answer from its wire form.
pub fn read_result_from_proto(r: ReadReply) -> ReadResult<Option<KvEntry>> {
    ReadResult {
        value: r.found.then_some(KvEntry {
            value: r.value,
            create_revision: r.create_revision,
            mod_revision: r.mod_revision,
            version: r.version,
        }),
        revision: r.revision,
        applied_index: r.applied_index,
    }
}

/// Converts a status reply back into the status struct.
pub fn status_from_proto(r: StatusReply) -> NodeStatus {
    let (id, info) = node_info_from_proto(r.node.unwrap_or_default());
    NodeStatus {
        id,
        name: info.name,
        region: info.region,
        addr: info.addr,
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
        membership_changing: r.membership_changing,
        services: Services {
            api: r.api_addr,
            vens_connected: r.vens_connected,
            vens_current: r.vens_current,
            ven_resyncs: r.ven_resyncs,
            pid: r.pid,
            release: r.release,
            protocol: r.protocol,
        },
        peers: r
            .peers
            .into_iter()
            .map(|p| {
                let (id, info) = node_info_from_proto(p.node.unwrap_or_default());
                PeerStatus {
                    id,
                    name: info.name,
                    region: info.region,
                    addr: info.addr,
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
        node: Some(proto::NodeInfo {
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
        membership_changing: s.membership_changing,
        api_addr: s.services.api.clone(),
        vens_connected: s.services.vens_connected,
        vens_current: s.services.vens_current,
        ven_resyncs: s.services.ven_resyncs,
        pid: s.services.pid,
        release: s.services.release.clone(),
        protocol: s.services.protocol,
        peers: s
            .peers
            .iter()
            .map(|p| proto::PeerStatus {
                node: Some(proto::NodeInfo {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_changes_round_trip_and_a_new_node_must_be_reachable() {
        let info = NodeInfo {
            name: "eu-west-1".into(),
            region: "eu-west".into(),
            addr: "10.0.0.2:7000".into(),
        };
        let req = membership_request(MembershipOp::AddLearner, 7, Some(&info));
        assert_eq!(
            membership_from_proto(req),
            Ok((MembershipOp::AddLearner, 7, Some(info)))
        );
        let req = membership_request(MembershipOp::Demote, 7, None);
        assert_eq!(
            membership_from_proto(req),
            Ok((MembershipOp::Demote, 7, None))
        );
        let req = membership_request(MembershipOp::AddLearner, 7, None);
        assert_eq!(membership_from_proto(req), Err(ProtoError::IncompleteNode));
        let req = MembershipRequest {
            action: 99,
            node: None,
        };
        assert_eq!(
            membership_from_proto(req),
            Err(ProtoError::UnknownAction(99))
        );
    }

    #[test]
    fn reads_round_trip_and_keys_are_bounded() {
        let r = ReadResult {
            value: Some(KvEntry {
                value: b"v".to_vec(),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
            }),
            revision: 5,
            applied_index: Some(9),
        };
        let back = read_result_from_proto(read_reply(r.clone()));
        assert_eq!(back.value, r.value);
        assert_eq!((back.revision, back.applied_index), (5, Some(9)));
        let req = ReadRequest {
            key: vec![],
            linearizable: true,
        };
        assert_eq!(read_from_proto(req), Err(ProtoError::KeyLength(0)));
    }

    #[test]
    fn a_not_leader_refusal_is_recognised() {
        assert!(is_not_leader(&not_leader("node 2 does not lead")));
        assert!(!is_not_leader(&Status::failed_precondition("no quorum")));
    }
}
