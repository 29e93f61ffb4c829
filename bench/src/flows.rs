//! `pce bench flows`: what a region's traffic store costs. Synthetic flow
//! summaries of a 1,000-workload estate (20 apps × 3 envs × 4 roles, a day of
//! traffic) are ingested in batches of 1,000 as the VEN service stores them,
//! then the queries a region answers run repeatedly against the store: a
//! selective Explorer query (one app's and env's labels as destination, the
//! whole day), the same labels as source, a broad one (everything blocked in
//! the last hour), the app group map's (the whole day into edges between app
//! groups) and the policy generator's (one app group's flows in or out, per
//! workload). Sizes grow so the figures show how cost grows with the data. A global query asks every region in parallel, so
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
use crate::report::Report;

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
    /// Print the figures as one JSON document (the table goes to stderr).
    #[arg(long)]
    json: bool,
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

/// A synthetic estate as flows name it: workloads with their addresses,
/// and how they talk.
pub(crate) struct Estate {
    /// Each workload, as a flow's end carries it.
    pub(crate) workloads: Vec<FlowWorkload>,
    /// Each workload's address.
    pub(crate) ips: Vec<String>,
    /// 0: any workload talks to any other (the store benchmark's estate).
    /// Else workload `i` is in app group `i % groups`, and traffic has the
    /// shape of applications: most of it inside a group, the rest to three
    /// groups it depends on, and some from internet addresses to port 443.
    pub(crate) groups: usize,
}

/// Internet sources of the app-shaped traffic: the first half inside
/// `PARTNERS` (an IP list the benchmark can create), the rest in no list.
pub(crate) const INTERNET: [&str; 8] = [
    "198.51.100.7",
    "198.51.100.8",
    "198.51.100.9",
    "198.51.100.10",
    "203.0.113.7",
    "203.0.113.8",
    "203.0.113.9",
    "203.0.113.10",
];

/// The range holding the first half of [`INTERNET`].
pub(crate) const PARTNERS: &str = "198.51.100.0/24";

impl Estate {
    /// The store benchmark's estate: 1,000 workloads, 20 apps × 3 envs × 4
    /// roles, any to any; label ids from `id(key, value)`.
    pub(crate) fn small(id: &dyn Fn(&str, &str) -> String) -> Estate {
        let label = |key: &str, value: String| FlowLabel {
            id: id(key, &value),
            key: key.into(),
            value,
        };
        let workloads = (0..WORKLOADS)
            .map(|i| FlowWorkload {
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
            })
            .collect();
        Estate {
            workloads,
            ips: (0..WORKLOADS).map(ip).collect(),
            groups: 0,
        }
    }

