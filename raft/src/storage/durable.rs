//! How far a node's Raft log is on disk, for the parts that must not run
//! ahead of it (decision 0027).
//!
//! openraft 0.9's core waits for each append's flush before it does anything
//! else, so a leader replicated an entry only after its own fsync: the
//! leader's and the follower's fsyncs ran one after the other on every write.
//! The log store now reports a leader's own appends flushed at once, and the
//! disk is waited for where it matters instead, through this watch:
//! - the leader counts a follower's acknowledgement of index `i` only once its
//!   own log is durable through `i` (`raft_client`), so no quorum it counts
//!   lacks the leader's copy;
//! - the state machine applies index `i` only then (`state_machine`), so a
//!   leader that is a quorum alone (one voter) acknowledges nothing early;
//! - the committed index hint is saved only as far as the log is durable.

use std::io;
use std::sync::Arc;

use tokio::sync::watch;

/// The log's durable extent: every entry at or below `upto` is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    upto: u64,
    /// A sync failed: entries reported flushed early may never reach the disk,
    /// so every waiter fails from now on (the node must stop leading).
    failed: bool,
}

/// Shared by the log store (which moves it) and the waiters.
#[derive(Clone, Debug)]
pub struct Durable {
    tx: Arc<watch::Sender<Extent>>,
}

impl Durable {
    /// A log whose entries up to `upto` are on disk (at start: all of them).
    pub(crate) fn new(upto: u64) -> Self {
        Durable {
            tx: Arc::new(watch::Sender::new(Extent {
                upto,
                failed: false,
            })),
        }
    }

    /// The index every entry at or below which is on disk.
    pub(crate) fn upto(&self) -> u64 {
        self.tx.borrow().upto
    }

    /// A sync covered every entry up to `upto`.
    pub(crate) fn raise(&self, upto: u64) {
        self.tx.send_if_modified(|e| {
            let moved = upto > e.upto;
            e.upto = e.upto.max(upto);
            moved
        });
    }

    /// The log was cut after `upto` (a truncation, synced): later indexes will
    /// be new entries, not yet on disk.
    pub(crate) fn lower(&self, upto: u64) {
        self.tx.send_if_modified(|e| {
            let moved = upto < e.upto;
            e.upto = e.upto.min(upto);
            moved
        });
    }

    /// A sync failed.
    pub(crate) fn fail(&self) {
        self.tx.send_modify(|e| e.failed = true);
    }

    /// Whether a sync has failed, to say why the core was stopped.
    pub(crate) fn has_failed(&self) -> bool {
        self.tx.borrow().failed
    }

    /// Resolves when a sync has failed (`false` if the log closed first).
    pub(crate) async fn failed(&self) -> bool {
        let mut rx = self.tx.subscribe();
        let failed = rx.wait_for(|e| e.failed).await.is_ok();
        failed
    }

    /// Waits until every entry at or below `index` is on disk.
    pub(crate) async fn wait(&self, index: u64) -> io::Result<()> {
        let mut rx = self.tx.subscribe();
        let extent = rx
            .wait_for(|e| e.failed || e.upto >= index)
            .await
            .map(|e| *e)
            .map_err(|_| io::Error::other("the Raft log was closed"))?;
        if extent.failed {
            return Err(io::Error::other(
                "a Raft log sync failed: entries this node reported flushed may not be on disk",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_is_released_by_the_sync_that_covers_its_index() {
        let d = Durable::new(5);
        d.wait(5).await.expect("already durable");
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait(7).await })
        };
        d.raise(6);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "index 7 is not on disk yet");
        d.raise(7);
        waiter.await.expect("task").expect("durable");
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_waiter_and_a_truncation_lowers_the_extent() {
        let d = Durable::new(10);
        d.lower(8);
        assert_eq!(d.upto(), 8);
        d.raise(3);
        assert_eq!(d.upto(), 8, "never moves back on a raise");
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait(9).await })
        };
        d.fail();
        let err = waiter.await.expect("task").expect_err("failed");
        assert!(err.to_string().contains("sync failed"), "{err}");
        assert!(d.wait(1).await.is_err(), "a failed log serves no one");
    }
}
