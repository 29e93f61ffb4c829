//! Accepting connections so that no client can exhaust the process: a cap on
//! open connections (in all, and per client address), a deadline for a new
//! connection's first bytes (a TLS handshake never started), an idle timeout
//! (nothing read for a long while), backoff when accept itself fails (out of
//! file descriptors), and one log line per burst of trouble, not one per
//! connection. Every server of a node (Raft and federation, the VEN service,
//! the admin API) accepts through [`incoming`].
//!
//! A connection over a cap is accepted and closed at once: left in the
//! kernel's backlog it would keep its client waiting, and refusing it here
//! costs one descriptor for an instant.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// What one server accepts.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Open connections at most.
    pub max_total: usize,
    /// Open connections from one address at most.
    pub max_per_ip: usize,
    /// A new connection must send something within this (its TLS hello).
    pub first_bytes: Duration,
    /// A connection that sends nothing for this long is closed (HTTP/2
    /// keep-alive pings, VEN heartbeats and Raft traffic are well inside it).
    pub idle: Duration,
}

impl Default for ConnLimits {
    /// Far above what a region's clients need (thousands of VENs, a few
    /// peers, operators), far below the 20,000 descriptors a host gives a
    /// process by default.
    fn default() -> Self {
        ConnLimits {
            max_total: 12_000,
            max_per_ip: 512,
            first_bytes: Duration::from_secs(10),
            idle: Duration::from_secs(300),
        }
    }
}

/// Counts of open connections, shared by the accept loop and the
/// connections' guards (a std Mutex: held for a map update only).
#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// Logs at most one line per `every` for one kind of trouble, with how many
/// times it happened since the last line.
pub struct Throttled {
    every: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Throttled {
    /// A log of at most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Throttled {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(times it happened since the last line)` when a line is due now.
    pub fn due(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed) + 1)
    }
}

/// The accepted connections of `listener`, within `limits`; `server` names
/// it in logs. The stream never ends on an accept error: it backs off and
/// tries again.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    server: &'static str,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    incoming_watched(listener, limits, server, None)
}

/// Called with a connection's remote address when the connection closes.
pub type OnClose = Arc<dyn Fn(SocketAddr) + Send + Sync>;

/// [`incoming`], calling `on_close` as each connection closes (the Raft
/// server learns this way that a leader's connection ended: see
/// [`super::liveness`]).
pub fn incoming_watched(
    listener: TcpListener,
    limits: ConnLimits,
    server: &'static str,
    on_close: Option<OnClose>,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    struct State {
        listener: TcpListener,
        limits: ConnLimits,
        server: &'static str,
        open: Arc<Mutex<Open>>,
        backoff: Duration,
        accept_errors: Throttled,
        over_cap: Throttled,
        on_close: Option<OnClose>,
    }
    let state = State {
        listener,
        limits,
        server,
        open: Arc::default(),
        backoff: Duration::ZERO,
        accept_errors: Throttled::new(Duration::from_secs(10)),
        over_cap: Throttled::new(Duration::from_secs(10)),
        on_close,
    };
    futures_util::stream::unfold(state, |mut st| async move {
        loop {
            let (tcp, peer) = match st.listener.accept().await {
                Ok(x) => {
                    st.backoff = Duration::ZERO;
                    x
                }
                Err(e) => {
                    // Out of descriptors (or memory): retrying at once only
                    // spins; wait, longer each time, up to a second.
                    st.backoff =
                        (st.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if let Some(n) = st.accept_errors.due() {
                        tracing::warn!(server = st.server, error = %e, times = n, "accepting connections fails; backing off");
                    }
                    tokio::time::sleep(st.backoff).await;
                    continue;
                }
            };
            let admitted = match st.open.lock() {
                Ok(mut o) => {
                    let from_ip = o.by_ip.get(&peer.ip()).copied().unwrap_or(0);
                    if o.total >= st.limits.max_total || from_ip >= st.limits.max_per_ip {
                        false
                    } else {
                        o.total += 1;
                        *o.by_ip.entry(peer.ip()).or_default() += 1;
                        true
                    }
                }
                Err(_) => false,
            };
            if !admitted {
                if let Some(n) = st.over_cap.due() {
                    tracing::warn!(server = st.server, %peer, refused = n, max_total = st.limits.max_total, max_per_ip = st.limits.max_per_ip, "connection cap reached: closing new connections");
                }
                drop(tcp);
                continue;
            }
            // Small messages (Raft votes, policy pushes, API answers) go out
            // now, not after a delayed ACK.
            let _ = tcp.set_nodelay(true);
            let conn = Limited {
                inner: tcp,
                peer,
                _guard: Guard {
                    open: st.open.clone(),
                    peer,
                    on_close: st.on_close.clone(),
                },
                idle: st.limits.idle,
                last_read: None,
                deadline: Box::pin(tokio::time::sleep(st.limits.first_bytes)),
            };
            return Some((Ok(conn), st));
        }
    })
}

/// Gives a connection's place back when it closes, and says it closed.
struct Guard {
    open: Arc<Mutex<Open>>,
    peer: SocketAddr,
    on_close: Option<OnClose>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut o) = self.open.lock() {
            o.total = o.total.saturating_sub(1);
            let ip = self.peer.ip();
            if let Some(n) = o.by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    o.by_ip.remove(&ip);
                }
            }
        }
        if let Some(f) = &self.on_close {
            f(self.peer);
        }
    }
}

