//! The example Grafana dashboard (docs/grafana/supercluster.json) asks only
//! for series the code exports: a renamed metric fails here, not on an
//! operator's empty panel.

use std::collections::BTreeSet;
use std::path::Path;

/// Every `"pce_..."` string literal in the files that declare metrics, with
/// the suffixes the OpenMetrics encoding adds to it.
fn exported() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = BTreeSet::new();
    for file in [
        "raft/src/metrics.rs",
        "leader/src/metrics.rs",
        "member/src/metrics.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("metrics source");
        for literal in text.split('"').skip(1).step_by(2) {
            if !literal.starts_with("pce_") {
                continue;
            }
            for unit in ["", "_seconds", "_bytes"] {
                for kind in ["", "_total", "_bucket", "_sum", "_count"] {
                    names.insert(format!("{literal}{unit}{kind}"));
                }
            }
        }
    }
    names
}

#[test]
fn the_grafana_dashboard_uses_only_exported_series_and_its_datasource_variable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/supercluster.json");
    let text = std::fs::read_to_string(path).expect("dashboard");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let exported = exported();
    let mut used = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("pce_") {
            assert!(
                exported.contains(word),
                "the dashboard asks for {word}, which nothing exports"
            );
            used += 1;
        }
    }
    assert!(used > 20, "{used} series references");
    let panels = doc["panels"].as_array().expect("panels");
    let mut queried = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} has a fixed data source",
            p["title"]
        );
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "panel {} says nothing about what to look for",
            p["title"]
        );
        queried += p["targets"].as_array().map_or(0, Vec::len);
    }
    assert!(queried >= panels.len() / 2, "{queried} queries");
}
