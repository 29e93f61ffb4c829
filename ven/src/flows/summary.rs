//! Per-interval flow summaries: one entry per (source, destination, port,
//! protocol, direction, decision, rule), counting connections and their bytes,
//! bounded so a scan or a flood cannot grow the agent without limit (what does
//! not fit is counted and reported as dropped).
//!
//! Two kernel sources meet here. NFLOG says what the firewall decided about a
//! new connection; conntrack says how many bytes it carried, whether it is
//! still open, and about connections no logged rule saw. The summaries keep a
//! table of open connections (five-tuple → the summary key their decision
//! gave them, and the counters already reported) to join the two: bytes
//! reported are the growth since the last report, so a long-lived
//! connection's traffic lands in the interval it flowed in.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use sc_policy::flowlog::{rule_name, Decision, Direction};

use super::conntrack::{Conn, ConnEvent, FiveTuple};
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
    /// What the firewall did (`None`: no logged decision; the member decides).
    pub decision: Option<Decision>,
    /// The deciding rule (`None`: the mode's default).
    pub rule: Option<String>,
}

/// A connection's state at the end of an interval (Illumio's letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Logged, not yet confirmed by conntrack.
    New,
    /// Open.
    Active,
    /// Ended by its endpoints.
    Closed,
    /// Ended by a timeout.
    TimedOut,
}

impl State {
    /// The letter the API shows.
    pub fn code(self) -> &'static str {
        match self {
            State::New => "N",
            State::Active => "A",
            State::Closed => "C",
            State::TimedOut => "T",
        }
    }
}

/// Connections of one key in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// New connections (logged decisions, or connections conntrack showed
    /// first).
    pub num_connections: u64,
    /// First seen (ms since the epoch).
    pub first_ms: u64,
    /// Last seen (ms since the epoch).
    pub last_ms: u64,
    /// Bytes source → destination in this interval (`None`: not counted).
    pub bytes_in: Option<u64>,
    /// Bytes destination → source in this interval.
    pub bytes_out: Option<u64>,
    /// The state of the last connection heard of.
    pub state: Option<State>,
}

impl Summary {
    fn at(now_ms: u64) -> Summary {
        Summary {
            num_connections: 0,
            first_ms: now_ms,
            last_ms: now_ms,
            bytes_in: None,
            bytes_out: None,
            state: None,
        }
    }
}

/// An open connection: the key its traffic is summarised under and the
/// counters already reported.
#[derive(Debug, Clone)]
struct Open {
    key: FlowKey,
    reported: (u64, u64),
    /// Reported closed: later sightings (TIME_WAIT) add nothing.
    closed: bool,
}

/// Open connections tracked at most (beyond: their bytes go unreported and
/// they are counted as dropped).
pub const MAX_OPEN: usize = 65_536;

/// The summaries of the current interval.
#[derive(Debug)]
pub struct Summaries {
    map: BTreeMap<FlowKey, Summary>,
    open: HashMap<FiveTuple, Open>,
    /// Endpoints whose connections are the agent's own (see [`Summaries::ignore`]).
    ignored: Vec<std::net::SocketAddr>,
    max_keys: usize,
    dropped: u64,
}

impl Summaries {
    /// Holds at most `max_keys` distinct keys per interval.
    pub fn new(max_keys: usize) -> Summaries {
        Summaries {
            map: BTreeMap::new(),
            open: HashMap::new(),
            ignored: Vec::new(),
            max_keys,
            dropped: 0,
        }
    }

    /// The summary of `key` this interval, made if there is room.
    fn entry(&mut self, key: &FlowKey, now_ms: u64) -> Option<&mut Summary> {
        if !self.map.contains_key(key) {
            if self.map.len() >= self.max_keys {
                self.dropped += 1;
                return None;
            }
            self.map.insert(key.clone(), Summary::at(now_ms));
        }
        let s = self.map.get_mut(key)?;
        s.last_ms = s.last_ms.max(now_ms);
        Some(s)
    }

    /// Leaves out connections with these endpoints from now on: the agent's
    /// own channel to its members.
    pub fn ignore(&mut self, endpoints: &[std::net::SocketAddr]) {
        self.ignored = endpoints.to_vec();
    }

