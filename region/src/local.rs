//! The local supercluster `pce up` makes: three regions on this machine, of
//! one node or more each, every node on its own loopback address, with real
//! certificates, real Raft and real disk. `pce up` runs it; the benchmarks that need a cluster in one process
//! start the same regions from the same files.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use sc_raft::pki;

use crate::config::NodeConfig;
use crate::{Region, RegionError};

/// The regions `pce up` starts, by their first node: (region, node name, Raft
/// id, loopback address). Further nodes of a region follow [`layout`].
pub const REGIONS: [(&str, &str, u64, Ipv4Addr); 3] = [
    ("us-east", "us-east-1", 1, Ipv4Addr::new(127, 0, 0, 11)),
    ("eu-west", "eu-west-1", 2, Ipv4Addr::new(127, 0, 0, 12)),
    ("ap-south", "ap-south-1", 3, Ipv4Addr::new(127, 0, 0, 13)),
];

/// The most nodes per region a local cluster has: node `k`'s address is
/// 127.0.`k-1`.x, and nine keeps a cluster a laptop can run.
pub const MAX_NODES_PER_REGION: usize = 9;

/// One node of a local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    /// Its region.
    pub region: &'static str,
    /// Its name (and certificate name): `{region}-{k}`.
    pub name: String,
    /// Its Raft id: the first nodes keep 1-3, node `k` of region `r` is
    /// `3(k-1) + r + 1`, so ids never collide as regions grow.
    pub id: u64,
    /// Its loopback address: 127.0.`k-1`.`11+r`, so every node listens on the
    /// same ports and none takes 127.0.0.21-23 (the benchmarks' etcd).
    pub ip: Ipv4Addr,
    /// Its directory under the cluster's: the region's name for the first
    /// node (as data directories from before several nodes per region have
    /// it), the node's name for the others.
    pub dir: String,
    /// Whether it votes. First nodes always do; further ones as asked.
    pub voter: bool,
}

impl LocalNode {
    /// The first node of `REGIONS[r]`.
    pub fn first(r: usize) -> LocalNode {
        let (region, name, id, ip) = REGIONS[r];
        LocalNode {
            region,
            name: name.to_string(),
            id,
            ip,
            dir: region.to_string(),
            voter: true,
        }
    }
}

/// The nodes of a local cluster with `per_region` nodes in each of the three
/// regions, region by region. Nodes after a region's first are voters when
/// `extra_voters`, else learners (replicas that serve VENs and never count
/// for the quorum).
pub fn layout(per_region: usize, extra_voters: bool) -> Result<Vec<LocalNode>, RegionError> {
    if per_region == 0 || per_region > MAX_NODES_PER_REGION {
        return Err(RegionError::Layout(format!(
            "--nodes-per-region must be 1 to {MAX_NODES_PER_REGION}, not {per_region}"
        )));
    }
    let mut nodes = Vec::new();
    for (r, &(region, _, _, ip)) in REGIONS.iter().enumerate() {
        nodes.push(LocalNode::first(r));
        for k in 2..=per_region {
            let name = format!("{region}-{k}");
            nodes.push(LocalNode {
                region,
                id: (REGIONS.len() * (k - 1) + r + 1) as u64,
                ip: Ipv4Addr::new(127, 0, (k - 1) as u8, ip.octets()[3]),
                dir: name.clone(),
                name,
                voter: extra_voters,
            });
        }
    }
    Ok(nodes)
}

/// The nodes whose directories exist under `dir`: what an earlier `pce up`
/// made there, whatever it was asked for then.
pub fn existing(dir: &Path, extra_voters: bool) -> Vec<LocalNode> {
    layout(MAX_NODES_PER_REGION, extra_voters)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| dir.join(&n.dir).join("node.toml").exists())
        .collect()
}

/// The ports every region of a local cluster listens on (each region has its
/// own loopback address, so they share the numbers).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Raft and federation (gRPC, mutual TLS).
    pub raft: u16,
    /// The admin API.
    pub api: u16,
    /// The VEN service.
    pub ven: u16,
    /// `/metrics`, if served.
    pub metrics: Option<u16>,
}

