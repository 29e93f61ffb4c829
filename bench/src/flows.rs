//! `pce bench flows`: what a region's traffic store costs. Synthetic flow
//! summaries of a 1,000-workload estate (20 apps × 3 envs × 4 roles, a day of
//! traffic) are ingested in batches of 1,000 as the VEN service stores them,
//! then three Explorer queries run repeatedly against the store: a selective
//! one (one app's and env's labels as destination, the whole day), the same
//! labels as source, and a broad one (everything blocked in the last hour). Sizes grow so the figures show how
//! cost grows with the data. A global query asks every region in parallel, so
//! its latency is the slowest region's store query plus one federation round
//! trip.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use sc_member::traffic::{Limits, SledTraffic, TrafficStore};
use sc_proto::federation::flow_actor::Kind as ActorKind;
use sc_proto::federation::{
    ActorSet, FlowActor, FlowEnd, FlowLabel, FlowQuery, FlowSide, FlowWorkload, TrafficFlow,
};

use super::{cpu_ms, pct};

/// Options of `pce bench flows`.
#[derive(clap::Args)]
pub struct FlowsArgs {
    /// Flow summaries per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    sizes: Vec<usize>,
    /// Times each query runs.
    #[arg(long, default_value_t = 20)]
    queries: usize,
    /// Where the stores go (a temporary directory by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const DAY_MS: u64 = 86_400_000;
const APPS: usize = 20;
const ENVS: usize = 3;
const ROLES: usize = 4;
const WORKLOADS: usize = 1000;

/// A deterministic pseudo-random sequence (the figures must not depend on a seed
/// source that differs between runs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn workload(i: usize, id: &dyn Fn(&str, &str) -> String) -> FlowWorkload {
    let label = |key: &str, value: String| FlowLabel {
        id: id(key, &value),
        key: key.into(),
        value,
    };
    FlowWorkload {
        id: format!("wl-{i}"),
        name: format!("host-{i}"),
        hostname: format!("host-{i}.example"),
        labels: vec![
            label("app", format!("app{}", i % APPS)),
            label("env", format!("env{}", i / APPS % ENVS)),
            label("role", format!("role{}", i / (APPS * ENVS) % ROLES)),
        ],
        enforcement_mode: "full".into(),
        managed: true,
    }
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65_536 % 256, i / 256 % 256, i % 256)
}

fn flow(r: &mut Lcg, wls: &[FlowWorkload], now: u64) -> TrafficFlow {
    let (s, d) = (r.below(WORKLOADS), r.below(WORKLOADS));
    let decision = match r.below(10) {
        0 => "blocked",
        1 | 2 => "potentially_blocked",
        _ => "allowed",
    };
    let last = now - r.next() % DAY_MS;
    TrafficFlow {
        src: Some(FlowEnd {
            ip: ip(s),
            workload: Some(wls[s].clone()),
        }),
        dst: Some(FlowEnd {
            ip: ip(d),
            workload: Some(wls[d].clone()),
        }),
        port: [22, 80, 443, 3306, 5432, 6379, 8080, 9090][r.below(8)],
        proto: 6,
        direction: "inbound".into(),
        decision: decision.into(),
        rule: if decision == "allowed" {
            format!("rs-{}/rule-{}", r.below(50), r.below(10))
        } else {
            String::new()
        },
        num_connections: 1 + r.below(20) as u64,
        first_ms: last.saturating_sub(r.next() % 60_000),
        last_ms: last,
        reporter: wls[d].id.clone(),
        region: "bench".into(),
        dst_bi: if decision == "blocked" {
            0
        } else {
            500 + r.next() % 50_000
        },
        dst_bo: if decision == "blocked" {
            0
        } else {
            500 + r.next() % 500_000
        },
        state: if decision == "blocked" { "" } else { "C" }.into(),
    }
}

