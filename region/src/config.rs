//! The region node's configuration file (`pce serve --config FILE`), parsed
//! once and validated with messages that say what to fix.
//!
//! Relative paths in the file are relative to the file's own directory, so a
//! configuration directory can be moved as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sc_raft::{
    pki, DiskFaults, NetFaults, NodeInfo, NodeOptions, Profile, Timeouts, TlsMaterial, Tuning,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::RegionOptions;

/// What is wrong with a configuration file: each message names the field (or
/// the file) and what would be right.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of this shape.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, field).
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The TLS files named by the configuration are unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// A client for the node cannot be built.
    #[error("client: {0}")]
    Client(#[from] sc_raft::Error),
}

type Result<T> = std::result::Result<T, ConfigError>;

macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err(ConfigError::Invalid(format!($($arg)*)))
    };
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft id: unique in the cluster, never reused.
    pub id: u64,
    /// DNS-label name; must match the name in the node's certificate.
    pub name: String,
    /// Region this node serves.
    pub region: String,
    /// Socket to listen on for inter-region gRPC.
    pub listen: String,
    /// Address peers use to reach this node (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where the Raft log, state and snapshots live.
    pub data_dir: PathBuf,
    /// Timeouts for nodes a few milliseconds apart (`lan`: heartbeat 100 ms,
    /// election 500-700 ms) or in different regions (`wan`: heartbeat 500 ms,
    /// election 9-12 s); `[timeouts]` overrides single values.
    #[serde(default = "default_profile")]
    #[schemars(schema_with = "profile_schema")]
    pub profile: Profile,
    /// Start a new cluster with this node as its only voter (first region only).
    #[serde(default)]
    pub bootstrap: bool,
    /// Whether the node votes (`voter`) or only keeps a replica
    /// (`learner`: a far or read-only region that must not slow the quorum).
    #[serde(default)]
    pub role: Role,
    /// Name of the cluster (appears in logs).
    #[serde(default = "default_cluster")]
    pub cluster_name: String,
    /// Certificates.
    pub tls: TlsFiles,
    /// Existing members to join through.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Overrides of the profile's timeouts.
    #[serde(default)]
    pub timeouts: TimeoutOverrides,
    /// Snapshot policy.
    #[serde(default)]
    pub snapshots: Snapshots,
    /// How the node serves replica reads over the federation service.
    #[serde(default)]
    pub reads: Reads,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The admin REST API (not served when absent).
    #[serde(default)]
    pub api: Option<ApiConfig>,
    /// The VEN service (not served when absent).
    #[serde(default)]
    pub ven: Option<VenConfig>,
    /// Prometheus metrics (not served when absent).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
}

/// Where the node serves Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Socket for `/metrics`, plain HTTP without authentication: bind it to
    /// loopback or a management network.
    pub listen: String,
}

/// The VEN service of this node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VenConfig {
    /// Socket VENs connect to (TLS with this node's certificate).
    pub listen: String,
    /// Address VENs are told to use (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The VEN CA certificate (signs VEN identities; not the cluster CA).
    pub ca: PathBuf,
    /// The VEN CA key (mode 0600).
    pub ca_key: PathBuf,
    /// Seconds a VEN may be away before its workload goes offline.
    #[serde(default = "default_offline")]
    pub offline_after_secs: u64,
    /// Hours flow summaries are kept.
    #[serde(default = "default_retention")]
    pub flow_retention_hours: u64,
    /// MiB of flow summaries kept at most; past it the oldest go first.
    #[serde(default = "default_flow_budget")]
    pub flow_disk_budget_mb: u64,
    /// The most flows in one report.
    #[serde(default = "default_batch")]
    pub max_flow_batch: usize,
}

fn default_offline() -> u64 {
    60
}

fn default_retention() -> u64 {
    168
}

fn default_flow_budget() -> u64 {
    10 * 1024
}

fn default_batch() -> usize {
    1000
}