    /// Whether either end of a connection is an ignored endpoint.
    fn ignored(&self, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> bool {
        self.ignored
            .iter()
            .any(|e| (e.ip() == src && e.port() == sport) || (e.ip() == dst && e.port() == dport))
    }

    /// Counts one logged connection seen at `now_ms`.
    pub fn add(&mut self, o: &Observed, now_ms: u64) {
        if self.ignored(o.src, o.src_port, o.dst, o.dst_port) {
            return;
        }
        let key = FlowKey {
            src: o.src,
            dst: o.dst,
            dst_port: o.dst_port,
            proto: o.proto,
            direction: o.logged.direction,
            decision: Some(o.logged.decision),
            rule: o.logged.rule.as_ref().map(rule_name),
        };
        let tuple = FiveTuple {
            src: o.src,
            dst: o.dst,
            proto: o.proto,
            src_port: o.src_port,
            dst_port: o.dst_port,
        };
        // The kernel batches NFLOG messages, so conntrack's NEW for the same
        // connection may have come first and been summarised without a
        // decision: move what it held to the logged key.
        let mut moved = None;
        if let Some(open) = self.open.get(&tuple) {
            if open.key.decision.is_none() {
                moved = self.map.remove(&open.key);
            }
        }
        if let Some(s) = self.entry(&key, now_ms) {
            s.num_connections += 1;
            match moved {
                Some(m) => {
                    s.first_ms = s.first_ms.min(m.first_ms);
                    s.num_connections += m.num_connections.saturating_sub(1);
                    s.bytes_in = add_opt(s.bytes_in, m.bytes_in);
                    s.bytes_out = add_opt(s.bytes_out, m.bytes_out);
                    s.state = m.state.or(s.state);
                }
                None => {
                    s.state.get_or_insert(State::New);
                }
            }
        }
        if let Some(open) = self.open.get_mut(&tuple) {
            open.key = key;
            return;
        }
        // A refused connection never reaches conntrack's table.
        if o.logged.decision != Decision::Blocked && self.open.len() < MAX_OPEN {
            self.open.insert(
                tuple,
                Open {
                    key,
                    reported: (0, 0),
                    closed: false,
                },
            );
        }
    }

    /// Adds what conntrack said about a connection at `now_ms`: its bytes
    /// since the last report and its state. A connection no logged decision
    /// announced is summarised with no decision, as inbound when `local`
    /// holds its destination and outbound when it holds its source (traffic
    /// only passing through is not the workload's).
    pub fn conn(&mut self, c: &Conn, now_ms: u64, local: impl Fn(IpAddr) -> bool) {
        let t = c.tuple;
        if self.ignored(t.src, t.src_port, t.dst, t.dst_port) {
            return;
        }
        let destroyed = matches!(c.event, ConnEvent::Destroyed { .. });
        let (key, reported, fresh) = match self.open.get(&t) {
            // Closed and reported: nothing more to say until it is destroyed.
            Some(o) if o.closed && !destroyed && c.bytes.is_none_or(|b| b == o.reported) => return,
            Some(o) => (o.key.clone(), o.reported, false),
            // Loopback traffic is accepted before any policy rule.
            None if t.src.is_loopback() || t.dst.is_loopback() => return,
            None => {
                let direction = if local(t.dst) {
                    Direction::Inbound
                } else if local(t.src) {
                    Direction::Outbound
                } else {
                    return;
                };
                let key = FlowKey {
                    src: t.src,
                    dst: t.dst,
                    dst_port: t.dst_port,
                    proto: t.proto,
                    direction,
                    decision: None,
                    rule: None,
                };
                (key, (0, 0), true)
            }
        };
        if destroyed {
            self.open.remove(&t);
        } else if fresh {
            if self.open.len() >= MAX_OPEN {
                self.dropped += 1;
                return;
            }
            self.open.insert(
                t,
                Open {
                    key: key.clone(),
                    reported: (0, 0),
                    closed: false,
                },
            );
        }
        let Some(s) = self.entry(&key, now_ms) else {
            return;
        };
        if fresh {
            s.num_connections += 1;
        }
        s.state = Some(match c.event {
            ConnEvent::New | ConnEvent::Active => State::Active,
            ConnEvent::Closing => State::Closed,
            ConnEvent::Destroyed { timed_out: true } => State::TimedOut,
            ConnEvent::Destroyed { timed_out: false } => State::Closed,
        });
        if let Some((fwd, back)) = c.bytes {
            *s.bytes_in.get_or_insert(0) += fwd.saturating_sub(reported.0);
            *s.bytes_out.get_or_insert(0) += back.saturating_sub(reported.1);
            if let Some(o) = self.open.get_mut(&t) {
                o.reported = (fwd.max(reported.0), back.max(reported.1));
            }
        }
        if c.event == ConnEvent::Closing {
            if let Some(o) = self.open.get_mut(&t) {
                o.closed = true;
            }
        }
    }

    /// Adds a dump of conntrack's whole table, then forgets open connections
    /// it no longer holds (their DESTROY event was lost to a full socket
    /// buffer), so the table of open connections cannot leak.
    pub fn dumped(&mut self, table: &[Conn], now_ms: u64, local: impl Fn(IpAddr) -> bool) {
        for c in table {
            self.conn(c, now_ms, &local);
        }
        let live: std::collections::HashSet<FiveTuple> = table.iter().map(|c| c.tuple).collect();
        self.open.retain(|t, _| live.contains(t));
    }

    /// Open connections being followed.
    pub fn open_connections(&self) -> usize {
        self.open.len()
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

/// Sums two optional counters (absent only when both are).
fn add_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    }
}

/// A summary as the `ReportFlows` RPC carries it.
pub fn to_wire(k: &FlowKey, s: &Summary) -> sc_proto::ven::Flow {
    sc_proto::ven::Flow {
        src: k.src.to_string(),
        dst: k.dst.to_string(),
        port: u32::from(k.dst_port),
        proto: u32::from(k.proto),
        allowed: k.decision == Some(Decision::Allowed),
        count: s.num_connections,
        first_seen_ms: s.first_ms,
        last_seen_ms: s.last_ms,
        direction: k.direction.as_str().into(),
        decision: k.decision.map_or("unknown", Decision::as_str).into(),
        rule: k.rule.clone().unwrap_or_default(),
        bytes_in: s.bytes_in.unwrap_or(0),
        bytes_out: s.bytes_out.unwrap_or(0),
        state: s.state.map(State::code).unwrap_or_default().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sc_policy::flowlog::Logged;
    use sc_policy::model::RuleRef;

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
            src_port: 40_000 + port,
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
            .find(|(k, _)| k.decision == Some(Decision::Allowed))
            .expect("allowed");
        assert_eq!(allowed.0.rule.as_deref(), Some("rs/r1"));
        assert_eq!(
            (
                allowed.1.num_connections,
                allowed.1.first_ms,
                allowed.1.last_ms
            ),
            (2, 5, 9)
        );
        assert_eq!(allowed.1.state, Some(State::New));
        assert!(s.is_empty(), "take starts a new interval");
    }

    fn conn(event: ConnEvent, port: u16, bytes: (u64, u64)) -> Conn {
        Conn {
            event,
            tuple: FiveTuple {
                src: "10.0.0.1".parse().unwrap(),
                dst: "10.0.0.2".parse().unwrap(),
                proto: 6,
                src_port: 40_000 + port,
                dst_port: port,
            },
            bytes: Some(bytes),
        }
    }

    #[test]
    fn conntrack_bytes_join_the_logged_decision_and_count_growth_once() {
        let local = |ip: IpAddr| ip == "10.0.0.2".parse::<IpAddr>().unwrap();
        let mut s = Summaries::new(10);
        s.add(&seen(80, Decision::Allowed), 1);
        s.conn(&conn(ConnEvent::New, 80, (60, 0)), 2, local);
        s.conn(&conn(ConnEvent::Active, 80, (500, 9000)), 3, local);
        let (got, _) = s.take();
        assert_eq!(got.len(), 1, "one connection, one summary");
        let first = got[0].1;
        assert_eq!(first.num_connections, 1);
        assert_eq!((first.bytes_in, first.bytes_out), (Some(500), Some(9000)));
        assert_eq!(first.state, Some(State::Active));
        // The next interval carries only what flowed since, under the same
        // decision, and the close.
        s.conn(
            &conn(ConnEvent::Destroyed { timed_out: false }, 80, (700, 9100)),
            4,
            local,
        );
        let (got, _) = s.take();
        assert_eq!(got[0].0.decision, Some(Decision::Allowed));
        assert_eq!(got[0].0.rule.as_deref(), Some("rs/r1"));
        let next = got[0].1;
        assert_eq!(next.num_connections, 0, "not a new connection");
        assert_eq!((next.bytes_in, next.bytes_out), (Some(200), Some(100)));
        assert_eq!(next.state, Some(State::Closed));
        assert_eq!(s.open_connections(), 0);
    }

    #[test]
    fn a_logged_decision_arriving_after_conntrack_new_takes_the_connection_over() {
        let local = |ip: IpAddr| ip == "10.0.0.2".parse::<IpAddr>().unwrap();
        let mut s = Summaries::new(10);
        s.conn(&conn(ConnEvent::New, 80, (60, 0)), 1, local);
        s.add(&seen(80, Decision::Allowed), 2);
        s.conn(&conn(ConnEvent::Active, 80, (500, 900)), 3, local);
        let (got, _) = s.take();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0.decision, Some(Decision::Allowed));
        assert_eq!(got[0].1.num_connections, 1);
        assert_eq!(got[0].1.bytes_out, Some(900));
    }

