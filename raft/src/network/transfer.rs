//! A planned leader transfer in progress, as this node knows it: which node
//! is to lead, and until when. While it stands, no other node may take the
//! lead through this one: it neither campaigns itself nor grants another
//! node's pre-vote, so the transfer is not a race the old leader or a
//! follower whose timer fires can win. It lifts itself at its deadline.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::types::NodeId;

/// Shared by the election timer, the pre-vote server and the node.
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// The node that is to lead, until when (a std Mutex: never held across
    /// an await).
    to: Arc<Mutex<Option<(NodeId, Instant)>>>,
}

impl Transfer {
    /// Marks a transfer to `to` in progress until `until`.
    pub fn begin(&self, to: NodeId, until: Instant) {
        if let Ok(mut t) = self.to.lock() {
            *t = Some((to, until));
        }
    }

    /// Ends it (done, or given up).
    pub fn end(&self) {
        if let Ok(mut t) = self.to.lock() {
            *t = None;
        }
    }

    /// The node a transfer in progress moves leadership to.
    pub fn target(&self) -> Option<NodeId> {
        let t = self.to.lock().ok()?;
        t.filter(|(_, until)| Instant::now() < *until)
            .map(|(to, _)| to)
    }
}
