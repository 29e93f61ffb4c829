//! `pce bench compare`: Supercluster and etcd side by side, measured alternately
//! in one run, with the ratio of their throughputs.
//!
//! Both systems run as three local processes (see [`procs`](super::procs)):
//! Supercluster with mutual TLS on every hop, etcd without TLS, both with fsync on
//! and the same heartbeat and election timeouts. Every level (a workload at a
//! client count) is measured for etcd and then for Supercluster, and the whole
//! sequence is repeated `--rounds` times: a disk or a neighbour that slows down
//! during the run slows both, which a figure quoted from another day cannot show.
//!
//! Workloads (each client is a task with one request in flight; all clients of
//! a system share one HTTP/2 connection, as one application's would):
//! - `write`: a put of a new key with a `--value-size` value, sent to the leader
//!   (etcd `KV.Put`; our `Federation.Write` of one put);
//! - `read`: a get of an existing key from a follower's own replica, no Raft
//!   involved (etcd serializable `KV.Range`; our `Federation.Read`);
//! - `read-linear`: the same get, linearizable: the follower confirms with the
//!   leader first (ReadIndex on both);
//! - `api-read`: a label read through a follower's admin REST API (HTTPS, an API
//!   key checked per request, JSON), against etcd's serializable get: what a
//!   client of our public API pays over etcd's native one. The per-user rate
//!   limit is lifted for the run (`rate = 0`), so the API is measured, not it.
//! - `mixed`: half the clients `write` (through the leader), the other half
//!   `api-read` (through a follower's admin API), at once: the follower
//!   applies the writes while its API's readers, on the node's main runtime,
//!   read the same live state (decision 0030: an apply that finds the state's
//!   lock held hands its worker's queue to another thread). etcd: puts to the
//!   leader and serializable gets from a follower. One rate, both kinds
//!   counted.
//! - `read-floor`: `read`'s get answered by the node's transport alone (its
//!   certificate, TLS and gRPC server settings, its runtime's shape) from a
//!   map, with no Raft, state machine or sled behind it ([`read_floor`]),
//!   against etcd's serializable get: the most any member could read with
//!   this stack and this client, so the part of `read` that is the node's.
//!   Its servers' CPU is the one floor process's, against etcd's three
//!   members (two of them idle but for heartbeats), as `read` counts our
//!   three nodes.
//!
//! The clients run on a runtime of their own, with `--client-threads` workers
//! (one by default), and each level prints how much CPU the bench process
//! used. On the process's main runtime (a worker per core, two on the machine
//! measured) a one-client read cost the client four context switches and about
//! 100 us of CPU, more than either server spent on it: the client's tasks (the
//! caller, tonic's buffer, hyper's connection and body pipe) woke each other
//! across the two threads. That is the same for both systems, but it is added
//! to both latencies and so hid the servers' difference; on one thread the
//! client spends about 65 us and one switch (`docs/benchmarks.md`, "The bench's
//! own client"). A client that shows close to `--client-threads` cores is the
//! limit of the run, not the servers.
//!
//! Each level also counts the CPU of the measured system's three server
//! processes (`/proc/<pid>/stat`) per operation. The client shares the
//! machine's cores, and ours pays for TLS where etcd's does not, so the
//! throughput ratio charges our client's cost to our servers; the servers' CPU
//! per operation, and its ratio, do not.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use sc_raft::{ClientId, Command, Mutation, Outcome, Profile};
use serde_json::json;

use super::etcd::EtcdClient;
use super::procs::{Etcd, Pce};
use super::read_floor::{self, Floor};

/// Options of `pce bench compare`.
#[derive(clap::Args)]
pub struct CompareArgs {
    /// Workloads: `write`, `read`, `read-linear`, `api-read`, `mixed`,
    /// `read-floor`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "write,read,read-linear,api-read"
    )]
    workloads: Vec<String>,
    /// Client counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds each system is measured at each level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// How many times the whole alternating sequence runs.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Size of every written value in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Run in this directory and keep it (data and each process's log). By
    /// default a temporary directory is used and removed.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Worker threads of the runtime the clients of both systems run on.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Internal: be `read-floor`'s server, with the identity of the node this
    /// configuration file describes.
    #[arg(long, hide = true)]
    serve_floor: Option<PathBuf>,
}

