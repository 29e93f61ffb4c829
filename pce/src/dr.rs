//! `pce dr`: the DR operator's runbook against a live supercluster, over the
//! admin API (HTTPS, an owner API key): status with a health verdict, fencing,
//! planned leadership moves, and failover drills that measure RTO and RPO.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sc_leader::client::{Answer, ApiClient};
use sc_raft::NodeStatus;
use serde::Serialize;
use serde_json::{json, Value};

/// How `pce dr` reaches the cluster.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// Admin API of any region (`host:port`); others are found from its status.
    #[arg(long, default_value = "127.0.0.11:8443")]
    api: SocketAddr,
    /// The cluster CA certificate (verifies the API's TLS certificate).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// JSON file with `auth_username` and `secret` of an owner's API key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// A `pce up` directory: `--ca DIR/certs/ca.pem --key-file DIR/owner-api-key.json`.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `pce dr` commands.
#[derive(clap::Subcommand)]
pub enum DrCommand {
    /// Regions, nodes, roles, terms, indexes, lag, fences, VENs, and a verdict.
    Status {
        #[command(flatten)]
        conn: Conn,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Planned move of leadership to a region (verified from another region).
    TransferLeader {
        #[command(flatten)]
        conn: Conn,
        /// The region that should lead.
        #[arg(long)]
        to: String,
    },
    /// Fence a region by hand (it lifts itself after `--seconds`).
    Fence {
        #[command(flatten)]
        conn: Conn,
        /// The region to fence.
        #[arg(long)]
        region: String,
        /// How long before the fence lifts itself.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Cut it off from its peers only; it keeps serving from its replica.
        #[arg(long)]
        keep_serving: bool,
    },
    /// Lift a region's fence.
    Unfence {
        #[command(flatten)]
        conn: Conn,
        /// The fenced region.
        #[arg(long)]
        region: String,
    },
    /// Rehearse a failure: fence, write and read through it, measure, heal, report.
    Drill(DrillArgs),
    /// Admit a running node of a new region as a learner (it catches up first).
    AddRegion {
        #[command(flatten)]
        conn: Conn,
        /// The new node's Raft id (unique, never reused).
        #[arg(long)]
        id: u64,
        /// Its name (the name in its certificate).
        #[arg(long)]
        name: String,
        /// Its region.
        #[arg(long)]
        region: String,
        /// Its Raft address, `host:port`.
        #[arg(long)]
        addr: String,
        /// Promote it to voter once it has caught up.
        #[arg(long)]
        voter: bool,
    },
    /// Take a region out of the cluster (stop its node afterwards).
    RemoveRegion {
        #[command(flatten)]
        conn: Conn,
        /// The region.
        #[arg(long)]
        region: String,
    },
    /// Learner → voter.
    Promote {
        #[command(flatten)]
        conn: Conn,
        /// The region.
        #[arg(long)]
        region: String,
    },
    /// Voter → learner.
    Demote {
        #[command(flatten)]
        conn: Conn,
        /// The region.
        #[arg(long)]
        region: String,
    },
    /// Save the whole policy store, at one point of history, to a checksummed file.
    Backup {
        #[command(flatten)]
        conn: Conn,
        /// Where to write it (replaced atomically).
        #[arg(long)]
        out: PathBuf,
    },
    /// Load a backup into a new cluster (refused if it holds policy), then verify.
    Restore {
        #[command(flatten)]
        conn: Conn,
        /// The backup file.
        file: PathBuf,
    },
}

/// The drills `pce dr drill` knows.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The leader's region goes dark; a new leader must be elected.
    LeaderRegionLoss,
    /// A member region goes dark; writes must not notice.
    MemberRegionLoss,
    /// The leader is cut off from the majority but keeps answering clients.
    PartitionLeaderMinority,
    /// Every region goes dark in turn, one at a time.
    RollingRestart,
}

/// Options of `pce dr drill`.
#[derive(clap::Args)]
pub struct DrillArgs {
    #[command(flatten)]
    conn: Conn,
    /// What to rehearse.
    #[arg(value_enum)]
    scenario: Scenario,
    /// For member-region-loss: which member region (default: the first).
    #[arg(long)]
    region: Option<String>,
    /// How long a region stays fenced (per region for rolling-restart).
    #[arg(long, default_value_t = 8)]
    hold: u64,
    /// Where the JSON and Markdown reports go.
    #[arg(long, default_value = "drill-reports")]
    report_dir: PathBuf,
}

