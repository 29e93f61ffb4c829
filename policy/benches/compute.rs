//! Compute benchmarks on synthetic estates: full compute, and incremental
//! recompute after one workload's label change and after one rule change, at
//! 1k/10k/100k workloads × 100/1k/10k rules. Also prints the memory the engine
//! holds for each size (from a counting allocator).
//!
//! `cargo bench -p sc-policy --bench compute` (add a filter such as `100000x10000`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sc_policy::model::*;
use sc_policy::{Change, Engine};

/// Counts live heap bytes, to report the engine's memory.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A small deterministic generator (xorshift), so every run builds the same estate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: [(&str, u64); 4] = [("role", 20), ("app", 50), ("env", 4), ("loc", 10)];

fn label(key: &str, v: u64) -> String {
    format!("{key}-{v}")
}

/// An estate of `n` workloads and a policy of about `rules` rules in rulesets of
/// ten, scoped by app and env, as a large enterprise's policy looks.
fn synth(n: usize, rules: usize) -> (Estate, PolicySet) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut estate = Estate::default();
    for (key, count) in KEYS {
        for v in 0..count {
            let id = label(key, v);
            estate.labels.insert(
                id.clone(),
                Label {
                    id,
                    key: key.into(),
                    value: v.to_string(),
                },
            );
        }
    }
    for i in 0..n {
        let labels = KEYS.iter().map(|(k, c)| label(k, rng.below(*c))).collect();
        let ip = Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
        let mode = match rng.below(10) {
            0 => EnforcementMode::Idle,
            1 => EnforcementMode::VisibilityOnly,
            2..=4 => EnforcementMode::Selective,
            _ => EnforcementMode::Full,
        };
        let id = format!("wl-{i}");
        estate.workloads.insert(
            id.clone(),
            Workload {
                id,
                name: String::new(),
                hostname: String::new(),
                interfaces: vec![IpAddr::V4(ip)],
                labels,
                managed: rng.below(10) != 0,
                mode,
                online: rng.below(50) != 0,
                visibility: Default::default(),
            },
        );
    }
    let mut policy = PolicySet::default();
    for s in 0..50 {
        let ports = (0..1 + rng.below(3))
            .map(|_| PortRange {
                proto: Proto::Tcp,
                port: Some(1000 + rng.below(60000) as u16),
                to_port: None,
            })
            .collect();
        policy.services.insert(
            format!("svc-{s}"),
            Service {
                id: format!("svc-{s}"),
                name: String::new(),
                ports,
            },
        );
    }
    for l in 0..20 {
        policy.ip_lists.insert(
            format!("ipl-{l}"),
            IpList {
                id: format!("ipl-{l}"),
                name: String::new(),
                ranges: vec![format!("172.{}.0.0/16", 16 + l)],
                exclusions: vec![format!("172.{}.7.0/24", 16 + l)],
            },
        );
    }
    for r in 0..rules.div_ceil(10) {
        let scope = vec![
            Actor::Label(label("app", rng.below(50))),
            Actor::Label(label("env", rng.below(4))),
        ];
        let mut rs = RuleSet {
            id: format!("rs-{r}"),
            name: String::new(),
            enabled: true,
            scope,
            rules: vec![],
            deny_rules: vec![],
        };
        for j in 0..10 {
            let providers = vec![Actor::Label(label("role", rng.below(20)))];
            let services = vec![ServiceRef::Service(format!("svc-{}", rng.below(50)))];
            let kind = rng.below(100);
            let (consumers, unscoped) = match kind {
                0..=69 => (vec![Actor::Label(label("role", rng.below(20)))], false),
                70..=89 => (
                    vec![
                        Actor::Label(label("role", rng.below(20))),
                        Actor::Label(label("app", rng.below(50))),
                    ],
                    true,
                ),
                _ => (vec![Actor::IpList(format!("ipl-{}", rng.below(20)))], false),
            };
            if kind % 10 == 9 {
                rs.deny_rules.push(DenyRule {
                    id: format!("d{j}"),
                    enabled: true,
                    providers,
                    consumers,
                    services,
                    unscoped_consumers: unscoped,
                    override_deny: kind == 99,
                });
            } else {
                rs.rules.push(Rule {
                    id: format!("r{j}"),
                    enabled: true,
                    providers,
                    consumers,
                    services,
                    unscoped_consumers: unscoped,
                    deliberately_broad: false,
                });
            }
        }
        policy.rule_sets.insert(rs.id.clone(), rs);
    }
    (estate, policy)
}

fn bench(c: &mut Criterion) {
    for &n in &[1_000usize, 10_000, 100_000] {
        for &rules in &[100usize, 1_000, 10_000] {
            let (estate, policy) = synth(n, rules);
            let name = format!("{n}x{rules}");
            let mut group = c.benchmark_group(name.clone());
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(3));

            let before = LIVE.load(Ordering::Relaxed);
            let engine = Engine::new(estate.clone(), policy.clone());
            let held = LIVE.load(Ordering::Relaxed) - before;
            let pairs: usize = engine
                .all_compiled()
                .values()
                .map(|c| c.inbound.len() + c.outbound.len())
                .sum();
            println!("{name}: engine holds {:.1} MiB (estate and policy copies included); {pairs} compiled (workload, rule) pairs", held as f64 / (1 << 20) as f64);

            group.bench_function("full", |b| {
                b.iter_batched(
                    || (estate.clone(), policy.clone()),
                    |(e, p)| Engine::new(e, p),
                    BatchSize::LargeInput,
                )
            });

            let mut engine = engine;
            let mut flip = false;
            group.bench_function("one_workload_label", |b| {
                b.iter(|| {
                    flip = !flip;
                    let role = label("role", if flip { 3 } else { 4 });
                    engine.update(&[Change::Workload("wl-7".into())], |e, _| {
                        if let Some(w) = e.workloads.get_mut("wl-7") {
                            w.labels[0] = role;
                        }
                    })
                })
            });
            group.bench_function("one_rule", |b| {
                b.iter(|| {
                    flip = !flip;
                    let svc = format!("svc-{}", if flip { 1 } else { 2 });
                    engine.update(&[Change::RuleSet("rs-0".into())], |_, p| {
                        if let Some(rs) = p.rule_sets.get_mut("rs-0") {
                            rs.rules[0].services = vec![ServiceRef::Service(svc)];
                        }
                    })
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
