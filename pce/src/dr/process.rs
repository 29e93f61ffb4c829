//! What the drill checks before it touches a node's process or hands a
//! node's names to the operator's shell: a pid is only killed when it is the
//! process that listens on that node's API port here, and names go into
//! `sh -c` quoted, whatever a node calls itself.

use std::io::ErrorKind;

use anyhow::{Context, Result};

/// The inodes of the sockets listening on TCP `port` in this host's (this
/// network namespace's) tables.
fn listening_inodes(port: u16) -> Result<Vec<String>> {
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
            let here = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A: LISTEN.
            if here == Some(port) && *state == "0A" {
                inodes.push((*inode).to_string());
            }
        }
    }
    Ok(inodes)
}

/// Whether process `pid` holds a socket listening on TCP `port` here: the
/// check that the pid a node reported is that node's process on this host,
/// not a pid of another host or namespace that happens to exist here.
pub(super) fn listens_on(pid: u32, port: u16) -> Result<bool> {
    let inodes = listening_inodes(port)?;
    if inodes.is_empty() {
        return Ok(false);
    }
    let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
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
    fn this_process_is_found_on_its_own_listening_port_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port).unwrap());
        drop(l);
        assert!(!listens_on(std::process::id(), port).unwrap());
        // pid 1 does not hold this test's socket.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!listens_on(1, l.local_addr().unwrap().port()).unwrap());
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
