//! The example Grafana dashboard (docs/grafana/supercluster.json) asks only
//! for series a region exports, with the suffixes their types give them: a
//! renamed metric, or a gauge queried as a counter, fails here, not on an
//! operator's empty panel.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use sc_leader::ApiOptions;
use sc_region::{Region, RegionOptions};
use sc_testkit::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The sample names of every family in an OpenMetrics exposition, from its
/// `# TYPE` lines.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    names
}

/// Every family a region with an admin API and a VEN service exports: a real
/// node and API (one request, so the API's families have a sample), and the
/// VEN service's instruments.
async fn exported() -> BTreeSet<String> {
    let harness = TestCluster::start(0).await;
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let region = Region::start(RegionOptions {
        node: harness.options(1, true),
        api: Some(ApiOptions {
            listen: any,
            tls: None,
            rate: 0,
            burst: 0,
            audit_retention: std::time::Duration::ZERO,
            limits: ApiOptions::default_limits(),
        }),
        ven: None,
        metrics: None,
    })
    .await
    .expect("region starts");
    let api = region.api().expect("api").addr;
    let mut conn = tokio::net::TcpStream::connect(api).await.expect("connect");
    conn.write_all(b"GET /api/v2/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut sink = Vec::new();
    conn.read_to_end(&mut sink).await.expect("answer");

    let mut registry = region.registry();
    sc_member::metrics::VenMetrics::default().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
    region.stop().await.expect("stops");
    sample_names(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_uses_only_exported_series_and_its_datasource_variable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/grafana/supercluster.json");
    let text = std::fs::read_to_string(path).expect("dashboard");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let exported = exported().await;
    // Families that exist only sometimes still describe themselves.
    for always in [
        "pce_raft_peer_lag_entries",
        "pce_raft_snapshot_size_bytes",
        "pce_raft_quorum_ack_age_seconds",
        "pce_ven_resyncs_total",
        "pce_flow_ingest_duration_seconds_bucket",
    ] {
        assert!(exported.contains(always), "{always} not in {exported:?}");
    }
    let mut used = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("pce_") {
            assert!(
                exported.contains(word),
                "the dashboard asks for {word}, which no region exports; they are: {exported:?}"
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
