//! The region's `/metrics` endpoint: one Prometheus registry per region, into
//! which the node, the admin API and the VEN service register their series.
//!
//! It listens on its own address, in plain HTTP and without authentication,
//! as etcd's `--listen-metrics-urls` and most exporters do: scrapers rarely
//! hold client certificates, and the figures say nothing about policy. Bind
//! it to loopback or a management network (docs/decisions/0020-metrics.md).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::RegionError;

/// The OpenMetrics text format, which Prometheus asks for first.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running `/metrics` listener.
pub struct MetricsServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `listen` and serves `registry` until `shutdown` is cancelled.
    pub async fn start(
        registry: Registry,
        listen: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<MetricsServer, RegionError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| RegionError::Metrics {
                addr: listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RegionError::Metrics {
                addr: listen,
                source,
            })?;
        let registry = Arc::new(registry);
        let app = axum::Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { render(&registry) }
            }),
        );
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "metrics listener stopped");
            }
        });
        tracing::info!(%addr, "metrics listening (/metrics, plain HTTP)");
        Ok(MetricsServer { addr, task })
    }

    /// Waits for the listener to finish (after the shutdown token fired).
    pub async fn stop(self) {
        let _ = self.task.await;
    }
}

/// One scrape: the whole registry in the OpenMetrics text format.
fn render(registry: &Registry) -> axum::response::Response {
    let mut body = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => ([(CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        )
            .into_response(),
    }
}
