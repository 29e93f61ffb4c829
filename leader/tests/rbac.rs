//! The role matrix: each role against each class of endpoint, allowed and
//! denied, including scoped users reaching outside their scope. Roles stack.

use hyper::Method;
use sc_testkit::api::*;
use serde_json::{json, Value};

/// Roles under test; scoped ones get the scope `app=crm`.
const ROLES: [&str; 8] = [
    "owner",
    "admin",
    "read_only",
    "global_object_provisioner",
    "ruleset_manager",
    "ruleset_provisioner",
    "ruleset_viewer",
    "workload_manager",
];

fn allowed(class: &str, role: &str) -> bool {
    let global_writer = matches!(role, "owner" | "admin");
    let global_reader = global_writer || matches!(role, "read_only" | "global_object_provisioner");
    match class {
        "read labels" => true,
        "create label"
        | "create service"
        | "edit out-of-scope ruleset"
        | "provision out-of-scope ruleset" => global_writer,
        "read in-scope ruleset" => {
            global_reader
                || matches!(
                    role,
                    "ruleset_manager" | "ruleset_provisioner" | "ruleset_viewer"
                )
        }
        "read out-of-scope ruleset" => global_reader,
        "edit in-scope ruleset" => {
            global_writer || matches!(role, "ruleset_manager" | "ruleset_provisioner")
        }
        "provision in-scope ruleset" => global_writer || role == "ruleset_provisioner",
        "provision service" => global_writer || role == "global_object_provisioner",
        "create in-scope workload" => global_writer || role == "workload_manager",
        "create out-of-scope workload" => global_writer,
        "read out-of-scope workload" => global_reader,
        "create user" => role == "owner",
        "read audit" => matches!(role, "owner" | "admin" | "read_only"),
        "restore version" => global_writer,
        other => panic!("unknown class {other}"),
    }
}

struct World {
    crm: String,
    erp: String,
    env: String,
    db: String,
    web: String,
    rs_crm: String,
    rs_erp: String,
    w_erp: String,
}

async fn pending_rule(owner: &mut sc_leader::client::ApiClient, w: &World, rs: &str) {
    let body = json!({"providers": [label_ref(&w.db)], "consumers": [label_ref(&w.web)], "ingress_services": [{"proto": 6, "port": 1000 + rand_port()}]});
    expect(
        owner
            .post(&format!("{}/sec_rules", api(rs)), &body)
            .await
            .expect("rule"),
        201,
        "pending rule",
    );
}

fn rand_port() -> u64 {
    rand::random::<u64>() % 60000
}

