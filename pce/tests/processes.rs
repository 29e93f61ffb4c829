//! Real `pce serve` processes: kill -9 of the leader and of a follower while
//! writes flow, restarts from disk, and bad configurations that stop a node with
//! a message saying what to fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sc_raft::{pki, Client, ClientId, Mutation, NodeInfo, Outcome, Profile, Timeouts, TlsMaterial};

const PCE: &str = env!("CARGO_BIN_EXE_pce");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three node processes and their configs; kills every process on drop.
struct Cluster {
    dir: tempfile::TempDir,
    ports: BTreeMap<u64, u16>,
    procs: BTreeMap<u64, Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.procs.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_ok(args: &[&str]) {
    let out = Command::new(PCE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "pce {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        run_ok(&["certs", "init", "--dir", certs.to_str().unwrap()]);
        let mut ports = BTreeMap::new();
        for id in 1..=3u64 {
            ports.insert(id, free_port());
            run_ok(&[
                "certs",
                "issue",
                "--dir",
                certs.to_str().unwrap(),
                "--node",
                &format!("n{id}"),
                "--region",
                &format!("r{id}"),
                "--ip",
                "127.0.0.1",
            ]);
        }
        let c = Cluster {
            dir,
            ports,
            procs: BTreeMap::new(),
        };
        for id in 1..=3u64 {
            let peers = if id == 1 {
                String::new()
            } else {
                format!(
                    "\n[[peers]]\nname = \"n1\"\naddr = \"127.0.0.1:{}\"\n",
                    c.ports[&1]
                )
            };
            let cfg = format!(
                "id = {id}\nname = \"n{id}\"\nregion = \"r{id}\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"data-{id}\"\nbootstrap = {b}\n\
                 [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/n{id}.pem\"\nkey = \"certs/n{id}.key\"\n\
                 [snapshots]\nevery = 100\nkeep_logs = 20\n{peers}",
                port = c.ports[&id],
                b = id == 1
            );
            std::fs::write(c.config(id), cfg).unwrap();
        }
        c
    }

    fn config(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}.toml"))
    }

