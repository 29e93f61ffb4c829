//! `pce dr`: the DR operator's runbook against a live supercluster, over the
//! admin API (HTTPS, an owner API key): status with a health verdict, fencing,
//! planned leadership moves, and failover drills that measure RTO and RPO.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sc_leader::client::cluster::{api_of, ok, problems, region_of, risks, Cluster, NodeView};
use serde::Serialize;
use serde_json::{json, Value};

/// How `pce dr` reaches the cluster.
#[derive(clap::Args, Clone)]
pub struct Conn {
    /// Admin API of any region (`host:port`; default: the first region's in
    /// `--dir`, else 127.0.0.11:8443); others are found from its status.
    #[arg(long)]
    api: Option<SocketAddr>,
    /// The cluster CA certificate (verifies the API's TLS certificate).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// JSON file with `auth_username` and `secret` of an owner's API key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// A `pce up` directory: `--ca DIR/certs/ca.pem --key-file DIR/owner-api-key.json`.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the result as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `pce dr` commands.
#[derive(clap::Subcommand)]
pub enum DrCommand {
    /// Regions, nodes, roles, terms, indexes, lag, fences, VENs, and a verdict.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Planned move of leadership to a region (verified from another region).
    TransferLeader {
        #[command(flatten)]
        conn: Conn,
        /// The region that should lead (its first voter campaigns), or one
        /// node by name.
        #[arg(long)]
        to: String,
    },
    /// Fence a region by hand (it lifts itself after `--seconds`).
    Fence {
        #[command(flatten)]
        conn: Conn,
        /// The region to fence (every node of it), or one node by name.
        #[arg(long)]
        region: String,
        /// How long before the fence lifts itself.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Cut it off from its peers only; it keeps serving from its replica.
        #[arg(long)]
        keep_serving: bool,
        /// Fence even if too few voters would be left to elect and commit
        /// (writes stop until a fence lifts).
        #[arg(long)]
        force: bool,
    },
    /// Lift a region's fence.
    Unfence {
        #[command(flatten)]
        conn: Conn,
        /// The fenced region (every node of it), or one node by name.
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
    /// Take a region out of the cluster (stop its nodes afterwards).
    RemoveRegion {
        #[command(flatten)]
        conn: Conn,
        /// The region (every node of it), or one node by name.
        #[arg(long)]
        region: String,
        /// Even if fewer than three voters would be left.
        #[arg(long)]
        force: bool,
    },
    /// Learner → voter.
    Promote {
        #[command(flatten)]
        conn: Conn,
        /// The region (every node of it), or one node by name.
        #[arg(long)]
        region: String,
    },
    /// Voter → learner.
    Demote {
        #[command(flatten)]
        conn: Conn,
        /// The region (every node of it), or one node by name.
        #[arg(long)]
        region: String,
        /// Even if fewer than three voters would be left.
        #[arg(long)]
        force: bool,
    },
    /// Move an application (its app and env labels) to another region: its
    /// workloads are served by that region's nodes from now on, their VENs
    /// re-home there, identity and policy kept.
    MoveApp {
        #[command(flatten)]
        conn: Conn,
        /// The application's `app` label value.
        #[arg(long)]
        app: String,
        /// Its `env` label value.
        #[arg(long)]
        env: String,
        /// The region that serves it from now on.
        #[arg(long)]
        to: String,
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
    /// Every region goes dark in turn, one at a time (a fence each: the
    /// processes keep running; restart them yourself for a real rolling
    /// restart).
    RollingRegionLoss,
    /// One node of a region with several is killed (`kill -9`): its VENs
    /// must move to the region's other nodes, with no write failing and no
    /// VEN sent its policy again.
    NodeLoss,
    /// Every node is restarted in turn with `--restart-cmd` (the mechanics of
    /// replacing its binary), members first, the leader last after a planned
    /// leadership move, while writes go on: none may fail.
    RollingUpgrade,
    /// The region an application (`--app`, `--env`) lives in is lost; the
    /// application moves to `--to`, its hosts come up there
    /// (`--failover-cmd`), and its peers must admit it at its new addresses
    /// (`--probe-cmd`, a real connection, tried until it passes).
    AppFailover,
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
    /// For app-failover: the region lost (default: the one serving most of
    /// the application's workloads).
    #[arg(long)]
    region: Option<String>,
    /// For app-failover: the application's `app` label value.
    #[arg(long)]
    app: Option<String>,
    /// For app-failover: the application's `env` label value.
    #[arg(long)]
    env: Option<String>,
    /// For app-failover: the region that takes the application over.
    #[arg(long)]
    to: Option<String>,
    /// For app-failover: how the application's hosts come up in the new
    /// region (its VENs keep their identity; their addresses may change), run
    /// with `sh -c` after `{app}`, `{env}`, `{from}` and `{to}` are replaced,
    /// after the move. It must return.
    #[arg(long)]
    failover_cmd: Option<String>,
    /// For app-failover: a real connection from the application to its peers
    /// (e.g. 'ssh app1 nc -z db1 5432'), run with `sh -c` like
    /// `--failover-cmd` every 50 ms until it passes; the time it took is the
    /// time until the peers' rules admit the application's new addresses.
    #[arg(long)]
    probe_cmd: Option<String>,
    /// Seconds a region stays fenced (per region for rolling-region-loss);
    /// for node-loss, seconds the node stays down after its VENs moved.
    #[arg(long, default_value_t = 8)]
    hold: u64,
    /// For node-loss: the node to kill (default: the member node, in a region
    /// with several, that serves the most VENs).
    #[arg(long)]
    node: Option<String>,
    /// For node-loss: how to kill the node, run with `sh -c` after `{node}`,
    /// `{region}`, `{pid}` and `{config}` are replaced (default: SIGKILL to
    /// the process the node reports, when it runs on this host alone).
    #[arg(long)]
    kill_cmd: Option<String>,
    /// For node-loss: how to start the node again, run with `sh -c` like
    /// `--kill-cmd` (it must return: start the node in the background or
    /// through its service manager). Without it the node stays down. For
    /// rolling-upgrade (required): how to stop a node and start it again,
    /// with the new binary (e.g. 'ssh {node} sudo systemctl restart pce').
    #[arg(long)]
    restart_cmd: Option<String>,
    /// Where the JSON and Markdown reports go.
    #[arg(long, default_value = "drill-reports")]
    report_dir: PathBuf,
    /// Who runs the drill, for the report (default: the login name).
    #[arg(long)]
    operator: Option<String>,
}

mod drill;
mod process;

use crate::output;

const ORG: &str = "/api/v2/orgs/1";

/// The cluster `c` names: the CA and the owner key read from their files.
pub(crate) fn open_cluster(c: &Conn) -> Result<Cluster> {
    let ca_path =
        c.ca.clone()
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
    // A `pce up` directory names every region's API: the first is the entry
    // (unless --api says otherwise), the others are tried when it cannot
    // answer for the cluster (down, fenced, cut off).
    let dir_apis = match &c.dir {
        Some(d) => apis_in(d)?,
        None => Vec::new(),
    };
    let entry = c
        .api
        .or_else(|| dir_apis.first().copied())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 11], 8443)));
    Ok(Cluster::new(ca, field("auth_username")?, field("secret")?, entry).with_fallbacks(dir_apis))
}

