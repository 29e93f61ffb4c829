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
//! the next request as soon as it lands. It spins only while reads come as a
//! stream (the last two less than [`STREAM_GAP`] apart), so a read now and
//! then costs no spin, and a spinning task yields to every other task on the
//! worker (heartbeats and appends go first). What it costs is CPU while a
//! client reads in a tight loop: at most one core, the worker's, and only for
//! as long as the stream lasts (decision 0031).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Two reads closer than this are a stream worth staying awake for (1,000
/// reads a second); a read after a longer gap starts no spin.
pub const STREAM_GAP: Duration = Duration::from_millis(1);

/// The spinner of one node's federation service.
pub struct ReadSpin {
    epoch: Instant,
    /// When the last read was answered, in microseconds after `epoch`.
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
        Arc::new(ReadSpin {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            wake: Notify::new(),
            window: Duration::ZERO,
            yields: AtomicU64::new(0),
        })
    }

    /// A read was answered: stay awake for the next if reads come as a stream.
    pub fn served(&self) {
        if self.window.is_zero() {
            return;
        }
        let now = self.now_us();
        let before = self.last.swap(now, Ordering::Relaxed);
        if before != 0 && now.saturating_sub(before) < STREAM_GAP.as_micros() as u64 {
            self.wake.notify_one();
        }
    }

    fn now_us(&self) -> u64 {
        // From 1, so 0 can mean "no read yet".
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Waits for a read in a stream, then yields until a window has passed
    /// with no read; each read answered meanwhile extends the window.
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stream_of_reads_keeps_the_worker_awake_for_a_window_and_other_tasks_run() {
        let spin = ReadSpin::start(Duration::from_millis(30));
        // One read alone starts nothing.
        spin.served();
        tokio::time::sleep(STREAM_GAP * 5).await;
        assert_eq!(spin.yields(), 0, "a lone read made the worker spin");
        // Reads in a row are a stream: the spinner wakes (given its turn on
        // the worker, which a loaded machine may delay: read until it does).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while spin.yields() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a stream of reads never woke the spinner"
            );
            // Two reads back to back (a timer sleeps at least a millisecond,
            // longer than the stream's gap).
            spin.served();
            spin.served();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Another task on the same (only) worker still gets its turn.
        assert_eq!(tokio::spawn(async { 7 }).await.unwrap(), 7);
        // With the stream over, it stops once a window has passed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let spun = spin.yields();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(spin.yields(), spun, "the spinner went on after its window");
    }

    #[tokio::test]
    async fn a_spinner_that_is_off_never_spins() {
        for spin in [ReadSpin::off(), ReadSpin::start(Duration::ZERO)] {
            spin.served();
            spin.served();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(spin.yields(), 0);
        }
    }
}
