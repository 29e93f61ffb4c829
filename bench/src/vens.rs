//! `pce bench vens`: simulated VENs across the 3 regions of a running `pce up`.
//!
//! For each VEN count: pair them (each region's member pairs and serves a third),
//! wait for every first policy (initial sync), then provision rule changes that
//! alter every simulated VEN's policy and measure, per VEN, the time from the
//! provision's answer (the commit) to the VEN's acknowledgement of the new
//! policy. Also the server process's memory per connected VEN.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use sc_leader::client::ApiClient;
use sc_region::Region;
use sc_ven::identity::{pair, HostFacts};
use sc_ven::{Agent, AgentEvent, Enforcer, FleetEvent};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::{cpu_ms, free_port, pct};
use crate::report::Report;
use sc_leader::client::cluster::{href, post};
use sc_region::local::{start_region, REGIONS};

/// Options of `pce bench vens`.
#[derive(clap::Args)]
pub struct VensArgs {
    /// The directory `pce up` runs in.
    #[arg(long, default_value = "pce-data")]
    dir: PathBuf,
    /// Admin API port of every region.
    #[arg(long, default_value_t = 8443)]
    api_port: u16,
    /// VEN service port of every region.
    #[arg(long, default_value_t = 7450)]
    ven_port: u16,
    /// VEN counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    counts: Vec<usize>,
    /// Provisions measured per count.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The `pce up` process, for its memory (default: found by its --dir).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Put every VEN on this region's member (default: a third on each), to
    /// measure what one member holds.
    #[arg(long)]
    region: Option<String>,
    /// Percentage of the VENs whose policy each provision changes (the others
    /// carry a label no measured rule names).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
    affected: u8,
    /// After the rounds, restart the member process given by --server-pid (a
    /// `pce serve` of --region: stopped with SIGINT, started again with the same
    /// command in the same directory) and measure how long its VENs take to
    /// stream from it again.
    #[arg(long, requires_all = ["region", "server_pid"])]
    restart_member: bool,
    /// Print the figures as one JSON document (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

const ORG: &str = "/api/v2/orgs/1";

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `pce up` process whose `--dir` is `dir` (paths compared canonically,
/// relative ones against that process's working directory).
fn find_server(dir: &std::path::Path) -> Option<u32> {
    let want = dir.canonicalize().ok()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("pce")) || !args.iter().any(|a| a == "up") {
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let their = args
            .windows(2)
            .find(|w| w[0] == "--dir")
            .map(|w| cwd.join(&w[1]))
            .unwrap_or_else(|| cwd.join("pce-data"));
        if their.canonicalize().ok().as_ref() == Some(&want) {
            return Some(pid);
        }
    }
    None
}

/// Host facts of simulated VEN `i` (a unique address in 10.64.0.0/10).
fn sim_facts(i: usize) -> HostFacts {
    HostFacts {
        hostname: format!("sim-{i}"),
        addresses: vec![format!(
            "10.{}.{}.{}",
            64 + ((i >> 16) & 63),
            (i >> 8) & 255,
            i & 255
        )],
        os: "sim".into(),
    }
}

/// The address simulated VEN `i` connects from when its member is on
/// loopback (`None` otherwise: the system picks). Each VEN gets one of its
/// own in 127.64.0.0/10, clear of the nodes' 127.0.0.x, as real VENs have
/// their hosts': from one address, the member's cap on connections per
/// address (512) refused all but the first 512 VENs of a large fleet.
fn sim_source(i: usize, member: &str) -> Option<std::net::IpAddr> {
    let ip = member.parse::<std::net::SocketAddr>().ok()?.ip();
    ip.is_loopback().then(|| {
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            64 + ((i >> 16) & 63) as u8,
            ((i >> 8) & 255) as u8,
            (i & 255) as u8,
        ))
    })
}

