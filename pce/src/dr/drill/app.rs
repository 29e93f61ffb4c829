//! Drill `app-failover`: application DR rehearsed. The region an application
//! lives in is lost (every node of it fenced); the application is moved to
//! another region (`move_app`); the operator's `--failover-cmd` brings its
//! hosts up there (new addresses, the same VEN identity); the drill measures
//! how long until its peers admit it again (`--probe-cmd`: a real connection
//! from the application to its database, tried every 50 ms), and checks every
//! VEN of the application streams from the new region on its current policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sc_leader::client::cluster::{converge, ok, Cluster, NodeView};
use serde::Serialize;
use serde_json::json;

use super::super::process::quote;
use super::{fence, shell, unfence, DrillArgs, Load, Plan, Progress, FENCE_MARGIN_S, ORG};

/// How long the drill waits for the probe to pass, and for the VENs to be
/// served by the new region, before it calls the drill failed.
const LIMIT: Duration = Duration::from_secs(30);

/// Pause between two probes.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// The most workloads of one application the drill follows (one page of the
/// API's synchronous listing).
const MAX_WORKLOADS: usize = 500;

/// The application the drill moves, found before anything is touched.
pub(super) struct AppPlan {
    app: String,
    env: String,
    /// The region lost.
    from: String,
    /// The region that serves the application afterwards.
    to: String,
    /// Its managed workloads (hrefs) and the region of each before.
    workloads: BTreeMap<String, String>,
}

/// What an app-failover drill saw.
#[derive(Debug, Clone, Serialize)]
pub(super) struct AppFailover {
    app: String,
    env: String,
    from: String,
    to: String,
    /// Managed workloads of the application.
    workloads: usize,
    /// Workloads the move changed (the others were already in `to`).
    moved: usize,
    /// Region lost → the move acknowledged.
    move_ms: u64,
    /// Whether `--failover-cmd` ran, and how long it took.
    failover_cmd_ms: Option<u64>,
    /// The application ready (after `--failover-cmd`, or the move) → the
    /// end of the first `--probe-cmd` that passed: its peers admit it at its
    /// new addresses by then (`null`: no probe given, or none passed within
    /// 30 s). An upper bound: it includes the passing probe's own time.
    peers_updated_ms: Option<u64>,
    /// The same → the start of the last probe that failed: the peers admitted
    /// it after this (a lower bound; 0 when the first probe passed).
    peers_updated_after_ms: Option<u64>,
    /// Probes run (each a real connection attempt).
    probes: u64,
    /// Whether a probe was given.
    probed: bool,
    /// The move → every VEN of the application streams from `to` on its
    /// current policy, as the regions' VEN status says (refreshed every 2 s).
    rehomed_ms: Option<u64>,
    /// Workloads of the application not served by `to` when the drill gave up.
    not_rehomed: Vec<String>,
}

