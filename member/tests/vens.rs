//! VENs against a real 3-region cluster (in-process nodes, real TLS, sled on
//! disk): pairing, pushes to exactly the affected VENs, failover between
//! members, cached policy after a restart, and bad input.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sc_leader::client::ApiClient;
use sc_member::{VenOptions, VenServer};
use sc_proto::ven::ven_client::VenClient;
use sc_proto::ven::{ven_message, Flow, FlowBatch, Heartbeat, Hello, VenMessage};
use sc_raft::pki;
use sc_testkit::{ApiCluster, TestCluster};
use sc_ven::identity::{pair, HostFacts};
use sc_ven::{Agent, AgentEvent, Enforcer, Identity};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

const ORG: &str = "/api/v2/orgs/1";

struct Env {
    cluster: TestCluster,
    /// Kept so the API servers live as long as the test.
    _apis: Vec<(u64, sc_leader::ApiServer)>,
    api: ApiClient,
    api_addrs: HashMap<u64, SocketAddr>,
    key: (String, String),
    vens: HashMap<u64, VenServer>,
    ca: String,
    _flows: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let ac = ApiCluster::start(3, 0).await;
        let leader = ac.leader().await;
        let api_addrs = (1..=3u64).map(|id| (id, ac.addr(id))).collect();
        let key = (ac.owner.auth_username.clone(), ac.owner.secret.clone());
        let api = ac.client(leader);
        let flows = tempfile::tempdir().expect("dir");
        let mut env = Env {
            cluster: ac.cluster,
            _apis: ac.apis,
            api,
            api_addrs,
            key,
            vens: HashMap::new(),
            ca: ac.ca,
            _flows: flows,
        };
        for id in 1..=3 {
            env.start_ven_service(id).await;
        }
        env.cluster.wait_converged(Duration::from_secs(30)).await;
        env
    }

    async fn start_ven_service(&mut self, id: u64) {
        let certs = self.cluster.certs_dir();
        let mut opts = VenOptions::new(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            self.cluster.node_options(id).expect("opts").tls.clone(),
            (certs.join(pki::VEN_CA_CERT), certs.join(pki::VEN_CA_KEY)),
            self._flows.path().join(format!("flows-{id}")),
        );
        opts.offline_after = Duration::from_millis(500);
        opts.max_flow_batch = 100;
        let s = VenServer::start(self.cluster.node(id).clone(), opts, Default::default())
            .await
            .expect("ven service");
        self.vens.insert(id, s);
    }

    /// Talks to the admin API of node `id` from now on.
    fn use_api(&mut self, id: u64) {
        self.api = ApiClient::new(self.api_addrs[&id], Some(&self.ca))
            .expect("client")
            .with_key(&self.key.0, &self.key.1);
    }

    fn ven_addr(&self, id: u64) -> String {
        self.vens[&id].addr.to_string()
    }

    async fn post(&mut self, path: &str, body: Value) -> Value {
        let a = self
            .api
            .post(&format!("{ORG}{path}"), &body)
            .await
            .expect("post");
        assert!(
            a.status.is_success(),
            "{path}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        a.json()
    }

    async fn label(&mut self, key: &str, value: &str) -> String {
        self.post("/labels", json!({"key": key, "value": value}))
            .await["href"]
            .as_str()
            .expect("href")
            .to_string()
    }

    /// A pairing profile with these labels (full mode) and one key for it.
    async fn pairing_key(&mut self, labels: &[&str], uses: Value, lifespan: Value) -> String {
        let labels: Vec<Value> = labels.iter().map(|h| json!({"href": h})).collect();
        let p = self
            .post("/pairing_profiles", json!({"name": format!("p{}", rand_u()), "labels": labels, "enforcement_mode": "full", "allowed_uses_per_key": uses, "key_lifespan": lifespan}))
            .await;
        let href = p["href"].as_str().expect("href").to_string();
        let k = self
            .api
            .post(&format!("/api/v2{href}/pairing_key"), &json!({}))
            .await
            .expect("key");
        k.json()["activation_code"]
            .as_str()
            .expect("code")
            .to_string()
    }

    async fn provision(&mut self) {
        self.post("/sec_policy", json!({"update_description": "test"}))
            .await;
    }
}

fn rand_u() -> u64 {
    rand::random()
}

fn facts(i: usize) -> HostFacts {
    HostFacts {
        hostname: format!("host-{i}"),
        addresses: vec![format!(
            "10.{}.{}.{}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        )],
        os: "linux".into(),
    }
}

type Events = Arc<Mutex<HashMap<String, Vec<AgentEvent>>>>;

/// Starts an agent in memory; its events land in `events` under its workload id.
fn spawn_agent(
    identity: Identity,
    events: &Events,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = identity.workload_id.clone();
    let ev = events.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            ev.lock()
                .expect("lock")
                .entry(id.clone())
                .or_default()
                .push(e);
        }
    });
    let mut agent = Agent::new(identity, None, Enforcer::Memory(Arc::new(Mutex::new(None))))
        .expect("agent")
        .with_events(tx);
    agent.heartbeat = Duration::from_millis(500);
    let stop = stop.clone();
    tokio::spawn(async move {
        let _ = agent.run(stop).await;
    })
}

