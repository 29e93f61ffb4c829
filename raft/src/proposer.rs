//! Concurrent writes on the leader share Raft entries.
//!
//! openraft 0.9's core is one task that handles every entry on its own: the
//! client message, an append to the log, a flush notice, a replication event
//! per follower, a commit and an apply. Measured with 64 writers
//! (docs/benchmarks.md), that task set the pace while the disk and both cores
//! had time to spare: a write waited about 12 ms, mostly in the core's queue.
//!
//! The proposer puts a write into Raft at once when few are in flight, and
//! otherwise lets writes gather while earlier entries commit, then proposes
//! them as one [`Proposal`] (group commit, as the log's flusher does for
//! fsyncs). One writer pays nothing: its write goes straight through. Each
//! command keeps its own answer, session and preconditions; the state machine
//! applies a proposal's commands in order, exactly as if they were entries of
//! their own.

use std::sync::Arc;

use openraft::error::ClientWriteError;
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::types::{Command, CommandResponse, NodeId, Proposal, TypeConfig};

/// Entries proposed and not yet answered. More lets more writes go straight
/// through; fewer makes them gather into bigger entries sooner. Against two
/// (one entry replicating while the next is appended), three measured about
/// 7 % more writes at 16 writers and 2 % at 64, and no change for a single
/// writer; four did better at 16 but no better at 64 (`docs/benchmarks.md`,
/// "Entries in flight, again").
const IN_FLIGHT: usize = 3;

/// The most commands in one entry.
const MAX_COMMANDS: usize = 1024;

/// The most command bytes in one entry (a larger command goes alone), so an
/// entry stays well inside what one AppendEntries carries
/// (`network::raft_client`).
const MAX_BYTES: usize = 128 * 1024;

/// What a command costs in an entry beyond its keys and values (ids, serial,
/// lengths), so many tiny commands cannot add up past [`MAX_BYTES`] unseen.
const COMMAND_OVERHEAD: usize = 64;

/// Writes waiting to be proposed. A leader that cannot commit (its quorum is
/// gone) makes writers wait here instead of growing the queue without bound.
const QUEUE: usize = 16 * 1024;

fn cost(cmd: &Command) -> usize {
    cmd.payload_bytes() + COMMAND_OVERHEAD
}

/// Why a proposed write got no answer; cloned to every writer of the entry.
#[derive(Debug, Clone)]
pub(crate) enum ProposeError {
    /// This node no longer leads (the leader it knows of, if any).
    NotLeader(Option<NodeId>),
    /// openraft refused the write for a membership reason.
    Membership(String),
    /// The Raft core has stopped.
    Stopped(String),
}

type Answer = Result<CommandResponse, ProposeError>;

/// A write waiting to be proposed.
struct Waiting {
    cmd: Command,
    answer: oneshot::Sender<Answer>,
}

/// The leader's side of a node's writes: hands commands to the proposing task.
pub(crate) struct Proposer {
    tx: mpsc::Sender<Waiting>,
}

impl Proposer {
    /// Starts the proposing task on `runtime`; it ends when the proposer is dropped.
    pub(crate) fn start(raft: Raft<TypeConfig>, runtime: &tokio::runtime::Handle) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        runtime.spawn(run(raft, rx));
        Proposer { tx }
    }

    /// Proposes `cmd` and waits for its answer (after commit and apply).
    /// Dropping the future leaves the command to be committed or not: the
    /// outcome is then unknown, as with any write whose answer is lost.
    pub(crate) async fn propose(&self, cmd: Command) -> Answer {
        let (answer, rx) = oneshot::channel();
        self.tx
            .send(Waiting { cmd, answer })
            .await
            .map_err(|_| ProposeError::Stopped("the proposer has stopped".into()))?;
        rx.await
            .map_err(|_| ProposeError::Stopped("the Raft core dropped the write".into()))?
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Waiting>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    // A command that did not fit into the last entry starts the next.
    let mut carried: Option<Waiting> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        // While every slot is taken, writes gather in the channel.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = cost(&first.cmd);
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS {
            let Ok(next) = rx.try_recv() else { break };
            let size = cost(&next.cmd);
            if bytes + size > MAX_BYTES {
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        // A writer that gave up (its write timed out) is not proposed: it was
        // told the outcome is unknown, and a planned transfer that waited out
        // the writes in flight must not see it enter the log afterwards.
        batch.retain(|w| !w.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (commands, answers): (Vec<Command>, Vec<oneshot::Sender<Answer>>) =
            batch.into_iter().map(|w| (w.cmd, w.answer)).unzip();
        // Handed to the core here, in arrival order; answered on its own task.
        match raft.client_write_ff(Proposal { commands }).await {
            Ok(result) => {
                tokio::spawn(async move {
                    let _slot = permit;
                    let outcome = match result.await {
                        Ok(Ok(r)) => Ok(r.data),
                        Ok(Err(ClientWriteError::ForwardToLeader(f))) => {
                            Err(ProposeError::NotLeader(f.leader_id))
                        }
                        Ok(Err(ClientWriteError::ChangeMembershipError(e))) => {
                            Err(ProposeError::Membership(e.to_string()))
                        }
                        Err(_) => Err(ProposeError::Stopped(
                            "the Raft core stopped before answering".into(),
                        )),
                    };
                    answer_all(answers, outcome);
                });
            }
            Err(fatal) => answer_all(answers, Err(ProposeError::Stopped(fatal.to_string()))),
        }
    }
}

/// Sends each writer its own answer (the entry's answers are in command order).
fn answer_all(
    answers: Vec<oneshot::Sender<Answer>>,
    outcome: Result<Vec<CommandResponse>, ProposeError>,
) {
    match outcome {
        Ok(responses) if responses.len() == answers.len() => {
            for (tx, r) in answers.into_iter().zip(responses) {
                // A writer that gave up is fine.
                let _ = tx.send(Ok(r));
            }
        }
        Ok(responses) => {
            let e = ProposeError::Stopped(format!(
                "an entry of {} commands was answered {} times",
                answers.len(),
                responses.len()
            ));
            for tx in answers {
                let _ = tx.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for tx in answers {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}
