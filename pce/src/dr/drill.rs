//! `pce dr drill`: a failover rehearsal against the live cluster. It checks
//! the cluster is healthy, runs a writer and a reader per region, fences the
//! scenario's regions one at a time, then proves every acknowledged write is
//! in every region and every VEN is back on its current policy, and writes a
//! JSON and a Markdown report with RTO and RPO.
//!
//! The region drills (fences) are here, with what every drill shares (the
//! load, the checks, the report); the drills that kill, restart or move
//! something have a module each: `node_loss`, `upgrade`, `app`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sc_leader::client::cluster::{
    api_of, converge, ok, problems, region_of, risks, Cluster, NodeView,
};
use serde::Serialize;
use serde_json::json;

use super::{fence, find_nodes, name_of, open_cluster, unfence, DrillArgs, Scenario, ORG};

mod app;
mod node_loss;
mod upgrade;

use node_loss::{lose_node, node_loss_failures, node_loss_rows, pick_victim, NodeLoss};
use upgrade::{restart_each, restart_line, upgrade_order, Restart};

/// How long an operator's command (`--kill-cmd`, `--restart-cmd`,
/// `--failover-cmd`) may take: long enough for a host to boot.
const SHELL_LIMIT: Duration = Duration::from_secs(300);

/// Seconds a drill's fence outlives its hold, so the drill lifts it, not
/// time; and time lifts it if the drill dies.
const FENCE_MARGIN_S: u64 = 30;

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

/// The identifier of the report format, and of its JSON Schema
/// (`docs/schemas/drill-report.v1.json`): a new field that changes no meaning
/// keeps it, a changed meaning gets a new one.
pub(crate) const REPORT_SCHEMA: &str = "supercluster.drill-report.v1";

/// Who ran the drill, against which cluster, with which build and options:
/// what an auditor asks before looking at a figure.
#[derive(Debug, Serialize)]
struct Provenance {
    /// `--operator`, else the login name running the CLI.
    operator: String,
    /// The API key's user the drill acted as.
    api_user: String,
    /// The host the CLI ran on.
    host: String,
    /// The cluster CA's common name.
    cluster_name: String,
    /// SHA-256 of the cluster CA certificate (DER): one per cluster.
    cluster_ca_sha256: String,
    /// Version of the `pce` binary that ran the drill.
    pce_version: String,
}

/// The command-line options the drill ran with.
#[derive(Debug, Serialize)]
struct Options {
    hold_s: u64,
    region: Option<String>,
    api: String,
    report_dir: String,
    /// The operator's commands, as given (before placeholders are filled):
    /// what a figure measured depends on them.
    #[serde(skip_serializing_if = "Option::is_none")]
    kill_cmd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_cmd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failover_cmd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probe_cmd: Option<String>,
}

/// One step of the drill, with when it happened.
#[derive(Debug, Clone, Serialize)]
struct Phase {
    /// Milliseconds since the drill started.
    at_ms: u64,
    /// The same as an ISO-8601 UTC time.
    at: String,
    what: String,
}

/// Whether the VENs kept (and regained) their policy.
#[derive(Debug, Serialize)]
struct VenCheck {
    /// `passed`, `failed`, or `skipped` when no VEN was connected before the
    /// drill (a check of nothing is not a pass).
    result: &'static str,
    connected_before: u64,
    connected_after: u64,
    current_after: u64,
}

/// The drill's figures. Every duration is in milliseconds (`_ms`) or
/// seconds (`_s`); `null` means "did not happen" (no write failed, or writes
/// never resumed: then `failures` says which).
#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    /// The drill's name as the CLI spells it.
    drill: Scenario,
    /// `passed` or `failed`.
    result: &'static str,
    /// Why it failed, in words (empty when it passed).
    failures: Vec<String>,
    started_at: String,
    finished_at: String,
    duration_ms: u64,
    provenance: Provenance,
    options: Options,
    fenced: Vec<String>,
    writer_region: String,
    writes_attempted: usize,
    writes_acknowledged: usize,
    writes_failed: usize,
    /// Failed writes that no fence excuses: a write may fail only while the
    /// leader's region is fenced and a new leader is not yet elected. Any
    /// other failure (a member's fence, or a region's return, disturbing
    /// writes) fails the drill.
    writes_failed_unexpectedly: usize,
    /// The worst, over the fences, of: fence raised → the first write invoked
    /// after it is acknowledged. A write the API holds while a new leader is
    /// elected counts as down time, as does one that fails.
    rto_ms: Option<u64>,
    /// The same per fence, in order.
    rto_per_fence_ms: Vec<Option<u64>>,
    /// First failed write → first successful write after it.
    first_failure_to_success_ms: Option<u64>,
    /// The slowest acknowledged write (`null`: none was acknowledged).
    slowest_write_ms: Option<u64>,
    /// Acknowledged writes missing from some region after healing (RPO).
    acknowledged_writes_lost: usize,
    missing: Vec<String>,
    reads_ok: BTreeMap<String, u64>,
    reads_failed: BTreeMap<String, u64>,
    vens: VenCheck,
    /// After the writer stopped, until every region had applied everything.
    converged_ms: u64,
    leader_before: String,
    leader_after: String,
    /// For node-loss: the node killed and where its VENs went.
    #[serde(skip_serializing_if = "Option::is_none")]
    node_loss: Option<NodeLoss>,
    /// For rolling-upgrade: each node's restart, in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    restarts: Option<Vec<Restart>>,
    /// For app-failover: the application moved and how long its peers took.
    #[serde(skip_serializing_if = "Option::is_none")]
    app_failover: Option<app::AppFailover>,
    phases: Vec<Phase>,
}

