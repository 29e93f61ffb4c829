//! A linearizability checker for the replicated store, key by key.
//!
//! Each key is a register (put / read). A history is linearizable if every
//! operation can be placed at one instant between its invocation and its
//! response, in an order where every read returns the latest preceding write.
//! Keys are independent (a put touches one key), so each key is checked alone,
//! as etcd's tests do with porcupine. The search is Wing & Gong's with
//! memoisation of (operations done, register value).
//!
//! A write whose outcome is unknown (it timed out or failed after it may have
//! been sent) has no response time: it may take effect at any point after its
//! invocation, or never.

use std::collections::{BTreeMap, HashSet};

/// A register value: `None` when the key is absent.
pub type Value = Option<Vec<u8>>;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Set the key.
    Write(Vec<u8>),
    /// Observed this value.
    Read(Value),
}

/// One client operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Which client issued it (for reports).
    pub client: usize,
    /// The key.
    pub key: Vec<u8>,
    /// What it did.
    pub kind: OpKind,
    /// When it was invoked (ns since the run started).
    pub invoke: u64,
    /// When it returned successfully; `None` when the outcome is unknown.
    pub complete: Option<u64>,
}

/// A key whose history admits no linearization (or whose search ran out of budget).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: Vec<u8>,
    /// The search gave up after [`STATE_BUDGET`] states without deciding: treated
    /// as a failure, since a checker that cannot decide proves nothing.
    pub gave_up: bool,
    /// Its operations, in invocation order.
    pub ops: Vec<Op>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "key {:?} is not linearizable:",
            String::from_utf8_lossy(&self.key)
        )?;
        for op in &self.ops {
            let what = match &op.kind {
                OpKind::Write(v) => format!("write {:?}", String::from_utf8_lossy(v)),
                OpKind::Read(v) => format!(
                    "read {:?}",
                    v.as_ref().map(|v| String::from_utf8_lossy(v).to_string())
                ),
            };
            let end = op
                .complete
                .map(|c| format!("{c}"))
                .unwrap_or_else(|| "unknown".into());
            writeln!(f, "  client {} [{} .. {end}] {what}", op.client, op.invoke)?;
        }
        Ok(())
    }
}

