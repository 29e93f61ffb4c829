//! Keeping the consensus worker awake between one client's replica reads.
//!
//! A replica read from one client is a round trip: the client's CPU, then the
//! node's, one after the other. Between two reads the node's one consensus
//! worker has nothing to do and sleeps in `epoll_wait`, and the next request
//! must wake it: on the virtual machines measured, waking a sleeping thread on
//! another core cost the sender and the sleeper more than the node's whole
//! read (`docs/benchmarks.md`, "The floor under a one-client read"). etcd's Go
//! runtime spins before it parks, which is most of its server CPU per read and
//! why its one-client reads were fast.
//!
//! So after a read the worker stays awake for a short window, yielding: a
//! worker with a yielded task polls its sockets without blocking, and picks up
//! the next request as soon as it lands. It spins only where that pays: when
//! the read just answered had arrived within a window of the answer before it
//! (the node was idle for less than the window). A read now and then, or a
//! client whose network round trip is longer than the window, starts no spin;
//! linearizable reads count too, since their idle gap is the client's turn as
//! well (the trip to the leader is inside the read). A spinning task yields to
//! every other task on the worker (heartbeats and appends go first). What it
//! costs is CPU while a client reads in a tight loop: at most one core, the
//! worker's, and only as long as the reads keep coming (decision 0031).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The longest window taken: past a client's turn between two reads a
/// longer spin only burns CPU. A longer one asked for is cut to this.
pub const MAX_WINDOW: Duration = Duration::from_millis(1);

/// When a read arrived, and how long the node had been without a read then;
/// from [`ReadSpin::arrived`], handed back to [`ReadSpin::served`].
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Microseconds since the last answer; `None` for the first read.
    idle_us: Option<u64>,
}

/// The spinner of one node's federation service.
pub struct ReadSpin {
    epoch: Instant,
    /// When the last read was answered, in microseconds after `epoch` (0:
    /// none yet).
    last: AtomicU64,
    wake: Notify,
    /// How long the worker stays awake after a read; zero: never.
    window: Duration,
    /// Turns the spinner has yielded, in all: shows it ran, and how long.
    yields: AtomicU64,
}

impl ReadSpin {
    /// The spinner, its task spawned on the current runtime: it must be the
    /// runtime whose worker serves the reads (the consensus runtime), since
    /// that is the worker a yielding task keeps awake.
    pub fn start(window: Duration) -> Arc<ReadSpin> {
        let window = window.min(MAX_WINDOW);
        let spin = Arc::new(ReadSpin {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            wake: Notify::new(),
            window,
            yields: AtomicU64::new(0),
        });
        if !window.is_zero() {
            tokio::spawn(spin.clone().run());
        }
        spin
    }

    /// A spinner that never spins, for services without one.
    pub fn off() -> Arc<ReadSpin> {
        // A zero window spawns no task, so this needs no runtime.
        ReadSpin::start(Duration::ZERO)
    }

    /// A read has arrived: how long the node waited for it.
    pub fn arrived(&self) -> Arrival {
        let last = self.last.load(Ordering::Relaxed);
        Arrival {
            idle_us: (last != 0).then(|| self.now_us().saturating_sub(last)),
        }
    }

    /// The read that arrived at `arrival` was answered: stay awake for the
    /// next if this one had come within a window of the answer before it.
    pub fn served(&self, arrival: Arrival) {
        if self.window.is_zero() {
            return;
        }
        self.last.store(self.now_us(), Ordering::Relaxed);
        if arrival
            .idle_us
            .is_some_and(|idle| idle < self.window.as_micros() as u64)
        {
            self.wake.notify_one();
        }
    }

    fn now_us(&self) -> u64 {
        // From 1, so 0 can mean "no read yet".
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Waits for a read that came back to back, then yields until a window
    /// has passed with no read; each read answered meanwhile extends it.
    async fn run(self: Arc<Self>) {
        let window = self.window.as_micros() as u64;
        loop {
            self.wake.notified().await;
            while self
                .now_us()
                .saturating_sub(self.last.load(Ordering::Relaxed))
                < window
            {
                self.yields.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    }

    /// Turns yielded so far.
    pub fn yields(&self) -> u64 {
        self.yields.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read answered, `idle` after the answer before it.
    async fn read_after(spin: &ReadSpin, idle: Duration) {
        tokio::time::sleep(idle).await;
        let a = spin.arrived();
        spin.served(a);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn reads_that_come_within_the_window_keep_the_worker_awake_and_others_do_not() {
        let spin = ReadSpin::start(Duration::from_millis(5));
        // Reads further apart than the window: no spin, however many.
        for _ in 0..5 {
            read_after(&spin, Duration::from_millis(12)).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(spin.yields(), 0, "reads further apart than the window spun");
        // Reads back to back: the spinner wakes (given its turn on the only
        // worker, which a loaded machine may delay: read until it does).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while spin.yields() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "reads back to back never woke the spinner"
            );
            read_after(&spin, Duration::ZERO).await;
            tokio::task::yield_now().await;
        }
        // Another task on the same (only) worker still gets its turn.
        assert_eq!(tokio::spawn(async { 7 }).await.unwrap(), 7);
        // With the reads over, it stops once a window has passed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spun = spin.yields();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(spin.yields(), spun, "the spinner went on after its window");
    }

    #[tokio::test]
    async fn a_spinner_that_is_off_has_no_task_and_a_long_window_is_cut() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        for spin in [ReadSpin::off(), ReadSpin::start(Duration::ZERO)] {
            let a = spin.arrived();
            spin.served(a);
            let a = spin.arrived();
            spin.served(a);
            assert_eq!(tasks(), 0);
            assert_eq!(spin.yields(), 0);
        }
        let on = ReadSpin::start(Duration::from_secs(3));
        assert_eq!(tasks(), 1);
        assert_eq!(on.window, MAX_WINDOW);
    }
}
