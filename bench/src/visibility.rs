//! `pce bench visibility`: global visibility as an operator sees it, on a
//! real three-region cluster (`pce serve` processes, mutual TLS) with real
//! VENs (`pce ven run`, nftables, NFLOG and conntrack) in network namespaces.
//!
//! 1. **Freshness**: a TCP connection from `web` to `app` (both VENs report to
//!    region 1, at the default report interval unless told otherwise); the
//!    time until an Explorer query sent to region 3 returns its flow.
//!    Connections are opened one a second, each to its own port, and every
//!    query asks for all of them, so each sample's latency is the time from
//!    its `connect` to the first answer that holds it.
//! 2. **Global queries**: 10,000 workloads in 200 app groups are paired
//!    through the three regions (`estate.rs`); each region's traffic store
//!    is filled with a synthetic day of their traffic, shaped as
//!    applications talk (`pce bench flows`' generator; written while the
//!    node is stopped: the same store code the VEN service writes through)
//!    and maintained once (older hours rolled up, as a member keeps a day);
//!    the nodes restart, and the selective and broad Explorer queries of
//!    `pce bench flows`, the app group map of that day, and the policy
//!    generator for one app group are sent to region 3's admin API (the
//!    generator also to region 1's), which asks all three regions over the
//!    federation service and merges. Each node's resident memory follows.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use sc_chaos::netns::Net;
use sc_leader::client::ApiClient;
use sc_member::traffic::{Limits, SledTraffic, TrafficStore};
use serde_json::{json, Value};

use super::{free_port, pct};
use crate::report::Report;

/// Options of `pce bench visibility`.
#[derive(clap::Args)]
pub struct VisibilityArgs {
    /// Connections timed for freshness.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// The VENs' flow report interval, seconds (the agent's default is 10).
    #[arg(long, default_value_t = 10)]
    flow_report_interval: u64,
    /// Flow summaries written into each region's store for the query part
    /// (0: skip it).
    #[arg(long, default_value_t = 1_000_000)]
    flows_per_region: usize,
    /// Times each global query runs.
    #[arg(long, default_value_t = 10)]
    queries: usize,
    /// Managed workloads paired for the query part, in 200 app groups.
    #[arg(long, default_value_t = 10_000)]
    workloads: usize,
    /// Print the figures as one JSON document (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

const ORG: &str = "/api/v2/orgs/1";
/// First port of the freshness connections.
const BASE_PORT: u16 = 31_000;

/// The processes and namespaces of a run; dropping it stops them all.
struct Lab {
    net: Net,
    dir: PathBuf,
    exe: PathBuf,
    nodes: HashMap<u64, Child>,
    vens: Vec<Child>,
}

impl Lab {
    /// Region `id`'s address (1-3, on the bridge, in our own namespace).
    fn ip(&self, id: u64) -> String {
        self.net.hub[(id - 1) as usize].to_string()
    }

