//! The core watchdog: a node that silently stops taking part in Raft is the
//! worst kind of failure (its region is served from a frozen replica, and
//! nothing in openraft's own logs says so), so every node asks its own Raft
//! core a question every few seconds and logs, at INFO, each change of role
//! and vote, and at ERROR a core that does not answer or a voter that has
//! known no leader and not campaigned for many election windows.

use std::time::Duration;

use openraft::{Raft, ServerState};
use tokio::sync::watch;

use crate::types::{NodeId, TypeConfig};

/// How often the core is asked.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// An answer later than this means the core is stuck (it answers in
/// microseconds when healthy, and a loaded machine takes milliseconds).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What one answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    state: ServerState,
    vote: String,
    /// Time since the vote last changed or was confirmed by a leader.
    vote_age: Option<Duration>,
}

/// Stops the Raft core when a sync of its log fails. Before decision 0027 the
/// failed append's callback stopped it; a leader's own appends are now
/// reported flushed before their sync, so nothing would, and a leader whose
/// disk has failed would keep its followers from electing another while it
/// can commit nothing.
pub(crate) async fn stop_core_on_log_failure(
    raft: Raft<TypeConfig>,
    log: crate::storage::durable::Durable,
    id: NodeId,
    mut stop: watch::Receiver<bool>,
) {
    let failed = tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        failed = log.failed() => failed,
    };
    if failed {
        tracing::error!(
            id,
            "a Raft log sync failed: stopping this node's Raft core so that another node leads"
        );
        let _ = raft.shutdown().await;
    }
}

/// Runs until `stop` turns true or the core has stopped.
pub(crate) async fn watch_core(
    raft: Raft<TypeConfig>,
    id: NodeId,
    election_max: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Seen> = None;
    let mut stuck_since: Option<tokio::time::Instant> = None;
    let mut warned_idle = false;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let asked = tokio::time::Instant::now();
        let probe = raft.with_raft_state(|st| Seen {
            state: st.server_state,
            vote: st.vote_ref().to_string(),
            vote_age: st.vote_last_modified().map(|t| t.elapsed()),
        });
        let seen = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(seen)) => seen,
            // The core has stopped; Node::failed reports why.
            Ok(Err(_)) => return,
            Err(_) => {
                let since = *stuck_since.get_or_insert(asked);
                tracing::error!(
                    id,
                    stuck_for_s = since.elapsed().as_secs(),
                    "the Raft core has not answered in {PROBE_TIMEOUT:?}: this node takes no part in Raft"
                );
                continue;
            }
        };
        if let Some(since) = stuck_since.take() {
            tracing::warn!(
                id,
                after_s = since.elapsed().as_secs(),
                "the Raft core answers again"
            );
        }
        let changed = last
            .as_ref()
            .is_none_or(|l| l.state != seen.state || l.vote != seen.vote);
        if changed {
            tracing::info!(id, state = ?seen.state, vote = %seen.vote, "raft role or vote changed");
            warned_idle = false;
        }
        // A voter without a leader campaigns within one election window of its
        // vote's last change; ten windows without one means it has stopped.
        let leaderless = raft.metrics().borrow().current_leader.is_none();
        let idle = seen.vote_age.is_some_and(|a| a > election_max * 10);
        if leaderless && idle && seen.state != ServerState::Learner && !warned_idle {
            tracing::error!(
                id,
                state = ?seen.state,
                vote = %seen.vote,
                vote_age_ms = seen.vote_age.map(|a| a.as_millis() as u64),
                "no leader known and no election for ten election windows"
            );
            warned_idle = true;
        }
        last = Some(seen);
    }
}
