//! Drill `node-loss`: one node of a region with several is killed (`kill -9`,
//! or the operator's `--kill-cmd`); its VENs must move to the region's other
//! nodes with no write failing and no VEN sent its policy again, and the node
//! is started again with `--restart-cmd`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use sc_leader::client::cluster::{api_of, converge, region_of, Cluster, NodeView};
use serde::Serialize;

use super::{config_of, fill, ms, name_of, shell, DrillArgs, Load, NodeTarget, Plan, Progress};

/// What a node-loss drill saw of the node it killed and of its VENs.
#[derive(Debug, Clone, Serialize)]
pub(super) struct NodeLoss {
    pub(super) node: String,
    pub(super) region: String,
    /// The process killed, when the drill killed it itself.
    pub(super) pid: Option<u32>,
    /// `SIGKILL` or the `--kill-cmd` that ran.
    pub(super) killed_with: String,
    /// VENs streaming from the node before it was killed.
    pub(super) vens_on_node: u64,
    /// Kill → every VEN of the region streaming from its other nodes on its
    /// current policy (`null`: not within 30 s).
    pub(super) vens_moved_ms: Option<u64>,
    /// VENs the region's other nodes gained.
    pub(super) vens_moved_within_region: u64,
    /// VENs other regions gained (must be 0: a region with a node left
    /// keeps its VENs).
    pub(super) vens_moved_to_other_regions: u64,
    /// VENs the region's other nodes sent their policy again because they
    /// came back enforcing an older one (must be 0: no push storm).
    pub(super) ven_resyncs: u64,
    /// Whether `--restart-cmd` brought the node back before the checks.
    pub(super) restarted: bool,
}

/// Picks the node to kill (`--node`, or the member node serving the most
/// VENs in a region with several) and checks it can be lost: another node of
/// its region serves VENs, and the drill can kill it (`--kill-cmd`, or a
/// process on this host that no other node shares).
pub(super) fn pick_victim(nodes: &[NodeView], args: &DrillArgs) -> Result<NodeTarget> {
    let serves_vens = |n: &NodeView| {
        n.status
            .as_ref()
            .is_some_and(|s| s.services.vens_connected.is_some())
    };
    let siblings = |n: &NodeView| {
        nodes
            .iter()
            .filter(|o| o.id != n.id && region_of(o) == region_of(n) && serves_vens(o))
            .count()
    };
    let chosen = match &args.node {
        Some(name) => nodes
            .iter()
            .find(|n| n.name.as_deref() == Some(name.as_str()))
            .ok_or_else(|| {
                let names: Vec<&str> = nodes.iter().map(name_of).collect();
                anyhow!("unknown node {name:?}; the nodes are: {}", names.join(", "))
            })?,
        None => nodes
            .iter()
            .filter(|n| serves_vens(n) && siblings(n) > 0)
            .filter(|n| n.status.as_ref().is_some_and(|s| s.role != "leader"))
            .max_by_key(|n| {
                let on = n.status.as_ref().and_then(|s| s.services.vens_connected);
                (on.unwrap_or(0), std::cmp::Reverse(n.id))
            })
            .ok_or_else(|| {
                anyhow!(
                    "node-loss needs a region with two nodes or more that serve VENs, one of them \
                     not the leader; start regions with several nodes (pce up --nodes-per-region 2)"
                )
            })?,
    };
    let name = name_of(chosen).to_string();
    let region = region_of(chosen).unwrap_or_default().to_string();
    if siblings(chosen) == 0 {
        bail!("{name} is the only node of {region} that serves VENs: losing it is a region loss (member-region-loss); add a node to {region} first");
    }
    let api = api_of(chosen).ok_or_else(|| anyhow!("{name} runs no admin API"))?;
    let status = chosen
        .status
        .as_ref()
        .ok_or_else(|| anyhow!("{name} does not answer"))?;
    let config = config_of(args, &name);
    let pid = match (&args.kill_cmd, status.services.pid) {
        (Some(_), pid) => pid,
        (None, None) => bail!(
            "{name} does not say which process it runs in (an older release); give --kill-cmd"
        ),
        (None, Some(pid)) => {
            if let Some(other) = nodes.iter().find(|o| {
                o.id != chosen.id
                    && o.status.as_ref().and_then(|s| s.services.pid) == Some(pid)
                    && api_of(o).is_some_and(|a| a.ip().is_loopback())
            }) {
                bail!(
                    "{name} shares its process (pid {pid}) with {}: `pce up` runs every node in one \
                     process, and kill -9 would take them all. Run each node as its own `pce serve \
                     --config DIR/NODE/node.toml` (docs/runbook.md, \"Regions with several nodes\"), \
                     or give --kill-cmd",
                    name_of(other)
                );
            }
            if !api.ip().is_loopback() {
                bail!("{name} runs on another host ({api}); give --kill-cmd (e.g. 'ssh HOST sudo systemctl kill -s KILL pce')");
            }
            // A loopback address does not make it this host's: the node may
            // run in another network namespace or container, where its pid
            // means nothing here (or another process).
            if !super::super::process::listens_on(pid, api)? {
                bail!(
                    "{name} says it runs as pid {pid}, but no process {pid} listens on its API \
                     {api} here that this user may inspect (another host, namespace or \
                     container?); give --kill-cmd"
                );
            }
            Some(pid)
        }
    };
    Ok(NodeTarget {
        id: chosen.id,
        name,
        region,
        api,
        pid,
        config,
    })
}

