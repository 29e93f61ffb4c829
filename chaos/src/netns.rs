//! Test hosts as Linux network namespaces on one bridge, and the network faults
//! the fault suite injects between them with nftables.
//!
//! The bridge lives in the caller's namespace and may carry addresses of its own
//! (the harness reaches every host through them, and a delaying proxy listens on
//! one), so faults between hosts never cut the harness off. Every fault is a rule
//! in a table `inet sc_chaos` (drops) or `ip sc_chaos_nat` (redirects) inside a
//! host's namespace; healing deletes those tables, which leaves nothing behind.
//! The kernel here has no netem, so slow links are a redirect through
//! [`crate::proxy::DelayProxy`].

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};

/// Why the network could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command failed; its output says why.
    #[error("`{cmd}` failed: {out}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it printed.
        out: String,
    },
    /// Not root, or `ip`/`nft` missing.
    #[error("network namespaces need root, `ip` (iproute2) and `nft` (nftables): {0}")]
    Unavailable(String),
    /// A host name this network does not have.
    #[error("no host {0:?} in this network")]
    UnknownHost(String),
}

/// Runs a command; its combined output, or an error carrying it.
pub fn run(cmd: &[&str]) -> Result<String, NetError> {
    let line = cmd.join(" ");
    let out: Output =
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .map_err(|e| NetError::Command {
                cmd: line.clone(),
                out: e.to_string(),
            })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(NetError::Command {
            cmd: line,
            out: text,
        })
    }
}

/// Whether this process may build namespaces: root, with `ip` and `nft` present.
pub fn available() -> Result<(), NetError> {
    // SAFETY: geteuid(2) has no preconditions and touches no memory of ours.
    if unsafe { libc::geteuid() } != 0 {
        return Err(NetError::Unavailable("not root".into()));
    }
    run(&["ip", "-V"]).map_err(|e| NetError::Unavailable(e.to_string()))?;
    run(&["nft", "--version"]).map_err(|e| NetError::Unavailable(e.to_string()))?;
    Ok(())
}

/// One host: a namespace with one veth end on the bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// The caller's name for it (`r1`, `web`).
    pub name: String,
    /// The namespace's name.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
}

/// A bridge, addresses on it for the caller, and hosts behind it. Dropping it
/// removes the namespaces and the bridge.
pub struct Net {
    bridge: String,
    /// Addresses the bridge carries in the caller's namespace.
    pub hub: Vec<Ipv4Addr>,
    /// The hosts, in the order given.
    pub hosts: Vec<Host>,
}

