//! Failed sign-ins, counted per client address: past a few in a minute the
//! address is refused before its credentials are looked at, so guessing keys
//! costs the guesser time and the cluster nothing (no store lookup, no read
//! index, no audit write). A client sharing an address with a guesser waits
//! out the same minute: the price of not keeping per-user state for users
//! who do not exist.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have in one window before it is refused.
pub const MAX_FAILURES: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; older windows are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// Failure counts by address (a std Mutex: held for a map update, never
/// across an await).
#[derive(Default)]
pub struct FailedLogins {
    by_ip: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailedLogins {
    /// `Err(seconds to wait)` while `ip` is over its budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Ok(m) = self.by_ip.lock() else {
            return Ok(());
        };
        match m.get(&ip) {
            Some((since, n)) if *n >= MAX_FAILURES && since.elapsed() < WINDOW => {
                Err((WINDOW - since.elapsed()).as_secs() + 1)
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure of `ip`; returns its failures in this window.
    pub fn failed(&self, ip: IpAddr) -> u32 {
        let Ok(mut m) = self.by_ip.lock() else {
            return 0;
        };
        if m.len() >= MAX_TRACKED {
            m.retain(|_, (since, _)| since.elapsed() < WINDOW);
        }
        let e = m.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
        e.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_budget_and_others_are_not() {
        let f = FailedLogins::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for n in 1..=MAX_FAILURES {
            assert!(f.check(a).is_ok());
            assert_eq!(f.failed(a), n);
        }
        let wait = f.check(a).unwrap_err();
        assert!((1..=WINDOW.as_secs() + 1).contains(&wait), "{wait}");
        assert!(f.check(b).is_ok());
    }
}
