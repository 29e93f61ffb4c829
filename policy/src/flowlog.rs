//! The contract between a rendered firewall and the VEN's flow collector.
//!
//! Every rule the renderer writes that decides a new connection also hands the
//! packet to NFLOG group [`NFLOG_GROUP`] with a prefix saying what was decided
//! and by which rule (`sc:<decision>:<direction>:<rule>`). The kernel then
//! tells the agent about each decision as it is made, with no text to scrape;
//! the agent reads the prefix back with [`parse`]. Both sides live here so the
//! format is written once.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::compute::{Action, CompiledPolicy};
use crate::model::{EnforcementMode, Proto, RuleRef, VisibilityLevel};

/// The NFLOG group the rendered rules log to and the VEN listens on.
pub const NFLOG_GROUP: u16 = 7;

/// What the firewall did with a new connection, in Illumio's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A rule allowed it.
    Allowed,
    /// No rule allows it, yet it passed: the workload (or this kind of rule)
    /// is not enforced in its mode. Enforcing would block it.
    PotentiallyBlocked,
    /// Dropped, by a deny rule or by the default deny.
    Blocked,
}

impl Decision {
    fn code(self) -> char {
        match self {
            Decision::Allowed => 'a',
            Decision::PotentiallyBlocked => 'p',
            Decision::Blocked => 'b',
        }
    }

    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::PotentiallyBlocked => "potentially_blocked",
            Decision::Blocked => "blocked",
        }
    }

    /// Reads [`Decision::as_str`] back (`None` for anything else, such as
    /// `unknown`).
    pub fn parse(s: &str) -> Option<Decision> {
        [
            Decision::Allowed,
            Decision::PotentiallyBlocked,
            Decision::Blocked,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// A rule as flows name it: `<ruleset>/<rule>`, or the boundary's id.
pub fn rule_name(r: &RuleRef) -> String {
    match r {
        RuleRef::Allow { rule_set, rule } | RuleRef::Deny { rule_set, rule } => {
            format!("{rule_set}/{rule}")
        }
        RuleRef::Boundary { boundary } => boundary.clone(),
    }
}

/// Whether a workload at visibility level `v` has its firewall log a
/// decision of this kind for its VEN to report.
pub fn logs(v: VisibilityLevel, d: Decision) -> bool {
    match v {
        VisibilityLevel::FlowOff => false,
        VisibilityLevel::FlowDrops => d != Decision::Allowed,
        _ => true,
    }
}

/// The protocol a flow's IANA number names, when policy can name it.
pub fn proto_of(number: u8) -> Option<Proto> {
    match number {
        6 => Some(Proto::Tcp),
        17 => Some(Proto::Udp),
        1 | 58 => Some(Proto::Icmp),
        _ => None,
    }
}

/// What `c`'s rendered firewall decides, and logs, about a new connection
/// with `peer` (the source inbound, the destination outbound): the same
/// choice the renderer writes into the rules (`crate::render`), for flows the
/// VEN could not see decided (conntrack only) and for the draft's verdict on
/// observed traffic. `None` where the firewall decides nothing: an idle
/// workload, outbound outside full mode, a protocol policy cannot name.
pub fn decide(
    c: &CompiledPolicy,
    direction: Direction,
    peer: IpAddr,
    proto: u8,
    port: u16,
) -> Option<(Decision, Option<RuleRef>)> {
    let proto = proto_of(proto)?;
    let enforce = match c.mode {
        EnforcementMode::Idle => return None,
        EnforcementMode::VisibilityOnly => false,
        EnforcementMode::Selective | EnforcementMode::Full => true,
    };
    let full = c.mode == EnforcementMode::Full;
    let rules = match direction {
        Direction::Inbound => &c.inbound,
        Direction::Outbound if full => &c.outbound,
        Direction::Outbound => return None,
    };
    // Rules are in precedence order: the first match decides.
    if let Some(r) = rules
        .iter()
        .find(|r| r.peers.contains(peer) && r.ports.matches(proto, port))
    {
        let d = match (r.action, enforce) {
            (Action::Allow, _) => Decision::Allowed,
            (_, true) => Decision::Blocked,
            (_, false) => Decision::PotentiallyBlocked,
        };
        return Some((d, Some((*r.source).clone())));
    }
    let d = if full {
        Decision::Blocked
    } else {
        Decision::PotentiallyBlocked
    };
    Some((d, None))
}

/// Which way the connection goes, seen from the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Into the workload (its input chain).
    Inbound,
    /// Out of the workload (its output chain).
    Outbound,
}

impl Direction {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    fn code(self) -> &'static str {
        match self {
            Direction::Inbound => "in",
            Direction::Outbound => "out",
        }
    }
}

