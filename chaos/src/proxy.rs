//! A TCP proxy that delays every byte by a fixed time in each direction: a slow
//! link on a kernel without netem. TLS passes through untouched (the proxy sees
//! only ciphertext), so the peers still authenticate each other end to end.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A running proxy; dropping it closes the listener and every connection.
pub struct DelayProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on `listen` and forwards each connection to `target`, holding
    /// every chunk back for `delay` (order is kept; throughput is not limited).
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Owned here: aborting the accept loop drops the set, which aborts
            // every connection's pumps with it.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        conns.spawn(relay(inbound, target, delay));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(DelayProxy { addr, task })
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(inbound: TcpStream, target: SocketAddr, delay: Duration) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    // Either direction ending ends the connection, as a cut link would.
    tokio::select! {
        _ = pump(ir, ow, delay) => {}
        _ = pump(or, iw, delay) => {}
    }
}

/// Copies `from` to `to`, each chunk leaving `delay` after it arrived.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    // The writer finishes the queue after the reader sees the end.
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_late() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(&buf).await.expect("write");
        });
        let delay = Duration::from_millis(150);
        let p = DelayProxy::start("127.0.0.1:0".parse().expect("addr"), target, delay)
            .await
            .expect("proxy");
        let mut c = TcpStream::connect(p.addr).await.expect("connect");
        let t0 = std::time::Instant::now();
        c.write_all(b"hello").await.expect("send");
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.expect("echo");
        assert_eq!(&back, b"hello");
        // Delayed once each way.
        assert!(t0.elapsed() >= 2 * delay, "{:?}", t0.elapsed());
    }
}
