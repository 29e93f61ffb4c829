//! A read index confirmed by the voter that asks for it (decision 0026).
//!
//! A linearizable read on a follower asks the leader for a read index. The
//! leader must know it was still the leader at some moment after the read was
//! invoked; openraft's `ensure_linearizable` learns it from a round of
//! heartbeats to every voter, a round trip that a single reader pays on every
//! read. But the follower that asks is itself a voter: if, when it asks, its
//! vote is the leader's committed vote (same term, same leader), it has granted
//! no vote in any later term. Should the asker and the leader together form a
//! quorum of every configuration in force (in three voters they always do), no
//! other leader can have been elected before the asker sent its request,
//! because every election needs a vote from one of them: from the asker, whose
//! vote would then be newer, or from the leader, which would then no longer
//! lead when it reads its own state. The leader's commit index at that moment,
//! once an entry of its own term is committed, covers every write acknowledged
//! before the read began.
//!
//! No clock is involved (unlike a lease), so the early elections of decision
//! 0019 do not weaken it. Whenever a condition does not hold (a claim of
//! another term, five voters, a joint configuration the pair does not
//! dominate, a fresh leader whose first entry is not committed, an asker of an
//! older release that sends no claim), the leader falls back to the heartbeat
//! round.

use std::collections::BTreeSet;

use openraft::{LogId, Membership, RaftState, ServerState, Vote};

use crate::types::{NodeId, NodeInfo};

/// What an asking follower says of itself: the term and the leader of its
/// vote, read from its Raft state after the read was invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The term of the asker's committed vote.
    pub(crate) term: u64,
    /// The leader that vote accepted.
    pub(crate) leader: NodeId,
}

impl Claim {
    /// The claim a follower makes: only a committed vote (the follower has
    /// accepted a leader's entries or heartbeats) says whom it follows.
    pub(crate) fn of<I: openraft::Instant>(
        state: &RaftState<NodeId, NodeInfo, I>,
    ) -> Option<Claim> {
        let vote = state.vote_ref();
        if !vote.committed || state.server_state != ServerState::Follower {
            return None;
        }
        Some(Claim {
            term: vote.leader_id.term,
            leader: vote.leader_id.node_id,
        })
    }

    /// The wire form: term 0 means "no claim" (a fresh node, or an older
    /// release, which sends nothing).
    pub(crate) fn from_wire(term: u64, leader: NodeId) -> Option<Claim> {
        (term > 0).then_some(Claim { term, leader })
    }
}

/// On the leader: the read index the asker's claim confirms, or `None` when
/// the heartbeat round is needed. Runs inside the Raft core
/// (`with_raft_state`), so the leadership, the membership and the commit index
/// it reads belong to one moment.
pub(crate) fn confirmed_by<I: openraft::Instant>(
    state: &RaftState<NodeId, NodeInfo, I>,
    me: NodeId,
    asker: &str,
    claim: Claim,
) -> Option<u64> {
    Leadership {
        leads: state.server_state == ServerState::Leader,
        vote: state.vote_ref(),
        committed: state.committed,
        membership: state.membership_state.effective().membership(),
    }
    .confirmed_by(me, asker, claim)
}

/// The parts of the leader's Raft state the decision reads (apart, so that
/// tests can build them).
struct Leadership<'a> {
    leads: bool,
    vote: &'a Vote<NodeId>,
    committed: Option<LogId<NodeId>>,
    membership: &'a Membership<NodeId, NodeInfo>,
}

impl Leadership<'_> {
    fn confirmed_by(&self, me: NodeId, asker: &str, claim: Claim) -> Option<u64> {
        let vote = self.vote;
        if !self.leads
            || !vote.committed
            || vote.leader_id.node_id != me
            || vote.leader_id.term != claim.term
            || claim.leader != me
        {
            return None;
        }
        // The asker is named by its certificate, never by what it says.
        let asker_id = self
            .membership
            .nodes()
            .find(|(_, info)| info.name == asker)
            .map(|(id, _)| *id)?;
        if !pair_is_quorum(self.membership.get_joint_config(), me, asker_id) {
            return None;
        }
        // Until an entry of this term commits, the commit index may lag
        // entries an earlier leader committed: openraft's read index waits for
        // the leader's first entry, and so does this by declining.
        let committed = self.committed?;
        if committed.leader_id.term != vote.leader_id.term || committed.leader_id.node_id != me {
            return None;
        }
        Some(committed.index)
    }
}