const ORG: &str = "/api/v2/orgs/1";

/// One node as the status endpoint reports it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeView {
    pub(crate) id: u64,
    pub(crate) status: Option<NodeStatus>,
    pub(crate) error: Option<String>,
}

/// The connection, with every region's API once known.
pub(crate) struct Cluster {
    ca: String,
    user: String,
    secret: String,
    entry: SocketAddr,
}

impl Cluster {
    fn open(c: &Conn) -> Result<Cluster> {
        let ca_path = c
            .ca
            .clone()
            .or_else(|| c.dir.as_ref().map(|d| d.join("certs/ca.pem")))
            .ok_or_else(|| anyhow!("give --ca (the cluster CA) or --dir (a `pce up` directory)"))?;
        let key_path = c
            .key_file
            .clone()
            .or_else(|| c.dir.as_ref().map(|d| d.join("owner-api-key.json")))
            .ok_or_else(|| anyhow!("give --key-file (an owner API key) or --dir"))?;
        let ca = std::fs::read_to_string(&ca_path)
            .with_context(|| format!("reading the CA {}", ca_path.display()))?;
        let key: Value = serde_json::from_str(
            &std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading the API key {}", key_path.display()))?,
        )
        .with_context(|| format!("{}: not JSON", key_path.display()))?;
        let field = |f: &str| -> Result<String> {
            key[f].as_str().map(str::to_string).ok_or_else(|| {
                anyhow!(
                    "{}: missing \"{f}\" (expected the JSON `pce up` writes for the owner key)",
                    key_path.display()
                )
            })
        };
        Ok(Cluster {
            ca,
            user: field("auth_username")?,
            secret: field("secret")?,
            entry: c.api,
        })
    }

    /// A connection with the credentials in hand (harnesses that made the cluster).
    pub(crate) fn new(ca: String, user: String, secret: String, entry: SocketAddr) -> Cluster {
        Cluster {
            ca,
            user,
            secret,
            entry,
        }
    }

    pub(crate) fn client(&self, addr: SocketAddr) -> Result<ApiClient> {
        Ok(ApiClient::new(addr, Some(&self.ca))?.with_key(&self.user, &self.secret))
    }

    /// Every node's status, asked of `addr`.
    async fn status_via(&self, addr: SocketAddr) -> Result<Vec<NodeView>> {
        let a = self
            .client(addr)?
            .get("/api/v2/supercluster/status")
            .await
            .with_context(|| format!("asking {addr}"))?;
        let v = ok(a, &format!("status from {addr}"))?;
        let mut out = Vec::new();
        for n in v["nodes"].as_array().cloned().unwrap_or_default() {
            out.push(NodeView {
                id: n["id"].as_u64().unwrap_or_default(),
                status: serde_json::from_value(n["status"].clone()).ok(),
                error: n["error"].as_str().map(str::to_string),
            });
        }
        Ok(out)
    }

    /// Every node's status, from the entry API or, if it cannot answer, from
    /// any other region's API it has told us about.
    pub(crate) async fn status(&self, known: &[SocketAddr]) -> Result<Vec<NodeView>> {
        let mut last = None;
        for addr in std::iter::once(self.entry).chain(known.iter().copied()) {
            match self.status_via(addr).await {
                Ok(v) if v.iter().all(|n| n.status.is_some()) => return Ok(v),
                Ok(v) => last = Some(Ok(v)),
                Err(e) => {
                    if last.is_none() {
                        last = Some(Err(e));
                    }
                }
            }
        }
        last.unwrap_or_else(|| Err(anyhow!("no API answered")))
    }
}

/// The body of a 2xx answer, or an error quoting the API's own message.
pub(crate) fn ok(a: Answer, what: &str) -> Result<Value> {
    if a.status.is_success() {
        return Ok(a.json());
    }
    let msg = a.json()[0]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&a.body).to_string());
    if a.status.as_u16() == 401 {
        bail!("{what}: the API key was refused ({msg}); give an owner's key with --key-file");
    }
    bail!("{what}: {} {msg}", a.status)
}

fn api_of(n: &NodeView) -> Option<SocketAddr> {
    n.status.as_ref()?.services.api.as_ref()?.parse().ok()
}

fn region_of(n: &NodeView) -> Option<&str> {
    n.status.as_ref().map(|s| s.region.as_str())
}

