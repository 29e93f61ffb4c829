//! The collector thread: reads NFLOG and conntrack events from one socket and
//! adds them to the current interval's summaries, which the agent takes every
//! report interval; every `dump_every` it also reads conntrack's whole table,
//! so connections that stay open report their bytes as they flow.
//! Summaries keep growing (within their bound) while no member answers, so
//! nothing is lost to a short outage and a long one costs bounded memory.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sc_policy::flowlog::NFLOG_GROUP;
use sc_proto::ven::Flow;

use super::nflog::Seen;
use super::{conntrack, FlowSource, NflogReader, Summaries};
use crate::identity::VenError;

/// Distinct summaries kept per interval before new keys are dropped (and counted).
pub const MAX_KEYS: usize = 20_000;

/// A running collector.
pub struct Collector {
    summaries: Arc<Mutex<Summaries>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    /// Binds NFLOG and conntrack's events in this process's network
    /// namespace and starts reading; dumps conntrack's table every
    /// `dump_every`.
    pub fn start(dump_every: Duration) -> Result<Collector, VenError> {
        // Bind here, so a missing permission or kernel module is reported to
        // the caller rather than lost in the thread.
        let mut reader = NflogReader::open(NFLOG_GROUP, Duration::from_millis(250), true)
            .map_err(|e| VenError::Other(format!("cannot read NFLOG group {NFLOG_GROUP}: {e}")))?;
        if let Err(e) = conntrack::enable_accounting() {
            tracing::warn!(error = %e, "cannot turn on conntrack byte counting; flows will carry no bytes");
        }
        let summaries = Arc::new(Mutex::new(Summaries::new(MAX_KEYS)));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (summaries.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("flow-collector".into())
            .spawn(move || {
                let mut local = local_addresses();
                let mut dumped = Instant::now();
                while !st.load(Ordering::Relaxed) {
                    match reader.read() {
                        Ok(seen) if !seen.is_empty() => {
                            let now = super::now_ms();
                            if let Ok(mut sum) = s.lock() {
                                for event in &seen {
                                    match event {
                                        Seen::Logged(o) => sum.add(o, now),
                                        Seen::Conn(c) => sum.conn(c, now, |ip| local.contains(&ip)),
                                    }
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "NFLOG read failed; flow collection stops");
                            return;
                        }
                    }
                    if dumped.elapsed() >= dump_every {
                        dumped = Instant::now();
                        local = local_addresses();
                        match conntrack::dump(Duration::from_secs(2)) {
                            Ok(table) => {
                                let now = super::now_ms();
                                if let Ok(mut sum) = s.lock() {
                                    sum.dumped(&table, now, |ip| local.contains(&ip));
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "conntrack dump failed"),
                        }
                    }
                }
            })
            .map_err(|e| VenError::Other(format!("cannot start the flow collector: {e}")))?;
        Ok(Collector {
            summaries,
            stop,
            thread: Some(thread),
        })
    }
}

/// The addresses of this network namespace's interfaces (from
/// `getifaddrs`), to tell a connection's direction.
fn local_addresses() -> HashSet<IpAddr> {
    let mut out = HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we only read and
    // free once, below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family says which sockaddr the pointer holds.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.insert(IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.insert(IpAddr::from(a.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

impl FlowSource for Collector {
    fn ignore(&self, endpoints: &[std::net::SocketAddr]) {
        if let Ok(mut s) = self.summaries.lock() {
            s.ignore(endpoints);
        }
    }

    fn take(&self) -> (Vec<Flow>, u64) {
        let (list, dropped) = match self.summaries.lock() {
            Ok(mut s) => s.take(),
            Err(_) => return (vec![], 0),
        };
        (
            list.iter()
                .map(|(k, s)| super::summary::to_wire(k, s))
                .collect(),
            dropped,
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
