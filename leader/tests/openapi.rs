//! The OpenAPI document and the router cannot drift apart: every (method,
//! path) the router serves is documented, and every documented one is served.
//! The served set is read from the router itself (axum's `Debug` of it lists
//! each path and the methods its handler takes), so a route added anywhere,
//! however it is registered, is caught. No cluster is needed.

use std::collections::BTreeSet;

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
    let documented: BTreeSet<(String, String)> = sc_leader::api::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_uppercase(), p.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not in the OpenAPI document: {undocumented:?}\ndocumented but not served: {unserved:?}"
    );
}
