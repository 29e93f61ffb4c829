//! Ports for listeners that tests start themselves.
//!
//! Tests run side by side, and many of them start processes that bind a port
//! the test chose beforehand (it must go into configs and peers' addresses).
//! A port the kernel hands out for `:0` comes from its ephemeral range, the
//! same range every outgoing connection and every other `:0` listener draws
//! from, so between probing it and the process binding it another test could
//! take it. Ports here come from below that range instead, where the kernel
//! never picks one by itself, and no two calls in one test binary return the
//! same port.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: clear of the well-known and registered
/// services a developer's machine may run.
const FIRST: u32 = 20_000;

/// The first port of the kernel's ephemeral range (Linux's default when the
/// setting cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A port no listener on any address holds now, that the kernel will not
/// give to a `:0` bind or an outgoing connection, and that no other call in
/// this process has returned.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_start().max(FIRST + 1_000);
    let span = end - FIRST;
    // Test binaries run one after another, but a developer may run two at
    // once: each starts at its own offset.
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(FIRST + (offset + n) % span) else {
            continue;
        };
        // The unspecified address conflicts with a listener on any address,
        // so this also sees another process's 127.0.0.x listener.
        if TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
    // Everything below the ephemeral range is taken: fall back to the
    // kernel's choice, with the old race.
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
        for p in ports {
            assert!(u32::from(p) >= FIRST && u32::from(p) < ephemeral_start());
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).expect("the port is free");
        }
    }
}
