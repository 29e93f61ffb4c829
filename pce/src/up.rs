//! `pce up`: the first thing a new user runs. Three regions on this machine, of
//! one node or more each, every node on its own loopback address, with real
//! certificates, real Raft and real disk.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sc_raft::{pki, Node};
use sc_region::local::{existing, layout, start_node, LocalNode, Ports};
use sc_region::Region;

use crate::ops::{table, wait_for_stop_signal};

/// How many nodes each region has, and whether the extra ones vote.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Nodes per region (1 to 9).
    pub nodes_per_region: usize,
    /// Whether nodes after each region's first are learners.
    pub learners: bool,
}

/// Runs the regions until Ctrl-C.
pub async fn run(dir: &Path, ports: Ports, insecure_http: bool, shape: Shape) -> Result<()> {
    let api_port = ports.api;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    let layout = layout(shape.nodes_per_region, !shape.learners)?;
    // A node an earlier run made is a member of the cluster: leaving it out
    // would leave its vote uncast, and with it maybe the quorum.
    if let Some(extra) = existing(&dir, true)
        .iter()
        .find(|n| !layout.iter().any(|l| l.name == n.name))
    {
        bail!(
            "{} holds node {} from an earlier `pce up` with more nodes per region:              pass --nodes-per-region {} (or more), or remove it from the cluster              (pce dr remove-region) and delete {}",
            dir.display(),
            extra.name,
            node_number(extra),
            dir.join(&extra.dir).display()
        );
    }
    let certs = dir.join("certs");
    if !certs.join(pki::CA_CERT).exists() {
        pki::init_ca(&certs, "pce-up")?;
    }
    // Directories from before the VEN service existed get their VEN CA now.
    pki::init_ven_ca(&certs, "pce-up")?;
    let mut regions = Vec::new();
    let mut configs = Vec::new();
    for node in &layout {
        let (path, r) = start_node(&dir, node, ports, insecure_http).await?;
        regions.push(r);
        configs.push(path);
    }
    let nodes: Vec<Node> = regions.iter().map(|r| r.node.clone()).collect();

    // Ready means: one leader that every node follows, every node a member
    // in the role it asked for, and every node has applied everything the
    // leader has.
    let voters = layout.iter().filter(|n| n.voter).count();
    let ready = async {
        loop {
            let s: Vec<_> = nodes.iter().map(|n| n.status()).collect();
            let leader = s[0].leader;
            let leader_log = s
                .iter()
                .find(|x| Some(x.id) == leader)
                .and_then(|x| x.last_log_index);
            let all_voters = s.iter().all(|x| {
                x.peers.iter().filter(|p| p.voter).count() >= voters
                    && x.peers.len() >= layout.len()
            });
            if leader.is_some()
                && all_voters
                && s.iter().all(|x| !x.membership_changing)
                && s.iter()
                    .all(|x| x.leader == leader && x.last_applied == leader_log)
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let statuses = tokio::select! {
        s = tokio::time::timeout(Duration::from_secs(60), ready) => s.context("the nodes did not form a cluster within 60 s; see the log above")?,
        r = wait_for_stop_signal() => { r?; return stop_all(regions).await; }
    };

    let per_region = match shape.nodes_per_region {
        1 => String::new(),
        n if shape.learners => format!(" of {n} nodes (one voter, {} learners)", n - 1),
        n => format!(" of {n} voting nodes"),
    };
    println!(
        "\nSupercluster is up: 3 regions{per_region}, data and certificates under {}\n",
        dir.display()
    );
    crate::ops::bootstrap_owner(&nodes[0], &dir.join("owner-api-key.json")).await?;
    let scheme = if insecure_http { "http" } else { "https" };
    for LocalNode { name, ip, .. } in &layout {
        println!(
            "admin API of {name}: {scheme}://{ip}:{api_port}/api/v2 (CA: {})",
            certs.join(pki::CA_CERT).display()
        );
    }
    // A data directory from before metrics existed keeps its configs.
    let mut metrics = regions
        .iter()
        .zip(&layout)
        .filter_map(|(r, n)| r.metrics_addr().map(|a| (&n.name, a)))
        .peekable();
    if metrics.peek().is_some() {
        println!();
    }
    for (name, addr) in metrics {
        println!("Prometheus metrics of {name}: http://{addr}/metrics");
    }
    println!();
    let rows: Vec<_> = statuses
        .iter()
        .map(|s| {
            (
                s.id,
                sc_raft::NodeInfo {
                    name: s.name.clone(),
                    region: s.region.clone(),
                    addr: s.addr.clone(),
                },
                Some(s.clone()),
                None,
            )
        })
        .collect();
    print!("{}", table(&rows, &statuses.iter().collect::<Vec<_>>()));
    let pce = this_command();
    let config_of = |name: &str| {
        layout
            .iter()
            .zip(&configs)
            .find(|(n, _)| n.name == name)
            .map(|(_, c)| c.display().to_string())
            .unwrap_or_default()
    };
    println!("\nTry, in another terminal:");
    println!("  {pce} status --config {}", config_of("eu-west-1"));
    println!(
        "  {pce} kv put --config {} hello world",
        config_of("eu-west-1")
    );
    println!(
        "  {pce} kv get --linearizable --config {} hello",
        config_of("ap-south-1")
    );
    println!("  {pce} dr status --dir {}", dir.display());
    println!("\nCtrl-C stops every node; running `pce up` again reuses the data.");

    wait_for_stop_signal().await?;
    println!("stopping...");
    stop_all(regions).await
}

/// Which node of its region `node` is (its name ends in `-k`).
fn node_number(node: &LocalNode) -> usize {
    node.name
        .rsplit('-')
        .next()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1)
}

/// How to run this binary again from a shell: `pce` when that name on the
/// PATH is this very file, else its full path (a build tree, an unpacked
/// release), so the commands `pce up` suggests work when pasted.
fn this_command() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return "pce".into();
    };
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pce"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
    });
    if on_path.as_ref() == Some(&me) {
        "pce".into()
    } else {
        me.display().to_string()
    }
}

/// Stops every region, each on its own shutdown token, all at once.
async fn stop_all(regions: Vec<Region>) -> Result<()> {
    let stops = regions.into_iter().map(|r| tokio::spawn(r.stop()));
    for s in stops.collect::<Vec<_>>() {
        s.await??;
    }
    Ok(())
}