/// Finds the application's managed workloads and the region to lose:
/// `--region`, or the region serving most of them. Refuses what cannot be
/// drilled with what to fix.
pub(super) async fn plan(
    c: &Cluster,
    nodes: &[NodeView],
    args: &DrillArgs,
) -> Result<(AppPlan, String)> {
    let (Some(app), Some(env), Some(to)) = (&args.app, &args.env, &args.to) else {
        bail!("app-failover needs --app, --env (the application's labels) and --to (the region that takes it over)");
    };
    let regions: Vec<String> = nodes
        .iter()
        .filter_map(|n| sc_leader::client::cluster::region_of(n).map(str::to_string))
        .collect();
    if !regions.contains(to) {
        bail!(
            "--to {to:?} is not a region of the cluster; the regions are: {}",
            {
                let mut r = regions.clone();
                r.sort();
                r.dedup();
                r.join(", ")
            }
        );
    }
    let mut cl = c.client(c.serving_entry().await?)?;
    let app_label = crate::labels::href(&mut cl, "app", app).await?;
    let env_label = crate::labels::href(&mut cl, "env", env).await?;
    // The server filters: an estate of any size, up to one page of the
    // application's own workloads (more is refused below, never half seen).
    let query = crate::labels::encode(&json!([[app_label, env_label]]).to_string());
    let a = cl
        .get(&format!(
            "{ORG}/workloads?managed=true&labels={query}&max_results={MAX_WORKLOADS}"
        ))
        .await?;
    let total = a
        .header("x-total-count")
        .and_then(|t| t.parse::<usize>().ok());
    let list = ok(a, "listing the application's workloads")?;
    let workloads: BTreeMap<String, String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| {
            Some((
                w["href"].as_str()?.to_string(),
                w["region"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect();
    if total.is_some_and(|t| t > workloads.len()) {
        bail!(
            "app={app} env={env} has {} managed workloads; the drill follows at most {MAX_WORKLOADS}",
            total.unwrap_or_default()
        );
    }
    if workloads.is_empty() {
        bail!("no managed workload is labelled app={app} and env={env}");
    }
    let from = match &args.region {
        Some(r) => r.clone(),
        None => {
            let mut count: BTreeMap<&str, usize> = BTreeMap::new();
            for r in workloads.values().filter(|r| *r != to && !r.is_empty()) {
                *count.entry(r).or_default() += 1;
            }
            count
                .into_iter()
                .max_by_key(|(r, n)| (*n, std::cmp::Reverse(*r)))
                .map(|(r, _)| r.to_string())
                .ok_or_else(|| anyhow!("app={app} env={env} is served by {to} already"))?
        }
    };
    if !regions.contains(&from) {
        bail!("{from:?} is not a region of the cluster: give --region, the region to lose");
    }
    if from == *to {
        bail!("--region and --to are both {to}: the drill loses one region and moves the application to another");
    }
    if !workloads.values().any(|r| *r == from) {
        bail!("no workload of app={app} env={env} is in {from}: losing it is not an application failover");
    }
    Ok((
        AppPlan {
            app: app.clone(),
            env: env.clone(),
            from: from.clone(),
            to: to.clone(),
            workloads,
        },
        from,
    ))
}

/// How long the lost region's fence stands: the failover command's limit,
/// the measurements (two limits), the hold and the usual margin. The drill
/// lifts it when done; it lifts itself if the drill dies.
fn fence_seconds(args: &DrillArgs) -> u64 {
    let max = sc_raft::network::fence::MAX_FENCE.as_secs();
    let needed = super::SHELL_LIMIT.as_secs() + 2 * LIMIT.as_secs();
    (args.hold + needed + FENCE_MARGIN_S).min(max)
}

/// Fences every node at `addrs` (again: a fence renewed stands anew), or
/// none: a failure lifts the fences already raised.
async fn fence_all(c: &Cluster, addrs: &[SocketAddr], seconds: u64) -> Result<()> {
    for (i, addr) in addrs.iter().enumerate() {
        if let Err(e) = fence(c, *addr, seconds, false, false).await {
            let _ = unfence_all(c, &addrs[..i]).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Lifts the fence of every node at `addrs`, each tried whatever the others
/// answer.
async fn unfence_all(c: &Cluster, addrs: &[SocketAddr]) -> Result<()> {
    let mut failed = Vec::new();
    for addr in addrs {
        if let Err(e) = unfence(c, *addr).await {
            failed.push(format!("{addr}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("not unfenced: {}", failed.join("; "));
    }
    Ok(())
}

/// `cmd` with `{app}`, `{env}`, `{from}` and `{to}`, each one shell word.
fn fill(cmd: &str, a: &AppPlan) -> String {
    cmd.replace("{app}", &quote(&a.app))
        .replace("{env}", &quote(&a.env))
        .replace("{from}", &quote(&a.from))
        .replace("{to}", &quote(&a.to))
}

/// Whether the probe passes once (it has 5 s).
async fn probe(cmd: &str) -> bool {
    let run = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(5), run).await,
        Ok(Ok(s)) if s.success()
    )
}

/// The application's workloads not yet streaming from `to` on their current
/// policy, by the regions' VEN status.
async fn not_rehomed(c: &Cluster, api: SocketAddr, a: &AppPlan) -> Result<Vec<String>> {
    let sync = ok(
        c.client(api)?
            .get(&format!("{ORG}/workloads/policy_sync"))
            .await?,
        "reading VEN policy status",
    )?;
    let mut left: Vec<String> = a.workloads.keys().cloned().collect();
    for w in sync["workloads"].as_array().into_iter().flatten() {
        if w["served_from"] == a.to.as_str() && w["current"] == true {
            left.retain(|h| w["href"] != h.as_str());
        }
    }
    Ok(left)
}

/// Loses the application's region, moves the application, runs the
/// operator's failover, and measures; lifts the fence and waits for the
/// cluster to converge. Returns when the region was lost (ms since the
/// start), whether it led, and what was seen.
pub(super) async fn fail_over(
    c: &Cluster,
    args: &DrillArgs,
    plan: &Plan,
    a: &AppPlan,
    load: &Load,
    p: &mut Progress,
) -> Result<(u64, bool, AppFailover)> {
    let nodes = c.status(&plan.all_apis).await?;
    let led = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .any(|s| s.role == "leader" && s.region == a.from);
    let lost: Vec<SocketAddr> = plan
        .apis
        .iter()
        .filter(|x| x.0 == a.from)
        .map(|x| x.1)
        .collect();
    let live = plan
        .apis
        .iter()
        .find(|x| x.0 == a.to)
        .map(|x| x.1)
        .ok_or_else(|| anyhow!("{}: no API", a.to))?;
    load.avoid(&plan.apis, |x| x.0 == a.from).await;
    // The fence stands through the measurements (up to two limits) and the
    // hold, with the usual margin, and lifts itself if the drill dies.
    if lost.is_empty() {
        bail!("{}: no node with an API to fence", a.from);
    }
    fence_all(c, &lost, fence_seconds(args)).await?;
    let at = p.t0.elapsed().as_millis() as u64;
    let t_lost = Instant::now();
    p.phase(format!(
        "fenced {} (app={} env={} lives there)",
        a.from, a.app, a.env
    ));

    // Whatever happens from here, the fence is lifted before the drill ends.
    let measured = measure(c, args, a, live, p).await;
    let held = t_lost.elapsed();
    if held < Duration::from_secs(args.hold) {
        tokio::time::sleep(Duration::from_secs(args.hold) - held).await;
    }
    unfence_all(c, &lost)
        .await
        .with_context(|| format!("lifting the fence of {}", a.from))?;
    p.phase(format!("unfenced {}; waiting for convergence", a.from));
    converge(c, &plan.all_apis, Duration::from_secs(60)).await?;
    p.phase("converged");
    Ok((at, led, measured?))
}

/// With the application's region just lost: the move, the failover
/// command, the probes and the VENs' new home.
async fn measure(
    c: &Cluster,
    args: &DrillArgs,
    a: &AppPlan,
    live: SocketAddr,
    p: &mut Progress,
) -> Result<AppFailover> {
    let t_lost = Instant::now();
    let moved = ok(
        c.client(live)?
            .post(
                "/api/v2/supercluster/move_app",
                &json!({"app": a.app, "env": a.env, "to": a.to}),
            )
            .await?,
        &format!("moving app={} env={} to {}", a.app, a.env, a.to),
    )?;
    let move_ms = t_lost.elapsed().as_millis() as u64;
    let t_moved = Instant::now();
    let n_moved = moved["moved"].as_array().map_or(0, Vec::len);
    p.phase(format!("moved {n_moved} workloads to {}", a.to));

    let failover_cmd_ms = match &args.failover_cmd {
        Some(cmd) => {
            let t = Instant::now();
            shell("failover command", &fill(cmd, a)).await?;
            p.phase("failover command done: the application runs in its new region");
            Some(t.elapsed().as_millis() as u64)
        }
        None => None,
    };
    let t_ready = Instant::now();

    let (mut peers_updated_ms, mut peers_updated_after_ms, mut probes) = (None, None, 0);
    if let Some(cmd) = &args.probe_cmd {
        let cmd = fill(cmd, a);
        // The peers admitted the application after the last failing probe
        // started and before the passing one ended: both ends are reported.
        let mut last_failed_start = 0;
        while t_ready.elapsed() < LIMIT {
            probes += 1;
            let started = t_ready.elapsed().as_millis() as u64;
            if probe(&cmd).await {
                peers_updated_ms = Some(t_ready.elapsed().as_millis() as u64);
                peers_updated_after_ms = Some(last_failed_start);
                break;
            }
            last_failed_start = started;
            tokio::time::sleep(PROBE_EVERY).await;
        }
        p.phase(match peers_updated_ms {
            Some(ms) => format!("probe passed {ms} ms after the application was ready"),
            None => format!("probe never passed within {} s", LIMIT.as_secs()),
        });
    }

    // The limit runs from when the application was ready, not from the move:
    // a failover command that takes long is not the VENs' delay.
    let mut left = not_rehomed(c, live, a).await?;
    while !left.is_empty() && t_ready.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        left = not_rehomed(c, live, a).await?;
    }
    let rehomed_ms = left
        .is_empty()
        .then(|| t_moved.elapsed().as_millis() as u64);
    p.phase(format!(
        "{} of {} VENs of the application stream from {} on their current policy",
        a.workloads.len() - left.len(),
        a.workloads.len(),
        a.to
    ));

    Ok(AppFailover {
        app: a.app.clone(),
        env: a.env.clone(),
        from: a.from.clone(),
        to: a.to.clone(),
        workloads: a.workloads.len(),
        moved: n_moved,
        move_ms,
        failover_cmd_ms,
        peers_updated_ms,
        peers_updated_after_ms,
        probes,
        probed: args.probe_cmd.is_some(),
        rehomed_ms,
        not_rehomed: left,
    })
}

/// Why an app-failover drill failed, beyond what every drill checks.
pub(super) fn failures(f: &AppFailover) -> Vec<String> {
    let mut out = Vec::new();
    if f.probed && f.peers_updated_ms.is_none() {
        out.push(format!(
            "the probe never passed within {} s of the application's failover",
            LIMIT.as_secs()
        ));
    }
    if !f.not_rehomed.is_empty() {
        out.push(format!(
            "{} VENs of app={} env={} were not streaming from {} on their current policy within {} s: {}",
            f.not_rehomed.len(),
            f.app,
            f.env,
            f.to,
            LIMIT.as_secs(),
            f.not_rehomed.join(", ")
        ));
    }
    out
}

/// The app-failover figures as rows.
pub(super) fn rows(f: &AppFailover) -> Vec<(&'static str, String)> {
    let ms = super::ms;
    vec![
        (
            "application",
            format!(
                "app={} env={}: {} workloads, {} moved {} → {}",
                f.app, f.env, f.workloads, f.moved, f.from, f.to
            ),
        ),
        (
            "region lost → move acknowledged",
            format!("{} ms", f.move_ms),
        ),
        ("failover command", ms(f.failover_cmd_ms, "none given")),
        (
            "application ready → its peers admit it (probe; goal < 1 s)",
            if f.probed {
                format!(
                    "by {} (after {}; {} probes)",
                    ms(f.peers_updated_ms, "never"),
                    ms(f.peers_updated_after_ms, "-"),
                    f.probes
                )
            } else {
                "no probe given".into()
            },
        ),
        (
            "move → every VEN of the application current in its new region (2 s status)",
            ms(f.rehomed_ms, "not within 30 s"),
        ),
    ]
}
