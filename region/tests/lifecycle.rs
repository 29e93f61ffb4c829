//! A region starts and stops as one: stopping it ends the connections its
//! servers hold open, and frees its data directory for the next start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sc_leader::ApiOptions;
use sc_region::{Region, RegionOptions};
use sc_testkit::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn api_on_any_port() -> ApiOptions {
    ApiOptions {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        tls: None,
        rate: 0,
        burst: 0,
        audit_retention: std::time::Duration::ZERO,
        limits: ApiOptions::default_limits(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_region_closes_open_connections_and_frees_its_data() {
    // The harness only issues the node's certificate and options here.
    let harness = TestCluster::start(0).await;
    let opts = RegionOptions {
        node: harness.options(1, true),
        api: Some(api_on_any_port()),
        ven: None,
        metrics: None,
    };
    let region = Region::start(opts.clone()).await.expect("region starts");
    let addr = region.api().expect("api").addr;

    // A keep-alive client that got its answer and stays connected, idle.
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(b"GET /api/v2/health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.expect("answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );

    tokio::time::timeout(Duration::from_secs(20), region.stop())
        .await
        .expect("stop returns within its grace")
        .expect("stops cleanly");

    // The server side of the idle connection is gone: the client reads EOF
    // (or a reset), not silence.
    let after = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the server closed the idle connection when the region stopped");
    assert!(matches!(after, Ok(0) | Err(_)), "{after:?}");

    // Everything let go of the data directory: the same node starts again.
    let again = Region::start(opts)
        .await
        .expect("restarts on the same data");
    again.stop().await.expect("stops again");
}

/// One HTTP/1.1 GET on a fresh connection; the whole answer as text.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("request");
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.expect("answer");
    String::from_utf8(out).expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_serves_its_node_and_api_metrics_and_stops_serving_them() {
    let harness = TestCluster::start(0).await;
    let opts = RegionOptions {
        node: harness.options(1, true),
        api: Some(api_on_any_port()),
        ven: None,
        metrics: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
    };
    let region = Region::start(opts).await.expect("region starts");
    region
        .node
        .wait_until(Duration::from_secs(20), "leader", |s| s.role == "leader")
        .await
        .expect("leads");
    let api = region.api().expect("api").addr;
    let metrics = region.metrics_addr().expect("metrics listen");
    for _ in 0..3 {
        assert!(get(api, "/api/v2/health").await.starts_with("HTTP/1.1 200"));
    }
    assert!(get(api, "/api/v2/no/such/thing")
        .await
        .starts_with("HTTP/1.1 404"));
    // A path with an id counts under its template (unauthenticated: 401).
    assert!(get(api, "/api/v2/orgs/1/labels")
        .await
        .starts_with("HTTP/1.1 401"));

    let text = get(metrics, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("application/openmetrics-text"), "{text}");
    for series in [
        "pce_raft_role{role=\"leader\"} 1",
        "pce_raft_role{role=\"follower\"} 0",
        "pce_node_info{name=\"node-1\",region=",
        // Counted by route template and status, not by raw path.
        "pce_api_requests_total{route=\"/api/v2/health\",method=\"GET\",status=\"200\"} 3",
        "pce_api_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1",
        "pce_api_requests_total{route=\"/api/v2/orgs/{org}/labels\",method=\"GET\",status=\"401\"} 1",
        "pce_api_request_duration_seconds_count{route=\"/api/v2/health\",method=\"GET\"} 3",
        "# TYPE pce_raft_log_fsync_duration_seconds histogram",
        "pce_raft_elections_total 1",
        "pce_raft_leader_changes_total 1",
    ] {
        assert!(text.contains(series), "no {series:?} in:\n{text}");
    }
    // The node wrote its membership and more: a positive commit index, and a
    // sync observed for each flush.
    let committed = text
        .lines()
        .find_map(|l| l.strip_prefix("pce_raft_commit_index "))
        .and_then(|v| v.parse::<i64>().ok())
        .expect("commit index");
    assert!(committed >= 1, "{committed}");
    let syncs = text
        .lines()
        .find_map(|l| l.strip_prefix("pce_raft_log_fsync_duration_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("fsync count");
    assert!(syncs >= 1, "{syncs}");

    region.stop().await.expect("stops");
    assert!(
        tokio::net::TcpStream::connect(metrics).await.is_err(),
        "the metrics listener closed with the region"
    );
}