    fn start(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{id}.log")))
            .unwrap();
        let child = Command::new(PCE)
            .args(["serve", "--config", self.config(id).to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.insert(id, child);
    }

    /// SIGKILL: no shutdown code runs, nothing is flushed.
    fn kill9(&mut self, id: u64) {
        let mut c = self.procs.remove(&id).unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn client(&self, id: u64) -> Client {
        let certs = self.dir.path().join("certs");
        let tls = TlsMaterial::load(
            &certs.join(pki::CA_CERT),
            &certs.join("n1.pem"),
            &certs.join("n1.key"),
        )
        .unwrap();
        let info = NodeInfo {
            name: format!("n{id}"),
            region: format!("r{id}"),
            addr: format!("127.0.0.1:{}", self.ports[&id]),
        };
        let mut t = Timeouts::profile(Profile::Lan);
        t.rpc = Duration::from_millis(500);
        Client::new(tls, info, t).unwrap()
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|id| {
                std::fs::read_to_string(self.dir.path().join(format!("n{id}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// Waits until the given nodes all follow one leader and have applied its whole log.
    async fn converged(&self, ids: &[u64], timeout: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let mut statuses = Vec::new();
            for id in ids {
                if let Ok(s) = self.client(*id).status().await {
                    statuses.push(s);
                }
            }
            if statuses.len() == ids.len() {
                let leader = statuses[0].leader;
                let log = statuses
                    .iter()
                    .find(|s| Some(s.id) == leader)
                    .and_then(|s| s.last_log_index);
                let voters = statuses[0].peers.iter().filter(|p| p.voter).count();
                if let Some(l) = leader {
                    if voters == 3
                        && log.is_some()
                        && statuses
                            .iter()
                            .all(|s| s.leader == leader && s.last_applied == log)
                    {
                        return l;
                    }
                }
            }
            assert!(
                started.elapsed() < timeout,
                "no convergence of {ids:?}; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Writes `key` through `via` (any node), retrying the same request until it is
/// acknowledged or `deadline` passes. Returns whether it was acknowledged.
async fn put(
    c: &Cluster,
    via: &[u64],
    client: ClientId,
    serial: u64,
    key: &str,
    deadline: Duration,
) -> bool {
    let started = Instant::now();
    let cmd = sc_raft::Command {
        client,
        serial,
        expect_revision: None,
        compare: vec![],
        ops: vec![Mutation::Put {
            key: key.as_bytes().to_vec(),
            value: key.as_bytes().to_vec(),
        }],
    };
    let mut i = serial as usize;
    while started.elapsed() < deadline {
        i += 1;
        if let Ok(r) = c.client(via[i % via.len()]).write(&cmd).await {
            assert_eq!(r.outcome, Outcome::Applied, "{key}");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_and_a_follower_loses_no_acknowledged_write() {
    let mut c = Cluster::new();
    for id in 1..=3 {
        c.start(id);
    }
    let leader = c.converged(&[1, 2, 3], Duration::from_secs(60)).await;
    let writer = ClientId::random();
    let mut serial = 0;
    let mut acked = Vec::new();
    for i in 0..150 {
        serial += 1;
        let key = format!("a/{i:04}");
        assert!(
            put(
                &c,
                &[1, 2, 3],
                writer,
                serial,
                &key,
                Duration::from_secs(20)
            )
            .await,
            "write {key} failed; logs:\n{}",
            c.logs()
        );
        acked.push(key);
    }

    // kill -9 the leader: the survivors elect a leader and writes resume.
    c.kill9(leader);
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let killed_at = Instant::now();
    serial += 1;
    assert!(
        put(
            &c,
            &survivors,
            writer,
            serial,
            "after-leader-kill",
            Duration::from_secs(30)
        )
        .await,
        "no write after kill; logs:\n{}",
        c.logs()
    );
    eprintln!(
        "writes resumed {:?} after kill -9 of the leader",
        killed_at.elapsed()
    );
    acked.push("after-leader-kill".into());
    for i in 0..100 {
        serial += 1;
        let key = format!("b/{i:04}");
        assert!(
            put(
                &c,
                &survivors,
                writer,
                serial,
                &key,
                Duration::from_secs(20)
            )
            .await
        );
        acked.push(key);
    }

    // The old leader restarts from its disk and catches up.
    c.start(leader);
    let new_leader = c.converged(&[1, 2, 3], Duration::from_secs(60)).await;

    // kill -9 a follower in the middle of a stream of writes, then restart it.
    let follower = (1..=3).find(|id| *id != new_leader).unwrap();
    for i in 0..60 {
        if i == 20 {
            c.kill9(follower);
        }
        serial += 1;
        let key = format!("c/{i:04}");
        let via: Vec<u64> = (1..=3).filter(|id| c.procs.contains_key(id)).collect();
        assert!(put(&c, &via, writer, serial, &key, Duration::from_secs(20)).await);
        acked.push(key);
    }
    c.start(follower);
    c.converged(&[1, 2, 3], Duration::from_secs(60)).await;

    for id in 1..=3 {
        let client = c.client(id);
        let mut revision = None;
        for key in &acked {
            let (entry, rev) = client.read(key.as_bytes(), true).await.unwrap();
            assert_eq!(
                entry.map(|e| e.value),
                Some(key.as_bytes().to_vec()),
                "{key} lost on node {id}"
            );
            revision = Some(rev);
        }
        // Every write was applied exactly once: one revision per acknowledged write.
        assert_eq!(revision, Some(acked.len() as u64), "node {id}");
    }
}

fn serve_error(config_body: Option<&str>, dir: &Path) -> String {
    let path = dir.join("bad.toml");
    if let Some(body) = config_body {
        std::fs::write(&path, body).unwrap();
    }
    let out = Command::new(PCE)
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad config must stop the node"
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn a_bad_config_stops_the_node_with_a_message_that_says_what_to_fix() {
    let c = Cluster::new();
    let dir = c.dir.path();
    let good = std::fs::read_to_string(c.config(1)).unwrap();
    assert!(serve_error(None, dir).contains("cannot read config file"));
    assert!(serve_error(Some(&format!("{good}\nlisten_port = 3")), dir)
        .contains("unknown field `listen_port`"));
    let bad_addr = good.replace("listen = \"127.0.0.1:", "listen = \"127.0.0.1;");
    assert!(serve_error(Some(&bad_addr), dir).contains("is not an address like"));
    let no_cert = good.replace("certs/n1.pem", "certs/missing.pem");
    let msg = serve_error(Some(&no_cert), dir);
    assert!(
        msg.contains("cannot read node certificate") && msg.contains("missing.pem"),
        "{msg}"
    );
    // An address already taken is reported with the address.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = good.replace(
        &format!("127.0.0.1:{}", c.ports[&1]),
        &listener.local_addr().unwrap().to_string(),
    );
    let msg = serve_error(Some(&taken), dir);
    assert!(msg.contains("cannot listen on"), "{msg}");
}