    fn flow(&self, r: &mut Lcg, now: u64) -> TrafficFlow {
        let n = self.workloads.len();
        let end = |i: usize| FlowEnd {
            ip: self.ips[i].clone(),
            workload: Some(self.workloads[i].clone()),
        };
        let (src, d, port) = if self.groups == 0 {
            let (s, d) = (r.below(n), r.below(n));
            (
                end(s),
                d,
                [22, 80, 443, 3306, 5432, 6379, 8080, 9090][r.below(8)],
            )
        } else {
            let s = r.below(n);
            let g = s % self.groups;
            let roll = r.below(100);
            let dg = if roll < 70 {
                g
            } else {
                (g + [1, 7, 31][r.below(3)]) % self.groups
            };
            let d = (dg + self.groups * r.below(n / self.groups)).min(n - 1);
            if roll < 5 {
                let src = FlowEnd {
                    ip: INTERNET[r.below(INTERNET.len())].into(),
                    workload: None,
                };
                (src, s, 443)
            } else {
                (end(s), d, [22, 80, 443, 5432, 6379, 8080][r.below(6)])
            }
        };
        let decision = match r.below(10) {
            0 => "blocked",
            1 | 2 => "potentially_blocked",
            _ => "allowed",
        };
        let last = now - r.next() % DAY_MS;
        TrafficFlow {
            src: Some(src),
            dst: Some(end(d)),
            port,
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
            reporter: self.workloads[d].id.clone(),
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
}

/// Workload `i`'s address in the synthetic estates.
pub(crate) fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65_536 % 256, i / 256 % 256, i % 256)
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

/// Writes `n` synthetic summaries of the last day between `estate`'s
/// workloads into `store`, in batches of 1,000 as the VEN service does;
/// `seed` picks the sequence (regions differ).
pub(crate) fn fill(
    store: &SledTraffic,
    n: usize,
    now: u64,
    estate: &Estate,
    seed: u64,
) -> Result<()> {
    let mut r = Lcg(seed);
    let mut left = n;
    while left > 0 {
        let batch: Vec<TrafficFlow> = (0..left.min(1000))
            .map(|_| estate.flow(&mut r, now))
            .collect();
        left -= batch.len();
        store.ingest(&batch)?;
    }
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub async fn flows(args: FlowsArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let now = sc_store::time::now_ms();
    let id = |k: &str, v: &str| format!("{k}-{v}");
    let mut report = Report::new("flows", args.json);
    report.set(
        "options",
        serde_json::json!({"sizes": args.sizes, "queries": args.queries}),
    );
    report.line(format!(
        "{:>9} {:>11} {:>12} {:>14} {:>12} {:>13} {:>13} {:>9} {:>13} {:>13} {:>13} {:>13} {:>9} {:>9} {:>9} {:>13} {:>13}",
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
        "matches",
        "map p50",
        "map p99",
        "generator p50",
        "generator p99"
    ));
    let mut rolled = Vec::new();
    for (n, size) in args.sizes.iter().enumerate() {
        let dir = base.join(format!("store-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store =
            SledTraffic::open(&dir, Limits::new(Duration::from_secs(7 * 86_400), u64::MAX))?;
        let cpu0 = cpu_ms(None).unwrap_or(0.0);
        let t0 = Instant::now();
        fill(&store, *size, now, &Estate::small(&id), 42)?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_ms(None).unwrap_or(0.0) - cpu0;
        let (selective, broad) = queries(now, "app-app7", "env-env1");
        let by_source = FlowQuery {
            sources: selective.destinations.clone(),
            destinations: None,
            ..selective.clone()
        };
        // The app group map's question (every flow of the day into edges
        // between app groups), and the policy generator's (one app group's
        // flows, in or out, per workload).
        let map = FlowQuery {
            start_ms: now - DAY_MS,
            end_ms: now,
            group_keys: vec!["app".into(), "env".into()],
            ..FlowQuery::default()
        };
        let generator = FlowQuery {
            sources: selective.destinations.clone(),
            either_side: true,
            by_workload: true,
            governed: true,
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
            let (hm, _) = time_query(&store, &map, args.queries)?;
            let (hg, _) = time_query(&store, &generator, args.queries)?;
            report.row(
                "rows",
                serde_json::json!({
                    "flows": size,
                    "store": stage,
                    "ingest_per_s": *size as f64 / secs,
                    "cpu_ms_per_1000": cpu / (*size as f64 / 1000.0),
                    "bytes_per_flow": bytes as f64 / *size as f64,
                    "selective_p50_ms": pct(&hs, 0.5),
                    "selective_p99_ms": pct(&hs, 0.99),
                    "selective_matches": ms,
                    "by_source_p50_ms": pct(&hsrc, 0.5),
                    "by_source_p99_ms": pct(&hsrc, 0.99),
                    "broad_p50_ms": pct(&hb, 0.5),
                    "broad_p99_ms": pct(&hb, 0.99),
                    "broad_matches": mb,
                    "map_p50_ms": pct(&hm, 0.5),
                    "map_p99_ms": pct(&hm, 0.99),
                    "generator_p50_ms": pct(&hg, 0.5),
                    "generator_p99_ms": pct(&hg, 0.99),
                }),
            );
            report.line(format!(
                "{:>9} {:>11} {:>12.0} {:>14.1} {:>12.0} {:>11.1}ms {:>11.1}ms {:>9} {:>11.1}ms {:>11.1}ms {:>11.1}ms {:>11.1}ms {:>9} {:>7.1}ms {:>7.1}ms {:>11.1}ms {:>11.1}ms",
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
                mb,
                pct(&hm, 0.5),
                pct(&hm, 0.99),
                pct(&hg, 0.5),
                pct(&hg, 0.99)
            ));
        }
    }
    for (size, n, took) in rolled {
        report.line(format!(
            "{size} flows: rolling {n} summaries older than an hour up into hours took {:.1} s (a member does this a minute's worth at a time)",
            took.as_secs_f64()
        ));
        report.row(
            "roll_ups",
            serde_json::json!({"flows": size, "rolled_up": n, "seconds": took.as_secs_f64()}),
        );
    }
    report.finish()
}