impl Net {
    /// Builds `10.<b>.<c>.0/24` (from `subnet`, e.g. `[10, 214, 7]`) with the
    /// bridge addresses `hub` (last octets) and one namespace per host. `tag`
    /// keeps names of concurrent runs apart (interface names allow 15 bytes).
    pub fn create(
        tag: &str,
        subnet: [u8; 3],
        hub: &[u8],
        hosts: &[(&str, u8)],
    ) -> Result<Net, NetError> {
        available()?;
        let ip = |last: u8| Ipv4Addr::new(subnet[0], subnet[1], subnet[2], last);
        let net = Net {
            bridge: format!("scbr{tag}"),
            hub: hub.iter().map(|l| ip(*l)).collect(),
            hosts: hosts
                .iter()
                .map(|(name, last)| Host {
                    name: name.to_string(),
                    ns: format!("sc{tag}-{name}"),
                    ip: ip(*last),
                })
                .collect(),
        };
        // Leftovers of a run with the same tag that was killed before its cleanup.
        net.teardown();
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        for a in &net.hub {
            run(&["ip", "addr", "add", &format!("{a}/24"), "dev", &net.bridge])?;
        }
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        for (i, h) in net.hosts.iter().enumerate() {
            let (a, b) = (format!("sc{tag}v{i}a"), format!("sc{tag}v{i}b"));
            run(&["ip", "netns", "add", &h.ns])?;
            run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
            run(&["ip", "link", "set", &a, "master", &net.bridge])?;
            run(&["ip", "link", "set", &a, "up"])?;
            run(&["ip", "link", "set", &b, "netns", &h.ns])?;
            run(&[
                "ip",
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.ip),
                "dev",
                &b,
            ])?;
            run(&["ip", "-n", &h.ns, "link", "set", &b, "up"])?;
            run(&["ip", "-n", &h.ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Result<&Host, NetError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| NetError::UnknownHost(name.to_string()))
    }

    /// A command that runs inside `host`'s namespace.
    pub fn exec(&self, host: &str, args: &[&str]) -> Result<Command, NetError> {
        let h = self.host(host)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &h.ns]).args(args);
        Ok(c)
    }

    /// Feeds an nftables script to `nft -f -` inside `host`.
    pub fn nft(&self, host: &str, script: &str) -> Result<(), NetError> {
        use std::io::Write;
        let h = self.host(host)?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &h.ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| NetError::Command {
                cmd: "nft -f -".into(),
                out: e.to_string(),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| NetError::Command {
            cmd: "nft -f -".into(),
            out: e.to_string(),
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NetError::Command {
                cmd: format!("nft -f - in {}: {script}", h.ns),
                out: String::from_utf8_lossy(&out.stderr).to_string(),
            })
        }
    }

    /// Resets every established TCP connection of `host` (`ss -K`: the
    /// kernel aborts each socket and answers its peer's next packet with a
    /// reset), as a middlebox or a flapping link would, while every process
    /// lives. Listening sockets stay. Returns how many were reset.
    pub fn reset_connections(&self, host: &str) -> Result<usize, NetError> {
        let out = self
            .exec(host, &["ss", "-K", "-t", "-n", "state", "established"])?
            .output()
            .map_err(|e| NetError::Command {
                cmd: "ss -K".into(),
                out: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(NetError::Command {
                cmd: format!("ss -K in {host}"),
                out: String::from_utf8_lossy(&out.stderr).to_string(),
            });
        }
        // A header line, then one line per socket reset.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count())
    }

    /// Drops every packet `from` sends to `to` (a one-way cut; two calls make a
    /// partition). Packets already in flight and the harness's own traffic pass.
    pub fn cut(&self, from: &str, to: &str) -> Result<(), NetError> {
        let dst = self.host(to)?.ip;
        self.nft(
            from,
            &format!(
                "table inet sc_chaos {{\n chain out {{ type filter hook output priority 0; }}\n}}\nadd rule inet sc_chaos out ip daddr {dst} drop\n"
            ),
        )
    }

    /// Sends `from`'s new TCP connections to `to:port` through `via` (a proxy in
    /// the caller's namespace), and drops its connections that did not go through
    /// it, so they break and are made again through the proxy.
    pub fn redirect(
        &self,
        from: &str,
        to: &str,
        port: u16,
        via: SocketAddr,
    ) -> Result<(), NetError> {
        let dst = self.host(to)?.ip;
        self.nft(
            from,
            &format!(
                "table ip sc_chaos_nat {{\n chain out {{ type nat hook output priority -100; }}\n chain post {{ type nat hook postrouting priority 100; }}\n}}\n\
                 add rule ip sc_chaos_nat out ip daddr {dst} tcp dport {port} dnat to {via}\n\
                 table inet sc_chaos {{\n chain out {{ type filter hook output priority 0; }}\n}}\n\
                 add rule inet sc_chaos out ip daddr {dst} tcp dport {port} drop\n"
            ),
        )
    }

    /// Removes every fault rule from every host.
    pub fn heal(&self) -> Result<(), NetError> {
        for h in &self.hosts {
            for table in ["inet sc_chaos", "ip sc_chaos_nat"] {
                // Absent tables are fine: nothing to heal there.
                let _ = self.nft(&h.name, &format!("delete table {table}\n"));
            }
        }
        Ok(())
    }

    fn teardown(&self) {
        for h in &self.hosts {
            let _ = run(&["ip", "netns", "del", &h.ns]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}
