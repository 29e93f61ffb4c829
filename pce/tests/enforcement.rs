//! Real enforcement: three hosts (network namespaces web, app, db on a bridge),
//! each running a real VEN (`pce ven run`, nftables) against a real 3-region
//! cluster (`pce serve` processes on the bridge's addresses). Real TCP
//! connections show the provisioned policy, its change, enforcement surviving
//! the loss of every PCE node, and a VEN restarted with no PCE re-applying its
//! cached policy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::drill_report;
use sc_chaos::netns::Net;
use sc_leader::client::ApiClient;
use sc_testkit::free_port;
use serde_json::{json, Value};

const PCE: &str = env!("CARGO_BIN_EXE_pce");
const ORG: &str = "/api/v2/orgs/1";
const HOSTS: [(&str, u8); 3] = [("web", 11), ("app", 12), ("db", 13)];

/// A TCP connection to argv[1]:argv[2] within argv[3] seconds (from the
/// address argv[4], if given), or exit 1.
const CONNECT: &str = "import socket,sys\nsrc=(sys.argv[4],0) if len(sys.argv)>4 else None\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]), source_address=src).close()\nexcept Exception:\n sys.exit(1)";

fn sh(cmd: &[&str]) -> (bool, String) {
    match Command::new(cmd[0]).args(&cmd[1..]).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

fn must(cmd: &[&str]) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "{cmd:?}: {out}");
    out
}

/// The lab: a bridge with the PCE addresses, three namespaces, processes.
struct Lab {
    net: Net,
    dir: tempfile::TempDir,
    nodes: HashMap<u64, Child>,
    vens: HashMap<&'static str, Child>,
    listeners: Vec<Child>,
    /// Files holding the pids of processes a drill's command started.
    pid_files: Vec<PathBuf>,
}

impl Lab {
    fn ns(&self, host: &str) -> String {
        self.net.host(host).expect("host").ns.clone()
    }

    /// An address on the lab's subnet (1-3: the PCE nodes on the bridge).
    fn ip(&self, last: u8) -> String {
        let o = self.net.hub[0].octets();
        format!("{}.{}.{}.{last}", o[0], o[1], o[2])
    }

    fn new() -> Option<Lab> {
        if sc_chaos::netns::available().is_err() || !sh(&["python3", "--version"]).0 {
            return None;
        }
        let n = std::process::id() % 200;
        let net = Net::create(&format!("e{n}"), [10, 213, n as u8], &[1, 2, 3], &HOSTS)
            .expect("the lab network");
        Some(Lab {
            net,
            dir: tempfile::tempdir().unwrap(),
            nodes: HashMap::new(),
            vens: HashMap::new(),
            listeners: Vec::new(),
            pid_files: Vec::new(),
        })
    }

    fn exec(&self, host: &str, args: &[&str]) -> Command {
        self.net.exec(host, args).expect("host")
    }

