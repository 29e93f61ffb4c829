//! `pce ven pair|run` (the VEN agent on a host) and `pce ven-sim` (many VENs in
//! one process, for scale tests and benchmarks).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sc_ven::flows::synthetic::Synthetic;
use sc_ven::identity::{pair, HostFacts};
use sc_ven::sim::SimVen;
use sc_ven::{Agent, Enforcer, FleetEvent, Identity};
use tokio::sync::{mpsc, watch};

use crate::ops::wait_for_stop_signal;

/// `pce ven ...`
#[derive(clap::Subcommand)]
pub enum VenCommand {
    /// Pair this host with a pairing key; keeps the identity in --dir.
    Pair {
        /// A member's VEN service, `host:port`.
        #[arg(long)]
        server: String,
        /// The cluster CA certificate (verifies the member).
        #[arg(long)]
        ca: PathBuf,
        /// The pairing key (activation code) from a pairing profile.
        #[arg(long)]
        activation_code: String,
        /// Where the VEN keeps its identity and last policy.
        #[arg(long)]
        dir: PathBuf,
        /// Host name to report (default: the system's).
        #[arg(long)]
        hostname: Option<String>,
        /// Interface addresses to report (repeat).
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Enforce this host's policy: re-apply the cached one, then follow the PCE.
    Run {
        /// The VEN's directory (from `pce ven pair`).
        #[arg(long)]
        dir: PathBuf,
        /// Print each ruleset instead of applying it (no root needed).
        #[arg(long)]
        dry_run: bool,
        /// Seconds between flow reports to the member.
        #[arg(long, default_value_t = 10)]
        flow_report_interval: u64,
        /// Collect and report no flows.
        #[arg(long)]
        no_flows: bool,
        /// The host's addresses now (repeat), reported on every connection:
        /// a host that moved (a DR site, a new subnet) keeps its identity and
        /// its peers' rules follow. Default: the addresses given at pairing.
        #[arg(long = "address")]
        addresses: Vec<String>,
    },
}

fn system_hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs a `pce ven` command.
pub async fn run(cmd: VenCommand) -> Result<()> {
    match cmd {
        VenCommand::Pair {
            server,
            ca,
            activation_code,
            dir,
            hostname,
            addresses,
            json,
        } => {
            if Identity::load(&dir)?.is_some() {
                bail!(
                    "{} already holds a paired identity; use another --dir or unpair first",
                    dir.display()
                );
            }
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading --ca {}", ca.display()))?;
            for a in &addresses {
                a.parse::<std::net::IpAddr>()
                    .with_context(|| format!("--address {a:?} is not an IP address"))?;
            }
            let facts = HostFacts {
                hostname: hostname.unwrap_or_else(system_hostname),
                addresses,
                os: std::env::consts::OS.into(),
            };
            let identity = pair(&server, &ca_pem, &activation_code, &facts).await?;
            identity.save(&dir)?;
            let v = serde_json::json!({
                "workload_id": identity.workload_id,
                "members": identity.members.iter().map(|m| serde_json::json!({
                    "name": m.name, "region": m.region, "addr": m.addr,
                })).collect::<Vec<_>>(),
                "dir": dir.display().to_string(),
            });
            crate::output::print(json, &v, || {
                format!(
                    "paired: workload {} ({} members known)",
                    identity.workload_id,
                    identity.members.len()
                )
            })
        }
        VenCommand::Run {
            dir,
            dry_run,
            flow_report_interval,
            no_flows,
            addresses,
        } => {
            if flow_report_interval == 0 {
                bail!("--flow-report-interval must be at least 1 second");
            }
            for a in &addresses {
                a.parse::<std::net::IpAddr>()
                    .with_context(|| format!("--address {a:?} is not an IP address"))?;
            }
            let identity = Identity::load(&dir)?.with_context(|| {
                format!(
                    "{} holds no identity: run `pce ven pair` first",
                    dir.display()
                )
            })?;
            let enforcer = if dry_run {
                Enforcer::DryRun
            } else {
                Enforcer::Nft
            };
            let mut agent = Agent::new(identity, Some(dir.clone()), enforcer)?;
            agent.flow_report_interval = std::time::Duration::from_secs(flow_report_interval);
            agent.addresses = addresses;
            // Flows come from the rules this VEN loads, so a dry run has none.
            if !dry_run && !no_flows {
                match sc_ven::flows::Collector::start(agent.flow_report_interval) {
                    Ok(c) => agent = agent.with_flows(c),
                    Err(e) => tracing::error!(error = %e, "flow collection is off"),
                }
            }
            match agent.reapply_cached() {
                Ok(true) => tracing::info!("re-applied the cached policy"),
                Ok(false) => tracing::info!("no cached policy yet"),
                Err(e) => tracing::error!(error = %e, "could not re-apply the cached policy"),
            }
            let (tx, mut rx) = mpsc::unbounded_channel();
            let agent = agent.with_events(tx);
            tokio::spawn(async move {
                while let Some(e) = rx.recv().await {
                    tracing::info!(event = ?e, "ven");
                }
            });
            let (stop_tx, stop) = watch::channel(false);
            let task = tokio::spawn(agent.run(stop));
            // The cached policy is enforced again (systemd's Type=notify
            // waits for this); reaching a member happens in the background.
            // The stop handlers are in place before it says so.
            let stop_signal = crate::ops::stop_signal()?;
            crate::notify::notify("READY=1\nSTATUS=enforcing");
            stop_signal.await;
            crate::notify::notify("STOPPING=1");
            let _ = stop_tx.send(true);
            task.await??;
            Ok(())
        }
    }
}

/// `pce ven-sim`.
#[derive(clap::Args)]
pub struct SimArgs {
    /// A member's VEN service, `host:port`, to pair through.
    #[arg(long)]
    server: String,
    /// The cluster CA certificate.
    #[arg(long)]
    ca: PathBuf,
    /// A pairing key good for `--count` uses.
    #[arg(long)]
    activation_code: String,
    /// How many VENs.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Connect only to members of this region.
    #[arg(long)]
    region: Option<String>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
    /// Write each VEN's state here every second (JSON, replaced atomically), for
    /// harnesses that check what the VENs enforce.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Synthetic flow summaries per second, over the whole fleet (0: none):
    /// each VEN reports made-up connections from its fleet peers.
    #[arg(long, default_value_t = 0)]
    flows_per_second: u64,
    /// Seconds between each VEN's flow reports.
    #[arg(long, default_value_t = 10)]
    flow_report_interval: u64,
}

fn write_state(path: &std::path::Path, vens: &HashMap<String, SimVen>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(vens)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// Whether a pairing failed for a moment (the member could not reach the
/// leader or commit in time), not for a reason another try cannot change.
fn transient(e: &sc_ven::VenError) -> bool {
    let text = e.to_string();
    [
        "Unavailable",
        "DeadlineExceeded",
        "Cancelled",
        "unreachable",
        "timed out",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// The address simulated VEN `i` reports (10.128.0.0/10, unique per VEN).
fn sim_address(i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        128 + ((i >> 16) & 63),
        (i >> 8) & 255,
        i & 255
    )
}

/// Pairs and runs `count` in-memory VENs; prints progress as they apply policy.
pub async fn sim(args: SimArgs) -> Result<()> {
    let ca_pem = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("reading --ca {}", args.ca.display()))?;
    let t0 = Instant::now();
    let mut identities = Vec::new();
    let mut batch = Vec::new();
    for i in 0..args.count {
        let (server, ca, code) = (
            args.server.clone(),
            ca_pem.clone(),
            args.activation_code.clone(),
        );
        batch.push(tokio::spawn(async move {
            let facts = HostFacts {
                hostname: format!("sim-{i}"),
                addresses: vec![sim_address(i)],
                os: "sim".into(),
            };
            // A fleet pairs through one member under load: a pairing that
            // could not be committed in time (no leader for a moment, a slow
            // quorum) is tried again, rather than ending the whole fleet.
            let mut tries = 0;
            loop {
                match pair(&server, &ca, &code, &facts).await {
                    Err(e) if tries < 5 && transient(&e) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                    }
                    r => break r,
                }
            }
        }));
        if batch.len() == 32 || i + 1 == args.count {
            for b in batch.drain(..) {
                identities.push(b.await??);
            }
        }
    }
    println!(
        "paired {} VENs in {:.1} s",
        identities.len(),
        t0.elapsed().as_secs_f64()
    );
    if args.flow_report_interval == 0 {
        bail!("--flow-report-interval must be at least 1 second");
    }
    // Each VEN's share of the fleet's rate, per report (at least one).
    let per_report = ((args.flows_per_second * args.flow_report_interval) as usize)
        .div_ceil(args.count.max(1))
        .max(1);
    let vens: Arc<Mutex<HashMap<String, SimVen>>> = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop) = watch::channel(false);
    let t1 = Instant::now();
    // One task reads every VEN's events, in batches (a task per VEN would wake
    // once per VEN per push).
    let (events, mut fleet) = mpsc::unbounded_channel::<FleetEvent>();
    let mut names = Vec::with_capacity(identities.len());
    let mut agents = Vec::with_capacity(identities.len());
    for (i, mut id) in identities.into_iter().enumerate() {
        if let Some(r) = &args.region {
            id.members.retain(|m| &m.region == r);
            if id.members.is_empty() {
                bail!("no member in region {r}");
            }
        }
        names.push(id.workload_id.clone());
        let mut agent =
            Agent::new(id, None, Enforcer::Simulated)?.with_fleet_events(events.clone(), i);
        // Learning the member list from pings would bring the other regions
        // back into a VEN pinned to one.
        agent.learn_members = args.region.is_none();
        if args.flows_per_second > 0 {
            agent.flow_report_interval = Duration::from_secs(args.flow_report_interval);
            agent = agent.with_flows(Synthetic::new(
                sim_address(i),
                (0..args.count.min(64))
                    .filter(|p| *p != i)
                    .map(sim_address)
                    .collect(),
                per_report,
                i as u64,
            ));
        }
        agents.push(agent);
    }
    if let Ok(mut v) = vens.lock() {
        for name in &names {
            v.insert(name.clone(), SimVen::default());
        }
    }
    let states = vens.clone();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(1024);
        while fleet.recv_many(&mut batch, 1024).await > 0 {
            let Ok(mut v) = states.lock() else { return };
            for e in batch.drain(..) {
                if let Some(state) = names.get(e.agent).and_then(|n| v.get_mut(n)) {
                    state.track(e.event);
                }
            }
        }
    });
    for agent in agents {
        tokio::spawn(agent.run(stop.clone()));
    }
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut last = (0, 0);
    loop {
        let (with_policy, pushes, snapshot) = {
            let v = vens.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            (
                v.values().filter(|s| s.applied > 0).count(),
                v.values().map(|s| s.applied).sum::<usize>(),
                args.state_file.as_ref().map(|_| v.clone()),
            )
        };
        if let (Some(path), Some(snapshot)) = (&args.state_file, snapshot) {
            write_state(path, &snapshot)?;
        }
        if (with_policy, pushes) != last {
            println!(
                "{:>7.1} s: {with_policy}/{} VENs enforce a policy, {pushes} policies applied",
                t1.elapsed().as_secs_f64(),
                args.count
            );
            last = (with_policy, pushes);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            r = wait_for_stop_signal() => { r?; break; }
        }
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}