fn labels(ids: &[&str]) -> FlowSide {
    FlowSide {
        include: vec![ActorSet {
            all: ids
                .iter()
                .map(|id| FlowActor {
                    kind: Some(ActorKind::Label(id.to_string())),
                })
                .collect(),
        }],
        exclude: vec![],
    }
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|it| {
            it.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn time_query(store: &SledTraffic, q: &FlowQuery, n: usize) -> Result<(Histogram<u64>, u64)> {
    let mut h = Histogram::<u64>::new(3)?;
    let mut matches = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        let r = store.query(q).context("query")?;
        h.record(t0.elapsed().as_micros() as u64)?;
        matches = r.matches;
    }
    Ok((h, matches))
}

/// The two Explorer queries every flows benchmark asks: a selective one (one
/// app's and env's labels as destination, the last day) and a broad one
/// (everything blocked in the last hour).
pub(crate) fn queries(now: u64, app: &str, env: &str) -> (FlowQuery, FlowQuery) {
    let selective = FlowQuery {
        start_ms: now - DAY_MS,
        end_ms: now,
        max_results: 10_000,
        destinations: Some(labels(&[app, env])),
        ..FlowQuery::default()
    };
    let broad = FlowQuery {
        start_ms: now - 3_600_000,
        end_ms: now,
        max_results: 200_000,
        decisions: vec!["blocked".into()],
        ..FlowQuery::default()
    };
    (selective, broad)
}

/// Writes `n` synthetic summaries of the last day into `store`, in batches
/// of 1,000 as the VEN service does; label ids come from `id(key, value)`.
pub(crate) fn fill(
    store: &SledTraffic,
    n: usize,
    now: u64,
    id: &dyn Fn(&str, &str) -> String,
) -> Result<()> {
    let wls: Vec<FlowWorkload> = (0..WORKLOADS).map(|i| workload(i, id)).collect();
    let mut r = Lcg(42);
    let mut left = n;
    while left > 0 {
        let batch: Vec<TrafficFlow> = (0..left.min(1000))
            .map(|_| flow(&mut r, &wls, now))
            .collect();
        left -= batch.len();
        store.ingest(&batch)?;
    }
    Ok(())
}

/// The label names the generator uses (`app0`…, `env0`…, `role0`…).
pub(crate) fn label_names() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    out.extend((0..APPS).map(|i| ("app", format!("app{i}"))));
    out.extend((0..ENVS).map(|i| ("env", format!("env{i}"))));
    out.extend((0..ROLES).map(|i| ("role", format!("role{i}"))));
    out
}

/// Runs the benchmark and prints its figures.
pub async fn flows(args: FlowsArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let now = sc_store::time::now_ms();
    let id = |k: &str, v: &str| format!("{k}-{v}");
    println!(
        "{:>9} {:>11} {:>12} {:>14} {:>12} {:>13} {:>13} {:>9} {:>13} {:>13} {:>13} {:>13} {:>9}",
        "flows",
        "store",
        "ingest/s",
        "cpu ms/1000",
        "bytes/flow",
        "selective p50",
        "selective p99",
        "matches",
        "by-source p50",
        "by-source p99",
        "broad p50",
        "broad p99",
        "matches"
    );
    let mut rolled = Vec::new();
    for (n, size) in args.sizes.iter().enumerate() {
        let dir = base.join(format!("store-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store =
            SledTraffic::open(&dir, Limits::new(Duration::from_secs(7 * 86_400), u64::MAX))?;
        let cpu0 = cpu_ms(None).unwrap_or(0.0);
        let t0 = Instant::now();
        fill(&store, *size, now, &id)?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_ms(None).unwrap_or(0.0) - cpu0;
        let (selective, broad) = queries(now, "app-app7", "env-env1");
        let by_source = FlowQuery {
            sources: selective.destinations.clone(),
            destinations: None,
            ..selective.clone()
        };
        // As ingested (a day in minute buckets), then as a member keeps it
        // after its minutely maintenance (the last hour in minutes, the rest
        // rolled up into hours).
        for stage in ["ingested", "rolled up"] {
            if stage == "rolled up" {
                let t1 = Instant::now();
                let m = store.maintain(now)?;
                rolled.push((*size, m.rolled_up, t1.elapsed()));
            }
            store.flush()?;
            let bytes = dir_bytes(&dir);
            let (hs, ms) = time_query(&store, &selective, args.queries)?;
            let (hsrc, _) = time_query(&store, &by_source, args.queries)?;
            let (hb, mb) = time_query(&store, &broad, args.queries)?;
            println!(
                "{:>9} {:>11} {:>12.0} {:>14.1} {:>12.0} {:>11.1}ms {:>11.1}ms {:>9} {:>11.1}ms {:>11.1}ms {:>11.1}ms {:>11.1}ms {:>9}",
                size,
                stage,
                *size as f64 / secs,
                cpu / (*size as f64 / 1000.0),
                bytes as f64 / *size as f64,
                pct(&hs, 0.5),
                pct(&hs, 0.99),
                ms,
                pct(&hsrc, 0.5),
                pct(&hsrc, 0.99),
                pct(&hb, 0.5),
                pct(&hb, 0.99),
                mb
            );
        }
    }
    for (size, n, took) in rolled {
        println!(
            "{size} flows: rolling {n} summaries older than an hour up into hours took {:.1} s (a member does this a minute's worth at a time)",
            took.as_secs_f64()
        );
    }
    Ok(())
}
