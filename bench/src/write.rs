//! `pce bench write`: committed writes per second and latency against a running
//! cluster, at several client counts, over the real path (mutual TLS, leader,
//! replication to a quorum, fsync on every node).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use sc_raft::{Client, ClientId, Command, Mutation, Outcome};

/// Options of `pce bench write`.
#[derive(clap::Args)]
pub struct WriteArgs {
    /// Configuration of a node of the cluster (its certificates are used).
    #[arg(long)]
    config: PathBuf,
    /// Client counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Seconds to measure each client count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Size of every written value in bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Send writes to this node (forwarded to the leader) instead of the leader.
    #[arg(long)]
    via_member: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The figures of one client count.
#[derive(Debug, serde::Serialize)]
struct Row {
    clients: usize,
    writes: u64,
    errors: u64,
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

async fn one_level(
    target: &Client,
    clients: usize,
    run_for: Duration,
    value_size: usize,
) -> Result<Row> {
    let value = Arc::new(vec![b'x'; value_size]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = target.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let id = ClientId::random();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut errors = 0u64;
            let mut serial = 0u64;
            while started.elapsed() < run_for {
                serial += 1;
                let cmd = Command {
                    client: id,
                    serial,
                    expect_revision: None,
                    compare: vec![],
                    ops: vec![Mutation::Put {
                        key: format!("bench/{c:04}/{serial:010}").into_bytes(),
                        value: value.to_vec(),
                    }],
                };
                let t = Instant::now();
                match client.write(&cmd).await {
                    Ok(r) if r.outcome == Outcome::Applied => {
                        hist.record(t.elapsed().as_micros().max(1) as u64)
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                    _ => errors += 1,
                }
            }
            Ok::<_, anyhow::Error>((hist, errors))
        }));
    }
    let mut all =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        all.add(&h).map_err(|e| anyhow::anyhow!("{e}"))?;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Row {
        clients,
        writes: all.len(),
        errors,
        writes_per_sec: all.len() as f64 / elapsed,
        p50_ms: ms(all.value_at_quantile(0.5)),
        p99_ms: ms(all.value_at_quantile(0.99)),
        max_ms: ms(all.max()),
    })
}

/// Runs the benchmark and prints one row per client count.
pub async fn write(args: WriteArgs) -> Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients: give positive client counts, e.g. 1,16,64,256");
    }
    let node = sc_region::config::NodeConfig::load(&args.config)?.client()?;
    let target = if args.via_member {
        node
    } else {
        node.leader().await.context("finding the leader")?
    };
    eprintln!(
        "writing to {} ({}-byte values, {} s per level)",
        target.target(),
        args.value_size,
        args.seconds
    );
    // Warm up connections and caches.
    one_level(&target, 4, Duration::from_millis(500), args.value_size).await?;
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let row = one_level(
            &target,
            clients,
            Duration::from_secs(args.seconds),
            args.value_size,
        )
        .await?;
        if !args.json {
            if rows.is_empty() {
                println!(
                    "{:>8} {:>9} {:>7} {:>12} {:>9} {:>9} {:>9}",
                    "clients", "writes", "errors", "writes/s", "p50 ms", "p99 ms", "max ms"
                );
            }
            println!(
                "{:>8} {:>9} {:>7} {:>12.0} {:>9.2} {:>9.2} {:>9.2}",
                row.clients,
                row.writes,
                row.errors,
                row.writes_per_sec,
                row.p50_ms,
                row.p99_ms,
                row.max_ms
            );
        }
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