/// What one level measures.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Write,
    Read,
    ReadLinear,
    ApiRead,
    Mixed,
    ReadFloor,
}

impl Workload {
    fn parse(s: &str) -> Result<Workload> {
        Ok(match s {
            "write" => Workload::Write,
            "read" => Workload::Read,
            "read-linear" => Workload::ReadLinear,
            "api-read" => Workload::ApiRead,
            "mixed" => Workload::Mixed,
            "read-floor" => Workload::ReadFloor,
            other => bail!(
                "--workloads: unknown workload {other:?} (write, read, read-linear, api-read, mixed, read-floor)"
            ),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::ReadLinear => "read-linear",
            Workload::ApiRead => "api-read",
            Workload::Mixed => "mixed",
            Workload::ReadFloor => "read-floor",
        }
    }
}

/// Keys written before the reads start; reads cycle through them.
const READ_KEYS: u64 = 1000;
/// Labels made before `api-read`; reads cycle through them.
const READ_LABELS: usize = 100;

/// One measured level of one system.
#[derive(Debug, Clone, serde::Serialize)]
struct Level {
    system: &'static str,
    workload: &'static str,
    clients: usize,
    round: usize,
    ops: u64,
    errors: u64,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU the bench process used during the level, in cores (1.0 = one
    /// core busy throughout): near `--client-threads`, the client was the limit.
    client_cores: f64,
    /// CPU of the system's server processes per successful operation, in
    /// microseconds: what the servers paid for the work, whoever set the pace.
    /// On a machine the client shares, a system whose client costs more gets
    /// fewer cycles for its servers; this figure depends far less on that (a
    /// busier server batches more, so it still falls with the rate). `None`
    /// when it could not be counted (no successful operation, or `/proc`
    /// unreadable).
    servers_us_per_op: Option<f64>,
    /// The first error, to say why `errors` is not 0.
    first_error: Option<String>,
}

/// The Supercluster side: clients for the leader and a follower.
struct PceSide {
    leader: sc_raft::Client,
    follower: sc_raft::Client,
    /// The follower's index, for admin API clients.
    follower_index: usize,
    /// Label hrefs for `api-read`.
    labels: Vec<String>,
    /// The transport alone, for `read-floor`.
    floor: Option<Floor>,
}

/// The etcd side: clients for the leader and a follower.
struct EtcdSide {
    leader: EtcdClient,
    follower: EtcdClient,
}

/// Asks `clients` until a side answers with one leader, for at most 60 s.
async fn side<T, F, Fut>(system: &str, mut clients: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let t0 = Instant::now();
    loop {
        match clients().await {
            Ok(side) => return Ok(side),
            Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                return Err(e.context(format!("{system}: no leader in 60 s")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn pce_side(pce: &Pce) -> Result<PceSide> {
    side("supercluster", || pce_clients(pce)).await
}

async fn pce_clients(pce: &Pce) -> Result<PceSide> {
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(sc_region::config::NodeConfig::load(&pce.config(i))?.client()?);
    }
    let mut ids = Vec::new();
    let mut leader = None;
    for c in &clients {
        let s = c.status().await?;
        ids.push(s.id);
        let l = s
            .leader
            .ok_or_else(|| anyhow!("{} knows no leader", s.name))?;
        if *leader.get_or_insert(l) != l {
            bail!("the nodes disagree on the leader");
        }
    }
    let leader = leader.ok_or_else(|| anyhow!("no nodes"))?;
    let li = ids
        .iter()
        .position(|id| *id == leader)
        .ok_or_else(|| anyhow!("leader {leader} is not one of the three nodes"))?;
    let fi = (li + 1) % 3;
    Ok(PceSide {
        leader: clients[li].clone(),
        follower: clients[fi].clone(),
        follower_index: fi,
        labels: Vec::new(),
        floor: None,
    })
}

async fn etcd_side(etcd: &Etcd) -> Result<EtcdSide> {
    side("etcd", || etcd_clients(etcd)).await
}

async fn etcd_clients(etcd: &Etcd) -> Result<EtcdSide> {
    let mut clients = Vec::new();
    let mut ids = Vec::new();
    let mut leader = None;
    for i in 0..3 {
        let mut c = EtcdClient::connect(&etcd.endpoint(i)).await?;
        let (id, l) = c.status().await?;
        if l == 0 {
            bail!("etcd member {i} knows no leader");
        }
        if *leader.get_or_insert(l) != l {
            bail!("etcd members disagree on the leader");
        }
        ids.push(id);
        clients.push(c);
    }
    let leader = leader.ok_or_else(|| anyhow!("no members"))?;
    let li = ids
        .iter()
        .position(|id| *id == leader)
        .ok_or_else(|| anyhow!("etcd leader {leader:x} is not one of the three members"))?;
    Ok(EtcdSide {
        leader: clients[li].clone(),
        follower: clients[(li + 1) % 3].clone(),
    })
}

fn read_key(n: u64) -> Vec<u8> {
    format!("bench/read/{:04}", n % READ_KEYS).into_bytes()
}

fn put(client: ClientId, serial: u64, key: Vec<u8>, value: Vec<u8>) -> Command {
    Command {
        client,
        serial,
        expect_revision: None,
        compare: vec![],
        ops: vec![Mutation::Put { key, value }],
    }
}

/// Writes the keys the reads read, and (when `api-read` runs) the labels.
async fn prepare(
    pce: &Pce,
    ps: &mut PceSide,
    es: &mut EtcdSide,
    value_size: usize,
    labels: bool,
) -> Result<()> {
    let value = vec![b'r'; value_size];
    let id = ClientId::random();
    for n in 0..READ_KEYS {
        let r = ps
            .leader
            .write(&put(id, n + 1, read_key(n), value.clone()))
            .await?;
        if r.outcome != Outcome::Applied {
            bail!("supercluster: preparing read keys: {:?}", r.outcome);
        }
        es.leader.put(read_key(n), value.clone()).await?;
    }
    if labels {
        let mut api = pce.api(ps.follower_index)?;
        let tag = sc_store::time::now_ms();
        for n in 0..READ_LABELS {
            let a = api
                .post(
                    "/api/v2/orgs/1/labels",
                    &json!({"key": "bench_compare", "value": format!("l{tag}-{n}")}),
                )
                .await?;
            if !a.status.is_success() {
                bail!("supercluster: creating a label: {}", a.status);
            }
            let href = a.json()["href"]
                .as_str()
                .ok_or_else(|| anyhow!("a created label has no href"))?
                .to_string();
            ps.labels.push(href);
        }
    }
    Ok(())
}

/// Per-client state for one level: what each system's task holds.
enum Worker {
    PceWrite(sc_raft::Client, ClientId),
    PceRead(sc_raft::Client, bool),
    PceApi(sc_leader::client::ApiClient, Arc<Vec<String>>),
    EtcdWrite(EtcdClient),
    EtcdRead(EtcdClient, bool),
}

impl Worker {
    /// One operation; `n` is the client's serial (from 1), `c` the client index.
    async fn op(&mut self, c: usize, n: u64, value: &[u8]) -> Result<()> {
        match self {
            Worker::PceWrite(client, id) => {
                let key = format!("bench/w/{c:04}/{n:010}").into_bytes();
                let r = client.write(&put(*id, n, key, value.to_vec())).await?;
                if r.outcome != Outcome::Applied {
                    bail!("write refused: {:?}", r.outcome);
                }
            }
            Worker::PceRead(client, linear) => {
                let (v, _) = client.read(&read_key(n * 7 + c as u64), *linear).await?;
                if v.is_none() {
                    bail!("a prepared key was not found");
                }
            }
            Worker::PceApi(api, labels) => {
                let href = &labels[(n as usize * 7 + c) % labels.len()];
                let a = api.get(&format!("/api/v2{href}")).await?;
                if !a.status.is_success() {
                    bail!("GET {href}: {}", a.status);
                }
            }
            Worker::EtcdWrite(client) => {
                let key = format!("bench/w/{c:04}/{n:010}").into_bytes();
                client.put(key, value.to_vec()).await?;
            }
            Worker::EtcdRead(client, serializable) => {
                let r = client
                    .get(read_key(n * 7 + c as u64), *serializable)
                    .await?;
                if r.kvs.is_empty() {
                    bail!("a prepared key was not found");
                }
            }
        }
        Ok(())
    }
}

/// Runs `workers` (one per client) for `run_for`; `at` names the level
/// (system, workload, round) in the result.
async fn run_level(
    at: (&'static str, Workload, usize),
    workers: Vec<Worker>,
    servers: &[u32],
    run_for: Duration,
    value_size: usize,
) -> Result<Level> {
    let clients = workers.len();
    let value = Arc::new(vec![b'x'; value_size]);
    let cpu_before = process_cpu();
    let servers_before = super::procs::cpu_of(servers);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut w) in workers.into_iter().enumerate() {
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("{e}"))?;
            let (mut errors, mut first_error, mut n) = (0u64, None, 0u64);
            while started.elapsed() < run_for {
                n += 1;
                let t = Instant::now();
                match w.op(c, n, &value).await {
                    Ok(()) => hist
                        .record(t.elapsed().as_micros().max(1) as u64)
                        .map_err(|e| anyhow!("{e}"))?,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            Ok::<_, anyhow::Error>((hist, errors, first_error))
        }));
    }
    let mut all =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("{e}"))?;
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        let (h, e, f) = t.await??;
        all.add(&h).map_err(|e| anyhow!("{e}"))?;
        errors += e;
        first_error = first_error.or(f);
    }
    let secs = started.elapsed().as_secs_f64();
    let client_cores = match (cpu_before, process_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() / secs,
        _ => 0.0,
    };
    let ops = all.len();
    let servers_us_per_op = match (servers_before, super::procs::cpu_of(servers)) {
        (Some(a), Some(b)) if ops > 0 => Some(b.saturating_sub(a).as_secs_f64() * 1e6 / ops as f64),
        _ => None,
    };
    Ok(Level {
        system: at.0,
        workload: at.1.name(),
        clients,
        round: at.2,
        ops,
        errors,
        ops_per_sec: ops as f64 / secs,
        p50_ms: super::pct(&all, 0.5),
        p99_ms: super::pct(&all, 0.99),
        client_cores,
        servers_us_per_op,
        first_error,
    })
}

/// CPU time this process has used so far (user and system, all threads);
/// `None` where the clock cannot be read, and the level then shows 0 cores.
fn process_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes into; the clock id is
    // a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

fn pce_workers(pce: &Pce, side: &PceSide, w: Workload, clients: usize) -> Result<Vec<Worker>> {
    let labels = Arc::new(side.labels.clone());
    let api = || -> Result<Worker> {
        Ok(Worker::PceApi(
            pce.api(side.follower_index)?,
            labels.clone(),
        ))
    };
    let write = || Worker::PceWrite(side.leader.clone(), ClientId::random());
    (0..clients)
        .map(|c| {
            Ok(match w {
                Workload::Write => write(),
                Workload::Read => Worker::PceRead(side.follower.clone(), false),
                Workload::ReadLinear => Worker::PceRead(side.follower.clone(), true),
                Workload::ApiRead => api()?,
                Workload::Mixed if c % 2 == 0 => write(),
                Workload::Mixed => api()?,
                Workload::ReadFloor => match &side.floor {
                    Some(f) => Worker::PceRead(f.client.clone(), false),
                    None => bail!("read-floor: the floor was not started"),
                },
            })
        })
        .collect()
}

fn etcd_workers(side: &EtcdSide, w: Workload, clients: usize) -> Vec<Worker> {
    (0..clients)
        .map(|c| match w {
            Workload::Write => Worker::EtcdWrite(side.leader.clone()),
            Workload::Mixed if c % 2 == 0 => Worker::EtcdWrite(side.leader.clone()),
            Workload::Read | Workload::ApiRead | Workload::Mixed | Workload::ReadFloor => {
                Worker::EtcdRead(side.follower.clone(), true)
            }
            Workload::ReadLinear => Worker::EtcdRead(side.follower.clone(), false),
        })
        .collect()
}

/// The median of `v` (sorted in place); 0 when empty.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The median of the values `f` counted over `levels`; `None` when none was.
fn counted_median(levels: &[&Level], f: fn(&Level) -> Option<f64>) -> Option<f64> {
    let mut v: Vec<f64> = levels.iter().filter_map(|l| f(l)).collect();
    (!v.is_empty()).then(|| median(&mut v))
}

/// A CPU figure in whole microseconds, or `n/a` where it was not counted.
fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"))
}

/// The time one 4 KiB write + fdatasync takes in `dir` (median of 100): the
/// disk both systems wait on, printed so a run can be read against another.
fn fsync_probe(dir: &std::path::Path) -> Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0u8; 4096];
    let mut ms = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    Ok(median(&mut ms))
}

