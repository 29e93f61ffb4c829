//! `pce bench api`: the admin API under load on a running `pce up` cluster.
//!
//! 1. Rule edits (`PUT .../sec_rules/{id}`) per second and latency, sent to the
//!    leader and to a member (forwarded), at each client count.
//! 2. Provisioning: an estate of managed workloads, a draft of N changed rules,
//!    and the time `POST sec_policy` takes to validate, compute the affected
//!    workloads and commit, repeated.
//!
//! Managed workloads appear when VENs pair; until then the bench seeds them the
//! way pairing will, as store transactions sent through the Raft client (not
//! audited).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use sc_leader::client::cluster::{href, post};
use sc_leader::client::ApiClient;
use sc_policy::model::EnforcementMode;
use sc_raft::{ClientId, Outcome};
use sc_store::db::Txn;
use sc_store::keys::{self, Kind, Space};
use sc_store::objects::{InterfaceJson, WorkloadDoc};
use sc_store::record::{Meta, Record, RECORD_V};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::pct;
use crate::report::Report;
use sc_region::local::REGIONS;

/// Options of `pce bench api`.
#[derive(clap::Args)]
pub struct ApiArgs {
    /// The directory `pce up` runs in (owner key, CA, node configs).
    #[arg(long, default_value = "pce-data")]
    dir: PathBuf,
    /// The admin API port of every region.
    #[arg(long, default_value_t = 8443)]
    api_port: u16,
    /// Client counts for rule edits, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Seconds to measure each client count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Managed workloads in the estate for the provision benchmark.
    #[arg(long, default_value_t = 10_000)]
    workloads: usize,
    /// Rules changed before each measured provision.
    #[arg(long, default_value_t = 1_000)]
    rules: usize,
    /// Provisions to measure.
    #[arg(long, default_value_t = 3)]
    provisions: usize,
    /// Skip the provision benchmark.
    #[arg(long)]
    edits_only: bool,
    /// Print the figures as one JSON document (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

struct Target {
    ca: String,
    key: (String, String),
}

impl Target {
    fn client(&self, addr: SocketAddr) -> Result<ApiClient> {
        Ok(ApiClient::new(addr, Some(&self.ca))?.with_key(&self.key.0, &self.key.1))
    }
}

const ORG: &str = "/api/v2/orgs/1";

/// Runs `clients` editors of their own rule against `addr` for `secs`.
async fn edits(
    t: &Target,
    addr: SocketAddr,
    rules: &[String],
    clients: usize,
    secs: u64,
) -> Result<(f64, f64, f64, u64)> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for rule in rules.iter().take(clients) {
        let mut c = t.client(addr)?;
        let hist = hist.clone();
        let path = format!("/api/v2{rule}");
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut errors = 0u64;
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            while Instant::now() < deadline {
                let body = json!({"ingress_services": [{"proto": 6, "port": 1024 + (n % 60000)}]});
                let t0 = Instant::now();
                match c.put(&path, &body).await {
                    Ok(a) if a.status == 204 => {
                        let _ = local.record(t0.elapsed().as_micros() as u64);
                    }
                    other => {
                        // The first failure of each client says why.
                        if errors == 0 {
                            match other {
                                Ok(a) => eprintln!(
                                    "  {path}: {} {}",
                                    a.status,
                                    String::from_utf8_lossy(&a.body)
                                ),
                                Err(e) => eprintln!("  {path}: {e}"),
                            }
                        }
                        errors += 1;
                    }
                }
                n += 1;
            }
            let _ = hist.lock().await.add(&local);
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    let h = hist.lock().await;
    let rate = h.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, pct(&h, 0.5), pct(&h, 0.99), errors))
}

/// Seeds `n` managed workloads with labels from `roles`, `apps` and `env`.
async fn seed_workloads(
    args: &ApiArgs,
    n: usize,
    roles: &[String],
    apps: &[String],
    env: &str,
) -> Result<()> {
    let client =
        sc_region::config::NodeConfig::load(&args.dir.join("us-east/node.toml"))?.client()?;
    let meta = Meta {
        created_at: sc_store::time::now_ms(),
        updated_at: sc_store::time::now_ms(),
        created_by: "/users/owner".into(),
        updated_by: "/users/owner".into(),
    };
    let id_of = |h: &str| h.rsplit('/').next().unwrap_or_default().to_string();
    let session = ClientId::random();
    for (serial, chunk) in (0..n).collect::<Vec<_>>().chunks(1000).enumerate() {
        let mut txn = Txn::default();
        for &i in chunk {
            let doc = WorkloadDoc {
                name: format!("bench-{i}"),
                hostname: format!("bench-{i}.example"),
                description: None,
                interfaces: vec![InterfaceJson {
                    name: "eth0".into(),
                    address: IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                    cidr_block: None,
                    link_state: None,
                }],
                labels: vec![
                    id_of(&roles[i % roles.len()]),
                    id_of(&apps[(i / roles.len()) % apps.len()]),
                    id_of(env),
                ],
                enforcement_mode: EnforcementMode::Full,
                online: true,
                managed: true,
                public_ip: None,
                region: Some("us-east".into()),
                quarantined: false,
                suspended: false,
                served_by: None,
                visibility_level: Default::default(),
            };
            let rec = Record {
                v: RECORD_V,
                meta: meta.clone(),
                doc,
            };
            txn.put(
                keys::obj(Space::Live, Kind::Workload, &format!("bench-{i:06}")),
                &rec,
            )?;
        }
        let cmd = txn.into_command(session, serial as u64 + 1);
        let r = client.write(&cmd).await?;
        if r.outcome != Outcome::Applied {
            bail!("seeding workloads: {:?}", r.outcome);
        }
    }
    Ok(())
}

