//! The federation path end to end on one machine: a second node joins through
//! the first, a write sent to the follower is forwarded to the leader, a
//! linearizable read on the follower sees it, and the operator client reads,
//! writes and asks for status over the same wire. (Partitions, failover and
//! the rest of the cluster behaviour are proved in `chaos/tests`.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use sc_raft::storage::engine::DiskFaults;
use sc_raft::{
    pki, Client, ClientId, Command, Consistency, Mutation, NetFaults, Node, NodeId, NodeInfo,
    NodeOptions, Outcome, Profile, Timeouts, TlsMaterial, Tuning,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn tls(certs: &Path, name: &str) -> TlsMaterial {
    let issued = pki::issue(certs, name, "test", &[IpAddr::V4(Ipv4Addr::LOCALHOST)])
        .expect("issue a node certificate");
    TlsMaterial::load(&certs.join(pki::CA_CERT), &issued.cert, &issued.key).expect("load TLS")
}

fn options(dir: &Path, id: NodeId, join: Vec<NodeInfo>) -> NodeOptions {
    let name = format!("node-{id}");
    let listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    NodeOptions {
        id,
        info: NodeInfo {
            name: name.clone(),
            region: "test".into(),
            addr: listen.to_string(),
        },
        listen,
        data_dir: dir.join(&name),
        tls: tls(&dir.join("certs"), &name),
        timeouts: Timeouts::profile(Profile::Lan),
        tuning: Tuning::default(),
        cluster_name: "test".into(),
        bootstrap: join.is_empty(),
        join,
        voter: true,
        net_faults: NetFaults::default(),
        disk_faults: DiskFaults::default(),
    }
}

fn put(serial: u64, key: &[u8], value: &[u8]) -> Command {
    Command {
        client: ClientId(7),
        serial,
        expect_revision: None,
        compare: vec![],
        ops: vec![Mutation::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_writes_and_serves_linearizable_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki::init_ca(&dir.path().join("certs"), "test").expect("CA");
    let wait = Duration::from_secs(20);

    let first = Node::start(options(dir.path(), 1, vec![]))
        .await
        .expect("start node 1");
    first
        .wait_until(wait, "node 1 leads", |s| s.leader == Some(1))
        .await
        .expect("node 1 leads");
    let second = Node::start(options(dir.path(), 2, vec![first.info().clone()]))
        .await
        .expect("start node 2");
    second
        .wait_until(wait, "node 2 is a voter that knows the leader", |s| {
            s.leader == Some(1) && s.peers.iter().any(|p| p.id == 2 && p.voter)
        })
        .await
        .expect("node 2 joins as a voter");

    let answer = second
        .write(put(1, b"k", b"v1"))
        .await
        .expect("forwarded write");
    assert_eq!(answer.outcome, Outcome::Applied);
    let read = second
        .get(b"k", Consistency::Linearizable)
        .await
        .expect("linearizable read on the follower");
    assert_eq!(read.value.map(|e| e.value), Some(b"v1".to_vec()));

    let client = Client::new(
        tls(&dir.path().join("certs"), "operator"),
        second.info().clone(),
        Timeouts::profile(Profile::Lan),
    )
    .expect("client");
    let status = client.status().await.expect("status over the wire");
    assert_eq!((status.id, status.leader), (2, Some(1)));
    // An operator's certificate reads status only: writes go through the
    // admin API (RBAC, audit), not the federation service.
    let refused = client.write(&put(2, b"k", b"v2")).await.unwrap_err();
    assert!(refused.to_string().contains("not a member"), "{refused}");
    // A member node's certificate (what `pce kv` uses, from a node's config).
    let client = Client::new(
        tls(&dir.path().join("certs"), "node-1"),
        second.info().clone(),
        Timeouts::profile(Profile::Lan),
    )
    .expect("client");
    let answer = client
        .write(&put(2, b"k", b"v2"))
        .await
        .expect("client write");
    assert_eq!(answer.outcome, Outcome::Applied);
    let (entry, revision) = client.read(b"k", true).await.expect("client read");
    assert_eq!(entry.map(|e| e.value), Some(b"v2".to_vec()));
    assert_eq!(revision, answer.revision);
    let statuses = second.cluster_status().await;
    assert!(statuses.iter().all(|(_, s)| s.is_ok()), "{statuses:?}");

    second.shutdown().await;
    first.shutdown().await;
}

/// Three voters under `dir`: node 1 leads (with `faults` on its disk), nodes 2
/// and 3 have joined it as voters; all three send through `net`. Also returns
/// node 1's options, to restart it on the same address and data.
async fn three_voters(
    dir: &Path,
    faults: DiskFaults,
    net: NetFaults,
) -> (Node, Vec<Node>, NodeOptions) {
    pki::init_ca(&dir.join("certs"), "test").expect("CA");
    let wait = Duration::from_secs(20);
    let mut opts = options(dir, 1, vec![]);
    opts.disk_faults = faults;
    opts.net_faults = net.clone();
    let first = Node::start(opts.clone()).await.expect("start node 1");
    first
        .wait_until(wait, "node 1 leads", |s| s.leader == Some(1))
        .await
        .expect("node 1 leads");
    let mut followers = Vec::new();
    for id in [2, 3] {
        let mut follower = options(dir, id, vec![first.info().clone()]);
        follower.net_faults = net.clone();
        let node = Node::start(follower).await.expect("start a follower");
        node.wait_until(wait, "a voter that knows the leader", |s| {
            s.leader == Some(1) && s.peers.iter().any(|p| p.id == id && p.voter)
        })
        .await
        .expect("the follower joins as a voter");
        followers.push(node);
    }
    (first, followers, opts)
}

/// The value of one counter in a node's Prometheus exposition.
fn counter(node: &Node, name: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    node.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// Decision 0026: in three voters, a follower's ReadIndex is confirmed by the
/// follower's own vote, without a heartbeat round, and the read still sees
/// every write acknowledged before it (here through the other follower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_confirms_its_read_index_with_its_own_vote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (first, followers, _) =
        three_voters(dir.path(), DiskFaults::default(), NetFaults::default()).await;
    let before = counter(&first, "pce_raft_read_index_by_asker");
    let rounds = 20u64;
    for serial in 1..=rounds {
        let value = format!("v{serial}");
        let answer = followers[0]
            .write(put(serial, b"k", value.as_bytes()))
            .await
            .expect("forwarded write");
        assert_eq!(answer.outcome, Outcome::Applied);
        let read = followers[1]
            .get(b"k", Consistency::Linearizable)
            .await
            .expect("linearizable read on the other follower");
        assert_eq!(
            read.value.map(|e| e.value),
            Some(value.into_bytes()),
            "a read after an acknowledged write must see it"
        );
    }
    let by_asker = counter(&first, "pce_raft_read_index_by_asker") - before;
    assert!(
        by_asker >= rounds,
        "every read's index should be confirmed by the asking follower: {by_asker} of {rounds}"
    );
    for node in followers {
        node.shutdown().await;
    }
    first.shutdown().await;
}

/// Decision 0027: a leader reports its own appends flushed before their sync,
/// so something else must hold back what may not run ahead of the disk. A
/// leader alone in its quorum commits at once; with its log's syncs failing it
/// must still acknowledge nothing, apply nothing, and stop its Raft core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_cannot_sync_acknowledges_and_applies_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki::init_ca(&dir.path().join("certs"), "test").expect("CA");
    let faults = DiskFaults::default();
    let mut opts = options(dir.path(), 1, vec![]);
    opts.disk_faults = faults.clone();
    let node = Node::start(opts).await.expect("start node 1");
    node.wait_until(Duration::from_secs(20), "node 1 leads", |s| {
        s.leader == Some(1)
    })
    .await
    .expect("node 1 leads");
    let answer = node.write(put(1, b"k", b"synced")).await.expect("a write");
    assert_eq!(answer.outcome, Outcome::Applied);
    // What `pce serve` waits on to exit. It must stay pending through a
    // healthy node's writes and heartbeats, which move openraft's metrics.
    let failed = {
        let node = node.clone();
        tokio::spawn(async move { node.failed().await })
    };
    for serial in 2..5 {
        let answer = node
            .write(put(serial, b"k", b"synced"))
            .await
            .expect("a write");
        assert_eq!(answer.outcome, Outcome::Applied);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!failed.is_finished(), "a healthy node reported a failure");

    faults.set_syncs_failing(true);
    let unsynced = tokio::time::timeout(
        Duration::from_secs(5),
        node.write(put(5, b"k", b"never on disk")),
    )
    .await;
    assert!(
        !matches!(unsynced, Ok(Ok(_))),
        "a write the leader's log never synced was acknowledged: {unsynced:?}"
    );
    let read = node
        .get(b"k", Consistency::Local)
        .await
        .expect("the replica still reads");
    assert_eq!(
        read.value.map(|e| e.value),
        Some(b"synced".to_vec()),
        "an entry not on disk was applied"
    );
    node.wait_until(Duration::from_secs(20), "the Raft core stops", |s| {
        s.role == "shutdown"
    })
    .await
    .expect("a leader whose log cannot sync stops leading");
    let reason = tokio::time::timeout(Duration::from_secs(20), failed)
        .await
        .expect("the node reports its stopped core")
        .expect("task");
    assert!(
        reason.contains("storage") || reason.contains("sync"),
        "the reason names the disk: {reason}"
    );
    node.shutdown().await;
}

/// Decision 0027: the leader hands an entry to its followers before its own
/// sync, but counts no follower's acknowledgement before its own copy is on
/// disk. With the leader's syncs slowed to a second, a write through it cannot
/// be acknowledged sooner, though both followers hold it within milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waits_for_the_leaders_own_copy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faults = DiskFaults::default();
    let (first, followers, _) =
        three_voters(dir.path(), faults.clone(), NetFaults::default()).await;
    first.write(put(1, b"k", b"before")).await.expect("a write");

    let slow = Duration::from_secs(1);
    faults.set_sync_delay(slow);
    let started = std::time::Instant::now();
    let write = {
        let first = first.clone();
        tokio::spawn(async move { first.write(put(2, b"k", b"after a slow sync")).await })
    };
    // The followers hold the entry within milliseconds; were their
    // acknowledgements counted, the commit would reach them and they would
    // apply it while the leader's sync is still running.
    tokio::time::sleep(slow / 3).await;
    for node in &followers {
        let read = node
            .get(b"k", Consistency::Local)
            .await
            .expect("a follower's replica reads");
        assert_eq!(
            read.value.map(|e| e.value),
            Some(b"before".to_vec()),
            "node {} applied an entry committed before the leader's copy was on disk",
            node.id()
        );
    }
    let answer = write.await.expect("task").expect("a write on a slow disk");
    assert_eq!(answer.outcome, Outcome::Applied);
    assert!(
        started.elapsed() >= slow,
        "acknowledged after {:?}, before the leader's own sync of {slow:?} ended",
        started.elapsed()
    );
    faults.set_sync_delay(Duration::ZERO);
    for node in followers {
        node.shutdown().await;
    }
    first.shutdown().await;
}

/// Decision 0027 under a power cut. The leader hands an entry to its
/// followers before its own sync; here that sync fails and the power goes, so
/// the leader comes back without the entry its followers hold under the same
/// log id. Were it to resume its term (openraft 0.9 makes a node whose saved
/// vote is its own committed vote leader again at start), its next entry would
/// take that log id with other contents, and the followers, seeing a log id
/// they hold, would keep theirs: the replicas would differ. It must win a new
/// term instead, which it cannot with the shorter log; once the followers can
/// talk again, one of them leads and every replica ends identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_unsynced_tail_in_a_power_cut_does_not_resume_its_term() {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = DiskFaults::default();
    disk.track_power_cuts();
    let net = NetFaults::default();
    let (first, followers, first_opts) = three_voters(dir.path(), disk.clone(), net.clone()).await;
    let wait = Duration::from_secs(20);
    let answer = first
        .write(put(1, b"k", b"acknowledged"))
        .await
        .expect("a write");
    assert_eq!(answer.outcome, Outcome::Applied);
    let before = first.status().last_log_index.expect("a log");

    // The followers can reach neither the leader nor each other (a request
    // is stopped when it is sent; the leader's AppendEntries and the answers
    // to them still pass): no election can succeed until they are healed,
    // and none raises their term (pre-vote).
    net.partition(&[2], &[3]);
    net.block(2, 1);
    net.block(3, 1);
    let term = first.status().term;

    // The leader's next sync takes a while and then fails: the entry reaches
    // both followers' disks and never the leader's.
    disk.set_sync_delay(Duration::from_millis(500));
    disk.set_syncs_failing(true);
    let lost = {
        let first = first.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(5),
                first.write(put(2, b"k", b"on the followers only")),
            )
            .await
        })
    };
    for node in &followers {
        node.wait_until(wait, "the follower holds the entry", |s| {
            s.last_log_index > Some(before)
        })
        .await
        .expect("the entry reaches the follower");
    }
    let lost = lost.await.expect("task");
    assert!(
        !matches!(lost, Ok(Ok(_))),
        "a write the leader never synced was acknowledged: {lost:?}"
    );
    first
        .wait_until(wait, "the Raft core stops", |s| s.role == "shutdown")
        .await
        .expect("a leader whose log cannot sync stops");
    first.shutdown().await;
    drop(first);

    assert!(
        disk.lose_unsynced().expect("power cut") >= 1,
        "the power cut found nothing unsynced"
    );
    for node in &followers {
        assert_eq!(
            node.status().term,
            term,
            "node {} changed term while cut off: the case under test did not arise",
            node.id()
        );
    }
    disk.set_syncs_failing(false);
    disk.set_sync_delay(Duration::ZERO);
    let first = Node::start(first_opts).await.expect("node 1 restarts");
    assert_eq!(
        first.status().last_log_index,
        Some(before),
        "the power cut took the leader's unsynced entry"
    );
    // A write through the restarted node while the followers are cut off:
    // only a node that resumed its old term could commit it.
    let during = tokio::time::timeout(
        Duration::from_secs(3),
        first.write(put(3, b"k", b"after the restart")),
    )
    .await;
    net.heal();
    let started = std::time::Instant::now();
    loop {
        match first.write(put(4, b"k2", b"healed")).await {
            Ok(a) if a.outcome == Outcome::Applied => break,
            other => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no write succeeded after the heal: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let nodes: Vec<&Node> = std::iter::once(&first).chain(followers.iter()).collect();
    let started = std::time::Instant::now();
    loop {
        let applied: Vec<_> = nodes.iter().map(|n| n.status().last_applied).collect();
        let digests: Vec<_> = nodes.iter().map(|n| n.digest().ok()).collect();
        if applied.windows(2).all(|w| w[0] == w[1])
            && digests.windows(2).all(|w| w[0] == w[1])
            && digests[0].is_some()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replicas differ after the power cut: applied {applied:?}, digests {digests:?} \
             (the write during the cut-off: {during:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let k = first
        .get(b"k", Consistency::Linearizable)
        .await
        .expect("a read")
        .value
        .map(|e| e.value);
    if matches!(during, Ok(Ok(ref a)) if a.outcome == Outcome::Applied) {
        assert_eq!(
            k,
            Some(b"after the restart".to_vec()),
            "an acknowledged write was lost"
        );
    }
    for node in followers {
        node.shutdown().await;
    }
    first.shutdown().await;
}

/// A peer that accepted the TCP connection but never answers the TLS hello
/// (its end went away while a cut dropped the FIN, or it hangs) must not hold
/// a channel for good: the handshake gives up after the connect timeout and
/// the next call dials again. Without that bound a leader stayed cut off from a
/// healed follower for minutes in a chaos run (seed 98): its one connection
/// attempt waited for a server hello that was never coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_handshake_hung_dials_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    pki::init_ca(&dir.path().join("certs"), "test").expect("CA");
    let opts = options(dir.path(), 1, vec![]);
    let timeouts = Timeouts::profile(Profile::Lan);

    // The silent end: accepts, keeps every connection open, reads nothing.
    let silent = tokio::net::TcpListener::bind(opts.listen)
        .await
        .expect("bind the silent listener");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let silent = tokio::spawn(async move {
        while let Ok((conn, _)) = silent.accept().await {
            keep.lock().expect("held").push(conn);
        }
    });

    let client = Client::new(
        tls(&dir.path().join("certs"), "operator"),
        opts.info.clone(),
        timeouts.clone(),
    )
    .expect("client");
    assert!(
        client.status().await.is_err(),
        "nothing answers the hello yet"
    );
    assert!(!held.lock().expect("held").is_empty(), "the client dialled");

    // The real node takes the address; the silent connection stays open.
    silent.abort();
    let _ = silent.await;
    let node = Node::start(opts).await.expect("start the node");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        match client.status().await {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "not yet");
            }
            Err(e) => panic!("the channel never dialled again: {e}"),
        }
    };
    assert_eq!(status.id, 1);
    assert_eq!(held.lock().expect("held").len(), 1, "one hung attempt");
    node.shutdown().await;
}