/// `pce bench compare`.
pub async fn compare(args: CompareArgs) -> Result<()> {
    if let Some(config) = args.serve_floor.clone() {
        // Its own runtime, as a node's consensus runtime, on a thread of its
        // own (`block_on` cannot run inside the caller's runtime).
        let value = vec![b'r'; args.value_size];
        let keys = (0..READ_KEYS)
            .map(|n| (read_key(n), value.clone()))
            .collect();
        return std::thread::spawn(move || read_floor::serve(&config, keys))
            .join()
            .map_err(|_| anyhow!("the read floor's thread panicked"))?;
    }
    let workloads: Vec<Workload> = args
        .workloads
        .iter()
        .map(|s| Workload::parse(s))
        .collect::<Result<_>>()?;
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients: give positive client counts, e.g. 1,16,64");
    }
    if args.rounds == 0 || args.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    if args.client_threads == 0 {
        bail!("--client-threads must be at least 1");
    }
    let tmp = tempfile::tempdir()?;
    let dir = super::procs::run_dir(args.keep.as_ref(), &tmp)?;
    let fsync_ms = fsync_probe(&dir)?;
    eprintln!("a 4 KiB write + fdatasync here takes {fsync_ms:.2} ms (median of 100)");
    let mut etcd = Etcd::start(&args.etcd, &dir, Profile::Lan)?;
    let mut pce = match Pce::start(&dir, Profile::Lan, true) {
        Ok(p) => p,
        Err(e) => {
            etcd.stop_all();
            return Err(e);
        }
    };
    let result = measure_apart(&args, &workloads, &pce, &etcd);
    pce.stop_all();
    etcd.stop_all();
    let levels = result?;
    report(&args, &workloads, &levels, fsync_ms)
}

