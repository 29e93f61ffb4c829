//! `pce bench failover`: the leader's process is killed (SIGKILL) while one
//! writer writes through a follower; the time until writes succeed again, for
//! Supercluster and for etcd with equal timeouts, measured by the same writer.
//!
//! Both systems run as three local processes on loopback addresses of their own.
//! Supercluster uses the LAN profile (heartbeat 100 ms, followers campaign
//! election_min..election_max after the last heartbeat); etcd gets the same
//! heartbeat and `--election-timeout` = the profile's election_min, which etcd
//! randomises over 1-2x. `--profile wan` uses the WAN profile for both. A round: find the leader, start writing
//! (one write every 10 ms, each abandoned after 100 ms, through a follower), kill the
//! leader, and record the kill → first acknowledged write after it; then restart
//! the killed process and wait until the cluster is whole before the next round.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use base64::Engine as _;
use sc_raft::Profile;
use serde_json::json;

use super::procs::{Etcd, Pce};
use crate::report::Report;

/// Options of `pce bench failover`.
#[derive(clap::Args)]
pub struct FailoverArgs {
    /// `pce`, `etcd`, or both.
    #[arg(long, value_delimiter = ',', default_value = "pce,etcd")]
    systems: Vec<String>,
    /// Kills per system.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// Timeout profile of both systems: `lan` or `wan`.
    #[arg(long, default_value = "lan", value_parser = parse_profile)]
    profile: Profile,
    /// Run in this directory and keep it: data, and each process's log
    /// (`pce/<region>/node.log`, `etcd/e<N>.log`), appended across restarts,
    /// to read why a slow failover was slow. By default a temporary directory
    /// is used and removed.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Print the figures as one JSON document (the table goes to stderr).
    #[arg(long)]
    json: bool,
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    match s {
        "lan" => Ok(Profile::Lan),
        "wan" => Ok(Profile::Wan),
        other => Err(format!("{other:?}: give lan or wan")),
    }
}

/// One system under test: three processes, a way to find the leader, a write.
trait System {
    fn name(&self) -> &'static str;
    /// The index (0..3) of the leader, if the cluster has one everyone agrees on.
    async fn leader(&mut self) -> Option<usize>;
    /// One write through node `via`.
    async fn write(&mut self, via: usize, n: u64) -> Result<()>;
    /// Forgets node `via`'s connection (after an abandoned write).
    fn reset(&mut self, via: usize);
    fn kill(&mut self, i: usize) -> Result<()>;
    fn restart(&mut self, i: usize) -> Result<()>;
    fn stop(&mut self);
}

impl System for Pce {
    fn name(&self) -> &'static str {
        "supercluster"
    }

    async fn leader(&mut self) -> Option<usize> {
        for (i, api) in self.apis.iter_mut().enumerate() {
            if self.procs[i].is_none() {
                continue;
            }
            if let Ok(Ok(a)) = tokio::time::timeout(
                Duration::from_millis(500),
                api.get("/api/v2/supercluster/leader"),
            )
            .await
            {
                if a.status.is_success() {
                    return Some(i);
                }
            }
        }
        None
    }

    async fn write(&mut self, via: usize, _n: u64) -> Result<()> {
        self.seq += 1;
        let value = format!("w{}-{}", self.tag, self.seq);
        let a = self.apis[via]
            .post(
                "/api/v2/orgs/1/labels",
                &json!({"key": "bench_failover", "value": value}),
            )
            .await?;
        if a.status.is_success() {
            Ok(())
        } else {
            bail!("{}", a.status)
        }
    }

    fn reset(&mut self, via: usize) {
        self.apis[via].reset();
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        self.kill_node(i)
    }

    fn restart(&mut self, i: usize) -> Result<()> {
        self.start_node(i)
    }

    fn stop(&mut self) {
        self.stop_all()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl System for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn leader(&mut self) -> Option<usize> {
        let mut leader = None;
        let mut ids = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            let a = tokio::time::timeout(
                Duration::from_millis(500),
                c.post("/v3/maintenance/status", &json!({})),
            )
            .await
            .ok()?
            .ok()?;
            let v = a.json();
            ids.push((i, v["header"]["member_id"].as_str()?.to_string()));
            let l = v["leader"].as_str()?.to_string();
            if leader.get_or_insert_with(|| l.clone()) != &l {
                return None;
            }
        }
        let leader = leader?;
        ids.into_iter()
            .find(|(_, id)| *id == leader)
            .map(|(i, _)| i)
    }

    async fn write(&mut self, via: usize, n: u64) -> Result<()> {
        let a = self.clients[via]
            .post(
                "/v3/kv/put",
                &json!({"key": b64(&format!("bench/{n}")), "value": b64("x")}),
            )
            .await?;
        if a.status.is_success() && a.json().get("header").is_some() {
            Ok(())
        } else {
            bail!("{} {}", a.status, String::from_utf8_lossy(&a.body))
        }
    }

    fn reset(&mut self, via: usize) {
        self.clients[via].reset();
    }

    fn kill(&mut self, i: usize) -> Result<()> {
        self.kill_node(i)
    }

    fn restart(&mut self, i: usize) -> Result<()> {
        self.start_node(i)
    }

    fn stop(&mut self) {
        self.stop_all()
    }
}