impl VenConfig {
    /// Options for `sc_member::VenServer::start`.
    pub fn to_options(
        &self,
        tls: &sc_raft::TlsMaterial,
        data_dir: &Path,
    ) -> Result<sc_member::VenOptions> {
        let listen = parse_addr("ven.listen", &self.listen)?;
        if let Some(a) = &self.advertise {
            parse_addr("ven.advertise", a)?;
        }
        for (field, p) in [("ven.ca", &self.ca), ("ven.ca_key", &self.ca_key)] {
            if !p.exists() {
                invalid!(
                    "{field}: {} does not exist (pce certs init makes the VEN CA)",
                    p.display()
                );
            }
        }
        if self.offline_after_secs == 0 || self.max_flow_batch == 0 {
            invalid!("ven.offline_after_secs and ven.max_flow_batch must be positive");
        }
        let mut o = sc_member::VenOptions::new(
            listen,
            tls.clone(),
            (self.ca.clone(), self.ca_key.clone()),
            data_dir.join("flows"),
        );
        o.advertise = self.advertise.clone();
        o.offline_after = std::time::Duration::from_secs(self.offline_after_secs);
        o.flow_retention = std::time::Duration::from_secs(self.flow_retention_hours * 3600);
        o.flow_disk_budget = self.flow_disk_budget_mb.saturating_mul(1 << 20);
        o.max_flow_batch = self.max_flow_batch;
        Ok(o)
    }
}

/// The admin REST API of this node.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Socket for HTTPS (the node's certificate and key serve it).
    pub listen: String,
    /// Requests per second per user (0: unlimited).
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Requests a user may make at once above the rate.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Days audit events are kept (0: for ever).
    #[serde(default = "default_audit_days")]
    pub audit_retention_days: u64,
    /// Open connections at most (all clients).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections from one address at most.
    #[serde(default = "default_max_per_ip")]
    pub max_connections_per_ip: usize,
}

fn default_max_connections() -> usize {
    sc_leader::ApiOptions::default_limits().max_total
}

fn default_max_per_ip() -> usize {
    sc_leader::ApiOptions::default_limits().max_per_ip
}

fn default_audit_days() -> u64 {
    90
}

fn default_rate() -> u32 {
    2000
}

fn default_burst() -> u32 {
    4000
}

impl ApiConfig {
    /// Options for `sc_leader::serve`; `insecure_http` only from the command line.
    pub fn to_options(
        &self,
        tls: &sc_raft::TlsMaterial,
        insecure_http: bool,
    ) -> Result<sc_leader::ApiOptions> {
        Ok(sc_leader::ApiOptions {
            listen: parse_addr("api.listen", &self.listen)?,
            tls: if insecure_http {
                None
            } else {
                Some(tls.clone())
            },
            rate: self.rate,
            burst: self.burst,
            audit_retention: std::time::Duration::from_secs(self.audit_retention_days * 86_400),
            limits: sc_raft::network::listen::ConnLimits {
                max_total: self.max_connections,
                max_per_ip: self.max_connections_per_ip,
                ..sc_leader::ApiOptions::default_limits()
            },
        })
    }
}

fn default_profile() -> Profile {
    Profile::Lan
}

/// `Profile` lives in `sc-raft`, which knows nothing of config files.
fn profile_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "enum": ["lan", "wan"] })
}

fn default_cluster() -> String {
    "supercluster".into()
}

/// The role a node asks for when it joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Votes in elections and counts for the quorum.
    #[default]
    Voter,
    /// Replica only.
    Learner,
}

/// Paths of the node's TLS files.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// A member to contact when joining.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node name (the TLS server name).
    pub name: String,
    /// Its address.
    pub addr: String,
}

/// Timeout overrides in milliseconds (absent: the profile's value).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutOverrides {
    /// Milliseconds between the leader's heartbeats.
    pub heartbeat_ms: Option<u64>,
    /// Milliseconds without a leader before a follower may campaign, at least
    /// (at least three heartbeats).
    pub election_min_ms: Option<u64>,
    /// Milliseconds without a leader before a follower campaigns, at most.
    pub election_max_ms: Option<u64>,
    /// Milliseconds a write may wait for a leader before it fails.
    pub write_ms: Option<u64>,
}

/// When to snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshots {
    /// Log entries between snapshots.
    pub every: u64,
    /// Log entries kept behind a snapshot (for followers that lag a little).
    pub keep_logs: u64,
}

impl Default for Snapshots {
    fn default() -> Self {
        let t = Tuning::default();
        Snapshots {
            every: t.snapshot_every,
            keep_logs: t.keep_logs,
        }
    }
}

/// How the node serves replica reads over the federation service.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reads {
    /// Microseconds the consensus worker stays awake after a federation read
    /// that came within this long of the answer before it, instead of
    /// sleeping until the next read wakes it: one client reading in a loop
    /// gets about 1.45x the reads a second, for CPU while it reads. 0 never
    /// spins; at most 1000. Default 100.
    pub spin_us: Option<u64>,
}

/// The longest [`Reads::spin_us`] accepted (the spinner's own cap): past a
/// client's turn between two reads a longer spin only burns CPU.
const MAX_SPIN_US: u64 = sc_raft::network::read_spin::MAX_WINDOW.as_micros() as u64;