    /// Whether a TCP connection from `host` to `ip:port` is established within 1.5 s.
    fn reach(&self, host: &str, ip: &str, port: u16) -> bool {
        self.exec(
            host,
            &["python3", "-c", CONNECT, ip, &port.to_string(), "1.5"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    }

    fn listen(&mut self, host: &str, ports: &[u16]) {
        let code = "import socket,sys,threading\ndef serve(p):\n s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', p)); s.listen(64)\n while True:\n  c,_=s.accept(); c.close()\nfor p in sys.argv[1:]:\n threading.Thread(target=serve, args=(int(p),), daemon=True).start()\nthreading.Event().wait()";
        let mut args = vec!["python3", "-c", code];
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        args.extend(ports.iter().map(String::as_str));
        let child = self
            .exec(host, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.listeners.push(child);
    }

    fn start_node(&mut self, id: u64) {
        let cfg = self.dir.path().join(format!("n{id}/node.toml"));
        let child = Command::new(PCE)
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.nodes.insert(id, child);
    }

    fn start_ven(&mut self, host: &'static str) {
        let dir = self.dir.path().join(format!("ven-{host}"));
        let child = self
            .exec(
                host,
                &[
                    PCE,
                    "ven",
                    "run",
                    "--dir",
                    dir.to_str().unwrap(),
                    "--flow-report-interval",
                    "1",
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.vens.insert(host, child);
    }

    fn table(&self, host: &str) -> String {
        sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns(host),
            "nft",
            "list",
            "table",
            "inet",
            "pce",
        ])
        .1
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self
            .vens
            .values_mut()
            .chain(self.nodes.values_mut())
            .chain(self.listeners.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.pid_files {
            if let Some(pid) = std::fs::read_to_string(f)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a pid this test's drill started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn post(c: &mut ApiClient, path: &str, body: Value) -> Value {
    let a = c.post(path, &body).await.expect("post");
    assert!(
        a.status.is_success(),
        "{path}: {} {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

/// Polls an Explorer job until its `field` (`status`, or `rules` after
/// update_rules) is `completed`.
async fn poll_job(api: &mut ApiClient, job: &str, field: &str) -> Value {
    let t0 = std::time::Instant::now();
    loop {
        let j = api.get(job).await.unwrap().json();
        if j[field] == "completed" {
            return j;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "{field} never completed: {j}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn href(v: &Value) -> String {
    v["href"].as_str().expect("href").to_string()
}

#[test]
fn real_vens_enforce_real_traffic_through_change_pce_loss_and_restart() {
    let Some(mut lab) = Lab::new() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test: root, nftables, iproute2 and python3"
        );
        eprintln!("skipping: needs root, nft, ip and python3");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = lab.dir.path().to_path_buf();
    let certs = base.join("certs");
    must(&[PCE, "certs", "init", "--dir", certs.to_str().unwrap()]);
    let (raft_port, api_port, ven_port) = (free_port(), free_port(), free_port());
    for id in 1..=3u64 {
        let ip = lab.ip(id as u8);
        must(&[
            PCE,
            "certs",
            "issue",
            "--dir",
            certs.to_str().unwrap(),
            "--node",
            &format!("n{id}"),
            "--region",
            &format!("r{id}"),
            "--ip",
            &ip,
        ]);
        let join = if id == 1 {
            String::new()
        } else {
            format!(
                "\n[[peers]]\nname = \"n1\"\naddr = \"{}:{raft_port}\"\n",
                lab.ip(1)
            )
        };
        let text = format!(
            "id = {id}\nname = \"n{id}\"\nregion = \"r{id}\"\nlisten = \"{ip}:{raft_port}\"\ndata_dir = \"data\"\nprofile = \"lan\"\nbootstrap = {}\n\n[tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/n{id}.pem\"\nkey = \"{c}/n{id}.key\"\n\n[api]\nlisten = \"{ip}:{api_port}\"\n\n[ven]\nlisten = \"{ip}:{ven_port}\"\nca = \"{c}/ven-ca.pem\"\nca_key = \"{c}/ven-ca.key\"\noffline_after_secs = 5\n{join}",
            id == 1,
            c = certs.display()
        );
        std::fs::create_dir_all(base.join(format!("n{id}"))).unwrap();
        std::fs::write(base.join(format!("n{id}/node.toml")), text).unwrap();
        lab.start_node(id);
    }
    let key_file = |b: &Path| -> Option<PathBuf> {
        (1..=3)
            .map(|id| b.join(format!("n{id}/data/owner-api-key.json")))
            .find(|p| p.exists())
    };
    wait_until("the owner key", Duration::from_secs(60), || {
        key_file(&base).is_some()
    });
    let key: Value =
        serde_json::from_str(&std::fs::read_to_string(key_file(&base).unwrap()).unwrap()).unwrap();
    let ca = std::fs::read_to_string(certs.join("ca.pem")).unwrap();
    let api_addr: SocketAddr = format!("{}:{api_port}", lab.ip(2)).parse().unwrap();
    let mut api = ApiClient::new(api_addr, Some(&ca)).unwrap().with_key(
        key["auth_username"].as_str().unwrap(),
        key["secret"].as_str().unwrap(),
    );

    // Labels, one pairing profile per role (full enforcement), the policy.
    let (labels, codes, rs) = rt.block_on(async {
        let mut labels = HashMap::new();
        let mut codes = HashMap::new();
        // App groups for the map: web and app are the shop, db the store.
        let mut group = HashMap::new();
        for (k, v) in [("app", "shop"), ("app", "store"), ("env", "prod")] {
            group.insert(v, href(&post(&mut api, &format!("{ORG}/labels"), json!({"key": k, "value": v})).await));
        }
        for (host, _) in HOSTS {
            let l = href(&post(&mut api, &format!("{ORG}/labels"), json!({"key": "role", "value": host})).await);
            let app = if host == "db" { group["store"].clone() } else { group["shop"].clone() };
            let p = href(&post(&mut api, &format!("{ORG}/pairing_profiles"), json!({"name": host, "labels": [{"href": l}, {"href": app}, {"href": group["prod"]}], "enforcement_mode": "full"})).await);
            let k = post(&mut api, &format!("/api/v2{p}/pairing_key"), json!({})).await;
            codes.insert(host, k["activation_code"].as_str().unwrap().to_string());
            labels.insert(host, l);
        }
        let rs = href(&post(&mut api, &format!("{ORG}/sec_policy/draft/rule_sets"), json!({"name": "three-tier"})).await);
        for (provider, consumer, port) in [("app", "web", 8080), ("db", "app", 5432)] {
            post(&mut api, &format!("/api/v2{rs}/sec_rules"), json!({"providers": [{"label": {"href": labels[provider]}}], "consumers": [{"label": {"href": labels[consumer]}}], "ingress_services": [{"proto": 6, "port": port}]})).await;
        }
        post(&mut api, &format!("{ORG}/sec_policy"), json!({"update_description": "web -> app 8080, app -> db 5432"})).await;
        (labels, codes, rs)
    });

    // A real VEN in each host: pair, then run (nftables).
    for (host, last) in HOSTS {
        let dir = base.join(format!("ven-{host}"));
        let server = format!("{}:{ven_port}", lab.ip(((last - 10) as u64 % 3 + 1) as u8));
        let out = lab
            .exec(
                host,
                &[
                    PCE,
                    "ven",
                    "pair",
                    "--server",
                    &server,
                    "--ca",
                    certs.join("ca.pem").to_str().unwrap(),
                    "--activation-code",
                    &codes[host],
                    "--dir",
                    dir.to_str().unwrap(),
                    "--hostname",
                    host,
                    "--address",
                    &lab.ip(last),
                ],
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pair {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.start_ven(host);
    }
    lab.listen("web", &[80]);
    lab.listen("app", &[8080, 22]);
    lab.listen("db", &[5432]);
    for (host, _) in HOSTS {
        wait_until(
            &format!("{host}'s firewall"),
            Duration::from_secs(60),
            || lab.table(host).contains("policy drop"),
        );
    }
    let (web, app, db) = (lab.ip(11), lab.ip(12), lab.ip(13));
    // `generated`: the policy generator's rules for the shop are in force,
    // opening what the refused attempts below asked for; a connection never
    // attempted before them (db -> web:80) stays dropped.
    let check = |lab: &Lab, web_db: bool, generated: bool, when: &str| {
        assert!(
            lab.reach("web", &app, 8080),
            "{when}: web -> app:8080 must pass"
        );
        assert!(
            lab.reach("app", &db, 5432),
            "{when}: app -> db:5432 must pass"
        );
        for (from, to, port) in [("web", &app, 22), ("app", &web, 80), ("db", &app, 8080)] {
            assert_eq!(
                lab.reach(from, to, port),
                generated,
                "{when}: {from} -> {to}:{port} must {}",
                if generated { "pass" } else { "be dropped" }
            );
        }
        assert_eq!(
            lab.reach("web", &db, 5432),
            web_db,
            "{when}: web -> db:5432"
        );
        if generated {
            assert!(
                !lab.reach("db", &web, 80),
                "{when}: db -> web:80, never observed, must be dropped"
            );
        }
    };
    wait_until("the provisioned flows", Duration::from_secs(30), || {
        lab.reach("web", &app, 8080) && lab.reach("app", &db, 5432)
    });
    check(&lab, false, false, "after provisioning");

    // Visibility: the kernel's decisions reach the members as flows, and one
    // Explorer query at region 2 answers for every region (web reports to
    // r2, app to r3, db to r1).
    let window = |q: Value| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let iso = |s: u64| {
            let v = sc_store::time::iso8601(s * 1000);
            format!("{}Z", &v[..19])
        };
        let mut q = q;
        q["start_date"] = json!(iso(now - 3600));
        q["end_date"] = json!(iso(now + 3600));
        q
    };
    let flows_to = |api: &mut ApiClient, port: u16| -> Vec<Value> {
        rt.block_on(async {
            let q = window(json!({"destinations": {"include": [[{"label": {"href": labels["app"]}}]]}, "services": {"include": [{"proto": 6, "port": port}]}}));
            let a = api
                .post(&format!("{ORG}/traffic_flows/traffic_analysis_queries"), &q)
                .await
                .unwrap();
            assert_eq!(a.status.as_u16(), 200, "explorer: {}", a.json());
            a.json().as_array().cloned().unwrap_or_default()
        })
    };
    let has =
        |flows: &[Value], decision: &str| flows.iter().any(|f| f["policy_decision"] == decision);
    let update_workload = |api: &mut ApiClient, host: &str, body: Value| {
        rt.block_on(async {
            let list = api
                .get(&format!("{ORG}/workloads?hostname={host}"))
                .await
                .unwrap()
                .json();
            let w = list
                .as_array()
                .and_then(|l| l.iter().find(|w| w["hostname"] == host))
                .unwrap_or_else(|| panic!("{host}'s workload: {list}"))
                .clone();
            let a = api
                .put(&format!("/api/v2{}", w["href"].as_str().unwrap()), &body)
                .await
                .unwrap();
            assert!(a.status.is_success(), "{host} <- {body}: {}", a.json());
        })
    };
    // app collects bytes (conntrack's counters, joined to the logged decision).
    update_workload(
        &mut api,
        "app",
        json!({"visibility_level": "enhanced_data_collection"}),
    );
    wait_until(
        "web -> app:8080 as an allowed flow with bytes",
        Duration::from_secs(30),
        || {
            lab.reach("web", &app, 8080);
            flows_to(&mut api, 8080).iter().any(|f| {
                f["policy_decision"] == "allowed"
                    && f["flow_direction"] == "inbound"
                    && f["dst_bi"].as_u64().is_some_and(|b| b > 0)
                    && f["dst_bo"].as_u64().is_some_and(|b| b > 0)
            })
        },
    );
    wait_until(
        "web -> app:8080 as an allowed flow",
        Duration::from_secs(30),
        || {
            lab.reach("web", &app, 8080);
            has(&flows_to(&mut api, 8080), "allowed")
        },
    );
    let allowed = flows_to(&mut api, 8080);
    let seen_at_app = allowed
        .iter()
        .find(|f| f["policy_decision"] == "allowed" && f["flow_direction"] == "inbound")
        .expect("app reports the inbound connection");
    assert!(
        ["N", "A", "C", "T"].contains(&seen_at_app["state"].as_str().unwrap_or("")),
        "a state: {seen_at_app}"
    );
    assert_eq!(seen_at_app["src"]["ip"], json!(web), "{seen_at_app}");
    assert_eq!(
        seen_at_app["dst"]["workload"]["hostname"],
        json!("app"),
        "{seen_at_app}"
    );
    // Asked again at a region that does not store it: the same flow.
    let stored_in = seen_at_app["region"].as_str().unwrap().to_string();
    let other = (1..=3u8).find(|n| format!("r{n}") != stored_in).unwrap();
    let other_addr: SocketAddr = format!("{}:{api_port}", lab.ip(other)).parse().unwrap();
    let mut other_api = ApiClient::new(other_addr, Some(&ca)).unwrap().with_key(
        key["auth_username"].as_str().unwrap(),
        key["secret"].as_str().unwrap(),
    );
    let again = flows_to(&mut other_api, 8080);
    assert!(
        again.iter().any(|f| f["region"] == json!(stored_in)
            && f["flow_direction"] == "inbound"
            && f["policy_decision"] == "allowed"),
        "a flow stored in {stored_in} answered by r{other}: {again:?}"
    );
    assert!(
        seen_at_app["rule"]
            .as_str()
            .is_some_and(|r| r.starts_with(rs.rsplit('/').next().unwrap())),
        "the allowing rule: {seen_at_app}"
    );
    // The same from the command line (`pce flows query`), through region 2.
    let (ca_file, key_path) = (certs.join("ca.pem"), key_file(&base).unwrap());
    let apis: Vec<String> = (1..=3)
        .map(|n| format!("{}:{api_port}", lab.ip(n)))
        .collect();
    // `pce <args>` against region `n`'s API with the owner's key.
    let pce_at = |n: usize, args: &[&str]| {
        Command::new(PCE)
            .args(args)
            .args(["--api", &apis[n - 1], "--ca"])
            .arg(&ca_file)
            .arg("--key-file")
            .arg(&key_path)
            .output()
            .unwrap()
    };
    let o = pce_at(
        2,
        &[
            "flows",
            "query",
            "--dst-label",
            "role=app",
            "--port",
            "8080",
            "--decision",
            "allowed",
            "--json",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "pce flows query: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let cli: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("pce flows query --json: {e}: {out}"));
    assert!(
        cli.as_array().is_some_and(|l| !l.is_empty()
            && l.iter()
                .all(|f| f["policy_decision"] == "allowed" && f["service"]["port"] == 8080)),
        "pce flows query: {out}"
    );
    wait_until(
        "web -> app:22 as a blocked flow",
        Duration::from_secs(30),
        || {
            lab.reach("web", &app, 22);
            has(&flows_to(&mut api, 22), "blocked")
        },
    );

    // The app group map, from region 3: the shop (web, app) and the store
    // (db); the shop's own traffic (8080 allowed, 22 blocked), the shop
    // reaching the store's database (app allowed, web refused), and the
    // store's refused attempts at the shop.
    wait_until("app -> db:5432 seen", Duration::from_secs(30), || {
        lab.reach("app", &db, 5432);
        rt.block_on(async {
            let q = window(json!({"services": {"include": [{"proto": 6, "port": 5432}]}, "policy_decisions": ["allowed"]}));
            let a = api.post(&format!("{ORG}/traffic_flows/traffic_analysis_queries"), &q).await.unwrap();
            a.json().as_array().is_some_and(|l| !l.is_empty())
        })
    });
    let map_addr: SocketAddr = format!("{}:{api_port}", lab.ip(3)).parse().unwrap();
    let mut map_api = ApiClient::new(map_addr, Some(&ca)).unwrap().with_key(
        key["auth_username"].as_str().unwrap(),
        key["secret"].as_str().unwrap(),
    );
    let map = rt.block_on(async {
        let a = map_api
            .post(&format!("{ORG}/app_group_map"), &window(json!({})))
            .await
            .unwrap();
        assert_eq!(a.status.as_u16(), 200, "map: {}", a.json());
        a.json()
    });
    let node = |name: &str| {
        map["nodes"]
            .as_array()
            .and_then(|l| l.iter().find(|n| n["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no group {name}: {map}"))
    };
    let (shop, store) = (node("shop | prod"), node("store | prod"));
    assert_eq!(
        (shop["workloads"].as_u64(), store["workloads"].as_u64()),
        (Some(2), Some(1)),
        "{map}"
    );
    assert_eq!(shop["enforcement_modes"]["full"], json!(2), "{map}");
    assert_eq!(
        map["nodes"].as_array().map(|l| l.len()),
        Some(2),
        "exactly the two groups: {map}"
    );
    let edge = |from: &Value, to: &Value| {
        map["edges"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|e| e["src"] == from["id"] && e["dst"] == to["id"])
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no edge {} -> {}: {map}", from["name"], to["name"]))
    };
    let inside = edge(&shop, &shop);
    let port_of = |e: &Value, p: u16| {
        e["services"]
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["port"] == p))
    };
    assert!(port_of(&inside, 8080) && port_of(&inside, 22), "{inside}");
    assert!(
        inside["policy_decisions"]["allowed"].as_u64() > Some(0),
        "{inside}"
    );
    assert!(
        inside["policy_decisions"]["blocked"].as_u64() > Some(0),
        "{inside}"
    );
    assert!(
        inside["rule_coverage"]
            .as_f64()
            .is_some_and(|c| c > 0.0 && c < 1.0),
        "{inside}"
    );
    let to_store = edge(&shop, &store);
    assert!(port_of(&to_store, 5432), "{to_store}");
    // app -> db:5432 is allowed, web -> db:5432 (checked above) is not yet.
    let d = &to_store["policy_decisions"];
    let (ok, no) = (
        d["allowed"].as_u64().unwrap(),
        d["blocked"].as_u64().unwrap(),
    );
    assert!(ok > 0 && no > 0, "{to_store}");
    assert_eq!(
        to_store["rule_coverage"],
        json!(ok as f64 / (ok + no) as f64),
        "{to_store}"
    );
    // db's attempts at the shop (the reachability checks) are all refused.
    let from_store = edge(&store, &shop);
    assert_eq!(from_store["rule_coverage"], json!(0.0), "{from_store}");
    assert_eq!(
        from_store["policy_decisions"]["allowed"],
        json!(0),
        "{from_store}"
    );
    assert!(
        map["edges"].as_array().is_some_and(|l| l.len() == 3),
        "exactly the three edges: {map}"
    );
    assert!(
        map["regions"]
            .as_array()
            .is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["responded"] == json!(true))),
        "{map}"
    );
    // A viewer scoped to the store sees the store and the edges touching it
    // (the shop as their other end), not the shop's own traffic.
    let store_app = store["labels"][0]["href"].as_str().unwrap().to_string();
    let store_env = store["labels"][1]["href"].as_str().unwrap().to_string();
    let scoped = rt.block_on(async {
        let body = json!({"username": "store-viewer", "permissions": [{"role": {"href": "/orgs/1/roles/ruleset_viewer"}, "scope": [{"label": {"href": store_app}}, {"label": {"href": store_env}}]}]});
        let u = post(&mut api, "/api/v2/users", body).await;
        let k = post(&mut api, &format!("/api/v2{}/api_keys", href(&u)), json!({"name": "map"})).await;
        let mut c = ApiClient::new(map_addr, Some(&ca)).unwrap().with_key(
            k["auth_username"].as_str().unwrap(),
            k["secret"].as_str().unwrap(),
        );
        let a = c.post(&format!("{ORG}/app_group_map"), &window(json!({}))).await.unwrap();
        assert_eq!(a.status.as_u16(), 200, "scoped map: {}", a.json());
        (a.json(), k)
    });
    let (scoped, store_key) = scoped;
    let edges = scoped["edges"].as_array().cloned().unwrap_or_default();
    assert_eq!(edges.len(), 2, "the store's two edges: {scoped}");
    assert!(
        edges
            .iter()
            .all(|e| e["src"] == store["id"] || e["dst"] == store["id"]),
        "{scoped}"
    );
    assert_eq!(
        scoped["nodes"].as_array().map(|n| n.len()),
        Some(2),
        "the store, and the shop as an edge's end: {scoped}"
    );

    // Every region reports the policy its VENs enforce: each managed workload
    // is connected and current (its member refreshes this every 2 s).
    let sync = rt.block_on(async {
        let t0 = std::time::Instant::now();
        loop {
            let a = map_api
                .get(&format!("{ORG}/workloads/policy_sync"))
                .await
                .unwrap();
            assert_eq!(a.status.as_u16(), 200, "policy sync: {}", a.json());
            let sync = a.json();
            let vens = sync["workloads"].as_array().cloned().unwrap_or_default();
            let settled = !vens.is_empty()
                && vens
                    .iter()
                    .all(|v| v["connected"] == json!(true) && v["current"] == json!(true));
            if settled || t0.elapsed() > Duration::from_secs(30) {
                break sync;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let vens = sync["workloads"].as_array().cloned().unwrap_or_default();
    assert!(
        !vens.is_empty()
            && vens.iter().all(|v| v["connected"] == json!(true)
                && v["current"] == json!(true)
                && v["applied_version"]
                    .as_u64()
                    .is_some_and(|n| n >= 1 && n <= sync["latest_version"].as_u64().unwrap_or(0))),
        "every VEN enforces its current policy: {sync}"
    );
    assert!(
        sync["regions"]
            .as_array()
            .is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["responded"] == json!(true))),
        "{sync}"
    );

    // The console at region 3: the same map (its groups and three edges,
    // drawn), and the Explorer's flows, exported as CSV.
    match sc_testkit::browser::Driver::start() {
        None => assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the console checks: install chromium and chromium-driver"
        ),
        Some(driver) => rt.block_on(async {
            use sc_testkit::browser::{accessible, screenshot, sign_in, until};
            let c = driver.browser().await;
            let base = format!("https://{}:{api_port}", lab.ip(3));
            c.goto(&format!("{base}/")).await.expect("the console");
            until(&c, "the sign-in form", "!document.getElementById('signin').hidden").await;
            sign_in(
                &c,
                key["auth_username"].as_str().unwrap(),
                key["secret"].as_str().unwrap(),
            )
            .await;
            until(&c, "signed in", "!document.getElementById('page').hidden").await;
            c.goto(&format!("{base}/#/map")).await.expect("map");
            until(
                &c,
                "the map's three edges",
                "document.querySelectorAll('#page tbody tr').length === 3",
            )
            .await;
            until(&c, "the drawing", "document.querySelectorAll('#map-graph canvas').length > 0").await;
            let text = until(&c, "the map's text", "document.getElementById('page').innerText").await;
            let text = text.as_str().unwrap_or_default();
            assert!(text.contains("shop | prod") && text.contains("store | prod"), "{text}");
            screenshot(&c, "map").await;
            accessible(&c, "map").await;
            c.goto(&format!("{base}/#/explorer")).await.expect("explorer");
            until(&c, "the explorer form", "document.getElementById('explorer-form')").await;
            let field = |id: &'static str| c.find(fantoccini::Locator::Id(id));
            field("f-dst").await.unwrap().send_keys("role=app").await.unwrap();
            field("f-port").await.unwrap().send_keys("8080").await.unwrap();
            c.find(fantoccini::Locator::Css("#explorer-form button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            until(
                &c,
                "the flows to app:8080",
                "(() => { const rows = [...document.querySelectorAll('#explorer-results tbody tr')]; return rows.length > 0 && rows.every(r => r.cells[3].innerText === '8080') && document.querySelector('#explorer-results caption').innerText !== '0 flows'; })()",
            )
            .await;
            screenshot(&c, "explorer").await;
            accessible(&c, "explorer").await;
            field("explorer-csv").await.unwrap().click().await.unwrap();
            let csv = driver.downloads().join("flows.csv");
            let t0 = std::time::Instant::now();
            while !csv.exists() && t0.elapsed() < Duration::from_secs(20) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let text = std::fs::read_to_string(&csv).expect("the CSV export");
            assert!(text.starts_with("time,source,destination,port"), "{text}");
            assert!(text.lines().skip(1).all(|l| l.contains(",8080,")), "{text}");
            // The Workloads page: every VEN's enforced version, current.
            c.goto(&format!("{base}/#/workloads")).await.expect("workloads");
            until(
                &c,
                "every VEN current",
                "(() => { const rows = [...document.querySelectorAll('#page tbody tr')].map(r => r.cells[4].innerText); return rows.some(t => t.includes('current')) && rows.every(t => t.includes('current') || t === 'no VEN'); })()",
            )
            .await;
            screenshot(&c, "workloads").await;
            accessible(&c, "workloads").await;
            let _ = c.close().await;
        }),
    }

    // Drill-down: the edge's Explorer query lists its flows.
    rt.block_on(async {
        let mut q = to_store["flows_query"].clone();
        q["max_results"] = json!(100);
        let a = map_api
            .post(&format!("{ORG}/traffic_flows/traffic_analysis_queries"), &q)
            .await
            .unwrap();
        let flows = a.json();
        assert!(
            flows
                .as_array()
                .is_some_and(|l| !l.is_empty() && l.iter().all(|f| f["service"]["port"] == 5432)),
            "the edge's flows: {flows}"
        );
    });
    // The same as Graphviz DOT from the command line.
    let o = pce_at(3, &["map", "--format", "dot"]);
    let dot = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "pce map: {dot}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        dot.starts_with("digraph")
            && dot.matches(" -> ").count() == 3
            && dot.contains("shop | prod"),
        "{dot}"
    );

    // The draft's verdict on observed traffic (Illumio's update_rules): a
    // draft rule that would let web reach app:22, never provisioned; the
    // blocked flow's draft_policy_decision says allowed. Then it is deleted.
    rt.block_on(async {
        let rule = post(&mut api, &format!("/api/v2{rs}/sec_rules"), json!({"providers": [{"label": {"href": labels["app"]}}], "consumers": [{"label": {"href": labels["web"]}}], "ingress_services": [{"proto": 6, "port": 22}]})).await;
        let q = window(json!({"query_name": "draft", "services": {"include": [{"proto": 6, "port": 22}]}, "policy_decisions": ["blocked"]}));
        let a = api
            .post(&format!("{ORG}/traffic_flows/async_queries"), &q)
            .await
            .unwrap();
        assert_eq!(a.status.as_u16(), 202, "{}", a.json());
        let job = format!("/api/v2{}", a.json()["href"].as_str().unwrap());
        poll_job(&mut api, &job, "status").await;
        let u = api
            .put(&format!("{job}/update_rules"), &json!({}))
            .await
            .unwrap();
        assert_eq!(u.status.as_u16(), 202, "update_rules: {}", u.json());
        let done = poll_job(&mut api, &job, "rules").await;
        let flows = api
            .get(&format!("/api/v2{}", done["result"].as_str().unwrap()))
            .await
            .unwrap()
            .json();
        let list = flows.as_array().cloned().unwrap_or_default();
        assert!(
            list.iter().any(|f| f["policy_decision"] == "blocked"
                && f["draft_policy_decision"] == "allowed"
                && f["service"]["port"] == 22),
            "the draft would allow web -> app:22: {flows}"
        );
        let d = api
            .delete(&format!("/api/v2{}", rule["href"].as_str().unwrap()))
            .await
            .unwrap();
        assert!(d.status.is_success(), "delete the draft rule: {}", d.json());
    });

    // Change the policy: web may reach db too.
    rt.block_on(async {
        post(&mut api, &format!("/api/v2{rs}/sec_rules"), json!({"providers": [{"label": {"href": labels["db"]}}], "consumers": [{"label": {"href": labels["web"]}}], "ingress_services": [{"proto": 6, "port": 5432}]})).await;
        post(&mut api, &format!("{ORG}/sec_policy"), json!({"update_description": "web -> db 5432"})).await;
    });
    wait_until("the new rule in force", Duration::from_secs(30), || {
        lab.reach("web", &db, 5432)
    });
    check(&lab, true, false, "after the change");

    // Visibility only: web and app stop enforcing; the refused attempt now
    // passes, and shows as potentially_blocked. Then back to full.
    let set_mode = |api: &mut ApiClient, mode: &str| {
        for host in ["web", "app"] {
            update_workload(api, host, json!({"enforcement_mode": mode}));
        }
    };
    set_mode(&mut api, "visibility_only");
    wait_until(
        "web -> app:22 passing in visibility_only",
        Duration::from_secs(30),
        || lab.reach("web", &app, 22),
    );
    wait_until(
        "web -> app:22 as potentially_blocked",
        Duration::from_secs(30),
        || {
            lab.reach("web", &app, 22);
            has(&flows_to(&mut api, 22), "potentially_blocked")
        },
    );
    set_mode(&mut api, "full");
    wait_until(
        "web -> app:22 dropped again",
        Duration::from_secs(30),
        || !lab.reach("web", &app, 22),
    );
    check(&lab, true, false, "back in full enforcement");

    // The policy generator for the shop. As before moving an app to
    // enforcement, its workloads run in visibility only while what they do
    // is observed; everything the shop was seen doing since the test began
    // counts: web -> app:8080 (allowed), and the attempts the checks made,
    // web -> app:22, app -> web:80 (inside) and db -> app:8080 (from the
    // store). What it sends the store is the store's policy.
    set_mode(&mut api, "visibility_only");
    wait_until(
        "the shop in visibility only",
        Duration::from_secs(30),
        || lab.reach("web", &app, 22),
    );
    for (from, to, port) in [("web", &app, 22), ("app", &web, 80), ("db", &app, 8080)] {
        assert!(
            from == "db" || lab.reach(from, to, port),
            "{from} -> {to}:{port} passes in visibility only"
        );
    }
    let group = |g: &Value| -> Vec<Value> {
        g["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| json!({"href": l["href"]}))
            .collect()
    };
    let generate = |api: &mut ApiClient, g: &Value, dry_run: bool| -> (u16, Value) {
        rt.block_on(async {
            let body = window(json!({"labels": group(g), "dry_run": dry_run}));
            let a = api
                .post(&format!("{ORG}/policy_generator"), &body)
                .await
                .unwrap();
            (a.status.as_u16(), a.json())
        })
    };
    let kinds = |r: &Value| -> Vec<String> {
        let mut k: Vec<String> = r["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let rule = &p["rule"];
                let port = rule["ingress_services"][0]["port"].as_u64().unwrap_or(0);
                format!("{} {port}", p["kind"].as_str().unwrap_or("?"))
            })
            .collect();
        k.sort();
        k
    };
    let expected = vec![
        "extra_scope 8080".to_string(),
        "intra_scope 22".to_string(),
        "intra_scope 80".to_string(),
    ];
    // A dry run writes nothing and says what coverage it would reach.
    let mut dry = Value::Null;
    wait_until(
        "the generator's three proposals",
        Duration::from_secs(60),
        || {
            let (status, r) = generate(&mut api, &shop, true);
            assert_eq!(status, 200, "generator: {r}");
            dry = r;
            kinds(&dry) == expected
        },
    );
    let before = dry["coverage"]["before"].as_f64().unwrap();
    assert!(before > 0.0 && before < 1.0, "measured coverage: {dry}");
    assert_eq!(dry["coverage"]["after"], json!(1.0), "{dry}");
    assert_eq!(dry["rule_set"]["new"], json!(true), "{dry}");
    assert!(dry["rules"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p.get("href").is_none()));
    let extra = dry["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "extra_scope")
        .unwrap();
    assert_eq!(extra["rule"]["unscoped_consumers"], json!(true), "{extra}");
    assert_eq!(
        extra["rule"]["consumers"].as_array().map(|c| c.len()),
        Some(3),
        "the store's db by role, app and env: {extra}"
    );
    // The store's own proposals are nothing: what reaches it is allowed.
    let (status, for_store) = generate(&mut api, &store, true);
    assert_eq!(status, 200, "{for_store}");
    assert_eq!(kinds(&for_store), Vec::<String>::new(), "{for_store}");
    assert_eq!(for_store["coverage"]["before"], json!(1.0), "{for_store}");
    // A viewer scoped to the store gets the store's recommendations only,
    // and may not write them.
    let mut viewer = ApiClient::new(map_addr, Some(&ca)).unwrap().with_key(
        store_key["auth_username"].as_str().unwrap(),
        store_key["secret"].as_str().unwrap(),
    );
    let (status, r) = generate(&mut viewer, &store, true);
    assert_eq!(status, 200, "the store's, dry: {r}");
    let (status, r) = generate(&mut viewer, &shop, true);
    assert_eq!(status, 403, "the shop is outside the viewer's scope: {r}");
    let (status, r) = generate(&mut viewer, &store, false);
    assert_eq!(status, 403, "a viewer writes no rules: {r}");
    // From the command line, through region 3: the rules go into the draft.
    let o = pce_at(3, &["policy", "generate", "--app", "shop", "--env", "prod"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success()
            && out.contains("-> 100.0%")
            && out.contains("extra_scope")
            && out.contains("role=db + app=store + env=prod"),
        "pce policy generate: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Run again: nothing new, and the draft now covers all of it.
    let (_, again) = generate(&mut api, &shop, true);
    assert_eq!(kinds(&again), Vec::<String>::new(), "{again}");
    assert_eq!(again["coverage"]["before"], json!(1.0), "{again}");
    assert_eq!(again["rule_set"]["new"], json!(false), "{again}");
    // Provision them, switch the shop to full enforcement: the observed
    // traffic passes, the unobserved is dropped.
    rt.block_on(async {
        post(
            &mut api,
            &format!("{ORG}/sec_policy"),
            json!({"update_description": "the shop's generated rules"}),
        )
        .await;
    });
    set_mode(&mut api, "full");
    wait_until(
        "the generated rules in force",
        Duration::from_secs(30),
        || {
            lab.table("web").contains("policy drop")
                && lab.table("app").contains("policy drop")
                && lab.reach("db", &app, 8080)
        },
    );
    check(&lab, true, true, "with the generated rules");
    // That version's affected workloads: the owner sees the shop's; the
    // store's viewer only workloads of its scope (issue 19: policy reads are
    // scoped).
    rt.block_on(async {
        let vs = api
            .get(&format!("{ORG}/sec_policy?max_results=1"))
            .await
            .unwrap()
            .json();
        let version = format!("/api/v2{}", vs[0]["href"].as_str().unwrap());
        let list = |v: &Value| -> Vec<String> {
            v["affected_workloads"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|w| w["href"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let all = list(&api.get(&version).await.unwrap().json());
        let mine = list(&viewer.get(&version).await.unwrap().json());
        let mut outside = 0;
        for w in &all {
            let labels = api.get(&format!("/api/v2{w}")).await.unwrap().json()["labels"].clone();
            let in_store = labels
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x["href"] == json!(store_app)));
            assert_eq!(
                mine.contains(w),
                in_store,
                "{w}: owner {all:?}, viewer {mine:?}"
            );
            outside += usize::from(!in_store);
        }
        assert!(outside > 0, "the version changed shop workloads: {all:?}");
    });

    // One region stops: an async Explorer job still completes and names it.
    if let Some(mut c) = lab.nodes.remove(&3) {
        let _ = c.kill();
        let _ = c.wait();
    }
    rt.block_on(async {
        let q = window(
            json!({"query_name": "region-loss", "policy_decisions": ["allowed", "blocked"]}),
        );
        let a = api
            .send(
                "POST".parse().unwrap(),
                &format!("{ORG}/traffic_flows/async_queries"),
                Some(q.to_string().into_bytes()),
                &[("prefer", "respond-async")],
            )
            .await
            .unwrap();
        assert_eq!(a.status.as_u16(), 202, "{}", a.json());
        let job = format!("/api/v2{}", a.json()["href"].as_str().unwrap());
        let done = poll_job(&mut api, &job, "status").await;
        let regions = done["regions"].as_array().cloned().unwrap_or_default();
        assert_eq!(regions.len(), 3, "every region is listed: {done}");
        let r3 = regions
            .iter()
            .find(|r| r["region"] == "r3")
            .expect("r3 listed");
        assert_eq!(r3["responded"], json!(false), "{done}");
        assert!(
            regions
                .iter()
                .filter(|r| r["responded"] == json!(true))
                .count()
                == 2,
            "{done}"
        );
        let flows = api
            .get(&format!("/api/v2{}", done["result"].as_str().unwrap()))
            .await
            .unwrap()
            .json();
        assert!(
            flows.as_array().is_some_and(|f| !f.is_empty()),
            "r1 and r2 still answer: {flows}"
        );
    });

    // Every PCE node dies: enforcement does not change.
    for (_, mut c) in lab.nodes.drain() {
        let _ = c.kill();
        let _ = c.wait();
    }
    std::thread::sleep(Duration::from_secs(1));
    check(&lab, true, true, "with every PCE node down");

    // A VEN restarts with no PCE reachable (its firewall wiped, as after a reboot):
    // it re-applies the cached policy.
    if let Some(mut c) = lab.vens.remove("web") {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = lab
        .exec("web", &["nft", "delete", "table", "inet", "pce"])
        .status();
    assert!(
        !lab.table("web").contains("policy drop"),
        "the table is gone"
    );
    assert!(
        lab.reach("web", &app, 22) || !lab.reach("app", &web, 80),
        "without a firewall web's outbound is open"
    );
    lab.start_ven("web");
    wait_until(
        "the cached policy re-applied",
        Duration::from_secs(20),
        || lab.table("web").contains("policy drop"),
    );
    check(&lab, true, true, "after the VEN restarted with no PCE");

    // Application DR (drill app-failover). The PCE comes back. The shop (web
    // in r2, app in r3) loses r3; the drill moves the shop to r1, where the
    // app host comes up at a new address (its VEN restarted by the failover
    // command, the same identity); db's firewall must admit the new address:
    // a real connection from it to db:5432, tried until it passes.
    for id in 1..=3 {
        lab.start_node(id);
    }
    let vens_up = || {
        let o = pce_at(2, &["dr", "status", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let vens: u64 = v["regions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["vens_current"].as_u64().unwrap_or(0))
            .sum();
        o.status.success() && vens == 3
    };
    wait_until(
        "a healthy cluster with its three VENs current",
        Duration::from_secs(90),
        vens_up,
    );
    let new_app = lab.ip(22);
    let app_ns = lab.ns("app");
    let app_if = must(&["ip", "-n", &app_ns, "-o", "-4", "addr", "show"])
        .lines()
        .find(|l| l.contains(&format!("{app}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("app's interface")
        .to_string();
    // The control: before the failover, db drops what comes from the new
    // address (the app host holds it as a second address for the attempt).
    let cidr = format!("{new_app}/24");
    must(&["ip", "-n", &app_ns, "addr", "add", &cidr, "dev", &app_if]);
    let before = lab
        .exec(
            "app",
            &["python3", "-c", CONNECT, &db, "5432", "1", &new_app],
        )
        .status()
        .map(|s| s.success())
        .unwrap_or(true);
    must(&["ip", "-n", &app_ns, "addr", "del", &cidr, "dev", &app_if]);
    assert!(!before, "db must drop the new address before the failover");
    assert!(!lab.table("db").contains(&new_app));
    let old_ven = lab.vens.get("app").map(Child::id).expect("app's VEN");
    let pid_file = base.join("app-ven.pid");
    let ven_log = base.join("app-ven.log");
    lab.pid_files.push(pid_file.clone());
    let failover = format!(
        "kill -9 {old_ven}; ip -n {app_ns} addr del {app}/24 dev {app_if} && \
         ip -n {app_ns} addr add {new_app}/24 dev {app_if} && \
         {{ ip netns exec {app_ns} {PCE} ven run --dir {dir} --address {new_app} --flow-report-interval 1 \
           > {log} 2>&1 < /dev/null & echo $! > {pid}; }}",
        dir = base.join("ven-app").display(),
        pid = pid_file.display(),
        log = ven_log.display()
    );
    let probe = format!("ip netns exec {app_ns} python3 -c \"{CONNECT}\" {db} 5432 0.2");
    let reports = base.join("reports");
    let o = pce_at(
        2,
        &[
            "dr",
            "drill",
            "app-failover",
            "--app",
            "shop",
            "--env",
            "prod",
            "--region",
            "r3",
            "--to",
            "r1",
            "--hold",
            "2",
            "--failover-cmd",
            &failover,
            "--probe-cmd",
            &probe,
            "--report-dir",
            reports.to_str().unwrap(),
        ],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{said}");
    assert!(
        o.status.success(),
        "the app-failover drill: {said}\nthe app's VEN after the failover:\n{}",
        std::fs::read_to_string(&ven_log).unwrap_or_default()
    );
    let path = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("the drill's JSON report");
    let r = drill_report(&path);
    let f = &r["app_failover"];
    assert_eq!(f["from"], "r3", "{f}");
    assert_eq!(f["moved"], 2, "web and app moved to r1: {f}");
    assert!(f["peers_updated_ms"].as_u64().is_some(), "{f}");
    assert_eq!(r["writes_failed_unexpectedly"], 0, "{r}");
    // The connection works from the new address, and db's firewall names it
    // and no longer the old one.
    assert!(lab.reach("app", &db, 5432), "app (new address) -> db:5432");
    let db_table = lab.table("db");
    assert!(db_table.contains(&new_app), "{db_table}");
    let old_named = db_table
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|word| word == app);
    assert!(
        !old_named,
        "the old address is gone from db's rules: {db_table}"
    );
    let _ = (&web, &labels);
}
