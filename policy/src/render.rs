//! Rendering: a workload's compiled rules as an nftables ruleset, and the
//! human explanation of one flow.
//!
//! The ruleset is one `nft -f` transaction: it creates the table (so the delete
//! cannot fail), deletes it, and declares it anew. nft applies the whole file
//! atomically, so the host never runs with half a policy.

use std::fmt::Write;
use std::net::IpAddr;

use crate::addr::{AddrSet, Family};
use crate::compute::{Action, CompiledPolicy, CompiledRule, Ports, Verdict};
use crate::flowlog::{Decision, Direction, Logged, NFLOG_GROUP};
use crate::model::{EnforcementMode, PortRange, Proto, VisibilityLevel};

/// The nftables table every VEN owns.
pub const TABLE: &str = "pce";

fn set_name(dir: &str, i: usize, family: Family) -> String {
    let f = match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    };
    format!("{dir}{i}_{f}")
}

/// The port matches of one compiled rule, one per protocol; `None` if the rule
/// covers every protocol and port.
fn port_matches(ports: &Ports) -> Option<Vec<String>> {
    let list = match ports {
        Ports::All => return None,
        Ports::Some(l) => l,
    };
    let mut out = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let of: Vec<&PortRange> = list.iter().filter(|p| p.proto == proto).collect();
        if of.is_empty() {
            continue;
        }
        let name = if proto == Proto::Tcp { "tcp" } else { "udp" };
        if of.iter().any(|p| p.port.is_none()) {
            out.push(format!("meta l4proto {name}"));
            continue;
        }
        let items: Vec<String> = of
            .iter()
            .filter_map(|p| p.interval())
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        out.push(format!("{name} dport {{ {} }}", items.join(", ")));
    }
    if list.iter().any(|p| p.proto == Proto::Icmp) {
        out.push("meta l4proto { icmp, ipv6-icmp }".to_string());
    }
    Some(out)
}

fn verdict(a: Action) -> &'static str {
    match a {
        Action::Allow => "accept",
        Action::Deny | Action::OverrideDeny => "drop",
    }
}

/// Distinct peer sets of a direction, in first-use order, so rules that share
/// peers (the same consumers, the same IP list) share one nft set.
fn distinct_sets(rules: &[CompiledRule]) -> Vec<&AddrSet> {
    let mut sets: Vec<&AddrSet> = Vec::new();
    for r in rules {
        if !sets.contains(&&*r.peers) {
            sets.push(&r.peers);
        }
    }
    sets
}

/// The NFLOG statement (with a trailing space) that reports a decision to the
/// VEN's flow collector, or nothing when the workload's visibility level does
/// not report that kind of decision.
fn log(
    vis: VisibilityLevel,
    decision: Decision,
    direction: Direction,
    rule: Option<&crate::model::RuleRef>,
) -> String {
    if !crate::flowlog::logs(vis, decision) {
        return String::new();
    }
    let l = Logged {
        decision,
        direction,
        rule: rule.cloned(),
    };
    format!("log prefix \"{l}\" group {NFLOG_GROUP} ")
}

