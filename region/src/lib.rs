//! One region node as operators run it: the Raft node, the admin API beside it
//! and the VEN service beside it, wired in one place; its configuration file
//! ([`config`]); and the local three-region layout `pce up` makes ([`local`]). `pce serve` runs one,
//! `pce up` three, and benchmarks and tests as many as they need in one process.
//!
//! Every server of a region obeys one shutdown token (as mini-redis does with
//! its broadcast): cancelling it, from a signal handler or from
//! [`Region::stop`], makes the VEN service end its streams (so VENs fail over)
//! and the admin API finish the requests in flight; `stop` then waits for their
//! connection tasks before the node itself shuts down, so a restarted region can
//! reopen the same data directory at once.

pub mod config;
pub mod local;
pub mod metrics;
pub mod reference;

use std::path::PathBuf;
use std::time::Duration;

use metrics::MetricsServer;
use prometheus_client::registry::Registry;
use sc_leader::{ApiOptions, ApiServer, ServeError};
use sc_member::{MemberError, VenOptions, VenServer};
use sc_raft::{Node, NodeOptions};
use tokio_util::sync::CancellationToken;

/// How long a stopping region may take. Everything acknowledged is already on
/// disk, so giving up is as safe as the kill -9 the crash tests prove safe; an
/// operator's Ctrl-C must not hang.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// What one region node runs: the node always; the admin API and the VEN
/// service when configured (a learner in a read-only region may serve neither).
#[derive(Debug, Clone)]
pub struct RegionOptions {
    /// The Raft node.
    pub node: NodeOptions,
    /// The admin REST API, if this node serves it.
    pub api: Option<ApiOptions>,
    /// The VEN service, if this node serves VENs.
    pub ven: Option<VenOptions>,
    /// Where `/metrics` listens, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Why a region did not start or stop cleanly; each names the part.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The Raft node did not start.
    #[error("starting the node: {0}")]
    Node(#[from] sc_raft::Error),
    /// The admin API did not start.
    #[error("starting the admin API: {0}")]
    Api(#[from] ServeError),
    /// The VEN service did not start.
    #[error("starting the VEN service: {0}")]
    Ven(#[from] MemberError),
    /// The configuration file is wrong.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Files of a local cluster (its configuration, its directories).
    #[error("{path}: {source}")]
    Files {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A local cluster cannot be laid out as asked (`pce up`).
    #[error("{0}")]
    Layout(String),
    /// Issuing a node certificate for a local cluster.
    #[error("certificates: {0}")]
    Certificates(String),
    /// The metrics listener did not start.
    #[error("starting the metrics listener on {addr}: {source}")]
    Metrics {
        /// The address it was to listen on.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Stopping took longer than [`STOP_GRACE`].
    #[error("stopping did not finish in {0:?} (everything acknowledged is on disk)")]
    StopTimeout(Duration),
}

/// A running region node. Dropping it does not stop it: [`Region::stop`] does,
/// or cancelling its [`Region::shutdown`] token and then calling `stop`.
pub struct Region {
    /// The Raft node (status, leadership, writes).
    pub node: Node,
    api: Option<ApiServer>,
    ven: Option<VenServer>,
    metrics: Option<MetricsServer>,
    /// The one signal every server of the region obeys.
    shutdown: CancellationToken,
}

impl Region {
    /// Starts the node, then the admin API and the VEN service beside it. If a
    /// service fails to start, what already started is stopped again, so a
    /// failed start leaves nothing running and the data directory free.
    pub async fn start(opts: RegionOptions) -> Result<Region, RegionError> {
        let shutdown = CancellationToken::new();
        let node = Node::start(opts.node).await?;
        node.set_services(|s| {
            s.pid = Some(std::process::id());
            s.release = Some(env!("CARGO_PKG_VERSION").to_string());
            s.protocol = Some(sc_proto::version::PROTOCOL);
        });
        let mut region = Region {
            node,
            api: None,
            ven: None,
            metrics: None,
            shutdown,
        };
        if let Some(o) = opts.api {
            match sc_leader::serve(region.node.clone(), o, region.shutdown.child_token()).await {
                Ok(api) => region.api = Some(api),
                Err(e) => {
                    let _ = region.stop().await;
                    return Err(e.into());
                }
            }
        }
        if let Some(o) = opts.ven {
            let started =
                VenServer::start(region.node.clone(), o, region.shutdown.child_token()).await;
            match started {
                Ok(ven) => region.ven = Some(ven),
                Err(e) => {
                    let _ = region.stop().await;
                    return Err(e.into());
                }
            }
        }
        if let Some(listen) = opts.metrics {
            let started =
                MetricsServer::start(region.registry(), listen, region.shutdown.child_token())
                    .await;
            match started {
                Ok(m) => region.metrics = Some(m),
                Err(e) => {
                    let _ = region.stop().await;
                    return Err(e);
                }
            }
        }
        Ok(region)
    }

    /// A registry holding every series of this region: the node's, the admin
    /// API's and the VEN service's (what `/metrics` serves).
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        self.node.register_metrics(&mut registry);
        if let Some(api) = &self.api {
            api.metrics().register(&mut registry);
        }
        if let Some(ven) = &self.ven {
            ven.metrics().register(&mut registry);
        }
        registry
    }

    /// Where `/metrics` listens, when it does.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// The admin API, when this node serves it.
    pub fn api(&self) -> Option<&ApiServer> {
        self.api.as_ref()
    }

    /// The VEN service, when this node serves it.
    pub fn ven(&self) -> Option<&VenServer> {
        self.ven.as_ref()
    }

    /// The region's shutdown token: cancel it to make every server wind down
    /// (a signal handler does); [`Region::stop`] then waits for them.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancels the shutdown token, waits for the VEN service and the admin API
    /// to finish their connections, then shuts the node down; at most
    /// [`STOP_GRACE`].
    pub async fn stop(self) -> Result<(), RegionError> {
        self.shutdown.cancel();
        let Region {
            node,
            api,
            ven,
            metrics,
            ..
        } = self;
        let stopping = async {
            if let Some(m) = metrics {
                m.stop().await;
            }
            if let Some(v) = ven {
                v.stop().await;
                tracing::info!("VEN service stopped");
            }
            if let Some(a) = api {
                a.stop().await;
                tracing::info!("admin API stopped");
            }
            node.shutdown().await;
        };
        tokio::time::timeout(STOP_GRACE, stopping)
            .await
            .map_err(|_| RegionError::StopTimeout(STOP_GRACE))
    }
}
