//! The network fault seam: tests (and the chaos harness) drop, delay and
//! partition traffic between chosen nodes, in-process, without touching the kernel.
//!
//! Every outgoing call of a node (Raft RPCs and federation calls) passes through
//! [`NetFaults::gate`] first. Blocking `a → b` loses a's requests to b and so the
//! answers too; a two-way partition blocks both directions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::types::NodeId;

/// What happens to traffic on one directed link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Every request is lost (the caller sees the peer as unreachable).
    Drop,
    /// Every request waits this long before it is sent.
    Delay(Duration),
}

/// The fault table, shared by every node of an in-process cluster.
#[derive(Debug, Clone, Default)]
pub struct NetFaults {
    links: Arc<RwLock<HashMap<(NodeId, NodeId), LinkFault>>>,
}

/// A request that the fault table dropped.
#[derive(Debug, thiserror::Error)]
#[error("link {from} -> {to} is cut by fault injection")]
pub struct LinkCut {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
}

impl NetFaults {
    /// A table with no faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn set(&self, from: NodeId, to: NodeId, fault: Option<LinkFault>) {
        if let Ok(mut links) = self.links.write() {
            match fault {
                Some(f) => links.insert((from, to), f),
                None => links.remove(&(from, to)),
            };
        }
    }

    /// Drops everything sent from `from` to `to` (one-way).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.set(from, to, Some(LinkFault::Drop));
    }

    /// Delays everything sent from `from` to `to` (one-way).
    pub fn delay(&self, from: NodeId, to: NodeId, by: Duration) {
        self.set(from, to, Some(LinkFault::Delay(by)));
    }

    /// Cuts every link between the two groups, both ways.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        for &a in side_a {
            for &b in side_b {
                self.block(a, b);
                self.block(b, a);
            }
        }
    }

    /// Removes every fault.
    pub fn heal(&self) {
        if let Ok(mut links) = self.links.write() {
            links.clear();
        }
    }

    /// Applies the fault (if any) on `from → to`: waits for a delay, fails for a drop.
    pub async fn gate(&self, from: NodeId, to: NodeId) -> Result<(), LinkCut> {
        let fault = self
            .links
            .read()
            .ok()
            .and_then(|l| l.get(&(from, to)).copied());
        match fault {
            None => Ok(()),
            Some(LinkFault::Drop) => Err(LinkCut { from, to }),
            Some(LinkFault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
        }
    }
}
