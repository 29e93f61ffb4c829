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

use std::sync::RwLock;

use tonic::{Request, Status};

use crate::pki::common_name;
use crate::types::NodeInfo;

/// Certificates already read, with the name each holds: every Raft and
/// federation request asks who sent it, and parsing the sender's X.509
/// certificate each time was 12 % of a member's CPU serving replica reads
/// (perf, `pce bench compare --workloads read`). Peers are few, so a short
/// list compared byte for byte (never a hash of the certificate: two
/// certificates must never share a name by accident); it is emptied when
/// full, so certificates that come and go cannot grow it. A read lock on a
/// hit: concurrent requests do not queue behind each other.
static NAMES: RwLock<Vec<(Vec<u8>, Option<String>)>> = RwLock::new(Vec::new());

/// How many certificates [`NAMES`] holds at most.
const NAMES_KEPT: usize = 64;

/// The common name in a certificate, from [`NAMES`] when it was read before.
fn cached_common_name(der: &[u8]) -> Option<String> {
    if let Ok(names) = NAMES.read() {
        if let Some((_, name)) = names.iter().find(|(d, _)| d.as_slice() == der) {
            return name.clone();
        }
    }
    let name = common_name(der);
    if let Ok(mut names) = NAMES.write() {
        if names.len() >= NAMES_KEPT {
            names.clear();
        }
        names.push((der.to_vec(), name.clone()));
    }
    name
}

/// The name in the caller's client certificate.
pub fn caller_name<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    cached_common_name(certs.first()?.as_ref())
}

/// Refuses a caller whose certificate names none of `members` (an empty
/// membership refuses no one: see the module's note).
pub fn require_member<'a, T>(
    req: &Request<T>,
    members: impl IntoIterator<Item = &'a NodeInfo>,
    what: &str,
) -> Result<(), Status> {
    require_named_member(caller_name(req).as_deref(), members, what)
}

/// [`require_member`] for a caller already named (a stream checks each of
/// its messages against the membership of the moment).
pub fn require_named_member<'a>(
    name: Option<&str>,
    members: impl IntoIterator<Item = &'a NodeInfo>,
    what: &str,
) -> Result<(), Status> {
    let mut members = members.into_iter().peekable();
    if members.peek().is_none() {
        return Ok(());
    }
    let Some(name) = name else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_name_is_the_certificates_own_and_the_cache_stays_bounded() {
        let ca = rcgen::KeyPair::generate().unwrap();
        let cert = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.self_signed(&ca).unwrap().der().to_vec()
        };
        let a = cert("node-a");
        let b = cert("node-b");
        for _ in 0..3 {
            assert_eq!(cached_common_name(&a).as_deref(), Some("node-a"));
            assert_eq!(cached_common_name(&b).as_deref(), Some("node-b"));
        }
        assert_eq!(cached_common_name(b"not a certificate"), None);
        for i in 0..(NAMES_KEPT * 2) {
            let c = cert(&format!("n{i}"));
            assert_eq!(cached_common_name(&c), Some(format!("n{i}")));
        }
        assert!(NAMES.read().unwrap().len() <= NAMES_KEPT);
        assert_eq!(cached_common_name(&a).as_deref(), Some("node-a"));
    }
}
