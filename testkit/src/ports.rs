//! Ports for listeners that tests start themselves.
//!
//! Tests run side by side, and many of them start processes that bind a port
//! the test chose beforehand (it must go into configs and peers' addresses).
//! A port the kernel hands out for `:0` comes from its ephemeral range, the
//! same range every outgoing connection and every other `:0` listener draws
//! from, so between probing it and the process binding it another test could
//! take it. Ports here come from outside that range instead (below it, or
//! above it when it starts low), where the kernel never picks one by itself,
//! and no two calls in one test binary return the same port.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: clear of the well-known and registered
/// services a developer's machine may run.
const FIRST: u32 = 20_000;

/// The kernel's ephemeral range, first and last port (Linux's default when
/// the setting cannot be read).
fn ephemeral_range() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

/// Where ports are handed out from: below the ephemeral range when there is
/// room there, else above it (hosts that give the kernel `1024 65535` have
/// neither, and get the kernel's choice).
fn unclaimed_range() -> Option<(u32, u32)> {
    let (start, end) = ephemeral_range();
    if start >= FIRST + 1_000 {
        Some((FIRST, start))
    } else if end + 1_000 < 65_536 {
        Some((end + 1, 65_536))
    } else {
        None
    }
}

/// A port no listener on any address holds now, that the kernel will not
/// give to a `:0` bind or an outgoing connection, and that no other call in
/// this process has returned.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if let Some((first, end)) = unclaimed_range() {
        let span = end - first;
        // Test binaries run one after another, but a developer may run two
        // at once: each starts at its own offset.
        let offset = std::process::id().wrapping_mul(7_919) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let Ok(port) = u16::try_from(first + (offset + n) % span) else {
                continue;
            };
            // The unspecified address conflicts with a listener on any
            // address, so this also sees another process's 127.0.0.x one.
            if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
                return port;
            }
        }
    }
    // No room outside the ephemeral range, or all of it taken: the kernel's
    // choice, with the race this module avoids elsewhere.
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        let (start, end) = ephemeral_range();
        for p in ports {
            if unclaimed_range().is_some() {
                assert!(
                    !(start..=end).contains(&u32::from(p)),
                    "{p} is in the ephemeral range {start}-{end}"
                );
            }
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("the port is free");
        }
    }
}
