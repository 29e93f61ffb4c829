//! sled 0.34 puts every tree of every database in a process behind one lock
//! (its `concurrency_control`): once any transaction has run, a batch or a
//! transaction holds that lock for writing from start to end, and every read
//! of any tree waits meanwhile. A read on the consensus runtime's one worker
//! would then hold up heartbeats for the length of somebody's write: the
//! state machine's write-behind, a snapshot install, a member's traffic
//! retention. So every batch and transaction in the process goes through
//! [`write`], which counts those in flight, and the state machine reads sled
//! off the worker while the count is not zero ([`in_flight`]).
//!
//! A write that starts just after a reader looked still holds that read up.
//! The count catches the long waits: those where the write was already under
//! way when the read came.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A count of the writes running now.
struct InFlight(AtomicUsize);

impl InFlight {
    fn write<T>(&self, write: impl FnOnce() -> T) -> T {
        /// Uncounts the write however it ends, a panic included.
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        let _done = Done(&self.0);
        write()
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// sled batches and transactions running now, in this process.
static IN_FLIGHT: InFlight = InFlight(AtomicUsize::new(0));

/// Runs `write`, one sled batch or transaction, counted while it runs.
pub fn write<T>(write: impl FnOnce() -> T) -> T {
    IN_FLIGHT.write(write)
}

/// Whether a sled write is running in this process, so a read may wait for it.
pub(crate) fn in_flight() -> bool {
    IN_FLIGHT.any()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count is up while a write runs and down after it, even one that
    /// panicked (a local count: other tests write to sled meanwhile).
    #[test]
    fn a_write_is_counted_while_it_runs_and_not_after_it_ends() {
        let count = InFlight(AtomicUsize::new(0));
        assert!(!count.any());
        assert!(count.write(|| count.any()));
        assert!(!count.any());
        let panicked = std::panic::catch_unwind(|| count.write(|| panic!("a write that failed")));
        assert!(panicked.is_err());
        assert!(!count.any());
    }
}