/// Creates or edits every rule with a fresh port, 16 requests at a time.
async fn touch_rules(
    t: &Target,
    addr: SocketAddr,
    plan: &[(String, Value)],
    create: bool,
) -> Result<Vec<String>> {
    let work = Arc::new(Mutex::new(plan.to_vec()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = t.client(addr)?;
        let (work, out) = (work.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((path, body)) = work.lock().await.pop() else {
                    return Ok::<(), anyhow::Error>(());
                };
                if create {
                    let v = post(&mut c, &path, body).await?;
                    out.lock().await.push(href(&v));
                } else {
                    let a = c.put(&path, &body).await?;
                    if a.status != 204 {
                        bail!("PUT {path}: {}", a.status);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let v = out.lock().await.clone();
    Ok(v)
}

/// `pce bench api`.
pub async fn api(args: ApiArgs) -> Result<()> {
    let t = target(&args)?;
    let (leader, member) = leader_and_member(&t, args.api_port).await?;
    let mut c = t.client(leader)?;
    let tag = sc_store::time::now_ms();
    let mut out = Report::new("api", args.json);
    out.set(
        "options",
        json!({"clients": args.clients, "seconds": args.seconds, "workloads": args.workloads, "rules": args.rules, "provisions": args.provisions}),
    );
    rule_edits(&args, &t, &mut c, tag, (leader, member), &mut out).await?;
    if !args.edits_only {
        provisions(&args, &t, &mut c, tag, leader, &mut out).await?;
    }
    out.finish()
}

/// The CA and the owner key of the `pce up` in `--dir`.
fn target(args: &ApiArgs) -> Result<Target> {
    let ca = std::fs::read_to_string(args.dir.join("certs/ca.pem"))
        .context("reading the CA (is `pce up` running in --dir?)")?;
    let key: Value = serde_json::from_str(
        &std::fs::read_to_string(args.dir.join("owner-api-key.json"))
            .context("reading the owner key")?,
    )?;
    Ok(Target {
        ca,
        key: (
            key["auth_username"].as_str().unwrap_or_default().into(),
            key["secret"].as_str().unwrap_or_default().into(),
        ),
    })
}

/// The leader's API and a member's.
async fn leader_and_member(t: &Target, api_port: u16) -> Result<(SocketAddr, SocketAddr)> {
    let addrs: Vec<SocketAddr> = REGIONS
        .iter()
        .map(|r| SocketAddr::new(IpAddr::V4(r.3), api_port))
        .collect();
    let mut leader = None;
    for a in &addrs {
        if t.client(*a)?
            .get("/api/v2/supercluster/leader")
            .await?
            .status
            == 200
        {
            leader = Some(*a);
        }
    }
    let leader = leader.context("no region answers as leader")?;
    let member = *addrs.iter().find(|a| **a != leader).context("no member")?;
    Ok((leader, member))
}

/// Creates a label and returns its href.
async fn label(c: &mut ApiClient, key: &str, value: String) -> Result<String> {
    Ok(href(
        &post(
            c,
            &format!("{ORG}/labels"),
            json!({"key": key, "value": value}),
        )
        .await?,
    ))
}

/// Part 1: rule edits per second and latency, to the leader and to a member.
async fn rule_edits(
    args: &ApiArgs,
    t: &Target,
    c: &mut ApiClient,
    tag: u64,
    (leader, member): (SocketAddr, SocketAddr),
    out: &mut Report,
) -> Result<()> {
    let role_a = label(c, "role", format!("edit-a-{tag}")).await?;
    let role_b = label(c, "role", format!("edit-b-{tag}")).await?;
    let rs = href(
        &post(
            c,
            &format!("{ORG}/sec_policy/draft/rule_sets"),
            json!({"name": format!("bench-edit-{tag}")}),
        )
        .await?,
    );
    let most = args.clients.iter().copied().max().unwrap_or(1);
    let plan: Vec<(String, Value)> = (0..most)
        .map(|i| {
            (format!("/api/v2{rs}/sec_rules"), json!({"providers": [{"label": {"href": role_a}}], "consumers": [{"label": {"href": role_b}}], "ingress_services": [{"proto": 6, "port": 1000 + i}]}))
        })
        .collect();
    let rules = touch_rules(t, leader, &plan, true).await?;
    out.line(format!(
        "rule edits through the API (HTTPS, owner key, {} s per row)",
        args.seconds
    ));
    out.line(format!(
        "{:8} {:>8} {:>10} {:>8} {:>8} {:>7}",
        "target", "clients", "edits/s", "p50 ms", "p99 ms", "errors"
    ));
    for (name, addr) in [("leader", leader), ("member", member)] {
        for &n in &args.clients {
            let (rate, p50, p99, errors) = edits(t, addr, &rules, n, args.seconds).await?;
            out.line(format!(
                "{name:8} {n:>8} {rate:>10.0} {p50:>8.2} {p99:>8.2} {errors:>7}"
            ));
            out.row(
                "edits",
                json!({"target": name, "clients": n, "edits_per_s": rate, "p50_ms": p50, "p99_ms": p99, "errors": errors}),
            );
        }
    }
    Ok(())
}

/// Part 2: provisioning a draft of `--rules` changed rules over an estate of
/// `--workloads` managed workloads, `--provisions` times.
async fn provisions(
    args: &ApiArgs,
    t: &Target,
    c: &mut ApiClient,
    tag: u64,
    leader: SocketAddr,
    out: &mut Report,
) -> Result<()> {
    let mut roles = Vec::new();
    for i in 0..10 {
        roles.push(label(c, "role", format!("r{i}-{tag}")).await?);
    }
    let mut apps = Vec::new();
    for i in 0..20 {
        apps.push(label(c, "app", format!("a{i}-{tag}")).await?);
    }
    let env = label(c, "env", format!("prod-{tag}")).await?;
    let t0 = Instant::now();
    seed_workloads(args, args.workloads, &roles, &apps, &env).await?;
    out.line(format!(
        "\nseeded {} managed workloads in {:.1} s",
        args.workloads,
        t0.elapsed().as_secs_f64()
    ));
    let plan = draft_rules(args, c, tag, &roles, &apps, &env).await?;
    let t0 = Instant::now();
    let rule_hrefs = touch_rules(t, leader, &plan, true).await?;
    out.line(format!(
        "created {} draft rules in {:.1} s",
        rule_hrefs.len(),
        t0.elapsed().as_secs_f64()
    ));
    out.line(format!(
        "{:>9} {:>8} {:>14} {:>12}",
        "provision", "rules", "affected wls", "seconds"
    ));
    let mut times = Vec::new();
    for round in 0..args.provisions {
        if round > 0 {
            let edits: Vec<(String, Value)> = rule_hrefs
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    (
                        format!("/api/v2{h}"),
                        json!({"ingress_services": [{"proto": 6, "port": 3000 + i + round}]}),
                    )
                })
                .collect();
            touch_rules(t, leader, &edits, false).await?;
        }
        let t0 = Instant::now();
        let v = post(
            c,
            &format!("{ORG}/sec_policy"),
            json!({"update_description": format!("bench round {round}")}),
        )
        .await?;
        let secs = t0.elapsed().as_secs_f64();
        times.push(secs);
        out.line(format!(
            "{:>9} {:>8} {:>14} {:>12.2}",
            v["version"],
            rule_hrefs.len(),
            v["workloads_affected"],
            secs
        ));
        out.row(
            "provisions",
            json!({"version": v["version"], "rules": rule_hrefs.len(), "workloads_affected": v["workloads_affected"], "seconds": secs}),
        );
    }
    times.sort_by(f64::total_cmp);
    if let (Some(median), Some(max)) = (times.get(times.len() / 2), times.last()) {
        out.line(format!(
            "provision of {} changed rules over {} workloads: median {median:.2} s, max {max:.2} s",
            rule_hrefs.len(),
            args.workloads,
        ));
        out.set(
            "provision",
            json!({"median_s": median, "max_s": max, "rules": rule_hrefs.len(), "workloads": args.workloads}),
        );
    }
    Ok(())
}

/// One ruleset per app (scoped to app and env) with role-to-role rules, up
/// to `--rules` in all; returns (path, body) of each rule to create.
async fn draft_rules(
    args: &ApiArgs,
    c: &mut ApiClient,
    tag: u64,
    roles: &[String],
    apps: &[String],
    env: &str,
) -> Result<Vec<(String, Value)>> {
    let mut plan = Vec::new();
    let per_set = args.rules.div_ceil(apps.len()).max(1);
    for (k, app) in apps.iter().enumerate() {
        let scope = json!([[{"label": {"href": app}}, {"label": {"href": env}}]]);
        let rs = href(
            &post(
                c,
                &format!("{ORG}/sec_policy/draft/rule_sets"),
                json!({"name": format!("bench-prov-{k}-{tag}"), "scopes": scope}),
            )
            .await?,
        );
        for j in 0..per_set {
            if plan.len() == args.rules {
                break;
            }
            let (p, q) = (
                roles[j % roles.len()].clone(),
                roles[(j / roles.len() + j + 1) % roles.len()].clone(),
            );
            plan.push((format!("/api/v2{rs}/sec_rules"), json!({"providers": [{"label": {"href": p}}], "consumers": [{"label": {"href": q}}], "ingress_services": [{"proto": 6, "port": 2000 + j}]})));
        }
    }
    Ok(plan)
}