struct Progress {
    t0: Instant,
    /// Wall-clock milliseconds at `t0`.
    started_unix_ms: u64,
    phases: Vec<Phase>,
}

impl Progress {
    fn phase(&mut self, what: impl Into<String>) {
        let what = what.into();
        let ms = self.t0.elapsed().as_millis() as u64;
        // Progress goes to stderr: stdout is the report (or its JSON).
        eprintln!("[{:>7.2}s] {what}", ms as f64 / 1000.0);
        self.phases.push(Phase {
            at_ms: ms,
            at: sc_store::time::iso8601(self.started_unix_ms + ms),
            what,
        });
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

/// Runs one drill: preflight, load, the fences, the checks, the report.
pub(super) async fn run(args: DrillArgs) -> Result<()> {
    // Checked before anything starts: a fence stands for the hold plus a
    // margin, and no fence may stand longer than MAX_FENCE.
    let max_hold = sc_raft::network::fence::MAX_FENCE.as_secs() - FENCE_MARGIN_S;
    if args.hold == 0 || args.hold > max_hold {
        bail!("--hold {}: give 1 to {max_hold} seconds", args.hold);
    }
    let c = Arc::new(open_cluster(&args.conn)?);
    let provenance = provenance(&c, &args)?;
    let started_unix_ms = sc_store::time::now_ms();
    let mut p = Progress {
        t0: Instant::now(),
        started_unix_ms,
        phases: vec![],
    };
    let plan = preflight(&c, &args, &mut p).await?;
    let load = Load::start(&c, &plan.apis, p.t0, format!("{started_unix_ms:x}"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut restarts = None;
    let mut app_failover = None;
    let (fenced, fence_times, led, node_loss) = match &plan.victim {
        None if plan.app.is_some() => {
            let a = plan.app.as_ref().ok_or_else(|| anyhow!("no application"))?;
            let (time, led, seen) = app::fail_over(&c, &args, &plan, a, &load, &mut p).await?;
            app_failover = Some(seen);
            (plan.targets.clone(), vec![time], vec![led], None)
        }
        Some(v) => {
            let (time, led, loss) = lose_node(&c, &args, &plan, v, &load, &mut p).await?;
            (vec![v.name.clone()], vec![time], vec![led], Some(loss))
        }
        None if args.scenario == Scenario::RollingUpgrade => {
            let done = restart_each(&c, &args, &plan, &load, &mut p).await?;
            let names = done.iter().map(|r| r.node.clone()).collect();
            let times = done.iter().map(|r| r.at_ms).collect();
            let led = vec![false; done.len()];
            restarts = Some(done);
            (names, times, led, None)
        }
        None => {
            let (fenced, times, led) = fence_each(&c, &args, &plan, &load, &mut p).await?;
            (fenced, times, led, None)
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ops, reads, writer_addr) = load.stop().await?;
    p.phase("writer and readers stopped");

    // A killed node left down is not waited for, nor checked for writes.
    let down = node_loss
        .as_ref()
        .filter(|l| !l.restarted)
        .and(plan.victim.as_ref())
        .map(|v| v.api);
    let apis: Vec<(String, SocketAddr)> = plan
        .apis
        .iter()
        .filter(|a| Some(a.1) != down)
        .cloned()
        .collect();
    let live_apis: Vec<SocketAddr> = apis.iter().map(|a| a.1).collect();
    let t_conv = Instant::now();
    let nodes = converge(&c, &live_apis, Duration::from_secs(60)).await?;
    let converged_ms = t_conv.elapsed().as_millis() as u64;
    let acked: Vec<&WriteOp> = ops.iter().filter(|o| o.href.is_some()).collect();
    p.phase(format!(
        "checking {} acknowledged writes in every region",
        acked.len()
    ));
    let missing = missing_writes(&c, &apis, &acked).await?;
    let vens_after = wait_for_vens(&c, &plan, &live_apis, &nodes).await?;
    p.phase(format!(
        "VENs: {} connected before, {} after, {} on their current policy",
        plan.vens_before, vens_after.0, vens_after.1
    ));
    // Clean up the drill's labels (best effort; they are recorded in the report).
    let mut cl = c.client(writer_addr)?;
    for o in &acked {
        let _ = cl
            .delete(&format!("/api/v2{}", o.href.as_deref().unwrap_or_default()))
            .await;
    }
    p.phase("drill labels removed");

    let (rto_per_fence_ms, first_failure_to_success_ms, slowest_write_ms) =
        write_figures(&ops, &fence_times);
    let rto_ms = rto_per_fence_ms
        .iter()
        .copied()
        .try_fold(0, |worst, r| r.map(|r| worst.max(r)));
    let writes_failed_unexpectedly = unexpected_failures(&ops, &fence_times, &led);
    let vens = VenCheck {
        result: if plan.vens_before == 0 {
            "skipped"
        } else if vens_after.0 >= plan.vens_before && vens_after.1 == vens_after.0 {
            "passed"
        } else {
            "failed"
        },
        connected_before: plan.vens_before,
        connected_after: vens_after.0,
        current_after: vens_after.1,
    };
    let writes_failed = ops.len() - acked.len();
    let mut failures = Vec::new();
    if !missing.is_empty() {
        failures.push(format!(
            "{} acknowledged writes are missing from some region",
            missing.len()
        ));
    }
    if writes_failed_unexpectedly > 0 {
        failures.push(format!(
            "{writes_failed_unexpectedly} writes failed outside a leader election"
        ));
    }
    if rto_ms.is_none() {
        failures.push("writes did not resume after a fence".into());
    }
    if writes_failed > 0 && first_failure_to_success_ms.is_none() {
        failures.push("no write succeeded after the first failed one".into());
    }
    if vens.result == "failed" {
        failures.push(format!(
            "{} VENs connected before, {} after, {} on their current policy",
            vens.connected_before, vens.connected_after, vens.current_after
        ));
    }
    if let Some(l) = &node_loss {
        failures.extend(node_loss_failures(l));
    }
    if let Some(a) = &app_failover {
        failures.extend(app::failures(a));
    }
    let finished_unix_ms = sc_store::time::now_ms();
    let report = Report {
        schema: REPORT_SCHEMA,
        drill: args.scenario,
        result: if failures.is_empty() {
            "passed"
        } else {
            "failed"
        },
        failures,
        started_at: sc_store::time::iso8601(started_unix_ms),
        finished_at: sc_store::time::iso8601(finished_unix_ms),
        duration_ms: finished_unix_ms.saturating_sub(started_unix_ms),
        provenance,
        options: Options {
            hold_s: args.hold,
            region: args.region.clone(),
            api: c.entry().to_string(),
            report_dir: args.report_dir.display().to_string(),
            kill_cmd: args.kill_cmd.clone(),
            restart_cmd: args.restart_cmd.clone(),
            failover_cmd: args.failover_cmd.clone(),
            probe_cmd: args.probe_cmd.clone(),
        },
        fenced,
        writer_region: plan
            .apis
            .iter()
            .find(|a| a.1 == writer_addr)
            .map(|a| a.0.clone())
            .unwrap_or_default(),
        writes_attempted: ops.len(),
        writes_acknowledged: acked.len(),
        writes_failed,
        writes_failed_unexpectedly,
        rto_ms,
        rto_per_fence_ms,
        first_failure_to_success_ms,
        slowest_write_ms,
        acknowledged_writes_lost: missing.len(),
        missing,
        reads_ok: reads.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
        reads_failed: reads.iter().map(|(k, v)| (k.clone(), v.1)).collect(),
        vens,
        converged_ms,
        leader_before: plan.leader_before,
        leader_after: leader_name(&nodes),
        node_loss,
        restarts,
        app_failover,
        phases: p.phases.clone(),
    };
    let (json_path, md_path) = write_report(&args.report_dir, &report, started_unix_ms)?;
    if args.conn.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        eprintln!("report: {} and {}", json_path.display(), md_path.display());
    } else {
        print_report(&report);
        println!("report: {} and {}", json_path.display(), md_path.display());
    }
    if !report.failures.is_empty() {
        bail!("the drill failed: {}", report.failures.join("; "));
    }
    Ok(())
}

/// Who, what and where, for the report's first lines.
fn provenance(c: &Cluster, args: &DrillArgs) -> Result<Provenance> {
    let (cluster_name, der) = sc_raft::pki::pem_identity(c.ca_pem())
        .ok_or_else(|| anyhow!("the cluster CA is not a PEM certificate with a common name"))?;
    let operator = args.operator.clone().unwrap_or_else(login_name);
    Ok(Provenance {
        operator,
        api_user: c.user().to_string(),
        host: hostname(),
        cluster_name,
        cluster_ca_sha256: sc_store::hash::sha256_hex(&[&der]),
        pce_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Who is running the CLI: the user `sudo` was run by, else the login name
/// from the environment, else the name of the process's user in
/// /etc/passwd (a cron job or CI runner may set no variable), else its uid.
fn login_name() -> String {
    if let Some(name) = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
    {
        return name;
    }
    // SAFETY: getuid(2) cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)? == uid.to_string()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// This machine's name (`uname -n`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// What the preflight found: where the APIs are and what will be fenced.
struct Plan {
    /// (region, admin API) of every node.
    apis: Vec<(String, SocketAddr)>,
    /// The same addresses alone, for status and convergence.
    all_apis: Vec<SocketAddr>,
    /// The regions to fence, in order (every node of each).
    targets: Vec<String>,
    /// For node-loss: the node to kill.
    victim: Option<NodeTarget>,
    /// For rolling-upgrade: the nodes to restart, in order.
    upgrade_order: Vec<NodeTarget>,
    /// For app-failover: the application and the regions.
    app: Option<app::AppPlan>,
    /// VENs connected before the drill.
    vens_before: u64,
    /// The leader before the drill.
    leader_before: String,
}

/// Refuses to drill an unhealthy cluster (a drill must start from a clean
/// state, or its figures mean nothing) and picks the regions to fence.
async fn preflight(c: &Cluster, args: &DrillArgs, p: &mut Progress) -> Result<Plan> {
    p.phase(format!("preflight: asking {}", c.entry()));
    let nodes = c.status(&[]).await?;
    let mut issues = problems(&nodes);
    issues.extend(risks(&nodes));
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
        find_nodes(&nodes, r)?;
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
        Scenario::RollingRegionLoss => {
            // Each region once, in the order its first node appears.
            let mut regions: Vec<String> = Vec::new();
            for (region, _) in &apis {
                if !regions.contains(region) {
                    regions.push(region.clone());
                }
            }
            regions
        }
        Scenario::NodeLoss | Scenario::RollingUpgrade | Scenario::AppFailover => vec![],
    };
    let (app, targets) = match args.scenario {
        Scenario::AppFailover => {
            let (a, from) = app::plan(c, &nodes, args).await?;
            (Some(a), vec![from])
        }
        _ => (None, targets),
    };
    let victim = match args.scenario {
        Scenario::NodeLoss => Some(pick_victim(&nodes, args)?),
        _ => None,
    };
    let upgrade_order = match args.scenario {
        Scenario::RollingUpgrade => upgrade_order(&nodes, args)?,
        _ => vec![],
    };
    let (vens_before, _) = vens(&nodes);
    let leader_before = leader_name(&nodes);
    let mut regions: Vec<&str> = apis.iter().map(|a| a.0.as_str()).collect();
    regions.sort();
    regions.dedup();
    p.phase(format!(
        "healthy: leader {leader_before}, {} nodes in {} regions, {vens_before} VENs connected",
        apis.len(),
        regions.len()
    ));
    Ok(Plan {
        all_apis: apis.iter().map(|a| a.1).collect(),
        apis,
        targets,
        victim,
        upgrade_order,
        app,
        vens_before,
        leader_before,
    })
}

/// The load a drill measures: one writer (through a region that stays up)
/// and a reader per region, until told to stop.
struct Load {
    ops: Arc<Mutex<Vec<WriteOp>>>,
    reads: Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
    /// The API the writer writes through; moved off a region before it is fenced.
    writer_api: Arc<Mutex<SocketAddr>>,
    stop: tokio::sync::watch::Sender<bool>,
    writer: tokio::task::JoinHandle<Result<()>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(c: &Arc<Cluster>, apis: &[(String, SocketAddr)], t0: Instant, run: String) -> Load {
        let ops: Arc<Mutex<Vec<WriteOp>>> = Arc::new(Mutex::new(Vec::new()));
        let reads = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let writer_api = Arc::new(Mutex::new(c.entry()));
        let writer = tokio::spawn(write_until_stopped(
            c.clone(),
            ops.clone(),
            writer_api.clone(),
            t0,
            run,
            stopped.clone(),
        ));
        let readers = apis
            .iter()
            .cloned()
            .map(|(region, addr)| {
                tokio::spawn(read_until_stopped(
                    c.clone(),
                    region,
                    addr,
                    reads.clone(),
                    stopped.clone(),
                ))
            })
            .collect();
        Load {
            ops,
            reads,
            writer_api,
            stop,
            writer,
            readers,
        }
    }

    /// Writes through a node `lost` does not name from now on. Returns when
    /// a write sent after the switch has finished: a write already on its way
    /// to the node about to be lost would otherwise fail with it, and count
    /// as a failure no election excuses.
    async fn avoid(
        &self,
        apis: &[(String, SocketAddr)],
        lost: impl Fn(&(String, SocketAddr)) -> bool,
    ) {
        if let Some(other) = apis.iter().find(|a| !lost(a)) {
            if let Ok(mut w) = self.writer_api.lock() {
                *w = other.1;
            }
        }
        let done = || self.ops.lock().map(|o| o.len()).unwrap_or(usize::MAX);
        // The write in flight, then one sent after the switch (a write takes
        // at most 3 s before it times out).
        let (n0, deadline) = (done(), Instant::now() + Duration::from_secs(7));
        while done() < n0.saturating_add(2) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writer and readers; returns what they recorded and the API
    /// the writer ended on.
    async fn stop(self) -> Result<(Vec<WriteOp>, BTreeMap<String, (u64, u64)>, SocketAddr)> {
        let _ = self.stop.send(true);
        self.writer.await??;
        for r in self.readers {
            let _ = r.await;
        }
        let ops = self.ops.lock().map_err(|_| anyhow!("lock"))?.clone();
        let reads = self.reads.lock().map_err(|_| anyhow!("lock"))?.clone();
        let addr = *self.writer_api.lock().map_err(|_| anyhow!("lock"))?;
        Ok((ops, reads, addr))
    }
}

/// The writer: a new label every 50 ms (20 ms after a failure), each
/// recorded with when it was invoked and acknowledged.
async fn write_until_stopped(
    c: Arc<Cluster>,
    ops: Arc<Mutex<Vec<WriteOp>>>,
    writer_api: Arc<Mutex<SocketAddr>>,
    t0: Instant,
    run: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
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
    Ok(())
}

/// A reader of one region: a label list every 100 ms, counted ok or failed.
async fn read_until_stopped(
    c: Arc<Cluster>,
    region: String,
    addr: SocketAddr,
    reads: Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let r = async {
            let mut cl = c.client(addr)?;
            let a = tokio::time::timeout(
                Duration::from_secs(2),
                cl.get(&format!("{ORG}/labels?key=sc_drill&max_results=1")),
            )
            .await
            .map_err(|_| anyhow!("timed out"))??;
            ok(a, "read").map(|_| ()).map_err(anyhow::Error::from)
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
}

/// Fences each target region in turn for `--hold` seconds, then lifts the
/// fence and waits for the cluster to converge; returns the fenced regions
/// and when each fence went up (ms since the start).
async fn fence_each(
    c: &Cluster,
    args: &DrillArgs,
    plan: &Plan,
    load: &Load,
    p: &mut Progress,
) -> Result<(Vec<String>, Vec<u64>, Vec<bool>)> {
    let mut fenced = Vec::new();
    let mut fence_times = Vec::new();
    let mut led = Vec::new();
    for region in &plan.targets {
        // Whether this region leads as it goes dark: only then may writes fail.
        let nodes = c.status(&plan.all_apis).await?;
        led.push(
            nodes
                .iter()
                .filter_map(|n| n.status.as_ref())
                .any(|s| s.role == "leader" && s.region == *region),
        );
        // A region is lost as a whole: every node of it is fenced.
        let addrs: Vec<SocketAddr> = plan
            .apis
            .iter()
            .filter(|a| a.0 == *region)
            .map(|a| a.1)
            .collect();
        if addrs.is_empty() {
            bail!("{region}: no API");
        }
        // Write through a region that stays up.
        load.avoid(&plan.apis, |a| a.0 == *region).await;
        let keep_serving = args.scenario == Scenario::PartitionLeaderMinority;
        // The fence outlives the hold by a margin, but lifts itself if we die.
        for addr in &addrs {
            fence(c, *addr, args.hold + FENCE_MARGIN_S, keep_serving, false).await?;
        }
        fence_times.push(p.t0.elapsed().as_millis() as u64);
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
        for addr in &addrs {
            unfence(c, *addr).await?;
        }
        p.phase(format!("unfenced {region}; waiting for convergence"));
        converge(c, &plan.all_apis, Duration::from_secs(60)).await?;
        p.phase("converged");
    }
    Ok((fenced, fence_times, led))
}

/// Every acknowledged write that some region does not have (the RPO).
async fn missing_writes(
    c: &Cluster,
    apis: &[(String, SocketAddr)],
    acked: &[&WriteOp],
) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for (region, addr) in apis {
        let mut cl = c.client(*addr)?;
        for o in acked {
            let href = o.href.as_deref().unwrap_or_default();
            let a = cl.get(&format!("/api/v2{href}")).await?;
            if !a.status.is_success() {
                missing.push(format!("{href} (write #{}) missing in {region}", o.n));
            }
        }
    }
    Ok(missing)
}

/// Waits (up to 30 s) until every VEN connected before is connected again
/// (to the nodes at `apis`), on its current policy; returns (connected,
/// current).
async fn wait_for_vens(
    c: &Cluster,
    plan: &Plan,
    apis: &[SocketAddr],
    nodes: &[NodeView],
) -> Result<(u64, u64)> {
    let mut after = vens(nodes);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (after.0 < plan.vens_before || after.1 < after.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = vens(&c.status(apis).await?);
    }
    Ok(after)
}

/// A node a drill kills or restarts, and how to address it.
#[derive(Clone)]
struct NodeTarget {
    id: u64,
    name: String,
    region: String,
    api: SocketAddr,
    /// Its process, when the drill kills it itself.
    pid: Option<u32>,
    /// Its config file, when the drill was given the `pce up` directory.
    config: Option<PathBuf>,
}

/// The config file of node `name` in the `pce up` directory the drill was
/// given, if it was given one.
fn config_of(args: &DrillArgs, name: &str) -> Option<PathBuf> {
    args.conn.dir.as_ref().and_then(|d| {
        sc_region::local::existing(d, true)
            .into_iter()
            .find(|n| n.name == name)
            .map(|n| d.join(n.dir).join("node.toml"))
    })
}

/// `cmd` with the node's `{node}`, `{region}`, `{pid}` and `{config}`, each
/// quoted as one shell word: names come from the cluster, and a node named
/// `x; rm -rf ~` must not run anything.
fn fill(cmd: &str, v: &NodeTarget) -> String {
    use super::process::quote;
    cmd.replace("{node}", &quote(&v.name))
        .replace("{region}", &quote(&v.region))
        .replace(
            "{pid}",
            &quote(&v.pid.map(|p| p.to_string()).unwrap_or_default()),
        )
        .replace(
            "{config}",
            &quote(
                &v.config
                    .as_ref()
                    .map(|c| c.display().to_string())
                    .unwrap_or_default(),
            ),
        )
}

/// Runs an operator's command (`--kill-cmd`, `--restart-cmd`) with `sh -c`.
async fn shell(what: &str, cmd: &str) -> Result<()> {
    use std::io::{Read, Seek};
    // Output goes to a file, not a pipe: a command that starts a process in
    // the background (a node, a VEN) leaves it holding the command's output,
    // and a pipe would keep the drill waiting for that process to end.
    let mut log = tempfile::tempfile().context("a file for the command's output")?;
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(log.try_clone()?))
        .stderr(std::process::Stdio::from(log.try_clone()?))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running the {what} {cmd:?}"))?;
    let status = match tokio::time::timeout(SHELL_LIMIT, child.wait()).await {
        Ok(status) => status.with_context(|| format!("running the {what} {cmd:?}"))?,
        Err(_) => bail!(
            "the {what} {cmd:?} did not return within {} s; start what must keep running in \
             the background (or through its service manager)",
            SHELL_LIMIT.as_secs()
        ),
    };
    if !status.success() {
        let mut said = String::new();
        log.rewind()?;
        let _ = log.take(4096).read_to_string(&mut said);
        bail!("the {what} {cmd:?} failed ({status}): {}", said.trim());
    }
    Ok(())
}

/// RTO per fence (fence → the first write invoked after it acknowledged),
/// first failure → next success, and the slowest acknowledged write, in ms
/// (`None`: writes never resumed, or, for the second, none failed).
fn write_figures(
    ops: &[WriteOp],
    fence_times: &[u64],
) -> (Vec<Option<u64>>, Option<u64>, Option<u64>) {
    let rto_per_fence_ms = fence_times
        .iter()
        .map(|&f| {
            ops.iter()
                .filter(|o| o.href.is_some() && o.invoked_ms >= f)
                .map(|o| o.done_ms.saturating_sub(f))
                .next()
        })
        .collect();
    let slowest_write_ms = ops
        .iter()
        .filter(|o| o.href.is_some())
        .map(|o| o.done_ms.saturating_sub(o.invoked_ms))
        .max();
    let first_failure_to_success_ms = ops.iter().find(|o| o.href.is_none()).and_then(|f| {
        ops.iter()
            .filter(|o| o.href.is_some() && o.invoked_ms > f.invoked_ms)
            .map(|o| o.done_ms.saturating_sub(f.invoked_ms))
            .next()
    });
    (
        rto_per_fence_ms,
        first_failure_to_success_ms,
        slowest_write_ms,
    )
}

/// Failed writes invoked outside every window in which a failure is
/// expected: from the fence of a region that led, to the first write after
/// it that was acknowledged (the election), starting 100 ms early because the
/// fence's time is taken when its call returns, after it was raised.
fn unexpected_failures(ops: &[WriteOp], fence_times: &[u64], led: &[bool]) -> usize {
    let windows: Vec<(u64, u64)> = fence_times
        .iter()
        .zip(led)
        .filter(|(_, led)| **led)
        .map(|(&f, _)| {
            let end = ops
                .iter()
                .filter(|o| o.href.is_some() && o.invoked_ms >= f)
                .map(|o| o.invoked_ms)
                .next()
                .unwrap_or(u64::MAX);
            (f, end)
        })
        .collect();
    ops.iter()
        .filter(|o| o.href.is_none())
        .filter(|o| {
            !windows
                .iter()
                .any(|(from, to)| o.invoked_ms >= from.saturating_sub(100) && o.invoked_ms <= *to)
        })
        .count()
}

/// A duration for people: `1,234 ms`, or what its absence means.
fn ms(v: Option<u64>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| format!("{v} ms"))
}

/// The report as Markdown lines of `| figure | value |`.
fn figures(r: &Report) -> Vec<(&'static str, String)> {
    let per_fence: Vec<String> = r
        .rto_per_fence_ms
        .iter()
        .zip(&r.fenced)
        .map(|(v, region)| format!("{region}: {}", ms(*v, "never resumed")))
        .collect();
    let mut rows = vec![
        (
            match r.drill {
                Scenario::NodeLoss => "node lost",
                Scenario::RollingUpgrade => "nodes restarted, in order",
                _ => "regions fenced, in order",
            },
            r.fenced.join(", "),
        ),
        (
            "leader before → after",
            format!("{} → {}", r.leader_before, r.leader_after),
        ),
        ("writes went through", r.writer_region.clone()),
        (
            "writes attempted / acknowledged / failed",
            format!(
                "{} / {} / {}",
                r.writes_attempted, r.writes_acknowledged, r.writes_failed
            ),
        ),
        (
            "failed writes no leader election excuses (must be 0)",
            r.writes_failed_unexpectedly.to_string(),
        ),
        (
            "RTO: fence → first write after it acknowledged (worst fence)",
            ms(r.rto_ms, "writes never resumed"),
        ),
        ("RTO per fence", per_fence.join("; ")),
        (
            "first failed write → first successful write",
            ms(
                r.first_failure_to_success_ms,
                if r.writes_failed == 0 {
                    "no write failed"
                } else {
                    "never succeeded again"
                },
            ),
        ),
        (
            "slowest acknowledged write",
            ms(r.slowest_write_ms, "no write was acknowledged"),
        ),
        (
            "RPO: acknowledged writes missing afterwards (must be 0)",
            r.acknowledged_writes_lost.to_string(),
        ),
        ("VEN check", ven_line(&r.vens)),
        (
            "convergence after the writer stopped",
            format!("{} ms", r.converged_ms),
        ),
    ];
    if let Some(l) = &r.node_loss {
        rows.extend(node_loss_rows(l));
    }
    for x in r.restarts.iter().flatten() {
        rows.push(("node restarted", restart_line(x)));
    }
    if let Some(a) = &r.app_failover {
        rows.extend(app::rows(a));
    }
    rows
}

/// The VEN check in words.
fn ven_line(v: &VenCheck) -> String {
    match v.result {
        "skipped" => "skipped: no VEN was connected before the drill".to_string(),
        result => format!(
            "{result}: {} connected before, {} after, {} on their current policy",
            v.connected_before, v.connected_after, v.current_after
        ),
    }
}

fn print_report(r: &Report) {
    println!();
    println!(
        "drill {}: {}",
        scenario_name(r.drill),
        r.result.to_uppercase()
    );
    for f in &r.failures {
        println!("  failed because   {f}");
    }
    let lost = match r.drill {
        Scenario::NodeLoss => "killed ",
        Scenario::RollingUpgrade => "restarted",
        _ => "fenced   ",
    };
    println!("  {lost}        {}", r.fenced.join(", "));
    println!(
        "  leader           {} -> {}",
        r.leader_before, r.leader_after
    );
    println!(
        "  writes           {} attempted, {} acknowledged, {} failed ({} outside a leader election) (through {})",
        r.writes_attempted,
        r.writes_acknowledged,
        r.writes_failed,
        r.writes_failed_unexpectedly,
        r.writer_region
    );
    println!(
        "  RTO              {} (first failure → success: {}; slowest write {})",
        ms(r.rto_ms, "writes never resumed"),
        ms(
            r.first_failure_to_success_ms,
            if r.writes_failed == 0 {
                "no write failed"
            } else {
                "never"
            }
        ),
        ms(r.slowest_write_ms, "none acknowledged")
    );
    println!(
        "  RPO              {} acknowledged writes lost",
        r.acknowledged_writes_lost
    );
    for (region, okc) in &r.reads_ok {
        println!(
            "  reads {:<10} {} ok, {} failed",
            region,
            okc,
            r.reads_failed.get(region).copied().unwrap_or(0)
        );
    }
    println!("  VENs             {}", ven_line(&r.vens));
    if let Some(l) = &r.node_loss {
        for (k, v) in node_loss_rows(l) {
            println!("  {k}: {v}");
        }
    }
    for x in r.restarts.iter().flatten() {
        println!("  restarted        {}", restart_line(x));
    }
    if let Some(a) = &r.app_failover {
        for (k, v) in app::rows(a) {
            println!("  {k}: {v}");
        }
    }
    println!(
        "  converged in     {} ms after the writer stopped",
        r.converged_ms
    );
}

/// The drill's name as the CLI spells it (`leader-region-loss`).
fn scenario_name(s: Scenario) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// Writes `drill-NAME-TIME.json` and `.md` into `dir`; the time in the name is
/// the start, in UTC, sortable.
fn write_report(dir: &Path, r: &Report, started_unix_ms: u64) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp: String = sc_store::time::iso8601(started_unix_ms)
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    let stem = format!("drill-{}-{stamp}Z", scenario_name(r.drill));
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(r)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let p = &r.provenance;
    let mut md = format!(
        "# Failover drill `{}`: {}\n\n\
         | | |\n|---|---|\n\
         | cluster | {} (CA SHA-256 `{}`) |\n\
         | operator | {} (API key user `{}`, on host `{}`) |\n\
         | started | {} |\n\
         | finished | {} ({:.1} s) |\n\
         | pce version | {} |\n\
         | options | hold {} s per region{}; entered through {} |\n\
         | report format | `{}` (JSON Schema: docs/schemas/drill-report.v1.json) |\n",
        scenario_name(r.drill),
        if r.failures.is_empty() {
            "**passed**"
        } else {
            "**FAILED**"
        },
        p.cluster_name,
        p.cluster_ca_sha256,
        p.operator,
        p.api_user,
        p.host,
        r.started_at,
        r.finished_at,
        r.duration_ms as f64 / 1000.0,
        p.pce_version,
        r.options.hold_s,
        r.options
            .region
            .as_deref()
            .map(|x| format!(", region {x}"))
            .unwrap_or_default(),
        r.options.api,
        r.schema,
    );
    if !r.failures.is_empty() {
        md.push_str("\n## Why it failed\n\n");
        for f in &r.failures {
            md.push_str(&format!("- {f}\n"));
        }
    }
    md.push_str("\n## Figures\n\n| figure | value |\n|---|---|\n");
    for (k, v) in figures(r) {
        md.push_str(&format!("| {k} | {v} |\n"));
    }
    md.push_str("\n## Reads per region\n\n| region | ok | failed |\n|---|---:|---:|\n");
    for (region, okc) in &r.reads_ok {
        md.push_str(&format!(
            "| {region} | {okc} | {} |\n",
            r.reads_failed.get(region).copied().unwrap_or(0)
        ));
    }
    md.push_str("\n## Phases\n\n| time (UTC) | since start | what |\n|---|---:|---|\n");
    for ph in &r.phases {
        md.push_str(&format!(
            "| {} | {:.2} s | {} |\n",
            ph.at,
            ph.at_ms as f64 / 1000.0,
            ph.what
        ));
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
