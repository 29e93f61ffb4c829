//! Commands that run a node or operate a running cluster.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sc_raft::{Client, ClientId, Command, MembershipOp, Mutation, Node, NodeStatus, Outcome};
use sc_region::Region;

use sc_region::config::NodeConfig;

/// `pce serve`: runs one node (and its admin API, if configured) until SIGINT or
/// SIGTERM. The first node to serve the API creates the owner API key and prints it.
pub async fn serve(cfg: NodeConfig, insecure_http: bool) -> Result<()> {
    let region = Region::start(cfg.region_options(insecure_http)?).await?;
    let node = region.node.clone();
    tracing::info!(id = node.id(), node = %node.info(), "serving; stop with Ctrl-C or SIGTERM");
    // Every server listens now (systemd's Type=notify waits for this); the
    // stop handlers are in place before it says so.
    let mut stop = Box::pin(stop_signal()?);
    crate::notify::notify(&format!("READY=1\nSTATUS=serving as {}", node.info()));
    let stopping = || crate::notify::notify("STOPPING=1");
    // The first node serving the API creates the owner key (compare-and-set in
    // the store, so exactly one node of the cluster does, once).
    if cfg.api.is_some() {
        let key_file = cfg.data_dir.join("owner-api-key.json");
        tokio::select! {
            r = bootstrap_owner(&node, &key_file) => r?,
            () = &mut stop => { stopping(); return Ok(region.stop().await?); }
        }
    }
    tokio::select! {
        () = &mut stop => {}
        reason = node.failed() => {
            tracing::error!(%reason, "the Raft core stopped; exiting so this node is restarted from its data");
            stopping();
            region.stop().await?;
            bail!("the Raft core stopped ({reason}); restart the node once the cause (see the log above) is fixed");
        }
    }
    stopping();
    Ok(region.stop().await?)
}

