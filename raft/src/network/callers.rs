//! Who may call a node's Raft and federation services. TLS already proves a
//! caller holds a certificate from the cluster CA; that is not enough to
//! append to the log or write a key: a certificate issued for a tool, or for
//! a node since removed, would then write outside the admin API's RBAC and
//! audit. So the caller's certificate must name a current member, with two
//! exceptions: `Status` (read-only, for operators' tools) answers any
//! cluster-CA certificate, and a node asking to be added as a learner under
//! its own name (a self-join) may do that. A node with no membership yet (a
//! new one waiting for its first entries) accepts Raft traffic from any
//! cluster-CA node, since it has nothing to protect and must hear the leader.

use tonic::{Request, Status};

use crate::pki::common_name;
use crate::types::NodeInfo;

/// The name in the caller's client certificate.
pub fn caller_name<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    common_name(certs.first()?.as_ref())
}

/// Refuses a caller whose certificate names none of `members` (an empty
/// membership refuses no one: see the module's note).
pub fn require_member<'a, T>(
    req: &Request<T>,
    members: impl IntoIterator<Item = &'a NodeInfo>,
    what: &str,
) -> Result<(), Status> {
    let mut members = members.into_iter().peekable();
    if members.peek().is_none() {
        return Ok(());
    }
    let Some(name) = caller_name(req) else {
        return Err(Status::unauthenticated(format!(
            "{what} needs a node certificate from the cluster CA"
        )));
    };
    if members.any(|m| m.name == name) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{what}: {name:?} is not a member of this cluster; only its nodes may call this (operators use the admin API)"
        )))
    }
}
