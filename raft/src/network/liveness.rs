//! Noticing that the leader's *process* is gone, so that a follower need not
//! wait out its election timeout (decision 0019).
//!
//! When a process dies (kill -9, a crash, an OOM kill), its kernel closes
//! every socket it held: each follower sees the connection the leader's
//! AppendEntries came over end at once. A connection can also end while the
//! leader lives (a reset, a middlebox, an idle timeout), so a close alone
//! proves nothing. The follower then asks the kernel at the leader's address
//! whether anything listens there: a live leader accepts the connection; a
//! dead one's host answers with a reset, which `connect` reports as
//! "connection refused". Only that answer marks the leader gone. A partition
//! gives neither a close nor a refusal (packets vanish), so it still takes the
//! election timeout, as it must: the leader may be alive behind it.
//!
//! Nothing here decides an election. The election timer reads the mark to ask
//! for a pre-vote early, and a voter grants that early pre-vote only on its
//! own evidence (its own probe refused), never on the asker's word.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::types::NodeId;

/// Connections remembered at most (see [`Liveness::heard_over`]).
const CONNS_KEPT: usize = 1024;

/// What this node knows about its peers' connections to it and about a
/// leader found gone; shared by the Raft server, the accept loop, the
/// election timer and the pre-vote server.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Connections that carried a leader's AppendEntries, by the remote end's
    /// address: the node, and where it listens (std Mutex: map updates only).
    conns: Mutex<HashMap<SocketAddr, (NodeId, String)>>,
    /// The last node whose process was found gone, and when.
    gone: Mutex<Option<(NodeId, Instant)>>,
    /// The last candidate this node granted an early pre-vote, and when.
    granted: Mutex<Option<(NodeId, Instant)>>,
}

impl Liveness {
    /// Whether the connection from `conn` is already known to carry a
    /// leader's traffic (the Raft server checks this before looking up the
    /// leader's address, so each AppendEntries costs one map lookup).
    pub(crate) fn knows(&self, conn: SocketAddr, from: NodeId) -> bool {
        self.inner
            .conns
            .lock()
            .is_ok_and(|c| c.get(&conn).is_some_and(|(n, _)| *n == from))
    }

    /// Notes that node `from`, listening at `addr`, sends its AppendEntries
    /// over the connection whose remote end is `conn`.
    pub(crate) fn heard_over(&self, conn: SocketAddr, from: NodeId, addr: String) {
        if let Ok(mut c) = self.inner.conns.lock() {
            // A request handled after its connection closed puts back an
            // entry nothing removes; a node has a handful of live peer
            // connections, so a full map is mostly such leftovers.
            if c.len() >= CONNS_KEPT {
                c.clear();
            }
            c.insert(conn, (from, addr));
        }
    }

    /// The connection from `conn` has closed: the node it carried
    /// AppendEntries for, and where that node listens, if any.
    pub(crate) fn closed(&self, conn: SocketAddr) -> Option<(NodeId, String)> {
        self.inner.conns.lock().ok()?.remove(&conn)
    }

    /// Marks `node`'s process as gone now.
    pub(crate) fn mark_gone(&self, node: NodeId) {
        if let Ok(mut g) = self.inner.gone.lock() {
            *g = Some((node, Instant::now()));
        }
    }

    /// Notes that this node just granted `candidate` an early pre-vote: it
    /// is about to campaign, and this node campaigning too would split the
    /// vote.
    pub(crate) fn granted_early(&self, candidate: NodeId) {
        if let Ok(mut g) = self.inner.granted.lock() {
            *g = Some((candidate, Instant::now()));
        }
    }

    /// When this node last granted an early pre-vote to a node other than
    /// `me`, if after `since`.
    pub(crate) fn granted_since(&self, me: NodeId, since: Instant) -> Option<Instant> {
        let g = self.inner.granted.lock().ok()?;
        g.filter(|(c, at)| *c != me && *at > since)
            .map(|(_, at)| at)
    }

    /// When `node` was found gone, if that happened after `since` (a mark
    /// older than the last word from the leader belongs to an earlier life of
    /// the process, restarted since).
    pub(crate) fn gone_since(&self, node: NodeId, since: Instant) -> Option<Instant> {
        let g = self.inner.gone.lock().ok()?;
        g.filter(|(n, at)| *n == node && *at > since)
            .map(|(_, at)| at)
    }
}

/// Whether the host at `addr` refuses a TCP connection within `within`:
/// nothing listens there, so the process that did is gone. A timeout (a
/// partition: no answer at all) or any other error says "not known to be
/// gone". Nothing is sent on an accepted connection; it is closed at once.
///
/// An accepted connection is tried again a few times (5, 10, 20, 40 ms
/// apart, while `within` lasts): a dying process closes its sockets one by
/// one, and its listener may still accept for a moment after the connection
/// whose close sent us here has ended (a bench run caught exactly that: one
/// follower's only probe was accepted, and that kill took the whole election
/// timeout). A live leader accepts every try.
pub(crate) async fn refuses(addr: &str, within: Duration) -> bool {
    let until = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) => return e.kind() == std::io::ErrorKind::ConnectionRefused,
            Err(_) => return false,
            Ok(Ok(_accepted)) => {}
        }
        if Instant::now() + pause >= until {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_address_is_alive_and_a_closed_one_refuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Every try accepted, for as long as the probe may last.
        assert!(!refuses(&addr, Duration::from_millis(200)).await);
        drop(listener);
        assert!(refuses(&addr, Duration::from_secs(5)).await);
    }

    #[test]
    fn only_a_close_of_a_known_connection_names_a_node_and_a_mark_is_newer_than_the_last_word() {
        let l = Liveness::default();
        let conn: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(l.closed(conn), None);
        l.heard_over(conn, 7, "127.0.0.1:7000".into());
        assert!(l.knows(conn, 7) && !l.knows(conn, 8));
        assert_eq!(l.closed(conn), Some((7, "127.0.0.1:7000".into())));
        assert_eq!(l.closed(conn), None, "a close is reported once");

        let before = Instant::now();
        l.mark_gone(7);
        assert!(l.gone_since(7, before).is_some());
        assert!(l.gone_since(8, before).is_none(), "another node");
        // Heard from the node after the mark: it is back.
        assert!(l.gone_since(7, Instant::now()).is_none());

        // An early grant holds back every node but its candidate.
        let before = Instant::now();
        l.granted_early(3);
        assert!(l.granted_since(2, before).is_some());
        assert!(l.granted_since(3, before).is_none(), "the candidate itself");
        assert!(
            l.granted_since(2, Instant::now()).is_none(),
            "an older grant"
        );
    }

    #[tokio::test]
    async fn a_listener_that_closes_while_probed_is_found_gone() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Still accepting when the probe starts, gone 12 ms later: the probe
        // tries again and sees the refusal.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(12)).await;
            drop(listener);
        });
        assert!(refuses(&addr, Duration::from_secs(5)).await);
    }
}