/// Runs [`measure`] on a runtime of its own with `--client-threads` workers,
/// driven from a thread of its own (`block_on` cannot run on a thread that is
/// already inside a runtime), so every client connection and task lives there
/// and not on the process's main runtime.
fn measure_apart(
    args: &CompareArgs,
    workloads: &[Workload],
    pce: &Pce,
    etcd: &Etcd,
) -> Result<Vec<Level>> {
    let threads = args.client_threads;
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("bench-clients".into())
                .spawn_scoped(scope, || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .thread_name("bench-client")
                        .enable_all()
                        .build()?;
                    rt.block_on(measure(args, workloads, pce, etcd))
                })?
                .join()
                .map_err(|_| anyhow!("the bench's client thread panicked"))?
        })
    })
}

async fn measure(
    args: &CompareArgs,
    workloads: &[Workload],
    pce: &Pce,
    etcd: &Etcd,
) -> Result<Vec<Level>> {
    let mut es = etcd_side(etcd).await?;
    let mut ps = pce_side(pce).await?;
    let api = workloads.contains(&Workload::ApiRead) || workloads.contains(&Workload::Mixed);
    prepare(pce, &mut ps, &mut es, args.value_size, api).await?;
    if workloads.contains(&Workload::ReadFloor) {
        let floor = Floor::start(&pce.config(ps.follower_index), args.value_size).await?;
        read_floor::check(&floor, &read_key(0)).await?;
        ps.floor = Some(floor);
    }
    let run_for = Duration::from_secs(args.seconds);
    let (etcd_pids, pce_pids) = (
        super::procs::pids(&etcd.procs),
        super::procs::pids(&pce.procs),
    );
    // A `read-floor` level counts the floor's process, not the nodes.
    let floor_pids: Vec<u32> = ps.floor.iter().map(Floor::pid).collect();
    let pids_of = |w: Workload| match w {
        Workload::ReadFloor => &floor_pids,
        _ => &pce_pids,
    };
    // Warm connections, caches and both processes' allocators (round 0, not kept).
    let warm = Duration::from_millis(500);
    for w in workloads {
        run_level(
            ("etcd", *w, 0),
            etcd_workers(&es, *w, 4),
            &etcd_pids,
            warm,
            args.value_size,
        )
        .await?;
        let workers = pce_workers(pce, &ps, *w, 4)?;
        run_level(
            ("supercluster", *w, 0),
            workers,
            pids_of(*w),
            warm,
            args.value_size,
        )
        .await?;
    }
    let mut levels = Vec::new();
    for round in 1..=args.rounds {
        for w in workloads {
            for &clients in &args.clients {
                let both = [
                    ("etcd", etcd_workers(&es, *w, clients), &etcd_pids),
                    (
                        "supercluster",
                        pce_workers(pce, &ps, *w, clients)?,
                        pids_of(*w),
                    ),
                ];
                for (system, workers, pids) in both {
                    let l = run_level((system, *w, round), workers, pids, run_for, args.value_size)
                        .await?;
                    eprintln!(
                        "round {round} {:<12} {:>3} clients {:<13} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  client {:.2} cores  servers {} us/op{}",
                        l.workload,
                        l.clients,
                        l.system,
                        l.ops_per_sec,
                        l.p50_ms,
                        l.p99_ms,
                        l.client_cores,
                        us(l.servers_us_per_op),
                        match &l.first_error {
                            Some(e) => format!("  {} errors, first: {e}", l.errors),
                            None => String::new(),
                        }
                    );
                    levels.push(l);
                }
            }
        }
    }
    Ok(levels)
}