    fn pce(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.exe).args(args).output()?;
        if !out.status.success() {
            bail!(
                "pce {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn start_node(&mut self, id: u64) -> Result<()> {
        let cfg = self.dir.join(format!("n{id}/node.toml"));
        let log = std::fs::File::create(self.dir.join(format!("n{id}.log")))?;
        let child = Command::new(&self.exe)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.nodes.insert(id, child);
        Ok(())
    }

    /// Stops node `id` as an operator would (SIGTERM) and waits for it.
    fn stop_node(&mut self, id: u64) -> Result<()> {
        if let Some(mut c) = self.nodes.remove(&id) {
            // SAFETY: kill(2) on a child we started and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while c.try_wait()?.is_none() {
                if t0.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn flow_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("n{id}/data/flows"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.vens.iter_mut().chain(self.nodes.values_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: a valid namespace descriptor; only the calling thread moves.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn href(v: &Value) -> Result<String> {
    v["href"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no href in {v}"))
}

async fn post(api: &mut ApiClient, path: &str, body: Value) -> Result<Value> {
    let a = api.post(path, &body).await?;
    if !a.status.is_success() {
        bail!("POST {path}: {} {}", a.status, a.json());
    }
    Ok(a.json())
}

/// Three regions on a bridge, their certificates and configurations.
fn build(exe: PathBuf) -> Result<Lab> {
    let n = std::process::id() % 200;
    let net = Net::create(
        &format!("vb{n}"),
        [10, 217, n as u8],
        &[1, 2, 3],
        &[("web", 21), ("app", 22)],
    )?;
    let dir = tempfile::Builder::new()
        .prefix("pce-bench-visibility-")
        .tempdir()?
        .keep();
    let lab = Lab {
        net,
        dir,
        exe,
        nodes: HashMap::new(),
        vens: Vec::new(),
    };
    let certs = lab.dir.join("certs");
    let c = certs.to_string_lossy().to_string();
    lab.pce(&["certs", "init", "--dir", &c])?;
    let (raft, api, ven) = (free_port()?, free_port()?, free_port()?);
    for id in 1..=3u64 {
        let ip = lab.ip(id);
        let (node, region) = (format!("n{id}"), format!("r{id}"));
        lab.pce(&[
            "certs", "issue", "--dir", &c, "--node", &node, "--region", &region, "--ip", &ip,
        ])?;
        let join = if id == 1 {
            String::new()
        } else {
            format!(
                "\n[[peers]]\nname = \"n1\"\naddr = \"{}:{raft}\"\n",
                lab.ip(1)
            )
        };
        let text = format!(
            "id = {id}\nname = \"{node}\"\nregion = \"{region}\"\nlisten = \"{ip}:{raft}\"\n\
             data_dir = \"data\"\nprofile = \"lan\"\nbootstrap = {}\n\n[tls]\nca = \"{c}/ca.pem\"\n\
             cert = \"{c}/{node}.pem\"\nkey = \"{c}/{node}.key\"\n\n[api]\nlisten = \"{ip}:{api}\"\n\n\
             [ven]\nlisten = \"{ip}:{ven}\"\nca = \"{c}/ven-ca.pem\"\nca_key = \"{c}/ven-ca.key\"\n{join}",
            id == 1
        );
        std::fs::create_dir_all(lab.dir.join(&node))?;
        std::fs::write(lab.dir.join(format!("{node}/node.toml")), text)?;
    }
    std::fs::write(lab.dir.join("ports"), format!("{api} {ven}"))?;
    Ok(lab)
}

/// The owner key's API client for region `id`.
fn client(lab: &Lab, id: u64) -> Result<ApiClient> {
    let (api, _) = ports(lab)?;
    let key_file = (1..=3)
        .map(|i| lab.dir.join(format!("n{i}/data/owner-api-key.json")))
        .find(|p| p.exists())
        .ok_or_else(|| anyhow!("no owner key yet"))?;
    let key: Value = serde_json::from_slice(&std::fs::read(key_file)?)?;
    let ca = std::fs::read_to_string(lab.dir.join("certs/ca.pem"))?;
    let addr: SocketAddr = format!("{}:{api}", lab.ip(id)).parse()?;
    Ok(ApiClient::new(addr, Some(&ca))?.with_key(
        key["auth_username"].as_str().unwrap_or_default(),
        key["secret"].as_str().unwrap_or_default(),
    ))
}

fn ports(lab: &Lab) -> Result<(u16, u16)> {
    let text = std::fs::read_to_string(lab.dir.join("ports"))?;
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(v))) => Ok((a, v)),
        _ => bail!("bad ports file"),
    }
}

/// Waits until every region's API answers and the owner key works at region 3.
async fn ready(lab: &Lab) -> Result<ApiClient> {
    let t0 = Instant::now();
    loop {
        if let Ok(mut api) = client(lab, 3) {
            let mut all = true;
            for id in 1..=3 {
                let ok = match client(lab, id) {
                    Ok(mut c) => {
                        matches!(c.get("/api/v2/health").await, Ok(a) if a.status.is_success())
                    }
                    Err(_) => false,
                };
                all &= ok;
            }
            if all
                && matches!(api.get(&format!("{ORG}/labels")).await, Ok(a) if a.status.is_success())
            {
                return Ok(api);
            }
        }
        if t0.elapsed() > Duration::from_secs(90) {
            bail!(
                "the cluster did not come up in 90 s (logs in {})",
                lab.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An Explorer query body over the last day (and the next hour: clocks).
fn window(mut q: Value) -> Value {
    let now = sc_store::time::now_ms();
    let iso = |ms: u64| format!("{}Z", &sc_store::time::iso8601(ms)[..19]);
    q["start_date"] = json!(iso(now - 86_400_000));
    q["end_date"] = json!(iso(now + 3_600_000));
    q
}

/// Pairs and starts a real VEN in `host` against region 1.
fn start_ven(lab: &mut Lab, host: &str, code: &str, interval: u64) -> Result<()> {
    let (_, ven) = ports(lab)?;
    let dir = lab.dir.join(format!("ven-{host}"));
    let exe = lab.exe.to_string_lossy().to_string();
    let ca = lab.dir.join("certs/ca.pem");
    let addr = lab.net.host(host)?.ip.to_string();
    let out = lab
        .net
        .exec(
            host,
            &[
                &exe,
                "ven",
                "pair",
                "--server",
                &format!("{}:{ven}", lab.ip(1)),
                "--ca",
                &ca.to_string_lossy(),
                "--activation-code",
                code,
                "--dir",
                &dir.to_string_lossy(),
                "--hostname",
                host,
                "--address",
                &addr,
            ],
        )?
        .output()?;
    if !out.status.success() {
        bail!("pair {host}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let log = std::fs::File::create(lab.dir.join(format!("ven-{host}.log")))?;
    let child = lab
        .net
        .exec(
            host,
            &[
                &exe,
                "ven",
                "run",
                "--dir",
                &dir.to_string_lossy(),
                "--flow-report-interval",
                &interval.to_string(),
            ],
        )?
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    lab.vens.push(child);
    Ok(())
}

/// Freshness: per connection, milliseconds until region 3 answers with it.
async fn freshness(lab: &mut Lab, api: &mut ApiClient, args: &VisibilityArgs) -> Result<Vec<u64>> {
    let mut codes = HashMap::new();
    for host in ["web", "app"] {
        let l = href(
            &post(
                api,
                &format!("{ORG}/labels"),
                json!({"key": "role", "value": host}),
            )
            .await?,
        )?;
        let p = href(&post(api, &format!("{ORG}/pairing_profiles"), json!({"name": host, "labels": [{"href": l}], "enforcement_mode": "visibility_only"})).await?)?;
        let k = post(api, &format!("/api/v2{p}/pairing_key"), json!({})).await?;
        codes.insert(
            host,
            k["activation_code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    for host in ["web", "app"] {
        start_ven(lab, host, &codes[host], args.flow_report_interval)?;
    }
    let ports: Vec<u16> = (0..args.samples as u16).map(|i| BASE_PORT + i).collect();
    // app listens on every sample's port.
    let stop = Arc::new(AtomicBool::new(false));
    let (app_ns, web_ns) = (
        lab.net.host("app")?.ns.clone(),
        lab.net.host("web")?.ns.clone(),
    );
    let app_ip = lab.net.host("app")?.ip;
    let (st, listen_ports) = (stop.clone(), ports.clone());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    let listener = std::thread::spawn(move || {
        let bound: Result<Vec<TcpListener>> = enter(&app_ns).and_then(|_| {
            listen_ports
                .iter()
                .map(|p| {
                    let l = TcpListener::bind(("0.0.0.0", *p))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .collect()
        });
        let list = match bound {
            Ok(l) => {
                let _ = ready_tx.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !st.load(Ordering::Relaxed) {
            for l in &list {
                let _ = l.accept();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10))??;
    // Both VENs must enforce (their rules log) before the first connection.
    eprintln!("waiting for both VENs to enforce their policy");
    let t0 = Instant::now();
    loop {
        let online = api
            .get(&format!("{ORG}/workloads"))
            .await?
            .json()
            .as_array()
            .map(|l| l.iter().filter(|w| w["online"] == json!(true)).count())
            .unwrap_or(0);
        if online >= 2 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "the VENs did not come online (logs in {})",
                lab.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // web opens one connection a second, each to its own port.
    let opened: Arc<std::sync::Mutex<HashMap<u16, Instant>>> = Arc::default();
    let (o, conn_ports) = (opened.clone(), ports.clone());
    let connector = std::thread::spawn(move || -> Result<()> {
        enter(&web_ns)?;
        for p in conn_ports {
            let at = Instant::now();
            TcpStream::connect_timeout(&SocketAddr::new(app_ip.into(), p), Duration::from_secs(2))
                .with_context(|| format!("web -> app:{p}"))?;
            if let Ok(mut m) = o.lock() {
                m.insert(p, at);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok(())
    });
    let q = window(json!({
        "services": {"include": [{"proto": 6, "port": BASE_PORT, "to_port": BASE_PORT + args.samples as u16}]},
        "max_results": 10000
    }));
    let mut seen: HashMap<u16, u64> = HashMap::new();
    let deadline = Duration::from_secs(args.samples as u64 + 6 * args.flow_report_interval + 30);
    let t0 = Instant::now();
    while seen.len() < ports.len() && t0.elapsed() < deadline {
        let a = api
            .post(&format!("{ORG}/traffic_flows/traffic_analysis_queries"), &q)
            .await?;
        let now = Instant::now();
        let opened = opened.lock().map(|m| m.clone()).unwrap_or_default();
        for f in a.json().as_array().cloned().unwrap_or_default() {
            let Some(p) = f["service"]["port"].as_u64().map(|p| p as u16) else {
                continue;
            };
            if let (Some(at), false) = (opened.get(&p), seen.contains_key(&p)) {
                seen.insert(p, now.duration_since(*at).as_millis() as u64);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    connector
        .join()
        .map_err(|_| anyhow!("the connecting thread panicked"))??;
    let _ = listener.join();
    if seen.len() < ports.len() {
        bail!(
            "{} of {} connections never showed at region 3 (logs in {})",
            ports.len() - seen.len(),
            ports.len(),
            lab.dir.display()
        );
    }
    Ok(seen.into_values().collect())
}

/// Sends `body` to `path` `n` times: the latencies (µs) and the last answer.
async fn timed(
    api: &mut ApiClient,
    path: &str,
    body: &Value,
    n: usize,
) -> Result<(Histogram<u64>, Value)> {
    let mut h = Histogram::<u64>::new(3)?;
    let mut last = Value::Null;
    for _ in 0..n {
        let t = Instant::now();
        let a = api.post(path, body).await?;
        if !a.status.is_success() {
            bail!("{path}: {} {}", a.status, a.json());
        }
        h.record(t.elapsed().as_micros() as u64)?;
        last = a.json();
    }
    Ok((h, last))
}

/// Global queries over `n` summaries per region: (name, histogram, matches).
async fn global_queries(
    lab: &mut Lab,
    args: &VisibilityArgs,
    report: &mut Report,
) -> Result<Vec<(&'static str, Histogram<u64>, Value)>> {
    let mut api = ready(lab).await?;
    let (_, ven_port) = ports(lab)?;
    let vens: Vec<String> = (1..=3)
        .map(|id| format!("{}:{ven_port}", lab.ip(id)))
        .collect();
    let ca = std::fs::read_to_string(lab.dir.join("certs/ca.pem"))?;
    let (estate, ids) = super::estate::build(&mut api, &vens, &ca, args.workloads).await?;
    let now = sc_store::time::now_ms();
    for id in 1..=3 {
        lab.stop_node(id)?;
    }
    eprintln!(
        "writing {} flow summaries into each region's store",
        args.flows_per_region
    );
    for id in 1..=3 {
        let store = SledTraffic::open(
            &lab.flow_dir(id),
            Limits::new(Duration::from_secs(7 * 86_400), u64::MAX),
        )?;
        super::flows::fill(&store, args.flows_per_region, now, &estate, 41 + id)?;
        // As a member keeps a day of traffic: older hours rolled up (done
        // here, so the nodes' own minutely maintenance finds nothing to do
        // while the queries are timed).
        store.maintain(now)?;
        store.flush()?;
    }
    for id in 1..=3 {
        lab.start_node(id)?;
    }
    let mut api = ready(lab).await?;
    let label = |k: &str, v: &str| json!({"label": {"href": ids[&format!("{k}={v}")]}});
    let selective = window(json!({
        "destinations": {"include": [[label("app", "app7"), label("env", "env1")]]},
        "max_results": 1000
    }));
    let mut broad = window(json!({"policy_decisions": ["blocked"], "max_results": 1000}));
    let hour_ago = format!(
        "{}Z",
        &sc_store::time::iso8601(sc_store::time::now_ms() - 3_600_000)[..19]
    );
    broad["start_date"] = json!(hour_ago);
    let mut out = Vec::new();
    for (name, q) in [("selective", selective), ("broad", broad)] {
        // One job first, until every region answers (a restarted node
        // serves its API a moment before its traffic store): every region's
        // counts, and a warm cache.
        let t0 = Instant::now();
        let done = loop {
            let a = api
                .post(&format!("{ORG}/traffic_flows/async_queries"), &q)
                .await?;
            let job = format!("/api/v2{}", href(&a.json())?);
            let j = loop {
                let j = api.get(&job).await?.json();
                if j["status"] == "completed" {
                    break j;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let all = j["regions"]
                .as_array()
                .is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["responded"] == json!(true)));
            if all {
                break j;
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("not every region answered the {name} job: {j}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let path = format!("{ORG}/traffic_flows/traffic_analysis_queries");
        let (h, _) = timed(&mut api, &path, &q, args.queries).await?;
        out.push((name, h, done["regions"].clone()));
    }
    // The app group map over the same day (every region aggregates its
    // flows into edges between the app groups).
    let body = window(json!({}));
    let map = format!("{ORG}/app_group_map");
    // The first after the restart may read buckets the members' own
    // maintenance has not summed yet (it starts with the node).
    let (first, _) = timed(&mut api, &map, &body, 1).await?;
    let first = first.max();
    let (h, last) = timed(&mut api, &map, &body, args.queries).await?;
    let size = |k: &str| last[k].as_array().map_or(0, |l| l.len());
    report.line(format!(
        "app group map, {} workloads, 3 regions x {} summaries, through region 3's API: first after the restart {:.1} ms, then p50 {:.1} ms, p99 {:.1} ms; {} nodes, {} edges",
        args.workloads,
        args.flows_per_region,
        first as f64 / 1000.0,
        pct(&h, 0.5),
        pct(&h, 0.99),
        size("nodes"),
        size("edges")
    ));
    report.set(
        "map",
        json!({"first_ms": first as f64 / 1000.0, "p50_ms": pct(&h, 0.5), "p99_ms": pct(&h, 0.99), "nodes": size("nodes"), "edges": size("edges")}),
    );
    // The policy generator for one app group (a dry run: the same work
    // without the write), from two regions.
    let body = window(json!({
        "labels": [{"href": ids["app=app7"]}, {"href": ids["env=env1"]}],
        "dry_run": true,
    }));
    for region in [3, 1] {
        let mut c = client(lab, region)?;
        let (h, last) = timed(
            &mut c,
            &format!("{ORG}/policy_generator"),
            &body,
            args.queries,
        )
        .await?;
        let cov = &last["coverage"];
        let rules = last["rules"].as_array().map_or(0, |l| l.len());
        report.line(format!(
            "policy generator for app7 | env1, through region {region}'s API: p50 {:.1} ms, p99 {:.1} ms; {rules} rules proposed over {} observed connections (coverage {:.1}% -> {:.1}%), {} addresses in no IP list",
            pct(&h, 0.5),
            pct(&h, 0.99),
            cov["observed_connections"],
            cov["before"].as_f64().unwrap_or(0.0) * 100.0,
            cov["after"].as_f64().unwrap_or(0.0) * 100.0,
            last["left_out"]["unnamed_addresses"].as_array().map_or(0, |l| l.len()),
        ));
        report.row(
            "generator",
            json!({"through_region": region, "p50_ms": pct(&h, 0.5), "p99_ms": pct(&h, 0.99), "rules": rules, "coverage": cov}),
        );
    }
    for (id, child) in &lab.nodes {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let kb = |k: &str| {
            status
                .lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (rss, peak) = (kb("VmRSS:") as f64 / 1024.0, kb("VmHWM:") as f64 / 1024.0);
        report.line(format!(
            "region r{id}: resident {rss:.0} MiB, peak {peak:.0} MiB"
        ));
        report.row(
            "memory",
            json!({"region": format!("r{id}"), "resident_mib": rss, "peak_mib": peak}),
        );
    }
    Ok(out)
}

/// Runs the benchmark and prints its figures.
pub async fn visibility(args: VisibilityArgs) -> Result<()> {
    sc_chaos::netns::available()?;
    let exe = std::env::current_exe().context("locating the pce binary")?;
    let mut lab = build(exe)?;
    eprintln!("run directory: {}", lab.dir.display());
    let mut report = Report::new("visibility", args.json);
    report.set(
        "options",
        json!({"samples": args.samples, "flow_report_interval_s": args.flow_report_interval, "flows_per_region": args.flows_per_region, "queries": args.queries, "workloads": args.workloads}),
    );
    for id in 1..=3 {
        lab.start_node(id)?;
    }
    let mut api = ready(&lab).await?;
    let mut fresh = freshness(&mut lab, &mut api, &args).await?;
    fresh.sort_unstable();
    let mut h = Histogram::<u64>::new(3)?;
    for ms in &fresh {
        h.record(ms * 1000)?;
    }
    report.line(format!(
        "freshness (connect in a namespace -> in an Explorer answer at another region, report interval {} s, {} connections): p50 {:.1} s, p99 {:.1} s, max {:.1} s",
        args.flow_report_interval,
        fresh.len(),
        pct(&h, 0.5) / 1000.0,
        pct(&h, 0.99) / 1000.0,
        h.max() as f64 / 1e6
    ));
    report.set(
        "freshness",
        json!({"connections": fresh.len(), "p50_s": pct(&h, 0.5) / 1000.0, "p99_s": pct(&h, 0.99) / 1000.0, "max_s": h.max() as f64 / 1e6}),
    );
    if args.flows_per_region > 0 {
        for (name, h, regions) in global_queries(&mut lab, &args, &mut report).await? {
            let counts: Vec<String> = regions
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|r| match r["error"].as_str() {
                    None => format!(
                        "{} {}",
                        r["region"].as_str().unwrap_or("?"),
                        r["matches_count"]
                    ),
                    Some(e) => format!("{} no answer ({e})", r["region"].as_str().unwrap_or("?")),
                })
                .collect();
            report.line(format!(
                "global {name} query, 3 regions x {} summaries, through region 3's API: p50 {:.1} ms, p99 {:.1} ms; matches {}",
                args.flows_per_region,
                pct(&h, 0.5),
                pct(&h, 0.99),
                counts.join(", ")
            ));
            report.row(
                "global_queries",
                json!({"query": name, "p50_ms": pct(&h, 0.5), "p99_ms": pct(&h, 0.99), "regions": regions}),
            );
        }
    }
    if std::env::var_os("KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&lab.dir);
    }
    report.finish()
}