/// Checks every key of a history; reads that failed must not be included
/// (they observed nothing). Returns the keys that cannot be linearized.
pub fn check(history: &[Op]) -> Result<(), Vec<Violation>> {
    // A write of unknown outcome that no read ever observed can be taken to have
    // never happened: placing it could only hide values no read returned. Values
    // are unique per write, so this removes the biggest source of search branching
    // (clients retrying against a failed leader) without changing the verdict.
    let observed: HashSet<(&[u8], &[u8])> = history
        .iter()
        .filter_map(|o| match &o.kind {
            OpKind::Read(Some(v)) => Some((o.key.as_slice(), v.as_slice())),
            _ => None,
        })
        .collect();
    let mut by_key: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in history {
        let unobserved_unknown = match &op.kind {
            OpKind::Write(v) => {
                op.complete.is_none() && !observed.contains(&(op.key.as_slice(), v.as_slice()))
            }
            OpKind::Read(_) => false,
        };
        if !unobserved_unknown {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    let mut violations = Vec::new();
    for (key, mut ops) in by_key {
        ops.sort_by_key(|o| o.invoke);
        let verdict = linearizable(&ops);
        if verdict != Some(true) {
            violations.push(Violation {
                key: key.to_vec(),
                gave_up: verdict.is_none(),
                ops: ops.into_iter().cloned().collect(),
            });
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

/// The most search states explored for one key before giving up.
pub const STATE_BUDGET: usize = 2_000_000;

/// `Some(true)` if linearizable, `Some(false)` if not, `None` if undecided.
fn linearizable(ops: &[&Op]) -> Option<bool> {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    // Depth-first over (done set, register value); explicit stack to bound recursion.
    let mut stack: Vec<(Vec<u64>, Value)> = vec![(vec![0; words], None)];
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    while let Some((done, value)) = stack.pop() {
        if !seen.insert((done.clone(), value.clone())) {
            continue;
        }
        if seen.len() > STATE_BUDGET {
            return None;
        }
        // Finished when every remaining op is a write of unknown outcome (which may
        // never take effect).
        if (0..n).all(|i| {
            is_done(&done, i)
                || (ops[i].complete.is_none() && matches!(ops[i].kind, OpKind::Write(_)))
        }) {
            return Some(true);
        }
        // An op may go next only if no pending op completed before it was invoked.
        let horizon = (0..n)
            .filter(|&i| !is_done(&done, i))
            .filter_map(|i| ops[i].complete)
            .min()
            .unwrap_or(u64::MAX);
        // Pushed latest first, so the earliest-invoked candidate is tried first:
        // real histories are mostly sequential, and this finds their order without
        // backtracking.
        for i in (0..n).rev() {
            if is_done(&done, i) || ops[i].invoke > horizon {
                continue;
            }
            let next_value = match &ops[i].kind {
                OpKind::Write(v) => Some(v.clone()),
                OpKind::Read(observed) => {
                    if *observed != value {
                        continue;
                    }
                    value.clone()
                }
            };
            let mut next = done.clone();
            next[i / 64] |= 1 << (i % 64);
            stack.push((next, next_value));
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(client: usize, v: &str, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            client,
            key: b"k".to_vec(),
            kind: OpKind::Write(v.as_bytes().to_vec()),
            invoke,
            complete,
        }
    }

    fn r(client: usize, v: Option<&str>, invoke: u64, complete: u64) -> Op {
        Op {
            client,
            key: b"k".to_vec(),
            kind: OpKind::Read(v.map(|s| s.as_bytes().to_vec())),
            invoke,
            complete: Some(complete),
        }
    }

    /// A long history from a simulated register with three overlapping clients and
    /// some writes of unknown outcome: the search must stay near-linear.
    #[test]
    fn long_concurrent_histories_are_checked_quickly() {
        let mut ops = Vec::new();
        let mut value: Option<String> = None;
        let mut t = 100u64;
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for i in 0..3000u64 {
            // Each op takes effect at `t`; its window opens up to 3 ticks earlier and
            // closes up to 3 later, so neighbours overlap.
            t += 10;
            let invoke = t - next() % 30;
            let complete = t + next() % 30;
            let client = (i % 3) as usize;
            if next() % 2 == 0 {
                let v = format!("v{i}");
                value = Some(v.clone());
                let unknown = next() % 50 == 0;
                ops.push(w(client, &v, invoke, (!unknown).then_some(complete)));
            } else {
                ops.push(r(client, value.as_deref(), invoke, complete));
            }
        }
        assert!(check(&ops).is_ok());
    }

    #[test]
    fn sequential_and_overlapping_histories_pass() {
        assert!(check(&[w(1, "a", 0, Some(10)), r(2, Some("a"), 11, 20)]).is_ok());
        // A read overlapping a write may see either value.
        assert!(check(&[
            w(1, "a", 0, Some(10)),
            w(1, "b", 11, Some(30)),
            r(2, Some("a"), 12, 20)
        ])
        .is_ok());
        assert!(check(&[
            w(1, "a", 0, Some(10)),
            w(1, "b", 11, Some(30)),
            r(2, Some("b"), 12, 20)
        ])
        .is_ok());
        assert!(check(&[r(2, None, 0, 5), w(1, "a", 6, Some(10))]).is_ok());
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_fails() {
        let h = [
            w(1, "a", 0, Some(10)),
            w(1, "b", 11, Some(20)),
            r(2, Some("a"), 21, 30),
        ];
        let v = check(&h).unwrap_err();
        assert_eq!(v.len(), 1);
        assert!(v[0].to_string().contains("not linearizable"));
    }

    #[test]
    fn a_lost_acknowledged_write_fails() {
        // Acknowledged, then never seen by a later read.
        assert!(check(&[w(1, "a", 0, Some(10)), r(2, None, 20, 30)]).is_err());
    }

    #[test]
    fn writes_of_unknown_outcome_may_or_may_not_take_effect() {
        assert!(check(&[w(1, "a", 0, None), r(2, None, 20, 30)]).is_ok());
        assert!(check(&[w(1, "a", 0, None), r(2, Some("a"), 20, 30)]).is_ok());
        // But not before they were invoked.
        assert!(check(&[r(2, Some("a"), 0, 5), w(1, "a", 10, None)]).is_err());
        // And once seen, a value cannot be unseen without another write.
        assert!(check(&[
            w(1, "a", 0, None),
            r(2, Some("a"), 20, 30),
            r(2, None, 31, 40)
        ])
        .is_err());
    }
}