    #[test]
    fn a_connection_only_conntrack_saw_has_no_decision_and_a_direction() {
        let mut s = Summaries::new(10);
        // Opened before the agent: first heard of in a dump.
        s.conn(&conn(ConnEvent::Active, 5432, (10, 20)), 1, |ip| {
            ip == "10.0.0.1".parse::<IpAddr>().unwrap()
        });
        // Passing through (neither end local): not the workload's.
        s.conn(&conn(ConnEvent::Active, 22, (1, 1)), 1, |_| false);
        let (got, _) = s.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.decision, None);
        assert_eq!(got[0].0.direction, Direction::Outbound);
        let wire = to_wire(&got[0].0, &got[0].1);
        assert_eq!(
            (wire.decision.as_str(), wire.state.as_str(), wire.count),
            ("unknown", "A", 1)
        );
    }

    #[test]
    fn the_agents_own_channel_is_left_out_both_ways() {
        let mut s = Summaries::new(10);
        s.ignore(&["10.0.0.1:40080".parse().unwrap()]);
        // seen(80): 10.0.0.1:40080 -> 10.0.0.2:80, the ignored endpoint as source.
        s.add(&seen(80, Decision::Blocked), 1);
        s.conn(&conn(ConnEvent::Active, 80, (1, 1)), 1, |_| true);
        s.add(&seen(81, Decision::Blocked), 1);
        let (got, _) = s.take();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0.dst_port, 81);
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
