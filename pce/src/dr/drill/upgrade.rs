//! Drill `rolling-upgrade`: every node restarted in turn with
//! `--restart-cmd` (the mechanics of replacing its binary), region by region
//! with the leader's last, leadership moved once onto a restarted node, while
//! writes go on and none may fail.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use sc_leader::client::cluster::{api_of, converge, ok, region_of, Cluster, NodeView};
use serde::Serialize;
use serde_json::json;

use super::{
    config_of, fill, name_of, shell, wait_for_vens, DrillArgs, Load, NodeTarget, Plan, Progress,
};

/// One node's restart in a rolling upgrade.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Restart {
    pub(super) node: String,
    pub(super) region: String,
    /// When the restart command started (ms since the drill's start).
    pub(super) at_ms: u64,
    pub(super) pid_before: Option<u32>,
    pub(super) pid_after: Option<u32>,
    pub(super) release_before: Option<String>,
    pub(super) release_after: Option<String>,
    pub(super) protocol_after: Option<u32>,
    /// Whether it led, so leadership was moved off it first.
    pub(super) moved_leadership: bool,
    /// Restart command started → the node answers as a new process.
    pub(super) back_ms: u64,
    /// → every node has applied the same index and every VEN is current.
    pub(super) settled_ms: u64,
}

/// The nodes of a rolling upgrade in the order the runbook gives: region by
/// region with the leader's region last, and in each region the members
/// before the leader, so each node restarts while a leader of the old release
/// still leads (an older node can follow it), and leadership moves once.
pub(super) fn upgrade_order(nodes: &[NodeView], args: &DrillArgs) -> Result<Vec<NodeTarget>> {
    if args.restart_cmd.is_none() {
        bail!(
            "rolling-upgrade needs --restart-cmd: how to stop a node and start it with the new \
             binary, e.g. 'ssh {{node}} sudo systemctl restart pce' ({{node}}, {{region}}, {{pid}} \
             and {{config}} are replaced)"
        );
    }
    let leader = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")
        .ok_or_else(|| anyhow!("no leader"))?;
    let mut order: Vec<&NodeView> = nodes.iter().collect();
    order.sort_by_key(|n| {
        (
            region_of(n) == Some(leader.region.as_str()),
            region_of(n).map(str::to_string),
            n.id == leader.id,
            n.id,
        )
    });
    order
        .into_iter()
        .map(|n| {
            let name = name_of(n).to_string();
            Ok(NodeTarget {
                id: n.id,
                api: api_of(n).ok_or_else(|| anyhow!("{name} runs no admin API"))?,
                pid: n.status.as_ref().and_then(|s| s.services.pid),
                config: config_of(args, &name),
                region: region_of(n).unwrap_or_default().to_string(),
                name,
            })
        })
        .collect()
}