/// Writes the config of one node (certificate paths relative to the file).
fn write_config(dir: &Path, node: &LocalNode, ports: Ports) -> Result<PathBuf, RegionError> {
    let Ports {
        raft: port,
        api: api_port,
        ven: ven_port,
        metrics,
    } = ports;
    let LocalNode {
        region,
        name,
        id,
        ip,
        voter,
        ..
    } = node;
    let node_dir = dir.join(&node.dir);
    std::fs::create_dir_all(&node_dir).map_err(|source| RegionError::Files {
        path: node_dir.clone(),
        source,
    })?;
    let (_, seed_name, _, seed_ip) = REGIONS[0];
    let bootstrap = *id == 1;
    let join = if bootstrap {
        String::new()
    } else {
        format!("\n[[peers]]\nname = \"{seed_name}\"\naddr = \"{seed_ip}:{port}\"\n")
    };
    let role = if *voter { "voter" } else { "learner" };
    let metrics = metrics
        .map(|p| format!("\n[metrics]\nlisten = \"{ip}:{p}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "# Written by `pce up`; edit freely, it is rewritten only if deleted.\n\
         id = {id}\nname = \"{name}\"\nregion = \"{region}\"\nlisten = \"{ip}:{port}\"\n\
         data_dir = \"data\"\nprofile = \"lan\"\nbootstrap = {bootstrap}\nrole = \"{role}\"\n\n[tls]\nca = \"../certs/ca.pem\"\n\
         cert = \"../certs/{name}.pem\"\nkey = \"../certs/{name}.key\"\n\n[api]\nlisten = \"{ip}:{api_port}\"\n\n[ven]\nlisten = \"{ip}:{ven_port}\"\nca = \"../certs/ven-ca.pem\"\nca_key = \"../certs/ven-ca.key\"\n{metrics}{join}"
    );
    let path = node_dir.join("node.toml");
    if !path.exists() {
        std::fs::write(&path, text).map_err(|source| RegionError::Files {
            path: path.clone(),
            source,
        })?;
    }
    Ok(path)
}

/// Writes the certificate and config of one node the first time, and returns
/// the config's path: `pce up` starts the node from it in this process, a
/// test or a drill as a `pce serve` process of its own.
pub fn prepare_node(dir: &Path, node: &LocalNode, ports: Ports) -> Result<PathBuf, RegionError> {
    let certs = dir.join("certs");
    if !certs.join(format!("{}.pem", node.name)).exists() {
        pki::issue(&certs, &node.name, node.region, &[IpAddr::V4(node.ip)])
            .map_err(|e| RegionError::Certificates(e.to_string()))?;
    }
    write_config(dir, node, ports)
}

/// Starts (or restarts, from its data) one node under `dir`, writing its
/// config the first time; the certificates must exist (see [`run`]).
pub async fn start_node(
    dir: &Path,
    node: &LocalNode,
    ports: Ports,
    insecure_http: bool,
) -> Result<(PathBuf, Region), RegionError> {
    let path = prepare_node(dir, node, ports)?;
    let cfg = NodeConfig::load(&path)?;
    let region = Region::start(cfg.region_options(insecure_http)?).await?;
    Ok((path, region))
}

/// Starts (or restarts) the first node of a region: [`start_node`] for the
/// entries of [`REGIONS`], which the benchmarks address by region.
pub async fn start_region(
    dir: &Path,
    (region, ..): (&str, &str, u64, Ipv4Addr),
    ports: Ports,
    insecure_http: bool,
) -> Result<(PathBuf, Region), RegionError> {
    let r = REGIONS
        .iter()
        .position(|x| x.0 == region)
        .ok_or_else(|| RegionError::Layout(format!("no local region {region}")))?;
    start_node(dir, &LocalNode::first(r), ports, insecure_http).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nodes_keep_their_ids_addresses_and_directories() {
        let nodes = layout(1, true).unwrap();
        assert_eq!(nodes.len(), 3);
        for (n, (region, name, id, ip)) in nodes.iter().zip(REGIONS) {
            assert_eq!(
                (n.region, n.name.as_str(), n.id, n.ip),
                (region, name, id, ip)
            );
            assert_eq!(n.dir, region);
        }
    }

    #[test]
    fn further_nodes_get_unique_ids_names_and_addresses() {
        let nodes = layout(3, false).unwrap();
        assert_eq!(nodes.len(), 9);
        let mut ids: Vec<_> = nodes.iter().map(|n| n.id).collect();
        ids.sort();
        assert_eq!(ids, (1..=9).collect::<Vec<_>>());
        let ips: std::collections::HashSet<_> = nodes.iter().map(|n| n.ip).collect();
        assert_eq!(ips.len(), 9);
        let second = nodes.iter().find(|n| n.name == "eu-west-2").unwrap();
        assert_eq!((second.id, second.ip), (5, Ipv4Addr::new(127, 0, 1, 12)));
        assert!(!second.voter, "extra nodes are learners unless asked");
        assert!(layout(0, true).is_err() && layout(10, true).is_err());
    }
}
