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