/// Pairs `n` simulated VENs, 64 at a time; `pair_one(i)` pairs VEN `i`.
async fn pair_all<T, F, Fut>(n: usize, pair_one: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, sc_ven::VenError>> + Send + 'static,
{
    let mut out = Vec::with_capacity(n);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(tokio::spawn(pair_one(i)));
        if batch.len() == 64 || i + 1 == n {
            for b in batch.drain(..) {
                out.push(b.await??);
            }
        }
    }
    Ok(out)
}

/// What the fleet's events say of each VEN (indexed by agent number), kept by
/// the one task that reads them.
struct Record {
    /// When each VEN applied each of its policies.
    applied: Vec<Vec<Instant>>,
    /// Each VEN's latest event, to say where the stragglers are if a phase does
    /// not finish (formatting is left to that failure path).
    last: Vec<Option<AgentEvent>>,
    /// When each VEN's stream was last accepted by a member.
    connected: Vec<Option<Instant>>,
}

/// The latest event of up to ten VENs of `agents` with fewer than `k` policies
/// applied, and how many such VENs there are.
fn stragglers(
    agents: impl Iterator<Item = usize>,
    names: &[String],
    rec: &Mutex<Record>,
    k: usize,
) -> String {
    let Ok(rec) = rec.lock() else {
        return "unknown (a lock was poisoned)".into();
    };
    let late: Vec<usize> = agents
        .filter(|&i| rec.applied.get(i).map_or(0, Vec::len) < k)
        .collect();
    let shown: Vec<String> = late
        .iter()
        .take(10)
        .map(|&i| {
            let name = names.get(i).map_or("?", String::as_str);
            match rec.last.get(i).and_then(Option::as_ref) {
                Some(e) => format!("{name}: {e:?}"),
                None => format!("{name}: no event at all"),
            }
        })
        .collect();
    format!("{} late; {}", late.len(), shown.join("; "))
}

