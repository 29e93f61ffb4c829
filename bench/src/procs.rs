//! The systems the comparative benchmarks run as real processes: a
//! three-region Supercluster (`pce up` for the data, then three `pce serve`) and
//! a three-member etcd, each on loopback addresses of its own, started, killed
//! and restarted the same way, so `bench failover` and `bench compare` measure
//! both under equal conditions.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sc_leader::client::ApiClient;
use sc_raft::{Profile, Timeouts};
use serde_json::Value;

use super::free_port;

/// The profile's name in a region's `node.toml`.
pub fn profile_name(p: Profile) -> &'static str {
    match p {
        Profile::Lan => "lan",
        Profile::Wan => "wan",
    }
}

fn sigkill(child: &mut Child) -> Result<()> {
    child.kill().context("SIGKILL")?;
    let _ = child.wait();
    Ok(())
}

/// Asks a process to stop, and kills it if it has not within 20 s (a bench
/// must end even when a node does not; the node itself gives up after 15 s).
fn sigint(child: &mut Child) {
    // SAFETY: kill(2) with a pid we started; no memory is shared.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "process {} did not stop within 20 s of SIGINT; killing it",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A process's stdout and stderr, appended to `path`.
/// Where a run keeps its processes' data and logs: `keep` (new or empty,
/// left behind for reading), else `tmp`, removed with it.
pub(crate) fn run_dir(keep: Option<&PathBuf>, tmp: &tempfile::TempDir) -> Result<PathBuf> {
    let Some(d) = keep else {
        return Ok(tmp.path().to_path_buf());
    };
    std::fs::create_dir_all(d).with_context(|| format!("--keep: creating {}", d.display()))?;
    if std::fs::read_dir(d)?.next().is_some() {
        bail!("--keep: {} is not empty; give a new directory", d.display());
    }
    Ok(d.clone())
}

fn log_to(path: &Path) -> Result<(Stdio, Stdio)> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let err = file.try_clone()?;
    Ok((Stdio::from(file), Stdio::from(err)))
}

/// The process ids of the nodes this bench holds (started and not yet
/// stopped or killed by it), to count their CPU.
pub(crate) fn pids(procs: &[Option<Child>]) -> Vec<u32> {
    procs.iter().flatten().map(Child::id).collect()
}

/// CPU time (user and system, every thread, living or exited) that the
/// processes `pids` have used so far, from `/proc/<pid>/stat`, in whole clock
/// ticks (10 ms each, usually); `None` when one cannot be read (it has been
/// reaped, or this is not Linux). A child that died but was not yet reaped
/// still reads, with its final count. A process's own clock is the only count
/// that keeps the time of threads that have already exited, such as a
/// blocking pool's.
pub(crate) fn cpu_of(pids: &[u32]) -> Option<Duration> {
    // SAFETY: sysconf with a constant name reads a value; no memory is shared.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    let mut total = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        total += stat_cpu_ticks(&stat)?;
    }
    Some(Duration::from_micros(
        total.saturating_mul(1_000_000) / ticks,
    ))
}

/// utime + stime of one `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) is in parentheses and may hold spaces or parentheses, so the
/// fields are counted from the last `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (field 3) ... utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Supercluster: `pce up` makes the data, then three `pce serve` processes.
pub(crate) struct Pce {
    pub(crate) exe: PathBuf,
    pub(crate) dir: PathBuf,
    /// The admin API's port (each region on its own 127.0.0.1x address).
    pub(crate) api_port: u16,
    pub(crate) procs: Vec<Option<Child>>,
    pub(crate) apis: Vec<ApiClient>,
    /// Label values must be unique: a run tag and a counter.
    pub(crate) tag: u64,
    pub(crate) seq: u64,
}

/// The regions `pce up` makes, in node order.
pub(crate) const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

impl Pce {
    /// Makes a new cluster's data in `dir/pce` and starts its three nodes;
    /// `unlimited_api` lifts the admin API's per-user rate limit (a benchmark
    /// of the API's own cost must not measure the limiter instead).
    pub(crate) fn start(dir: &Path, profile: Profile, unlimited_api: bool) -> Result<Pce> {
        let exe = std::env::current_exe()?;
        let (port, api_port, ven_port) = (free_port()?, free_port()?, free_port()?);
        let data = dir.join("pce");
        let mut up = Command::new(&exe)
            .args(["up", "--dir"])
            .arg(&data)
            .args(["--port", &port.to_string()])
            .args(["--api-port", &api_port.to_string()])
            .args(["--ven-port", &ven_port.to_string()])
            // Metrics on a port the OS picks: none is probed, none collides.
            .args(["--metrics-port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let t0 = Instant::now();
        while !data.join("owner-api-key.json").exists() {
            if t0.elapsed() > Duration::from_secs(60) {
                sigint(&mut up);
                bail!("pce up did not start in 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        sigint(&mut up);
        for r in REGIONS {
            let path = data.join(r).join("node.toml");
            let mut text = std::fs::read_to_string(&path)?.replace(
                "profile = \"lan\"",
                &format!("profile = \"{}\"", profile_name(profile)),
            );
            if unlimited_api {
                text = text.replace("[api]\n", "[api]\nrate = 0\n");
            }
            std::fs::write(&path, text)?;
        }
        let mut pce = Pce {
            exe,
            dir: data,
            api_port,
            procs: vec![None, None, None],
            apis: Vec::new(),
            tag: sc_store::time::now_ms(),
            seq: 0,
        };
        pce.apis = (0..3).map(|i| pce.api(i)).collect::<Result<_>>()?;
        for i in 0..3 {
            pce.start_node(i)?;
        }
        Ok(pce)
    }

    /// A new admin API client for node `i`, signed in with the owner's key.
    pub(crate) fn api(&self, i: usize) -> Result<ApiClient> {
        let ca = std::fs::read_to_string(self.dir.join("certs/ca.pem"))?;
        let key: Value = serde_json::from_str(&std::fs::read_to_string(
            self.dir.join("owner-api-key.json"),
        )?)?;
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8)),
            self.api_port,
        );
        Ok(ApiClient::new(addr, Some(&ca))?.with_key(
            key["auth_username"].as_str().unwrap_or_default(),
            key["secret"].as_str().unwrap_or_default(),
        ))
    }

    /// Node `i`'s configuration, whose certificates a benchmark client uses.
    pub(crate) fn config(&self, i: usize) -> PathBuf {
        self.dir.join(REGIONS[i]).join("node.toml")
    }

    /// Kills node `i` with SIGKILL (a crash, not a shutdown).
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.procs[i].take() {
            sigkill(&mut c)?;
        }
        Ok(())
    }

    /// Starts node `i` again on its data.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let region = self.dir.join(REGIONS[i]);
        let (out, err) = log_to(&region.join("node.log"))?;
        let child = Command::new(&self.exe)
            .args(["serve", "--config", "node.toml"])
            .current_dir(&region)
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting pce serve in {}", region.display()))?;
        self.procs[i] = Some(child);
        Ok(())
    }