/// What is wrong with the cluster (empty: healthy).
pub(crate) fn problems(nodes: &[NodeView]) -> Vec<String> {
    let mut out = Vec::new();
    for n in nodes {
        match &n.status {
            None => out.push(format!(
                "node {} is unreachable: {}",
                n.id,
                n.error.as_deref().unwrap_or("no answer")
            )),
            Some(s) => {
                if let Some(ms) = s.fenced_for_ms {
                    out.push(format!(
                        "{} ({}) is fenced for another {} s",
                        s.name,
                        s.region,
                        ms / 1000 + 1
                    ));
                }
                if s.leader.is_none() {
                    out.push(format!("{} knows no leader", s.name));
                }
            }
        }
    }
    let leaders: std::collections::BTreeSet<u64> = nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.leader)
        .collect();
    if leaders.len() > 1 {
        out.push(format!("nodes disagree on the leader: {leaders:?}"));
    }
    if let Some(l) = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")
    {
        for p in &l.peers {
            if p.lag.unwrap_or(0) > 1000 {
                out.push(format!(
                    "{} is {} entries behind",
                    p.name,
                    p.lag.unwrap_or(0)
                ));
            }
        }
    }
    out
}

fn print_table(nodes: &[NodeView]) {
    let leader = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader");
    println!(
        "{:<10} {:<12} {:<9} {:<6} {:>5} {:>8} {:>5} {:>7} {:>11} {:<21}",
        "REGION", "NODE", "ROLE", "VOTER", "TERM", "APPLIED", "LAG", "FENCED", "VENS ok/all", "API"
    );
    for n in nodes {
        let Some(s) = &n.status else {
            println!(
                "{:<10} {:<12} unreachable: {}",
                "?",
                n.id,
                n.error.as_deref().unwrap_or("")
            );
            continue;
        };
        let peer = leader.and_then(|l| l.peers.iter().find(|p| p.id == s.id));
        let voter = peer
            .map(|p| if p.voter { "yes" } else { "no" })
            .unwrap_or("?");
        let lag = peer
            .and_then(|p| p.lag)
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into());
        let vens = match (s.services.vens_current, s.services.vens_connected) {
            (Some(c), Some(a)) => format!("{c}/{a}"),
            _ => "-".into(),
        };
        println!(
            "{:<10} {:<12} {:<9} {:<6} {:>5} {:>8} {:>5} {:>7} {:>11} {:<21}",
            s.region,
            s.name,
            s.role,
            voter,
            s.term,
            s.last_applied.unwrap_or(0),
            lag,
            s.fenced_for_ms
                .map(|ms| format!("{}s", ms / 1000 + 1))
                .unwrap_or_else(|| "-".into()),
            vens,
            s.services.api.as_deref().unwrap_or("-"),
        );
    }
}