/// One row of the summary: a workload at a client count, both systems.
#[derive(serde::Serialize)]
struct Summary {
    workload: &'static str,
    clients: usize,
    etcd_ops_per_sec: f64,
    supercluster_ops_per_sec: f64,
    /// Median over rounds of (Supercluster / etcd) throughput in the same round.
    ratio: f64,
    etcd_p50_ms: f64,
    etcd_p99_ms: f64,
    supercluster_p50_ms: f64,
    supercluster_p99_ms: f64,
    /// Median CPU of the bench process while it drove each system, in cores.
    etcd_client_cores: f64,
    supercluster_client_cores: f64,
    /// Median CPU of each system's servers per successful operation, in
    /// microseconds, over the rounds where it was counted.
    etcd_servers_us_per_op: Option<f64>,
    supercluster_servers_us_per_op: Option<f64>,
    /// Median over rounds of (etcd / Supercluster) server CPU per operation in
    /// the same round: above 1, our servers spent less on each operation.
    /// Only rounds where both were counted take part.
    cpu_ratio: Option<f64>,
    errors: u64,
}

fn summarise(workloads: &[Workload], clients: &[usize], levels: &[Level]) -> Vec<Summary> {
    let mut out = Vec::new();
    for w in workloads {
        for &c in clients {
            let of = |sys: &str| -> Vec<&Level> {
                levels
                    .iter()
                    .filter(|l| l.workload == w.name() && l.clients == c && l.system == sys)
                    .collect()
            };
            let (e, p) = (of("etcd"), of("supercluster"));
            let mut ratios: Vec<f64> = e
                .iter()
                .zip(&p)
                .filter(|(e, _)| e.ops_per_sec > 0.0)
                .map(|(e, p)| p.ops_per_sec / e.ops_per_sec)
                .collect();
            let mut cpu_ratios: Vec<f64> = e
                .iter()
                .zip(&p)
                .filter_map(|(e, p)| match (e.servers_us_per_op, p.servers_us_per_op) {
                    (Some(e), Some(p)) if p > 0.0 => Some(e / p),
                    _ => None,
                })
                .collect();
            let med = |ls: &[&Level], f: fn(&Level) -> f64| {
                median(&mut ls.iter().map(|l| f(l)).collect::<Vec<_>>())
            };
            out.push(Summary {
                workload: w.name(),
                clients: c,
                etcd_ops_per_sec: med(&e, |l| l.ops_per_sec),
                supercluster_ops_per_sec: med(&p, |l| l.ops_per_sec),
                ratio: median(&mut ratios),
                etcd_p50_ms: med(&e, |l| l.p50_ms),
                etcd_p99_ms: med(&e, |l| l.p99_ms),
                supercluster_p50_ms: med(&p, |l| l.p50_ms),
                supercluster_p99_ms: med(&p, |l| l.p99_ms),
                etcd_client_cores: med(&e, |l| l.client_cores),
                supercluster_client_cores: med(&p, |l| l.client_cores),
                etcd_servers_us_per_op: counted_median(&e, |l| l.servers_us_per_op),
                supercluster_servers_us_per_op: counted_median(&p, |l| l.servers_us_per_op),
                cpu_ratio: (!cpu_ratios.is_empty()).then(|| median(&mut cpu_ratios)),
                errors: e.iter().chain(&p).map(|l| l.errors).sum(),
            });
        }
    }
    out
}

