//! An in-process supercluster for tests: N regions, one node each.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sc_raft::pki;

use crate::ports::free_port;
use sc_raft::{
    ClientId, Command, CommandResponse, Consistency, DiskFaults, Error, Mutation, NetFaults, Node,
    NodeId, NodeInfo, NodeOptions, Profile, Timeouts, TlsMaterial, Tuning,
};

/// Region names given to nodes 1, 2, 3, ...
pub const REGIONS: [&str; 6] = [
    "us-east", "eu-west", "ap-south", "us-west", "eu-north", "sa-east",
];

/// Installs a tracing subscriber once, honouring `RUST_LOG` (quiet by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A cluster of real nodes in this process.
pub struct TestCluster {
    /// Holds every node's data and the certificates; removed on drop.
    pub dir: tempfile::TempDir,
    /// The fault table every node consults before sending.
    pub faults: NetFaults,
    /// Per node: its options (kept for restarts) and, while it runs, the node.
    nodes: BTreeMap<NodeId, (NodeOptions, Option<Node>)>,
    tuning: Tuning,
}

/// Timeouts for tests: the LAN profile with a shorter client write deadline so
/// tests that expect a refusal do not wait long.
pub fn test_timeouts() -> Timeouts {
    let mut t = Timeouts::profile(Profile::Lan);
    t.write = Duration::from_secs(5);
    t
}

impl TestCluster {
    /// Starts `voters` nodes: node 1 bootstraps, the others join it as voters.
    /// Returns once every node is a voter and a leader is known everywhere.
    pub async fn start(voters: usize) -> TestCluster {
        Self::start_with(voters, Tuning::default()).await
    }