/// Stops the member process `pid` (SIGINT, then SIGKILL after a minute),
/// starts it again with the same executable, arguments and directory, and
/// reports how long until all `n` VENs stream from it again and how many
/// policies were pushed meanwhile (none: their hashes were current).
async fn restart_member(
    pid: u32,
    n: usize,
    rec: &Mutex<Record>,
    report: &mut Report,
) -> Result<()> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).context("the member's executable")?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).context("the member's directory")?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).context("the member's command")?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .skip(1)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).to_string())
        .collect();
    let pushes = |rec: &Mutex<Record>| {
        rec.lock()
            .map(|r| r.applied.iter().map(Vec::len).sum::<usize>())
            .unwrap_or(0)
    };
    let before = pushes(rec);
    let t0 = Instant::now();
    // SAFETY: kill only sends a signal to the process the caller named.
    if unsafe { libc::kill(pid as i32, libc::SIGINT) } != 0 {
        bail!(
            "stopping the member {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let alive = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    while alive() {
        if t0.elapsed() > Duration::from_secs(60) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_s = t0.elapsed().as_secs_f64();
    let log = std::fs::File::create(cwd.join("restart.log")).context("restart.log")?;
    let started = Instant::now();
    std::process::Command::new(&exe)
        .args(&args)
        .current_dir(&cwd)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} again", exe.display()))?;
    let back = |rec: &Mutex<Record>| {
        rec.lock().map_or(Vec::new(), |r| {
            r.connected
                .iter()
                .filter_map(|c| c.filter(|at| *at > started))
                .collect::<Vec<_>>()
        })
    };
    loop {
        let times = back(rec);
        if times.len() >= n {
            let mut h = Histogram::<u64>::new(3)?;
            for t in &times {
                let _ = h.record(t.duration_since(started).as_micros() as u64);
            }
            let (all_s, p50_s) = (h.max() as f64 / 1e6, h.value_at_quantile(0.5) as f64 / 1e6);
            let pushed = pushes(rec) - before;
            report.line(format!(
                "member restarted: stopped in {stopped_s:.2} s; all {n} VENs streaming from it again {all_s:.2} s after the restart (p50 {p50_s:.2} s); policies pushed meanwhile: {pushed}"
            ));
            report.row(
                "member_restarts",
                json!({"vens": n, "stopped_s": stopped_s, "all_back_s": all_s, "p50_back_s": p50_s, "policies_pushed": pushed}),
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            let late: Vec<String> = rec.lock().map_or(Vec::new(), |r| {
                (0..n)
                    .filter(|&i| r.connected[i].is_none_or(|at| at <= started))
                    .take(10)
                    .map(|i| format!("VEN {i}: {:?}", r.last[i]))
                    .collect()
            });
            bail!(
                "{} of {n} VENs came back in 5 minutes after the member restarted; of the others: {}",
                times.len(),
                late.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pce bench vens`.
pub async fn vens(args: VensArgs) -> Result<()> {
    let (ca, mut api) = owner_client(&args)?;
    let server = args.server_pid.or_else(|| find_server(&args.dir));
    let ven_addrs: Vec<(String, String)> = REGIONS
        .iter()
        .filter(|r| args.region.as_deref().is_none_or(|want| want == r.0))
        .map(|r| (r.0.to_string(), format!("{}:{}", r.3, args.ven_port)))
        .collect();
    if ven_addrs.is_empty() {
        bail!(
            "--region {}: not a region of `pce up` (one of: {})",
            args.region.clone().unwrap_or_default(),
            REGIONS.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
        );
    }
    let mut report = Report::new("vens", args.json);
    report.set(
        "options",
        json!({"counts": args.counts, "rounds": args.rounds, "region": args.region, "affected_percent": args.affected}),
    );
    report.line(format!(
        "{:>7} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "VENs",
        "affected",
        "pair s",
        "sync s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "KiB/VEN",
        "bystander pushes",
        "PCE CPU ms/round",
        "sim CPU ms/round"
    ));
    for &n in &args.counts {
        one_count(&args, n, &ca, &mut api, (server, &ven_addrs), &mut report).await?;
    }
    report.finish()
}

/// The cluster CA and an owner client of the first region's API, from the
/// files `pce up` writes in its directory.
fn owner_client(args: &VensArgs) -> Result<(String, ApiClient)> {
    let ca = std::fs::read_to_string(args.dir.join("certs/ca.pem"))
        .context("reading the CA (is `pce up` running in --dir?)")?;
    let key: Value = serde_json::from_str(
        &std::fs::read_to_string(args.dir.join("owner-api-key.json")).context("owner key")?,
    )?;
    let leader = SocketAddr::new(IpAddr::V4(REGIONS[0].3), args.api_port);
    let api = ApiClient::new(leader, Some(&ca))?.with_key(
        key["auth_username"].as_str().unwrap_or_default(),
        key["secret"].as_str().unwrap_or_default(),
    );
    Ok((ca, api))
}

/// The policy objects one VEN count is measured with: the measured VENs'
/// label, the IP list their rules name, and the pairing codes of the measured
/// VENs and of the bystanders (whose policy no round changes).
struct Objects {
    label: String,
    ip_list: String,
    codes: [String; 2],
}

async fn objects(api: &mut ApiClient, tag: u64) -> Result<Objects> {
    let label = href(
        &post(
            api,
            &format!("{ORG}/labels"),
            json!({"key": "role", "value": format!("sim-{tag}")}),
        )
        .await?,
    );
    let ip_list = href(
        &post(
            api,
            &format!("{ORG}/sec_policy/draft/ip_lists"),
            json!({"name": format!("sim-{tag}"), "ip_ranges": [{"from_ip": "198.51.100.0/24"}]}),
        )
        .await?,
    );
    let other = href(
        &post(
            api,
            &format!("{ORG}/labels"),
            json!({"key": "role", "value": format!("sim-{tag}-bystander")}),
        )
        .await?,
    );
    // One pairing key for the measured VENs, one for the bystanders.
    let mut codes = Vec::new();
    for (name, l) in [("measured", &label), ("bystander", &other)] {
        let prof = href(&post(api, &format!("{ORG}/pairing_profiles"), json!({"name": format!("sim-{tag}-{name}"), "labels": [{"href": l}], "enforcement_mode": "full"})).await?);
        codes.push(
            post(api, &format!("/api/v2{prof}/pairing_key"), json!({})).await?["activation_code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let [measured, bystander]: [String; 2] = codes
        .try_into()
        .map_err(|_| anyhow::anyhow!("two pairing codes"))?;
    Ok(Objects {
        label,
        ip_list,
        codes: [measured, bystander],
    })
}

/// What the fleet's events say, kept current by one task that reads them all.
struct Fleet {
    rec: Arc<Mutex<Record>>,
    /// VENs with at least k policies applied, [all, measured] per k: counted
    /// as events arrive, so waiting for a round does not scan 10k entries
    /// every 10 ms.
    reached: Arc<Vec<[AtomicUsize; 2]>>,
    is_measured: Arc<Vec<bool>>,
    names: Vec<String>,
}

impl Fleet {
    /// Starts the agents of `ids` (pinned to their region's member) and the
    /// task that reads their events. One task reads the whole fleet's events,
    /// in batches: a task per VEN would add 10,000 wake-ups per round to the
    /// cores the VENs and the PCE share.
    fn start(
        ids: Vec<(String, sc_ven::Identity, bool)>,
        rounds: usize,
        stop: &watch::Receiver<bool>,
    ) -> Result<Fleet> {
        let n = ids.len();
        let rec: Arc<Mutex<Record>> = Arc::new(Mutex::new(Record {
            applied: vec![Vec::new(); n],
            last: vec![None; n],
            connected: vec![None; n],
        }));
        let reached: Arc<Vec<[AtomicUsize; 2]>> = Arc::new(
            (0..rounds + 3)
                .map(|_| [AtomicUsize::new(0), AtomicUsize::new(0)])
                .collect(),
        );
        let is_measured: Arc<Vec<bool>> = Arc::new(ids.iter().map(|(_, _, m)| *m).collect());
        let names: Vec<String> = ids
            .iter()
            .map(|(_, id, _)| id.workload_id.clone())
            .collect();
        let (events, fleet) = mpsc::unbounded_channel::<FleetEvent>();
        tokio::spawn(record_events(
            fleet,
            rec.clone(),
            reached.clone(),
            is_measured.clone(),
        ));
        for (i, (region, mut id, _)) in ids.into_iter().enumerate() {
            id.members.retain(|m| m.region == region);
            let source = id.members.first().and_then(|m| sim_source(i, &m.addr));
            let mut agent =
                Agent::new(id, None, Enforcer::Simulated)?.with_fleet_events(events.clone(), i);
            agent.local_address = source;
            agent.heartbeat = Duration::from_secs(30);
            // Pinned to its region's member: a VEN that learned the others would
            // fail over to them when that member restarts, and stay there.
            agent.learn_members = false;
            tokio::spawn(agent.run(stop.clone()));
        }
        Ok(Fleet {
            rec,
            reached,
            is_measured,
            names,
        })
    }

    /// VENs with at least `k` policies applied: all of them, or the measured.
    fn count_of(&self, k: usize, only_measured: bool) -> usize {
        self.reached
            .get(k)
            .map_or(0, |c| c[usize::from(only_measured)].load(Ordering::Relaxed))
    }

    fn measured(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.is_measured.len()).filter(|&i| self.is_measured[i])
    }
}

/// The fleet's event reader (see [`Fleet::start`]).
async fn record_events(
    mut fleet: mpsc::UnboundedReceiver<FleetEvent>,
    rec: Arc<Mutex<Record>>,
    reached: Arc<Vec<[AtomicUsize; 2]>>,
    is_measured: Arc<Vec<bool>>,
) {
    let mut batch = Vec::with_capacity(1024);
    while fleet.recv_many(&mut batch, 1024).await > 0 {
        let Ok(mut r) = rec.lock() else { return };
        for e in batch.drain(..) {
            if matches!(e.event, AgentEvent::Applied { .. }) {
                if let Some(times) = r.applied.get_mut(e.agent) {
                    times.push(e.at);
                    if let Some(c) = reached.get(times.len()) {
                        c[0].fetch_add(1, Ordering::Relaxed);
                        if is_measured.get(e.agent) == Some(&true) {
                            c[1].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            if matches!(e.event, AgentEvent::Connected(_)) {
                if let Some(c) = r.connected.get_mut(e.agent) {
                    *c = Some(e.at);
                }
            }
            if let Some(l) = r.last.get_mut(e.agent) {
                *l = Some(e.event);
            }
        }
    }
}

/// One VEN count: pair, first sync, the measured rounds, one line of figures.
async fn one_count(
    args: &VensArgs,
    n: usize,
    ca: &str,
    api: &mut ApiClient,
    (server, ven_addrs): (Option<u32>, &[(String, String)]),
    report: &mut Report,
) -> Result<()> {
    let tag = sc_store::time::now_ms();
    let o = objects(api, tag).await?;
    let share = usize::from(args.affected);
    // Spread evenly, so small counts get the share too (exact per 100).
    let measured = move |i: usize| (i * share) % 100 < share;
    let affected = (0..n).filter(|&i| measured(i)).count();
    let rss_before = server.and_then(rss_kib);

    // Pair, 64 at a time, a third through each region.
    let t0 = Instant::now();
    let ids = pair_all(n, |i| {
        let (region, addr) = ven_addrs[i % ven_addrs.len()].clone();
        let code = o.codes[usize::from(!measured(i))].clone();
        let ca = ca.to_string();
        async move {
            pair(&addr, &ca, &code, &sim_facts(i))
                .await
                .map(|id| (region, id, measured(i)))
        }
    })
    .await?;
    let pair_s = t0.elapsed().as_secs_f64();

    let (stop_tx, stop) = watch::channel(false);
    let t1 = Instant::now();
    let fleet = Fleet::start(ids, args.rounds, &stop)?;
    while fleet.count_of(1, false) < n {
        if t1.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {n} VENs got a first policy in 10 minutes; the others' last events: {}",
                fleet.count_of(1, false),
                stragglers(0..n, &fleet.names, &fleet.rec, 1)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sync_s = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.and_then(rss_kib);

    let (hist, pce_cpu, sim_cpu) = rounds(args, api, &o, tag, &fleet, affected, server).await?;
    let per_ven = match (rss_before, rss_after) {
        (Some(a), Some(b)) => format!("{:.1}", b.saturating_sub(a) as f64 / n as f64),
        _ => "n/a".into(),
    };
    // Pushes to VENs whose policy did not change (must be 0).
    let stray = fleet
        .rec
        .lock()
        .map(|r| {
            (0..n)
                .filter(|&i| !fleet.is_measured[i])
                .map(|i| r.applied[i].len().saturating_sub(1))
                .sum::<usize>()
        })
        .unwrap_or(0);
    report.line(format!(
        "{n:>7} {affected:>9} {pair_s:>8.1} {sync_s:>8.2} {:>9.1} {:>9.1} {:>9.1} {per_ven:>9} {stray:>10} {:>10.0} {:>10.0}",
        pct(&hist, 0.5),
        pct(&hist, 0.99),
        hist.max() as f64 / 1000.0,
        pce_cpu / args.rounds.max(1) as f64,
        sim_cpu / args.rounds.max(1) as f64,
    ));
    report.row(
        "rows",
        json!({
            "vens": n,
            "affected": affected,
            "pair_s": pair_s,
            "sync_s": sync_s,
            "p50_ms": pct(&hist, 0.5),
            "p99_ms": pct(&hist, 0.99),
            "max_ms": hist.max() as f64 / 1000.0,
            "kib_per_ven": per_ven.parse::<f64>().ok(),
            "bystander_pushes": stray,
            "pce_cpu_ms_per_round": pce_cpu / args.rounds.max(1) as f64,
            "sim_cpu_ms_per_round": sim_cpu / args.rounds.max(1) as f64,
        }),
    );
    if args.restart_member {
        if let Some(pid) = server {
            restart_member(pid, n, &fleet.rec, report).await?;
        }
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// The measured rounds: each a rule change that alters every measured VEN's
/// policy, provisioned; the time from the provision's answer to each measured
/// VEN's acknowledgement goes into the histogram (µs). Also the CPU the PCE
/// and this process used from each provision until its last acknowledgement.
async fn rounds(
    args: &VensArgs,
    api: &mut ApiClient,
    o: &Objects,
    tag: u64,
    fleet: &Fleet,
    affected: usize,
    server: Option<u32>,
) -> Result<(Histogram<u64>, f64, f64)> {
    let rs = href(
        &post(
            api,
            &format!("{ORG}/sec_policy/draft/rule_sets"),
            json!({"name": format!("sim-{tag}")}),
        )
        .await?,
    );
    let count = |k: usize| fleet.count_of(k, true);
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut pce_cpu, mut sim_cpu) = (0.0, 0.0);
    for round in 0..args.rounds {
        let cpu0 = (server.and_then(|p| cpu_ms(Some(p))), cpu_ms(None));
        let already = count(round + 2);
        post(api, &format!("/api/v2{rs}/sec_rules"), json!({"providers": [{"label": {"href": o.label}}], "consumers": [{"ip_list": {"href": o.ip_list}}], "ingress_services": [{"proto": 6, "port": 1000 + round}], "unscoped_consumers": true})).await?;
        post(
            api,
            &format!("{ORG}/sec_policy"),
            json!({"update_description": format!("sim round {round}")}),
        )
        .await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(120);
        while count(round + 2) < affected {
            if Instant::now() > deadline {
                bail!(
                    "round {round}: only {} of {affected} VENs acknowledged; the others' last events: {}",
                    count(round + 2) - already,
                    stragglers(fleet.measured(), &fleet.names, &fleet.rec, round + 2)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let (Some(a), Some(b)) = (cpu0.0, server.and_then(|p| cpu_ms(Some(p)))) {
            pce_cpu += b - a;
        }
        if let (Some(a), Some(b)) = (cpu0.1, cpu_ms(None)) {
            sim_cpu += b - a;
        }
        let r = fleet.rec.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        for i in fleet.measured() {
            if let Some(t) = r.applied[i].get(round + 1) {
                let _ = hist.record(t.saturating_duration_since(committed).as_micros() as u64);
            }
        }
    }
    Ok((hist, pce_cpu, sim_cpu))
}

/// Options of `pce bench resync`.
#[derive(clap::Args)]
pub struct ResyncArgs {
    /// VENs served by the member that restarts.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    counts: Vec<usize>,
    /// Print the figures as one JSON document (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

/// `pce bench resync`: a 3-region cluster in this process; N simulated VENs that
/// know only the eu-west member; that member restarts (node, API and VEN service
/// stop, then start from their data) and the time until every VEN is connected
/// again with its current policy confirmed is measured.
pub async fn resync(args: ResyncArgs) -> Result<()> {
    let mut report = Report::new("resync", args.json);
    report.line(format!(
        "{:>7} {:>12} {:>12} {:>14}",
        "VENs", "first sync s", "restart s", "resync s"
    ));
    for &n in &args.counts {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        sc_raft::pki::init_ca(&dir.join("certs"), "bench")?;
        let ports = sc_region::local::Ports {
            raft: free_port()?,
            api: free_port()?,
            ven: free_port()?,
            metrics: None,
        };
        let mut regions = Vec::new();
        for r in REGIONS {
            regions.push(start_region(&dir, r, ports, false).await?.1);
        }
        let t = Instant::now();
        let owner = loop {
            if let Some(r) = regions.iter().find(|r: &&Region| r.node.is_leader()) {
                if let Some(c) = sc_leader::bootstrap(&r.node).await? {
                    break c;
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("no leader in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let ca = std::fs::read_to_string(dir.join("certs/ca.pem"))?;
        let api_addr = regions[0].api().context("api")?.addr;
        let mut api =
            ApiClient::new(api_addr, Some(&ca))?.with_key(&owner.auth_username, &owner.secret);
        let label = href(
            &post(
                &mut api,
                &format!("{ORG}/labels"),
                json!({"key": "role", "value": "sim"}),
            )
            .await?,
        );
        let prof = href(
            &post(
                &mut api,
                &format!("{ORG}/pairing_profiles"),
                json!({"name": "sim", "labels": [{"href": label}], "enforcement_mode": "full"}),
            )
            .await?,
        );
        let code = post(&mut api, &format!("/api/v2{prof}/pairing_key"), json!({})).await?
            ["activation_code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let eu = regions[1].ven().context("ven")?.addr.to_string();
        let ids = pair_all(n, |i| {
            let (addr, ca, code) = (eu.clone(), ca.clone(), code.clone());
            async move { pair(&addr, &ca, &code, &sim_facts(i)).await }
        })
        .await?;
        let (stop_tx, stop) = watch::channel(false);
        let t1 = Instant::now();
        for (i, mut id) in ids.into_iter().enumerate() {
            id.members = vec![sc_ven::identity::MemberAddr {
                name: "eu-west-1".into(),
                region: "eu-west".into(),
                addr: eu.clone(),
            }];
            let mut agent = Agent::new(id, None, Enforcer::Simulated)?;
            agent.local_address = sim_source(i, &eu);
            agent.heartbeat = Duration::from_secs(30);
            agent.learn_members = false;
            tokio::spawn(agent.run(stop.clone()));
        }
        let synced = |r: &Region| -> usize {
            let Some(v) = r.ven() else { return 0 };
            v.sessions()
                .iter()
                .filter(|(id, st)| {
                    v.cache()
                        .policy_of(id)
                        .is_some_and(|p| p.hash == st.applied_hash)
                })
                .count()
        };
        while synced(&regions[1]) < n {
            if t1.elapsed() > Duration::from_secs(120) {
                let v = regions[1].ven().context("ven")?;
                bail!(
                    "first sync incomplete: {} of {n} synced, {} sessions",
                    synced(&regions[1]),
                    v.sessions().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let first = t1.elapsed().as_secs_f64();
        // Restart eu-west.
        let t2 = Instant::now();
        regions.remove(1).stop().await?;
        let (_, again) = start_region(&dir, REGIONS[1], ports, false).await?;
        let restart = t2.elapsed().as_secs_f64();
        regions.insert(1, again);
        let t3 = Instant::now();
        while synced(&regions[1]) < n {
            if t3.elapsed() > Duration::from_secs(600) {
                bail!("resync incomplete: {} of {n}", synced(&regions[1]));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let resync_s = t3.elapsed().as_secs_f64();
        report.line(format!(
            "{n:>7} {first:>12.2} {restart:>12.2} {resync_s:>14.2}"
        ));
        report.row(
            "rows",
            json!({"vens": n, "first_sync_s": first, "restart_s": restart, "resync_s": resync_s}),
        );
        let _ = stop_tx.send(true);
        tokio::time::sleep(Duration::from_millis(300)).await;
        for r in regions {
            r.stop().await?;
        }
    }
    report.finish()
}

#[cfg(test)]
mod tests {
    use super::sim_source;

    #[test]
    fn simulated_vens_leave_from_addresses_of_their_own_on_loopback_only() {
        let member = "127.0.0.12:7450";
        let a: Vec<_> = (0..70_000).filter_map(|i| sim_source(i, member)).collect();
        assert_eq!(a.len(), 70_000);
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(distinct.len(), a.len(), "one address per VEN");
        // Clear of the nodes' own 127.0.0.x.
        assert!(a
            .iter()
            .all(|ip| ip.is_loopback() && ip.to_string().starts_with("127.")));
        assert!(a.iter().all(|ip| !ip.to_string().starts_with("127.0.")));
        // A member elsewhere: the system picks the source.
        assert_eq!(sim_source(5, "10.1.2.3:7450"), None);
        assert_eq!(sim_source(5, "member.example:7450"), None);
    }
}