/// Creates the bootstrap owner key once the cluster has a leader; prints it and
/// keeps a copy (mode 0600) in `key_file` for local tooling.
pub async fn bootstrap_owner(node: &Node, key_file: &Path) -> Result<()> {
    while !node.has_leader() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match sc_leader::bootstrap(node).await? {
        Some(c) => {
            let body = serde_json::json!({"auth_username": c.auth_username, "secret": c.secret});
            write_private(key_file, &body.to_string())?;
            println!(
                "bootstrap owner API key (shown once; a copy is in {}):\n  auth_username: {}\n  secret:        {}",
                key_file.display(),
                c.auth_username,
                c.secret
            );
        }
        None => println!(
            "the owner API key exists already (created at cluster init{})",
            if key_file.exists() {
                format!("; see {}", key_file.display())
            } else {
                String::new()
            }
        ),
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_stop_signal() -> Result<()> {
    stop_signal()?.await;
    Ok(())
}

/// Installs the Ctrl-C and SIGTERM handlers now, and returns what waits for
/// either. A process that says it is ready (systemd's `READY=1`) must have
/// them first: a SIGTERM that came before would kill it with no clean stop
/// (a CI run of the systemd test caught exactly that).
pub fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// A client for the node a config file describes, using its certificates.
pub fn client_for(config: &Path) -> Result<Client> {
    Ok(NodeConfig::load(config)?.client()?)
}

/// `pce status`.
pub async fn status(config: &Path, json: bool) -> Result<()> {
    let client = client_for(config)?;
    let all = client
        .cluster_status()
        .await
        .with_context(|| format!("asking {}", client.target()))?;
    if json {
        let doc: Vec<serde_json::Value> = all
            .iter()
            .map(|(id, info, r)| match r {
                Ok(s) => serde_json::json!({ "id": id, "reachable": true, "status": s }),
                Err(e) => serde_json::json!({ "id": id, "name": info.name, "region": info.region, "addr": info.addr, "reachable": false, "error": e.to_string() }),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let statuses: Vec<&NodeStatus> = all.iter().filter_map(|(_, _, r)| r.as_ref().ok()).collect();
    print!(
        "{}",
        table(
            &all.iter()
                .map(|(id, info, r)| (
                    *id,
                    info.clone(),
                    r.as_ref().ok().cloned(),
                    r.as_ref().err().map(|e| e.to_string())
                ))
                .collect::<Vec<_>>(),
            &statuses
        )
    );
    Ok(())
}

/// Renders the status table: one row per node; lag is taken from the leader's view.
pub fn table(
    rows: &[(u64, sc_raft::NodeInfo, Option<NodeStatus>, Option<String>)],
    statuses: &[&NodeStatus],
) -> String {
    let leader = statuses.iter().find(|s| s.role == "leader");
    let mut out = format!(
        "{:<10} {:<12} {:>3} {:<21} {:<10} {:<7} {:>5} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>5}\n",
        "REGION",
        "NODE",
        "ID",
        "ADDR",
        "ROLE",
        "VOTER",
        "TERM",
        "LEADER",
        "LOG",
        "APPLIED",
        "COMMITTED",
        "SNAPSHOT",
        "REVISION",
        "LAG"
    );
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    for (id, info, status, err) in rows {
        let peer = leader.and_then(|l| l.peers.iter().find(|p| p.id == *id));
        let voter = peer
            .map(|p| if p.voter { "yes" } else { "learner" })
            .unwrap_or("?");
        match status {
            Some(s) => out += &format!(
                "{:<10} {:<12} {:>3} {:<21} {:<10} {:<7} {:>5} {:>6} {:>8} {:>8} {:>9} {:>8} {:>8} {:>5}\n",
                s.region, s.name, s.id, s.addr, s.role, voter, s.term, opt(s.leader), opt(s.last_log_index), opt(s.last_applied),
                opt(s.committed), opt(s.snapshot), s.revision, opt(peer.and_then(|p| p.lag))
            ),
            None => out += &format!(
                "{:<10} {:<12} {:>3} {:<21} UNREACHABLE: {}\n",
                info.region, info.name, id, info.addr, err.clone().unwrap_or_default()
            ),
        }
    }
    out
}

/// `pce cluster promote|demote|remove`.
pub async fn membership(config: &Path, op: MembershipOp, id: u64, json: bool) -> Result<()> {
    let client = client_for(config)?;
    let view = client.change_membership(op, id).await?;
    let v = serde_json::json!({"voters": view.voters, "learners": view.learners});
    crate::output::print(json, &v, || {
        format!("voters: {:?}  learners: {:?}", view.voters, view.learners)
    })
}

/// `pce kv put`.
pub async fn put(config: &Path, key: &str, value: &str, json: bool) -> Result<()> {
    let client = client_for(config)?;
    let cmd = Command {
        client: ClientId::random(),
        serial: 1,
        expect_revision: None,
        compare: vec![],
        ops: vec![Mutation::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }],
    };
    let r = client.write(&cmd).await?;
    match r.outcome {
        Outcome::Applied => crate::output::print(
            json,
            &serde_json::json!({"key": key, "revision": r.revision}),
            || format!("committed at revision {}", r.revision),
        ),
        other => bail!("refused: {other:?}"),
    }
}

/// `pce kv get`.
pub async fn get(config: &Path, key: &str, linearizable: bool, json: bool) -> Result<()> {
    let client = client_for(config)?;
    let (entry, revision) = client.read(key.as_bytes(), linearizable).await?;
    let v = serde_json::json!({
        "key": key,
        "found": entry.is_some(),
        "value": entry.as_ref().map(|e| String::from_utf8_lossy(&e.value).to_string()),
        "mod_revision": entry.as_ref().map(|e| e.mod_revision),
        "version": entry.as_ref().map(|e| e.version),
        "read_revision": revision,
        "linearizable": linearizable,
    });
    crate::output::print(json, &v, || match &entry {
        Some(e) => format!(
            "{}\t(mod_revision {}, version {}; read at revision {revision})",
            String::from_utf8_lossy(&e.value),
            e.mod_revision,
            e.version
        ),
        None => format!("(not found; read at revision {revision})"),
    })
}

/// `pce config check`: everything `pce serve` would check before starting,
/// and a summary of what the node would serve.
pub fn check_config(path: &Path, json: bool) -> Result<()> {
    let cfg = NodeConfig::load(path)?;
    let opts = cfg.region_options(false)?;
    // `pce serve` loads the VEN CA when its VEN service starts: load it now.
    if let Some(v) = &opts.ven {
        sc_raft::pki::VenSigner::load(&v.ven_ca.0, &v.ven_ca.1)
            .with_context(|| format!("ven.ca / ven.ca_key: {}", v.ven_ca.0.display()))?;
    }
    let summary = serde_json::json!({
        "config": path.display().to_string(),
        "id": opts.node.id,
        "name": opts.node.info.name,
        "region": opts.node.info.region,
        "raft_listen": opts.node.listen.to_string(),
        "advertise": opts.node.info.addr,
        "data_dir": opts.node.data_dir.display().to_string(),
        "bootstrap": opts.node.bootstrap,
        "voter": opts.node.voter,
        "api_listen": opts.api.as_ref().map(|a| a.listen.to_string()),
        "ven_listen": opts.ven.as_ref().map(|v| v.listen.to_string()),
        "metrics_listen": opts.metrics.map(|m| m.to_string()),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let or_not = |v: &serde_json::Value| v.as_str().unwrap_or("not served").to_string();
    println!("{} is valid", path.display());
    println!(
        "  node {} (id {}) in region {}, {}",
        opts.node.info.name,
        opts.node.id,
        opts.node.info.region,
        if opts.node.voter { "voter" } else { "learner" }
    );
    println!(
        "  raft:    {} (advertised as {})",
        opts.node.listen, opts.node.info.addr
    );
    println!("  api:     {}", or_not(&summary["api_listen"]));
    println!("  vens:    {}", or_not(&summary["ven_listen"]));
    println!("  metrics: {}", or_not(&summary["metrics_listen"]));
    println!("  data:    {}", opts.node.data_dir.display());
    Ok(())
}