/// `pce dr ...`.
pub async fn run(cmd: DrCommand) -> Result<()> {
    match cmd {
        DrCommand::Status { conn, json } => {
            let c = Cluster::open(&conn)?;
            let nodes = c.status(&[]).await?;
            let issues = problems(&nodes);
            if json {
                let v = json!({"nodes": nodes, "healthy": issues.is_empty(), "problems": issues});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&nodes);
                if issues.is_empty() {
                    println!("verdict: healthy");
                } else {
                    println!("verdict: UNHEALTHY");
                    for p in &issues {
                        println!("  - {p}");
                    }
                }
            }
            if issues.is_empty() {
                Ok(())
            } else {
                bail!("the cluster is not healthy")
            }
        }
        DrCommand::TransferLeader { conn, to } => {
            let c = Cluster::open(&conn)?;
            let nodes = c.status(&[]).await?;
            let target = find_region(&nodes, &to)?;
            let addr = api_of(target).ok_or_else(|| anyhow!("{to} runs no admin API"))?;
            let t0 = Instant::now();
            let v = ok(
                c.client(addr)?
                    .post("/api/v2/supercluster/campaign", &json!({}))
                    .await?,
                &format!("moving leadership to {to}"),
            )?;
            // Verify from the others: they must follow the new leader.
            let name = v["leader"].as_str().unwrap_or_default().to_string();
            let id = target.id;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let nodes = c.status(&[addr]).await?;
                if nodes
                    .iter()
                    .all(|n| n.status.as_ref().is_some_and(|s| s.leader == Some(id)))
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{name} campaigned, but not every node follows it after 10 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!(
                "leader is now {name} ({to}), term {}, verified on every node in {:.2} s",
                v["term"],
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        DrCommand::Fence {
            conn,
            region,
            seconds,
            keep_serving,
        } => {
            let c = Cluster::open(&conn)?;
            let nodes = c.status(&[]).await?;
            let addr = api_of(find_region(&nodes, &region)?)
                .ok_or_else(|| anyhow!("{region} runs no admin API"))?;
            fence(&c, addr, seconds, keep_serving).await?;
            println!("{region} fenced; it lifts itself in {seconds} s (`pce dr unfence --region {region}` sooner)");
            Ok(())
        }
        DrCommand::Unfence { conn, region } => {
            let c = Cluster::open(&conn)?;
            let nodes = c.status(&[]).await?;
            let addr = api_of(find_region(&nodes, &region)?)
                .ok_or_else(|| anyhow!("{region} runs no admin API"))?;
            unfence(&c, addr).await?;
            println!("{region} unfenced");
            Ok(())
        }
        DrCommand::Drill(args) => drill(args).await,
        DrCommand::AddRegion {
            conn,
            id,
            name,
            region,
            addr,
            voter,
        } => {
            let c = Cluster::open(&conn)?;
            let body = json!({"action": "add_learner", "node_id": id, "name": name, "region": region, "addr": addr});
            let v = membership(&c, &body).await?;
            println!("{name} ({region}) is a learner and has caught up: {v}");
            if voter {
                let v = membership(&c, &json!({"action": "promote", "node_id": id})).await?;
                println!("{name} promoted to voter: {v}");
            }
            Ok(())
        }
        DrCommand::RemoveRegion { conn, region } => change_region(&conn, &region, "remove").await,
        DrCommand::Promote { conn, region } => change_region(&conn, &region, "promote").await,
        DrCommand::Demote { conn, region } => change_region(&conn, &region, "demote").await,
        DrCommand::Backup { conn, out } => {
            let c = Cluster::open(&conn)?;
            let a = c
                .client(c.entry)?
                .get("/api/v2/supercluster/backup")
                .await?;
            let revision = a.header("x-revision").unwrap_or_default();
            if !a.status.is_success() {
                ok(a, "taking the backup")?;
                bail!("taking the backup failed");
            }
            let tmp = out.with_extension("partial");
            std::fs::write(&tmp, &a.body).with_context(|| format!("writing {}", tmp.display()))?;
            let keys = verify_backup(&tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &out).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "backup of revision {revision}: {keys} keys, {} bytes, sha256 {} -> {}",
                a.body.len(),
                sc_store::hash::sha256_hex(&[&a.body]),
                out.display()
            );
            Ok(())
        }
        DrCommand::Restore { conn, file } => {
            let keys = verify_backup(&file)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let c = Cluster::open(&conn)?;
            let a = c
                .client(c.entry)?
                .post_bytes("/api/v2/supercluster/restore", bytes)
                .await?;
            let v = ok(a, "restoring")?;
            if v["verified"] != true || v["keys"].as_u64().is_none() {
                bail!("the cluster did not confirm the restore: {v}");
            }
            println!(
                "restored {} keys ({keys} in the file, cluster-local ones skipped) in {} commands; every key read back and verified",
                v["keys"], v["commands"]
            );
            Ok(())
        }
    }
}

async fn membership(c: &Cluster, body: &Value) -> Result<Value> {
    ok(
        c.client(c.entry)?
            .post("/api/v2/supercluster/membership", body)
            .await?,
        "membership change",
    )
}

/// Promotes, demotes or removes the node of `region`.
async fn change_region(conn: &Conn, region: &str, action: &str) -> Result<()> {
    let c = Cluster::open(conn)?;
    let nodes = c.status(&[]).await?;
    let node = find_region(&nodes, region)?;
    let v = membership(&c, &json!({"action": action, "node_id": node.id})).await?;
    println!(
        "{action} {region} (node {}): voters {}, learners {}",
        node.id, v["voters"], v["learners"]
    );
    Ok(())
}

/// Checks a backup file (magic, CRC-32, structure) before anything uses it;
/// returns how many keys it holds.
fn verify_backup(path: &Path) -> Result<usize> {
    let mut keys = 0usize;
    sc_raft::storage::snapshot::read_snapshot(path, |r| {
        if matches!(r, sc_raft::storage::snapshot::SnapRecord::Kv { .. }) {
            keys += 1;
        }
        Ok(())
    })
    .map_err(|e| {
        anyhow!(
            "{} is not a usable backup ({e}); it is truncated, altered or not a backup, and nothing was changed",
            path.display()
        )
    })?;
    Ok(keys)
}

