//! Histories of concurrent clients under faults are linearizable, and the checker
//! catches a real violation when one is planted.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sc_chaos::checker::check;
use sc_chaos::history::{History, RecordingClient};
use sc_raft::{Consistency, Node, NodeId};
use sc_testkit::TestCluster;

const KEYS: [&[u8]; 4] = [b"k0", b"k1", b"k2", b"k3"];

/// The seed comes from `CHAOS_SEED` (to replay a run) or is drawn and printed.
fn seed() -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos seed: {seed} (replay with CHAOS_SEED={seed})");
    seed
}

type Live = Arc<RwLock<BTreeMap<NodeId, Node>>>;

fn pick(live: &Live, rng: &mut StdRng) -> Option<Node> {
    let nodes = live.read().ok()?;
    let all: Vec<&Node> = nodes.values().collect();
    (!all.is_empty()).then(|| all[rng.random_range(0..all.len())].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients_under_partitions_slow_links_failed_disks_and_leader_loss_see_a_linearizable_store(
) {
    let seed = seed();
    let mut c = TestCluster::start(3).await;
    let history = History::new();
    let live: Live = Arc::new(RwLock::new(
        c.running_ids()
            .into_iter()
            .map(|id| (id, c.node(id).clone()))
            .collect(),
    ));
    let run_for = Duration::from_secs(15);
    let started = Instant::now();

    let mut clients = Vec::new();
    for n in 0..3usize {
        let (history, live) = (history.clone(), live.clone());
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64 + 1));
        clients.push(tokio::spawn(async move {
            let mut client = RecordingClient::new(n, history);
            let mut i = 0;
            while started.elapsed() < run_for {
                let Some(node) = pick(&live, &mut rng) else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let key = KEYS[rng.random_range(0..KEYS.len())];
                let ok = if rng.random_bool(0.5) {
                    i += 1;
                    client
                        .write(&node, key, format!("c{n}-{i}").as_bytes())
                        .await
                } else {
                    client
                        .read(&node, key, Consistency::Linearizable)
                        .await
                        .is_some()
                };
                if !ok {
                    // A client backs off after a failure instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }

    // The nemesis: every 0.5-1.5 s one fault, drawn from the seed.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut down: Option<NodeId> = None;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        let ids = [1u64, 2, 3];
        let victim = ids[rng.random_range(0..3)];
        match rng.random_range(0..7) {
            0 => {
                let others: Vec<NodeId> = ids.iter().copied().filter(|i| *i != victim).collect();
                c.faults.partition(&[victim], &others);
                eprintln!("nemesis: partition {victim} from {others:?}");
            }
            1 => {
                c.faults.heal();
                eprintln!("nemesis: heal the network");
            }
            2 => {
                let to = ids[(victim as usize) % 3];
                c.faults.block(victim, to);
                eprintln!("nemesis: drop {victim} -> {to}");
            }
            3 if down.is_none() => {
                // The leader's region fails.
                let leader = c
                    .running()
                    .first()
                    .and_then(|n| n.status().leader)
                    .unwrap_or(victim);
                if let Ok(mut l) = live.write() {
                    l.remove(&leader);
                }
                c.stop(leader).await;
                eprintln!("nemesis: stop the leader {leader}");
                down = Some(leader);
            }
            4 => {
                // A slow link, both ways.
                let to = ids[(victim as usize) % 3];
                let by = Duration::from_millis(rng.random_range(20..200));
                c.faults.delay(victim, to, by);
                c.faults.delay(to, victim, by);
                eprintln!("nemesis: slow link {victim} <-> {to} by {by:?}");
            }
            5 if down.is_none() => {
                // A disk that fails every write: the node must stop, never acknowledge.
                c.disk(victim).set_failing(true);
                eprintln!("nemesis: disk of {victim} fails every write");
                if let Ok(mut l) = live.write() {
                    l.remove(&victim);
                }
                down = Some(victim);
            }
            _ => {
                if let Some(id) = down.take() {
                    c.disk(id).set_failing(false);
                    c.stop(id).await;
                    let node = c.restart(id).await;
                    eprintln!("nemesis: restart {id} from its disk");
                    if let Ok(mut l) = live.write() {
                        l.insert(id, node);
                    }
                }
            }
        }
    }
    for client in clients {
        client.await.unwrap();
    }

    // Heal everything, let the replicas converge, and read every key once more.
    c.faults.heal();
    if let Some(id) = down.take() {
        c.disk(id).set_failing(false);
        c.stop(id).await;
        c.restart(id).await;
    }
    c.wait_converged(Duration::from_secs(30)).await;
    let mut last = RecordingClient::new(99, history.clone());
    for id in c.running_ids() {
        for key in KEYS {
            assert!(last
                .read(c.node(id), key, Consistency::Linearizable)
                .await
                .is_some());
        }
    }

    let ops = history.ops();
    let acked = ops.iter().filter(|o| o.complete.is_some()).count();
    eprintln!("{} operations, {acked} acknowledged", ops.len());
    assert!(
        acked > 50,
        "the run did too little to mean anything (seed {seed})"
    );
    if let Err(violations) = check(&ops) {
        let report: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
        panic!(
            "seed {seed}: history is not linearizable:\n{}",
            report.join("\n")
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_stale_reads_from_a_cut_off_replica() {
    // The planted bug: reads served from a replica's local state without asking
    // the leader (what a store that skipped ReadIndex would do).
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let isolated = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let majority: Vec<NodeId> = [1, 2, 3].into_iter().filter(|id| *id != isolated).collect();
    let history = History::new();
    let mut writer = RecordingClient::new(0, history.clone());
    let mut reader = RecordingClient::new(1, history.clone());
    assert!(writer.write(c.node(leader), b"k", b"v1").await);
    c.wait_converged(Duration::from_secs(30)).await;

    c.faults.partition(&[isolated], &majority);
    assert!(
        writer.write(c.node(leader), b"k", b"v2").await,
        "the majority commits"
    );
    let stale = reader
        .read(c.node(isolated), b"k", Consistency::Local)
        .await;
    assert_eq!(
        stale,
        Some(Some(b"v1".to_vec())),
        "the cut-off replica still has v1"
    );

    let violations =
        check(&history.ops()).expect_err("a read of v1 after v2 was acknowledged is a violation");
    assert_eq!(violations[0].key, b"k");
    assert!(!violations[0].gave_up, "decided, not abandoned");

    // The same read done right (ReadIndex through the leader) cannot be served
    // by the cut-off replica: it fails instead of lying.
    let honest = RecordingClient::new(2, history.clone())
        .read(c.node(isolated), b"k", Consistency::Linearizable)
        .await;
    assert_eq!(honest, None);
    c.faults.heal();
    c.shutdown().await;
}
