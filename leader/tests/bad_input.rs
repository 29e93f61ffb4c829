//! Every class of bad input gets its own token and a message naming the field,
//! and changes nothing; the audit trail holds accepted and refused writes alike.

use std::time::{Duration, Instant};

use hyper::Method;
use sc_testkit::api::*;
use serde_json::{json, Value};

async fn snapshot(c: &mut sc_leader::client::ApiClient) -> Vec<Value> {
    let mut out = Vec::new();
    for p in [
        "/labels",
        "/workloads",
        "/pairing_profiles",
        "/sec_policy/draft/label_groups",
        "/sec_policy/draft/services",
        "/sec_policy/draft/ip_lists",
        "/sec_policy/draft/rule_sets",
        "/sec_policy/draft/enforcement_boundaries",
        "/sec_policy/active/rule_sets",
        "/sec_policy",
    ] {
        let a = c
            .send(
                Method::GET,
                &format!("{ORG}{p}"),
                None,
                &[("x-consistency", "linearizable")],
            )
            .await
            .expect("get");
        out.push(expect(a, 200, p).json());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_its_token_and_changes_nothing() {
    let cl = ApiCluster::start(3, 0).await;
    let member = cl.member().await;
    let mut c = cl.client(member);
    let web = create(&mut c, "/labels", json!({"key": "role", "value": "web"})).await;
    let db = create(&mut c, "/labels", json!({"key": "role", "value": "db"})).await;
    let env = create(&mut c, "/labels", json!({"key": "env", "value": "prod"})).await;
    let app = create(&mut c, "/labels", json!({"key": "app", "value": "shop"})).await;
    let svc = create(
        &mut c,
        "/sec_policy/draft/services",
        json!({"name": "https", "service_ports": [{"proto": 6, "port": 443}]}),
    )
    .await;
    let rs = create(
        &mut c,
        "/sec_policy/draft/rule_sets",
        json!({"name": "rs", "scopes": [[label_ref(&env)]]}),
    )
    .await;
    create(
        &mut c,
        "/workloads",
        json!({"name": "w1", "labels": [{"href": web}]}),
    )
    .await;
    expect(
        c.post(
            &format!("{ORG}/sec_policy"),
            &json!({"update_description": "base"}),
        )
        .await
        .expect("p"),
        201,
        "provision",
    );
    let before = snapshot(&mut c).await;

    let big = format!(
        "{{\"key\": \"role\", \"value\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let all = "/orgs/1/sec_policy/draft/services/all-services";
    type Case<'a> = (Method, String, Vec<u8>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (Method::POST, "/labels".into(), br#"{"key": "role", "value":"#.to_vec(), 400, "malformed_json", "JSON"),
        (Method::POST, "/labels".into(), br#"{"key": "role", "value": "x", "colour": "red"}"#.to_vec(), 406, "unknown_field", "colour"),
        (Method::POST, "/labels".into(), br#"{"key": "role", "value": 5}"#.to_vec(), 406, "wrong_type", "invalid type"),
        (Method::POST, "/labels".into(), br#"{"key": "role"}"#.to_vec(), 406, "missing_field", "value"),
        (Method::POST, "/labels".into(), big.into_bytes(), 413, "request_too_large", "limit"),
        (Method::POST, "/labels".into(), br#"{"key": "role", "value": "web"}"#.to_vec(), 406, "name_in_use", "name"),
        (Method::POST, "/workloads".into(), json!({"name": "w", "labels": [{"href": "/orgs/1/labels/nope"}]}).to_string().into_bytes(), 406, "invalid_reference", "labels[0]"),
        (Method::POST, "/workloads".into(), json!({"name": "w", "labels": [{"href": svc}]}).to_string().into_bytes(), 406, "invalid_reference", "labels[0]"),
        (Method::POST, "/workloads".into(), json!({"name": "w", "labels": [{"href": web}, {"href": db}]}).to_string().into_bytes(), 406, "label_key_conflict", "labels"),
        (Method::POST, "/workloads".into(), json!({"name": "w", "interfaces": [{"name": "eth0", "address": "10.0.0.300"}]}).to_string().into_bytes(), 406, "invalid_value", "interfaces[0].address"),
        (Method::POST, "/sec_policy/draft/ip_lists".into(), json!({"name": "bad", "ip_ranges": [{"from_ip": "10.0.0.0/33"}]}).to_string().into_bytes(), 406, "invalid_value", "ip_ranges[0]"),
        (Method::POST, "/sec_policy/draft/services".into(), json!({"name": "bad", "service_ports": [{"proto": 6, "port": 90, "to_port": 80}]}).to_string().into_bytes(), 406, "invalid_value", "to_port"),
        (Method::POST, "/sec_policy/draft/label_groups".into(), json!({"name": "g", "key": "role", "labels": [{"href": env}]}).to_string().into_bytes(), 406, "label_group_key_mismatch", "labels[0]"),
        (Method::POST, format!("{}/sec_rules", rs.trim_start_matches("/orgs/1")), json!({"providers": [{"actors": "ams"}], "consumers": [{"actors": "ams"}], "unscoped_consumers": true, "ingress_services": [{"href": all}]}).to_string().into_bytes(), 406, "rule_too_broad", "deliberately_broad"),
        (Method::POST, format!("{}/sec_rules", rs.trim_start_matches("/orgs/1")), json!({"providers": [{"actors": "everyone"}], "consumers": [], "ingress_services": []}).to_string().into_bytes(), 406, "invalid_value", "providers[0].actors"),
        (Method::PUT, rs.trim_start_matches("/orgs/1").to_string(), br#"{"rules": []}"#.to_vec(), 406, "invalid_value", "sec_rules"),
        // Explorer queries: malformed, unknown filter kinds, bad dates, ranges.
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), br#"{"start_date": "2026-01-01T00:00:00Z""#.to_vec(), 400, "malformed_json", "JSON"),
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), json!({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-02T00:00:00Z", "sources": {"include": [[{"colour": "red"}]]}}).to_string().into_bytes(), 406, "unknown_field", "colour"),
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), json!({"start_date": "yesterday", "end_date": "2026-01-02T00:00:00Z"}).to_string().into_bytes(), 406, "invalid_value", "start_date"),
        (Method::POST, "/traffic_flows/async_queries".into(), json!({"start_date": "2026-01-03T00:00:00Z", "end_date": "2026-01-02T00:00:00Z"}).to_string().into_bytes(), 406, "invalid_value", "end_date"),
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), json!({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-02T00:00:00Z", "max_results": 200_001}).to_string().into_bytes(), 406, "invalid_value", "max_results"),
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), json!({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-02T00:00:00Z", "policy_decisions": ["maybe"]}).to_string().into_bytes(), 406, "invalid_value", "policy_decisions[0]"),
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), json!({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-02T00:00:00Z", "destinations": {"include": [[{"label": {"href": "/orgs/1/labels/nope"}}]]}}).to_string().into_bytes(), 406, "invalid_reference", "destinations.include[0][0]"),
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), json!({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-02T00:00:00Z", "sources": {"exclude": [{"ip_address": "10.0.0.300"}]}}).to_string().into_bytes(), 406, "invalid_value", "sources.exclude[0].ip_address"),
        (Method::POST, "/traffic_flows/traffic_analysis_queries".into(), json!({"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-01-02T00:00:00Z", "sources": {"include": [[{"fqdn": "example.com"}]]}}).to_string().into_bytes(), 406, "invalid_value", "fqdn"),
        (Method::POST, "/policy_generator".into(), json!({"labels": []}).to_string().into_bytes(), 406, "invalid_value", "no app label"),
        (Method::POST, "/policy_generator".into(), json!({"labels": [{"href": web}]}).to_string().into_bytes(), 406, "invalid_value", "a role label"),
        (Method::POST, "/policy_generator".into(), json!({"labels": [{"href": "/orgs/1/labels/nope"}]}).to_string().into_bytes(), 406, "invalid_reference", "labels[0]"),
        (Method::POST, "/policy_generator".into(), json!({"labels": [{"href": app}, {"href": env}, {"href": env}]}).to_string().into_bytes(), 406, "invalid_value", "a second env label"),
        (Method::POST, "/policy_generator".into(), json!({"labels": [{"href": app}, {"href": env}], "start_date": "last week"}).to_string().into_bytes(), 406, "invalid_value", "start_date"),
        (Method::POST, "/policy_generator".into(), json!({"labels": [{"href": app}, {"href": env}], "start_date": "2026-01-02T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"}).to_string().into_bytes(), 406, "invalid_value", "before start_date"),
        (Method::POST, "/policy_generator".into(), json!({"labels": [{"href": app}, {"href": env}], "ring_fence": "yes"}).to_string().into_bytes(), 406, "wrong_type", "ring_fence"),
        (Method::POST, "/policy_generator".into(), json!({"labels": [{"href": app}, {"href": env}], "provision": true}).to_string().into_bytes(), 406, "unknown_field", "provision"),
        (Method::POST, "/sec_policy/active/services".into(), br#"{"name": "x"}"#.to_vec(), 405, "active_is_read_only", "draft"),
        (Method::PUT, web.trim_start_matches("/orgs/1").to_string(), b"[1, 2]".to_vec(), 406, "wrong_type", "object"),
        (Method::DELETE, web.trim_start_matches("/orgs/1").to_string(), vec![], 406, "object_in_use", "workloads"),
        (Method::POST, "/sec_policy".into(), br#"{"update_description": "nothing"}"#.to_vec(), 406, "nothing_to_provision", "pending"),
        (Method::POST, "/workloads".into(), json!({"name": "w", "interfaces": [{"name": "eth0", "address": "10.0.0.1", "cidr_block": 200}]}).to_string().into_bytes(), 406, "invalid_value", "cidr_block"),
        (Method::POST, "/workloads".into(), json!({"name": "w", "public_ip": "not-an-ip"}).to_string().into_bytes(), 406, "invalid_value", "public_ip"),
        (Method::POST, "/labels".into(), json!({"key": "role", "value": "admin\u{202e}nigol"}).to_string().into_bytes(), 406, "invalid_value", "bidirectional"),
        (Method::POST, "/labels".into(), json!({"key": "role", "value": "nul\u{0}"}).to_string().into_bytes(), 406, "invalid_value", "control"),
        (Method::POST, "/labels".into(), json!({"key": "role", "value": "ok-text", "description": "\u{1b}[31mred\u{1b}[0m"}).to_string().into_bytes(), 406, "invalid_value", "description"),
        (Method::POST, "/sec_policy/draft/services".into(), json!({"name": "svc\u{2066}", "service_ports": [{"proto": 6, "port": 1}]}).to_string().into_bytes(), 406, "invalid_value", "name"),
        (Method::GET, "/sec_policy/0/modified_objects".into(), vec![], 404, "not_found", "policy version"),
        (Method::GET, "/sec_policy/99999/modified_objects".into(), vec![], 404, "not_found", "99999"),
        (Method::GET, "/sec_policy/latest/modified_objects".into(), vec![], 404, "not_found", "latest"),
        (Method::GET, "/workloads/policy_sync?region=r1".into(), vec![], 400, "invalid_query_parameter", "region"),
        (Method::GET, "/labels?colour=red".into(), vec![], 400, "invalid_query_parameter", "colour"),
        (Method::GET, "/labels/does-not-exist".into(), vec![], 404, "not_found", "does-not-exist"),
        (Method::GET, "/widgets".into(), vec![], 404, "no_such_endpoint", "openapi"),
        (Method::PATCH, "/labels".into(), br#"{"key": "role"}"#.to_vec(), 405, "method_not_allowed", "PATCH"),
        (Method::POST, web.trim_start_matches("/orgs/1").to_string(), br#"{"key": "role"}"#.to_vec(), 405, "method_not_allowed", "Allow"),
    ];
    for (method, path, body, status, token, names) in cases {
        let body = (!body.is_empty()).then_some(body);
        let a = c
            .send(method.clone(), &format!("{ORG}{path}"), body, &[])
            .await
            .expect("send");
        assert_eq!(
            a.status.as_u16(),
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.token(), token, "{method} {path}");
        if status == 405 && token == "method_not_allowed" {
            assert!(
                a.header("allow").is_some_and(|h| h.contains("GET")),
                "{method} {path}: a 405 names the methods the path takes: {:?}",
                a.header("allow")
            );
        }
        assert_eq!(
            a.header("content-type").as_deref(),
            Some("application/json")
        );
        let msg = a.json()[0]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            msg.contains(names),
            "{method} {path}: message {msg:?} should name {names:?}"
        );
    }
    let a = c
        .send(
            Method::GET,
            &format!("{ORG}/labels"),
            None,
            &[("x-consistency", "sometimes")],
        )
        .await
        .expect("send");
    refused(&a, 400, "invalid_header");

    // Credentials.
    let mut anon = cl.client(member).without_key();
    let a = anon
        .post(&format!("{ORG}/labels"), &json!({"key": "a", "value": "b"}))
        .await
        .expect("send");
    refused(&a, 401, "authentication_required");
    assert!(a.header("www-authenticate").is_some());
    let mut wrong = cl.client_as(member, &(cl.owner.auth_username.clone(), "0".repeat(64)));
    let a = wrong.get(&format!("{ORG}/labels")).await.expect("send");
    assert_eq!(a.status.as_u16(), 401);

    assert_eq!(
        snapshot(&mut c).await,
        before,
        "refused requests changed nothing"
    );

    // The audit trail has the accepted writes and the refused ones, with their
    // actor. Refusals reach it in batches (a fraction of a second later).
    let by_owner_failed = |ev: &Value| {
        ev.as_array().map_or(0, |l| {
            l.iter()
                .filter(|e| {
                    e["status"] == "failure" && e["created_by"]["user"]["username"] == "owner"
                })
                .count()
        })
    };
    let t0 = std::time::Instant::now();
    let ev = loop {
        let ev = c
            .send(
                Method::GET,
                &format!("{ORG}/events?max_results=500"),
                None,
                &[("x-consistency", "linearizable")],
            )
            .await
            .expect("events");
        let ev = expect(ev, 200, "events").json();
        let sign_in_failed = ev.as_array().is_some_and(|l| {
            l.iter()
                .any(|e| e["event_type"] == "user.authenticate" && e["status"] == "failure")
        });
        if (by_owner_failed(&ev) >= 33 && sign_in_failed)
            || t0.elapsed() > std::time::Duration::from_secs(15)
        {
            break ev;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let events = ev.as_array().expect("array");
    let find = |t: &str, st: &str| {
        events.iter().any(|e| {
            e["event_type"] == t
                && e["status"] == st
                && e["created_by"]["user"]["username"] == "owner"
        })
    };
    assert!(
        find("labels.create", "success"),
        "accepted label creations are audited"
    );
    assert!(
        find("sec_policy.create", "success"),
        "the provision is audited"
    );
    assert!(
        find("labels.create", "failure"),
        "refused label creations are audited"
    );
    assert!(find("labels.delete", "failure"));
    assert!(find("sec_rules.create", "failure"));
    let refused_unknown = events
        .iter()
        .find(|e| e["errors"][0]["token"] == "unknown_field")
        .expect("the unknown-field refusal is in the trail");
    assert_eq!(refused_unknown["action"]["http_status_code"], 406);
    assert!(refused_unknown["region"].is_string());
    // Each refused write above (GETs are not writes) is one failure event of
    // its actor; the failed sign-ins are events of their own.
    assert_eq!(
        by_owner_failed(&ev),
        33,
        "one failure event per refused write"
    );
    assert!(
        events.iter().any(|e| e["event_type"] == "user.authenticate"
            && e["status"] == "failure"
            && e["action"]["http_status_code"] == 401),
        "the failed sign-ins are audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_key_is_rate_limited_with_retry_after() {
    let cl = ApiCluster::start(1, 5).await;
    let mut c = cl.client(1);
    let mut limited = None;
    for _ in 0..50 {
        let a = c.get(&format!("{ORG}/labels")).await.expect("get");
        if a.status == 429 {
            limited = Some(a);
            break;
        }
    }
    let a = limited.expect("a burst beyond the rate is refused");
    assert_eq!(a.token(), "rate_limited");
    assert!(a
        .header("retry-after")
        .and_then(|s| s.parse::<u64>().ok())
        .is_some_and(|s| s >= 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_without_a_reachable_leader_fail_with_503_and_retry_after() {
    let mut cl = ApiCluster::start(3, 0).await;
    let leader = cl.leader().await;
    let survivor = cl
        .apis
        .iter()
        .map(|(i, _)| *i)
        .find(|i| *i != leader)
        .expect("member");
    for (id, _) in cl.apis.iter().map(|(i, _)| (*i, ())).collect::<Vec<_>>() {
        if id != survivor {
            cl.cluster.stop(id).await;
        }
    }
    let mut c = cl.client(survivor);
    let started = Instant::now();
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(60) {
        let a = c
            .post(
                &format!("{ORG}/labels"),
                &json!({"key": "role", "value": "x"}),
            )
            .await
            .expect("post");
        if a.status == 503 {
            seen = Some((a, started.elapsed()));
            break;
        }
        assert_ne!(
            a.status.as_u16() / 100,
            2,
            "no write succeeds without a quorum"
        );
    }
    let (a, _) = seen.expect("a 503 arrives");
    assert_eq!(a.token(), "no_leader");
    assert_eq!(a.header("retry-after").as_deref(), Some("1"));
    // Once the survivor knows it has no leader, refusals are immediate.
    let t = Instant::now();
    let b = c
        .post(
            &format!("{ORG}/labels"),
            &json!({"key": "role", "value": "y"}),
        )
        .await
        .expect("post");
    assert_eq!(b.status, 503);
    // Reads still work from the local replica.
    let r = c.get(&format!("{ORG}/labels")).await.expect("read");
    assert_eq!(r.status, 200, "the replica still serves reads");
    eprintln!("second refusal took {:?}", t.elapsed());
}