fn find_region<'a>(nodes: &'a [NodeView], region: &str) -> Result<&'a NodeView> {
    nodes
        .iter()
        .find(|n| region_of(n) == Some(region))
        .ok_or_else(|| {
            let known: Vec<&str> = nodes.iter().filter_map(region_of).collect();
            anyhow!(
                "unknown region {region:?}; the regions are: {}",
                known.join(", ")
            )
        })
}

async fn fence(c: &Cluster, addr: SocketAddr, seconds: u64, keep_serving: bool) -> Result<()> {
    ok(
        c.client(addr)?
            .put(
                "/api/v2/supercluster/fence",
                &json!({"seconds": seconds, "keep_serving": keep_serving}),
            )
            .await?,
        &format!("fencing {addr}"),
    )
    .map(|_| ())
}

async fn unfence(c: &Cluster, addr: SocketAddr) -> Result<()> {
    ok(
        c.client(addr)?.delete("/api/v2/supercluster/fence").await?,
        &format!("unfencing {addr}"),
    )
    .map(|_| ())
}

/// One write of the drill's writer.
#[derive(Debug, Clone, Serialize)]
struct WriteOp {
    n: u64,
    /// Milliseconds since the drill started.
    invoked_ms: u64,
    done_ms: u64,
    /// The created label's href when acknowledged.
    href: Option<String>,
    error: Option<String>,
}

/// The drill's figures.
#[derive(Debug, Serialize)]
struct Report {
    scenario: Scenario,
    started_unix_ms: u64,
    fenced: Vec<String>,
    writer_region: String,
    writes_attempted: usize,
    writes_acknowledged: usize,
    writes_failed: usize,
    /// The worst, over the fences, of: fence raised → the first write invoked
    /// after it is acknowledged. A write the API holds while a new leader is
    /// elected counts as down time, as does one that fails.
    rto_ms: u64,
    /// The same per fence, in order.
    rto_per_fence_ms: Vec<u64>,
    /// First failed write → first successful write after it (none failed: 0).
    first_failure_to_success_ms: u64,
    /// The slowest acknowledged write.
    slowest_write_ms: u64,
    /// Acknowledged writes missing from some region after healing.
    rpo: usize,
    missing: Vec<String>,
    reads_ok: BTreeMap<String, u64>,
    reads_failed: BTreeMap<String, u64>,
    vens_before: u64,
    vens_after: u64,
    vens_current_after: u64,
    converged_ms: u64,
    leader_before: String,
    leader_after: String,
    phases: Vec<(u64, String)>,
    passed: bool,
}

struct Progress {
    t0: Instant,
    phases: Vec<(u64, String)>,
}

impl Progress {
    fn phase(&mut self, what: impl Into<String>) {
        let what = what.into();
        let ms = self.t0.elapsed().as_millis() as u64;
        println!("[{:>7.2}s] {what}", ms as f64 / 1000.0);
        self.phases.push((ms, what));
    }
}

fn leader_name(nodes: &[NodeView]) -> String {
    nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")
        .map(|s| format!("{} ({})", s.name, s.region))
        .unwrap_or_else(|| "none".into())
}

fn vens(nodes: &[NodeView]) -> (u64, u64) {
    nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .fold((0, 0), |(a, c), s| {
            (
                a + s.services.vens_connected.unwrap_or(0),
                c + s.services.vens_current.unwrap_or(0),
            )
        })
}

