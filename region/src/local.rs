//! The local supercluster `pce up` makes: three regions on this machine, each
//! on its own loopback address, with real certificates, real Raft and real
//! disk. `pce up` runs it; the benchmarks that need a cluster in one process
//! start the same regions from the same files.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use sc_raft::pki;

use crate::config::NodeConfig;
use crate::{Region, RegionError};

/// The regions `pce up` starts: (region, node name, Raft id, loopback address).
pub const REGIONS: [(&str, &str, u64, Ipv4Addr); 3] = [
    ("us-east", "us-east-1", 1, Ipv4Addr::new(127, 0, 0, 11)),
    ("eu-west", "eu-west-1", 2, Ipv4Addr::new(127, 0, 0, 12)),
    ("ap-south", "ap-south-1", 3, Ipv4Addr::new(127, 0, 0, 13)),
];

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

/// Writes the config of one region (certificate paths relative to the file).
fn write_config(
    dir: &Path,
    region: &str,
    name: &str,
    id: u64,
    ip: Ipv4Addr,
    ports: Ports,
) -> Result<PathBuf, RegionError> {
    let Ports {
        raft: port,
        api: api_port,
        ven: ven_port,
        metrics,
    } = ports;
    let node_dir = dir.join(region);
    std::fs::create_dir_all(&node_dir).map_err(|source| RegionError::Files {
        path: node_dir.clone(),
        source,
    })?;
    let (_, seed_name, _, seed_ip) = REGIONS[0];
    let bootstrap = id == 1;
    let join = if bootstrap {
        String::new()
    } else {
        format!("\n[[peers]]\nname = \"{seed_name}\"\naddr = \"{seed_ip}:{port}\"\n")
    };
    let metrics = metrics
        .map(|p| format!("\n[metrics]\nlisten = \"{ip}:{p}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "# Written by `pce up`; edit freely, it is rewritten only if deleted.\n\
         id = {id}\nname = \"{name}\"\nregion = \"{region}\"\nlisten = \"{ip}:{port}\"\n\
         data_dir = \"data\"\nprofile = \"lan\"\nbootstrap = {bootstrap}\n\n[tls]\nca = \"../certs/ca.pem\"\n\
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

/// Starts (or restarts, from its data) one region under `dir`, writing its config
/// the first time; the certificates must exist (see [`run`]).
pub async fn start_region(
    dir: &Path,
    (region, name, id, ip): (&str, &str, u64, Ipv4Addr),
    ports: Ports,
    insecure_http: bool,
) -> Result<(PathBuf, Region), RegionError> {
    let certs = dir.join("certs");
    if !certs.join(format!("{name}.pem")).exists() {
        pki::issue(&certs, name, region, &[IpAddr::V4(ip)])
            .map_err(|e| RegionError::Certificates(e.to_string()))?;
    }
    let path = write_config(dir, region, name, id, ip, ports)?;
    let cfg = NodeConfig::load(&path)?;
    let region = Region::start(cfg.region_options(insecure_http)?).await?;
    Ok((path, region))
}