/// The admin API addresses of the nodes a `pce up` directory holds (their
/// `node.toml`), region by region.
fn apis_in(dir: &Path) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for node in sc_region::local::existing(dir, true) {
        let path = dir.join(&node.dir).join("node.toml");
        let cfg = sc_region::config::NodeConfig::load(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if let Some(api) = cfg.api {
            let addr: SocketAddr = api.listen.parse().with_context(|| {
                format!(
                    "{}: [api] listen {:?} is not host:port",
                    path.display(),
                    api.listen
                )
            })?;
            out.push(addr);
        }
    }
    Ok(out)
}

/// One region as `pce dr status` sums it up: a region is a set of nodes, and
/// what the operator asks first is whether it still serves.
#[derive(Debug, Serialize)]
struct RegionSummary {
    region: String,
    /// Its nodes, by name.
    nodes: Vec<String>,
    /// Of those, the ones that answered and are not fenced.
    serving: usize,
    /// Of those, the ones that vote.
    voters: usize,
    /// VENs streaming from its nodes, and how many of them are current.
    vens_connected: u64,
    vens_current: u64,
}

/// The nodes in the order status prints them: region by region, by name.
fn by_region(nodes: &[NodeView]) -> Vec<&NodeView> {
    let mut sorted: Vec<&NodeView> = nodes.iter().collect();
    sorted.sort_by(|a, b| (region_of(a), &a.name).cmp(&(region_of(b), &b.name)));
    sorted
}

