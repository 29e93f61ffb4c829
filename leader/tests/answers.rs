//! Every answer shape of the admin API, pinned: one object of every kind is
//! made and provisioned, every collection and item is read, and the answers
//! (ids and times normalised) must equal `tests/golden/answers.json`. A change
//! of the API's code that is meant to change no output (typed answers, the
//! OpenAPI builder of decision 0012) is held to that; a change meant to alter
//! an answer updates the file with `UPDATE_GOLDEN=1` and shows in the diff.
//!
//! Every answer is also validated against the schema the OpenAPI document
//! gives for its route and status, so the document's schemas describe what
//! the API really sends (they are derived from the answer types; this proves
//! the types are the ones the handlers use).

use std::collections::HashMap;

use hyper::Method;
use sc_testkit::api::*;
use serde_json::{json, Value};

/// Rewrites ids (`8-4-4-4-12` hex) as `#n` in the order first met, and times
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`) as `<t>`, so answers compare across runs.
struct Normaliser {
    ids: HashMap<String, String>,
}

impl Normaliser {
    fn id(&mut self, id: &str) -> String {
        let n = self.ids.len() + 1;
        self.ids
            .entry(id.to_string())
            .or_insert_with(|| format!("#{n}"))
            .clone()
    }

    fn text(&mut self, s: &str) -> String {
        if is_time(s) {
            return "<t>".into();
        }
        let b = s.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if i + 36 <= b.len() && is_uuid(&s[i..i + 36]) {
                out.push_str(&self.id(&s[i..i + 36]));
                i += 36;
            } else {
                let ch = s[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
        out
    }

    fn value(&mut self, v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(a) => {
                let mut items: Vec<Value> = a.iter().map(|x| self.value(x)).collect();
                // Collections list by key, and keys are random ids: sort by
                // content so the order does not depend on them.
                items.sort_by_key(|x| x.to_string());
                Value::Array(items)
            }
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (self.text(k), self.value(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[23] == b'Z'
        && b[..4].iter().all(u8::is_ascii_digit)
}

/// The documented path template a concrete path falls under: the one whose
/// segments match, literal segments preferred over `{parameters}`.
fn template<'a>(doc: &'a Value, method: &Method, path: &str) -> Option<(&'a str, &'a Value)> {
    let segs: Vec<&str> = path.split('/').collect();
    let m = method.as_str().to_lowercase();
    let mut best: Option<(usize, &str, &Value)> = None;
    for (t, item) in doc["paths"].as_object()? {
        let tsegs: Vec<&str> = t.split('/').collect();
        if tsegs.len() != segs.len() || item.get(&m).is_none() {
            continue;
        }
        let fits = tsegs
            .iter()
            .zip(&segs)
            .all(|(a, b)| a.starts_with('{') || a == b);
        let literal = tsegs.iter().filter(|a| !a.starts_with('{')).count();
        if fits && best.is_none_or(|(l, ..)| literal > l) {
            best = Some((literal, t.as_str(), &item[&m]));
        }
    }
    best.map(|(_, t, op)| (t, op))
}

/// Fails unless `body`, answered with `status` to `method path`, is what the
/// document says that operation answers.
fn conforms(doc: &Value, method: &Method, path: &str, status: u16, body: &Value) {
    let path = path.split('?').next().unwrap_or(path);
    let (t, op) = template(doc, method, path)
        .unwrap_or_else(|| panic!("{method} {path}: no documented route"));
    let content = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        !content.is_null(),
        "{method} {t}: answered {status} with a body, but the document has no JSON schema for {status}"
    );
    let mut schema = content.clone();
    schema["components"] = doc["components"].clone();
    let v = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{method} {t}: the documented schema does not compile: {e}"));
    let errors: Vec<String> = v
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {t} ({status}): the answer does not match its documented schema:\n{}\nanswer: {body}",
        errors.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_shape_matches_the_golden_file() {
    let cl = ApiCluster::start(1, 0).await;
    let mut c = cl.client(cl.leader().await);
    let doc = sc_leader::api::openapi();
    let mut norm = Normaliser {
        ids: HashMap::new(),
    };

    // One object of every kind, ids numbered in creation order.
    let web = create(
        &mut c,
        "/labels",
        json!({"key": "role", "value": "web", "description": "front end"}),
    )
    .await;
    let db = create(&mut c, "/labels", json!({"key": "role", "value": "db"})).await;
    let app = create(&mut c, "/labels", json!({"key": "app", "value": "crm"})).await;
    let env = create(&mut c, "/labels", json!({"key": "env", "value": "prod"})).await;
    let group = create(
        &mut c,
        "/sec_policy/draft/label_groups",
        json!({"name": "tiers", "key": "role", "labels": [{"href": web}, {"href": db}]}),
    )
    .await;
    let svc = create(&mut c, "/sec_policy/draft/services", json!({"name": "postgres", "description": "db", "service_ports": [{"proto": 6, "port": 5432}, {"proto": 17, "port": 1000, "to_port": 1010}]})).await;
    let ipl = create(&mut c, "/sec_policy/draft/ip_lists", json!({"name": "office", "ip_ranges": [{"from_ip": "192.0.2.0/24"}, {"from_ip": "192.0.2.7", "exclusion": true}]})).await;
    let rs = create(
        &mut c,
        "/sec_policy/draft/rule_sets",
        json!({"name": "crm", "scopes": [[label_ref(&app), label_ref(&env)]]}),
    )
    .await;
    let rule = expect(
        c.post(&format!("{}/sec_rules", api(&rs)), &json!({"providers": [label_ref(&db)], "consumers": [{"label_group": {"href": group}}], "ingress_services": [{"href": svc}, {"proto": 6, "port": 8080}]}))
            .await
            .expect("rule"),
        201,
        "rule",
    )
    .json()["href"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deny = expect(
        c.post(&format!("{}/deny_rules", api(&rs)), &json!({"providers": [label_ref(&db)], "consumers": [{"ip_list": {"href": ipl}}], "ingress_services": [{"proto": 6, "port": 22}]}))
            .await
            .expect("deny rule"),
        201,
        "deny rule",
    )
    .json()["href"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let boundary = create(&mut c, "/sec_policy/draft/enforcement_boundaries", json!({"name": "no-ssh", "providers": [{"actors": "ams"}], "consumers": [{"ip_list": {"href": ipl}}], "ingress_services": [{"proto": 6, "port": 22}]})).await;
    let wl = create(&mut c, "/workloads", json!({"name": "db1", "hostname": "db1.example", "labels": [{"href": db}, {"href": app}, {"href": env}], "interfaces": [{"name": "eth0", "address": "10.0.0.5", "cidr_block": 24}], "enforcement_mode": "full"})).await;
    let limited = create(&mut c, "/pairing_profiles", json!({"name": "limited", "labels": [{"href": web}], "enforcement_mode": "visibility_only", "allowed_uses_per_key": 5, "key_lifespan": 3600})).await;
    let unlimited = create(
        &mut c,
        "/pairing_profiles",
        json!({"name": "unlimited", "enabled": false}),
    )
    .await;
    let reader = user_with(&mut c, "reader", "read_only", &[]).await;
    for href in [
        &web, &db, &app, &env, &group, &svc, &ipl, &rs, &rule, &deny, &boundary, &wl, &limited,
        &unlimited,
    ] {
        norm.text(href);
    }

    let mut reads: Vec<String> = vec![
        format!("{ORG}/sec_policy/pending"),
        format!("{ORG}/labels"),
        format!("{ORG}/workloads"),
        format!("{ORG}/pairing_profiles"),
        format!("{ORG}/roles"),
        format!("{ORG}/settings/workloads"),
        "/api/v2/users".into(),
    ];
    for kind in [
        "label_groups",
        "services",
        "ip_lists",
        "rule_sets",
        "enforcement_boundaries",
    ] {
        reads.push(format!("{ORG}/sec_policy/draft/{kind}"));
    }
    for href in [
        &web, &group, &svc, &ipl, &rs, &rule, &deny, &boundary, &wl, &limited, &unlimited,
    ] {
        reads.push(api(href));
    }
    reads.push(format!("{}/sec_rules", api(&rs)));
    reads.push(format!("{}/deny_rules", api(&rs)));
    let mut answers = serde_json::Map::new();
    for path in &reads {
        let a = c.send(Method::GET, path, None, &[]).await.expect("get");
        conforms(doc, &Method::GET, path, a.status.as_u16(), &a.json());
        answers.insert(
            format!("GET {}", norm.text(path)),
            json!({"status": a.status.as_u16(), "body": norm.value(&a.json())}),
        );
    }
    // Writes whose answers are not objects.
    let impact = c
        .post(&format!("{ORG}/sec_policy/impact"), &json!({}))
        .await
        .expect("impact");
    conforms(
        doc,
        &Method::POST,
        &format!("{ORG}/sec_policy/impact"),
        impact.status.as_u16(),
        &impact.json(),
    );
    answers.insert(
        "POST /sec_policy/impact".into(),
        json!({"status": impact.status.as_u16(), "body": norm.value(&impact.json())}),
    );
    let prov = c
        .post(
            &format!("{ORG}/sec_policy"),
            &json!({"update_description": "golden"}),
        )
        .await
        .expect("provision");
    conforms(
        doc,
        &Method::POST,
        &format!("{ORG}/sec_policy"),
        prov.status.as_u16(),
        &prov.json(),
    );
    answers.insert(
        "POST /sec_policy".into(),
        json!({"status": prov.status.as_u16(), "body": norm.value(&prov.json())}),
    );
    let key = c
        .post(&format!("{}/pairing_key", api(&limited)), &json!({}))
        .await
        .expect("pairing key");
    let mut key_body = key.json();
    conforms(
        doc,
        &Method::POST,
        &format!("{}/pairing_key", api(&limited)),
        key.status.as_u16(),
        &key_body,
    );
    key_body["activation_code"] = json!("<code>");
    answers.insert(
        "POST /pairing_profiles/{id}/pairing_key".into(),
        json!({"status": key.status.as_u16(), "body": norm.value(&key_body)}),
    );
    // After provisioning: versions, the active copy, one version.
    for path in [
        format!("{ORG}/sec_policy"),
        format!("{ORG}/sec_policy/1"),
        format!("{ORG}/sec_policy/active/rule_sets"),
        format!("{ORG}/sec_policy/active/services"),
    ] {
        let a = c.send(Method::GET, &path, None, &[]).await.expect("get");
        conforms(doc, &Method::GET, &path, a.status.as_u16(), &a.json());
        answers.insert(
            format!("GET {} (provisioned)", norm.text(&path)),
            json!({"status": a.status.as_u16(), "body": norm.value(&a.json())}),
        );
    }
    // A scoped reader sees the same shapes.
    let mut r = cl.client_as(cl.leader().await, &reader);
    let a = r
        .send(Method::GET, &format!("{ORG}/labels"), None, &[])
        .await
        .expect("get");
    conforms(
        doc,
        &Method::GET,
        &format!("{ORG}/labels"),
        a.status.as_u16(),
        &a.json(),
    );
    answers.insert(
        "GET /labels (read_only)".into(),
        json!({"status": a.status.as_u16(), "body": norm.value(&a.json())}),
    );

    other_answers_conform(&mut c, doc, &wl).await;

    let got = serde_json::to_string_pretty(&Value::Object(answers)).expect("json") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/answers.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "answers differ from {} (UPDATE_GOLDEN=1 rewrites it if the change is meant):\n{}",
        path.display(),
        first_difference(&want, &got)
    );
}

/// The first differing line, with a little context, for the failure message.
fn first_difference(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let i = w.iter().zip(&g).take_while(|(a, b)| a == b).count();
    let from = i.saturating_sub(3);
    format!(
        "want:\n{}\ngot:\n{}",
        w.get(from..(i + 3).min(w.len()))
            .unwrap_or_default()
            .join("\n"),
        g.get(from..(i + 3).min(g.len()))
            .unwrap_or_default()
            .join("\n")
    )
}

/// Sends a request that must succeed and checks its answer against the document.
async fn call(
    c: &mut sc_leader::client::ApiClient,
    doc: &Value,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> sc_leader::client::Answer {
    let a = c
        .send(
            method.clone(),
            path,
            body.map(|b| b.to_string().into_bytes()),
            &[],
        )
        .await
        .expect("send");
    assert!(a.status.is_success(), "{method} {path}: {}", a.status);
    if a.status.as_u16() != 204 {
        conforms(doc, &method, path, a.status.as_u16(), &a.json());
    }
    a
}

/// Answers not pinned in the golden file (they hold node names, terms and
/// secrets) still match their documented schemas.
async fn other_answers_conform(c: &mut sc_leader::client::ApiClient, doc: &Value, workload: &str) {
    for path in [
        "/api/v2/health".to_string(),
        "/api/v2/supercluster/leader".into(),
        "/api/v2/supercluster/status".into(),
        format!("{ORG}/events"),
        format!("{ORG}/sec_policy/1"),
        "/api/v2/users/owner".into(),
        "/api/v2/users/owner/api_keys".into(),
        api(workload),
    ] {
        call(c, doc, Method::GET, &path, None).await;
    }
    call(c, doc, Method::POST, "/api/v2/supercluster/campaign", None).await;
    // The only voter: forced (it would otherwise be refused, quorum_at_risk).
    let fence = json!({"seconds": 30, "keep_serving": true, "force": true});
    call(
        c,
        doc,
        Method::PUT,
        "/api/v2/supercluster/fence",
        Some(fence),
    )
    .await;
    call(c, doc, Method::DELETE, "/api/v2/supercluster/fence", None).await;
    let key = json!({"name": "golden"});
    call(
        c,
        doc,
        Method::POST,
        "/api/v2/users/owner/api_keys",
        Some(key),
    )
    .await;
    let bulk = json!([{"name": "bulk1"}]);
    let path = format!("{ORG}/workloads/bulk_create");
    call(c, doc, Method::PUT, &path, Some(bulk)).await;
    // An async collection job and its result.
    let a = c
        .send(
            Method::GET,
            &format!("{ORG}/labels"),
            None,
            &[("prefer", "respond-async")],
        )
        .await
        .expect("async");
    assert_eq!(a.status.as_u16(), 202, "async collection");
    let job = a.header("location").unwrap_or_default();
    let j = call(c, doc, Method::GET, &format!("/api/v2{job}"), None).await;
    let result = j.json()["result"]["href"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    call(c, doc, Method::GET, &format!("/api/v2{result}"), None).await;
}