async fn drill(args: DrillArgs) -> Result<()> {
    let c = Arc::new(Cluster::open(&args.conn)?);
    let mut p = Progress {
        t0: Instant::now(),
        phases: vec![],
    };
    let started_unix_ms = sc_store::time::now_ms();
    p.phase(format!("preflight: asking {}", c.entry));
    let nodes = c.status(&[]).await?;
    let issues = problems(&nodes);
    if !issues.is_empty() {
        bail!(
            "refusing to start the drill: the cluster is not healthy:\n  - {}",
            issues.join("\n  - ")
        );
    }
    let apis: Vec<(String, SocketAddr)> = nodes
        .iter()
        .filter_map(|n| Some((region_of(n)?.to_string(), api_of(n)?)))
        .collect();
    let all_apis: Vec<SocketAddr> = apis.iter().map(|a| a.1).collect();
    let leader_region = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")
        .map(|s| s.region.clone())
        .ok_or_else(|| anyhow!("no leader"))?;
    let members: Vec<String> = apis
        .iter()
        .map(|a| a.0.clone())
        .filter(|r| *r != leader_region)
        .collect();
    if let Some(r) = &args.region {
        find_region(&nodes, r)?;
        if args.scenario == Scenario::MemberRegionLoss && *r == leader_region {
            bail!(
                "{r} leads; member-region-loss needs a member region (or use leader-region-loss)"
            );
        }
    }
    let targets: Vec<String> = match args.scenario {
        Scenario::LeaderRegionLoss | Scenario::PartitionLeaderMinority => {
            vec![leader_region.clone()]
        }
        Scenario::MemberRegionLoss => vec![args
            .region
            .clone()
            .or_else(|| members.first().cloned())
            .ok_or_else(|| anyhow!("no member region"))?],
        Scenario::RollingRestart => apis.iter().map(|a| a.0.clone()).collect(),
    };
    let (vens_before, _) = vens(&nodes);
    let leader_before = leader_name(&nodes);
    p.phase(format!(
        "healthy: leader {leader_before}, {} regions, {vens_before} VENs connected",
        apis.len()
    ));

    // The writer and the readers run until told to stop.
    let run = format!("{started_unix_ms:x}");
    let ops: Arc<Mutex<Vec<WriteOp>>> = Arc::new(Mutex::new(Vec::new()));
    let reads: Arc<Mutex<BTreeMap<String, (u64, u64)>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let t0 = p.t0;
    let writer_api: Arc<Mutex<SocketAddr>> = Arc::new(Mutex::new(c.entry));
    let writer = {
        let (c, ops, run, stop, writer_api) = (
            c.clone(),
            ops.clone(),
            run.clone(),
            stop.clone(),
            writer_api.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !*stop.borrow() {
                n += 1;
                let addr = *writer_api.lock().map_err(|_| anyhow!("lock"))?;
                let invoked = t0.elapsed().as_millis() as u64;
                let r = async {
                    let mut cl = c.client(addr)?;
                    let a = tokio::time::timeout(
                        Duration::from_secs(3),
                        cl.post(
                            &format!("{ORG}/labels"),
                            &json!({"key": "sc_drill", "value": format!("{run}-{n}")}),
                        ),
                    )
                    .await
                    .map_err(|_| anyhow!("timed out after 3 s"))??;
                    let v = ok(a, "write")?;
                    v["href"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow!("no href"))
                }
                .await;
                let done = t0.elapsed().as_millis() as u64;
                let failed = r.is_err();
                if let Ok(mut o) = ops.lock() {
                    o.push(WriteOp {
                        n,
                        invoked_ms: invoked,
                        done_ms: done,
                        href: r.as_ref().ok().cloned(),
                        error: r.err().map(|e| format!("{e:#}")),
                    });
                }
                let pause = if failed { 20 } else { 50 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    let mut readers = Vec::new();
    for (region, addr) in apis.clone() {
        let (c, reads, stop) = (c.clone(), reads.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            while !*stop.borrow() {
                let r = async {
                    let mut cl = c.client(addr)?;
                    let a = tokio::time::timeout(
                        Duration::from_secs(2),
                        cl.get(&format!("{ORG}/labels?key=sc_drill&max_results=1")),
                    )
                    .await
                    .map_err(|_| anyhow!("timed out"))??;
                    ok(a, "read").map(|_| ())
                }
                .await;
                if let Ok(mut m) = reads.lock() {
                    let e = m.entry(region.clone()).or_default();
                    if r.is_ok() {
                        e.0 += 1;
                    } else {
                        e.1 += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut fenced = Vec::new();
    let mut fence_times = Vec::new();
    for region in &targets {
        let addr = apis
            .iter()
            .find(|a| a.0 == *region)
            .map(|a| a.1)
            .ok_or_else(|| anyhow!("{region}: no API"))?;
        // Write through a region that stays up.
        if let Some(other) = apis.iter().find(|a| a.0 != *region) {
            if let Ok(mut w) = writer_api.lock() {
                *w = other.1;
            }
        }
        let keep_serving = args.scenario == Scenario::PartitionLeaderMinority;
        // The fence outlives the hold by a margin, but lifts itself if we die.
        fence(&c, addr, args.hold + 30, keep_serving).await?;
        fence_times.push(t0.elapsed().as_millis() as u64);
        fenced.push(region.clone());
        p.phase(format!(
            "fenced {region}{} for {} s",
            if keep_serving {
                " (partitioned, still serving)"
            } else {
                ""
            },
            args.hold
        ));
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
        unfence(&c, addr).await?;
        p.phase(format!("unfenced {region}; waiting for convergence"));
        converge(&c, &all_apis, Duration::from_secs(60)).await?;
        p.phase("converged");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    writer.await??;
    for r in readers {
        let _ = r.await;
    }
    p.phase("writer and readers stopped");

    let t_conv = Instant::now();
    let nodes = converge(&c, &all_apis, Duration::from_secs(60)).await?;
    let converged_ms = t_conv.elapsed().as_millis() as u64;
    let ops = ops.lock().map_err(|_| anyhow!("lock"))?.clone();
    let acked: Vec<&WriteOp> = ops.iter().filter(|o| o.href.is_some()).collect();
    p.phase(format!(
        "checking {} acknowledged writes in every region",
        acked.len()
    ));
    let mut missing = Vec::new();
    for (region, addr) in &apis {
        let mut cl = c.client(*addr)?;
        for o in &acked {
            let href = o.href.as_deref().unwrap_or_default();
            let a = cl.get(&format!("/api/v2{href}")).await?;
            if !a.status.is_success() {
                missing.push(format!("{href} (write #{}) missing in {region}", o.n));
            }
        }
    }
    // VENs: every VEN that was connected before is connected again, on its
    // current policy.
    let mut vens_after = vens(&nodes);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (vens_after.0 < vens_before || vens_after.1 < vens_after.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        vens_after = vens(&c.status(&all_apis).await?);
    }
    p.phase(format!(
        "VENs: {} connected before, {} after, {} on their current policy",
        vens_before, vens_after.0, vens_after.1
    ));
    // Clean up the drill's labels (best effort; they are recorded in the report).
    let mut cl = c.client(*writer_api.lock().map_err(|_| anyhow!("lock"))?)?;
    for o in &acked {
        let _ = cl
            .delete(&format!("/api/v2{}", o.href.as_deref().unwrap_or_default()))
            .await;
    }
    p.phase("drill labels removed");

    let rto_per_fence_ms: Vec<u64> = fence_times
        .iter()
        .map(|&f| {
            ops.iter()
                .filter(|o| o.href.is_some() && o.invoked_ms >= f)
                .map(|o| o.done_ms.saturating_sub(f))
                .next()
                .unwrap_or(u64::MAX)
        })
        .collect();
    let slowest_write_ms = acked
        .iter()
        .map(|o| o.done_ms.saturating_sub(o.invoked_ms))
        .max()
        .unwrap_or(0);
    let first_fail = ops.iter().find(|o| o.href.is_none());
    let first_failure_to_success_ms = match first_fail {
        None => 0,
        Some(f) => ops
            .iter()
            .filter(|o| o.href.is_some() && o.invoked_ms > f.invoked_ms)
            .map(|o| o.done_ms.saturating_sub(f.invoked_ms))
            .next()
            .unwrap_or(u64::MAX),
    };
    let reads = reads.lock().map_err(|_| anyhow!("lock"))?.clone();
    let report = Report {
        scenario: args.scenario,
        started_unix_ms,
        fenced,
        writer_region: apis
            .iter()
            .find(|a| Some(&a.1) == writer_api.lock().ok().as_deref())
            .map(|a| a.0.clone())
            .unwrap_or_default(),
        writes_attempted: ops.len(),
        writes_acknowledged: acked.len(),
        writes_failed: ops.len() - acked.len(),
        rto_ms: rto_per_fence_ms.iter().copied().max().unwrap_or(0),
        rto_per_fence_ms,
        first_failure_to_success_ms,
        slowest_write_ms,
        rpo: missing.len(),
        missing,
        reads_ok: reads.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
        reads_failed: reads.iter().map(|(k, v)| (k.clone(), v.1)).collect(),
        vens_before,
        vens_after: vens_after.0,
        vens_current_after: vens_after.1,
        converged_ms,
        leader_before,
        leader_after: leader_name(&nodes),
        phases: p.phases.clone(),
        passed: false,
    };
    let passed = report.rpo == 0
        && report.rto_ms != u64::MAX
        && report.first_failure_to_success_ms != u64::MAX
        && report.vens_after >= report.vens_before
        && report.vens_current_after == report.vens_after;
    let report = Report { passed, ..report };
    let (json_path, md_path) = write_report(&args.report_dir, &report)?;
    print_report(&report);
    println!("report: {} and {}", json_path.display(), md_path.display());
    if !passed {
        bail!("the drill failed (see the report)");
    }
    Ok(())
}

/// Waits until every node is reachable, agrees on one leader, and has applied
/// the same index; returns the final status.
pub(crate) async fn converge(
    c: &Cluster,
    apis: &[SocketAddr],
    timeout: Duration,
) -> Result<Vec<NodeView>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(nodes) = c.status(apis).await {
            let applied: std::collections::BTreeSet<u64> = nodes
                .iter()
                .filter_map(|n| n.status.as_ref().and_then(|s| s.last_applied))
                .collect();
            if problems(&nodes).is_empty() && applied.len() == 1 {
                return Ok(nodes);
            }
        }
        if Instant::now() > deadline {
            let nodes = c.status(apis).await.unwrap_or_default();
            bail!(
                "the cluster did not converge in {timeout:?}: {}",
                problems(&nodes).join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_report(r: &Report) {
    println!();
    println!(
        "drill {:?}: {}",
        r.scenario,
        if r.passed { "PASSED" } else { "FAILED" }
    );
    println!("  fenced           {}", r.fenced.join(", "));
    println!(
        "  leader           {} -> {}",
        r.leader_before, r.leader_after
    );
    println!(
        "  writes           {} attempted, {} acknowledged, {} failed (through {})",
        r.writes_attempted, r.writes_acknowledged, r.writes_failed, r.writer_region
    );
    println!(
        "  RTO              {} ms (per fence: {:?}; first failure → success {} ms; slowest write {} ms)",
        r.rto_ms, r.rto_per_fence_ms, r.first_failure_to_success_ms, r.slowest_write_ms
    );
    println!("  RPO              {} acknowledged writes lost", r.rpo);
    for (region, okc) in &r.reads_ok {
        println!(
            "  reads {:<10} {} ok, {} failed",
            region,
            okc,
            r.reads_failed.get(region).copied().unwrap_or(0)
        );
    }
    println!(
        "  VENs             {} before, {} after, {} current",
        r.vens_before, r.vens_after, r.vens_current_after
    );
    println!(
        "  converged in     {} ms after the writer stopped",
        r.converged_ms
    );
}

fn write_report(dir: &Path, r: &Report) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stem = format!(
        "drill-{}-{}",
        serde_json::to_value(r.scenario)?
            .as_str()
            .unwrap_or("drill"),
        r.started_unix_ms
    );
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let mut md = format!(
        "# Failover drill: {:?}\n\nStarted {} (unix ms). Result: **{}**.\n\n| figure | value |\n|---|---|\n",
        r.scenario,
        r.started_unix_ms,
        if r.passed { "passed" } else { "FAILED" }
    );
    for (k, v) in [
        ("fenced", r.fenced.join(", ")),
        (
            "leader before → after",
            format!("{} → {}", r.leader_before, r.leader_after),
        ),
        (
            "writes attempted / acknowledged / failed",
            format!(
                "{} / {} / {}",
                r.writes_attempted, r.writes_acknowledged, r.writes_failed
            ),
        ),
        (
            "RTO (fence → first write after it acknowledged; worst fence)",
            format!("{} ms", r.rto_ms),
        ),
        ("RTO per fence", format!("{:?} ms", r.rto_per_fence_ms)),
        (
            "first failed write → first successful write",
            format!("{} ms", r.first_failure_to_success_ms),
        ),
        (
            "slowest acknowledged write",
            format!("{} ms", r.slowest_write_ms),
        ),
        (
            "RPO (acknowledged writes missing afterwards)",
            r.rpo.to_string(),
        ),
        (
            "VENs connected before / after / on current policy",
            format!(
                "{} / {} / {}",
                r.vens_before, r.vens_after, r.vens_current_after
            ),
        ),
        (
            "convergence after the writer stopped",
            format!("{} ms", r.converged_ms),
        ),
    ] {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str("\n## Phases\n\n");
    for (ms, what) in &r.phases {
        md.push_str(&format!("- {:.2} s: {what}\n", *ms as f64 / 1000.0));
    }
    if !r.missing.is_empty() {
        md.push_str("\n## Missing writes\n\n");
        for m in &r.missing {
            md.push_str(&format!("- {m}\n"));
        }
    }
    let md_path = dir.join(format!("{stem}.md"));
    std::fs::write(&md_path, md).with_context(|| format!("writing {}", md_path.display()))?;
    Ok((json_path, md_path))
}