    /// [`TestCluster::start`] with snapshot tuning (to force snapshots in tests).
    pub async fn start_with(voters: usize, tuning: Tuning) -> TestCluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        pki::init_ca(&dir.path().join("certs"), "test").expect("CA");
        let mut c = TestCluster {
            dir,
            faults: NetFaults::new(),
            nodes: BTreeMap::new(),
            tuning,
        };
        for id in 1..=voters as NodeId {
            c.add_node(id, true).await;
        }
        c.wait_for_members(voters, Duration::from_secs(30)).await;
        c
    }

    /// Where the certificates are.
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Node options for node `id` (issuing its certificate).
    pub fn options(&self, id: NodeId, voter: bool) -> NodeOptions {
        let name = format!("node-{id}");
        let region = REGIONS[(id as usize - 1) % REGIONS.len()].to_string();
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let issued =
            pki::issue(&self.certs_dir(), &name, &region, &[localhost]).expect("issue cert");
        let tls = TlsMaterial::load(
            &self.certs_dir().join(pki::CA_CERT),
            &issued.cert,
            &issued.key,
        )
        .expect("tls");
        let listen = SocketAddr::new(localhost, free_port());
        let seeds: Vec<NodeInfo> = self
            .nodes
            .values()
            .map(|(o, _)| o.info.clone())
            .take(1)
            .collect();
        NodeOptions {
            id,
            info: NodeInfo {
                name,
                region,
                addr: listen.to_string(),
            },
            listen,
            data_dir: self.dir.path().join(format!("node-{id}")),
            tls,
            timeouts: test_timeouts(),
            tuning: self.tuning.clone(),
            cluster_name: "test".into(),
            bootstrap: self.nodes.is_empty(),
            join: seeds,
            voter,
            net_faults: self.faults.clone(),
            disk_faults: {
                // Every test node keeps the power-cut model (a map update
                // per sync), so any test can cut a node's power.
                let d = DiskFaults::default();
                d.track_power_cuts();
                d
            },
        }
    }

    /// The options node `id` runs with (its certificates, addresses), for tests
    /// that start more services beside the node.
    pub fn node_options(&self, id: NodeId) -> Option<&NodeOptions> {
        self.nodes.get(&id).map(|(o, _)| o)
    }

    /// Starts a new node `id` that joins (as voter or learner) through node 1.
    pub async fn add_node(&mut self, id: NodeId, voter: bool) -> Node {
        let opts = self.options(id, voter);
        self.add_node_with(opts).await
    }

    /// Starts a node from explicit options.
    pub async fn add_node_with(&mut self, opts: NodeOptions) -> Node {
        let node = Node::start(opts.clone()).await.expect("node starts");
        self.nodes.insert(opts.id, (opts, Some(node.clone())));
        node
    }

    /// Waits until `n` voters are in the membership of every running node and all
    /// agree on a leader.
    pub async fn wait_for_members(&self, n: usize, timeout: Duration) {
        for node in self.running() {
            // Settled, not only n voters: a joint configuration lists the new
            // voters too, and a test that cuts a region off while one is in
            // effect leaves the others unable to elect (it needs a majority of
            // the old voters as well). Under load that window was wide enough
            // to fail `a_minority_partition_…` about one run in ten.
            node.wait_until(timeout, "membership formed", |s| {
                s.leader.is_some()
                    && s.peers.iter().filter(|p| p.voter).count() == n
                    && !s.membership_changing
            })
            .await
            .expect("cluster formed");
        }
    }

    /// The running node `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes
            .get(&id)
            .and_then(|(_, n)| n.as_ref())
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Every running node.
    pub fn running(&self) -> Vec<Node> {
        self.nodes.values().filter_map(|(_, n)| n.clone()).collect()
    }

    /// Ids of running nodes.
    pub fn running_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, (_, n))| n.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Waits until the running nodes among `among` agree on a leader that is one of
    /// them, and returns it.
    pub async fn leader_among(&self, among: &[NodeId], timeout: Duration) -> NodeId {
        let started = std::time::Instant::now();
        loop {
            let views: Vec<Option<NodeId>> = among
                .iter()
                .map(|id| self.node(*id).status().leader)
                .collect();
            if let Some(Some(l)) = views.first() {
                if among.contains(l)
                    && views.iter().all(|v| v == &Some(*l))
                    && self.node(*l).is_leader()
                {
                    return *l;
                }
            }
            assert!(
                started.elapsed() < timeout,
                "no agreed leader among {among:?} after {timeout:?}: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leader agreed by all running nodes.
    pub async fn leader(&self) -> NodeId {
        self.leader_among(&self.running_ids(), Duration::from_secs(30))
            .await
    }

    /// Stops node `id` (its region fails); its data stays for a restart.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some((_, n)) = self.nodes.get_mut(&id) {
            if let Some(node) = n.take() {
                node.shutdown().await;
            }
        }
    }

    /// Restarts node `id` from its data directory, on the same address.
    pub async fn restart(&mut self, id: NodeId) -> Node {
        let (opts, _) = self
            .nodes
            .get(&id)
            .cloned()
            .unwrap_or_else(|| panic!("unknown node {id}"));
        let node = Node::start(opts).await.expect("node restarts");
        if let Some((_, n)) = self.nodes.get_mut(&id) {
            *n = Some(node.clone());
        }
        node
    }

    /// Waits until every running node has applied the same last index and holds an
    /// identical replica (by digest).
    pub async fn wait_converged(&self, timeout: Duration) {
        let started = std::time::Instant::now();
        loop {
            let nodes = self.running();
            let applied: Vec<Option<u64>> = nodes.iter().map(|n| n.status().last_applied).collect();
            let digests: Vec<u64> = nodes.iter().filter_map(|n| n.digest().ok()).collect();
            let leader_log = nodes
                .iter()
                .find(|n| n.is_leader())
                .and_then(|n| n.status().last_log_index);
            if applied.windows(2).all(|w| w[0] == w[1])
                && applied.first().copied().flatten() == leader_log
                && digests.len() == nodes.len()
                && digests.windows(2).all(|w| w[0] == w[1])
            {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "replicas did not converge: applied {applied:?} digests {digests:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node.
    pub async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// The disk fault switch of node `id`.
    pub fn disk(&self, id: NodeId) -> DiskFaults {
        self.nodes
            .get(&id)
            .map(|(o, _)| o.disk_faults.clone())
            .unwrap_or_default()
    }
}

/// A client session: a random client id and increasing serials.
pub struct Writer {
    /// The client id every command carries.
    pub client: ClientId,
    serial: u64,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A new session.
    pub fn new() -> Self {
        Writer {
            client: ClientId::random(),
            serial: 0,
        }
    }

    /// The next command putting `key = value`.
    pub fn put(&mut self, key: &str, value: &str) -> Command {
        self.serial += 1;
        Command {
            client: self.client,
            serial: self.serial,
            expect_revision: None,
            compare: vec![],
            ops: vec![Mutation::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            }],
        }
    }

    /// Writes through `node`.
    pub async fn write(
        &mut self,
        node: &Node,
        key: &str,
        value: &str,
    ) -> Result<CommandResponse, Error> {
        let cmd = self.put(key, value);
        node.write(cmd).await
    }
}

/// Reads `key` from `node` as a string (None when absent).
pub async fn read(
    node: &Node,
    key: &str,
    consistency: Consistency,
) -> Result<Option<String>, Error> {
    let r = node.get(key.as_bytes(), consistency).await?;
    Ok(r.value
        .map(|e| String::from_utf8_lossy(&e.value).to_string()))
}
