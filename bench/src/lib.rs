//! `pce bench ...`: the benchmarks that print the figures `docs/benchmarks.md`
//! quotes, one module each, and the helpers they share.
//!
//! - [`write`]: committed writes against a running cluster;
//! - [`api`]: the admin API under load, and provisioning;
//! - [`vens`]: policy pushes to simulated VENs, and resync after a restart;
//! - [`failover`]: leader failover, against etcd in the same run;
//! - [`compare`]: writes and reads, against etcd in the same run;
//! - [`procs`]: both systems as real processes, for the two comparisons;
//! - [`floor`]: the transport's own cost under `bench vens`.

pub mod api;
pub mod compare;
mod estate;
mod etcd;
pub mod failover;
pub mod floor;
pub mod flows;
pub mod procs;
pub mod read_floor;
pub mod report;
pub mod vens;
pub mod visibility;
pub mod write;

use anyhow::Result;
use hdrhistogram::Histogram;

/// The `q` quantile of a histogram of microseconds, in milliseconds.
pub fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// A TCP port free on loopback right now (the OS picks it).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU time (user + system) a process has used, in milliseconds; `None` for
/// this process reads `/proc/self`. Lets the bench say how a round's work splits
/// between the PCE and the simulator sharing its cores.
pub fn cpu_ms(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at state (3).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 * 1000.0 / hz as f64)
}
