//! Per-interval flow summaries: one entry per (source, destination, port,
//! protocol, direction, decision, rule), counting connections, bounded so a
//! scan or a flood cannot grow the agent without limit (what does not fit is
//! counted and reported as dropped).

use std::collections::BTreeMap;
use std::net::IpAddr;

use sc_policy::flowlog::{Decision, Direction};
use sc_policy::model::RuleRef;

use super::Observed;

/// What a summary is kept per.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port (0: none).
    pub dst_port: u16,
    /// IANA protocol.
    pub proto: u8,
    /// Seen from the workload.
    pub direction: Direction,
    /// What the firewall did.
    pub decision: Decision,
    /// The deciding rule (`None`: the mode's default).
    pub rule: Option<String>,
}

/// Connections of one key in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// New connections (logged decisions).
    pub num_connections: u64,
    /// First seen (ms since the epoch).
    pub first_ms: u64,
    /// Last seen (ms since the epoch).
    pub last_ms: u64,
}

/// The summaries of the current interval.
#[derive(Debug)]
pub struct Summaries {
    map: BTreeMap<FlowKey, Summary>,
    max_keys: usize,
    dropped: u64,
}

/// A rule as the summary names it: `<ruleset>/<rule>` or `<boundary>`.
fn rule_name(r: &RuleRef) -> String {
    match r {
        RuleRef::Allow { rule_set, rule } | RuleRef::Deny { rule_set, rule } => {
            format!("{rule_set}/{rule}")
        }
        RuleRef::Boundary { boundary } => boundary.clone(),
    }
}

impl Summaries {
    /// Holds at most `max_keys` distinct keys per interval.
    pub fn new(max_keys: usize) -> Summaries {
        Summaries {
            map: BTreeMap::new(),
            max_keys,
            dropped: 0,
        }
    }

    /// Counts one logged connection seen at `now_ms`.
    pub fn add(&mut self, o: &Observed, now_ms: u64) {
        let key = FlowKey {
            src: o.src,
            dst: o.dst,
            dst_port: o.dst_port,
            proto: o.proto,
            direction: o.logged.direction,
            decision: o.logged.decision,
            rule: o.logged.rule.as_ref().map(rule_name),
        };
        if let Some(s) = self.map.get_mut(&key) {
            s.num_connections += 1;
            s.last_ms = s.last_ms.max(now_ms);
            return;
        }
        if self.map.len() >= self.max_keys {
            self.dropped += 1;
            return;
        }
        self.map.insert(
            key,
            Summary {
                num_connections: 1,
                first_ms: now_ms,
                last_ms: now_ms,
            },
        );
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Takes the interval's summaries and the count of connections that did
    /// not fit, starting a new interval.
    pub fn take(&mut self) -> (Vec<(FlowKey, Summary)>, u64) {
        let map = std::mem::take(&mut self.map);
        (map.into_iter().collect(), std::mem::take(&mut self.dropped))
    }
}

/// A summary as the `ReportFlows` RPC carries it.
pub fn to_wire(k: &FlowKey, s: &Summary) -> sc_proto::ven::Flow {
    sc_proto::ven::Flow {
        src: k.src.to_string(),
        dst: k.dst.to_string(),
        port: u32::from(k.dst_port),
        proto: u32::from(k.proto),
        allowed: k.decision == Decision::Allowed,
        count: s.num_connections,
        first_seen_ms: s.first_ms,
        last_seen_ms: s.last_ms,
        direction: match k.direction {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
        .into(),
        decision: k.decision.as_str().into(),
        rule: k.rule.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sc_policy::flowlog::Logged;

    fn seen(port: u16, decision: Decision) -> Observed {
        Observed {
            logged: Logged {
                decision,
                direction: Direction::Inbound,
                rule: Some(RuleRef::Allow {
                    rule_set: "rs".into(),
                    rule: "r1".into(),
                }),
            },
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: 6,
            dst_port: port,
        }
    }

    #[test]
    fn connections_of_one_key_are_counted_once_with_their_time_range() {
        let mut s = Summaries::new(10);
        s.add(&seen(80, Decision::Allowed), 5);
        s.add(&seen(80, Decision::Allowed), 9);
        s.add(&seen(80, Decision::Blocked), 7);
        let (got, dropped) = s.take();
        assert_eq!(dropped, 0);
        assert_eq!(got.len(), 2);
        let allowed = got
            .iter()
            .find(|(k, _)| k.decision == Decision::Allowed)
            .expect("allowed");
        assert_eq!(allowed.0.rule.as_deref(), Some("rs/r1"));
        assert_eq!(
            allowed.1,
            Summary {
                num_connections: 2,
                first_ms: 5,
                last_ms: 9
            }
        );
        assert!(s.is_empty(), "take starts a new interval");
    }

    #[test]
    fn keys_beyond_the_bound_are_counted_as_dropped_not_kept() {
        let mut s = Summaries::new(2);
        for port in 1..=5 {
            s.add(&seen(port, Decision::Blocked), 1);
        }
        // A known key still counts when the map is full.
        s.add(&seen(1, Decision::Blocked), 2);
        assert_eq!(s.len(), 2);
        let (got, dropped) = s.take();
        assert_eq!(dropped, 3);
        assert_eq!(got[0].1.num_connections, 2);
    }
}
