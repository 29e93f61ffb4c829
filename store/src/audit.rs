//! The audit record: one event per accepted or refused write (API requests and
//! VEN pairings alike), stored in the replicated store under keys that sort by
//! time, so every region can answer the events API from its replica.

use serde::{Deserialize, Serialize};

use crate::db::Txn;
use crate::error::StoreError;
use crate::keys;

/// One audited write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When (ms).
    pub time_ms: u64,
    /// `{resource}.{create|update|delete}`.
    pub event_type: String,
    /// `success` or `failure`.
    pub status: String,
    /// The user's href.
    pub actor: String,
    /// The user's name.
    pub username: String,
    /// HTTP method and path.
    pub api_method: String,
    /// Request path.
    pub api_endpoint: String,
    /// The answer's status code.
    pub http_status: u16,
    /// Caller address.
    pub src_ip: String,
    /// The node that took the request.
    pub node: String,
    /// Its region.
    pub region: String,
    /// The object written, when known.
    pub resource: String,
    /// Why it was refused.
    pub errors: Vec<(String, String)>,
}

impl AuditEvent {
    /// Adds the event to a transaction: it commits (or not) with the write it records.
    pub fn add_to(&self, txn: &mut Txn) -> Result<(), StoreError> {
        txn.put(keys::audit(self.time_ms, rand::random()), self)?;
        Ok(())
    }
}
