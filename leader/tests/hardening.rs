//! What an attacker and a DR operator found (issue 19), one test per finding:
//! each fails on the code before its fix. In-process regions, real TLS.

use std::time::{Duration, Instant};

use hyper::Method;
use sc_leader::client::ApiClient;
use sc_testkit::api::*;
use serde_json::json;

/// Polls `f` until it answers `Some`, or fails naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_is_read_only_after_its_sender_is_known_and_within_its_routes_limit() {
    let cl = ApiCluster::start(3, 0).await;
    let member = cl.member().await;
    let addr = cl.addr(member);
    let anonymous = ApiClient::new(addr, Some(&cl.ca)).expect("client");
    // 512 MiB declared, 64 KiB sent: a server that read bodies before
    // credentials would wait for the rest (and hold what came) forever.
    let declared = 512 * 1024 * 1024;
    let chunk = vec![0u8; 64 * 1024];
    let ask = |c: ApiClient, path: &'static str| {
        let chunk = chunk.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                c.send_partial(Method::POST, path, declared, &chunk),
            )
            .await
            .expect("answered without the body")
            .expect("an HTTP answer")
        }
    };
    assert_eq!(ask(anonymous, "/api/v2/supercluster/restore").await, 401);
    let mut owner = cl.client(member);
    let viewer = user_with(&mut owner, "viewer", "read_only", &[]).await;
    let reader = ApiClient::new(addr, Some(&cl.ca))
        .unwrap()
        .with_key(&viewer.0, &viewer.1);
    assert_eq!(ask(reader, "/api/v2/supercluster/restore").await, 403);
    // An operator's oversized body on an ordinary route: 413 at once.
    let big = ApiClient::new(addr, Some(&cl.ca))
        .unwrap()
        .with_key(&cl.owner.auth_username, &cl.owner.secret);
    assert_eq!(ask(big, "/api/v2/orgs/1/labels").await, 413);
    // And the API still answers normally.
    expect(
        owner.get("/api/v2/orgs/1/labels").await.unwrap(),
        200,
        "labels",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_is_503_where_a_region_cannot_serve_and_shows_topology_only_to_callers_with_keys() {
    let cl = ApiCluster::start(3, 0).await;
    let leader = cl.leader().await;
    let member = cl.member().await;
    let other = (1..=3).find(|i| *i != leader && *i != member).unwrap();
    let health = |id: u64, key: bool| {
        let c = ApiClient::new(cl.addr(id), Some(&cl.ca)).unwrap();
        let mut c = if key {
            c.with_key(&cl.owner.auth_username, &cl.owner.secret)
        } else {
            c
        };
        async move {
            let a = c.get("/api/v2/health").await.expect("health");
            (a.status.as_u16(), a.json())
        }
    };
    let (code, body) = health(member, false).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body[0]["status"], "normal", "{body}");
    assert!(
        body[0].get("raft").is_none(),
        "no topology without a key: {body}"
    );
    let (code, body) = health(member, true).await;
    assert_eq!(code, 200);
    assert!(body[0]["raft"]["peers"].is_array(), "{body}");
    let mut wrong = ApiClient::new(cl.addr(member), Some(&cl.ca))
        .unwrap()
        .with_key(&cl.owner.auth_username, "wrong");
    expect(wrong.get("/api/v2/health").await.unwrap(), 401, "wrong key");

    // Fenced: out of rotation at once.
    let mut op = cl.client(member);
    expect(
        op.put("/api/v2/supercluster/fence", &json!({"seconds": 60}))
            .await
            .unwrap(),
        200,
        "fence",
    );
    let (code, body) = health(member, false).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fenced")),
        "{body}"
    );
    let mut op = cl.client(member);
    assert!(op
        .delete("/api/v2/supercluster/fence")
        .await
        .unwrap()
        .status
        .is_success());
    eventually("the unfenced region serves again", || async {
        (health(member, false).await.0 == 200).then_some(())
    })
    .await;

    // Cut off from the others (a partition, not a fence): out of rotation
    // once an election window passes without word from the leader; the
    // others stay in.
    cl.cluster.faults.partition(&[other], &[leader, member]);
    let body = eventually("the cut-off region answers 503", || async {
        let (code, body) = health(other, false).await;
        (code == 503).then_some(body)
    })
    .await;
    assert!(body[0]["reason"].as_str().is_some(), "{body}");
    let (code, body) = health(leader, false).await;
    assert_eq!(code, 200, "the majority side serves: {body}");
    cl.cluster.faults.heal();
    eventually("the healed region serves again", || async {
        (health(other, false).await.0 == 200).then_some(())
    })
    .await;
}