async fn attempt(
    cl: &ApiCluster,
    owner: &mut sc_leader::client::ApiClient,
    w: &World,
    key: &(String, String),
    class: &str,
) -> u16 {
    let mut c = cl.client_as(cl.member().await, key);
    let lin = [("x-consistency", "linearizable")];
    let a = match class {
        "read labels" => c.send(Method::GET, &format!("{ORG}/labels"), None, &lin).await,
        "create label" => c.post(&format!("{ORG}/labels"), &json!({"key": "loc", "value": format!("l{}", rand_port())})).await,
        "create service" => c.post(&format!("{ORG}/sec_policy/draft/services"), &json!({"name": format!("s{}", rand_port()), "service_ports": [{"proto": 6, "port": 1}]})).await,
        "read in-scope ruleset" => c.send(Method::GET, &api(&w.rs_crm), None, &lin).await,
        "read out-of-scope ruleset" => c.send(Method::GET, &api(&w.rs_erp), None, &lin).await,
        "edit in-scope ruleset" | "edit out-of-scope ruleset" => {
            let rs = if class.contains("out-of") { &w.rs_erp } else { &w.rs_crm };
            let body = json!({"providers": [label_ref(&w.db)], "consumers": [label_ref(&w.web)], "ingress_services": [{"proto": 6, "port": 8080}]});
            c.post(&format!("{}/sec_rules", api(rs)), &body).await
        }
        "provision in-scope ruleset" | "provision out-of-scope ruleset" => {
            let rs = if class.contains("out-of") { &w.rs_erp } else { &w.rs_crm };
            pending_rule(owner, w, rs).await;
            c.post(&format!("{ORG}/sec_policy"), &json!({"update_description": "x", "change_subset": {"rule_sets": [{"href": rs}]}})).await
        }
        "provision service" => {
            let s = create(owner, "/sec_policy/draft/services", json!({"name": format!("p{}", rand_port()), "service_ports": [{"proto": 17, "port": 53}]})).await;
            c.post(&format!("{ORG}/sec_policy"), &json!({"update_description": "x", "change_subset": {"services": [{"href": s}]}})).await
        }
        "create in-scope workload" | "create out-of-scope workload" => {
            let app = if class.contains("out-of") { &w.erp } else { &w.crm };
            c.post(&format!("{ORG}/workloads"), &json!({"name": "w", "labels": [{"href": app}, {"href": w.env}]})).await
        }
        "read out-of-scope workload" => c.send(Method::GET, &api(&w.w_erp), None, &lin).await,
        "create user" => c.post("/api/v2/users", &json!({"username": format!("u{}", rand_port())})).await,
        "read audit" => c.get(&format!("{ORG}/events?max_results=1")).await,
        "restore version" => c.post(&format!("{ORG}/sec_policy/1/restore"), &json!({})).await,
        other => panic!("unknown class {other}"),
    }
    .expect("request");
    let s = a.status.as_u16();
    if s == 403 {
        assert_eq!(a.token(), "forbidden");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_meets_every_endpoint_class() {
    let cl = ApiCluster::start(3, 0).await;
    let mut owner = cl.client(cl.leader().await);
    let crm = create(&mut owner, "/labels", json!({"key": "app", "value": "crm"})).await;
    let erp = create(&mut owner, "/labels", json!({"key": "app", "value": "erp"})).await;
    let env = create(
        &mut owner,
        "/labels",
        json!({"key": "env", "value": "prod"}),
    )
    .await;
    let db = create(&mut owner, "/labels", json!({"key": "role", "value": "db"})).await;
    let web = create(
        &mut owner,
        "/labels",
        json!({"key": "role", "value": "web"}),
    )
    .await;
    let rs_crm = create(
        &mut owner,
        "/sec_policy/draft/rule_sets",
        json!({"name": "crm", "scopes": [[label_ref(&crm), label_ref(&env)]]}),
    )
    .await;
    let rs_erp = create(
        &mut owner,
        "/sec_policy/draft/rule_sets",
        json!({"name": "erp", "scopes": [[label_ref(&erp)]]}),
    )
    .await;
    let w_erp = create(
        &mut owner,
        "/workloads",
        json!({"name": "erp1", "labels": [{"href": erp}]}),
    )
    .await;
    expect(
        owner
            .post(
                &format!("{ORG}/sec_policy"),
                &json!({"update_description": "base"}),
            )
            .await
            .expect("p"),
        201,
        "base",
    );
    let w = World {
        crm: crm.clone(),
        erp,
        env,
        db,
        web,
        rs_crm,
        rs_erp,
        w_erp,
    };

    let mut keys = Vec::new();
    for role in ROLES {
        let scope: Vec<&str> = if matches!(
            role,
            "ruleset_manager" | "ruleset_provisioner" | "ruleset_viewer" | "workload_manager"
        ) {
            vec![crm.as_str()]
        } else {
            vec![]
        };
        keys.push((
            role,
            user_with(&mut owner, &format!("user-{role}"), role, &scope).await,
        ));
    }
    let classes = [
        "read labels",
        "create label",
        "create service",
        "read in-scope ruleset",
        "read out-of-scope ruleset",
        "edit in-scope ruleset",
        "edit out-of-scope ruleset",
        "provision in-scope ruleset",
        "provision out-of-scope ruleset",
        "provision service",
        "create in-scope workload",
        "create out-of-scope workload",
        "read out-of-scope workload",
        "create user",
        "read audit",
        "restore version",
    ];
    let mut table = Vec::new();
    for (role, key) in &keys {
        for class in classes {
            let status = attempt(&cl, &mut owner, &w, key, class).await;
            let ok = status / 100 == 2;
            table.push(format!("{role:28} {class:32} {status}"));
            assert_eq!(
                ok,
                allowed(class, role),
                "{role} / {class}: got {status}\n{}",
                table.join("\n")
            );
            if !ok {
                assert_eq!(status, 403, "{role} / {class}: denials are 403");
            }
        }
    }

    // Scoped listing: a scoped viewer sees only its rulesets; read_only sees all.
    let lin = [("x-consistency", "linearizable")];
    let count = |v: Value| v.as_array().map(Vec::len).unwrap_or(0);
    let viewer = &keys
        .iter()
        .find(|(r, _)| *r == "ruleset_viewer")
        .expect("viewer")
        .1;
    let mut c = cl.client_as(cl.leader().await, viewer);
    let a = c
        .send(
            Method::GET,
            &format!("{ORG}/sec_policy/draft/rule_sets"),
            None,
            &lin,
        )
        .await
        .expect("list");
    assert_eq!(
        count(a.json()),
        1,
        "the scoped viewer sees the crm ruleset only"
    );
    let ro = &keys.iter().find(|(r, _)| *r == "read_only").expect("ro").1;
    let mut c = cl.client_as(cl.leader().await, ro);
    let a = c
        .send(
            Method::GET,
            &format!("{ORG}/sec_policy/draft/rule_sets"),
            None,
            &lin,
        )
        .await
        .expect("list");
    assert_eq!(count(a.json()), 2);

    // Stacked roles: a workload manager that is also a ruleset viewer can do both.
    let stacked = {
        let body = json!({"username": "stacked", "permissions": [
            {"role": {"href": "/orgs/1/roles/workload_manager"}, "scope": [label_ref(&crm)]},
            {"role": {"href": "/orgs/1/roles/ruleset_viewer"}, "scope": [label_ref(&crm)]},
        ]});
        let u = expect(
            owner.post("/api/v2/users", &body).await.expect("user"),
            201,
            "stacked",
        )
        .json();
        let k = expect(
            owner
                .post(
                    &format!("/api/v2{}/api_keys", u["href"].as_str().unwrap_or_default()),
                    &json!({}),
                )
                .await
                .expect("key"),
            201,
            "key",
        )
        .json();
        (
            k["auth_username"].as_str().unwrap_or_default().to_string(),
            k["secret"].as_str().unwrap_or_default().to_string(),
        )
    };
    for class in ["create in-scope workload", "read in-scope ruleset"] {
        assert_eq!(
            attempt(&cl, &mut owner, &w, &stacked, class).await / 100,
            2,
            "stacked: {class}"
        );
    }
    assert_eq!(
        attempt(&cl, &mut owner, &w, &stacked, "edit in-scope ruleset").await,
        403
    );

    // A scoped provisioner cannot provision the whole draft when it holds changes
    // outside its scope, and the refusal names them.
    pending_rule(&mut owner, &w, &w.rs_erp).await;
    pending_rule(&mut owner, &w, &w.rs_crm).await;
    let prov = &keys
        .iter()
        .find(|(r, _)| *r == "ruleset_provisioner")
        .expect("prov")
        .1;
    let mut c = cl.client_as(cl.leader().await, prov);
    let a = c
        .post(
            &format!("{ORG}/sec_policy"),
            &json!({"update_description": "all"}),
        )
        .await
        .expect("p");
    assert_eq!(a.status, 403);
    assert!(
        a.json()[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&w.rs_erp),
        "{}",
        a.json()
    );
}

/// A key created through the leader works at once on a member whose replica has
/// not seen it yet: the member catches up once before calling a key unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_key_works_at_once_on_a_lagging_member() {
    let c = ApiCluster::start(3, 0).await;
    let leader = c.leader().await;
    let member = c.member().await;
    // Appends reach the member 70 ms late (under the test RPC timeout); its replica lags every new write.
    c.cluster
        .faults
        .delay(leader, member, std::time::Duration::from_millis(70));
    let mut owner = c.client(leader);
    let key = user_with(&mut owner, "fresh", "read_only", &[]).await;
    let mut fresh = c.client_as(member, &key);
    let a = fresh.get(&format!("{ORG}/labels")).await.expect("get");
    expect(a, 200, "a brand-new key on a lagging member");
    // A key that does not exist is still refused after the catch-up.
    let mut wrong = c.client_as(member, &(key.0.clone(), "not-the-secret".into()));
    let a = wrong.get(&format!("{ORG}/labels")).await.expect("get");
    expect(a, 401, "a wrong secret");
    let mut unknown = c.client_as(member, &("nobody".into(), "x".into()));
    let a = unknown.get(&format!("{ORG}/labels")).await.expect("get");
    expect(a, 401, "an unknown key");
    c.cluster.faults.heal();
}