/// Logging options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// Log line format.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl NodeConfig {
    /// Everything the region node this file describes runs: the node, and the
    /// admin API and VEN service when their sections are present.
    pub fn region_options(&self, insecure_http: bool) -> Result<RegionOptions> {
        let node = self.to_options()?;
        let api = match &self.api {
            Some(a) => Some(a.to_options(&node.tls, insecure_http)?),
            None => None,
        };
        let ven = match &self.ven {
            Some(v) => Some(v.to_options(&node.tls, &node.data_dir)?),
            None => None,
        };
        let metrics = match &self.metrics {
            Some(m) => Some(parse_addr("metrics.listen", &m.listen)?),
            None => None,
        };
        Ok(RegionOptions {
            node,
            api,
            ven,
            metrics,
        })
    }

    /// An operator's client for the node this file describes, with its
    /// certificates (status, membership, key/value commands, benchmarks).
    pub fn client(&self) -> Result<sc_raft::Client> {
        let opts = self.to_options()?;
        Ok(sc_raft::Client::new(opts.tls, opts.info, opts.timeouts)?)
    }

    /// Reads and parses `path`, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths = vec![
            &mut cfg.data_dir,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ];
        if let Some(v) = cfg.ven.as_mut() {
            paths.push(&mut v.ca);
            paths.push(&mut v.ca_key);
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Checks everything and builds the node's options (loading the certificates).
    pub fn to_options(&self) -> Result<NodeOptions> {
        if self.id == 0 {
            invalid!("id: must be a positive integer, unique in the cluster");
        }
        if !pki::valid_node_name(&self.name) {
            invalid!(
                "name: {:?} must be 1-63 characters of [a-z0-9-] (it is the TLS server name)",
                self.name
            );
        }
        if self.region.trim().is_empty() {
            invalid!("region: must not be empty");
        }
        let listen: SocketAddr = parse_addr("listen", &self.listen)?;
        let advertise = match &self.advertise {
            Some(a) => {
                parse_addr("advertise", a)?;
                a.clone()
            }
            None => listen.to_string(),
        };
        if !self.bootstrap && self.peers.is_empty() {
            invalid!("peers: a node that does not bootstrap needs at least one peer to join through (or set bootstrap = true on the first region)");
        }
        for (i, p) in self.peers.iter().enumerate() {
            parse_addr(&format!("peers[{i}].addr"), &p.addr)?;
            if !pki::valid_node_name(&p.name) {
                invalid!("peers[{i}].name: {:?} is not a node name", p.name);
            }
        }
        let mut timeouts = Timeouts::profile(self.profile);
        let ms = std::time::Duration::from_millis;
        if let Some(v) = self.timeouts.heartbeat_ms {
            timeouts.heartbeat = ms(v);
        }
        if let Some(v) = self.timeouts.election_min_ms {
            timeouts.election_min = ms(v);
        }
        if let Some(v) = self.timeouts.election_max_ms {
            timeouts.election_max = ms(v);
        }
        if let Some(v) = self.timeouts.write_ms {
            timeouts.write = ms(v);
        }
        if let Err(e) = timeouts.validate() {
            invalid!("timeouts: {e}");
        }
        if self.snapshots.every == 0 {
            invalid!("snapshots.every: must be above 0");
        }
        let read_spin = match self.reads.spin_us {
            None => sc_raft::config::READ_SPIN,
            Some(us) if us <= MAX_SPIN_US => std::time::Duration::from_micros(us),
            Some(us) => {
                invalid!("reads.spin_us: {us} is above {MAX_SPIN_US} (0 turns the spin off)")
            }
        };
        let tls = TlsMaterial::load(&self.tls.ca, &self.tls.cert, &self.tls.key)
            .map_err(|e| ConfigError::Tls(e.to_string()))?;
        Ok(NodeOptions {
            id: self.id,
            info: NodeInfo {
                name: self.name.clone(),
                region: self.region.clone(),
                addr: advertise,
            },
            listen,
            data_dir: self.data_dir.clone(),
            tls,
            timeouts,
            tuning: Tuning {
                snapshot_every: self.snapshots.every,
                keep_logs: self.snapshots.keep_logs,
                read_spin,
            },
            cluster_name: self.cluster_name.clone(),
            bootstrap: self.bootstrap,
            join: self
                .peers
                .iter()
                .map(|p| NodeInfo {
                    name: p.name.clone(),
                    region: String::new(),
                    addr: p.addr.clone(),
                })
                .collect(),
            voter: self.role == Role::Voter,
            net_faults: NetFaults::new(),
            disk_faults: disk_faults_from_env(),
        })
    }
}

