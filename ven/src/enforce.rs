//! Applying a policy to the host: nftables (one atomic `nft -f` of the whole
//! table), a dry run that prints the ruleset, memory only (tests), or nothing
//! at all (the simulator).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use sc_policy::compute::CompiledPolicy;

use crate::identity::VenError;

/// Where policy goes.
#[derive(Clone)]
pub enum Enforcer {
    /// `nft -f -` (needs root, or the namespace's CAP_NET_ADMIN).
    Nft,
    /// Print the ruleset to stdout instead (non-root use).
    DryRun,
    /// Keep the last ruleset in memory (tests that read what would be loaded).
    Memory(Arc<Mutex<Option<String>>>),
    /// Render nothing (the simulator). A simulated VEN stands for a host that
    /// renders and loads its table on its own CPU; rendering thousands of
    /// tables here would charge the PCE's benchmarks, which share this
    /// machine's cores, with work no PCE does. The policy's hash is still
    /// checked before it is acknowledged; the agent does not even parse it.
    Simulated,
}

impl Enforcer {
    /// Renders `compiled` (keeping `control` reachable) and applies it.
    ///
    /// Blocks the calling thread while it renders and `nft` runs: async code
    /// (the agent's loop) calls it from the blocking pool, in order, through
    /// the agent's applier.
    pub fn apply(
        &self,
        compiled: &CompiledPolicy,
        control: &[SocketAddr],
    ) -> Result<String, VenError> {
        if matches!(self, Enforcer::Simulated) {
            return Ok(String::new());
        }
        let text = sc_policy::render::nftables_with_control(compiled, control);
        match self {
            Enforcer::Simulated => {}
            Enforcer::Nft => {
                let mut child = Command::new("nft")
                    .args(["-f", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| VenError::Enforce(format!("running nft: {e}")))?;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin
                        .write_all(text.as_bytes())
                        .map_err(|e| VenError::Enforce(format!("writing to nft: {e}")))?;
                }
                let out = child
                    .wait_with_output()
                    .map_err(|e| VenError::Enforce(format!("waiting for nft: {e}")))?;
                if !out.status.success() {
                    return Err(VenError::Enforce(format!(
                        "nft refused the ruleset: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
            }
            Enforcer::DryRun => {
                println!("{text}");
            }
            Enforcer::Memory(slot) => {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(text.clone());
                }
            }
        }
        Ok(text)
    }
}
