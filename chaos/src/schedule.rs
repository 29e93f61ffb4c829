//! Random fault schedules that a seed fully determines, so any run can be
//! replayed: the same seed gives the same faults, targets, holds and order.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One fault against nodes numbered `1..=n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`, then the same node started again after the hold.
    Kill(u64),
    /// SIGSTOP for the hold, then SIGCONT: a node that hangs, then wakes with
    /// stale beliefs.
    Pause(u64),
    /// The node can reach no other node and none can reach it.
    Partition(u64),
    /// Packets `from` → `to` are dropped; the other direction is untouched.
    OneWay {
        /// Sender whose packets are dropped.
        from: u64,
        /// Their destination.
        to: u64,
    },
    /// Every byte between the two nodes takes this long each way.
    Slow {
        /// One end.
        a: u64,
        /// The other end.
        b: u64,
        /// One-way delay.
        delay: Duration,
    },
    /// An operator moves leadership to this node while the load runs.
    TransferLeader(u64),
    /// This node's disk is full: every write it makes fails until the hold ends
    /// (then it is restarted, as an operator would after freeing space).
    DiskFull(u64),
    /// Every TCP connection of this node is reset, again and again through
    /// the hold, while its process lives: a leader must not be taken for dead
    /// (decision 0019), and nothing acknowledged may be lost.
    Reset(u64),
    /// `kill -9`, then the node's Raft log loses everything written since its
    /// last sync, as in a power cut (kill -9 alone keeps the page cache), and
    /// the node starts again after the hold: a leader that sent entries
    /// before its own sync (decision 0027) comes back without them.
    PowerCut(u64),
}

impl Fault {
    /// Every kind once, for coverage checks and reports.
    pub const KINDS: [&'static str; 9] = [
        "kill",
        "pause",
        "partition",
        "one-way",
        "slow",
        "transfer-leader",
        "disk-full",
        "reset",
        "power-cut",
    ];

    /// This fault's kind, one of [`Fault::KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Partition(_) => "partition",
            Fault::OneWay { .. } => "one-way",
            Fault::Slow { .. } => "slow",
            Fault::TransferLeader(_) => "transfer-leader",
            Fault::DiskFull(_) => "disk-full",
            Fault::Reset(_) => "reset",
            Fault::PowerCut(_) => "power-cut",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(n) => write!(f, "kill -9 node {n}, restart it"),
            Fault::Pause(n) => write!(f, "SIGSTOP node {n}, SIGCONT"),
            Fault::Partition(n) => write!(f, "partition node {n} from the rest"),
            Fault::OneWay { from, to } => write!(f, "drop packets node {from} -> node {to}"),
            Fault::Slow { a, b, delay } => {
                write!(
                    f,
                    "slow link node {a} <-> node {b}, {} ms each way",
                    delay.as_millis()
                )
            }
            Fault::TransferLeader(n) => write!(f, "transfer leadership to node {n}"),
            Fault::DiskFull(n) => write!(f, "fill node {n}'s disk, free it, restart it"),
            Fault::Reset(n) => write!(f, "reset every TCP connection of node {n}, repeatedly"),
            Fault::PowerCut(n) => write!(
                f,
                "power cut of node {n} (kill -9, its unsynced log lost), restart it"
            ),
        }
    }
}

/// A fault, how long it lasts, and the quiet time after it heals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What happens.
    pub fault: Fault,
    /// How long it lasts.
    pub hold: Duration,
    /// Time for the cluster to recover before the next step.
    pub gap: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} for {:.1} s, then {:.1} s quiet",
            self.fault,
            self.hold.as_secs_f64(),
            self.gap.as_secs_f64()
        )
    }
}

/// The schedule for `seed` over `nodes` nodes (at least 2): every kind of fault
/// once in a random order, then `extra` more of random kinds; targets, delays and
/// holds (`hold` is the longest) drawn from the same seed. One fault at a time,
/// so a majority of three always remains: a run tests that faults lose nothing,
/// not that a cluster survives losing its majority.
pub fn schedule(seed: u64, nodes: u64, extra: usize, hold: Duration) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<&str> = Fault::KINDS.to_vec();
    kinds.shuffle(&mut rng);
    for _ in 0..extra {
        kinds.push(Fault::KINDS[rng.random_range(0..Fault::KINDS.len())]);
    }
    let hold_ms = hold.as_millis().max(400) as u64;
    kinds
        .into_iter()
        .map(|kind| {
            let node = rng.random_range(1..=nodes);
            let other = {
                let o = rng.random_range(1..nodes);
                if o >= node {
                    o + 1
                } else {
                    o
                }
            };
            let fault = match kind {
                "kill" => Fault::Kill(node),
                "pause" => Fault::Pause(node),
                "partition" => Fault::Partition(node),
                "one-way" => Fault::OneWay {
                    from: node,
                    to: other,
                },
                "slow" => Fault::Slow {
                    a: node,
                    b: other,
                    delay: Duration::from_millis(rng.random_range(50..=400)),
                },
                "transfer-leader" => Fault::TransferLeader(node),
                "reset" => Fault::Reset(node),
                "power-cut" => Fault::PowerCut(node),
                _ => Fault::DiskFull(node),
            };
            Step {
                fault,
                hold: Duration::from_millis(rng.random_range(hold_ms / 2..=hold_ms)),
                gap: Duration::from_millis(rng.random_range(500..=1500)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_with_every_kind() {
        let hold = Duration::from_secs(3);
        for seed in [0, 1, 42, u64::MAX] {
            let s = schedule(seed, 3, 4, hold);
            assert_eq!(s, schedule(seed, 3, 4, hold), "replayable");
            assert_eq!(s.len(), Fault::KINDS.len() + 4);
            for kind in Fault::KINDS {
                assert!(s.iter().any(|st| st.fault.kind() == kind), "{kind}");
            }
            for st in &s {
                assert!(st.hold <= hold);
                if let Fault::OneWay { from, to } = st.fault {
                    assert_ne!(from, to);
                    assert!((1..=3).contains(&from) && (1..=3).contains(&to));
                }
            }
        }
        assert_ne!(schedule(1, 3, 4, hold), schedule(2, 3, 4, hold));
    }
}
