//! Starting a node: open its storage, start Raft on its own runtime, serve the
//! Raft and federation services, start the background tasks, then bootstrap or
//! join.
//!
//! This is the one place that wires storage, the network servers and the
//! [`Node`] together. It sits above all three, so the node itself never
//! imports a server module (the federation server imports the node, not the
//! other way round).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

use openraft::Raft;
use sc_proto::federation::federation_server::FederationServer;
use sc_proto::raft::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::config::raft_config;
use crate::error::Error;
use crate::network::federation::FederationGrpc;
use crate::network::peers::MAX_MESSAGE;
use crate::network::raft_client::NetworkFactory;
use crate::network::raft_server::RaftGrpc;
use crate::network::read_spin::ReadSpin;
use crate::network::{Peers, TlsMaterial};
use crate::node::{Node, NodeOptions, NodeParts};
use crate::runtime::ConsensusRuntime;
use crate::storage::engine::DiskFaults;
use crate::storage::{NodeLog, StateMachine};
use crate::types::TypeConfig;

fn storage_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Storage {
        path: path.to_path_buf(),
        source,
    }
}

impl Node {
    /// Opens storage, starts Raft and the gRPC server, then bootstraps or joins
    /// as the options say. Returns once the server listens; leadership and joining
    /// proceed in the background (see [`Node::wait_until`]).
    ///
    /// Everything Raft does runs on the node's own consensus runtime (see
    /// [`crate::runtime`]); the caller's runtime only receives the handle.
    pub async fn start(opts: NodeOptions) -> Result<Node, Error> {
        opts.timeouts.validate().map_err(Error::Options)?;
        if !crate::pki::valid_node_name(&opts.info.name) {
            return Err(Error::Options(format!(
                "node name {:?} is not a DNS label",
                opts.info.name
            )));
        }
        let runtime = Arc::new(ConsensusRuntime::start(&opts.info.name).map_err(Error::Threads)?);
        // On an error `runtime` is dropped here, on the caller's side, which
        // stops the threads.
        runtime
            .handle()
            .spawn(Node::start_on(opts, runtime.clone()))
            .await
            .map_err(|e| Error::Stopped(format!("node start: {e}")))?
    }

    /// [`Node::start`]'s body, running on the consensus runtime so that the
    /// listener, the Raft core and the server's connection tasks belong to it.
    async fn start_on(opts: NodeOptions, runtime: Arc<ConsensusRuntime>) -> Result<Node, Error> {
        // Bind and set up TLS first: a taken address or unusable certificate must
        // fail before storage and Raft start.
        let (server, listener) = bind(&opts.tls, opts.listen, opts.timeouts.connect * 2).await?;
        let snapshot_dir = opts.data_dir.join("snapshots");
        let (log, sm) = open_storage(&opts.data_dir, &snapshot_dir, &opts.disk_faults)?;
        let view = sm.read_view();
        // A leader's own appends are reported flushed before their sync; the
        // state machine and the follower acknowledgements wait for the disk
        // instead (decision 0027).
        log.report_own_appends_early(opts.id);
        sm.apply_after(log.durable());

        let config = raft_config(&opts.cluster_name, &opts.timeouts, &opts.tuning)
            .map_err(Error::Options)?;
        let peers = Arc::new(Peers::new(
            opts.id,
            opts.tls.clone(),
            opts.net_faults.clone(),
            opts.timeouts.clone(),
            runtime.handle().clone(),
        ));
        let raft = Raft::new(
            opts.id,
            Arc::new(config),
            NetworkFactory::new(peers.clone(), log.durable()),
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| Error::Stopped(e.to_string()))?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let log_for_election = log.clone();
        let log_for_server = log.clone();
        let node = Node::assemble(NodeParts {
            id: opts.id,
            info: opts.info.clone(),
            raft: raft.clone(),
            view,
            log,
            peers: peers.clone(),
            timeouts: opts.timeouts.clone(),
            shutdown,
            runtime,
        });
        let raft_grpc = RaftGrpc::new(
            raft.clone(),
            snapshot_dir,
            node.fence().clone(),
            opts.timeouts.election_min,
            log_for_server,
            peers.clone(),
        );
        node.push_task(serve(
            server,
            listener,
            &node,
            raft_grpc,
            peers.clone(),
            opts.tuning.read_spin,
            shutdown_rx.clone(),
        ));
        node.push_task(tokio::spawn(crate::watchdog::watch_core(
            raft.clone(),
            opts.id,
            opts.timeouts.election_max,
            shutdown_rx.clone(),
        )));
        node.push_task(tokio::spawn(crate::watchdog::stop_core_on_log_failure(
            raft.clone(),
            log_for_election.durable(),
            opts.id,
            shutdown_rx.clone(),
        )));
        node.push_task(tokio::spawn(crate::instruments::count_elections(
            (opts.id, log_for_election.saved_vote_term()),
            raft.server_metrics(),
            node.instruments().clone(),
            shutdown_rx.clone(),
        )));
        node.push_task(tokio::spawn(crate::election::run(
            raft.clone(),
            log_for_election,
            peers,
            opts.id,
            shutdown_rx.clone(),
        )));
        tracing::info!(id = opts.id, node = %opts.info, "node listening");

        if opts.bootstrap {
            bootstrap(&raft, &opts).await?;
        }
        if !opts.join.is_empty() {
            let joiner = node.clone();
            let seeds = opts.join.clone();
            let voter = opts.voter;
            let mut stop = shutdown_rx;
            let task = tokio::spawn(async move {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = joiner.join_cluster(seeds, voter) => {}
                }
            });
            node.push_task(task);
        }
        Ok(node)
    }
}

