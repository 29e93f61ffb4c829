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
use sc_ven::flows::{Collector, FlowSource, NflogReader, Observed, Seen};

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
        // Tests run in parallel: each pair gets its own names (and subnet).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + n;
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
            NflogReader::open(NFLOG_GROUP, Duration::from_millis(100), false).expect("bind nflog");
        let listener = TcpListener::bind("10.213.7.1:8080").expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = listener.accept();
            for seen in reader.read().expect("read nflog") {
                let Seen::Logged(o) = seen else { continue };
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

/// The agent's collector, as `pce ven run` starts it: the logged decision of
/// an allowed connection joins conntrack's byte counts, a connection that
/// stays open reports the bytes it carries in each interval (the periodic
/// dump), and its close is reported with the state.
#[test]
fn the_collector_reports_bytes_and_state_of_long_lived_connections() {
    use std::io::{Read, Write};
    let pair = Pair::new();
    let allow = Logged {
        decision: Decision::Allowed,
        direction: Direction::Inbound,
        rule: Some(RuleRef::Allow {
            rule_set: "rs-db".into(),
            rule: "r-5432".into(),
        }),
    };
    let rules = format!(
        "table inet pce {{\n  chain input {{\n    type filter hook input priority 0; policy drop;\n    ct state established,related accept\n    iif \"lo\" accept\n    ip saddr 10.213.7.2 tcp dport 5432 log prefix \"{allow}\" group {NFLOG_GROUP} accept\n  }}\n}}\n"
    );
    run(
        &["ip", "netns", "exec", &pair.a, "nft", "-f", "-"],
        Some(&rules),
    );

    // The workload: the collector (dumping conntrack every 300 ms) and a
    // server that answers each 1,000-byte request with 10,000 bytes.
    let (col_tx, col_rx) = std::sync::mpsc::channel::<Collector>();
    let a = pair.a.clone();
    std::thread::spawn(move || {
        enter(&a);
        let collector = Collector::start(Duration::from_millis(300)).expect("collector");
        let listener = TcpListener::bind("10.213.7.1:5432").expect("listen");
        col_tx.send(collector).expect("send");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut req = [0u8; 1000];
        while conn.read_exact(&mut req).is_ok() {
            if conn.write_all(&[7u8; 10_000]).is_err() {
                break;
            }
        }
    });
    let collector = col_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("collector started");

    let b = pair.b.clone();
    let (step_tx, step_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        enter(&b);
        let to: SocketAddr = "10.213.7.1:5432".parse().expect("addr");
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        let mut answer = [0u8; 10_000];
        // Two rounds, one per interval the test takes; then close.
        for _ in 0..2 {
            step_rx.recv().expect("step");
            s.write_all(&[1u8; 1000]).expect("write");
            s.read_exact(&mut answer).expect("read");
            done_tx.send(()).expect("done");
        }
        step_rx.recv().expect("close");
    });

    // Waits until the collector reports a flow to 5432 that satisfies `ok`,
    // summing what earlier takes held for the same key.
    let take_until = |what: &str, ok: &dyn Fn(&sc_proto::ven::Flow) -> bool| {
        let until = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
            let (flows, _) = collector.take();
            seen.extend(flows.into_iter().filter(|f| f.port == 5432));
            if let Some(f) = seen.iter().find(|f| ok(f)) {
                return (f.clone(), seen);
            }
        }
        panic!("{what}: no such flow in {seen:?}");
    };

    step_tx.send(()).expect("step");
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("round 1");
    let (first, so_far) = take_until("round 1 bytes", &|f| f.bytes_out >= 10_000);
    assert_eq!(first.decision, "allowed");
    assert_eq!(first.rule, "rs-db/r-5432");
    assert_eq!(first.direction, "inbound");
    assert!(
        so_far.iter().all(|f| f.decision == "allowed"),
        "every report of the connection carries its logged decision: {so_far:?}"
    );
    assert_eq!(
        so_far.iter().map(|f| f.count).sum::<u64>(),
        1,
        "one connection, counted once: {so_far:?}"
    );
    assert_eq!(first.state, "A", "open at the dump");
    assert!(first.bytes_in >= 1000 && first.bytes_in < 3000, "{first:?}");

    // The second round lands in a later interval, under the same decision
    // and not as a new connection, with only its own bytes.
    step_tx.send(()).expect("step");
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("round 2");
    let (second, _) = take_until("round 2 bytes", &|f| f.bytes_out >= 10_000);
    assert_eq!((second.decision.as_str(), second.count), ("allowed", 0));
    assert_eq!(second.state, "A");
    assert!(
        second.bytes_out < 12_000,
        "only this interval's bytes: {second:?}"
    );

    step_tx.send(()).expect("close");
    client.join().expect("client");
    let (closed, _) = take_until("close", &|f| f.state == "C");
    assert_eq!(closed.rule, "rs-db/r-5432");
}