/// An accepted connection that holds its place under the caps and fails its
/// reads once it has been silent too long.
pub struct Limited {
    inner: TcpStream,
    peer: SocketAddr,
    /// Frees the connection's place under the caps when it is dropped.
    _guard: Guard,
    idle: Duration,
    /// When bytes last came in (`None`: never yet).
    last_read: Option<Instant>,
    /// When silence ends the connection; moved forward lazily, only when it
    /// fires (a read only notes its time, so busy connections pay nothing).
    deadline: Pin<Box<Sleep>>,
}

impl Limited {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_read = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => loop {
                if this.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                match this.last_read {
                    Some(t) if t.elapsed() < this.idle => {
                        let at = t + this.idle;
                        this.deadline.as_mut().reset(at);
                    }
                    _ => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client sent nothing for too long",
                        )));
                    }
                }
            },
            other => other,
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn caps_close_the_extra_connections_and_silence_closes_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnLimits {
            max_total: 10,
            max_per_ip: 2,
            first_bytes: Duration::from_millis(300),
            idle: Duration::from_millis(300),
        };
        let mut conns = Box::pin(incoming(listener, limits, "test"));
        // The server side echoes until its connection fails.
        tokio::spawn(async move {
            while let Some(Ok(mut c)) = conns.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        // A third from the same address is closed at once.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed, not left hanging");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // The one that talks stays; the silent one is closed.
        for _ in 0..10 {
            talker.write_all(b"hi").await.unwrap();
            let mut got = [0u8; 2];
            talker.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hi");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("the silent connection is closed");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // Its place is free again.
        let mut again = TcpStream::connect(addr).await.unwrap();
        again.write_all(b"ok").await.unwrap();
        let mut got = [0u8; 2];
        again.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ok");
    }

    #[tokio::test]
    async fn a_closed_connection_is_reported_with_its_remote_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let on_close: OnClose = Arc::new(move |peer| {
            let _ = tx.send(peer);
        });
        let mut conns = Box::pin(incoming_watched(
            listener,
            ConnLimits::default(),
            "test",
            Some(on_close),
        ));
        // The server side reads until the client goes away.
        tokio::spawn(async move {
            while let Some(Ok(mut c)) = conns.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        let client = TcpStream::connect(addr).await.unwrap();
        let local = client.local_addr().unwrap();
        assert!(rx.try_recv().is_err(), "open: nothing reported");
        drop(client);
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the close is reported");
        assert_eq!(closed, Some(local));
    }

    #[test]
    fn trouble_is_logged_once_per_period_with_a_count() {
        let mut t = Throttled::new(Duration::from_secs(60));
        assert_eq!(t.due(), Some(1));
        for _ in 0..1000 {
            assert_eq!(t.due(), None);
        }
    }
}