/// A user with no role at all, and its key.
async fn roleless(owner: &mut ApiClient) -> (String, String) {
    let u = expect(
        owner
            .post(
                "/api/v2/users",
                &json!({"username": "nobody", "permissions": []}),
            )
            .await
            .unwrap(),
        201,
        "user without a role",
    );
    let href = u.json()["href"].as_str().unwrap().to_string();
    let k = expect(
        owner
            .post(&format!("/api/v2{href}/api_keys"), &json!({"name": "k"}))
            .await
            .unwrap(),
        201,
        "key",
    )
    .json();
    (
        k["auth_username"].as_str().unwrap().to_string(),
        k["secret"].as_str().unwrap().to_string(),
    )
}

/// The workload hrefs of an answer's list field.
fn hrefs(v: &serde_json::Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|x| {
                    x.as_str()
                        .or(x["href"].as_str())
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_reads_need_a_role_and_show_a_scoped_user_only_its_scope() {
    let cl = ApiCluster::start(3, 0).await;
    let id = cl.member().await;
    let mut owner = cl.client(id);
    let crm = create(&mut owner, "/labels", json!({"key": "app", "value": "crm"})).await;
    let erp = create(&mut owner, "/labels", json!({"key": "app", "value": "erp"})).await;
    let web = create(
        &mut owner,
        "/labels",
        json!({"key": "role", "value": "web"}),
    )
    .await;
    let mut rules = Vec::new();
    for app in [&crm, &erp] {
        let rs = create(
            &mut owner,
            "/sec_policy/draft/rule_sets",
            json!({"name": format!("rs-{}", &app[app.len() - 6..]), "scopes": [[label_ref(app)]]}),
        )
        .await;
        create(
            &mut owner,
            &format!("{}/sec_rules", rs.trim_start_matches("/orgs/1")),
            json!({"providers": [label_ref(&web)], "consumers": [label_ref(&web)], "ingress_services": [{"proto": 6, "port": 80}]}),
        )
        .await;
        rules.push(rs);
    }
    let v1 = expect(
        owner
            .post(
                "/api/v2/orgs/1/sec_policy",
                &json!({"update_description": "both"}),
            )
            .await
            .unwrap(),
        201,
        "provision",
    )
    .json();
    let n = v1["version"].as_u64().unwrap();
    // (Which workloads a version affected, as a scoped user sees them, needs
    // managed workloads: pce/tests/enforcement.rs checks it with real VENs.)
    // A pending change in each ruleset.
    for rs in &rules {
        expect(
            owner
                .put(&format!("/api/v2{rs}"), &json!({"description": "pending"}))
                .await
                .unwrap(),
            204,
            "draft change",
        );
    }

    // No role: every policy read is refused.
    let nobody = roleless(&mut owner).await;
    let mut c = cl.client_as(id, &nobody);
    for (method, path) in [
        (Method::GET, "/api/v2/orgs/1/sec_policy".to_string()),
        (Method::GET, format!("/api/v2/orgs/1/sec_policy/{n}")),
        (
            Method::GET,
            format!("/api/v2/orgs/1/sec_policy/{n}/modified_objects"),
        ),
        (Method::GET, "/api/v2/orgs/1/sec_policy/pending".to_string()),
        (Method::POST, "/api/v2/orgs/1/sec_policy/impact".to_string()),
    ] {
        let a = c.send(method.clone(), &path, None, &[]).await.unwrap();
        assert_eq!(a.status.as_u16(), 403, "{method} {path}: {}", a.json());
    }

    // Scoped to crm: crm's workloads and rulesets only.
    let viewer = user_with(&mut owner, "crm-viewer", "ruleset_viewer", &[&crm]).await;
    let mut c = cl.client_as(id, &viewer);
    let pending = c
        .get("/api/v2/orgs/1/sec_policy/pending")
        .await
        .unwrap()
        .json();
    let listed = hrefs(&pending, "rule_sets");
    assert_eq!(listed, vec![rules[0].clone()], "{pending}");
    let diff = c
        .get(&format!("/api/v2/orgs/1/sec_policy/{n}/modified_objects"))
        .await
        .unwrap()
        .json();
    let changed: Vec<&str> = diff
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["href"].as_str())
        .collect();
    assert!(
        changed
            .iter()
            .any(|h| h.contains(rules[0].rsplit('/').next().unwrap()))
            && !changed
                .iter()
                .any(|h| h.contains(rules[1].rsplit('/').next().unwrap())),
        "{diff}"
    );
    // An async job's result is its owner's alone.
    let a = expect(
        owner
            .send(
                Method::GET,
                "/api/v2/orgs/1/workloads",
                None,
                &[("prefer", "respond-async")],
            )
            .await
            .unwrap(),
        202,
        "async workloads",
    );
    let job = a.header("location").unwrap();
    let datafile = job.replace("/jobs/", "/datafiles/");
    for path in [&job, &datafile] {
        expect(
            owner.get(&format!("/api/v2{path}")).await.unwrap(),
            200,
            "the owner's job",
        );
        let other = c.get(&format!("/api/v2{path}")).await.unwrap();
        assert_eq!(
            other.status.as_u16(),
            404,
            "another user's job {path}: {}",
            other.json()
        );
    }
}

/// The events the API lists (newest first), read at node `id` once `ready`
/// says they are all there.
async fn events_when(
    cl: &ApiCluster,
    id: u64,
    what: &str,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let ready = &ready;
    eventually(what, || async move {
        let a = cl
            .client(id)
            .get("/api/v2/orgs/1/events?max_results=500")
            .await
            .ok()?;
        let list = a.json().as_array().cloned()?;
        ready(&list).then_some(list)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_sign_ins_are_cut_off_per_address_and_audited_in_batches() {
    let cl = ApiCluster::start(3, 0).await;
    let leader = cl.leader().await;
    let member = cl.member().await;
    let mut guess = cl.client_as(member, &(cl.owner.auth_username.clone(), "0".repeat(64)));
    for n in 1..=10 {
        let a = guess.get("/api/v2/orgs/1/labels").await.unwrap();
        assert_eq!(a.status.as_u16(), 401, "guess {n}");
    }
    // The eleventh is refused before the key is looked at, even with the
    // right secret, for the rest of the minute, with when to come back.
    let a = guess.get("/api/v2/orgs/1/labels").await.unwrap();
    refused(&a, 429, "too_many_failures");
    assert!(a
        .header("retry-after")
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|s| (1..=61).contains(&s)));
    let mut right = cl.client(member);
    assert_eq!(
        right
            .get("/api/v2/orgs/1/labels")
            .await
            .unwrap()
            .status
            .as_u16(),
        429
    );
    // Another region counts its own callers.
    expect(
        cl.client(leader)
            .get("/api/v2/orgs/1/labels")
            .await
            .unwrap(),
        200,
        "another region",
    );

    // In the trail: each failure with the name tried, and the cut-off.
    let user = cl.owner.auth_username.clone();
    let events = events_when(&cl, leader, "the failed sign-ins in the trail", |l| {
        l.iter()
            .filter(|e| e["event_type"] == "user.authenticate")
            .count()
            >= 11
    })
    .await;
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["event_type"] == "user.authenticate")
        .collect();
    assert_eq!(failed.len(), 11, "ten failures and the cut-off");
    assert!(failed.iter().all(|e| e["status"] == "failure"
        && e["created_by"]["user"]["username"] == json!(user)
        && e["action"]["src_ip"] == "127.0.0.1"));
    assert_eq!(
        failed
            .iter()
            .filter(|e| e["errors"][0]["token"] == "too_many_failures")
            .count(),
        1
    );

    // Refused writes are recorded in batches: a burst of 100 bad writes costs
    // far fewer than 100 Raft entries.
    let mut owner = cl.client(leader);
    let start = cl.cluster.node(leader).status().committed.unwrap_or(0);
    for _ in 0..100 {
        let a = owner
            .post("/api/v2/orgs/1/labels", &json!({"key": "role"}))
            .await
            .unwrap();
        assert_eq!(a.status.as_u16(), 406);
    }
    let events = events_when(&cl, leader, "the 100 refusals in the trail", |l| {
        l.iter()
            .filter(|e| e["event_type"] == "labels.create" && e["status"] == "failure")
            .count()
            >= 100
    })
    .await;
    assert!(!events.is_empty());
    let entries = cl.cluster.node(leader).status().committed.unwrap_or(0) - start;
    assert!(entries < 50, "100 refusals took {entries} Raft entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_trail_lists_newest_first_and_forgets_past_its_retention() {
    let cl = ApiCluster::start_with(1, 0, Duration::from_secs(3)).await;
    let mut owner = cl.client(1);
    create(
        &mut owner,
        "/labels",
        json!({"key": "role", "value": "old"}),
    )
    .await;
    let first = events_when(&cl, 1, "the first label's event", |l| {
        l.iter().any(|e| e["event_type"] == "labels.create")
    })
    .await;
    let old = first
        .iter()
        .find(|e| e["event_type"] == "labels.create")
        .unwrap()["href"]
        .clone();
    // Past the window the old event goes; new ones are listed first.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for v in ["a", "b", "c"] {
        create(&mut owner, "/labels", json!({"key": "role", "value": v})).await;
    }
    let events = events_when(&cl, 1, "the old event pruned", |l| {
        !l.iter().any(|e| e["href"] == old)
    })
    .await;
    let creates: Vec<&str> = events
        .iter()
        .filter(|e| e["event_type"] == "labels.create")
        .filter_map(|e| e["timestamp"].as_str())
        .collect();
    assert_eq!(creates.len(), 3, "{events:?}");
    let mut sorted = creates.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(creates, sorted, "newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_cannot_exhaust_the_api_and_are_closed() {
    use sc_raft::network::listen::ConnLimits;
    use tokio::io::AsyncReadExt;
    let cl = ApiCluster::start(1, 0).await;
    // A second API on the node, with small caps to test them.
    let limits = ConnLimits {
        max_total: 100,
        max_per_ip: 20,
        first_bytes: Duration::from_secs(3),
        idle: Duration::from_secs(3),
    };
    let api = sc_leader::serve(
        cl.cluster.node(1).clone(),
        sc_leader::ApiOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: Some(cl.cluster.node_options(1).unwrap().tls.clone()),
            rate: 0,
            burst: 0,
            audit_retention: Duration::ZERO,
            limits,
        },
        Default::default(),
    )
    .await
    .expect("serve");
    // Forty idle connections from one address (127.0.0.2): twenty are held,
    // twenty closed at once.
    let mut idle = Vec::new();
    for _ in 0..40 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(s.connect(api.addr).await.unwrap());
    }
    let closed_at_once = futures_util::future::join_all(idle.iter_mut().map(|s| async move {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }))
    .await
    .into_iter()
    .filter(|c| *c)
    .count();
    assert_eq!(
        closed_at_once, 20,
        "the connections over the per-address cap"
    );
    // Another client is served meanwhile.
    let mut c = ApiClient::new(api.addr, Some(&cl.ca))
        .unwrap()
        .with_key(&cl.owner.auth_username, &cl.owner.secret);
    expect(c.get("/api/v2/orgs/1/labels").await.unwrap(), 200, "served");
    // The silent ones are closed once their first bytes are overdue.
    for s in &mut idle {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b))
            .await
            .expect("a silent connection is closed");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    // A client that stays silent between requests is let go too, and the
    // next request opens a new connection.
    tokio::time::sleep(Duration::from_secs(4)).await;
    expect(c.get("/api/v2/orgs/1/labels").await.unwrap(), 200, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runbooks_actions_are_audited() {
    let cl = ApiCluster::start(3, 0).await;
    let member = cl.member().await;
    let mut op = cl.client(member);
    expect(
        op.put("/api/v2/supercluster/fence", &json!({"seconds": 60}))
            .await
            .unwrap(),
        200,
        "fence",
    );
    let mut op = cl.client(member);
    expect(
        op.delete("/api/v2/supercluster/fence").await.unwrap(),
        200,
        "unfence",
    );
    eventually("the region serves again", || async {
        let mut c = cl.client(member);
        c.get("/api/v2/orgs/1/labels")
            .await
            .ok()
            .filter(|a| a.status == 200)
            .map(|_| ())
    })
    .await;
    expect(
        op.get("/api/v2/supercluster/backup").await.unwrap(),
        200,
        "backup",
    );
    expect(
        op.post("/api/v2/supercluster/campaign", &json!({}))
            .await
            .unwrap(),
        200,
        "transfer",
    );
    let leader = cl.leader().await;
    let want = [
        "fence.update",
        "fence.delete",
        "backup.read",
        "campaign.create",
    ];
    let events = events_when(&cl, leader, "the runbook's actions in the trail", |l| {
        want.iter().all(|t| l.iter().any(|e| e["event_type"] == *t))
    })
    .await;
    for t in want {
        let e = events.iter().find(|e| e["event_type"] == t).unwrap();
        assert_eq!(e["status"], "success", "{e}");
        assert_eq!(e["created_by"]["user"]["username"], "owner", "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_region_is_named_in_the_status_and_can_be_removed() {
    let mut cl = ApiCluster::start(3, 0).await;
    let leader = cl.leader().await;
    let gone = (1..=3).find(|id| *id != leader).unwrap();
    let name = cl.cluster.node(gone).info().name.clone();
    let region = cl.cluster.node(gone).info().region.clone();
    cl.cluster.stop(gone).await;
    let status = eventually("the stopped node reported unreachable", || async {
        let v = cl
            .client(leader)
            .get("/api/v2/supercluster/status")
            .await
            .ok()?
            .json();
        v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == gone && n["reachable"] == false)
            .cloned()
    })
    .await;
    let mut op = cl.client(leader);
    assert_eq!(status["name"], json!(name), "{status}");
    assert_eq!(status["region"], json!(region), "{status}");
    // Removing it leaves two voters: refused without force, then done.
    let body = json!({"action": "remove", "node_id": gone});
    let a = op
        .post("/api/v2/supercluster/membership", &body)
        .await
        .unwrap();
    refused(&a, 409, "fault_tolerance_lost");
    let mut forced = body.clone();
    forced["force"] = json!(true);
    let v = expect(
        op.post("/api/v2/supercluster/membership", &forced)
            .await
            .unwrap(),
        200,
        "remove",
    )
    .json();
    assert!(
        !v["voters"].as_array().unwrap().contains(&json!(gone)),
        "{v}"
    );
    // The last voter can never be removed.
    let lead = cl.leader().await;
    let me = json!({"action": "demote", "node_id": lead, "force": true});
    let remaining: Vec<u64> = v["voters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_u64())
        .collect();
    assert_eq!(remaining.len(), 2, "{v}");
    let other = remaining.iter().copied().find(|id| *id != lead).unwrap();
    expect(
        op.post(
            "/api/v2/supercluster/membership",
            &json!({"action": "demote", "node_id": other, "force": true}),
        )
        .await
        .unwrap(),
        200,
        "down to one voter",
    );
    let a = op
        .post("/api/v2/supercluster/membership", &me)
        .await
        .unwrap();
    refused(&a, 409, "last_voter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_a_region_at_a_wrong_address_fails_at_once_and_changes_nothing() {
    let cl = ApiCluster::start(3, 0).await;
    let mut op = cl.client(cl.leader().await);
    let body = json!({"action": "add_learner", "node_id": 9, "name": "ghost-1", "region": "nowhere", "addr": "127.0.0.1:1"});
    let a = tokio::time::timeout(
        Duration::from_secs(20),
        op.post("/api/v2/supercluster/membership", &body),
    )
    .await
    .expect("answered without waiting for a catch-up")
    .unwrap();
    assert_eq!(a.status.as_u16(), 406, "{}", a.json());
    assert!(
        a.json()[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no Supercluster node answers at 127.0.0.1:1"),
        "{}",
        a.json()
    );
    let v = op.get("/api/v2/supercluster/status").await.unwrap().json();
    assert_eq!(
        v["nodes"].as_array().map(|l| l.len()),
        Some(3),
        "no phantom learner: {v}"
    );
    // A node that answers but is not who the request says: refused too.
    let real = cl.cluster.node(2).info().clone();
    let body = json!({"action": "add_learner", "node_id": 9, "name": "ghost-1", "region": "nowhere", "addr": real.addr});
    let a = op
        .post("/api/v2/supercluster/membership", &body)
        .await
        .unwrap();
    assert_eq!(a.status.as_u16(), 406, "{}", a.json());
    assert!(
        a.json()[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&real.name),
        "{}",
        a.json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planned_transfers_under_a_steady_writer_fail_no_write() {
    let cl = ApiCluster::start(3, 0).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // A writer every 20 ms through one region, as the issue measured.
    let via = cl.member().await;
    let mut w = cl.client(via);
    let writer = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, Vec::new());
        let mut i = 0u64;
        while !*stop.borrow() {
            i += 1;
            let body = json!({"key": "steady", "value": format!("v{i}")});
            match w.post("/api/v2/orgs/1/labels", &body).await {
                Ok(a) if a.status == 201 => ok += 1,
                Ok(a) => failed.push(format!("{} {}", a.status, a.json())),
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 0..5 {
        let leader = cl.leader().await;
        let to = (1..=3u64)
            .filter(|id| *id != leader)
            .nth(round % 2)
            .unwrap();
        let mut c = cl.client(to);
        let a = c
            .post("/api/v2/supercluster/campaign", &json!({}))
            .await
            .unwrap();
        assert_eq!(
            a.status.as_u16(),
            200,
            "transfer {round} to {to}: {}",
            a.json()
        );
        assert_eq!(a.json()["moved"], true);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = stop_tx.send(true);
    let (ok, failed) = writer.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} writes failed: {failed:?}",
        failed.len()
    );
    assert!(ok > 20, "the writer kept writing ({ok})");
}

/// A DR operator asks for status while the entry region hangs (its process
/// stopped, a host that takes connections and says nothing): the client must
/// give up on it and ask the next region, not wait for good. Before the fix
/// the TLS handshake with the silent API had no bound and `pce dr status`
/// never returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_entry_api_does_not_hold_the_operators_status() {
    use sc_leader::client::cluster::Cluster;
    let cl = ApiCluster::start(3, 0).await;
    // Takes connections and never answers; keeps them open.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let c = Cluster::new(
        cl.ca.clone(),
        cl.owner.auth_username.clone(),
        cl.owner.secret.clone(),
        silent_addr,
    )
    .with_fallbacks(vec![cl.addr(cl.member().await)]);
    let nodes = tokio::time::timeout(Duration::from_secs(60), c.status(&[]))
        .await
        .expect("status answered despite the silent entry")
        .expect("status from the fallback region");
    // Every node is named; the fallback answered for itself at least (a
    // peer slow to answer it on a loaded machine is reported, not missing).
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().any(|n| n.status.is_some()), "{nodes:?}");
    // The health probe that picks a serving region skips it the same way.
    let entry = tokio::time::timeout(Duration::from_secs(60), c.serving_entry())
        .await
        .expect("a serving region found despite the silent entry")
        .expect("a serving region");
    assert_ne!(entry, silent_addr);
    held.abort();
}