fn region_summaries(nodes: &[NodeView]) -> Vec<RegionSummary> {
    let leader = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader");
    let mut out: Vec<RegionSummary> = Vec::new();
    for n in by_region(nodes) {
        let region = region_of(n).unwrap_or("?").to_string();
        if out.last().is_none_or(|r| r.region != region) {
            out.push(RegionSummary {
                region,
                nodes: vec![],
                serving: 0,
                voters: 0,
                vens_connected: 0,
                vens_current: 0,
            });
        }
        let Some(r) = out.last_mut() else { continue };
        r.nodes.push(name_of(n).to_string());
        if leader
            .and_then(|l| l.peers.iter().find(|p| p.id == n.id))
            .is_some_and(|p| p.voter)
        {
            r.voters += 1;
        }
        if let Some(s) = &n.status {
            if s.fenced_for_ms.is_none() {
                r.serving += 1;
            }
            r.vens_connected += s.services.vens_connected.unwrap_or(0);
            r.vens_current += s.services.vens_current.unwrap_or(0);
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
    for n in by_region(nodes) {
        let Some(s) = &n.status else {
            println!(
                "{:<10} {:<12} unreachable (node {}): {}",
                n.region.as_deref().unwrap_or("?"),
                n.name.as_deref().unwrap_or("?"),
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
    let regions = region_summaries(nodes);
    // One line per region only where a region has several nodes: with one
    // node each, the table already says it all.
    if regions.iter().any(|r| r.nodes.len() > 1) {
        println!();
        for r in regions {
            println!(
                "{:<10} {} of {} nodes serving, {} voting, VENs {}/{}",
                r.region,
                r.serving,
                r.nodes.len(),
                r.voters,
                r.vens_current,
                r.vens_connected
            );
        }
    }
}

/// `pce dr ...`.
pub async fn run(cmd: DrCommand) -> Result<()> {
    match cmd {
        DrCommand::Status { conn } => status(&conn).await,
        DrCommand::TransferLeader { conn, to } => transfer_leader(&conn, &to).await,
        DrCommand::Fence {
            conn,
            region,
            seconds,
            keep_serving,
            force,
        } => {
            let c = open_cluster(&conn)?;
            let nodes = c.status(&[]).await?;
            let targets = find_nodes(&nodes, &region)?;
            // Every node must be reachable before any is fenced: half a
            // region fenced is no drill and no maintenance window.
            let addrs = apis_of(&targets)?;
            // One node after the other: each fence checks that the voters
            // left can still elect and commit, counting those fenced before.
            for (i, addr) in addrs.iter().enumerate() {
                if let Err(e) = fence(&c, *addr, seconds, keep_serving, force).await {
                    let done: Vec<&str> = targets[..i].iter().map(|n| name_of(n)).collect();
                    if done.is_empty() {
                        return Err(e);
                    }
                    return Err(e.context(format!(
                        "{} fenced before this failed (they lift themselves in {seconds} s, or `pce dr unfence --region {region}`)",
                        done.join(", ")
                    )));
                }
            }
            let names: Vec<&str> = targets.iter().map(|n| name_of(n)).collect();
            let v = json!({"region": region, "nodes": names, "fenced_for_s": seconds, "keep_serving": keep_serving});
            output::print(conn.json, &v, || {
                format!("{region} fenced; it lifts itself in {seconds} s (`pce dr unfence --region {region}` sooner)")
            })
        }
        DrCommand::Unfence { conn, region } => {
            let c = open_cluster(&conn)?;
            let nodes = c.status(&[]).await?;
            let targets = find_nodes(&nodes, &region)?;
            // Every node is tried: one that fails does not keep the others
            // fenced.
            let mut failed = Vec::new();
            for n in &targets {
                let r = match api_of(n) {
                    Some(addr) => unfence(&c, addr).await,
                    None => Err(anyhow!("it runs no admin API")),
                };
                if let Err(e) = r {
                    failed.push(format!("{}: {e:#}", name_of(n)));
                }
            }
            if !failed.is_empty() {
                bail!("not unfenced: {}", failed.join("; "));
            }
            let names: Vec<&str> = targets.iter().map(|n| name_of(n)).collect();
            output::print(
                conn.json,
                &json!({"region": region, "nodes": names, "fenced": false}),
                || format!("{region} unfenced"),
            )
        }
        DrCommand::Drill(args) => drill::run(args).await,
        DrCommand::AddRegion {
            conn,
            id,
            name,
            region,
            addr,
            voter,
        } => {
            let c = open_cluster(&conn)?;
            let body = json!({"action": "add_learner", "node_id": id, "name": name, "region": region, "addr": addr});
            // The call returns once the learner has caught up, which can
            // take a minute for a large store: say how far it got meanwhile.
            let added = output::with_progress(
                &format!("adding {name} ({region}) as a learner"),
                membership(&c, &body),
                || catch_up(&c, id),
            )
            .await?;
            output::phase(format!("{name} ({region}) is a learner and has caught up"));
            let promoted = if voter {
                let v = membership(&c, &json!({"action": "promote", "node_id": id})).await?;
                output::phase(format!("{name} promoted to voter"));
                Some(v)
            } else {
                None
            };
            let v = json!({"region": region, "name": name, "node_id": id, "learner": added, "promoted": promoted});
            let last = promoted.as_ref().unwrap_or(&added);
            output::print(conn.json, &v, || {
                format!("voters {}, learners {}", last["voters"], last["learners"])
            })
        }
        DrCommand::RemoveRegion {
            conn,
            region,
            force,
        } => change_region(&conn, &region, "remove", force).await,
        DrCommand::Promote { conn, region } => {
            change_region(&conn, &region, "promote", false).await
        }
        DrCommand::Demote {
            conn,
            region,
            force,
        } => change_region(&conn, &region, "demote", force).await,
        DrCommand::MoveApp { conn, app, env, to } => {
            let c = open_cluster(&conn)?;
            let v = ok(
                c.client(c.serving_entry().await?)?
                    .post(
                        "/api/v2/supercluster/move_app",
                        &json!({"app": app, "env": env, "to": to}),
                    )
                    .await?,
                &format!("moving app={app} env={env} to {to}"),
            )?;
            output::print(conn.json, &v, || {
                let moved = v["moved"].as_array().map(Vec::len).unwrap_or(0);
                format!(
                    "app={app} env={env}: {moved} workloads moved to {to} ({} already there); their VENs re-home to {to}'s nodes",
                    v["already_there"]
                )
            })
        }
        DrCommand::Backup { conn, out } => backup(&conn, &out).await,
        DrCommand::Restore { conn, file } => restore(&conn, &file).await,
    }
}

/// `pce dr status`: every node, and a verdict (an unhealthy cluster fails the
/// command, so scripts can gate on it).
async fn status(conn: &Conn) -> Result<()> {
    let c = open_cluster(conn)?;
    let nodes = c.status(&[]).await?;
    let mut issues = problems(&nodes);
    issues.extend(risks(&nodes));
    if conn.json {
        let v = json!({"nodes": nodes, "regions": region_summaries(&nodes), "healthy": issues.is_empty(), "problems": issues});
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

/// `pce dr transfer-leader`: the target campaigns; verified from every node.
async fn transfer_leader(conn: &Conn, to: &str) -> Result<()> {
    let c = open_cluster(conn)?;
    let nodes = c.status(&[]).await?;
    let target = find_voter(&nodes, to)?;
    let addr = api_of(target).ok_or_else(|| anyhow!("{} runs no admin API", name_of(target)))?;
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
    let took = t0.elapsed().as_secs_f64();
    let out =
        json!({"leader": name, "region": to, "term": v["term"], "verified_on_every_node_s": took});
    output::print(conn.json, &out, || {
        format!(
            "leader is now {name} ({to}), term {}, verified on every node in {took:.2} s",
            v["term"]
        )
    })
}

/// Writes a file only its owner may read (a backup holds key hashes and the
/// whole policy), whatever the umask.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// `pce dr backup`: the store at one revision, checked, written atomically.
async fn backup(conn: &Conn, out: &Path) -> Result<()> {
    let c = open_cluster(conn)?;
    // From a region that serves: a fenced or cut-off one's replica may be stale.
    let a = c
        .client(c.serving_entry().await?)?
        .get("/api/v2/supercluster/backup")
        .await?;
    let revision = a.header("x-revision").unwrap_or_default();
    if !a.status.is_success() {
        ok(a, "taking the backup")?;
        bail!("taking the backup failed");
    }
    let tmp = out.with_extension("partial");
    write_private(&tmp, &a.body).with_context(|| format!("writing {}", tmp.display()))?;
    let keys = verify_backup(&tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    let sha = sc_store::hash::sha256_hex(&[&a.body]);
    let v = json!({
        "revision": revision.parse::<u64>().ok(),
        "keys": keys,
        "bytes": a.body.len(),
        "sha256": sha,
        "file": out.display().to_string(),
    });
    output::print(conn.json, &v, || {
        format!(
            "backup of revision {revision}: {keys} keys, {} bytes, sha256 {sha} -> {}",
            a.body.len(),
            out.display()
        )
    })
}

/// `pce dr restore`: a checked backup into the cluster, read back and verified.
async fn restore(conn: &Conn, file: &Path) -> Result<()> {
    let keys = verify_backup(file)?;
    output::phase(format!("{}: a valid backup of {keys} keys", file.display()));
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let c = open_cluster(conn)?;
    let entry = c.serving_entry().await?;
    let before = applied_revision(&c, entry).await;
    // One call loads and verifies everything; meanwhile the revision of the
    // region it runs on shows the batches being committed.
    let a = output::with_progress(
        &format!("restoring {keys} keys through {entry}"),
        async {
            c.client(entry)?
                .post_bytes("/api/v2/supercluster/restore", bytes)
                .await
        },
        || async {
            let now = applied_revision(&c, entry).await?;
            Some(format!(
                "{} commands committed",
                now.saturating_sub(before.unwrap_or(now))
            ))
        },
    )
    .await?;
    let v = ok(a, "restoring")?;
    if v["verified"] != true || v["keys"].as_u64().is_none() {
        bail!("the cluster did not confirm the restore: {v}");
    }
    output::print(conn.json, &v, || {
        format!(
            "restored {} keys ({keys} in the file, cluster-local ones skipped) in {} commands; every key read back and verified",
            v["keys"], v["commands"]
        )
    })
}

/// The store revision of the region at `api` (`None` if it does not answer).
async fn applied_revision(c: &Cluster, api: SocketAddr) -> Option<u64> {
    let nodes = c.status(&[api]).await.ok()?;
    nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.services.api.as_deref() == Some(api.to_string().as_str()))
        .map(|s| s.revision)
}

/// How far a joining node has caught up, as the leader sees it.
async fn catch_up(c: &Cluster, id: u64) -> Option<String> {
    let nodes = c.status(&[]).await.ok()?;
    let leader = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")?;
    let peer = leader.peers.iter().find(|p| p.id == id)?;
    Some(match (peer.matched, leader.last_log_index) {
        (Some(m), Some(last)) => format!("at index {m} of {last}"),
        _ => "not replicating yet".into(),
    })
}

async fn membership(c: &Cluster, body: &Value) -> Result<Value> {
    Ok(ok(
        c.client(c.serving_entry().await?)?
            .post("/api/v2/supercluster/membership", body)
            .await?,
        "membership change",
    )?)
}

/// Promotes, demotes or removes the nodes of `region` (or the one node of
/// that name), one membership change after the other: each is checked
/// against the voters the ones before left.
async fn change_region(conn: &Conn, region: &str, action: &str, force: bool) -> Result<()> {
    let c = open_cluster(conn)?;
    let nodes = c.status(&[]).await?;
    let targets = find_nodes(&nodes, region)?;
    let mut changes: Vec<Value> = Vec::new();
    for node in &targets {
        let v = membership(
            &c,
            &json!({"action": action, "node_id": node.id, "force": force}),
        )
        .await
        .with_context(|| {
            let done: Vec<String> = changes
                .iter()
                .map(|c| c["node"].as_str().unwrap_or("?").to_string())
                .collect();
            let before = if done.is_empty() {
                String::new()
            } else {
                format!(" (done before it: {})", done.join(", "))
            };
            format!("{action} {} (node {}){before}", name_of(node), node.id)
        })?;
        changes.push(json!({"node": name_of(node), "node_id": node.id, "result": v}));
    }
    let last = changes
        .last()
        .map(|c| c["result"].clone())
        .unwrap_or_default();
    let v = json!({"region": region, "action": action, "changes": changes, "voters": last["voters"], "learners": last["learners"]});
    output::print(conn.json, &v, || {
        let names: Vec<String> = targets
            .iter()
            .map(|n| format!("{} (node {})", name_of(n), n.id))
            .collect();
        format!(
            "{action} {}: voters {}, learners {}",
            names.join(", "),
            last["voters"],
            last["learners"]
        )
    })
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

/// The nodes `target` names: every node of the region of that name, or the
/// one node of that name. A region is a set of nodes, so what the operator
/// does to a region (fence it, remove it) is done to each of them.
/// The admin API of each node, or which node runs none.
fn apis_of(nodes: &[&NodeView]) -> Result<Vec<SocketAddr>> {
    nodes
        .iter()
        .map(|n| api_of(n).ok_or_else(|| anyhow!("{} runs no admin API", name_of(n))))
        .collect()
}

pub(crate) fn find_nodes<'a>(nodes: &'a [NodeView], target: &str) -> Result<Vec<&'a NodeView>> {
    let by_region: Vec<&NodeView> = nodes
        .iter()
        .filter(|n| region_of(n) == Some(target))
        .collect();
    if !by_region.is_empty() {
        return Ok(by_region);
    }
    if let Some(n) = nodes.iter().find(|n| n.name.as_deref() == Some(target)) {
        return Ok(vec![n]);
    }
    let mut regions: Vec<&str> = nodes.iter().filter_map(region_of).collect();
    regions.dedup();
    let names: Vec<&str> = nodes.iter().filter_map(|n| n.name.as_deref()).collect();
    bail!(
        "unknown region or node {target:?}; the regions are: {}; the nodes: {}",
        regions.join(", "),
        names.join(", ")
    )
}

/// The node of `target` (a region or a node name) that should campaign: a
/// voter that answers, the one already leading if there is one.
fn find_voter<'a>(nodes: &'a [NodeView], target: &str) -> Result<&'a NodeView> {
    let candidates = find_nodes(nodes, target)?;
    let leader = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader");
    let votes = |n: &NodeView| {
        leader
            .and_then(|l| l.peers.iter().find(|p| p.id == n.id))
            .is_none_or(|p| p.voter)
    };
    candidates
        .iter()
        .filter(|n| n.status.is_some() && votes(n))
        .min_by_key(|n| (leader.is_none_or(|l| l.id != n.id), n.id))
        .copied()
        .ok_or_else(|| {
            anyhow!(
                "no node of {target} is a voter that answers; promote one first (pce dr promote)"
            )
        })
}

/// A node's name as the membership records it, or its id.
pub(crate) fn name_of(n: &NodeView) -> &str {
    n.name.as_deref().unwrap_or("?")
}

async fn fence(
    c: &Cluster,
    addr: SocketAddr,
    seconds: u64,
    keep_serving: bool,
    force: bool,
) -> Result<()> {
    ok(
        c.client(addr)?
            .put(
                "/api/v2/supercluster/fence",
                &json!({"seconds": seconds, "keep_serving": keep_serving, "force": force}),
            )
            .await?,
        &format!("fencing {addr}"),
    )?;
    Ok(())
}

async fn unfence(c: &Cluster, addr: SocketAddr) -> Result<()> {
    ok(
        c.client(addr)?.delete("/api/v2/supercluster/fence").await?,
        &format!("unfencing {addr}"),
    )?;
    Ok(())
}