fn applied(events: &Events, id: &str) -> usize {
    events
        .lock()
        .expect("lock")
        .get(id)
        .map(|v| {
            v.iter()
                .filter(|e| matches!(e, AgentEvent::Applied { .. }))
                .count()
        })
        .unwrap_or(0)
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provision_pushes_to_exactly_the_vens_whose_rules_changed() {
    let mut env = Env::start().await;
    let bulk = env.label("role", "bulk").await;
    let special = env.label("role", "special").await;
    let office = env
        .post(
            "/sec_policy/draft/ip_lists",
            json!({"name": "office", "ip_ranges": [{"from_ip": "192.0.2.0/24"}]}),
        )
        .await["href"]
        .as_str()
        .expect("href")
        .to_string();
    env.provision().await;
    let bulk_key = env
        .pairing_key(&[&bulk], json!("unlimited"), json!("unlimited"))
        .await;
    let special_key = env
        .pairing_key(&[&special], json!("unlimited"), json!("unlimited"))
        .await;

    // 1,000 VENs pair (16 at a time) through the three members.
    let n = 1000;
    let addrs: Vec<String> = (1..=3).map(|i| env.ven_addr(i)).collect();
    let mut identities = Vec::new();
    let mut pending = Vec::new();
    for i in 0..n {
        let key = if i < 3 {
            special_key.clone()
        } else {
            bulk_key.clone()
        };
        let (addr, ca) = (addrs[i % 3].clone(), env.ca.clone());
        pending.push(tokio::spawn(async move {
            pair(&addr, &ca, &key, &facts(i)).await.expect("pairs")
        }));
        if pending.len() == 16 || i == n - 1 {
            for p in pending.drain(..) {
                identities.push(p.await.expect("task"));
            }
        }
    }
    let specials: Vec<String> = identities[..3]
        .iter()
        .map(|i| i.workload_id.clone())
        .collect();
    let events: Events = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop) = watch::channel(false);
    for id in identities.iter().cloned() {
        spawn_agent(id, &events, &stop);
    }
    let ids: Vec<String> = identities.iter().map(|i| i.workload_id.clone()).collect();
    wait_for("every VEN's first policy", Duration::from_secs(120), || {
        ids.iter().all(|id| applied(&events, id) >= 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: HashMap<String, usize> = ids
        .iter()
        .map(|id| (id.clone(), applied(&events, id)))
        .collect();

    // A rule that opens the special workloads to the office changes only them.
    let rs = env
        .post("/sec_policy/draft/rule_sets", json!({"name": "specials"}))
        .await["href"]
        .as_str()
        .expect("href")
        .to_string();
    let a = env
        .api
        .post(&format!("/api/v2{rs}/sec_rules"), &json!({"providers": [{"label": {"href": special}}], "consumers": [{"ip_list": {"href": office}}], "ingress_services": [{"proto": 6, "port": 443}], "unscoped_consumers": true}))
        .await
        .expect("rule");
    assert!(a.status.is_success());
    let t0 = Instant::now();
    env.provision().await;
    wait_for("the three affected VENs", Duration::from_secs(30), || {
        specials
            .iter()
            .all(|id| applied(&events, id) == before[id] + 1)
    })
    .await;
    eprintln!("provision to 3 acknowledgements: {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let others_pushed: Vec<&String> = ids
        .iter()
        .filter(|id| !specials.contains(id) && applied(&events, id) != before[*id])
        .collect();
    assert!(
        others_pushed.is_empty(),
        "{} unaffected VENs got a push",
        others_pushed.len()
    );
    // The members know what each VEN enforces.
    let mut acked = 0;
    for s in env.vens.values() {
        for (id, st) in s.sessions() {
            let want = s.cache().policy_of(&id).expect("served").hash.clone();
            if st.applied_hash == want {
                acked += 1;
            }
        }
    }
    assert_eq!(acked, n, "every VEN acknowledged its current policy");

    // The members' metrics say the same: every VEN connected and current
    // (the gauges follow every two seconds), a stream opened for each, and
    // an acknowledgement timed for each first policy and for the three pushes.
    let sum = |metric: &str| -> f64 { env.vens.values().map(|s| sample(&scrape(s), metric)).sum() };
    wait_for("the VEN gauges", Duration::from_secs(10), || {
        sum("pce_vens_connected") == n as f64 && sum("pce_vens_current") == n as f64
    })
    .await;
    assert!(sum("pce_ven_streams_opened_total") >= n as f64);
    // New VENs arrive enforcing nothing: their first policy is no resync.
    assert_eq!(sum("pce_ven_resyncs_total"), 0.0);
    let acks = sum("pce_ven_policy_push_ack_duration_seconds_count");
    assert!(acks >= (n + 3) as f64, "{acks} acknowledgements timed");

    // Everyone leaves at once: the members record the offline states in a few
    // batched commands, not a thousand writes (which would crowd out operators'
    // writes and the leader's heartbeats).
    let db = sc_store::db::Db::new(env.cluster.node(env.cluster.leader().await).clone());
    let rev0 = db.revision().await.expect("revision");
    let _ = stop_tx.send(true);
    let t0 = Instant::now();
    loop {
        let online = online_workloads(&db).await;
        if online == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{online} workloads still online a minute after their VENs left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let commands = db.revision().await.expect("revision") - rev0;
    eprintln!("{n} VENs went offline in {commands} commands");
    assert!(
        commands <= 100,
        "{commands} commands for {n} offline states: they are not batched"
    );
}

/// A VEN service's metrics in the exposition format Prometheus scrapes.
fn scrape(s: &sc_member::VenServer) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    s.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    text
}

/// The value of an unlabelled series in `text` (0 when absent).
fn sample(text: &str, metric: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// How many workloads the store says are online.
async fn online_workloads(db: &sc_store::db::Db) -> usize {
    use sc_store::keys::{Kind, Space};
    use sc_store::objects::WorkloadDoc;
    use sc_store::record::Record;
    let raw = sc_store::world::load_raw(db, Space::Live, &[Kind::Workload])
        .await
        .expect("scan");
    raw.values()
        .filter(|bytes| {
            sc_store::record::decode::<Record<WorkloadDoc>>(bytes)
                .map(|r| r.doc.online)
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ven_fails_over_when_its_member_is_lost_and_keeps_its_policy() {
    let mut env = Env::start().await;
    let web = env.label("role", "web").await;
    // Policy that quarantine visibly removes: the office may reach web on 443.
    let office = env
        .post(
            "/sec_policy/draft/ip_lists",
            json!({"name": "office", "ip_ranges": [{"from_ip": "192.0.2.0/24"}]}),
        )
        .await["href"]
        .as_str()
        .expect("href")
        .to_string();
    let rs = env
        .post("/sec_policy/draft/rule_sets", json!({"name": "web"}))
        .await["href"]
        .as_str()
        .expect("href")
        .to_string();
    let r = env.api.post(&format!("/api/v2{rs}/sec_rules"), &json!({"providers": [{"label": {"href": web}}], "consumers": [{"ip_list": {"href": office}}], "ingress_services": [{"proto": 6, "port": 443}], "unscoped_consumers": true})).await.expect("rule");
    assert!(r.status.is_success());
    env.provision().await;
    let key = env.pairing_key(&[&web], json!(1), json!(3600)).await;
    let dir = tempfile::tempdir().expect("dir");
    let identity = pair(&env.ven_addr(1), &env.ca, &key, &facts(7))
        .await
        .expect("pair");
    identity.save(dir.path()).expect("save");
    let events: Events = Arc::new(Mutex::new(HashMap::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut agent = Agent::new(
        identity.clone(),
        Some(dir.path().to_path_buf()),
        Enforcer::Memory(Arc::new(Mutex::new(None))),
    )
    .expect("agent")
    .with_events(tx);
    agent.heartbeat = Duration::from_millis(300);
    let (stop_tx, stop) = watch::channel(false);
    let run = tokio::spawn(agent.run(stop));
    let ev = events.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            ev.lock()
                .expect("lock")
                .entry("ven".into())
                .or_default()
                .push(e);
        }
    });
    let id = identity.workload_id.clone();
    let connected = |events: &Events| {
        events.lock().expect("lock").get("ven").and_then(|v| {
            v.iter().rev().find_map(|e| match e {
                AgentEvent::Connected(m) => Some(m.clone()),
                _ => None,
            })
        })
    };
    wait_for("the first policy", Duration::from_secs(30), || {
        applied(&events, "ven") >= 1
    })
    .await;
    let first = connected(&events).expect("connected");
    // The member it streams from goes away (node and VEN service).
    let lost: u64 = (1..=3)
        .find(|i| env.cluster.node(*i).info().name == first)
        .expect("member");
    env.vens.remove(&lost).expect("svc").stop().await;
    env.cluster.stop(lost).await;
    env.use_api((1..=3).find(|i| *i != lost).expect("survivor"));
    wait_for(
        "a stream to another member",
        Duration::from_secs(60),
        || connected(&events).is_some_and(|m| m != first),
    )
    .await;
    // It still receives updates: quarantine is an action that reaches it as a push.
    let before = applied(&events, "ven");
    let w = env
        .api
        .put(
            &format!("{ORG}/workloads/{id}/quarantine"),
            &json!({"quarantined": true}),
        )
        .await
        .expect("quarantine");
    assert_eq!(w.status, 204, "{}", String::from_utf8_lossy(&w.body));
    let dump = events.clone();
    let t0 = Instant::now();
    while applied(&events, "ven") <= before {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no quarantine push; lost member {lost}; events {:?}",
            dump.lock().expect("lock").get("ven")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Suspension: the VEN is told to enforce nothing (idle), then resumed.
    let before = applied(&events, "ven");
    let w = env
        .api
        .put(
            &format!("{ORG}/workloads/{id}/suspend"),
            &json!({"suspended": true}),
        )
        .await
        .expect("suspend");
    assert_eq!(w.status, 204, "{}", String::from_utf8_lossy(&w.body));
    wait_for("the suspension push", Duration::from_secs(30), || {
        applied(&events, "ven") > before
    })
    .await;
    let before = applied(&events, "ven");
    let w = env
        .api
        .put(
            &format!("{ORG}/workloads/{id}/suspend"),
            &json!({"suspended": false}),
        )
        .await
        .expect("resume");
    assert_eq!(w.status, 204);
    wait_for("the resume push", Duration::from_secs(30), || {
        applied(&events, "ven") > before
    })
    .await;
    let _ = stop_tx.send(true);
    let _ = run.await;

    // Restarted with no PCE reachable, it re-applies its cached policy at once.
    let slot = Arc::new(Mutex::new(None));
    let again = Agent::new(
        Identity::load(dir.path()).expect("load").expect("identity"),
        Some(dir.path().to_path_buf()),
        Enforcer::Memory(slot.clone()),
    )
    .expect("agent");
    assert!(again.reapply_cached().expect("reapply"));
    let text = slot.lock().expect("lock").clone().expect("applied");
    assert!(
        text.contains("policy drop"),
        "the quarantine (full isolation) is what it enforces:\n{text}"
    );
    // Port 443 as a whole number outside the control-channel lines: those
    // carry random ports (44323 once failed a plain `contains("443")`).
    let opens_443 = text
        .lines()
        .filter(|l| !l.contains("pce control channel"))
        .any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|n| n == "443"));
    assert!(!opens_443, "quarantine removed the allow rule:\n{text}");
    assert!(
        text.contains("pce control channel"),
        "its channel to the PCE stays open:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_pairing_keys_foreign_certificates_and_floods_are_refused() {
    let mut env = Env::start().await;
    let web = env.label("role", "web").await;
    let addr = env.ven_addr(2);
    // Unknown key.
    let e = pair(&addr, &env.ca, "not-a-key", &facts(1))
        .await
        .expect_err("forged");
    assert!(e.to_string().contains("NotFound"), "{e}");
    // An unknown key is refused before its CSR is looked at (nothing is
    // signed for a caller without a key): a garbage CSR gets NotFound, not a
    // complaint about the CSR.
    let anonymous = sc_ven::identity::channel(&addr, &env.ca, None, Duration::from_secs(5))
        .await
        .expect("channel");
    let st = VenClient::new(anonymous)
        .pair(sc_proto::ven::PairRequest {
            activation_code: "not-a-key".into(),
            hostname: "h".into(),
            addresses: vec!["10.9.9.9".into()],
            os: "linux".into(),
            csr_pem: "not a CSR".into(),
        })
        .await
        .expect_err("unknown key");
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
    // A key good for one use.
    let once = env.pairing_key(&[&web], json!(1), json!("unlimited")).await;
    let good = pair(&addr, &env.ca, &once, &facts(2))
        .await
        .expect("first use");
    let e = pair(&addr, &env.ca, &once, &facts(3))
        .await
        .expect_err("exhausted");
    assert!(e.to_string().contains("no uses left"), "{e}");
    // An expired key.
    let short = env.pairing_key(&[&web], json!("unlimited"), json!(1)).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = pair(&addr, &env.ca, &short, &facts(4))
        .await
        .expect_err("expired");
    assert!(e.to_string().contains("expired"), "{e}");

    // The good VEN streams; keep it connected while others misbehave.
    let events: Events = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop) = watch::channel(false);
    spawn_agent(good.clone(), &events, &stop);
    wait_for("the good VEN's policy", Duration::from_secs(30), || {
        applied(&events, &good.workload_id) >= 1
    })
    .await;

    // A VEN certificate from another CA is refused.
    let other = tempfile::tempdir().expect("dir");
    pki::init_ca(other.path(), "evil").expect("ca");
    let signer = pki::VenSigner::load(
        &other.path().join(pki::VEN_CA_CERT),
        &other.path().join(pki::VEN_CA_KEY),
    )
    .expect("signer");
    let key = rcgen_key();
    let forged = Identity {
        cert_pem: signer.sign(&key.1, &good.workload_id).expect("sign"),
        key_pem: key.0,
        ..good.clone()
    };
    let stream = sc_ven::identity::channel(
        &addr,
        &env.ca,
        Some((&forged.cert_pem, &forged.key_pem)),
        Duration::from_secs(5),
    )
    .await;
    let refused = match stream {
        Err(_) => true,
        Ok(ch) => {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx
                .send(VenMessage {
                    kind: Some(ven_message::Kind::Heartbeat(Heartbeat {})),
                })
                .await;
            VenClient::new(ch)
                .policy_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .is_err()
        }
    };
    assert!(
        refused,
        "a certificate from another CA must not open a stream"
    );

    // A malformed stream: the first message is not hello.
    let ch = sc_ven::identity::channel(
        &addr,
        &env.ca,
        Some((&good.cert_pem, &good.key_pem)),
        Duration::from_secs(5),
    )
    .await
    .expect("channel");
    let (tx, rx) = mpsc::channel(1);
    tx.send(VenMessage {
        kind: Some(ven_message::Kind::Heartbeat(Heartbeat {})),
    })
    .await
    .expect("send");
    let mut inbound = VenClient::new(ch.clone())
        .policy_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let st = inbound.message().await.expect_err("refused");
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert!(st.message().contains("hello"));

    // A flood of flow reports beyond the batch limit; a good batch is stored.
    // (Flows older than the retention are expired at once: report them as now.)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let flow = Flow {
        src: "10.0.0.1".into(),
        dst: "10.0.0.2".into(),
        direction: "inbound".into(),
        port: 443,
        proto: 6,
        allowed: true,
        count: 3,
        first_seen_ms: now - 1000,
        last_seen_ms: now,
        ..Flow::default()
    };
    // A paired VEN without a policy stream at this member reports nothing
    // here (its flows go where it streams).
    let unlimited = env
        .pairing_key(&[&web], json!("unlimited"), json!("unlimited"))
        .await;
    let idle = pair(&addr, &env.ca, &unlimited, &facts(5))
        .await
        .expect("pair");
    let idle_ch = sc_ven::identity::channel(
        &addr,
        &env.ca,
        Some((&idle.cert_pem, &idle.key_pem)),
        Duration::from_secs(5),
    )
    .await
    .expect("channel");
    let st = VenClient::new(idle_ch)
        .report_flows(FlowBatch {
            flows: vec![flow.clone()],
            dropped: 0,
        })
        .await
        .expect_err("no stream here");
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("policy stream"), "{st:?}");
    // The good VEN streams here (a hello), as its agent does where it reports;
    // one certificate holds at most two streams at one member.
    let hello = || {
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.try_send(VenMessage {
            kind: Some(ven_message::Kind::Hello(Hello {
                policy_hash: String::new(),
                policy_version: 0,
                addresses: vec![],
            })),
        });
        (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
    };
    let mut held = Vec::new();
    let mut refused_stream = None;
    for _ in 0..4 {
        let (tx, rx) = hello();
        match VenClient::new(ch.clone()).policy_stream(rx).await {
            Ok(r) => held.push((tx, r.into_inner())),
            Err(st) => {
                refused_stream = Some(st);
                break;
            }
        }
    }
    assert!(!held.is_empty(), "the good VEN opens its stream");
    let st = refused_stream.expect("a third stream of one certificate is refused");
    assert_eq!(st.code(), tonic::Code::ResourceExhausted, "{st:?}");
    assert!(held.len() <= 2, "{} streams held", held.len());
    let mut client = VenClient::new(ch);
    let st = client
        .report_flows(FlowBatch {
            flows: vec![flow.clone(); 101],
            dropped: 0,
        })
        .await
        .expect_err("flood");
    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
    assert!(st.message().contains("at most 100"));
    let bad = Flow {
        src: "nowhere".into(),
        ..flow.clone()
    };
    let st = client
        .report_flows(FlowBatch {
            flows: vec![bad],
            dropped: 0,
        })
        .await
        .expect_err("bad flow");
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        client
            .report_flows(FlowBatch {
                flows: vec![flow.clone(); 10],
                dropped: 0,
            })
            .await
            .expect("stored")
            .into_inner()
            .stored,
        10
    );
    // The ten reports of one flow are one stored flow of 30 connections.
    let stored = env.vens[&2]
        .query_flows(&sc_proto::federation::FlowQuery {
            max_results: 100,
            ..Default::default()
        })
        .expect("flows");
    assert_eq!(stored.matches, 1);
    assert_eq!(stored.flows[0].num_connections, 30);
    assert_eq!(stored.flows[0].decision, "allowed");

    // A connection only conntrack saw comes without a decision: the member
    // decides it from the workload's policy (full mode, no rule: blocked).
    // Bytes are kept only at enhanced_data_collection (this one is at the
    // default flow_summary).
    let unknown = Flow {
        src: "10.0.0.9".into(),
        port: 22,
        allowed: false,
        decision: "unknown".into(),
        direction: "inbound".into(),
        bytes_in: 500,
        bytes_out: 7000,
        state: "A".into(),
        ..flow.clone()
    };
    let st = client
        .report_flows(FlowBatch {
            flows: vec![Flow {
                state: "open".into(),
                ..unknown.clone()
            }],
            dropped: 0,
        })
        .await
        .expect_err("bad state");
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert!(st.message().contains("state"), "{st:?}");
    client
        .report_flows(FlowBatch {
            flows: vec![unknown],
            dropped: 0,
        })
        .await
        .expect("stored");
    let decided = env.vens[&2]
        .query_flows(&sc_proto::federation::FlowQuery {
            max_results: 100,
            ..Default::default()
        })
        .expect("flows");
    let ssh = decided
        .flows
        .iter()
        .find(|f| f.port == 22)
        .expect("the conntrack-only flow is stored");
    assert_eq!((ssh.decision.as_str(), ssh.rule.as_str()), ("blocked", ""));
    assert_eq!((ssh.dst_bi, ssh.dst_bo, ssh.state.as_str()), (0, 0, "A"));

    // The good VEN kept being served throughout: a policy change still reaches it.
    let before = applied(&events, &good.workload_id);
    let rs = env
        .post("/sec_policy/draft/rule_sets", json!({"name": "rs"}))
        .await["href"]
        .as_str()
        .expect("href")
        .to_string();
    let r = env.api.post(&format!("/api/v2{rs}/sec_rules"), &json!({"providers": [{"label": {"href": web}}], "consumers": [{"label": {"href": web}}], "ingress_services": [{"proto": 6, "port": 80}]})).await.expect("rule");
    assert!(r.status.is_success());
    env.provision().await;
    wait_for("a push after the abuse", Duration::from_secs(30), || {
        applied(&events, &good.workload_id) > before
    })
    .await;
    let _ = stop_tx.send(true);
}

fn rcgen_key() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key.serialize_pem(), csr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unpairing_removes_the_table_and_the_identity_and_offline_workloads_leave_peers_rules() {
    let mut env = Env::start().await;
    let web = env.label("role", "web").await;
    let db = env.label("role", "db").await;
    // db accepts 5432 from web: web's address is in db's rules while web is online.
    let rs = env
        .post("/sec_policy/draft/rule_sets", json!({"name": "t"}))
        .await["href"]
        .as_str()
        .expect("href")
        .to_string();
    let r = env.api.post(&format!("/api/v2{rs}/sec_rules"), &json!({"providers": [{"label": {"href": db}}], "consumers": [{"label": {"href": web}}], "ingress_services": [{"proto": 6, "port": 5432}]})).await.expect("rule");
    assert!(r.status.is_success());
    env.provision().await;
    let web_key = env
        .pairing_key(&[&web], json!("unlimited"), json!("unlimited"))
        .await;
    let db_key = env
        .pairing_key(&[&db], json!("unlimited"), json!("unlimited"))
        .await;
    let w = pair(&env.ven_addr(1), &env.ca, &web_key, &facts(21))
        .await
        .expect("web");
    let d = pair(&env.ven_addr(1), &env.ca, &db_key, &facts(22))
        .await
        .expect("db");
    let events: Events = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop) = watch::channel(false);
    let (web_stop_tx, web_stop) = watch::channel(false);
    spawn_agent(d.clone(), &events, &stop);
    let dir = tempfile::tempdir().expect("dir");
    w.save(dir.path()).expect("save");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ev = events.clone();
    let wid = w.workload_id.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            ev.lock()
                .expect("lock")
                .entry(wid.clone())
                .or_default()
                .push(e);
        }
    });
    let slot = Arc::new(Mutex::new(None));
    let mut agent = Agent::new(
        w.clone(),
        Some(dir.path().to_path_buf()),
        Enforcer::Memory(slot.clone()),
    )
    .expect("agent")
    .with_events(tx);
    agent.heartbeat = Duration::from_millis(300);
    let web_run = tokio::spawn(agent.run(web_stop.clone()));
    wait_for("both policies", Duration::from_secs(30), || {
        applied(&events, &w.workload_id) >= 1 && applied(&events, &d.workload_id) >= 1
    })
    .await;
    let db_policy = |env: &Env| -> String {
        env.vens
            .values()
            .find_map(|s| {
                s.cache()
                    .policy_of(&d.workload_id)
                    .filter(|_| s.sessions().contains_key(&d.workload_id))
                    .map(|p| p.json.clone())
            })
            .unwrap_or_default()
    };
    assert!(
        db_policy(&env).contains("10.0.0.21") || db_policy(&env).contains("167772181"),
        "web's address is in db's rules: {}",
        db_policy(&env)
    );

    // web goes away without a goodbye (its process dies): after the offline
    // timeout it is offline and db's rules no longer carry its address.
    web_run.abort();
    let before = applied(&events, &d.workload_id);
    wait_for(
        "db's push after web went offline",
        Duration::from_secs(30),
        || applied(&events, &d.workload_id) > before,
    )
    .await;
    let wl = env
        .api
        .get(&format!("{ORG}/workloads/{}", w.workload_id))
        .await
        .expect("get")
        .json();
    assert_eq!(wl["online"], false, "{wl}");
    // It comes back: online again, and back in db's rules.
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let ev2 = events.clone();
    let wid2 = w.workload_id.clone();
    tokio::spawn(async move {
        while let Some(e) = rx2.recv().await {
            ev2.lock()
                .expect("lock")
                .entry(wid2.clone())
                .or_default()
                .push(e);
        }
    });
    let agent = Agent::new(
        Identity::load(dir.path()).expect("load").expect("identity"),
        Some(dir.path().to_path_buf()),
        Enforcer::Memory(slot.clone()),
    )
    .expect("agent")
    .with_events(tx2);
    let web_run = tokio::spawn(agent.run(web_stop.clone()));
    let before = applied(&events, &d.workload_id);
    wait_for(
        "db's push after web came back",
        Duration::from_secs(30),
        || applied(&events, &d.workload_id) > before,
    )
    .await;

    // Unpairing: the VEN removes its table, forgets its identity and stops.
    let u = env
        .api
        .put(
            &format!("{ORG}/workloads/{}/unpair", w.workload_id),
            &json!({}),
        )
        .await
        .expect("unpair");
    assert_eq!(u.status, 204, "{}", String::from_utf8_lossy(&u.body));
    wait_for("the VEN to stop", Duration::from_secs(30), || {
        web_run.is_finished()
    })
    .await;
    assert!(events.lock().expect("lock")[&w.workload_id].contains(&AgentEvent::Unpaired));
    assert!(
        Identity::load(dir.path()).expect("load").is_none(),
        "identity forgotten"
    );
    let text = slot.lock().expect("lock").clone().unwrap_or_default();
    assert!(
        text.contains("delete table inet pce") && !text.contains("policy drop"),
        "table removed:\n{text}"
    );
    let _ = (stop_tx.send(true), web_stop_tx.send(true));
}

