//! Serving the API over HTTPS (rustls), or plain HTTP when explicitly asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sc_raft::network::listen::{ConnLimits, Limited};
use sc_raft::{Node, TlsMaterial};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::api::{router, AppState};
use crate::auth::RateLimiter;
use crate::error::ServeError;
use crate::jobs::Jobs;
use sc_store::db::Db;

/// How the API is served.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Socket to listen on.
    pub listen: SocketAddr,
    /// Certificate and key for HTTPS; `None` serves plain HTTP (`--insecure-http`).
    pub tls: Option<TlsMaterial>,
    /// Requests per second per user (0: unlimited).
    pub rate: u32,
    /// Burst size per user.
    pub burst: u32,
    /// Audit events older than this are deleted (zero: kept for ever).
    pub audit_retention: std::time::Duration,
    /// Connection caps and timeouts ([`ApiOptions::default_limits`]).
    pub limits: ConnLimits,
}

impl ApiOptions {
    /// The admin API's caps: the node defaults, but an idle HTTP/1.1
    /// keep-alive connection is let go after two minutes (clients reconnect).
    pub fn default_limits() -> ConnLimits {
        ConnLimits {
            idle: Duration::from_secs(120),
            ..ConnLimits::default()
        }
    }
}

/// How long open connections may take to finish their requests once the
/// server stops; past it they are cut (everything acknowledged is on disk).
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A running API server. It stops when its shutdown token is cancelled (by
/// [`ApiServer::stop`] or by whoever owns the token, such as a whole region);
/// dropping it does not stop it.
pub struct ApiServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    /// The accept loop; it owns every connection task and returns only when
    /// they have all finished (or were cut after [`DRAIN`]).
    task: JoinHandle<()>,
    /// Request counts and latencies, for the region's `/metrics`.
    metrics: crate::metrics::ApiMetrics,
}

impl ApiServer {
    /// The API's request metrics (the region registers them).
    pub fn metrics(&self) -> &crate::metrics::ApiMetrics {
        &self.metrics
    }

    /// Stops accepting, lets open connections finish the requests they are
    /// serving (HTTP/1 keep-alive and HTTP/2 are shut down gracefully), and
    /// returns when every connection task has ended.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

fn tls_config(tls: &TlsMaterial) -> Result<rustls::ServerConfig, ServeError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServeError::Tls(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| ServeError::Tls(format!("key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Starts the API for `node`. Returns once the socket is bound; serves until
/// `shutdown` is cancelled.
pub async fn serve(
    node: Node,
    opts: ApiOptions,
    shutdown: CancellationToken,
) -> Result<ApiServer, ServeError> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let metrics = crate::metrics::ApiMetrics::default();
    let acceptor = match &opts.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(t)?))),
        None => None,
    };
    // Peers and the DR runbook find every region's API through the node status.
    node.set_services(|s| s.api = Some(addr.to_string()));
    let state = Arc::new(AppState {
        audit_queue: crate::audit_queue::AuditQueue::start(Db::new(node.clone()), shutdown.clone()),
        failed_logins: Default::default(),
        db: Db::new(node),
        limiter: RateLimiter::new(opts.rate, opts.burst),
        jobs: Jobs::default(),
        traffic: Default::default(),
        sessions: Default::default(),
    });
    // The console shares the port but not the API's middleware: its files are
    // public, and its session endpoints authenticate themselves.
    tokio::spawn(crate::retention::prune_audit(
        Db::new(state.db.node().clone()),
        opts.audit_retention,
        shutdown.clone(),
    ));
    let app = router(state.clone())
        .merge(crate::console::routes().with_state(state))
        .layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            crate::metrics::track,
        ));
    let task = tokio::spawn(accept_loop(
        listener,
        opts.limits,
        app,
        acceptor,
        shutdown.clone(),
    ));
    tracing::info!(%addr, https = opts.tls.is_some(), "admin API listening");
    Ok(ApiServer {
        addr,
        shutdown,
        task,
        metrics,
    })
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Accepts connections until `shutdown` (within the caps and timeouts of
/// [`sc_raft::network::listen`]), then waits for the open ones.
async fn accept_loop(
    listener: TcpListener,
    limits: ConnLimits,
    app: axum::Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let mut incoming = Box::pin(sc_raft::network::listen::incoming(
        listener,
        limits,
        "admin API",
    ));
    loop {
        let tcp = tokio::select! {
            r = incoming.next() => match r {
                Some(Ok(c)) => c,
                // The stream retries accept errors itself and never ends.
                Some(Err(_)) | None => continue,
            },
            // Reap finished connections so the set stays as small as the open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = shutdown.cancelled() => break,
        };
        let peer = tcp.peer();
        conns.spawn(connection(
            tcp,
            peer,
            app.clone(),
            acceptor.clone(),
            shutdown.clone(),
        ));
    }
    drop(incoming);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "admin API connections still open after {DRAIN:?}; cutting them"
        );
        conns.shutdown().await;
    }
}

/// Serves one connection; on `shutdown` it finishes the request in flight and
/// closes (graceful shutdown of HTTP/1 keep-alive and HTTP/2).
async fn connection(
    tcp: Limited,
    peer: SocketAddr,
    app: axum::Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let builder = Builder::new(TokioExecutor::new());
    let result = match acceptor {
        Some(acc) => {
            let tls = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE, acc.accept(tcp)) => match r {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake took too long");
                        return;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            drive(conn, &shutdown).await
        }
        None => {
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            drive(conn, &shutdown).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Runs a hyper connection to its end, asking it to wind down gracefully when
/// `shutdown` is cancelled.
async fn drive<I, S, B>(
    conn: hyper_util::server::conn::auto::Connection<'_, I, S, TokioExecutor>,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<B>,
    >,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    conn.await
}