/// A logged decision as the prefix carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// What was decided.
    pub decision: Decision,
    /// On which chain.
    pub direction: Direction,
    /// The rule that decided; `None` for the mode's default.
    pub rule: Option<RuleRef>,
}

impl fmt::Display for Logged {
    /// The NFLOG prefix: `sc:a:in:r:<ruleset>/<rule>`, `sc:b:out:` (default),
    /// `sc:b:in:d:<ruleset>/<rule>`, `sc:b:in:e:<boundary>`. Ids are the
    /// store's (36 characters), so a prefix stays within NFLOG's 127.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sc:{}:{}:", self.decision.code(), self.direction.code())?;
        match &self.rule {
            None => Ok(()),
            Some(RuleRef::Allow { rule_set, rule }) => write!(f, "r:{rule_set}/{rule}"),
            Some(RuleRef::Deny { rule_set, rule }) => write!(f, "d:{rule_set}/{rule}"),
            Some(RuleRef::Boundary { boundary }) => write!(f, "e:{boundary}"),
        }
    }
}

/// Reads a prefix written by [`Logged`]'s `Display`; `None` for anything else
/// (another program's NFLOG rule on the same group, a damaged message).
pub fn parse(prefix: &str) -> Option<Logged> {
    let rest = prefix.strip_prefix("sc:")?;
    let (d, rest) = rest.split_once(':')?;
    let (dir, rule) = rest.split_once(':')?;
    let decision = match d {
        "a" => Decision::Allowed,
        "p" => Decision::PotentiallyBlocked,
        "b" => Decision::Blocked,
        _ => return None,
    };
    let direction = match dir {
        "in" => Direction::Inbound,
        "out" => Direction::Outbound,
        _ => return None,
    };
    let pair = |s: &str| {
        let (rs, r) = s.split_once('/')?;
        (!rs.is_empty() && !r.is_empty()).then(|| (rs.to_string(), r.to_string()))
    };
    let rule = if rule.is_empty() {
        None
    } else if let Some(s) = rule.strip_prefix("r:") {
        let (rule_set, rule) = pair(s)?;
        Some(RuleRef::Allow { rule_set, rule })
    } else if let Some(s) = rule.strip_prefix("d:") {
        let (rule_set, rule) = pair(s)?;
        Some(RuleRef::Deny { rule_set, rule })
    } else if let Some(s) = rule.strip_prefix("e:") {
        (!s.is_empty()).then(|| RuleRef::Boundary {
            boundary: s.to_string(),
        })
    } else {
        return None;
    };
    Some(Logged {
        decision,
        direction,
        rule,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_reads_back_as_written_and_fits_nflog() {
        let id = "0123456789abcdef0123456789abcdef0123";
        for rule in [
            None,
            Some(RuleRef::Allow {
                rule_set: id.into(),
                rule: id.into(),
            }),
            Some(RuleRef::Deny {
                rule_set: id.into(),
                rule: id.into(),
            }),
            Some(RuleRef::Boundary {
                boundary: id.into(),
            }),
        ] {
            for decision in [
                Decision::Allowed,
                Decision::PotentiallyBlocked,
                Decision::Blocked,
            ] {
                for direction in [Direction::Inbound, Direction::Outbound] {
                    let l = Logged {
                        decision,
                        direction,
                        rule: rule.clone(),
                    };
                    let text = l.to_string();
                    assert!(text.len() < 128, "{text}");
                    assert_eq!(parse(&text), Some(l));
                }
            }
        }
    }

    #[test]
    fn foreign_or_damaged_prefixes_are_not_read() {
        for p in [
            "",
            "sc:",
            "sc:x:in:",
            "sc:a:up:",
            "sc:a:in:r:",
            "sc:a:in:r:/x",
            "other",
            "sc:a:in:z:1",
        ] {
            assert_eq!(parse(p), None, "{p:?}");
        }
    }
}