/// VENs per node of `region`, and in every other region together.
pub(super) fn vens_by_place(
    nodes: &[NodeView],
    region: &str,
) -> (BTreeMap<u64, (u64, u64)>, u64, u64) {
    let mut in_region = BTreeMap::new();
    let mut elsewhere = 0;
    let mut resyncs = 0;
    for n in nodes {
        let Some(s) = &n.status else { continue };
        let (a, c) = (
            s.services.vens_connected.unwrap_or(0),
            s.services.vens_current.unwrap_or(0),
        );
        if s.region == region {
            in_region.insert(n.id, (a, c));
            resyncs += s.services.ven_resyncs.unwrap_or(0);
        } else {
            elsewhere += a;
        }
    }
    (in_region, elsewhere, resyncs)
}

/// Kills the victim, watches its VENs move to its region's other nodes,
/// keeps it down for `--hold`, and restarts it with `--restart-cmd`; returns
/// when it was killed (ms since the start), whether it led, and what moved.
pub(super) async fn lose_node(
    c: &Cluster,
    args: &DrillArgs,
    plan: &Plan,
    v: &NodeTarget,
    load: &Load,
    p: &mut Progress,
) -> Result<(u64, bool, NodeLoss)> {
    let nodes = c.status(&plan.all_apis).await?;
    let led = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .any(|s| s.role == "leader" && s.id == v.id);
    let (before, elsewhere_before, _) = vens_by_place(&nodes, &v.region);
    let vens_on_node = before.get(&v.id).map(|x| x.0).unwrap_or(0);
    let region_total: u64 = before.values().map(|x| x.0).sum();
    let others: Vec<SocketAddr> = plan
        .all_apis
        .iter()
        .copied()
        .filter(|a| *a != v.api)
        .collect();
    // Resyncs are counted from the moment before the kill, on the nodes that
    // will take the VENs.
    let (_, _, resyncs_before) = vens_by_place(&c.status(&others).await?, &v.region);
    load.avoid(&plan.apis, |a| a.1 == v.api).await;
    let killed_with = match &args.kill_cmd {
        Some(cmd) => {
            let cmd = fill(cmd, v);
            shell("--kill-cmd", &cmd).await?;
            cmd
        }
        None => {
            let pid = v
                .pid
                .ok_or_else(|| anyhow!("{}: no process to kill", v.name))?;
            // SAFETY: kill(2) on a pid the node reported; no memory is shared.
            if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
                bail!(
                    "kill -9 {pid} ({}): {}",
                    v.name,
                    std::io::Error::last_os_error()
                );
            }
            "SIGKILL".into()
        }
    };
    let killed_at = p.t0.elapsed().as_millis() as u64;
    let t_kill = Instant::now();
    p.phase(format!(
        "killed {} ({}) with {killed_with}; {vens_on_node} of the region's {region_total} VENs streamed from it",
        v.name, v.region
    ));
    // Moved: the region's VENs all stream from its other nodes, current.
    let deadline = t_kill + Duration::from_secs(30);
    let mut moved_ms = None;
    let mut last = (BTreeMap::new(), elsewhere_before, resyncs_before);
    while Instant::now() < deadline {
        // The node is down: an error here must not skip its restart below.
        match c.status(&others).await {
            Ok(nodes) => last = vens_by_place(&nodes, &v.region),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "status while a node is down");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        }
        let (connected, current) = last
            .0
            .iter()
            .filter(|(id, _)| **id != v.id)
            .fold((0, 0), |(a, c), (_, x)| (a + x.0, c + x.1));
        if connected + (last.1.saturating_sub(elsewhere_before)) >= region_total
            && current == connected
        {
            moved_ms = Some(t_kill.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let on_siblings: u64 = last
        .0
        .iter()
        .filter(|(id, _)| **id != v.id)
        .map(|(_, x)| x.0)
        .sum();
    let siblings_before = region_total - vens_on_node;
    let loss = NodeLoss {
        node: v.name.clone(),
        region: v.region.clone(),
        pid: v.pid,
        killed_with,
        vens_on_node,
        vens_moved_ms: moved_ms,
        vens_moved_within_region: on_siblings.saturating_sub(siblings_before),
        vens_moved_to_other_regions: last.1.saturating_sub(elsewhere_before),
        ven_resyncs: last.2.saturating_sub(resyncs_before),
        restarted: args.restart_cmd.is_some(),
    };
    p.phase(match moved_ms {
        Some(ms) => format!(
            "{} VENs moved to {}'s other nodes in {ms} ms ({} to other regions, {} sent their policy again)",
            loss.vens_moved_within_region, v.region, loss.vens_moved_to_other_regions, loss.ven_resyncs
        ),
        None => format!("the VENs of {} did not all move within 30 s", v.name),
    });
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    match &args.restart_cmd {
        Some(cmd) => {
            let cmd = fill(cmd, v);
            shell("--restart-cmd", &cmd).await?;
            p.phase(format!(
                "restarted {} ({cmd}); waiting for convergence",
                v.name
            ));
            converge(c, &plan.all_apis, Duration::from_secs(60)).await?;
            p.phase("converged");
        }
        None => p.phase(format!(
            "{} stays down: start it again ({})",
            v.name,
            v.config
                .as_ref()
                .map(|c| format!("pce serve --config {}", c.display()))
                .unwrap_or_else(|| "its service manager, or pce serve --config".into())
        )),
    }
    Ok((killed_at, led, loss))
}

/// Why a node-loss drill failed, beyond what every drill checks.
pub(super) fn node_loss_failures(l: &NodeLoss) -> Vec<String> {
    let mut out = Vec::new();
    if l.vens_moved_ms.is_none() {
        out.push(format!(
            "the VENs of {} did not all reconnect to {}'s other nodes on their current policy within 30 s",
            l.node, l.region
        ));
    }
    if l.vens_moved_to_other_regions > 0 {
        out.push(format!(
            "{} VENs left {} although it has nodes that serve",
            l.vens_moved_to_other_regions, l.region
        ));
    }
    if l.ven_resyncs > 0 {
        out.push(format!(
            "{} VENs were sent their policy again after moving (a push storm)",
            l.ven_resyncs
        ));
    }
    out
}

/// The node-loss figures as Markdown rows.
pub(super) fn node_loss_rows(l: &NodeLoss) -> Vec<(&'static str, String)> {
    vec![
        (
            "node killed",
            format!("{} ({}) with {}", l.node, l.region, l.killed_with),
        ),
        (
            "VENs on it → moved within its region / to other regions (must be 0)",
            format!(
                "{} → {} / {}",
                l.vens_on_node, l.vens_moved_within_region, l.vens_moved_to_other_regions
            ),
        ),
        (
            "kill → every VEN of the region current on its other nodes",
            ms(l.vens_moved_ms, "not within 30 s"),
        ),
        (
            "VENs sent their policy again (must be 0)",
            l.ven_resyncs.to_string(),
        ),
        (
            "node restarted by the drill",
            if l.restarted { "yes" } else { "no" }.into(),
        ),
    ]
}
