//! A node's fence: for a failover drill, the node leaves the cluster's
//! conversation without stopping, and comes back on its own.
//!
//! While the fence stands, the node sends no Raft or federation request and
//! refuses every one it receives (except `Status`, so operators can see it), which
//! to its peers is the same as the region going dark; the admin API and the VEN
//! service above it refuse to serve as well. The fence has a deadline and lifts
//! itself when it passes, so a drill whose operator or tool dies cannot leave a
//! region down: nothing has to run for the fence to end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest fence one call may raise (a drill needs seconds to minutes).
pub const MAX_FENCE: Duration = Duration::from_secs(3600);

/// Shared by everything on one node that must stop while it is fenced.
#[derive(Debug, Clone, Default)]
pub struct Fence {
    /// Deadline, and whether the node keeps serving clients (a partition:
    /// cut off from its peers, still answering from its replica).
    until: Arc<Mutex<Option<(Instant, bool)>>>,
}

/// What a fenced node answers.
#[derive(Debug, thiserror::Error)]
#[error("this node is fenced for a drill for another {}s", .remaining.as_secs_f64().ceil())]
pub struct Fenced {
    /// Until the fence lifts itself.
    pub remaining: Duration,
}

impl Fence {
    /// Raises (or moves) the fence for `span` from now, capped at [`MAX_FENCE`]:
    /// the region is down (no Raft, no clients served).
    pub fn raise(&self, span: Duration) {
        self.set(span, false);
    }

    /// Like [`Fence::raise`], but the node keeps serving its clients from its
    /// replica: a partition that cuts it off from its peers only.
    pub fn partition(&self, span: Duration) {
        self.set(span, true);
    }

    fn set(&self, span: Duration, serving: bool) {
        if let Ok(mut u) = self.until.lock() {
            *u = Some((Instant::now() + span.min(MAX_FENCE), serving));
        }
    }

    /// Time left of a fence that also stops serving clients (`None`: serve).
    pub fn serving_blocked(&self) -> Option<Duration> {
        let serving = self.until.lock().ok()?.is_some_and(|(_, s)| s);
        if serving {
            None
        } else {
            self.remaining()
        }
    }

    /// Lifts the fence now.
    pub fn lift(&self) {
        if let Ok(mut u) = self.until.lock() {
            *u = None;
        }
    }

    /// Time left, or `None` when the node is not fenced (never raised, lifted,
    /// or past its deadline).
    pub fn remaining(&self) -> Option<Duration> {
        let (until, _) = (*self.until.lock().ok()?)?;
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    }

    /// `Err` while fenced.
    pub fn check(&self) -> Result<(), Fenced> {
        match self.remaining() {
            Some(remaining) => Err(Fenced { remaining }),
            None => Ok(()),
        }
    }
}

impl From<Fenced> for tonic::Status {
    fn from(f: Fenced) -> Self {
        tonic::Status::unavailable(f.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_lifts_itself_at_its_deadline() {
        let f = Fence::default();
        assert!(f.check().is_ok());
        f.raise(Duration::from_millis(50));
        assert!(f.check().is_err());
        std::thread::sleep(Duration::from_millis(80));
        assert!(f.check().is_ok(), "no one lifted it, the deadline did");
        f.raise(Duration::from_secs(10));
        f.lift();
        assert!(f.remaining().is_none());
        f.raise(Duration::from_secs(100_000));
        assert!(f.remaining().is_some_and(|d| d <= MAX_FENCE));
        assert!(f.serving_blocked().is_some());
        f.partition(Duration::from_secs(10));
        assert!(f.check().is_err(), "no Raft traffic");
        assert!(f.serving_blocked().is_none(), "clients still served");
    }
}