fn report(
    args: &CompareArgs,
    workloads: &[Workload],
    levels: &[Level],
    fsync_ms: f64,
) -> Result<()> {
    let rows = summarise(workloads, &args.clients, levels);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "fsync_4k_ms": fsync_ms,
                "rounds": args.rounds,
                "seconds_per_level": args.seconds,
                "value_size": args.value_size,
                "client_threads": args.client_threads,
                "summary": rows,
                "levels": levels,
            }))?
        );
        return Ok(());
    }
    // The CPU counted is the whole bench process's, so this is a hint, not
    // a proof; but a client this busy may have set the pace.
    let busy = 0.9 * args.client_threads as f64;
    if levels.iter().any(|l| l.client_cores > busy) {
        println!(
            "note: the client used more than {busy:.1} cores in some level; it may have been \
             the limit there (try --client-threads {})",
            args.client_threads + 1
        );
    }
    println!(
        "\nmedians over {} rounds of {} s per system and level; fdatasync of 4 KiB: {fsync_ms:.2} ms; \
         clients on {} thread(s), their CPU in cores; the servers' CPU per operation in us, and \
         how many times less ours spent (cpu ratio)",
        args.rounds, args.seconds, args.client_threads
    );
    println!(
        "{:<12} {:>7} {:>10} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6}",
        "workload",
        "clients",
        "etcd/s",
        "sc/s",
        "ratio",
        "etcd p50",
        "etcd p99",
        "sc p50",
        "sc p99",
        "etcd cli",
        "sc cli",
        "etcd us",
        "sc us",
        "cpu ratio",
        "errors"
    );
    for r in &rows {
        println!(
            "{:<12} {:>7} {:>10.0} {:>10.0} {:>6.2}x {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8.2} {:>8.2} {:>8} {:>8} {:>9} {:>6}",
            r.workload,
            r.clients,
            r.etcd_ops_per_sec,
            r.supercluster_ops_per_sec,
            r.ratio,
            r.etcd_p50_ms,
            r.etcd_p99_ms,
            r.supercluster_p50_ms,
            r.supercluster_p99_ms,
            r.etcd_client_cores,
            r.supercluster_client_cores,
            us(r.etcd_servers_us_per_op),
            us(r.supercluster_servers_us_per_op),
            r.cpu_ratio
                .map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}x")),
            r.errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(system: &'static str, round: usize, ops_per_sec: f64) -> Level {
        Level {
            system,
            workload: "write",
            clients: 1,
            round,
            ops: 1,
            errors: 0,
            ops_per_sec,
            p50_ms: 1.0,
            p99_ms: 2.0,
            client_cores: 0.5,
            servers_us_per_op: Some(100.0 + ops_per_sec / 10.0),
            first_error: None,
        }
    }

    #[test]
    fn the_ratio_pairs_each_round_with_itself() {
        // Round 2 ran on a slower disk for both: per-round ratios are 0.5 and
        // 0.5, while a ratio of medians would mix the rounds (and medians of
        // two values pick the upper one).
        let levels = vec![
            level("etcd", 1, 1000.0),
            level("supercluster", 1, 500.0),
            level("etcd", 2, 400.0),
            level("supercluster", 2, 200.0),
            level("etcd", 3, 900.0),
            level("supercluster", 3, 450.0),
        ];
        let rows = summarise(&[Workload::Write], &[1], &levels);
        assert_eq!(rows.len(), 1);
        assert!((rows[0].ratio - 0.5).abs() < 1e-9, "{}", rows[0].ratio);
        assert_eq!(rows[0].etcd_ops_per_sec, 900.0);
        assert_eq!(rows[0].supercluster_ops_per_sec, 450.0);
        // Server CPU per operation pairs rounds the same way: 190 / 145.
        let cpu = rows[0].cpu_ratio.expect("counted in every round");
        assert!((cpu - 190.0 / 145.0).abs() < 1e-9, "{cpu}");
    }

    #[test]
    fn a_round_whose_cpu_was_not_counted_is_left_out_not_taken_as_zero() {
        let mut levels = vec![
            level("etcd", 1, 1000.0),
            level("supercluster", 1, 500.0),
            level("etcd", 2, 1000.0),
            level("supercluster", 2, 500.0),
        ];
        // Round 1: etcd's servers could not be counted.
        levels[0].servers_us_per_op = None;
        let rows = summarise(&[Workload::Write], &[1], &levels);
        assert_eq!(rows[0].etcd_servers_us_per_op, Some(200.0));
        let cpu = rows[0].cpu_ratio.expect("round 2 counted both");
        assert!((cpu - 200.0 / 150.0).abs() < 1e-9, "{cpu}");
        // No round counted ours: nothing to say, not 0.
        for l in levels.iter_mut().filter(|l| l.system == "supercluster") {
            l.servers_us_per_op = None;
        }
        let rows = summarise(&[Workload::Write], &[1], &levels);
        assert_eq!(rows[0].supercluster_servers_us_per_op, None);
        assert_eq!(rows[0].cpu_ratio, None);
    }

    #[test]
    fn an_unknown_workload_is_named_with_the_choices() {
        let err = Workload::parse("scan").unwrap_err().to_string();
        assert!(err.contains("scan") && err.contains("read-linear"), "{err}");
        assert!(err.contains("mixed") && err.contains("read-floor"), "{err}");
        for w in [
            "write",
            "read",
            "read-linear",
            "api-read",
            "mixed",
            "read-floor",
        ] {
            assert_eq!(Workload::parse(w).unwrap().name(), w);
        }
    }
}
