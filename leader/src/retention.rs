//! Audit retention: events older than the configured age are deleted, in
//! batches, by whichever node leads (one writer, so regions do not race to
//! delete the same keys). Audit keys sort by time, so the oldest are read
//! first and the scan stops at the first event still inside the window.

use std::time::Duration;

use sc_store::audit::AuditEvent;
use sc_store::db::{Db, Txn};
use sc_store::keys;
use tokio_util::sync::CancellationToken;

/// Events deleted in one Raft write at most.
const BATCH: usize = 1_000;

/// Deletes expired audit events until `shutdown`; `retention` zero keeps
/// everything.
pub async fn prune_audit(db: Db, retention: Duration, shutdown: CancellationToken) {
    if retention.is_zero() {
        return;
    }
    // Checked often enough that the trail overshoots its window by little,
    // seldom enough to cost nothing (a short window, as in tests, is checked
    // every half of it).
    let period = (retention / 2).clamp(Duration::from_millis(200), Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
        if !db.node().is_leader() {
            continue;
        }
        let cutoff = sc_store::time::now_ms().saturating_sub(retention.as_millis() as u64);
        match prune_once(&db, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "audit events past their retention deleted"),
            Err(e) => tracing::warn!(error = %e, "audit retention: will try again"),
        }
    }
}

/// Deletes every event older than `cutoff_ms`; returns how many.
async fn prune_once(db: &Db, cutoff_ms: u64) -> Result<usize, String> {
    let mut total = 0;
    loop {
        let (events, _) = db
            .scan::<AuditEvent>(keys::AUDIT, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        let mut txn = Txn::default();
        let old: Vec<_> = events
            .iter()
            .take_while(|e| e.value.time_ms < cutoff_ms)
            .collect();
        for e in &old {
            txn.delete(e.key.clone());
        }
        if old.is_empty() {
            return Ok(total);
        }
        db.commit(txn).await.map_err(|e| match e {
            sc_store::db::CommitError::Conflict(m) => m,
            sc_store::db::CommitError::Store(e) => e.to_string(),
        })?;
        total += old.len();
        if old.len() < events.len() || events.len() < BATCH {
            return Ok(total);
        }
    }
}