/// Whether two distinct voters hold a majority of every configuration (one in
/// a uniform membership, both during a joint change).
pub(crate) fn pair_is_quorum(configs: &[BTreeSet<NodeId>], a: NodeId, b: NodeId) -> bool {
    if a == b || configs.is_empty() {
        return false;
    }
    configs.iter().all(|voters| {
        let held = usize::from(voters.contains(&a)) + usize::from(voters.contains(&b));
        held * 2 > voters.len()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_leader_and_one_follower_are_a_quorum_of_three_voters_only() {
        assert!(pair_is_quorum(&[set(&[1, 2, 3])], 1, 2));
        assert!(pair_is_quorum(&[set(&[1, 2])], 1, 2));
        // Five voters need a third confirmation: the heartbeat round.
        assert!(!pair_is_quorum(&[set(&[1, 2, 3, 4, 5])], 1, 2));
        // Four voters: two of four is no majority.
        assert!(!pair_is_quorum(&[set(&[1, 2, 3, 4])], 1, 2));
        // A learner (in no configuration) confirms nothing.
        assert!(!pair_is_quorum(&[set(&[1, 2, 3])], 1, 9));
    }

    #[test]
    fn the_same_node_twice_is_not_two_votes() {
        assert!(!pair_is_quorum(&[set(&[1, 2, 3])], 1, 1));
        assert!(!pair_is_quorum(&[set(&[1])], 1, 1));
    }

    #[test]
    fn a_joint_configuration_needs_a_majority_of_both_halves() {
        // Moving from {1,2,3} to {1,2,4}: the pair holds both.
        assert!(pair_is_quorum(&[set(&[1, 2, 3]), set(&[1, 2, 4])], 1, 2));
        // Moving from {1,2,3} to {3,4,5}: the pair has no voice in the new half.
        assert!(!pair_is_quorum(&[set(&[1, 2, 3]), set(&[3, 4, 5])], 1, 2));
        assert!(!pair_is_quorum(&[], 1, 2));
    }

    /// Three voters named node-1..3; node 1 leads term 5 and has committed
    /// index 40 of its own term.
    fn leader_of_three() -> (Vote<NodeId>, Membership<NodeId, NodeInfo>) {
        let nodes: std::collections::BTreeMap<NodeId, NodeInfo> = (1..=3)
            .map(|id| {
                let info = NodeInfo {
                    name: format!("node-{id}"),
                    region: "r".into(),
                    addr: format!("127.0.0.1:{}", 7000 + id),
                };
                (id, info)
            })
            .collect();
        (
            Vote::new_committed(5, 1),
            Membership::new(vec![set(&[1, 2, 3])], nodes),
        )
    }

    fn log_id(term: u64, leader: NodeId, index: u64) -> LogId<NodeId> {
        LogId::new(openraft::CommittedLeaderId::new(term, leader), index)
    }

    #[test]
    fn a_follower_of_this_term_confirms_the_commit_index() {
        let (vote, membership) = leader_of_three();
        let l = Leadership {
            leads: true,
            vote: &vote,
            committed: Some(log_id(5, 1, 40)),
            membership: &membership,
        };
        let claim = Claim { term: 5, leader: 1 };
        assert_eq!(l.confirmed_by(1, "node-2", claim), Some(40));
        // Another term, another leader, or a stranger's certificate: no.
        assert_eq!(
            l.confirmed_by(1, "node-2", Claim { term: 4, leader: 1 }),
            None
        );
        assert_eq!(
            l.confirmed_by(1, "node-2", Claim { term: 6, leader: 1 }),
            None
        );
        assert_eq!(
            l.confirmed_by(1, "node-2", Claim { term: 5, leader: 3 }),
            None
        );
        assert_eq!(l.confirmed_by(1, "node-9", claim), None);
        // The leader cannot confirm itself.
        assert_eq!(l.confirmed_by(1, "node-1", claim), None);
    }

    #[test]
    fn a_leader_that_is_not_sure_of_its_term_declines() {
        let (vote, membership) = leader_of_three();
        let claim = Claim { term: 5, leader: 1 };
        // Deposed (the core no longer leads).
        let deposed = Leadership {
            leads: false,
            vote: &vote,
            committed: Some(log_id(5, 1, 40)),
            membership: &membership,
        };
        assert_eq!(deposed.confirmed_by(1, "node-2", claim), None);
        // Fresh: nothing of term 5 is committed yet.
        let fresh = Leadership {
            leads: true,
            vote: &vote,
            committed: Some(log_id(4, 3, 39)),
            membership: &membership,
        };
        assert_eq!(fresh.confirmed_by(1, "node-2", claim), None);
        // A vote not yet committed (a candidate's).
        let candidate = Vote::new(5, 1);
        let campaigning = Leadership {
            leads: true,
            vote: &candidate,
            committed: Some(log_id(5, 1, 40)),
            membership: &membership,
        };
        assert_eq!(campaigning.confirmed_by(1, "node-2", claim), None);
    }

    #[test]
    fn no_claim_on_the_wire_is_term_zero() {
        assert_eq!(Claim::from_wire(0, 3), None);
        assert_eq!(Claim::from_wire(7, 3), Some(Claim { term: 7, leader: 3 }));
    }
}
