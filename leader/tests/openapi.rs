//! The OpenAPI document and the router cannot drift apart: every (method,
//! path) the router serves is documented, and every documented one is served.
//! The served set is read from the router itself (axum's `Debug` of it lists
//! each path and the methods its handler takes), so a route added anywhere,
//! however it is registered (not only through `spec::Api`), is caught. The
//! committed `docs/openapi.json` is the generated one, and every operation
//! documents its bodies. No cluster is needed (`answers.rs` validates real
//! answers against the schemas; `end_to_end.rs` checks 405s).

use std::collections::BTreeSet;

use serde_json::Value;

/// (METHOD, path) of every route `sc_leader::api::routes()` serves, HEAD
/// (which axum adds for every GET) left out.
fn served() -> BTreeSet<(String, String)> {
    let text = format!("{:?}", sc_leader::api::routes());
    // The served routes are the path router's; the fallback router that
    // follows numbers its own internal routes from zero again.
    let text = text.split("fallback_router").next().unwrap_or_default();
    // `RouteId(n): MethodRouter(... allow_header: Bytes(b"GET,HEAD,POST") })`
    let mut methods = std::collections::HashMap::new();
    for part in text.split("RouteId(").skip(1) {
        let Some((id, rest)) = part.split_once("): ") else {
            continue;
        };
        if let Some(path) = rest.strip_prefix('"') {
            if let Some((path, _)) = path.split_once('"') {
                methods
                    .entry(id.to_string())
                    .or_insert_with(|| (None, None))
                    .1 = Some(path.to_string());
            }
        } else if rest.starts_with("MethodRouter(") {
            if let Some((_, allow)) = rest.split_once("allow_header: Bytes(b\"") {
                if let Some((allow, _)) = allow.split_once('"') {
                    methods
                        .entry(id.to_string())
                        .or_insert_with(|| (None, None))
                        .0 = Some(allow.to_string());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for (allow, path) in methods.into_values() {
        let (Some(allow), Some(path)) = (allow, path) else {
            continue;
        };
        for m in allow.split(',').filter(|m| *m != "HEAD" && !m.is_empty()) {
            out.insert((m.to_string(), path.clone()));
        }
    }
    out
}

#[test]
fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let served = served();
    // If a future axum prints its router differently, fail loudly rather than
    // compare two empty sets.
    assert!(
        served.len() >= 80 && served.contains(&("GET".into(), "/api/v2/health".into())),
        "could not read the served routes from the router's Debug output ({} found)",
        served.len()
    );
    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in the OpenAPI document: {undocumented:?}\ndocumented but not served: {unserved:?}"
    );
}

/// (METHOD, path) of every documented operation.
fn documented() -> BTreeSet<(String, String)> {
    let doc = sc_leader::api::openapi();
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for m in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            out.insert((m.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let text = serde_json::to_string_pretty(sc_leader::api::openapi()).expect("json") + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &text).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p sc-leader --test openapi"
    );
}

/// A schema that names a component (directly, or as an array of one).
fn names_a_component(schema: &Value) -> bool {
    schema.get("$ref").is_some() || schema["items"].get("$ref").is_some()
}

#[test]
fn every_operation_documents_its_answer_and_its_body() {
    // Commands without parameters: their POST or PUT takes no body.
    let bodiless = [
        ("post", "/api/v2/supercluster/campaign"),
        (
            "post",
            "/api/v2/orgs/{org}/pairing_profiles/{id}/pairing_key",
        ),
        ("put", "/api/v2/orgs/{org}/workloads/{id}/unpair"),
        (
            "put",
            "/api/v2/orgs/{org}/traffic_flows/async_queries/{id}/update_rules",
        ),
    ];
    let doc = sc_leader::api::openapi();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "an OpenAPI 3.1 document"
    );
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let responses = op["responses"].as_object().cloned().unwrap_or_default();
            let ok: Vec<(&String, &Value)> = responses
                .iter()
                .filter(|(s, _)| s.starts_with('2'))
                .collect();
            match ok.as_slice() {
                [(status, r)] if status.as_str() == "204" => {
                    if r.get("content").is_some() {
                        problems.push(format!("{method} {path}: a 204 with content"));
                    }
                }
                [(_, r)] => {
                    let json = &r["content"]["application/json"]["schema"];
                    let binary = r["content"].get("application/octet-stream").is_some();
                    if !binary && !names_a_component(json) {
                        problems.push(format!("{method} {path}: the answer has no schema"));
                    }
                }
                _ => problems.push(format!("{method} {path}: not exactly one 2XX answer")),
            }
            for err in ["4XX", "503"] {
                let s = &responses.get(err).cloned().unwrap_or_default()["content"]
                    ["application/json"]["schema"];
                if !names_a_component(s) {
                    problems.push(format!("{method} {path}: {err} has no error schema"));
                }
            }
            let writes = method == "post" || method == "put";
            let has_body = op.get("requestBody").is_some();
            let may_lack = bodiless.contains(&(method.as_str(), path.as_str()));
            if writes && !has_body && !may_lack {
                problems.push(format!("{method} {path}: no request body documented"));
            }
            if has_body {
                let content = &op["requestBody"]["content"];
                let ok = names_a_component(&content["application/json"]["schema"])
                    || content.get("application/octet-stream").is_some();
                if !ok {
                    problems.push(format!("{method} {path}: the request body has no schema"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every reference resolves.
    let text = doc.to_string();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap_or_default();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "$ref to a missing schema {name}"
        );
    }
}
