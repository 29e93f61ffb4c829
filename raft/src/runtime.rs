//! The consensus runtime: the tokio threads a node's Raft work runs on.
//!
//! A node process also serves its region's VENs (thousands of TLS streams) and
//! the admin API. On one shared runtime a heartbeat waits in the same run queue
//! as every VEN handshake, and on a busy 2-core machine it waited long enough
//! for followers to call an election: a leader lost to load, not to failure.
//! So the Raft core, its replication and snapshot tasks, the Raft and federation
//! gRPC server, and the channels to peers all live on threads of their own. The
//! operating system then shares the cores between the two runtimes fairly, and
//! no amount of VEN work can queue in front of a heartbeat.
//!
//! The runtime is driven by one plain thread (not a task of the caller's
//! runtime), so it can be stopped and dropped from async code.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Worker threads per node: one. Raft's work is a few tasks, and with a
/// second worker tokio woke the idle one for nearly every hand-off on a
/// write's path (`docs/benchmarks.md`, "One consensus worker, replies
/// coalesced"). Nothing on it may block: the log syncs on a thread of its
/// own, snapshots go to the blocking pool, and a wait for the live state's
/// lock (held by a reader for a long scan) or for sled's (held by any sled
/// write in the process, `storage/sled_writes.rs`) moves the worker's queue
/// to another thread first (`storage/state_machine.rs`, `off_the_worker`).
const WORKERS: usize = 1;

/// How long a stopping runtime gives its tasks before it abandons them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A node's consensus runtime. Dropping it (or [`ConsensusRuntime::stop`])
/// stops its threads; tasks still on it are cancelled.
pub(crate) struct ConsensusRuntime {
    handle: Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// The consensus runtime's shape, unbuilt: also what `pce bench compare`'s
/// transport floor serves on, so the floor and a node differ only in what
/// stands behind the gRPC service.
pub fn builder(node_name: &str) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(WORKERS)
        .thread_name(format!("raft-{node_name}"))
        .enable_all();
    // A commit wakes the handlers of every write it answers. With the
    // LIFO slot, the first handler's reply wakes its connection's task
    // into that slot, which runs next and sends that one reply on its
    // own: one socket write per reply. Without it the connection's task
    // runs after all the handlers, and sends their replies in one write
    // (decision 0030). The method is behind `tokio_unstable`, which
    // `.cargo/config.toml` sets; a build without it is correct, only
    // slower under load.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    // A `RUSTFLAGS` in the environment replaces the config's flags: say
    // so, or the slower build would go unnoticed.
    #[cfg(not(tokio_unstable))]
    tracing::warn!(
        node = node_name,
        "built without --cfg tokio_unstable: the consensus runtime keeps tokio's LIFO slot, \
         so replies to one commit leave in one socket write each (decision 0030)"
    );
    builder
}

impl ConsensusRuntime {
    /// Starts the threads, named after the node so they show in `top -H` and
    /// in stack dumps.
    pub(crate) fn start(node_name: &str) -> std::io::Result<ConsensusRuntime> {
        let rt = builder(node_name).build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("raft-{node_name}-driver"))
            .spawn(move || {
                // Resolves on stop() or when the sender is dropped.
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(STOP_GRACE);
            })?;
        Ok(ConsensusRuntime {
            handle,
            stop: Mutex::new(Some(stop)),
        })
    }

    /// Where to spawn consensus work.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the threads; later spawns are cancelled at once.
    pub(crate) fn stop(&self) {
        if let Ok(mut stop) = self.stop.lock() {
            if let Some(tx) = stop.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl Drop for ConsensusRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns a peer channel's connection tasks on a given runtime (tonic spawns
/// them wherever the channel is first used unless told otherwise, which for a
/// channel first used by the admin API would be the busy runtime).
#[derive(Clone)]
pub(crate) struct SpawnOn(pub(crate) Handle);

impl<F> hyper::rt::Executor<F> for SpawnOn
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}
