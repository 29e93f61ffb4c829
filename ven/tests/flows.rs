//! Flow collection from the kernel, with real packets: two network namespaces
//! joined by a veth pair, a rule set in one that logs its decisions as the
//! renderer does (`sc_policy::flowlog`), and the VEN's NFLOG reader in that
//! namespace. An allowed connection must come back `allowed` with its rule, a
//! dropped one `blocked` by the default deny. Needs root (namespaces, nft).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use sc_policy::flowlog::{Decision, Direction, Logged, NFLOG_GROUP};
use sc_policy::model::RuleRef;
use sc_ven::flows::{NflogReader, Observed};

fn run(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut c = Command::new(args[0]);
    c.args(&args[1..]).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(pipe);
    let st = child.wait().expect("wait");
    assert!(st.success(), "{args:?} failed");
}

/// Two namespaces `a` (the workload, 10.213.7.1) and `b` (its peer, .2),
/// removed on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new() -> Pair {
        let id = std::process::id() % 100_000;
        let p = Pair {
            a: format!("scfa{id}"),
            b: format!("scfb{id}"),
        };
        let (va, vb) = (format!("vfa{id}"), format!("vfb{id}"));
        run(&["ip", "netns", "add", &p.a], None);
        run(&["ip", "netns", "add", &p.b], None);
        run(
            &[
                "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
            ],
            None,
        );
        run(&["ip", "link", "set", &va, "netns", &p.a], None);
        run(&["ip", "link", "set", &vb, "netns", &p.b], None);
        for (ns, dev, host) in [(&p.a, &va, 1), (&p.b, &vb, 2)] {
            let addr = format!("10.213.7.{host}/24");
            run(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev], None);
            run(&["ip", "-n", ns, "link", "set", dev, "up"], None);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"], None);
        }
        p
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("open netns");
    // SAFETY: a valid namespace descriptor; only this thread moves.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

#[test]
fn allowed_and_blocked_connections_are_read_from_nflog_with_their_rule() {
    let pair = Pair::new();
    let allow = Logged {
        decision: Decision::Allowed,
        direction: Direction::Inbound,
        rule: Some(RuleRef::Allow {
            rule_set: "rs-web".into(),
            rule: "r-8080".into(),
        }),
    };
    let default = Logged {
        decision: Decision::Blocked,
        direction: Direction::Inbound,
        rule: None,
    };
    let rules = format!(
        "table inet pce {{\n  chain input {{\n    type filter hook input priority 0; policy drop;\n    ct state established,related accept\n    iif \"lo\" accept\n    ip saddr 10.213.7.2 tcp dport 8080 log prefix \"{allow}\" group {NFLOG_GROUP} accept\n    log prefix \"{default}\" group {NFLOG_GROUP}\n  }}\n}}\n"
    );
    run(
        &["ip", "netns", "exec", &pair.a, "nft", "-f", "-"],
        Some(&rules),
    );

    // The workload's side: the reader and a listener, in namespace a.
    let (tx, rx) = std::sync::mpsc::channel::<Observed>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = pair.a.clone();
    let stopped = stop.clone();
    let workload = std::thread::spawn(move || {
        enter(&a);
        let mut reader =
            NflogReader::open(NFLOG_GROUP, Duration::from_millis(100)).expect("bind nflog");
        let listener = TcpListener::bind("10.213.7.1:8080").expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = listener.accept();
            for o in reader.read().expect("read nflog") {
                if tx.send(o).is_err() {
                    return;
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("reader ready");

    // The peer's side, in namespace b.
    let b = pair.b.clone();
    std::thread::spawn(move || {
        enter(&b);
        let ok: SocketAddr = "10.213.7.1:8080".parse().expect("addr");
        let ssh: SocketAddr = "10.213.7.1:22".parse().expect("addr");
        assert!(
            TcpStream::connect_timeout(&ok, Duration::from_secs(3)).is_ok(),
            "the allowed connection is refused"
        );
        assert!(
            TcpStream::connect_timeout(&ssh, Duration::from_millis(500)).is_err(),
            "the dropped connection got through"
        );
    })
    .join()
    .expect("peer");

    let mut seen: Vec<Observed> = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    let has = |seen: &[Observed], d: Decision, port: u16| {
        seen.iter()
            .any(|o| o.logged.decision == d && o.dst_port == port)
    };
    while Instant::now() < until
        && !(has(&seen, Decision::Allowed, 8080) && has(&seen, Decision::Blocked, 22))
    {
        if let Ok(o) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(o);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(rx);
    let _ = workload.join();
    let allowed = seen
        .iter()
        .find(|o| o.dst_port == 8080)
        .unwrap_or_else(|| panic!("no flow to 8080 read from NFLOG: {seen:?}"));
    assert_eq!(allowed.logged, allow);
    assert_eq!(
        (
            allowed.src.to_string(),
            allowed.dst.to_string(),
            allowed.proto
        ),
        ("10.213.7.2".to_string(), "10.213.7.1".to_string(), 6)
    );
    let blocked = seen
        .iter()
        .find(|o| o.dst_port == 22)
        .unwrap_or_else(|| panic!("no flow to 22 read from NFLOG: {seen:?}"));
    assert_eq!(blocked.logged, default);
}
