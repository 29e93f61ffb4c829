//! Our own election timer: openraft's is switched off (`enable_elect = false`)
//! and this task decides when a follower campaigns.
//!
//! Why: openraft 0.9 checks its election timer only on its tick (1.5
//! heartbeats apart), draws its random timeout once per process (so two nodes
//! that collided once collide again every round), and waits out the whole
//! leader lease before its random part starts. etcd's timer, by contrast,
//! draws a fresh random timeout every time it resets and fires within a tick
//! of it. The SPEC promises failover "never worse than etcd with equal
//! timeouts"; this module gives a follower etcd's behaviour:
//!
//! - every renewal of the vote (a heartbeat from the leader, a vote granted, a
//!   campaign started) gets a fresh deadline drawn from
//!   `election_min..=election_max`;
//! - the core is asked for its state every tenth of a heartbeat (at most
//!   50 ms), so a deadline is noticed within that much of passing;
//! - a node that is the only voter campaigns at once (a one-node cluster, or a
//!   bootstrap before others join).
//!
//! openraft still owns the vote itself: it refuses votes to a candidate while
//! its own leader lease runs (one and a half heartbeats, far inside our
//! window: [`crate::config::Timeouts::lease`]), and it refuses candidates
//! whose log is behind.
//!
//! **Pre-vote** (openraft 0.9 has none): before campaigning, a node asks every
//! voter whether it would vote (`PreVote`, which changes nothing), and
//! campaigns only when a majority, itself included, says yes. A voter says no
//! while it leads, while it heard its leader within the shortest election
//! timeout, or when the asker's log is behind its own. So a node cut off from
//! the others (fenced for a drill, partitioned, its links down) never raises
//! its term, and when it comes back it cannot depose a healthy leader; a node
//! that only lost its own link to the leader does not take over while the
//! others still hear it. When the leader is really gone, every voter's
//! timeout has passed as well and the round costs one round trip.
//!
//! **A leader whose process is gone** (decision 0019): when the leader's
//! connection closes and its address refuses connections
//! ([`crate::network::liveness`]), the follower does not wait for its
//! deadline. Once openraft's short vote lease has run out it asks for a
//! pre-vote saying so, and a voter that still heard the leader recently grants
//! it only when its own probe of the leader's address is refused too. So that
//! the survivors do not all campaign at once and split the vote, each waits
//! half a heartbeat per voter ranked before it (by id, the dead leader
//! left out), and a node that has just granted another's early pre-vote
//! waits a heartbeat more; the first usually wins before the next one's turn
//! comes.

use std::time::Duration;

use openraft::{Raft, ServerState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::network::Peers;
use crate::storage::NodeLog;
use crate::types::{NodeId, NodeInfo, TypeConfig};

/// What a node sends before campaigning.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PreVoteRequest {
    /// The asking node.
    pub candidate: NodeId,
    /// Its last log entry: a voter with a longer log says no.
    pub last_log_id: Option<openraft::LogId<NodeId>>,
    /// The leader whose process the asker found gone, if that is why it asks
    /// before its election timeout; a voter checks for itself.
    pub leader_gone: Option<NodeId>,
}

/// A voter's answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct PreVoteResponse {
    /// It would vote for the asker now.
    pub granted: bool,
}

/// The longest pause between two looks at the core: a deadline passes
/// unnoticed for at most this long (etcd's tick is 100 ms by default).
const MAX_CHECK: Duration = Duration::from_millis(50);

/// How often to look at the core for a given heartbeat.
pub(crate) fn check_interval(heartbeat: Duration) -> Duration {
    (heartbeat / 10).clamp(Duration::from_millis(1), MAX_CHECK)
}

/// What one look at the core says.
struct Look {
    state: ServerState,
    /// When the vote was last changed or confirmed by a leader's message;
    /// `None` when nothing has happened since this process started.
    renewed: Option<Instant>,
    voter: bool,
    sole_voter: bool,
    /// The vote is a leader's (committed): this node follows or leads.
    following: bool,
    /// Whom the vote is for.
    voted_for: Option<NodeId>,
    /// How many voters other than `voted_for` have a smaller id than this
    /// node: its turn after a leader's process is found gone.
    rank: u32,
}

/// A follower's current deadline: a fresh random draw for each renewal.
pub(crate) struct Deadline {
    min: Duration,
    max: Duration,
    rng: StdRng,
    /// The renewal the current draw belongs to, and the drawn timeout.
    current: Option<(Instant, Duration)>,
}

impl Deadline {
    /// A timer with the window `min..=max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Deadline {
            min,
            max,
            rng: StdRng::from_rng(&mut rand::rng()),
            current: None,
        }
    }

    /// The instant a node whose vote was last renewed at `renewed` campaigns.
    pub(crate) fn due(&mut self, renewed: Instant) -> Instant {
        match self.current {
            Some((at, timeout)) if at == renewed => renewed + timeout,
            _ => {
                let timeout = self.rng.random_range(self.min..=self.max);
                self.current = Some((renewed, timeout));
                renewed + timeout
            }
        }
    }
}