/// Waits until the system has a leader every node agrees on and a write succeeds
/// through every node.
async fn settle<S: System>(s: &mut S, timeout: Duration) -> Result<usize> {
    let t0 = Instant::now();
    loop {
        if let Some(l) = s.leader().await {
            let mut all = true;
            for via in 0..3 {
                let w = tokio::time::timeout(Duration::from_secs(2), s.write(via, 0)).await;
                all &= matches!(w, Ok(Ok(())));
            }
            if all {
                return Ok(l);
            }
        }
        if t0.elapsed() > timeout {
            bail!("{}: no settled leader in {timeout:?}", s.name());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long one write may take before the writer gives up on it and sends the
/// next (the resolution of the measurement).
const ATTEMPT: Duration = Duration::from_millis(100);

/// One kill: returns kill → first acknowledged write invoked after it, and
/// the wall-clock time of the kill (ms since the epoch, to find it in logs).
async fn round<S: System>(s: &mut S) -> Result<(Duration, u64)> {
    let leader = settle(s, Duration::from_secs(60)).await?;
    let via = (leader + 1) % 3;
    let mut n = 0u64;
    // Warm: a few writes before the kill.
    for _ in 0..20 {
        n += 1;
        let _ = tokio::time::timeout(Duration::from_secs(1), s.write(via, n)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.kill(leader)?;
    let killed = Instant::now();
    let killed_ms = sc_store::time::now_ms();
    let rto = loop {
        n += 1;
        match tokio::time::timeout(ATTEMPT, s.write(via, n)).await {
            Ok(Ok(())) => break killed.elapsed(),
            Ok(Err(_)) => {}
            // Abandoned: a fresh connection for the next attempt.
            Err(_) => s.reset(via),
        }
        if killed.elapsed() > Duration::from_secs(60) {
            bail!("{}: no write succeeded within 60 s of the kill", s.name());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    s.restart(leader)?;
    Ok((rto, killed_ms))
}

async fn measure<S: System>(mut s: S, rounds: usize, report: &mut Report) -> Result<Vec<Duration>> {
    let mut out = Vec::new();
    let r = async {
        for i in 0..rounds {
            let (rto, killed_ms) = round(&mut s).await?;
            let rto_ms = rto.as_secs_f64() * 1000.0;
            report.line(format!(
                "  {} kill {} (at {}.{:03} s since the epoch): {rto_ms:.0} ms",
                s.name(),
                i + 1,
                killed_ms / 1000,
                killed_ms % 1000,
            ));
            report.row(
                "kills",
                json!({"system": s.name(), "kill": i + 1, "killed_at": sc_store::time::iso8601(killed_ms), "rto_ms": rto_ms}),
            );
            out.push(rto);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    s.stop();
    r.map(|_| out)
}

fn summary(name: &str, v: &[Duration], report: &mut Report) {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms.get(ms.len() / 2).copied().unwrap_or(0.0);
    let max = ms.last().copied().unwrap_or(0.0);
    report.line(format!(
        "{name:<14} {:>6} {median:>12.0} {max:>9.0}",
        ms.len()
    ));
    report.row(
        "summary",
        json!({"system": name, "kills": ms.len(), "median_ms": median, "max_ms": max}),
    );
}

/// `pce bench failover`.
pub async fn failover(args: FailoverArgs) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = super::procs::run_dir(args.keep.as_ref(), &tmp)?;
    let mut report = Report::new("failover", args.json);
    report.set(
        "options",
        json!({"systems": args.systems, "rounds": args.rounds, "profile": format!("{:?}", args.profile).to_lowercase()}),
    );
    let mut results = Vec::new();
    for sys in &args.systems {
        report.line(format!("{sys}: {} rounds", args.rounds));
        let r = match sys.as_str() {
            "pce" => {
                let s = Pce::start(&dir, args.profile, false)?;
                measure(s, args.rounds, &mut report).await?
            }
            "etcd" => {
                let s = Etcd::start(&args.etcd, &dir, args.profile)?;
                measure(s, args.rounds, &mut report).await?
            }
            other => return Err(anyhow!("--systems: unknown system {other:?} (pce, etcd)")),
        };
        results.push((sys.clone(), r));
    }
    report.line("");
    report.line(format!(
        "{:<14} {:>6} {:>12} {:>9}",
        "system", "kills", "median ms", "max ms"
    ));
    for (name, r) in &results {
        summary(name, r, &mut report);
    }
    report.finish()
}