/// Renders one direction's rules. Each logs its decision (see
/// [`crate::flowlog`]); when the mode does not enforce (`enforce` false:
/// visibility only), a deny rule accepts and logs `potentially_blocked`.
fn render_rules(
    out: &mut String,
    rules: &[CompiledRule],
    dir: &str,
    addr_kw: &str,
    enforce: bool,
    vis: VisibilityLevel,
) {
    let direction = if dir == "in" {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let sets = distinct_sets(rules);
    for r in rules {
        let i = sets.iter().position(|s| *s == &*r.peers).unwrap_or(0);
        let (decision, verdict) = match (r.action, enforce) {
            (Action::Allow, _) => (Decision::Allowed, "accept"),
            (_, true) => (Decision::Blocked, verdict(r.action)),
            (_, false) => (Decision::PotentiallyBlocked, "accept"),
        };
        let verdict = format!(
            "{}{verdict}",
            log(vis, decision, direction, Some(&r.source))
        );
        let comment = format!("comment \"{}\"", r.source.to_string().replace('"', "'"));
        let ports = port_matches(&r.ports);
        for (family, kw) in [(Family::V4, "ip"), (Family::V6, "ip6")] {
            if r.peers.ranges(family).next().is_none() {
                continue;
            }
            let peer = format!("{kw} {addr_kw} @{}", set_name(dir, i, family));
            match &ports {
                None => {
                    let _ = writeln!(out, "    {peer} {verdict} {comment}");
                }
                Some(list) => {
                    for m in list {
                        let _ = writeln!(out, "    {peer} {m} {verdict} {comment}");
                    }
                }
            }
        }
    }
}

fn render_sets(out: &mut String, rules: &[CompiledRule], dir: &str) {
    for (i, set) in distinct_sets(rules).into_iter().enumerate() {
        for (family, ty) in [(Family::V4, "ipv4_addr"), (Family::V6, "ipv6_addr")] {
            let cidrs = set.cidrs(family);
            if cidrs.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  set {} {{", set_name(dir, i, family));
            let _ = writeln!(out, "    type {ty}; flags interval;");
            let _ = writeln!(out, "    elements = {{ {} }}", cidrs.join(", "));
            let _ = writeln!(out, "  }}");
        }
    }
}

/// The `nft -f` input that replaces the workload's table atomically.
pub fn nftables(c: &CompiledPolicy) -> String {
    nftables_with_control(c, &[])
}

/// [`nftables`], keeping the VEN's own channel to the PCE open: outbound TCP to
/// each `control` endpoint is accepted before any policy rule (replies are
/// covered by the established-state rule), so a full-mode or quarantined workload
/// can always reach its members.
pub fn nftables_with_control(c: &CompiledPolicy, control: &[std::net::SocketAddr]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Supercluster policy for workload {} ({:?} mode)",
        c.workload, c.mode
    );
    let _ = writeln!(out, "table inet {TABLE} {{}}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    if c.mode == EnforcementMode::Idle {
        // Idle: nothing programmed; the delete above removes any earlier policy.
        return out;
    }
    let enforce = matches!(c.mode, EnforcementMode::Selective | EnforcementMode::Full);
    let _ = writeln!(out, "table inet {TABLE} {{");
    render_sets(&mut out, &c.inbound, "in");
    if c.mode == EnforcementMode::Full {
        render_sets(&mut out, &c.outbound, "out");
    }
    let input_policy = if c.mode == EnforcementMode::Full {
        "drop"
    } else {
        "accept"
    };
    let _ = writeln!(out, "  chain input {{");
    let _ = writeln!(
        out,
        "    type filter hook input priority 0; policy {input_policy};"
    );
    let _ = writeln!(out, "    ct state established,related accept");
    // Packets of no known connection that open none (late retransmits, stray
    // replies) are not connection attempts: decided by the mode's default
    // before any rule logs them as one.
    let _ = writeln!(out, "    ct state invalid {input_policy}");
    let _ = writeln!(out, "    iif \"lo\" accept");
    // No inbound exception for the PCE's side of the VEN's channel: a rule
    // matching its source port would let anything sent from that port
    // through. Its replies are established once the VEN's next packet is
    // tracked; the agent leaves the channel out of its flows.
    render_rules(&mut out, &c.inbound, "in", "saddr", enforce, c.visibility);
    // What no rule decided: the mode's default. Full mode drops it (the
    // chain's policy); the others let it pass, which enforcing would not.
    let default = if c.mode == EnforcementMode::Full {
        Decision::Blocked
    } else {
        Decision::PotentiallyBlocked
    };
    let default = log(c.visibility, default, Direction::Inbound, None);
    let default = match (default.is_empty(), enforce) {
        (false, true) => Some(default.trim_end().to_string()),
        (false, false) => Some(format!("{default}accept")),
        (true, true) => None,
        (true, false) => Some("accept".to_string()),
    };
    if let Some(line) = default {
        let _ = writeln!(out, "    {line}");
    }
    let _ = writeln!(out, "  }}");
    if c.mode == EnforcementMode::Full {
        let _ = writeln!(out, "  chain output {{");
        let _ = writeln!(out, "    type filter hook output priority 0; policy drop;");
        let _ = writeln!(out, "    ct state established,related accept");
        let _ = writeln!(out, "    ct state invalid drop");
        let _ = writeln!(out, "    oif \"lo\" accept");
        for ep in control {
            let fam = if ep.is_ipv4() { "ip" } else { "ip6" };
            let _ = writeln!(
                out,
                "    {fam} daddr {} tcp dport {} accept comment \"pce control channel\"",
                ep.ip(),
                ep.port()
            );
        }
        render_rules(&mut out, &c.outbound, "out", "daddr", true, c.visibility);
        let default = log(c.visibility, Decision::Blocked, Direction::Outbound, None);
        if !default.is_empty() {
            let _ = writeln!(out, "    {}", default.trim_end());
        }
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "}}");
    out
}

/// Why a flow into the workload is allowed or blocked, in one sentence.
pub fn explain_inbound(c: &CompiledPolicy, src: IpAddr, proto: Proto, port: u16) -> String {
    let (v, rule) = c.decide_inbound(src, proto, port);
    let what = format!("{src} -> {} {proto:?}/{port}", c.workload);
    let verdict = if v == Verdict::Allowed {
        "allowed"
    } else {
        "blocked"
    };
    match (rule, c.mode) {
        (Some(r), _) => format!("{what} is {verdict} by {}", r.source),
        (None, EnforcementMode::Idle) => {
            format!("{what} is allowed: the workload is idle (nothing enforced)")
        }
        (None, EnforcementMode::VisibilityOnly) => {
            format!("{what} is allowed: visibility only (reported, never blocked)")
        }
        (None, EnforcementMode::Selective) => {
            format!("{what} is allowed: no deny rule matches and selective mode allows the rest")
        }
        (None, EnforcementMode::Full) => {
            format!("{what} is blocked: no rule allows it and full mode denies by default")
        }
    }
}

/// Why a flow between two addresses is allowed or blocked, looking at both ends:
/// the destination workload's inbound rules and, in full mode, the source
/// workload's outbound rules. Addresses outside the managed estate enforce nothing.
pub fn explain_flow(
    engine: &crate::Engine,
    src: IpAddr,
    dst: IpAddr,
    proto: Proto,
    port: u16,
) -> String {
    let compiled = engine.all_compiled();
    let owner = |ip: IpAddr| {
        compiled
            .values()
            .find(|c| c.addresses.contains(&ip))
            .cloned()
    };
    let mut lines = Vec::new();
    let mut allowed = true;
    match owner(dst) {
        Some(d) => {
            allowed &= d.decide_inbound(src, proto, port).0 == Verdict::Allowed;
            lines.push(format!(
                "inbound at {}: {}",
                d.workload,
                explain_inbound(&d, src, proto, port)
            ));
        }
        None => lines.push(format!(
            "{dst} is not a managed workload: nothing enforced there"
        )),
    }
    if let Some(s) = owner(src) {
        let (v, rule) = s.decide_outbound(dst, proto, port);
        allowed &= v == Verdict::Allowed;
        let why = match (v, rule, s.mode) {
            (_, Some(r), _) => format!("allowed by {}", r.source),
            (Verdict::Allowed, None, _) => format!(
                "allowed: {:?} mode does not restrict outbound traffic",
                s.mode
            ),
            (Verdict::Blocked, None, _) => {
                "blocked: no rule allows it and full mode denies outbound by default".to_string()
            }
        };
        lines.push(format!(
            "outbound at {}: {src} -> {dst} {proto:?}/{port} is {why}",
            s.workload
        ));
    }
    let verdict = if allowed { "ALLOWED" } else { "BLOCKED" };
    format!(
        "{src} -> {dst} {proto:?}/{port}: {verdict}\n  {}",
        lines.join("\n  ")
    )
}
