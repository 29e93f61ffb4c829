//! `pce dr drill`: a failover rehearsal against the live cluster. It checks
//! the cluster is healthy, runs a writer and a reader per region, fences the
//! scenario's regions one at a time, then proves every acknowledged write is
//! in every region and every VEN is back on its current policy, and writes a
//! JSON and a Markdown report with RTO and RPO.

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

use super::{fence, find_region, open_cluster, unfence, DrillArgs, Scenario, ORG};

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
    /// Failed writes that no fence excuses: a write may fail only while the
    /// leader's region is fenced and a new leader is not yet elected. Any
    /// other failure (a member's fence, or a region's return, disturbing
    /// writes) fails the drill.
    writes_failed_unexpectedly: usize,
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

/// Runs one drill: preflight, load, the fences, the checks, the report.
pub(super) async fn run(args: DrillArgs) -> Result<()> {
    // Checked before anything starts: a fence stands for the hold plus a
    // margin, and no fence may stand longer than MAX_FENCE.
    let max_hold = sc_raft::network::fence::MAX_FENCE.as_secs() - FENCE_MARGIN_S;
    if args.hold == 0 || args.hold > max_hold {
        bail!("--hold {}: give 1 to {max_hold} seconds", args.hold);
    }
    let c = Arc::new(open_cluster(&args.conn)?);
    let mut p = Progress {
        t0: Instant::now(),
        phases: vec![],
    };
    let started_unix_ms = sc_store::time::now_ms();
    let plan = preflight(&c, &args, &mut p).await?;
    let load = Load::start(&c, &plan.apis, p.t0, format!("{started_unix_ms:x}"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fenced, fence_times, led) = fence_each(&c, &args, &plan, &load, &mut p).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ops, reads, writer_addr) = load.stop().await?;
    p.phase("writer and readers stopped");

    let t_conv = Instant::now();
    let nodes = converge(&c, &plan.all_apis, Duration::from_secs(60)).await?;
    let converged_ms = t_conv.elapsed().as_millis() as u64;
    let acked: Vec<&WriteOp> = ops.iter().filter(|o| o.href.is_some()).collect();
    p.phase(format!(
        "checking {} acknowledged writes in every region",
        acked.len()
    ));
    let missing = missing_writes(&c, &plan.apis, &acked).await?;
    let vens_after = wait_for_vens(&c, &plan, &nodes).await?;
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
    let report = Report {
        scenario: args.scenario,
        started_unix_ms,
        fenced,
        writer_region: plan
            .apis
            .iter()
            .find(|a| a.1 == writer_addr)
            .map(|a| a.0.clone())
            .unwrap_or_default(),
        writes_attempted: ops.len(),
        writes_acknowledged: acked.len(),
        writes_failed: ops.len() - acked.len(),
        writes_failed_unexpectedly: unexpected_failures(&ops, &fence_times, &led),
        rto_ms: rto_per_fence_ms.iter().copied().max().unwrap_or(0),
        rto_per_fence_ms,
        first_failure_to_success_ms,
        slowest_write_ms,
        rpo: missing.len(),
        missing,
        reads_ok: reads.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
        reads_failed: reads.iter().map(|(k, v)| (k.clone(), v.1)).collect(),
        vens_before: plan.vens_before,
        vens_after: vens_after.0,
        vens_current_after: vens_after.1,
        converged_ms,
        leader_before: plan.leader_before,
        leader_after: leader_name(&nodes),
        phases: p.phases.clone(),
        passed: false,
    };
    let passed = report.rpo == 0
        && report.writes_failed_unexpectedly == 0
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

/// What the preflight found: where the APIs are and what will be fenced.
struct Plan {
    /// (region, admin API) of every node.
    apis: Vec<(String, SocketAddr)>,
    /// The same addresses alone, for status and convergence.
    all_apis: Vec<SocketAddr>,
    /// The regions to fence, in order.
    targets: Vec<String>,
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
    Ok(Plan {
        all_apis: apis.iter().map(|a| a.1).collect(),
        apis,
        targets,
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

    /// Writes through a region other than `region` from now on.
    fn avoid(&self, apis: &[(String, SocketAddr)], region: &str) {
        if let Some(other) = apis.iter().find(|a| a.0 != region) {
            if let Ok(mut w) = self.writer_api.lock() {
                *w = other.1;
            }
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
        let addr = plan
            .apis
            .iter()
            .find(|a| a.0 == *region)
            .map(|a| a.1)
            .ok_or_else(|| anyhow!("{region}: no API"))?;
        // Write through a region that stays up.
        load.avoid(&plan.apis, region);
        let keep_serving = args.scenario == Scenario::PartitionLeaderMinority;
        // The fence outlives the hold by a margin, but lifts itself if we die.
        fence(c, addr, args.hold + FENCE_MARGIN_S, keep_serving, false).await?;
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
        unfence(c, addr).await?;
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

/// Waits (up to 30 s) until every VEN connected before is connected again,
/// on its current policy; returns (connected, current).
async fn wait_for_vens(c: &Cluster, plan: &Plan, nodes: &[NodeView]) -> Result<(u64, u64)> {
    let mut after = vens(nodes);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (after.0 < plan.vens_before || after.1 < after.0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = vens(&c.status(&plan.all_apis).await?);
    }
    Ok(after)
}

/// RTO per fence (fence → the first write invoked after it acknowledged),
/// first failure → next success, and the slowest acknowledged write, in ms
/// (`u64::MAX`: never recovered).
fn write_figures(ops: &[WriteOp], fence_times: &[u64]) -> (Vec<u64>, u64, u64) {
    let rto_per_fence_ms = fence_times
        .iter()
        .map(|&f| {
            ops.iter()
                .filter(|o| o.href.is_some() && o.invoked_ms >= f)
                .map(|o| o.done_ms.saturating_sub(f))
                .next()
                .unwrap_or(u64::MAX)
        })
        .collect();
    let slowest_write_ms = ops
        .iter()
        .filter(|o| o.href.is_some())
        .map(|o| o.done_ms.saturating_sub(o.invoked_ms))
        .max()
        .unwrap_or(0);
    let first_failure_to_success_ms = match ops.iter().find(|o| o.href.is_none()) {
        None => 0,
        Some(f) => ops
            .iter()
            .filter(|o| o.href.is_some() && o.invoked_ms > f.invoked_ms)
            .map(|o| o.done_ms.saturating_sub(f.invoked_ms))
            .next()
            .unwrap_or(u64::MAX),
    };
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
        "  writes           {} attempted, {} acknowledged, {} failed ({} outside a leader election) (through {})",
        r.writes_attempted,
        r.writes_acknowledged,
        r.writes_failed,
        r.writes_failed_unexpectedly,
        r.writer_region
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
            "failed writes no leader election excuses (must be 0)",
            r.writes_failed_unexpectedly.to_string(),
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