/// Restarts each node of the upgrade order in turn (leadership moved off a
/// leader first), waiting each time for it to answer as a new process, for
/// every node to apply the same index and for every VEN to be current.
pub(super) async fn restart_each(
    c: &Cluster,
    args: &DrillArgs,
    plan: &Plan,
    load: &Load,
    p: &mut Progress,
) -> Result<Vec<Restart>> {
    let cmd = args
        .restart_cmd
        .as_deref()
        .ok_or_else(|| anyhow!("--restart-cmd"))?;
    let mut done: Vec<Restart> = Vec::new();
    for t in &plan.upgrade_order {
        let nodes = c.status(&plan.all_apis).await?;
        let status = |nodes: &[NodeView]| {
            nodes
                .iter()
                .find(|n| n.id == t.id)
                .and_then(|n| n.status.clone())
        };
        let before = status(&nodes).ok_or_else(|| anyhow!("{} does not answer", t.name))?;
        let moved_leadership = before.role == "leader";
        if moved_leadership {
            move_leadership_off(c, plan, t, &done, p).await?;
        }
        load.avoid(&plan.apis, |a| a.1 == t.api).await;
        let node = NodeTarget {
            pid: before.services.pid,
            ..t.clone()
        };
        let at_ms = p.t0.elapsed().as_millis() as u64;
        let t0 = Instant::now();
        let filled = fill(cmd, &node);
        p.phase(format!("restarting {} ({}): {filled}", t.name, t.region));
        shell("--restart-cmd", &filled).await?;
        // Back: it answers, as another process than before. A node of a
        // release that does not report its pid counts as restarted once it
        // was seen down, or answers with another release (the new binary).
        let deadline = t0 + Duration::from_secs(90);
        // Down: its own API refused or timed out twice in a row (a fan-out
        // that missed it once is not enough).
        let (mut seen_down, mut misses) = (false, 0);
        let after = loop {
            let now = match c.status(&plan.all_apis).await {
                Ok(nodes) => status(&nodes),
                Err(_) => None,
            };
            match now {
                Some(s) => {
                    misses = 0;
                    // A node that has just started answers status before
                    // its services are in place (no pid yet): only a pid
                    // that differs says it is a new process.
                    let restarted = match before.services.pid {
                        Some(pid) => s.services.pid.is_some_and(|now| now != pid),
                        None => seen_down || s.services.release != before.services.release,
                    };
                    if restarted {
                        break s;
                    }
                }
                None => {
                    misses += 1;
                    let mut own = c.client(t.api)?;
                    let own = tokio::time::timeout(
                        Duration::from_secs(1),
                        own.get("/api/v2/supercluster/status"),
                    )
                    .await;
                    seen_down |= misses >= 2 && !matches!(own, Ok(Ok(_)));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not come back as a new process within 90 s of {filled:?}",
                    t.name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let back_ms = t0.elapsed().as_millis() as u64;
        let nodes = converge(c, &plan.all_apis, Duration::from_secs(60)).await?;
        let vens_now = wait_for_vens(c, plan, &plan.all_apis, &nodes).await?;
        if vens_now.0 < plan.vens_before || vens_now.1 < vens_now.0 {
            bail!(
                "after restarting {}, {} of {} VENs are connected and {} current after 30 s",
                t.name,
                vens_now.0,
                plan.vens_before,
                vens_now.1
            );
        }
        let settled_ms = t0.elapsed().as_millis() as u64;
        p.phase(format!(
            "{} is back (pid {} → {}, release {}) in {back_ms} ms; converged, VENs current, in {settled_ms} ms",
            t.name,
            before.services.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            after.services.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
            after.services.release.as_deref().unwrap_or("?"),
        ));
        done.push(Restart {
            node: t.name.clone(),
            region: t.region.clone(),
            at_ms,
            pid_before: before.services.pid,
            pid_after: after.services.pid,
            release_before: before.services.release.clone(),
            release_after: after.services.release.clone(),
            protocol_after: after.services.protocol,
            moved_leadership,
            back_ms,
            settled_ms,
        });
    }
    Ok(done)
}

/// Makes a voter other than `t` campaign (one already restarted when there
/// is one, so the new release leads) and waits until every node follows it.
pub(super) async fn move_leadership_off(
    c: &Cluster,
    plan: &Plan,
    t: &NodeTarget,
    done: &[Restart],
    p: &mut Progress,
) -> Result<()> {
    let nodes = c.status(&plan.all_apis).await?;
    let leader = nodes
        .iter()
        .filter_map(|n| n.status.as_ref())
        .find(|s| s.role == "leader")
        .ok_or_else(|| anyhow!("no leader"))?;
    let voter = |n: &&NodeView| {
        n.id != t.id && n.status.is_some() && leader.peers.iter().any(|p| p.id == n.id && p.voter)
    };
    let next = nodes
        .iter()
        .filter(voter)
        .min_by_key(|n| {
            (
                !done
                    .iter()
                    .any(|r| Some(r.node.as_str()) == n.name.as_deref()),
                n.id,
            )
        })
        .ok_or_else(|| anyhow!("no other voter to lead while {} restarts", t.name))?;
    let api = api_of(next).ok_or_else(|| anyhow!("{} runs no admin API", name_of(next)))?;
    ok(
        c.client(api)?
            .post("/api/v2/supercluster/campaign", &json!({}))
            .await?,
        &format!("moving leadership to {}", name_of(next)),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = c.status(&plan.all_apis).await?;
        if nodes
            .iter()
            .all(|n| n.status.as_ref().is_some_and(|s| s.leader == Some(next.id)))
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} campaigned, but not every node follows it after 10 s",
                name_of(next)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.phase(format!(
        "leadership moved from {} to {} before its restart",
        t.name,
        name_of(next)
    ));
    Ok(())
}

/// One restart of a rolling upgrade in words.
pub(super) fn restart_line(x: &Restart) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    let pid = |v: Option<u32>| v.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    format!(
        "{} ({}): pid {} → {}, release {} → {} (protocol {}){}; back in {} ms, settled in {} ms",
        x.node,
        x.region,
        pid(x.pid_before),
        pid(x.pid_after),
        opt(&x.release_before),
        opt(&x.release_after),
        x.protocol_after
            .map(|p| p.to_string())
            .unwrap_or_else(|| "?".into()),
        if x.moved_leadership {
            ", leadership moved off it first"
        } else {
            ""
        },
        x.back_ms,
        x.settled_ms
    )
}