    /// Stops every node still running.
    pub fn stop_all(&mut self) {
        for c in self.procs.iter_mut().filter_map(Option::take) {
            let mut c = c;
            sigint(&mut c);
        }
    }
}

/// etcd: three members on 127.0.0.21-23, its JSON gateway for writes.
pub(crate) struct Etcd {
    pub(crate) exe: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) peer_port: u16,
    pub(crate) client_port: u16,
    pub(crate) procs: Vec<Option<Child>>,
    pub(crate) clients: Vec<ApiClient>,
    /// Equal timeouts: etcd's heartbeat and base election timeout are ours.
    pub(crate) timeouts: Timeouts,
}

impl Etcd {
    /// Member `i`'s loopback address.
    pub(crate) fn ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 0, 21 + i as u8)
    }

    /// Starts a new three-member etcd with data in `dir/etcd`.
    pub(crate) fn start(exe: &Path, dir: &Path, profile: Profile) -> Result<Etcd> {
        let (peer_port, client_port) = (free_port()?, free_port()?);
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(ApiClient::new(
                SocketAddr::new(IpAddr::V4(Etcd::ip(i)), client_port),
                None,
            )?);
        }
        let mut e = Etcd {
            exe: exe.to_path_buf(),
            dir: dir.join("etcd"),
            peer_port,
            client_port,
            procs: vec![None, None, None],
            clients,
            timeouts: Timeouts::profile(profile),
        };
        for i in 0..3 {
            e.start_node(i)?;
        }
        Ok(e)
    }

    /// Member `i`'s gRPC endpoint (plain HTTP/2: etcd runs without TLS here).
    pub(crate) fn endpoint(&self, i: usize) -> String {
        format!("http://{}:{}", Etcd::ip(i), self.client_port)
    }

    /// Kills node `i` with SIGKILL (a crash, not a shutdown).
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        if let Some(mut c) = self.procs[i].take() {
            sigkill(&mut c)?;
        }
        Ok(())
    }

    /// Starts node `i` again on its data.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let peers: Vec<String> = (0..3)
            .map(|j| format!("e{j}=http://{}:{}", Etcd::ip(j), self.peer_port))
            .collect();
        let data = self.dir.join(format!("e{i}"));
        std::fs::create_dir_all(&self.dir)?;
        let (out, err) = log_to(&self.dir.join(format!("e{i}.log")))?;
        let ms = |d: Duration| d.as_millis().to_string();
        let child = Command::new(&self.exe)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--heartbeat-interval", &ms(self.timeouts.heartbeat)])
            .args(["--election-timeout", &ms(self.timeouts.election_min)])
            .args([
                "--listen-peer-urls",
                &format!("http://{}:{}", Etcd::ip(i), self.peer_port),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}:{}", Etcd::ip(i), self.peer_port),
            ])
            .args([
                "--listen-client-urls",
                &format!("http://{}:{}", Etcd::ip(i), self.client_port),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://{}:{}", Etcd::ip(i), self.client_port),
            ])
            .args(["--initial-cluster", &peers.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
            ])
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} (install etcd-server)", self.exe.display()))?;
        self.procs[i] = Some(child);
        Ok(())
    }

    /// Stops every node still running.
    pub fn stop_all(&mut self) {
        for c in self.procs.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = sigkill(&mut c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_name_with_spaces_and_parentheses() {
        // The first 22 fields of a line, with a name that holds spaces and
        // parentheses; utime (field 14) 1200 and stime (15) 34.
        let line = "4242 (pce (serve) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1200 34 0 0 20 0 9 0";
        assert_eq!(stat_cpu_ticks(line), Some(1234));
        assert_eq!(stat_cpu_ticks("4242 (cut short) S 1"), None);
    }

    #[test]
    fn a_process_cpu_count_moves_and_a_missing_process_reads_as_none() {
        let me = std::process::id();
        let start = cpu_of(&[me]).expect("/proc is readable here");
        // Spin until the kernel has charged this process at least one more
        // clock tick; the deadline only stops a broken reader from hanging.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_of(&[me]).expect("/proc is readable here") <= start {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
            assert!(
                Instant::now() < deadline,
                "no CPU counted after 30 s of spinning"
            );
        }
        // A process that is gone makes the whole count unknown, not smaller.
        assert_eq!(cpu_of(&[me, u32::MAX]), None);
    }
}