/// A VEN of the release before protocol headers: the recorded protocol-1
/// messages (`proto/proto/compat/ven-protocol-1.proto`), sent with no
/// version header, as such a VEN sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ven_of_the_protocol_before_pairs_streams_acknowledges_and_reports_flows() {
    use sc_proto::compat::ven_protocol_1 as v1;
    use v1::ven_client::VenClient as OldVenClient;

    let mut env = Env::start().await;
    let web = env.label("role", "web").await;
    let code = env
        .pairing_key(&[&web], json!("unlimited"), json!("unlimited"))
        .await;
    let addr = env.ven_addr(2);
    let channel = |cert: Option<(String, String)>| {
        let (addr, ca) = (addr.clone(), env.ca.clone());
        async move {
            let pair = cert.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
            sc_ven::identity::channel(&addr, &ca, pair, Duration::from_secs(5))
                .await
                .expect("channel")
        }
    };

    // Pairing: the old response has no home region; the VEN ignores nothing
    // it needs.
    let (key_pem, csr_pem) = rcgen_key();
    let paired = OldVenClient::new(channel(None).await)
        .pair(v1::PairRequest {
            activation_code: code,
            hostname: "old-ven".into(),
            addresses: vec!["10.9.0.1".into()],
            os: "linux".into(),
            csr_pem,
        })
        .await
        .expect("an older VEN pairs")
        .into_inner();
    assert!(!paired.workload_id.is_empty() && !paired.members.is_empty());
    let ch = channel(Some((paired.cert_pem.clone(), key_pem))).await;

    // The policy stream: hello, a policy whose hash is the old contract's,
    // an acknowledgement the member counts as current.
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::VenMessage {
        kind: Some(v1::ven_message::Kind::Hello(v1::Hello {
            policy_hash: String::new(),
            policy_version: 0,
        })),
    })
    .await
    .expect("hello");
    let mut inbound = OldVenClient::new(ch.clone())
        .policy_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("an older VEN streams")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("a policy within 10 s")
        .expect("stream")
        .expect("a message");
    let Some(v1::pce_message::Kind::Policy(p)) = first.kind else {
        panic!("expected a policy, got {first:?}");
    };
    assert_eq!(
        p.hash,
        sc_proto::contract::policy_hash(p.compiled_json.as_bytes())
    );
    let compiled: sc_policy::compute::CompiledPolicy =
        serde_json::from_str(&p.compiled_json).expect("the policy an older VEN renders");
    assert_eq!(compiled.workload, paired.workload_id);
    tx.send(v1::VenMessage {
        kind: Some(v1::ven_message::Kind::Applied(v1::Applied {
            policy_hash: p.hash.clone(),
            policy_version: p.version,
        })),
    })
    .await
    .expect("applied");
    let node = env.cluster.node(2).clone();
    wait_for(
        "the older VEN counted current",
        Duration::from_secs(10),
        || node.status().services.vens_current == Some(1),
    )
    .await;

    // Flows in the older shape (no byte counts, no state) are stored.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let stored = OldVenClient::new(ch.clone())
        .report_flows(v1::FlowBatch {
            flows: vec![v1::Flow {
                src: "10.9.0.2".into(),
                dst: "10.9.0.1".into(),
                port: 443,
                proto: 6,
                allowed: true,
                count: 2,
                first_seen_ms: now - 1000,
                last_seen_ms: now,
                direction: "inbound".into(),
                decision: "allowed".into(),
                rule: String::new(),
            }],
            dropped: 0,
        })
        .await
        .expect("an older VEN's flows are accepted")
        .into_inner()
        .stored;
    assert_eq!(stored, 1);

    // A caller that says it speaks a protocol older than any served is told
    // which it needs, and nothing else happens.
    let mut too_old = tonic::Request::new(v1::PingRequest {});
    too_old.metadata_mut().insert(
        sc_proto::version::PROTOCOL_HEADER,
        tonic::metadata::MetadataValue::from(0u32),
    );
    let st = OldVenClient::new(ch)
        .ping(too_old)
        .await
        .expect_err("protocol 0 is refused");
    assert_eq!(st.code(), tonic::Code::FailedPrecondition, "{st:?}");
    assert!(st.message().contains("needs at least 1"), "{st:?}");
}

