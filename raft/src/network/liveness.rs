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

    /// When `node` was found gone, if that happened after `since` (a mark
    /// older than the last word from the leader belongs to an earlier life of
    /// the process, restarted since).
    pub(crate) fn gone_since(&self, node: NodeId, since: Instant) -> Option<Instant> {
        let g = self.inner.gone.lock().ok()?;
        g.filter(|(n, at)| *n == node && *at > since)
            .map(|(_, at)| at)
    }
}

/// Whether the host at `addr` refuses a TCP connection: nothing listens
/// there, so the process that did is gone. A connection accepted, a timeout
/// (a partition: no answer at all) or any other error says "not known to be
/// gone". Nothing is sent on an accepted connection; it is closed at once.
pub(crate) async fn refuses(addr: &str, within: Duration) -> bool {
    match tokio::time::timeout(within, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listening_address_is_alive_and_a_closed_one_refuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert!(!refuses(&addr, Duration::from_secs(5)).await);
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
    }
}
