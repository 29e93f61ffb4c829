//! What the drill checks before it touches a node's process or hands a
//! node's names to the operator's shell: a pid is only killed when it is the
//! process that listens on that node's API port here, and names go into
//! `sh -c` quoted, whatever a node calls itself.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};

/// The address in a `/proc/net/tcp{,6}` field (`0100007F` is 127.0.0.1:
/// each 32-bit group in the kernel's byte order).
fn proc_ip(hex: &str) -> Option<IpAddr> {
    let groups = (0..hex.len())
        .step_by(8)
        .map(|i| {
            hex.get(i..i + 8)
                .and_then(|g| u32::from_str_radix(g, 16).ok())
                .map(u32::to_le_bytes)
        })
        .collect::<Option<Vec<[u8; 4]>>>()?;
    match groups.as_slice() {
        [a] => Some(IpAddr::from(*a)),
        [a, b, c, d] => {
            let mut v6 = [0u8; 16];
            for (i, g) in [a, b, c, d].into_iter().enumerate() {
                v6[i * 4..i * 4 + 4].copy_from_slice(g);
            }
            let ip = Ipv6Addr::from(v6);
            Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4))
        }
        _ => None,
    }
}

/// The inodes of the sockets listening on `addr` (or on every address, at
/// its port) in this host's (this network namespace's) tables.
fn listening_inodes(addr: SocketAddr) -> Result<Vec<String>> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            // No IPv6 on this host.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {table}")),
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (the tenth column).
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let Some((ip, port)) = local.rsplit_once(':') else {
                continue;
            };
            let port = u16::from_str_radix(port, 16).ok();
            let ip = proc_ip(ip);
            let here = ip.is_some_and(|ip| ip.is_unspecified() || ip == addr.ip());
            // 0A: LISTEN.
            if port == Some(addr.port()) && here && *state == "0A" {
                inodes.push((*inode).to_string());
            }
        }
    }
    Ok(inodes)
}

/// Whether process `pid` holds a socket listening on `addr` here: the check
/// that the pid a node reported is that node's process on this host, not a
/// pid of another host or namespace that happens to exist here, nor another
/// node's on the same port of another loopback address. A process this user
/// may not inspect is not taken for it.
pub(super) fn listens_on(pid: u32, addr: SocketAddr) -> Result<bool> {
    let inodes = listening_inodes(addr)?;
    if inodes.is_empty() {
        return Ok(false);
    }
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => {
            return Ok(false)
        }
        Err(e) => return Err(e).with_context(|| format!("reading /proc/{pid}/fd")),
    };
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if inodes.iter().any(|i| target == format!("socket:[{i}]")) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `s` as one word for `sh -c`: single-quoted, a quote inside closed,
/// escaped and reopened.
pub(super) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_on_its_own_listening_address_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(listens_on(std::process::id(), addr).unwrap());
        // The same port on another loopback address is another node's.
        let other: SocketAddr = format!("127.0.0.2:{}", addr.port()).parse().unwrap();
        assert!(!listens_on(std::process::id(), other).unwrap());
        // Another process does not hold this test's socket.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!listens_on(child.id(), addr).unwrap());
        let _ = child.kill();
        let _ = child.wait();
        drop(l);
        assert!(!listens_on(std::process::id(), addr).unwrap());
    }

    #[test]
    fn proc_addresses_read_in_the_kernels_byte_order() {
        assert_eq!(proc_ip("0100007F"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(proc_ip("00000000"), Some("0.0.0.0".parse().unwrap()));
        assert_eq!(
            proc_ip("00000000000000000000000000000000"),
            Some("::".parse().unwrap())
        );
        // ::ffff:127.0.0.1, an IPv4 address on a dual-stack socket.
        assert_eq!(
            proc_ip("0000000000000000FFFF00000100007F"),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(proc_ip("zz"), None);
    }

    #[test]
    fn a_quoted_word_stays_one_word_whatever_it_holds() {
        for name in ["eu-1", "a b", "x'; rm -rf / #", "$(id)", "`id`", ""] {
            let out = std::process::Command::new("sh")
                .args(["-c", &format!("printf %s {}", quote(name))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), name);
        }
    }
}
