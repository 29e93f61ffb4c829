//! One run of an operation shared by every caller that arrived before it
//! started: how linearizable reads share one ReadIndex (issue 22).
//!
//! A linearizable read needs a read index obtained *after* the read was
//! invoked: confirmed leadership and the commit index at that moment. Any run
//! that starts after a caller joined serves it, so callers that join while a
//! run is in flight wait for the next one, and one run serves them all. With
//! 64 concurrent readers that is a couple of leader round trips instead of 64.
//!
//! Runs are driven by a task of their own, so a caller that gives up (its RPC
//! was cancelled) never strands the ones that joined after it.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// A queue of callers and at most one run in flight.
pub(crate) struct Coalescer<T> {
    state: Arc<Mutex<State<T>>>,
}

struct State<T> {
    running: bool,
    waiting: Vec<oneshot::Sender<T>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The critical sections below cannot panic; recover rather than wedge.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Clone + Send + 'static> Coalescer<T> {
    /// An idle coalescer.
    pub(crate) fn new() -> Self {
        Coalescer {
            state: Arc::new(Mutex::new(State {
                running: false,
                waiting: Vec::new(),
            })),
        }
    }

    /// The result of a run of `op` that started after this call. `None` only
    /// if the driving task died (the runtime is shutting down).
    pub(crate) async fn join<F, Fut>(&self, op: F) -> Option<T>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = lock(&self.state);
            s.waiting.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            let state = self.state.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut s = lock(&state);
                        if s.waiting.is_empty() {
                            s.running = false;
                            return;
                        }
                        std::mem::take(&mut s.waiting)
                    };
                    // Every caller in `batch` joined before this run starts.
                    let result = op().await;
                    for tx in batch {
                        let _ = tx.send(result.clone());
                    }
                }
            });
        }
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    type Run = std::pin::Pin<Box<dyn Future<Output = u64> + Send>>;
    type Op = Arc<dyn Fn() -> Run + Send + Sync>;

    /// An operation that counts its runs and takes `ms` to finish.
    fn counter(ms: u64) -> (Arc<AtomicU64>, Op) {
        let runs = Arc::new(AtomicU64::new(0));
        let r = runs.clone();
        let op: Op = Arc::new(move || {
            let r = r.clone();
            Box::pin(async move {
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                n
            })
        });
        (runs, op)
    }

    #[tokio::test]
    async fn a_caller_that_joins_during_a_run_gets_the_next_one() {
        let c = Arc::new(Coalescer::new());
        let (runs, op) = counter(50);
        let first = {
            let (c, op) = (c.clone(), op.clone());
            tokio::spawn(async move { c.join(move || op()).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Run 1 is in flight: this caller must not be answered by it.
        let late = c.join(move || op()).await;
        assert_eq!(first.await.expect("task"), Some(1));
        assert_eq!(late, Some(2));
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn many_concurrent_callers_share_a_few_runs() {
        let c = Arc::new(Coalescer::new());
        let (runs, op) = counter(20);
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (c, op) = (c.clone(), op.clone());
            tasks.push(tokio::spawn(async move { c.join(move || op()).await }));
        }
        for t in tasks {
            assert!(t.await.expect("task").is_some());
        }
        let n = runs.load(Ordering::SeqCst);
        assert!(
            n <= 3,
            "64 callers that arrive together need at most a few runs, took {n}"
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_strand_the_others() {
        let c = Arc::new(Coalescer::new());
        let (_, op) = counter(30);
        let op2 = op.clone();
        // The caller that starts the run is cancelled before it finishes.
        let quitter = {
            let c = c.clone();
            tokio::spawn(async move { c.join(move || op2()).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        quitter.abort();
        let waiting = tokio::time::timeout(Duration::from_secs(2), c.join(move || op()))
            .await
            .expect("answered");
        assert_eq!(waiting, Some(2));
    }
}