/// The TLS server and its bound listener; a handshake must finish within
/// `handshake`: twice the peers' connect timeout, because behind a proxy that
/// takes the TCP connection at once (an L4 balancer, the chaos suite's slow
/// link) the server's clock starts before the client's.
async fn bind(
    tls: &TlsMaterial,
    listen: SocketAddr,
    handshake: Duration,
) -> Result<(Server, TcpListener), Error> {
    let server = Server::builder()
        .tls_config(tls.server_config(handshake))
        .map_err(|e| Error::Options(format!("TLS server config: {e}")))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            addr: listen.to_string(),
            source,
        })?;
    Ok((server, listener))
}

/// Opens the Raft log and the state machine under `data_dir`.
fn open_storage(
    data_dir: &Path,
    snapshot_dir: &Path,
    disk_faults: &DiskFaults,
) -> Result<(NodeLog, StateMachine), Error> {
    crate::storage::open_node_storage(data_dir, snapshot_dir, disk_faults)
        .map_err(storage_err(data_dir))
}

/// Serves the Raft and federation services of `node` on `listener` until
/// shutdown.
fn serve(
    mut server: Server,
    listener: TcpListener,
    node: &Node,
    raft_grpc: RaftGrpc,
    peers: Arc<Peers>,
    read_spin: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    // Every call's protocol headers are checked first (sc_proto::version): a
    // peer of a release this one cannot talk to is told which it needs.
    let router = server
        .add_service(InterceptedService::new(
            RaftServiceServer::new(raft_grpc)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            sc_proto::version::check,
        ))
        .add_service(InterceptedService::new(
            FederationServer::new(FederationGrpc::new(
                node.clone(),
                // On this runtime: its worker is the one that serves reads.
                ReadSpin::start(read_spin),
            ))
            .max_decoding_message_size(MAX_MESSAGE),
            sc_proto::version::check,
        ));
    // Raft messages are small and latency-bound: without TCP_NODELAY a vote
    // granted in microseconds reached its candidate tens of milliseconds
    // later (Nagle's algorithm waiting on a delayed ACK).
    // (TCP_NODELAY is set on every accepted connection by `listen`.)
    // A closed connection may be the leader's process dying (see
    // `network::liveness`).
    let on_close: crate::network::listen::OnClose =
        Arc::new(move |conn| peers.connection_closed(conn));
    let incoming = crate::network::listen::incoming_watched(
        listener,
        crate::network::listen::ConnLimits::default(),
        "raft",
        Some(on_close),
    );
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
            tracing::error!(error = %e, "gRPC server failed");
        }
    })
}

/// Initializes a new cluster with this node as its only voter, unless Raft
/// state is already on disk.
async fn bootstrap(raft: &Raft<TypeConfig>, opts: &NodeOptions) -> Result<(), Error> {
    if raft
        .is_initialized()
        .await
        .map_err(|e| Error::Stopped(e.to_string()))?
    {
        return Ok(());
    }
    let members = BTreeMap::from([(opts.id, opts.info.clone())]);
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(id = opts.id, "bootstrapped a new cluster"),
        Err(e) => tracing::info!(error = %e, "not bootstrapping"),
    }
    Ok(())
}
