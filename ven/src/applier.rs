//! Where and in what order the agent's host work runs: programming the
//! firewall (`nft` is a child process the agent waits for) and writing the
//! policy cache (fsynced) block a thread for as long as they take, so they run
//! on tokio's blocking pool, never on the threads that drive the agent's
//! stream and heartbeats.
//!
//! Order. Jobs are numbered in the order the agent asks for them, and a job
//! starts only if no later one has started before it: an older policy is never
//! applied after a newer one, even if the agent gave up waiting for it (its
//! future dropped) while it was still queued. Jobs never overlap.

use std::sync::{Arc, Mutex};

use crate::enforce::Enforcer;
use crate::identity::VenError;

/// Runs the agent's host jobs off the async threads, one at a time, in order.
pub(crate) struct Applier {
    enforcer: Enforcer,
    /// Run jobs where they are asked for instead: nothing this agent does
    /// touches the host (a simulated VEN keeping no files), and a thread hop
    /// per push for each of the simulator's thousands of agents would charge
    /// the benchmarks with work no real VEN shares a machine with.
    inline: bool,
    /// The number of the last job asked for.
    asked: u64,
    /// The number of the last job started, held while a job runs so that jobs
    /// never overlap. A std mutex: it is only taken on blocking threads.
    started: Arc<Mutex<u64>>,
}

impl Applier {
    /// Jobs for `enforcer`; `inline` as the field says.
    pub(crate) fn new(enforcer: Enforcer, inline: bool) -> Applier {
        Applier {
            enforcer,
            inline,
            asked: 0,
            started: Arc::new(Mutex::new(0)),
        }
    }

    /// Where policy goes.
    pub(crate) fn enforcer(&self) -> &Enforcer {
        &self.enforcer
    }

    /// Runs `job` with the enforcer on the blocking pool, alone, and returns
    /// what it returned. Fails without running it if a job asked for after it
    /// has already started (possible only if a caller gave up waiting).
    pub(crate) async fn run<T, F>(&mut self, job: F) -> Result<T, VenError>
    where
        T: Send + 'static,
        F: FnOnce(&Enforcer) -> Result<T, VenError> + Send + 'static,
    {
        if self.inline {
            return job(&self.enforcer);
        }
        self.asked += 1;
        let number = self.asked;
        let enforcer = self.enforcer.clone();
        let started = self.started.clone();
        let task = tokio::task::spawn_blocking(move || {
            // A job that panicked left the number it set, which is still right.
            let mut last = started.lock().unwrap_or_else(|p| p.into_inner());
            if *last > number {
                return Err(VenError::Enforce(format!(
                    "host job {number} skipped: the newer job {} already ran",
                    *last
                )));
            }
            *last = number;
            job(&enforcer)
        });
        task.await
            .map_err(|e| VenError::Enforce(format!("the host job stopped before finishing: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_off_the_async_thread_in_the_order_asked() {
        let mut applier = Applier::new(Enforcer::Simulated, false);
        let here = std::thread::current().id();
        let ran = Arc::new(Mutex::new(Vec::new()));
        for n in 0..3 {
            let ran = ran.clone();
            let there = applier
                .run(move |_| {
                    ran.lock()
                        .map_err(|e| VenError::Other(e.to_string()))?
                        .push(n);
                    Ok(std::thread::current().id())
                })
                .await
                .expect("job");
            assert_ne!(there, here, "a job ran on the async thread");
        }
        assert_eq!(*ran.lock().expect("lock"), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_job_older_than_one_already_started_is_skipped() {
        let mut applier = Applier::new(Enforcer::Simulated, false);
        // As if this job had been abandoned in the queue and a newer one had
        // started before it.
        *applier.started.lock().expect("lock") = 5;
        let ran = applier.run(|_| Ok(())).await;
        assert!(
            matches!(&ran, Err(VenError::Enforce(m)) if m.contains("skipped")),
            "{ran:?}"
        );
    }

    #[tokio::test]
    async fn inline_jobs_run_where_they_are_asked() {
        let mut applier = Applier::new(Enforcer::Simulated, true);
        let here = std::thread::current().id();
        let there = applier
            .run(|_| Ok(std::thread::current().id()))
            .await
            .expect("job");
        assert_eq!(there, here);
    }
}
