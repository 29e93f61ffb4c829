//! What the engine produces: one workload's compiled firewall policy, and the
//! verdict it gives a flow. Kept apart from the engine because renderers, the
//! member's cache and the VEN read these types without ever computing them.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::addr::AddrSet;
use crate::model::{EnforcementMode, Id, PortRange, Proto, RuleRef};

/// What a compiled rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// Override deny: beats allow rules.
    OverrideDeny,
    /// Allow.
    Allow,
    /// Deny (beaten by allow rules).
    Deny,
}

/// The ports a compiled rule covers: every port of every protocol, or a sorted list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ports {
    /// Every protocol and port.
    All,
    /// These ranges (sorted, deduplicated).
    Some(Vec<PortRange>),
}

impl Ports {
    /// Whether a flow on `proto`/`port` is covered.
    pub fn matches(&self, proto: Proto, port: u16) -> bool {
        match self {
            Ports::All => true,
            Ports::Some(list) => list.iter().any(|p| p.matches(proto, port)),
        }
    }
}

/// One rule as a workload's firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompiledRule {
    /// Allow or deny.
    pub action: Action,
    /// The remote addresses (sources inbound, destinations outbound).
    pub peers: Arc<AddrSet>,
    /// The ports on this workload (inbound) or on the peer (outbound).
    pub ports: Arc<Ports>,
    /// Which policy rule it comes from.
    pub source: Arc<RuleRef>,
}

/// Everything one workload's firewall needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CompiledPolicy {
    /// The workload.
    pub workload: Id,
    /// Its enforcement mode.
    pub mode: EnforcementMode,
    /// Its own addresses.
    pub addresses: Vec<IpAddr>,
    /// Inbound rules in precedence order: override deny, allow, deny.
    pub inbound: Vec<CompiledRule>,
    /// Outbound allow rules (full mode only; everything else is dropped).
    pub outbound: Vec<CompiledRule>,
    /// Which decisions its firewall logs for flow reports.
    #[serde(default)]
    pub visibility: crate::model::VisibilityLevel,
}

/// A flow's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Passes.
    Allowed,
    /// Dropped.
    Blocked,
}

impl CompiledPolicy {
    /// The verdict on an inbound flow from `src`, and the rule that decided it
    /// (`None`: the mode's default).
    pub fn decide_inbound(
        &self,
        src: IpAddr,
        proto: Proto,
        port: u16,
    ) -> (Verdict, Option<&CompiledRule>) {
        if matches!(
            self.mode,
            EnforcementMode::Idle | EnforcementMode::VisibilityOnly
        ) {
            return (Verdict::Allowed, None);
        }
        // Rules are in precedence order, so the first match decides.
        for r in &self.inbound {
            if r.peers.contains(src) && r.ports.matches(proto, port) {
                let v = if r.action == Action::Allow {
                    Verdict::Allowed
                } else {
                    Verdict::Blocked
                };
                return (v, Some(r));
            }
        }
        let default = if self.mode == EnforcementMode::Full {
            Verdict::Blocked
        } else {
            Verdict::Allowed
        };
        (default, None)
    }

    /// The verdict on an outbound flow to `dst`.
    pub fn decide_outbound(
        &self,
        dst: IpAddr,
        proto: Proto,
        port: u16,
    ) -> (Verdict, Option<&CompiledRule>) {
        if self.mode != EnforcementMode::Full {
            return (Verdict::Allowed, None);
        }
        match self
            .outbound
            .iter()
            .find(|r| r.peers.contains(dst) && r.ports.matches(proto, port))
        {
            Some(r) => (Verdict::Allowed, Some(r)),
            None => (Verdict::Blocked, None),
        }
    }
}