/// A node's disk fault seam: untouched, unless the chaos suite asked (by
/// [`sc_raft::storage::engine::POWER_CUT_ENV`]`=<ms>`) for the power-cut
/// model it needs to cut a killed node's power, with every log sync that
/// many milliseconds slower (its disks are tmpfs, whose syncs take no time:
/// a kill would almost never find a write the log has not synced).
fn disk_faults_from_env() -> DiskFaults {
    let faults = DiskFaults::default();
    let var = sc_raft::storage::engine::POWER_CUT_ENV;
    if let Some(v) = std::env::var_os(var) {
        let ms = v.to_str().and_then(|v| v.parse::<u64>().ok());
        tracing::warn!(
            "{var} is set ({v:?}): this node keeps a power-cut model for the chaos suite{}",
            if ms.is_none() {
                " (not a number of milliseconds: syncs are not slowed)"
            } else {
                " and slows every log sync by that many milliseconds"
            }
        );
        faults.track_power_cuts_on_disk();
        faults.set_sync_delay(std::time::Duration::from_millis(ms.unwrap_or(0)));
    }
    faults
}

fn parse_addr(field: &str, value: &str) -> Result<SocketAddr> {
    value.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{field}: {value:?} is not an address like 127.0.0.1:7400"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("node.toml");
        std::fs::write(&p, body).unwrap();
        p
    }

    fn valid(dir: &Path) -> String {
        pki::init_ca(&dir.join("certs"), "t").unwrap();
        pki::issue(&dir.join("certs"), "us-east-1", "us-east", &[]).unwrap();
        r#"
id = 1
name = "us-east-1"
region = "us-east"
listen = "127.0.0.1:7400"
data_dir = "data"
bootstrap = true
[tls]
ca = "certs/ca.pem"
cert = "certs/us-east-1.pem"
key = "certs/us-east-1.key"
"#
        .to_string()
    }

    fn error_of(dir: &Path, body: &str) -> String {
        let p = write(dir, body);
        match NodeConfig::load(&p).and_then(|c| c.to_options()) {
            Ok(_) => panic!("accepted: {body}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_valid_file_resolves_paths_against_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), &valid(d.path()));
        let opts = NodeConfig::load(&p).unwrap().to_options().unwrap();
        assert_eq!(opts.data_dir, d.path().join("data"));
        assert_eq!(opts.info.addr, "127.0.0.1:7400");
    }

    #[test]
    fn bad_files_name_what_to_fix() {
        let d = tempfile::tempdir().unwrap();
        let good = valid(d.path());
        let missing = NodeConfig::load(&d.path().join("nope.toml")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read config file"),
            "{missing:#}"
        );
        assert!(error_of(d.path(), &format!("{good}\ncolour = \"red\""))
            .contains("unknown field `colour`"));
        assert!(
            error_of(d.path(), &good.replace("127.0.0.1:7400", "localhost"))
                .contains("listen: \"localhost\" is not an address")
        );
        assert!(error_of(
            d.path(),
            &good.replace("certs/us-east-1.pem", "certs/gone.pem")
        )
        .contains("cannot read node certificate"));
        assert!(error_of(d.path(), &good.replace("bootstrap = true", "")).contains("peers:"));
        assert!(
            error_of(d.path(), &good.replace("id = 1", "id = \"one\"")).contains("invalid type")
        );
        assert!(error_of(
            d.path(),
            &good.replace("us-east-1\"\nregion", "US_EAST\"\nregion")
        )
        .contains("name:"));
        assert!(
            error_of(d.path(), &format!("{good}\n[timeouts]\nheartbeat_ms = 800"))
                .contains("three heartbeats")
        );
        assert!(
            error_of(d.path(), &format!("{good}\n[reads]\nspin_us = 5000"))
                .contains("reads.spin_us: 5000 is above 1000")
        );
    }

    #[test]
    fn the_read_spin_defaults_and_may_be_set_or_turned_off() {
        let d = tempfile::tempdir().unwrap();
        let good = valid(d.path());
        let spin = |body: &str| {
            let p = write(d.path(), body);
            NodeConfig::load(&p)
                .unwrap()
                .to_options()
                .unwrap()
                .tuning
                .read_spin
        };
        assert_eq!(spin(&good), sc_raft::config::READ_SPIN);
        assert_eq!(
            spin(&format!("{good}\n[reads]\nspin_us = 250")),
            std::time::Duration::from_micros(250)
        );
        assert!(spin(&format!("{good}\n[reads]\nspin_us = 0")).is_zero());
    }
}