/// The ruleset (nft text) an in-memory agent loaded last.
type Table = Arc<Mutex<Option<String>>>;

/// An agent whose loaded ruleset and events the test reads.
/// `learn`: whether the agent learns members beyond its identity's list (a
/// test pins a VEN to one node by giving it only that one, not learning).
fn spawn_watched_agent(
    identity: Identity,
    addresses: Vec<String>,
    learn: bool,
    stop: &watch::Receiver<bool>,
) -> (
    Table,
    Arc<Mutex<Vec<AgentEvent>>>,
    tokio::task::JoinHandle<()>,
) {
    let table = Arc::new(Mutex::new(None));
    let events = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ev = events.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            ev.lock().expect("lock").push(e);
        }
    });
    let mut agent = Agent::new(identity, None, Enforcer::Memory(table.clone()))
        .expect("agent")
        .with_events(tx);
    agent.heartbeat = Duration::from_millis(300);
    agent.addresses = addresses;
    agent.learn_members = learn;
    let stop = stop.clone();
    let task = tokio::spawn(async move {
        let _ = agent.run(stop).await;
    });
    (table, events, task)
}

fn last_connected(events: &Mutex<Vec<AgentEvent>>) -> Option<String> {
    events
        .lock()
        .expect("lock")
        .iter()
        .rev()
        .find_map(|e| match e {
            AgentEvent::Connected(m) => Some(m.clone()),
            _ => None,
        })
}

