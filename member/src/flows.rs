//! Flow summaries reported by VENs, kept in the member's region (a local sled
//! database, not Raft: flows are high-volume and regional), with a retention bound.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::MemberError;

/// One stored flow summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Reporting workload.
    pub workload: String,
    /// Source address.
    pub src: String,
    /// Destination address.
    pub dst: String,
    /// Destination port.
    pub port: u16,
    /// IANA protocol.
    pub proto: u8,
    /// Allowed or blocked.
    pub allowed: bool,
    /// Connections summarised.
    pub count: u64,
    /// First seen (ms).
    pub first_seen_ms: u64,
    /// Last seen (ms).
    pub last_seen_ms: u64,
}

/// The region's flow store.
pub struct FlowStore {
    tree: sled::Tree,
    retention: Duration,
}

impl FlowStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, retention: Duration) -> Result<FlowStore, MemberError> {
        let db = sled::Config::new().path(dir).open()?;
        Ok(FlowStore {
            tree: db.open_tree("flows")?,
            retention,
        })
    }

    /// Stores a batch; keys sort by receive time so retention is a range delete.
    pub fn store(&self, now_ms: u64, flows: &[FlowRecord]) -> Result<usize, MemberError> {
        let mut batch = sled::Batch::default();
        for (i, f) in flows.iter().enumerate() {
            let mut key = now_ms.to_be_bytes().to_vec();
            key.extend_from_slice(&(i as u32).to_be_bytes());
            key.extend_from_slice(&rand::random::<u32>().to_be_bytes());
            let value = serde_json::to_vec(f).map_err(|e| MemberError::Start(e.to_string()))?;
            batch.insert(key, value);
        }
        self.tree.apply_batch(batch)?;
        self.expire(now_ms)?;
        Ok(flows.len())
    }

    /// Drops flows received before the retention window.
    pub fn expire(&self, now_ms: u64) -> Result<usize, MemberError> {
        let cutoff = now_ms.saturating_sub(self.retention.as_millis() as u64);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.tree.range(..cutoff.to_be_bytes().to_vec()) {
            let (k, _) = item?;
            batch.remove(k);
            n += 1;
        }
        self.tree.apply_batch(batch)?;
        Ok(n)
    }

    /// The stored flows, oldest first (up to `limit`).
    pub fn list(&self, limit: usize) -> Result<Vec<FlowRecord>, MemberError> {
        let mut out = Vec::new();
        for item in self.tree.iter().take(limit) {
            let (_, v) = item?;
            if let Ok(f) = serde_json::from_slice(&v) {
                out.push(f);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: u64) -> FlowRecord {
        FlowRecord {
            workload: "w".into(),
            src: "10.0.0.1".into(),
            dst: "10.0.0.2".into(),
            port: 443,
            proto: 6,
            allowed: true,
            count: n,
            first_seen_ms: 1,
            last_seen_ms: 2,
        }
    }

    #[test]
    fn flows_older_than_the_retention_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlowStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        store.store(1_000, &[flow(1), flow(2)]).unwrap();
        store.store(30_000, &[flow(3)]).unwrap();
        assert_eq!(store.list(10).unwrap().len(), 3);
        // 61 s after the first batch: it expires, the second stays.
        store.store(62_000, &[flow(4)]).unwrap();
        let left: Vec<u64> = store.list(10).unwrap().iter().map(|f| f.count).collect();
        assert_eq!(left, vec![3, 4]);
    }
}
