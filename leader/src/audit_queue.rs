//! Audit events that have no write of their own to ride on (a write the API
//! refused, a failed sign-in, a console sign-in) go through this queue and
//! reach the store in batches: one Raft write per batch rather than one per
//! event, so a client sending bad input (or guessing keys) cannot turn each
//! attempt into a replicated write. The queue is bounded; what overflows it is counted and logged, not
//! written. Accepted writes keep recording their event in their own
//! transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sc_store::audit::AuditEvent;
use sc_store::db::{Db, Txn};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting at most; past it a refusal is counted, not recorded.
const QUEUE: usize = 10_000;
/// Events in one Raft write at most.
const BATCH: usize = 1_000;
/// Tries to write one batch.
const RETRIES: usize = 5;
/// How long the first event of a batch waits for others.
const GATHER: Duration = Duration::from_millis(200);

/// The sending side, kept in the API's state.
pub struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
    /// Refusals not recorded because the queue was full.
    dropped: AtomicU64,
    /// When the last "dropped" warning was logged (one a minute at most).
    warned: Mutex<Option<Instant>>,
}

impl AuditQueue {
    /// Starts the writer task; it ends when `shutdown` is cancelled, after
    /// writing what it holds.
    pub fn start(db: Db, shutdown: CancellationToken) -> AuditQueue {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(db, rx, shutdown));
        AuditQueue {
            tx,
            dropped: AtomicU64::new(0),
            warned: Mutex::new(None),
        }
    }

    /// Queues an event; never waits.
    pub fn push(&self, ev: AuditEvent) {
        if self.tx.try_send(ev).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let due = self.warned.lock().is_ok_and(|mut w| {
                let now = Instant::now();
                let due = w.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
                if due {
                    *w = Some(now);
                }
                due
            });
            if due {
                tracing::warn!(
                    dropped_total = n,
                    "audit queue full: refused requests are arriving faster than they can be recorded"
                );
            }
        }
    }
}

async fn write_batches(db: Db, mut rx: mpsc::Receiver<AuditEvent>, shutdown: CancellationToken) {
    loop {
        let first = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
            _ = shutdown.cancelled() => {
                rx.close();
                match rx.recv().await {
                    Some(ev) => ev,
                    None => return,
                }
            }
        };
        if !shutdown.is_cancelled() {
            tokio::time::sleep(GATHER).await;
        }
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        let mut txn = Txn::default();
        if batch.iter().any(|ev| ev.add_to(&mut txn).is_err()) {
            tracing::warn!(
                events = batch.len(),
                "could not encode refused requests for the audit trail"
            );
            continue;
        }
        // A few tries (an election, a region just unfenced and catching up),
        // then the events are only logged: the queue must not grow behind a
        // cluster that cannot write.
        let mut last = String::new();
        for attempt in 0..RETRIES {
            match db.commit(txn.clone()).await {
                Ok(_) => {
                    last.clear();
                    break;
                }
                Err(e) => {
                    last = match e {
                        sc_store::db::CommitError::Conflict(m) => m,
                        sc_store::db::CommitError::Store(e) => e.to_string(),
                    };
                    if attempt + 1 < RETRIES && !shutdown.is_cancelled() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        if !last.is_empty() {
            tracing::warn!(events = batch.len(), error = %last, "could not record audit events");
        }
    }
}
