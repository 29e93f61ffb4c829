//! What the VEN simulator (`pce ven-sim`) records of each simulated VEN, in its
//! `--state-file`: the chaos runner reads it back to prove no VEN ever fell
//! back to an older policy.

use crate::AgentEvent;

/// What one simulated VEN has been through; the `--state-file` record.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct SimVen {
    /// The policy version it enforces (meaningful once `applied` > 0).
    pub version: u64,
    /// Policies applied so far (0: it enforces none yet).
    pub applied: usize,
    /// Times a policy older than the one it had arrived, or the PCE unpaired it:
    /// a VEN must never fall back to less than it enforced.
    pub regressions: usize,
    /// Connected to a member now.
    pub connected: bool,
}

impl SimVen {
    /// Counts what an agent reports: a policy older than the one it had, or
    /// an unpairing, is a regression (a VEN must never enforce less).
    pub fn track(&mut self, e: AgentEvent) {
        match e {
            AgentEvent::Applied { version, .. } => {
                if version < self.version {
                    self.regressions += 1;
                }
                self.version = version;
                self.applied += 1;
            }
            AgentEvent::Connected(_) => self.connected = true,
            AgentEvent::Rehomed(_) => {}
            AgentEvent::Disconnected(..) => self.connected = false,
            AgentEvent::Unpaired => {
                self.regressions += 1;
                self.version = 0;
                self.connected = false;
            }
        }
    }
}
