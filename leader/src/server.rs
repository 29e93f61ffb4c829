//! Serving the API over HTTPS (rustls), or plain HTTP when explicitly asked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sc_raft::{Node, TlsMaterial};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
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
}

/// A running API server; dropping it does not stop it, [`ApiServer::stop`] does.
pub struct ApiServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Stops accepting and ends open connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
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

/// Starts the API for `node`. Returns once the socket is bound.
pub async fn serve(node: Node, opts: ApiOptions) -> Result<ApiServer, ServeError> {
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
    let acceptor = match &opts.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(t)?))),
        None => None,
    };
    // Peers and the DR runbook find every region's API through the node status.
    node.set_services(|s| s.api = Some(addr.to_string()));
    let state = Arc::new(AppState {
        db: Db::new(node),
        limiter: RateLimiter::new(opts.rate, opts.burst),
        jobs: Jobs::default(),
    });
    let app = router(state);
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                _ = stopped.changed() => break,
            };
            // Answers are small and a client waits on each one: without
            // TCP_NODELAY a reply can sit behind a delayed ACK for ~40 ms.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "TCP_NODELAY");
            }
            let app = app.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        app.clone().oneshot(req)
                    },
                );
                let builder = Builder::new(TokioExecutor::new());
                let result = match acceptor {
                    Some(acc) => match acc.accept(tcp).await {
                        Ok(tls) => builder.serve_connection(TokioIo::new(tls), svc).await,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    },
                    None => builder.serve_connection(TokioIo::new(tcp), svc).await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    });
    tracing::info!(%addr, https = opts.tls.is_some(), "admin API listening");
    Ok(ApiServer { addr, stop, task })
}