/// Runs until `stop` turns true or the core stops. `peers` says when a peer
/// refused our last campaign for having a longer log, and holds the timeouts.
pub(crate) async fn run(
    raft: Raft<TypeConfig>,
    log: NodeLog,
    peers: std::sync::Arc<Peers>,
    id: NodeId,
    mut stop: watch::Receiver<bool>,
) {
    let (heartbeat, election_min, election_max) = {
        let t = peers.timeouts();
        (t.heartbeat, t.election_min, t.election_max)
    };
    let mut deadline = Deadline::new(election_min, election_max);
    let mut tick = tokio::time::interval(check_interval(heartbeat));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Stands in for the renewal time while openraft has none (nothing heard
    // since this process started): a restarted follower gives the leader a
    // whole window to reach it before it campaigns.
    let started = Instant::now();
    // A candidate refused for a shorter log waits until then: the nodes with
    // the longest log get a window of their own (openraft's timer does the
    // same with its `smaller_log_timeout`). Without it, a node left behind by
    // a one-way partition campaigned every window, and its ever higher term
    // deposed each candidate that could win: a chaos run had no leader for
    // 17 s after the faults healed.
    let mut stand_back: Option<Instant> = None;
    // The renewal whose refused pre-vote was last logged.
    let mut refused_for: Option<Instant> = None;
    // The renewal whose early campaign (its leader's process gone) was last
    // logged.
    let mut early_for: Option<Instant> = None;
    // The gone leader this node last campaigned early against, and when.
    let mut early_campaign: Option<(NodeId, Instant)> = None;
    let rpc_timeout = peers.timeouts().rpc;
    let lease = peers.timeouts().lease();
    let turn = heartbeat / 2;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let look = raft.with_raft_state(move |st| {
            let membership = st.membership_state.effective().membership();
            let voters = membership.voter_ids().count();
            let voter = membership.voter_ids().any(|v| v == id);
            let voted_for = st.vote_ref().leader_id().voted_for();
            Look {
                state: st.server_state,
                renewed: st.vote_last_modified(),
                voter,
                sole_voter: voter && voters == 1,
                following: st.vote_ref().is_committed(),
                voted_for,
                rank: membership
                    .voter_ids()
                    .filter(|v| Some(*v) != voted_for && *v < id)
                    .count() as u32,
            }
        });
        let Ok(look) = look.await else {
            // The core has stopped; Node::failed reports why.
            return;
        };
        if !look.voter || matches!(look.state, ServerState::Leader | ServerState::Shutdown) {
            continue;
        }
        if look.sole_voter {
            if look.state != ServerState::Candidate {
                tracing::info!(id, "only voter: campaigning");
                if raft.trigger().elect().await.is_err() {
                    return;
                }
            }
            continue;
        }
        if look.following {
            // A refusal from an earlier election says nothing about the log
            // after following a leader: forget it, so it cannot slow the next
            // failover. A planned transfer is over once its target leads.
            peers.take_greater_log();
            if look.voted_for.is_some() && peers.transfer().target() == look.voted_for {
                peers.transfer().end();
            }
            stand_back = None;
        }
        let renewed = look.renewed.unwrap_or(started);
        // The leader this node follows was found gone since its last word:
        // ask as soon as the voters' leases have run out, in id order.
        if look.following {
            early_campaign = None;
        }
        let gone = look
            .voted_for
            .filter(|_| look.following)
            .and_then(|l| peers.liveness().gone_since(l, renewed).map(|at| (l, at)));
        // An early campaign that has not won after two leases (a vote answer
        // lost or late: openraft waits just under a lease for each) asks
        // again, early, instead of waiting for the whole election window.
        let retry = early_campaign
            .filter(|_| gone.is_none() && look.state == ServerState::Candidate)
            .map(|(l, at)| (l, at + lease * 2));
        let due = match (gone, retry) {
            (_, Some((_, at))) => at,
            (Some((_, at)), None) => {
                let mine = at.max(renewed + lease) + turn * look.rank;
                // Having just granted another node's early pre-vote, give
                // its campaign a heartbeat before starting one that would
                // split the vote (it found the leader gone first).
                match peers.liveness().granted_since(id, renewed) {
                    Some(granted) => mine.max(granted + heartbeat),
                    None => mine,
                }
            }
            (None, None) => deadline.due(renewed),
        };
        let gone = gone.or(retry);
        let now = Instant::now();
        if now >= due && stand_back.is_none_or(|t| now >= t) {
            if peers.take_greater_log() {
                stand_back = Some(now + election_max);
                tracing::info!(
                    id,
                    wait_ms = election_max.as_millis() as u64,
                    "a peer has a longer log: standing back before campaigning again"
                );
                continue;
            }
            if peers.transfer().target().is_some_and(|to| to != id) {
                // Leadership is being handed to another node on purpose.
                continue;
            }
            if let Some((leader, at)) = gone {
                if early_for != Some(renewed) {
                    early_for = Some(renewed);
                    tracing::info!(
                        id,
                        leader,
                        silent_ms = (now - renewed).as_millis() as u64,
                        found_gone_ms_ago = (now - at).as_millis() as u64,
                        "the leader's process is gone: asking for votes before the election timeout"
                    );
                }
            }
            let leader_gone = gone.map(|(l, _)| l);
            let (granted, of) = pre_vote(&raft, &log, &peers, id, leader_gone, rpc_timeout).await;
            if granted * 2 <= of {
                // Not now: the deadline stays passed, so the next look asks
                // again. Logged once per renewal, not per look.
                if refused_for != Some(renewed) {
                    refused_for = Some(renewed);
                    tracing::info!(
                        id,
                        granted,
                        voters = of,
                        early = leader_gone.is_some(),
                        "no majority would vote yet: not campaigning"
                    );
                }
                continue;
            }
            if leader_gone.is_some() && peers.liveness().granted_since(id, renewed).is_some() {
                // While this node asked, it granted another's early pre-vote:
                // that node campaigns now; both doing so would split the vote.
                continue;
            }
            tracing::info!(
                id,
                state = ?look.state,
                silent_ms = (now - renewed).as_millis() as u64,
                granted,
                voters = of,
                early = leader_gone.is_some(),
                "a majority would vote: campaigning"
            );
            early_campaign = leader_gone.map(|l| (l, Instant::now()));
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

/// Asks every other voter whether it would vote for this node now; returns
/// the yes votes (this node's own included) and the voters. A voter that does
/// not answer within `timeout` (or cannot be reached: a fenced node reaches
/// nobody) counts as no.
async fn pre_vote(
    raft: &Raft<TypeConfig>,
    log: &NodeLog,
    peers: &Peers,
    id: NodeId,
    leader_gone: Option<NodeId>,
    timeout: Duration,
) -> (usize, usize) {
    let Ok(voters) = raft
        .with_raft_state(|st| {
            let m = st.membership_state.effective().membership();
            m.voter_ids()
                .filter_map(|v| m.get_node(&v).map(|n| (v, n.clone())))
                .collect::<Vec<(NodeId, NodeInfo)>>()
        })
        .await
    else {
        return (0, 1);
    };
    let Ok(last_log_id) = log.last_log_id() else {
        return (0, voters.len());
    };
    let of = voters.len();
    let request = match crate::codec::encode(&PreVoteRequest {
        candidate: id,
        last_log_id,
        leader_gone,
    }) {
        Ok(r) => r,
        Err(_) => return (0, of),
    };
    let asks = voters.iter().filter(|(v, _)| *v != id).map(|(v, info)| {
        let data = request.clone();
        async move {
            let mut c = peers.raft_client(*v, info).await.ok()?;
            let call = c.pre_vote(sc_proto::raft::RaftPayload { data });
            let r = tokio::time::timeout(timeout, call).await.ok()?.ok()?;
            crate::codec::decode::<PreVoteResponse>(&r.into_inner().data)
                .ok()
                .map(|r| r.granted)
        }
    });
    // Stop at a majority: a voter that does not answer (partitioned, a
    // black-holed link) must not hold the round for the whole RPC timeout,
    // during which the next node's turn could start a round of its own.
    let mut asks: futures_util::stream::FuturesUnordered<_> = asks.collect();
    let mut yes = 1;
    while let Some(answer) = futures_util::StreamExt::next(&mut asks).await {
        if answer == Some(true) {
            yes += 1;
            if yes * 2 > of {
                break;
            }
        }
    }
    (yes, of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_renewal_draws_its_own_deadline_inside_the_window() {
        let (min, max) = (Duration::from_millis(500), Duration::from_millis(700));
        let mut d = Deadline::new(min, max);
        let base = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200u64 {
            let renewed = base + Duration::from_millis(i);
            let due = d.due(renewed);
            // The same renewal keeps its draw.
            assert_eq!(d.due(renewed), due);
            let timeout = due - renewed;
            assert!(timeout >= min && timeout <= max, "{timeout:?}");
            seen.insert(timeout.as_millis());
        }
        // Fresh draws, not one number per process (openraft's habit).
        assert!(seen.len() > 50, "only {} distinct timeouts", seen.len());
    }

    #[test]
    fn the_core_is_checked_often_but_not_in_a_busy_loop() {
        assert_eq!(
            check_interval(Duration::from_millis(100)),
            Duration::from_millis(10)
        );
        assert_eq!(check_interval(Duration::from_secs(5)), MAX_CHECK);
        assert_eq!(
            check_interval(Duration::from_micros(100)),
            Duration::from_millis(1)
        );
    }
}