fn applied_count(events: &Mutex<Vec<AgentEvent>>) -> usize {
    events
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| matches!(e, AgentEvent::Applied { .. }))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_application_moved_to_another_region_rehomes_its_vens_and_peers_follow_its_new_address()
{
    let mut env = Env::start().await;
    let (app, prod, db) = (
        env.label("app", "shop").await,
        env.label("env", "prod").await,
        env.label("role", "db").await,
    );
    // The database admits the shop on 5432.
    let rs = env
        .post("/sec_policy/draft/rule_sets", json!({"name": "shop-db"}))
        .await["href"]
        .as_str()
        .expect("href")
        .to_string();
    let r = env.api.post(&format!("/api/v2{rs}/sec_rules"), &json!({"providers": [{"label": {"href": db}}], "consumers": [{"label": {"href": app}}], "ingress_services": [{"proto": 6, "port": 5432}], "unscoped_consumers": true})).await.expect("rule");
    assert!(
        r.status.is_success(),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    env.provision().await;
    // The shop pairs in region 1, the database in region 2.
    let shop_key = env.pairing_key(&[&app, &prod], json!(1), json!(3600)).await;
    let db_key = env.pairing_key(&[&db], json!(1), json!(3600)).await;
    let shop = pair(&env.ven_addr(1), &env.ca, &shop_key, &facts(21))
        .await
        .expect("pair shop");
    let database = pair(&env.ven_addr(2), &env.ca, &db_key, &facts(22))
        .await
        .expect("pair db");
    let (home, to) = (
        env.cluster.node(1).info().region.clone(),
        env.cluster.node(3).info().region.clone(),
    );
    assert_eq!(shop.home_region.as_deref(), Some(home.as_str()));
    let (_stop_tx, stop) = watch::channel(false);
    let (_, shop_events, shop_task) = spawn_watched_agent(shop.clone(), vec![], true, &stop);
    let (db_table, db_events, _db_task) =
        spawn_watched_agent(database.clone(), vec![], true, &stop);
    wait_for("both VENs enforcing", Duration::from_secs(30), || {
        applied_count(&shop_events) >= 1 && applied_count(&db_events) >= 1
    })
    .await;
    let node1 = env.cluster.node(1).info().name.clone();
    assert_eq!(last_connected(&shop_events), Some(node1));

    // Bad input changes nothing.
    for (body, needle) in [
        (
            json!({"app": "shop", "env": "prod", "to": "atlantis"}),
            "not a region",
        ),
        (
            json!({"app": "nope", "env": "prod", "to": to}),
            "no label app=nope",
        ),
        (json!({"app": "shop", "env": "prod"}), "to"),
    ] {
        let a = env
            .api
            .post("/api/v2/supercluster/move_app", &body)
            .await
            .expect("post");
        let text = String::from_utf8_lossy(&a.body).to_string();
        assert!(
            a.status.is_client_error() && text.contains(needle),
            "{body}: {text}"
        );
    }

    // The move: the shop's VEN re-homes to region 3 without pairing again,
    // and is sent nothing (its policy is the same bytes there).
    let applied_before = applied_count(&shop_events);
    let db_applied_before = applied_count(&db_events);
    let a = env
        .api
        .post(
            "/api/v2/supercluster/move_app",
            &json!({"app": "shop", "env": "prod", "to": to}),
        )
        .await
        .expect("move");
    let moved = a.json();
    assert!(a.status.is_success(), "{moved}");
    assert_eq!(moved["moved"].as_array().map(Vec::len), Some(1), "{moved}");
    let node3 = env.cluster.node(3).info().name.clone();
    wait_for(
        "the shop's VEN on region 3",
        Duration::from_secs(30),
        || last_connected(&shop_events).as_deref() == Some(node3.as_str()),
    )
    .await;
    assert!(shop_events
        .lock()
        .expect("lock")
        .contains(&AgentEvent::Rehomed(to.clone())));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        applied_count(&shop_events),
        applied_before,
        "no push on a move"
    );
    assert_eq!(
        applied_count(&db_events),
        db_applied_before,
        "peers unchanged"
    );
    let w = env
        .api
        .get(&format!("{ORG}/workloads/{}", shop.workload_id))
        .await
        .expect("get")
        .json();
    assert_eq!(w["region"], to.as_str(), "{w}");
    // Moving again is a no-op, said so.
    let again = env
        .api
        .post(
            "/api/v2/supercluster/move_app",
            &json!({"app": "shop", "env": "prod", "to": to}),
        )
        .await
        .expect("again")
        .json();
    assert_eq!(again["already_there"], 1, "{again}");

    // The shop's host comes back at a new address (a DR site): the same
    // identity, started with the old home, reports it; it is told its new
    // home, and the database's rules admit the new address.
    shop_task.abort();
    let t0 = Instant::now();
    let (_, moved_events, _moved_task) =
        spawn_watched_agent(shop.clone(), vec!["10.77.0.1".into()], true, &stop);
    wait_for(
        "the database admits the new address",
        Duration::from_secs(30),
        || {
            db_table
                .lock()
                .expect("lock")
                .as_deref()
                .is_some_and(|t| t.contains("10.77.0.1"))
        },
    )
    .await;
    eprintln!(
        "peer updated {} ms after the moved VEN started",
        t0.elapsed().as_millis()
    );
    wait_for("the moved VEN on region 3", Duration::from_secs(30), || {
        last_connected(&moved_events).as_deref() == Some(node3.as_str())
    })
    .await;
    let w = env
        .api
        .get(&format!("{ORG}/workloads/{}", shop.workload_id))
        .await
        .expect("get")
        .json();
    assert_eq!(w["interfaces"][0]["address"], "10.77.0.1", "{w}");

    // A VEN streaming away from home (it reaches region 2 only) when its
    // application moves to that very region: its policy there is the same
    // bytes, and still it is told its new home.
    _moved_task.abort();
    let mut pinned = shop.clone();
    pinned.members.retain(|m| m.addr == env.ven_addr(2));
    assert_eq!(pinned.members.len(), 1, "{:?}", shop.members);
    let (_, away_events, _away_task) =
        spawn_watched_agent(pinned, vec!["10.77.0.1".into()], false, &stop);
    let node2 = env.cluster.node(2).info().name.clone();
    wait_for(
        "the VEN streaming from region 2",
        Duration::from_secs(30),
        || {
            last_connected(&away_events).as_deref() == Some(node2.as_str())
                && applied_count(&away_events) >= 1
        },
    )
    .await;
    let region2 = env.cluster.node(2).info().region.clone();
    let a = env
        .api
        .post(
            "/api/v2/supercluster/move_app",
            &json!({"app": "shop", "env": "prod", "to": region2}),
        )
        .await
        .expect("move to 2");
    assert!(a.status.is_success(), "{}", a.json());
    wait_for(
        "the VEN told its home is region 2",
        Duration::from_secs(10),
        || {
            away_events
                .lock()
                .expect("lock")
                .contains(&AgentEvent::Rehomed(region2.clone()))
        },
    )
    .await;
}
