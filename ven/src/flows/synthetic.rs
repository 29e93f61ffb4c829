//! Synthetic flows for the simulator (`pce ven-sim --flows-per-second`): each
//! simulated VEN reports summaries of made-up connections from its peers at a
//! given rate, so the member's ingest and the Explorer can be measured at
//! scale without thousands of real hosts.

use std::sync::Mutex;

use sc_proto::ven::Flow;

use super::FlowSource;

/// Made-up connections into one workload.
pub struct Synthetic {
    own: String,
    peers: Vec<String>,
    per_take: usize,
    seed: Mutex<u64>,
}

impl Synthetic {
    /// `per_take` summaries each report, into `own` from `peers` (at least one).
    pub fn new(own: String, peers: Vec<String>, per_take: usize, seed: u64) -> Synthetic {
        Synthetic {
            own,
            peers,
            per_take,
            seed: Mutex::new(seed | 1),
        }
    }
}

impl FlowSource for Synthetic {
    fn take(&self) -> (Vec<Flow>, u64) {
        let Ok(mut s) = self.seed.lock() else {
            return (vec![], 0);
        };
        let mut next = || {
            *s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *s >> 33
        };
        let now = super::now_ms();
        let flows = (0..self.per_take)
            .map(|_| {
                let peer = if self.peers.is_empty() {
                    "192.0.2.1".to_string()
                } else {
                    self.peers[next() as usize % self.peers.len()].clone()
                };
                let decision = match next() % 10 {
                    0 => "blocked",
                    1 | 2 => "potentially_blocked",
                    _ => "allowed",
                };
                let passed = decision != "blocked";
                Flow {
                    src: peer,
                    dst: self.own.clone(),
                    port: [22, 80, 443, 5432, 8080][next() as usize % 5],
                    proto: 6,
                    allowed: decision == "allowed",
                    count: 1 + next() % 5,
                    first_seen_ms: now.saturating_sub(next() % 5_000),
                    last_seen_ms: now,
                    direction: "inbound".into(),
                    decision: decision.into(),
                    rule: String::new(),
                    bytes_in: if passed { 200 + next() % 20_000 } else { 0 },
                    bytes_out: if passed { 200 + next() % 200_000 } else { 0 },
                    state: if passed { "C" } else { "" }.into(),
                }
            })
            .collect();
        (flows, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_take_makes_the_asked_number_of_summaries_into_the_workload() {
        let s = Synthetic::new(
            "10.0.0.1".into(),
            vec!["10.0.0.2".into(), "10.0.0.3".into()],
            7,
            3,
        );
        for _ in 0..3 {
            let (flows, dropped) = s.take();
            assert_eq!((flows.len(), dropped), (7, 0));
            assert!(flows.iter().all(|f| f.dst == "10.0.0.1" && f.src != f.dst));
            assert!(flows.iter().all(|f| f.first_seen_ms <= f.last_seen_ms));
        }
    }
}
